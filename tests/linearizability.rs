//! Linearizability: threads run random operations (claim with and without fingerprints,
//! complete, release, renew, expire, get) on a few shared keys of one store, recording when
//! each call started and returned on a shared counter; every history is then checked per key
//! against the sequential model below with the Wing-Gong checker in `support/lin.rs`.
//!
//! One store on a temporary file serves every history (each in a key scope of its own); it is
//! reopened every 50 histories, with `Durability::Bounded` three times in four and
//! `Immediate` otherwise. The clock is a `ManualClock` held still, so leases never end and
//! records never expire within a history: the model is absent / in flight (token,
//! fingerprint) / completed (token, fingerprint, body). Tokens are opaque: the model accepts any token for a claim
//! that acquires, then tracks it. Across the whole history, fencing tokens must be unique and
//! ordered like the acquisitions that returned before others were called (invariant 6).
//!
//! A second test, `histories_with_injected_faults_are_linearizable`, runs the same histories on
//! a simulated disk with one write, sync or `set_len` failing in each: operations answered
//! `OutcomeUnknown` took effect before they returned or not at all (`Output::Unknown`, through
//! `Model::step_all`), and every later answer must agree on which. Without 4237433 it fails
//! within a few histories.
//!
//! Knobs: `IDEMSTORE_LIN_HISTORIES` (default 200; the long run is 10,000),
//! `IDEMSTORE_LIN_THREADS` (default 8), `IDEMSTORE_LIN_OPS` (operations per thread per
//! history, default 24), `IDEMSTORE_LIN_IMMEDIATE` (1: every store `Immediate`, 0: every one
//! `Bounded`; unset: the mix above), `IDEMSTORE_SEED` (base seed; a failure prints the
//! settings that rerun its history). A seed fixes each thread's operations, not the
//! interleaving.

#[path = "support/lin.rs"]
mod lin;

use idemstore::{
    ClaimOutcome, Durability, Error, Fingerprint, Key, Lease, ManualClock, RecordInfo,
};
use idemstore::{Response, Store};
use lin::{Model, Operation, Verdict, check_partitioned_with_budget};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const KEYS: u8 = 3;
/// The store's lease: held still by the manual clock, it never ends.
const LEASE: Duration = Duration::from_secs(60);
/// Histories per store process.
const SEGMENT: u64 = 50;
/// Search steps per key and history before the checker gives up ("unknown" fails the test).
const BUDGET: u64 = 20_000_000;

#[derive(Clone, Debug)]
enum Input {
    Claim { key: u8, fp: Option<u8> },
    Complete { key: u8, token: u64, body: u32 },
    Release { key: u8, token: u64 },
    Renew { key: u8, token: u64 },
    Expire { key: u8 },
    Get { key: u8 },
}

