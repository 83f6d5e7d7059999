//! The layout decision, measured: the same engine (group commit, directory, codec) over the two
//! record layouts, with a pre-filled store and 64 concurrent callers claiming fresh keys.
//!
//! `cargo bench --bench layout` (env `IDEMSTORE_LAYOUT_KEYS`, default 1,000,000 live keys;
//! `IDEMSTORE_LAYOUT_SECS`, default 10 s of measurement per layout).
//!
//! Prints, per layout: durable claims/s at 64 threads, bytes written to the file per claim
//! (from /proc/self/io), the file size, and the resident memory per live key after the prefill.

use idemstore::{ClaimOutcome, Durability, Key, Layout, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_field(file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn written_bytes() -> u64 {
    proc_field("/proc/self/io", "write_bytes:")
}

fn rss_bytes() -> u64 {
    proc_field("/proc/self/status", "VmRSS:") * 1024
}

fn key(i: u64) -> Key {
    // A UUID-sized key (36 bytes) in a tenant scope.
    Key::new(
        "tenant-0001",
        format!("{:08x}-0000-4000-8000-{:012x}", i >> 32, i),
    )
}

/// Claims keys `from..from + n` with `threads` threads; panics unless every claim acquires.
fn claim_range(store: &Arc<Store>, threads: u64, from: u64, n: u64) {
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in from + t * per..(from + (t + 1) * per).min(from + n) {
                    let outcome = store.claim(&key(i), None).expect("claim");
                    assert!(
                        matches!(outcome, ClaimOutcome::Acquired(_)),
                        "fresh keys are acquired"
                    );
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().expect("thread"));
}

fn measure(layout: Layout, live: u64, secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layout.redb");
    let rss0 = rss_bytes();
    let t = Instant::now();
    {
        let store = Arc::new(
            Store::builder()
                // Pre-fills hold millions of claims that never complete.
                .max_in_flight(u64::MAX)
                .layout(layout)
                .durability(Durability::Bounded {
                    max_delay: Duration::from_secs(1),
                })
                .open(&path)
                .expect("open"),
        );
        claim_range(&store, 64, 0, live);
        store.flush().expect("flush");
    }
    let prefill = t.elapsed();
    // Let background writeback of the prefill settle so it does not distort the measurement.
    std::process::Command::new("sync").status().ok();
    let t = Instant::now();
    let store = Arc::new(
        Store::builder()
            // Pre-fills hold millions of claims that never complete.
            .max_in_flight(u64::MAX)
            .layout(layout)
            .open(&path)
            .expect("reopen"),
    );
    let reopen = t.elapsed();
    let rss_live = rss_bytes().saturating_sub(rss0);

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(live));
    let w0 = written_bytes();
    let start = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let (store, stop, next) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&next));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let outcome = store.claim(&key(i), None).expect("claim");
                    assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let claims: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    let elapsed = start.elapsed().as_secs_f64();
    let written = written_bytes() - w0;
    let stats = store.stats();
    println!(
        "| {layout:?} | {live} | {:.0} | {:.0} | {:.1} | {} | {:.1} | {:.2} | {:.1} |",
        claims as f64 / elapsed,
        written as f64 / claims as f64,
        stats.batched_ops as f64 / stats.batches_committed.max(1) as f64,
        std::fs::metadata(&path)
            .map(|m| m.len() / (1 << 20))
            .unwrap_or(0),
        rss_live as f64 / live as f64,
        reopen.as_secs_f64(),
        prefill.as_secs_f64(),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`: nothing to list or test.
    }
    let live = env("IDEMSTORE_LAYOUT_KEYS", 1_000_000);
    let secs = env("IDEMSTORE_LAYOUT_SECS", 10);
    println!(
        "| layout | live keys | durable claims/s (64 threads) | bytes written per claim | ops per commit | file MiB | RSS bytes per live key | reopen s | prefill s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for layout in [Layout::TimeOrdered, Layout::KeyOrdered] {
        measure(layout, live, secs);
    }
}
