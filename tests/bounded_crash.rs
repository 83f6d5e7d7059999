//! `Durability::Bounded` across power losses: everything acknowledged before a `flush()`
//! returned survives a crash byte for byte; what was acknowledged after it may be lost, but
//! never comes back altered.
//!
//! Each run claims fresh keys on a [`SimDisk`] from one thread (each batch committed by the
//! caller, in its own thread), completes most of them with a body of their own, calls
//! `flush()` now and then, and loses power at a random point (`SimDisk::crash`: the durable
//! image plus a random, sector-torn subset of the unsynced writes). The store then reopens on
//! the crashed image and every key is claimed once more:
//! - a completion acknowledged before the last flush replays its body;
//! - a claim acknowledged before the last flush and not completed by then is still held (taken
//!   over, flagged, since its process is gone) or completed with its own body;
//! - any other key is fresh, held by a takeover, or replays its own body;
//! - every lease acquired after the crash has a fencing token above every token handed out
//!   before it (tokens are reserved a few at a time here, 1 to 16, so runs cross many
//!   reservations; each reservation is a durable commit).
//!
//! Half of the runs use a `max_delay` of 60 s (only flushes sync), half 2 ms (the writer
//! thread's timer syncs too, at moments the test does not control; the checks above hold
//! either way). Knobs: `IDEMSTORE_BOUNDED_CRASHES` (runs, default 20: about 10 s in a debug
//! build, 0.3 s in release) and `IDEMSTORE_SEED`.

#[path = "support/ack_model.rs"]
mod ack_model;

use ack_model::{Rng, base_seed, env_u64};
use idemstore::sim_disk::SimDisk;
use idemstore::{ClaimOutcome, Durability, Key, ManualClock, Response, Store};
use std::time::Duration;

/// What the caller was told about a key.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Acked {
    Claimed,
    Completed,
}

fn key(i: usize) -> Key {
    Key::new("bounded", format!("k-{i:05}"))
}

/// A body of its own per key, up to a few KB (several pages for some keys).
fn body(i: usize) -> Vec<u8> {
    let len = 16 + (i * 7919) % 6000;
    (0..len).map(|b| (b as u8) ^ (i as u8)).collect()
}

fn open(disk: &SimDisk, max_delay: Duration, clock: &ManualClock, tokens: u64) -> Store {
    Store::builder()
        .durability(Durability::Bounded { max_delay })
        .token_block(tokens)
        .clock(clock.clone())
        .open_sim(disk)
        .expect("the store opens")
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let max_delay = if seed.is_multiple_of(2) {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(2)
    };
    let clock = ManualClock::new(1_741_953_600_000);
    // Fencing tokens reserved a few at a time, so that runs cross many reservations.
    let tokens = 1 + rng.below(16);
    let disk = SimDisk::new();
    let store = open(&disk, max_delay, &clock, tokens);
    let ops = 20 + rng.below(200) as usize;
    let mut acked: Vec<Acked> = Vec::new();
    let mut flushed: Vec<Acked> = Vec::new();
    let mut last_token = 0;
    for i in 0..ops {
        let ClaimOutcome::Acquired(lease) = store.claim(&key(i), None).expect("claim") else {
            panic!("seed {seed}: key {i} is new");
        };
        assert!(lease.token() > last_token, "seed {seed}: tokens go up");
        last_token = lease.token();
        acked.push(Acked::Claimed);
        if rng.below(4) != 0 {
            store
                .complete(&lease, Response::new(200).body(body(i)))
                .expect("complete");
            acked[i] = Acked::Completed;
        }
        if rng.below(8) == 0 {
            store.flush().expect("flush");
            flushed = acked.clone();
        }
    }
    let crashed = disk.crash(rng.next_u64());
    drop(store);

    let store = open(&crashed, max_delay, &clock, tokens);
    for (i, was) in acked.iter().enumerate() {
        let durable = flushed.get(i).copied();
        let answer = store.claim(&key(i), None).expect("claim after the crash");
        // A lease acknowledged before the crash, even one the crash took back, must never
        // share its fencing token with a lease acquired after it.
        if let ClaimOutcome::Acquired(lease) = &answer {
            assert!(
                lease.token() > last_token,
                "seed {seed} (IDEMSTORE_SEED={seed} IDEMSTORE_BOUNDED_CRASHES=1): key {i} got \
                 token {} after the crash; tokens up to {last_token} were handed out before it \
                 (reserved {tokens} at a time)",
                lease.token()
            );
        }
        let ok = match (&answer, durable) {
            (ClaimOutcome::Replay(replay), _) => {
                *was == Acked::Completed && replay.response.body == body(i)
            }
            (ClaimOutcome::Acquired(lease), Some(Acked::Claimed)) => lease.is_takeover(),
            (ClaimOutcome::Acquired(_), None) => true,
            _ => false,
        };
        assert!(
            ok,
            "seed {seed} (IDEMSTORE_SEED={seed} IDEMSTORE_BOUNDED_CRASHES=1): key {i}, \
             acknowledged {was:?}, flushed {durable:?}, answered after the crash {answer:?}"
        );
    }
}

#[test]
fn flushed_acknowledgements_survive_a_power_loss() {
    let base = base_seed(0xb0_c4a5);
    let runs = env_u64("IDEMSTORE_BOUNDED_CRASHES").unwrap_or(20);
    for r in 0..runs {
        run(base + r);
    }
}
