//! Claim throughput under contention: idemstore's group commit against the naive redb design
//! (one durable write transaction per claim), in the same criterion group, so every figure is a
//! ratio measured in one run.
//!
//! `cargo bench --bench claim` (add `-- --quick` for a shorter run).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idemstore::{ClaimOutcome, Key, Store};
use redb::{Database, ReadableTable, TableDefinition};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NAIVE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");

/// A claim implementation under test.
trait Claimer: Send + Sync {
    /// Claims `key`; true when this call acquired it.
    fn claim(&self, key: &[u8]) -> bool;
}

struct Idem(Store);

impl Claimer for Idem {
    fn claim(&self, key: &[u8]) -> bool {
        match self.0.claim(&Key::new("bench", key), None).expect("claim") {
            ClaimOutcome::Acquired(_) => true,
            ClaimOutcome::InFlight { .. } | ClaimOutcome::Replay(_) => false,
            ClaimOutcome::Mismatch => panic!("no fingerprints in this bench"),
        }
    }
}

/// What a user writes first: one write transaction (one fdatasync) per claim.
struct NaiveRedb(Database);

impl Claimer for NaiveRedb {
    fn claim(&self, key: &[u8]) -> bool {
        let txn = self.0.begin_write().expect("begin");
        let acquired = {
            let mut t = txn.open_table(NAIVE).expect("table");
            let absent = t.get(key).expect("get").is_none();
            if absent {
                let expires = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64
                    + 86_400_000;
                t.insert(key, expires.to_be_bytes().as_slice())
                    .expect("insert");
            }
            absent
        };
        txn.commit().expect("commit");
        acquired
    }
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// Runs `iters` claims of fresh unique keys spread over `threads` threads (each thread at least
/// one); returns the wall time scaled to exactly `iters` claims, so that the rounding up of the
/// even split does not count as free work.
fn run_unique(c: &Arc<dyn Claimer>, threads: u64, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(threads).max(1);
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (c, barrier) = (Arc::clone(c), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let base = NEXT_KEY.fetch_add(per_thread, Ordering::Relaxed);
                barrier.wait();
                for i in 0..per_thread {
                    let key = format!("key-{:016x}", base + i);
                    // Correctness check a fast-but-wrong engine cannot pass: fresh keys win...
                    assert!(c.claim(key.as_bytes()), "a fresh key must be acquired");
                }
                // ...and a key claimed already loses (one extra claim per thread and sample).
                let first = format!("key-{base:016x}");
                assert!(
                    !c.claim(first.as_bytes()),
                    "a claimed key must not be acquired again"
                );
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_thread * threads) as f64)
}

fn claim_unique(crit: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let idem: Arc<dyn Claimer> = Arc::new(Idem(
        Store::builder()
            // Every claim here stays in flight; the bench makes millions.
            .max_in_flight(u64::MAX)
            .open(dir.path().join("idem.redb"))
            .expect("open"),
    ));
    let naive: Arc<dyn Claimer> = Arc::new(NaiveRedb(
        Database::create(dir.path().join("naive.redb")).expect("open"),
    ));
    let mut g = crit.benchmark_group("claim_unique_durable");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    for threads in [1u64, 64] {
        for (name, c) in [("idemstore", &idem), ("naive_redb", &naive)] {
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                b.iter_custom(|iters| run_unique(c, t, iters))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, claim_unique);
criterion_main!(benches);