impl Input {
    fn key(&self) -> u8 {
        match *self {
            Input::Claim { key, .. }
            | Input::Complete { key, .. }
            | Input::Release { key, .. }
            | Input::Renew { key, .. }
            | Input::Expire { key }
            | Input::Get { key } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Output {
    Acquired {
        token: u64,
        attempt: u32,
    },
    InFlight {
        attempt: u32,
    },
    Replay {
        body: u32,
        attempt: u32,
    },
    Mismatch,
    /// `complete`, `release` or `renew` answered `Ok`.
    Ok,
    Stale,
    Expired(bool),
    Absent,
    GetInFlight {
        attempt: u32,
        previous: bool,
    },
    GetCompleted {
        body: u32,
        attempt: u32,
    },
    /// `Error::OutcomeUnknown` (a commit failed): the operation took effect before it
    /// returned, or not at all; every later answer must agree on which.
    Unknown,
    /// `Error::Poisoned`: refused before anything was done.
    Refused,
    /// Anything else, which no state allows.
    Unexpected(String),
}

/// The token of an acquisition whose answer was lost (`Output::Unknown`): no client holds it.
const LOST_TOKEN: u64 = u64::MAX;

/// One key's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyState {
    Absent,
    InFlight {
        token: u64,
        fp: Option<u8>,
    },
    Completed {
        token: u64,
        fp: Option<u8>,
        body: u32,
    },
}

impl Model for KeyState {
    type Input = Input;
    type Output = Output;

    fn step(&self, input: &Input, output: &Output) -> Option<Self> {
        use KeyState::*;
        let same = || Some(self.clone());
        match (input, self, output) {
            (Input::Claim { fp, .. }, Absent, Output::Acquired { token, attempt: 1 }) => {
                Some(InFlight {
                    token: *token,
                    fp: *fp,
                })
            }
            (
                Input::Claim { fp, .. },
                InFlight { fp: held, .. } | Completed { fp: held, .. },
                _,
            ) if matches!((held, fp), (Some(a), Some(b)) if a != b) => {
                if *output == Output::Mismatch {
                    same()
                } else {
                    None
                }
            }
            (Input::Claim { .. }, InFlight { .. }, Output::InFlight { attempt: 1 }) => same(),
            (
                Input::Claim { .. },
                Completed { body, .. },
                Output::Replay {
                    body: b,
                    attempt: 1,
                },
            ) if b == body => same(),
            (Input::Complete { token, body, .. }, InFlight { token: t, fp }, Output::Ok)
                if t == token =>
            {
                Some(Completed {
                    token: *t,
                    fp: *fp,
                    body: *body,
                })
            }
            // Completing twice with the same lease succeeds and keeps the first response.
            (Input::Complete { token, .. }, Completed { token: t, .. }, Output::Ok)
                if t == token =>
            {
                same()
            }
            (Input::Release { token, .. }, InFlight { token: t, .. }, Output::Ok) if t == token => {
                Some(Absent)
            }
            // Releasing an absent key: the release already happened.
            (Input::Release { .. }, Absent, Output::Ok) => same(),
            (Input::Renew { token, .. }, InFlight { token: t, .. }, Output::Ok) if t == token => {
                same()
            }
            (
                Input::Complete { .. } | Input::Release { .. } | Input::Renew { .. },
                _,
                Output::Stale,
            ) => {
                let owns = match (input, self) {
                    (
                        Input::Complete { token, .. },
                        InFlight { token: t, .. } | Completed { token: t, .. },
                    ) => t == token,
                    (
                        Input::Release { token, .. } | Input::Renew { token, .. },
                        InFlight { token: t, .. },
                    ) => t == token,
                    (Input::Release { .. }, Absent) => true,
                    _ => false,
                };
                if owns { None } else { same() }
            }
            (Input::Expire { .. }, _, Output::Expired(live)) => {
                (*live == (*self != Absent)).then_some(Absent)
            }
            (Input::Get { .. }, Absent, Output::Absent) => same(),
            (
                Input::Get { .. },
                InFlight { .. },
                Output::GetInFlight {
                    attempt: 1,
                    previous: false,
                },
            ) => same(),
            (
                Input::Get { .. },
                Completed { body, .. },
                Output::GetCompleted {
                    body: b,
                    attempt: 1,
                },
            ) if b == body => same(),
            _ => None,
        }
    }

    fn step_all(&self, input: &Input, output: &Output) -> Vec<Self> {
        match output {
            Output::Unknown => {
                let mut out = vec![self.clone()];
                out.extend(self.effect(input).filter(|s| s != self));
                out
            }
            Output::Refused => vec![self.clone()],
            _ => self.step(input, output).into_iter().collect(),
        }
    }
}

impl KeyState {
    /// The state `input` leaves when it takes effect, whatever it answered.
    fn effect(&self, input: &Input) -> Option<Self> {
        use KeyState::*;
        match (input, self) {
            (Input::Claim { fp, .. }, Absent) => Some(InFlight {
                token: LOST_TOKEN,
                fp: *fp,
            }),
            (Input::Complete { token, body, .. }, InFlight { token: t, fp }) if t == token => {
                Some(Completed {
                    token: *t,
                    fp: *fp,
                    body: *body,
                })
            }
            (Input::Release { token, .. }, InFlight { token: t, .. }) if t == token => Some(Absent),
            (Input::Expire { .. }, _) => Some(Absent),
            _ => None,
        }
    }
}

/// xorshift64*: each thread's operations, from the history's seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn body_of(response: &Response) -> u32 {
    match response.body.as_slice().try_into() {
        Ok(bytes) => u32::from_le_bytes(bytes),
        Err(_) => u32::MAX,
    }
}

struct Settings {
    threads: usize,
    ops: usize,
}

/// One thread's part of a history.
fn client(
    store: &Store,
    scope: &str,
    thread: usize,
    seed: u64,
    settings: &Settings,
    ticks: &AtomicU64,
) -> Vec<Operation<Input, Output>> {
    let mut rng = Rng::new(seed ^ ((thread as u64 + 1) << 32));
    let mut leases: Vec<Lease> = Vec::new();
    let mut out = Vec::with_capacity(settings.ops);
    let fps = [None, Some(0), Some(1)];
    for i in 0..settings.ops {
        let key = rng.below(u64::from(KEYS)) as u8;
        let k = Key::new(scope, [key]);
        let pick = rng.below(100);
        // Owner operations use one of this thread's leases, current or stale.
        let lease = (!leases.is_empty()).then(|| rng.below(leases.len() as u64) as usize);
        let input = match (pick, lease) {
            (0..40, _) | (_, None) if pick < 80 => Input::Claim {
                key,
                fp: fps[rng.below(3) as usize],
            },
            (40..60, Some(l)) => Input::Complete {
                key: leases[l].key().key()[0],
                token: leases[l].token(),
                body: ((thread as u32) << 16) | i as u32,
            },
            (60..70, Some(l)) => Input::Release {
                key: leases[l].key().key()[0],
                token: leases[l].token(),
            },
            (70..80, Some(l)) => Input::Renew {
                key: leases[l].key().key()[0],
                token: leases[l].token(),
            },
            (80..85, _) => Input::Expire { key },
            _ => Input::Get { key },
        };
        let by_token = |t: u64| {
            leases
                .iter()
                .position(|l| l.token() == t)
                .expect("own lease")
        };
        let call = ticks.fetch_add(1, SeqCst);
        let output = match &input {
            Input::Claim { fp, .. } => {
                let fp = fp.map(|f| Fingerprint::from_parts(&[&[f]]));
                match store.claim(&k, fp) {
                    Ok(ClaimOutcome::Acquired(lease)) => {
                        let (token, attempt) = (lease.token(), lease.attempt());
                        leases.push(lease);
                        Output::Acquired { token, attempt }
                    }
                    Ok(ClaimOutcome::InFlight { attempt, .. }) => Output::InFlight { attempt },
                    Ok(ClaimOutcome::Replay(r)) => Output::Replay {
                        body: body_of(&r.response),
                        attempt: r.attempt,
                    },
                    Ok(ClaimOutcome::Mismatch) => Output::Mismatch,
                    Err(e) if failed(&e).is_some() => failed(&e).unwrap(),
                    other => Output::Unexpected(format!("{other:?}")),
                }
            }
            Input::Complete { token, body, .. } => {
                let response = Response::new(200).body(body.to_le_bytes());
                owner(store.complete(&leases[by_token(*token)], response))
            }
            Input::Release { token, .. } => owner(store.release(&leases[by_token(*token)])),
            Input::Renew { token, .. } => {
                let l = by_token(*token);
                owner(store.renew(&mut leases[l]))
            }
            Input::Expire { .. } => match store.expire(&k) {
                Ok(live) => Output::Expired(live),
                Err(e) => failed(&e).unwrap_or_else(|| Output::Unexpected(e.to_string())),
            },
            Input::Get { .. } => match store.get(&k) {
                Ok(None) => Output::Absent,
                Ok(Some(RecordInfo::InFlight {
                    attempt,
                    from_previous_process,
                    ..
                })) => Output::GetInFlight {
                    attempt,
                    previous: from_previous_process,
                },
                Ok(Some(RecordInfo::Completed(r))) => Output::GetCompleted {
                    body: body_of(&r.response),
                    attempt: r.attempt,
                },
                Err(e) if failed(&e).is_some() => failed(&e).unwrap(),
                other => Output::Unexpected(format!("{other:?}")),
            },
        };
        let ret = ticks.fetch_add(1, SeqCst);
        out.push(Operation::new(thread, call, ret, input, output));
    }
    out
}

fn owner(result: Result<(), Error>) -> Output {
    match result {
        Ok(()) => Output::Ok,
        Err(Error::StaleLease { .. }) => Output::Stale,
        Err(e) => failed(&e).unwrap_or_else(|| Output::Unexpected(e.to_string())),
    }
}

/// The output of a failure an injected I/O fault explains (never seen without one).
fn failed(e: &Error) -> Option<Output> {
    match e {
        Error::OutcomeUnknown { source } if !matches!(**source, Error::Corrupt { .. }) => {
            Some(Output::Unknown)
        }
        Error::Poisoned { .. } => Some(Output::Refused),
        _ => None,
    }
}

/// Runs one history on `store` (its keys in a scope of their own) and returns it.
fn run_history(
    store: &Arc<Store>,
    seed: u64,
    settings: &Arc<Settings>,
) -> Vec<Operation<Input, Output>> {
    let ticks = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(settings.threads));
    let scope = format!("history-{seed}");
    let handles: Vec<_> = (0..settings.threads)
        .map(|thread| {
            let (store, ticks, start) = (store.clone(), ticks.clone(), start.clone());
            let (scope, settings) = (scope.clone(), settings.clone());
            std::thread::spawn(move || {
                start.wait();
                client(&store, &scope, thread, seed, &settings, &ticks)
            })
        })
        .collect();
    let mut history: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a client thread panicked"))
        .collect();
    history.sort_by_key(|op| op.call);
    history
}

