//! Model-based property test: random sequences of every operation (claim with and without
//! fingerprints and lifetimes, complete, release, renew, expire, get, `run_pending_expiry`),
//! clock moves (small, past the lease, past the lifetime, backwards), clean reopens and
//! simulated power losses,
//! run against a real store on a `SimDisk` and against the sequential reference model
//! (`support/reference.rs`). Every answer must equal the model's, fencing tokens must only
//! increase, and the records on disk must be the model's.
//!
//! Knobs: `IDEMSTORE_MODEL_CASES` (default 256 sequences of up to 60 steps) and
//! `IDEMSTORE_SEED` (the proptest RNG seed; printed on failure).

#[path = "support/driver.rs"]
mod driver;
#[path = "support/reference.rs"]
mod reference;

use driver::Driver;
use idemstore::sim_disk::Op as DiskOp;
use idemstore::{ClaimOutcome, Error, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use reference::{LEASE_MS, MAX_TTL_MS, Op, Outcome, RefStore, TTL_MS};
use std::time::Duration;

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    /// Moves the manual clock forward.
    Advance(u64),
    /// Moves the manual clock backward.
    Rewind(u64),
    /// `run_pending_expiry`.
    Sweep,
    Reopen,
    Crash(u64),
}

#[derive(Clone, Debug)]
struct ModelState {
    store: RefStore,
    /// The key of each lease acquired, by lease id.
    leases: Vec<u8>,
    /// What the last step's operation must answer.
    expect: Option<Outcome>,
    /// Records the last sweep step removed in the model (the store's answer is at most this).
    swept: u64,
}

const KEYS: u8 = 3;

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = ModelState;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<ModelState> {
        Just(ModelState {
            store: RefStore::new(),
            leases: Vec::new(),
            expect: None,
            swept: 0,
        })
        .boxed()
    }

    fn transitions(state: &ModelState) -> BoxedStrategy<Step> {
        let key = 0..KEYS;
        let fp = prop_oneof![Just(None), Just(Some(0u8)), Just(Some(1u8))];
        let ttl = prop_oneof![
            6 => Just(None),
            // Short lifetimes make leases end at expiry rather than at their length.
            2 => (1..=2 * LEASE_MS).prop_map(Some),
            1 => (1..=MAX_TTL_MS).prop_map(Some),
            1 => Just(Some(0)),
            1 => Just(Some(MAX_TTL_MS + 1)),
        ];
        let claim =
            (key.clone(), fp, ttl).prop_map(|(key, fp, ttl_ms)| Op::Claim { key, fp, ttl_ms });
        let other = prop_oneof![
            key.clone().prop_map(|key| Op::Expire { key }),
            key.prop_map(|key| Op::Get { key }),
        ];
        let clock = prop_oneof![
            4 => (0..LEASE_MS / 2).prop_map(Step::Advance),
            3 => (LEASE_MS..2 * LEASE_MS).prop_map(Step::Advance),
            2 => (TTL_MS..TTL_MS + 2 * LEASE_MS).prop_map(Step::Advance),
            1 => (1..2 * TTL_MS).prop_map(Step::Rewind),
        ];
        let restart = prop_oneof![
            Just(Step::Sweep),
            Just(Step::Reopen),
            any::<u64>().prop_map(Step::Crash),
        ];
        if state.leases.is_empty() {
            return prop_oneof![
                6 => claim.prop_map(Step::Op),
                3 => other.prop_map(Step::Op),
                3 => clock,
                1 => restart,
            ]
            .boxed();
        }
        let leases = state.leases.clone();
        let owner = (
            0..leases.len(),
            0..3u8,
            prop::collection::vec(any::<u8>(), 0..12),
        )
            .prop_map(move |(i, kind, body)| {
                let (key, lease) = (leases[i], i as u64);
                match kind {
                    0 => Op::Complete { key, lease, body },
                    1 => Op::Release { key, lease },
                    _ => Op::Renew { key, lease },
                }
            });
        prop_oneof![
            5 => claim.prop_map(Step::Op),
            5 => owner.prop_map(Step::Op),
            3 => other.prop_map(Step::Op),
            3 => clock,
            1 => restart,
        ]
        .boxed()
    }

    fn preconditions(state: &ModelState, step: &Step) -> bool {
        // Shrinking may drop the claim that acquired a lease.
        match step {
            Step::Op(Op::Complete { key, lease, .. })
            | Step::Op(Op::Release { key, lease })
            | Step::Op(Op::Renew { key, lease }) => state.leases.get(*lease as usize) == Some(key),
            _ => true,
        }
    }

    fn apply(mut state: ModelState, step: &Step) -> ModelState {
        state.expect = None;
        match step {
            Step::Op(op) => {
                let outcome = state.store.apply(op, state.leases.len() as u64);
                if let (Outcome::Acquired { .. }, Op::Claim { key, .. }) = (&outcome, op) {
                    state.leases.push(*key);
                }
                state.expect = Some(outcome);
            }
            Step::Advance(ms) => state.store.clock += ms,
            Step::Rewind(ms) => state.store.step_back(*ms),
            Step::Sweep => state.swept = state.store.sweep(),
            Step::Reopen => state.store.reopen(true),
            Step::Crash(_) => state.store.reopen(false),
        }
        state
    }
}

struct StoreTest;

impl StateMachineTest for StoreTest {
    type SystemUnderTest = Driver;
    type Reference = Reference;

    fn init_test(_: &ModelState) -> Driver {
        Driver::new()
    }

