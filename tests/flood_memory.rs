//! Memory under a flood, measured as the process's resident set (Linux), not only as counts:
//! once `max_in_flight` claims are held, claims of distinct new keys are refused without
//! growing the process, before and after the held claims expire and are swept. In a binary of
//! its own, so no other test allocates while it measures.
//!
//! Before the fix in this commit's writer (a batch that changed nothing committed an empty
//! non-durable redb transaction, and those piled up in redb's memory until a durable commit,
//! which with the commit log only a full log brings), each round of 40,000 refused claims
//! grew the process by 400-480 KB (about 12 bytes a claim, without bound); after it, by
//! 16-32 KB.
//!
//! Knob: `IDEMSTORE_FLOOD_KEYS` (refused claims per round, default 40,000).

use idemstore::{ClaimOutcome, Durability, Error, Key, ManualClock, Store};
use std::time::Duration;

const START: u64 = 1_750_000_000_000;
const HELD: u64 = 2_000;
const THREADS: u64 = 4;

/// The resident set of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Claims of `count` new keys named `{round}-{i}` from four threads: how many were refused as
/// overloaded (the others acquired).
fn claim_all(store: &Store, round: &str, count: u64) -> u64 {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut refused = 0;
                    for i in (t..count).step_by(THREADS as usize) {
                        let key = Key::new("flood", format!("{round}-{i}"));
                        match store.claim(&key, None) {
                            Ok(ClaimOutcome::Acquired(_)) => {}
                            Err(Error::Overloaded { .. }) => refused += 1,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    refused
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

/// With `HELD` claims held, rounds of `flood` refused claims; the growth over each round after
/// the first (which warms the allocator, the queues and the threads' arenas up) must stay
/// within `limit`. Then the held claims expire and are swept, `HELD` new ones are held, and a
/// round after the warm-up one is measured again.
fn flood_rounds(durability: Durability, flood: u64, limit: u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let store = Store::builder()
        .clock(clock.clone())
        .ttl(Duration::from_secs(3600))
        .max_in_flight(HELD)
        .durability(durability)
        .open(dir.path().join("s.redb"))
        .unwrap();
    let mut round = 0;
    let mut measured = |store: &Store| {
        round += 1;
        let before = resident_bytes();
        assert_eq!(claim_all(store, &format!("flood-{round}"), flood), flood);
        assert_eq!(store.stats().in_flight_keys, HELD);
        let grown = resident_bytes().saturating_sub(before);
        eprintln!(
            "{durability:?}, round {round}: {flood} refused claims grew the resident set by \
             {grown} bytes (limit {limit})"
        );
        grown
    };
    assert_eq!(claim_all(&store, "held", HELD), 0);
    measured(&store);
    let grown = measured(&store);
    assert!(
        grown <= limit,
        "{durability:?}: {flood} refused claims grew the resident set by {grown} bytes"
    );
    assert_eq!(store.records_on_disk().unwrap(), HELD);

    // The held claims expire and are swept: room for new ones, and the flood goes on.
    clock.advance(Duration::from_secs(3601));
    store.run_pending_expiry().unwrap();
    assert_eq!(store.records_on_disk().unwrap(), 0);
    assert_eq!(claim_all(&store, "held-again", HELD), 0);
    measured(&store);
    let grown = measured(&store);
    assert!(
        grown <= limit,
        "{durability:?}: after a sweep, {flood} refused claims grew the resident set by {grown} \
         bytes"
    );
}

/// The resident set may grow by at most 4 bytes per refused claim over a round (160 KB at the
/// default size), in both durability modes. Each mode runs in a child process of its own:
/// memory a first store gave back to the allocator would hide a second one's growth.
#[test]
fn a_flood_of_refused_claims_does_not_grow_memory() {
    let flood: u64 = std::env::var("IDEMSTORE_FLOOD_KEYS").map_or(40_000, |v| v.parse().unwrap());
    let limit = (64 << 10).max(flood * 4);
    match std::env::var("IDEMSTORE_FLOOD_MODE").as_deref() {
        Ok("immediate") => flood_rounds(Durability::Immediate, flood, limit),
        Ok("bounded") => {
            let max_delay = Duration::from_millis(2);
            flood_rounds(Durability::Bounded { max_delay }, flood, limit)
        }
        Ok(other) => panic!("IDEMSTORE_FLOOD_MODE={other}: immediate or bounded"),
        Err(_) => {
            for mode in ["immediate", "bounded"] {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["a_flood_of_refused_claims_does_not_grow_memory", "--exact"])
                    .args(["--nocapture", "--test-threads=1"])
                    .env("IDEMSTORE_FLOOD_MODE", mode)
                    .output()
                    .unwrap();
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                assert!(out.status.success(), "{mode}: the child failed");
            }
        }
    }
}