/// Checks history `h` (tokens, then linearizability per key); `rerun` says how to run it again.
fn check_history(h: u64, rerun: &str, history: &[Operation<Input, Output>]) {
    if let Err(e) = check_tokens(history) {
        panic!("history {h} ({rerun}): {e}");
    }
    let verdict = check_partitioned_with_budget(|_| KeyState::Absent, history, Input::key, BUDGET);
    match verdict {
        Verdict::Ok => {}
        Verdict::Unknown => panic!("history {h} ({rerun}): checker budget exhausted"),
        Verdict::Violation { .. } => {
            panic!("history {h} ({rerun}): {}", verdict.explain(history))
        }
    }
}

/// Fencing tokens are unique, and an acquisition that returned before another was called
/// has the smaller token.
fn check_tokens(history: &[Operation<Input, Output>]) -> Result<(), String> {
    let mut acquired: Vec<(u64, u64, u64)> = history
        .iter()
        .filter_map(|op| match op.output {
            Some(Output::Acquired { token, .. }) => Some((op.call, op.ret, token)),
            _ => None,
        })
        .collect();
    let mut tokens: Vec<u64> = acquired.iter().map(|a| a.2).collect();
    tokens.sort_unstable();
    if let Some(w) = tokens.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("token {} handed out twice", w[0]));
    }
    acquired.sort_unstable();
    for (i, a) in acquired.iter().enumerate() {
        if let Some(b) = acquired[i + 1..].iter().find(|b| a.1 < b.0 && a.2 > b.2) {
            return Err(format!(
                "token {} returned before token {} was asked for",
                a.2, b.2
            ));
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// A store's settings: the still clock, the lease, and `Immediate` or `Bounded` (2 ms).
fn builder(immediate: bool) -> idemstore::Builder {
    let durability = if immediate {
        Durability::Immediate
    } else {
        Durability::Bounded {
            max_delay: Duration::from_millis(2),
        }
    };
    Store::builder()
        .lease(LEASE)
        .durability(durability)
        .clock(ManualClock::new(1_700_000_000_000))
}

/// The knobs both tests share: threads and operations, the base seed, and a forced durability
/// (`IDEMSTORE_LIN_IMMEDIATE`).
fn knobs() -> (Arc<Settings>, u64, Option<bool>) {
    let settings = Arc::new(Settings {
        threads: env_u64("IDEMSTORE_LIN_THREADS", 8) as usize,
        ops: env_u64("IDEMSTORE_LIN_OPS", 24) as usize,
    });
    let base = env_u64("IDEMSTORE_SEED", {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(0, |d| d.as_nanos() as u64)
    });
    let forced = std::env::var("IDEMSTORE_LIN_IMMEDIATE")
        .ok()
        .map(|v| v.trim() == "1");
    (settings, base, forced)
}

#[test]
fn concurrent_histories_are_linearizable() {
    let histories = env_u64("IDEMSTORE_LIN_HISTORIES", 200);
    let (settings, base, forced) = knobs();
    let dir = tempfile::tempdir().unwrap();
    // Each store process runs SEGMENT histories; every fourth acknowledges after the sync
    // (`Immediate`, slower), the others before it (`Bounded`), unless the knob says otherwise.
    let immediate_in = |segment: u64| forced.unwrap_or(segment % 4 == 3);
    let open = |segment: u64| {
        builder(immediate_in(segment))
            .open(dir.path().join("lin.redb"))
            .expect("the store opens")
    };
    let mut store = Arc::new(open(0));
    let (started, mut ops, mut acquired) = (Instant::now(), 0, 0);
    for h in 0..histories {
        let seed = base.wrapping_add(h);
        // A fresh process now and then: the directory is rebuilt from the file.
        if h > 0 && h.is_multiple_of(SEGMENT) {
            drop(store);
            store = Arc::new(open(h / SEGMENT));
        }
        let history = run_history(&store, seed, &settings);
        ops += history.len();
        acquired += history
            .iter()
            .filter(|o| matches!(o.output, Some(Output::Acquired { .. })))
            .count();
        let rerun = format!(
            "rerun: IDEMSTORE_SEED={seed} IDEMSTORE_LIN_HISTORIES=1 IDEMSTORE_LIN_IMMEDIATE={} \
             IDEMSTORE_LIN_THREADS={} IDEMSTORE_LIN_OPS={} cargo test --test linearizability",
            u8::from(immediate_in(h / SEGMENT)),
            settings.threads,
            settings.ops
        );
        // No fault is injected here: a failure is no answer this store may give.
        if let Some(op) = history
            .iter()
            .find(|o| matches!(o.output, Some(Output::Unknown | Output::Refused)))
        {
            panic!("history {h} ({rerun}): {op:?} failed with no fault injected");
        }
        check_history(h, &rerun, &history);
    }
    eprintln!(
        "{histories} histories, {ops} operations ({acquired} acquisitions), 0 violations in {:?} (base IDEMSTORE_SEED={base})",
        started.elapsed()
    );
}

/// Histories with an injected I/O fault: before each history one write, sync or `set_len` of
/// a simulated disk is set to fail (`fail_nth`, the first to the eighth from then), so a
/// commit in the middle of the threads' batches fails. Its operations answer
/// `OutcomeUnknown`: in the model each took effect before it returned or not at all, and every
/// answer after it must agree on which (the store waits for its recovery before answering
/// from its directory). A store that poisoned itself answers `Poisoned` (refused, no effect)
/// and is reopened for the next history.
///
/// Knob: `IDEMSTORE_LIN_FAULT_HISTORIES` (default 100; the long run is 10,000), with the
/// other test's threads, operations, durability and seed knobs (three stores in four are
/// `Immediate` here).
#[test]
fn histories_with_injected_faults_are_linearizable() {
    use idemstore::sim_disk::{Op as DiskOp, SimDisk};
    let histories = env_u64("IDEMSTORE_LIN_FAULT_HISTORIES", 100);
    let (settings, base, forced) = knobs();
    // Three stores in four `Immediate`: a bounded-mode commit writes nothing until its sync,
    // which answers no caller, so faults there seldom reach an operation.
    let immediate_in = |segment: u64| forced.unwrap_or(segment % 4 != 3);
    let disk = SimDisk::new();
    let open = |segment: u64| {
        builder(immediate_in(segment))
            // 16 one-block frames: the log fills and checkpoints every few batches.
            .log_capacity(64 << 10)
            .open_sim(&disk)
            .expect("the store opens")
    };
    let mut store = Arc::new(open(0));
    let mut segment = 0;
    let (started, mut ops, mut unknown, mut refused, mut fired, mut reopened) =
        (Instant::now(), 0, 0, 0, 0, 0);
    for h in 0..histories {
        let seed = base.wrapping_add(h);
        if h > 0 && h.is_multiple_of(SEGMENT) {
            drop(store);
            segment = h / SEGMENT;
            store = Arc::new(open(segment));
        }
        let mut rng = Rng::new(seed ^ 0xfa17);
        let kind = [DiskOp::Write, DiskOp::Sync, DiskOp::SetLen][rng.below(3) as usize];
        let n = 1 + rng.below(8);
        let before = disk.counts().get(kind);
        disk.fail_nth(kind, n);
        let history = run_history(&store, seed, &settings);
        disk.heal();
        fired += u64::from(disk.counts().get(kind) - before >= n);
        ops += history.len();
        let count = |o: &Output| {
            history
                .iter()
                .filter(|op| op.output.as_ref() == Some(o))
                .count()
        };
        unknown += count(&Output::Unknown);
        refused += count(&Output::Refused);
        let rerun = format!(
            "rerun: IDEMSTORE_SEED={seed} IDEMSTORE_LIN_FAULT_HISTORIES=1 \
             IDEMSTORE_LIN_IMMEDIATE={} IDEMSTORE_LIN_THREADS={} IDEMSTORE_LIN_OPS={} \
             cargo test --test linearizability faults (fault: {kind:?} #{n})",
            u8::from(immediate_in(segment)),
            settings.threads,
            settings.ops
        );
        check_history(h, &rerun, &history);
        // A poisoned store (the fault struck its recovery too) is reopened.
        if let Err(Error::Poisoned { .. }) = store.flush() {
            reopened += 1;
            drop(store);
            store = Arc::new(open(segment));
        }
    }
    eprintln!(
        "{histories} histories with a fault ({fired} reached), {ops} operations, {unknown} \
         OutcomeUnknown answers, {refused} refused by a poisoned store, {reopened} stores \
         reopened after poisoning, 0 violations in {:?} (base IDEMSTORE_SEED={base})",
        started.elapsed()
    );
    // Not vacuous at the default size: faults struck the threads' operations.
    if histories >= 50 {
        assert!(
            fired * 3 >= histories && unknown > 0,
            "few faults reached the operations"
        );
    }
}

/// The sequential model and the checker together refuse what the store must never do, and
/// accept the overlapping answers it may give: without this, a model that accepted anything
/// would let every history pass.
#[test]
fn the_model_refuses_wrong_answers() {
    type Op = lin::Operation<Input, Output>;
    let op = |client, call, ret, input, output| Op {
        client,
        call,
        ret,
        input,
        output: Some(output),
    };
    let claim = Input::Claim { key: 0, fp: None };
    let acquired = |token| Output::Acquired { token, attempt: 1 };
    let in_flight = Output::InFlight { attempt: 1 };
    let complete = |token, body| Input::Complete {
        key: 0,
        token,
        body,
    };
    let replay = |body| Output::Replay { body, attempt: 1 };
    let release = |token| Input::Release { key: 0, token };
    let get = || Input::Get { key: 0 };
    let get_in_flight = Output::GetInFlight {
        attempt: 1,
        previous: false,
    };
    let verdict = |history: &[Op]| {
        check_partitioned_with_budget(|_| KeyState::Absent, history, Input::key, BUDGET)
    };
    let wrong: Vec<(&str, Vec<Op>)> = vec![
        (
            "two owners, one after the other",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(1, 2, 3, claim.clone(), acquired(2)),
            ],
        ),
        (
            "two owners at once",
            vec![
                op(0, 0, 3, claim.clone(), acquired(1)),
                op(1, 1, 2, claim.clone(), acquired(2)),
            ],
        ),
        (
            "in flight before anyone claimed",
            vec![
                op(1, 0, 1, claim.clone(), in_flight.clone()),
                op(0, 2, 3, claim.clone(), acquired(1)),
            ],
        ),
        (
            "a replay of a body never stored",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op(1, 4, 5, claim.clone(), replay(8)),
            ],
        ),
        (
            "a completion forgotten",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op(1, 4, 5, Input::Get { key: 0 }, Output::Absent),
            ],
        ),
        (
            "a stale lease completing",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, Input::Release { key: 0, token: 1 }, Output::Ok),
                op(1, 4, 5, claim.clone(), acquired(2)),
                op(0, 6, 7, complete(1, 7), Output::Ok),
            ],
        ),
        (
            "an unknown release read as not done, then as done (4237433)",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Unknown),
                op(1, 4, 5, get(), get_in_flight.clone()),
                op(1, 6, 7, get(), Output::Absent),
            ],
        ),
        (
            "an unknown claim handing out a lease",
            vec![
                op(0, 0, 1, claim.clone(), Output::Unknown),
                op(1, 2, 3, claim.clone(), in_flight.clone()),
                op(0, 4, 5, complete(1, 7), Output::Ok),
            ],
        ),
        (
            "a refused (poisoned) release taking effect",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Refused),
                op(1, 4, 5, get(), Output::Absent),
            ],
        ),
    ];
    for (what, history) in &wrong {
        assert!(
            matches!(verdict(history), Verdict::Violation { .. }),
            "{what}: accepted"
        );
    }
    let right: Vec<(&str, Vec<Op>)> = vec![
        (
            "a loser overlapping the winner",
            vec![
                op(1, 0, 3, claim.clone(), in_flight.clone()),
                op(0, 1, 2, claim.clone(), acquired(1)),
            ],
        ),
        (
            "a replay overlapping the completion",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 5, complete(1, 7), Output::Ok),
                op(1, 3, 4, claim.clone(), replay(7)),
            ],
        ),
        (
            "an unknown release done, for good",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Unknown),
                op(1, 4, 5, get(), Output::Absent),
                op(1, 6, 7, claim.clone(), acquired(2)),
            ],
        ),
        (
            "an unknown release not done, for good",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Unknown),
                op(1, 4, 5, get(), get_in_flight.clone()),
                op(0, 6, 7, complete(1, 7), Output::Ok),
            ],
        ),
        (
            "an unknown claim that acquired: its lease is nobody's",
            vec![
                op(0, 0, 1, claim.clone(), Output::Unknown),
                op(1, 2, 3, claim.clone(), in_flight.clone()),
            ],
        ),
    ];
    for (what, history) in &right {
        assert!(matches!(verdict(history), Verdict::Ok), "{what}: refused");
    }
}
