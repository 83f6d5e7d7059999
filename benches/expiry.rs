//! Expiry figures: keys swept per second; the first pass after downtime (its time, a lone
//! caller's slowest claim meanwhile, the most records it holds in the wheel at once); durable
//! claim throughput while a backlog of overdue keys drains, as a ratio to the same store with
//! no backlog.
//!
//! `cargo bench --bench expiry` (env `IDEMSTORE_EXPIRY_KEYS`, default 1,000,000 overdue keys;
//! `IDEMSTORE_EXPIRY_SECS`, default 5 s per claim measurement).

use idemstore::{ClaimOutcome, Durability, Key, ManualClock, Store};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const START: u64 = 1_750_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(prefix: &str, i: u64) -> Key {
    Key::new("tenant-0001", format!("{prefix}-{i:016x}"))
}

fn open(path: &Path, clock: &ManualClock, durability: Durability) -> Arc<Store> {
    Arc::new(
        Store::builder()
            // Pre-fills hold millions of claims that never complete.
            .max_in_flight(u64::MAX)
            .clock(clock.clone())
            .durability(durability)
            .open(path)
            .expect("open"),
    )
}

/// Claims `n` fresh keys with one-hour lifetimes, 64 threads, fast (bounded) durability.
fn prefill(store: &Arc<Store>, prefix: &'static str, n: u64) {
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in (t..n).step_by(64) {
                    let outcome = store
                        .claim_with_ttl(&key(prefix, i), None, HOUR)
                        .expect("claim");
                    assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .for_each(|t| t.join().expect("prefill thread"));
    store.flush().expect("flush");
}

/// A store at `path` holding `n` records two hours overdue, reopened (durable) after a close:
/// its first sweep pass finds them all.
fn reopened_overdue(path: &Path, prefix: &'static str, n: u64) -> Arc<Store> {
    let clock = ManualClock::new(START);
    let bounded = Durability::Bounded {
        max_delay: Duration::from_millis(100),
    };
    let store = open(path, &clock, bounded);
    prefill(&store, prefix, n);
    drop(store);
    clock.advance(2 * HOUR);
    open(path, &clock, Durability::Immediate)
}

/// Durable claims per second of fresh keys, 64 threads, for `secs`.
fn claim_rate(store: &Arc<Store>, prefix: &'static str, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (store, stop, next) = (Arc::clone(store), Arc::clone(&stop), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let outcome = store.claim(&key(prefix, i), None).expect("claim");
                    assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let n: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("claim thread"))
        .sum();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let n = env("IDEMSTORE_EXPIRY_KEYS", 1_000_000);
    let secs = env("IDEMSTORE_EXPIRY_SECS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let bounded = Durability::Bounded {
        max_delay: Duration::from_millis(100),
    };

    // Sweep rate: n overdue keys reclaimed by one explicit pass.
    let clock = ManualClock::new(START);
    let store = open(&dir.path().join("sweep.redb"), &clock, bounded);
    prefill(&store, "sweep", n);
    clock.advance(2 * HOUR);
    let t = Instant::now();
    let swept = store.run_pending_expiry().expect("sweep");
    let sweep_secs = t.elapsed().as_secs_f64();
    assert_eq!(
        store.records_on_disk().expect("count"),
        0,
        "everything overdue is reclaimed"
    );
    drop(store);

    // The first pass after downtime: n records overdue at the reopen, reclaimed by
    // `run_pending_expiry` while a lone caller claims new keys (durable); its slowest claim
    // shows how long the pass holds up the writer, the peak wheel size what it loads at once.
    let store = reopened_overdue(&dir.path().join("downtime.redb"), "down", n);
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut i, mut slowest, mut peak) = (0, Duration::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let outcome = store.claim(&key("lone", i), None).expect("claim");
                slowest = slowest.max(t.elapsed());
                assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
                peak = peak.max(store.stats().sweep_scheduled);
                i += 1;
            }
            (slowest, peak)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    // The background sweeper may have started the pass; this one waits for it.
    store.run_pending_expiry().expect("sweep");
    let first_pass = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (lone_slowest, peak_wheel) = caller.join().expect("lone caller");
    assert_eq!(
        store.stats().keys_expired,
        n,
        "everything overdue is reclaimed"
    );
    drop(store);

    // Claims with and without a backlog, durable, on two stores pre-filled alike.
    let clock = ManualClock::new(START);
    let path = dir.path().join("claims.redb");
    drop(open(&path, &clock, bounded));
    let store = open(&path, &clock, bounded);
    prefill(&store, "live", n);
    drop(store);
    let baseline_store = open(&path, &clock, Durability::Immediate);
    let baseline = claim_rate(&baseline_store, "base", secs);
    drop(baseline_store);

    let store = reopened_overdue(&dir.path().join("backlog.redb"), "due", n);
    let t = Instant::now();
    let during = claim_rate(&store, "during", secs);
    let stats = store.stats();
    let drained_in = loop {
        if store.records_on_disk().expect("count") <= (during * t.elapsed().as_secs_f64()) as u64 {
            break t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Reclaim delay with the system clock and the default 1 s tick: how long after their expiry
    // 1,000 keys with a 2 s lifetime are gone from the file.
    let store = Store::open(dir.path().join("delay.redb")).expect("open");
    let lifetime = Duration::from_secs(2);
    for i in 0..1000 {
        let outcome = store
            .claim_with_ttl(&key("delay", i), None, lifetime)
            .expect("claim");
        assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
    }
    let last_expiry = Instant::now() + lifetime;
    while store.records_on_disk().expect("count") > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let reclaim_delay = Instant::now().saturating_duration_since(last_expiry);
    drop(store);

    println!("| measure | figure |");
    println!("|---|---|");
    println!(
        "| keys swept per second (one pass, {n} overdue keys) | {:.0} |",
        swept as f64 / sweep_secs
    );
    println!(
        "| first pass after downtime, {n} overdue keys: time; a lone caller's slowest claim; \
         peak wheel entries | {:.1} s; {:.1} ms; {peak_wheel} |",
        first_pass.as_secs_f64(),
        lone_slowest.as_secs_f64() * 1e3
    );
    println!("| durable claims/s, 64 threads, {n} live keys, no backlog | {baseline:.0} |");
    println!("| durable claims/s, 64 threads, while {n} overdue keys drain | {during:.0} |");
    println!(
        "| ratio (target >= 50%) | {:.0}% |",
        100.0 * during / baseline
    );
    println!(
        "| keys expired during the claim measurement | {} |",
        stats.keys_expired
    );
    println!(
        "| backlog fully drained after | {:.1} s |",
        drained_in.as_secs_f64()
    );
    println!(
        "| reclaim delay after expiry, 1 s tick (1,000 keys, system clock) | {:.2} s |",
        reclaim_delay.as_secs_f64()
    );
}