    fn apply(mut d: Driver, state: &ModelState, step: Step) -> Driver {
        match step {
            Step::Op(op) => {
                let got = d.run(&op).unwrap_or_else(|e| panic!("{op:?} failed: {e}"));
                let want = state
                    .expect
                    .as_ref()
                    .expect("an operation step has an answer");
                assert_eq!(&got, want, "{op:?}");
            }
            Step::Advance(ms) => d.clock.advance(Duration::from_millis(ms)),
            Step::Rewind(ms) => {
                d.step_back(ms).expect("the probe write succeeds");
                assert_eq!(d.clock.now_ms(), state.store.clock);
            }
            Step::Sweep => {
                let n = d.store().run_pending_expiry().expect("a sweep succeeds");
                assert!(
                    n <= state.swept,
                    "swept {n} records, {} were due",
                    state.swept
                );
            }
            Step::Reopen => d.reopen().expect("a clean reopen succeeds"),
            Step::Crash(seed) => d.crash(seed).expect("the store reopens after a crash"),
        }
        d
    }

    fn check_invariants(d: &Driver, state: &ModelState) {
        let on_disk = d.store().records_on_disk().expect("records can be counted");
        let range = state.store.records_on_disk();
        assert!(
            range.contains(&on_disk),
            "{on_disk} records on disk, not in {range:?}"
        );
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

fn config() -> Config {
    let seed = env_u64("IDEMSTORE_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(0, |d| d.as_nanos() as u64)
    });
    // Shown by the test harness when the test fails.
    eprintln!("model test seed: IDEMSTORE_SEED={seed}");
    Config {
        cases: env_u64("IDEMSTORE_MODEL_CASES").map_or(256, |n| n as u32),
        rng_seed: RngSeed::Fixed(seed),
        // The seed reproduces a failure; no regression files next to the tests.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn store_matches_reference_model(sequential 1..60 => StoreTest);
}

/// Invariant 7: "an expired key is never resurrected" when the clock steps back. A `get` that
/// saw the key expire, a clock step back and a clean restart brought the key back while the
/// store persisted its time only with writes (this test failed before 4b7f84a, which persists
/// the high water at close).
#[test]
fn clean_restart_does_not_resurrect_a_key_seen_expired() {
    let mut d = Driver::new();
    let store = d.store();
    let ClaimOutcome::Acquired(lease) = store.claim(&driver::key(0), None).unwrap() else {
        panic!("a new key is acquired");
    };
    store.complete(&lease, driver::response(b"done")).unwrap();
    d.clock.advance(Duration::from_millis(TTL_MS));
    assert_eq!(store.get(&driver::key(0)).unwrap(), None, "expired");
    // The clock steps back (NTP correction) across a clean restart.
    d.clock.set_ms(reference::START_MS);
    assert_eq!(
        d.store().get(&driver::key(0)).unwrap(),
        None,
        "still expired before the restart"
    );
    d.reopen().unwrap();
    let seen = d.store().get(&driver::key(0)).unwrap();
    assert_eq!(
        seen, None,
        "the expired key came back after a clean restart"
    );
}

/// The same store, a lease held across a clean restart: its owner can still complete, and a
/// claim from the new process takes it over at once (attempt 2) only if it was not renewed.
#[test]
fn lease_survives_a_restart_until_taken_over() {
    let mut d = Driver::new();
    let claim = |s: &Store| s.claim(&driver::key(1), None).unwrap();
    let ClaimOutcome::Acquired(lease) = claim(d.store()) else {
        panic!("a new key is acquired");
    };
    d.reopen().unwrap();
    let mut renewed = lease.clone();
    d.store().renew(&mut renewed).unwrap();
    assert!(matches!(
        claim(d.store()),
        ClaimOutcome::InFlight { attempt: 1, .. }
    ));
    d.reopen().unwrap();
    let ClaimOutcome::Acquired(second) = claim(d.store()) else {
        panic!("a key in flight from the previous process is taken over at once");
    };
    assert!(second.is_takeover() && second.attempt() == 2 && second.token() > lease.token());
    assert!(matches!(
        d.store().complete(&lease, driver::response(b"late")),
        Err(Error::StaleLease { .. })
    ));
}

/// A poisoned store "refuses all operations" (`Error::Poisoned`), but `get` still answers from
/// the directory as it was before the failed commit, which may have reached the file: here it
/// says "in flight" for a key whose completion is on disk (the next open replays it). Found
/// while writing the ops fuzz target, which does not check `get` on a poisoned store until
/// this is fixed.
#[test]
fn get_on_a_poisoned_store_is_refused() {
    let mut d = Driver::new();
    let ClaimOutcome::Acquired(lease) = d.store().claim(&driver::key(0), None).unwrap() else {
        panic!("a new key is acquired");
    };
    // The claim's rows in the file first: the writer thread applying them could grow the
    // file, whose sync would take the fault armed below (and the complete would answer
    // `Poisoned`).
    d.store().records_on_disk().unwrap();
    // Every sync fails from now on: the commit, then the reopen that would recover from it.
    d.disk.fail_from(DiskOp::Sync, 1);
    let completed = d.store().complete(&lease, driver::response(b"done"));
    assert!(
        matches!(completed, Err(Error::OutcomeUnknown { .. })),
        "{completed:?}"
    );
    // `flush` waits for the recovery, which fails: the store is poisoned.
    assert!(matches!(d.store().flush(), Err(Error::Poisoned { .. })));
    let got = d.store().get(&driver::key(0));
    d.disk.heal();
    d.reopen().unwrap();
    let on_disk = d.store().get(&driver::key(0)).unwrap();
    assert!(
        matches!(got, Err(Error::Poisoned { .. })),
        "a poisoned store answered get with {got:?}; the file holds {on_disk:?}"
    );
}
