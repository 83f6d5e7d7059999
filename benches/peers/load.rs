//! The load generator: a pool of caller threads (one engine worker, so one connection, each)
//! that run a workload continuously from the pool's start to its end, and the cheap
//! correctness checks that keep a fast-but-wrong engine from posting a figure.
//!
//! Throughput is sampled as windows of that continuous load (operations done during the window
//! over its wall time), so no sample pays for waking or joining threads, and no caller waits
//! for stragglers between samples. Latency is recorded in a last window, in per-thread HDR
//! histograms merged at the end.
//!
//! Every key a pool touches is fresh: it carries the pool's run number, so nothing measured in
//! one case collides with another on a shared engine.

use crate::engines::{Claim, Engine, Worker};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Hot keys per round of the hot-key workload.
pub const HOT_KEYS: u64 = 64;
/// How often each caller claims each hot key per round (so most claims lose even on one
/// thread: 3 of 4 there, all but one in `4 * threads` with more).
pub const HOT_REPEATS: u64 = 4;
/// In the mix, one request in this many is a retry of a recent key of the same caller.
const RETRY_EVERY: u64 = 10;
/// Recent completed keys a caller remembers for its retries.
const RECENT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every claim is a fresh key; every claim must acquire.
    Unique,
    /// Rounds of 64 fresh hot keys; every caller claims each key of a round `HOT_REPEATS`
    /// times, all callers walking the same sequence; exactly one winner per key.
    Hot,
    /// 90% new requests (claim, then complete), 10% retries of a recent completed key (must
    /// replay). One operation is one store call.
    Mix,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Unique => "unique",
            Workload::Hot => "hot64",
            Workload::Mix => "mix",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        [Workload::Unique, Workload::Hot, Workload::Mix]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

/// A key of 33 ASCII bytes (about a UUID): a tag, then 32 hex digits that look random (real
/// idempotency keys are random, and sequential keys would flatter the peers keyed by key) yet
/// are distinct for distinct (run, field, seq): each half is a bijective mix of its inputs.
pub fn key(tag: u8, run: u32, field: u32, seq: u64) -> [u8; 33] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let halves = [mix(seq), mix((u64::from(run) << 32) | u64::from(field))];
    let mut out = [0u8; 33];
    out[0] = tag;
    for (h, half) in halves.into_iter().enumerate() {
        for i in 0..16 {
            out[1 + 16 * h + i] = HEX[((half >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    out
}

/// splitmix64's finalizer: a bijection on `u64`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A latency histogram: 1 ns to 1 hour at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram bounds")
}

/// Run numbers: distinct for every pool of this process.
static NEXT_RUN: AtomicU32 = AtomicU32::new(1);

/// An operation counter on a cache line of its own (only its thread writes it).
#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicU64);

/// What the caller threads share.
struct Shared {
    workload: Workload,
    run: u32,
    stop: AtomicBool,
    record: AtomicBool,
    counters: Vec<Counter>,
    failure: Mutex<Option<String>>,
}

struct Report {
    ops: u64,
    /// Hot workload: the ids (round * 64 + key) this caller won.
    wins: Vec<u64>,
    hist: Histogram<u64>,
}

/// What the last (latency) window of a pool measured.
pub struct Run {
    /// Operations in the window, and its length.
    pub ops: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// Operations over the pool's whole life.
    pub total_ops: u64,
    /// Hot workload: the fraction of all claims of the pool's life that acquired.
    pub win_rate: f64,
}

impl Run {
    /// Nothing timed yet, of a pool that ran `total_ops` operations.
    fn empty(total_ops: u64) -> Run {
        Run {
            ops: 0,
            elapsed: Duration::ZERO,
            hist: histogram(),
            total_ops,
            win_rate: 1.0,
        }
    }
}

/// `threads` caller threads, each holding one worker (connection) of an engine, running the
/// workload from `start` until `finish` (or drop).
pub struct Pool {
    label: String,
    shared: Arc<Shared>,
    reports: Receiver<Report>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn start(
        label: &str,
        engine: &Arc<dyn Engine>,
        threads: usize,
        workload: Workload,
    ) -> Pool {
        let shared = Arc::new(Shared {
            workload,
            run: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
            stop: AtomicBool::new(false),
            record: AtomicBool::new(false),
            counters: (0..threads).map(|_| Counter::default()).collect(),
            failure: Mutex::new(None),
        });
        let (report_tx, reports) = channel();
        let (ready_tx, ready) = channel::<Result<(), String>>();
        let go = Arc::new(Barrier::new(threads + 1));
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (engine, shared, go) = (Arc::clone(engine), Arc::clone(&shared), Arc::clone(&go));
            let (report_tx, ready_tx) = (report_tx.clone(), ready_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    let worker = catch_unwind(AssertUnwindSafe(|| engine.worker(t)));
                    let _ =
                        ready_tx.send(worker.as_ref().map(|_| ()).map_err(|p| panic_text(&**p)));
                    drop(ready_tx);
                    go.wait();
                    let Ok(mut worker) = worker else { return };
                    let mut report = Report {
                        ops: 0,
                        wins: Vec::new(),
                        hist: histogram(),
                    };
                    let outcome = catch_unwind(AssertUnwindSafe(|| {
                        run(&mut *worker, &shared, t, &mut report)
                    }));
                    if let Err(p) = outcome {
                        shared.failure.lock().get_or_insert(panic_text(&*p));
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    let _ = report_tx.send(report);
                })
                .expect("spawn a bench thread");
            handles.push(handle);
        }
        drop(ready_tx);
        let failed: Vec<String> = ready.iter().take(threads).filter_map(Result::err).collect();
        if !failed.is_empty() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        go.wait();
        let pool = Pool {
            label: label.to_string(),
            shared,
            reports,
            handles,
        };
        if let Some(e) = failed.first() {
            panic!("{label}: a caller thread could not start: {e}");
        }
        pool
    }

    fn ops_so_far(&self) -> u64 {
        self.shared
            .counters
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    fn check_failure(&self) {
        let failure = self.shared.failure.lock().clone();
        if let Some(f) = failure {
            panic!("{}: a caller failed: {f}", self.label);
        }
    }

    /// Samples the running load for `window`; answers the time `ops` operations took at the
    /// rate observed (what criterion's `iter_custom` expects).
    pub fn sample(&self, ops: u64, window: Duration) -> Duration {
        let (c0, t0) = (self.ops_so_far(), Instant::now());
        std::thread::sleep(window);
        let (c1, elapsed) = (self.ops_so_far(), t0.elapsed());
        self.check_failure();
        elapsed.mul_f64(ops as f64 / (c1 - c0).max(1) as f64)
    }

    /// Records every operation's latency for `window`, then stops the callers and checks the
    /// hot workload's winners over the pool's whole life.
    pub fn finish(mut self, window: Duration) -> Run {
        self.shared.record.store(true, Ordering::Relaxed);
        let (c0, t0) = (self.ops_so_far(), Instant::now());
        std::thread::sleep(window);
        let (c1, elapsed) = (self.ops_so_far(), t0.elapsed());
        self.shared.record.store(false, Ordering::Relaxed);
        let mut reports = self.stop();
        self.check_failure();
        let mut hist = histogram();
        for r in &reports {
            hist.add(&r.hist).expect("merge histograms");
        }
        let total_ops: u64 = reports.iter().map(|r| r.ops).sum();
        let mut win_rate = 1.0;
        if self.shared.workload == Workload::Hot {
            win_rate = check_hot(&self.label, &mut reports) as f64 / total_ops.max(1) as f64;
        }
        Run {
            ops: c1 - c0,
            elapsed,
            hist,
            total_ops,
            win_rate,
        }
    }

    fn stop(&mut self) -> Vec<Report> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let reports: Vec<Report> = self.reports.iter().take(self.handles.len()).collect();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        reports
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.stop();
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Exactly one winner per hot key. Every caller walks the same sequence, operation `i` claiming
/// key `i % 64` of round `i / (64 * HOT_REPEATS)`, so the keys claimed at all are those of the
/// longest walk: the first `claimed` ids `round * 64 + key`. Each must have one winner.
fn check_hot(label: &str, reports: &mut [Report]) -> u64 {
    let longest = reports.iter().map(|r| r.ops).max().unwrap_or(0);
    let per_round = HOT_KEYS * HOT_REPEATS;
    let claimed = longest / per_round * HOT_KEYS + (longest % per_round).min(HOT_KEYS);
    let mut wins: Vec<u64> = reports
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.wins))
        .collect();
    wins.sort_unstable();
    for pair in wins.windows(2) {
        assert!(
            pair[0] != pair[1],
            "{label}: hot key {} of round {} was acquired twice",
            pair[0] % HOT_KEYS,
            pair[0] / HOT_KEYS
        );
    }
    assert!(
        wins.last().is_none_or(|&last| last < claimed),
        "{label}: a key nobody claimed was won"
    );
    assert_eq!(
        wins.len() as u64,
        claimed,
        "{label}: every claimed hot key must have exactly one winner"
    );
    claimed
}

/// One caller's loop, until the pool stops.
fn run(worker: &mut dyn Worker, shared: &Shared, thread: usize, report: &mut Report) {
    let t = thread as u32;
    let counter = &shared.counters[thread].0;
    let timed = |hist: &mut Histogram<u64>, f: &mut dyn FnMut() -> Claim| -> Claim {
        if shared.record.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let c = f();
            hist.saturating_record(t0.elapsed().as_nanos() as u64);
            c
        } else {
            f()
        }
    };
    // Mix: this caller's requests, its next fresh key, its recent completed keys.
    let mut recent = [0u64; RECENT];
    let (mut requests, mut fresh, mut completed) = (0u64, 0u64, 0usize);
    let mut ops = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let hist = &mut report.hist;
        match shared.workload {
            Workload::Unique => {
                let k = key(b'u', shared.run, t, ops);
                let c = timed(hist, &mut || worker.claim(&k));
                assert!(c == Claim::Won, "a fresh unique key must be acquired");
                ops += 1;
            }
            Workload::Hot => {
                let (round, k) = (ops / (HOT_KEYS * HOT_REPEATS), ops % HOT_KEYS);
                let hot = key(b'h', shared.run, k as u32, round);
                match timed(hist, &mut || worker.claim(&hot)) {
                    Claim::Won => report.wins.push(round * HOT_KEYS + k),
                    Claim::Busy => {}
                    Claim::Done => panic!("a hot key nobody completed was replayed"),
                }
                ops += 1;
            }
            Workload::Mix => {
                requests += 1;
                if requests % RETRY_EVERY == 0 && completed > 0 {
                    let pick =
                        (requests.wrapping_mul(0x9E37_79B9) as usize) % completed.min(RECENT);
                    let k = key(b'm', shared.run, t, recent[pick]);
                    let c = timed(hist, &mut || worker.claim(&k));
                    assert!(c == Claim::Done, "a retry of a completed key must replay");
                    ops += 1;
                } else {
                    let k = key(b'm', shared.run, t, fresh);
                    let c = timed(hist, &mut || worker.claim(&k));
                    assert!(c == Claim::Won, "a fresh key must be acquired");
                    timed(hist, &mut || {
                        worker.complete(&k);
                        Claim::Done
                    });
                    recent[completed % RECENT] = fresh;
                    completed += 1;
                    fresh += 1;
                    ops += 2;
                }
            }
        }
        counter.store(ops, Ordering::Relaxed);
    }
    report.ops = ops;
}

/// Two engines on one caller thread, unique keys, in alternating windows: each round is a
/// window of one engine, then one of the other, the order flipping every round. Both therefore
/// see the same disk in the same seconds, and a shared machine's drift (a raw fdatasync's p50
/// moved by a quarter within the hour here) cancels out of their ratio.
pub struct Paired {
    run: u32,
    workers: [Box<dyn Worker>; 2],
    seq: [u64; 2],
    /// Per round, per engine: the operations timed, the window's length, their latencies.
    rounds: Vec<[Run; 2]>,
}

impl Paired {
    pub fn new(engines: [&Arc<dyn Engine>; 2]) -> Paired {
        Paired {
            run: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
            workers: engines.map(|e| e.worker(0)),
            seq: [0; 2],
            rounds: Vec::new(),
        }
    }

    /// Runs one round of two windows; answers the first engine's operations and window.
    pub fn round(&mut self, window: Duration) -> (u64, Duration) {
        let order = if self.rounds.len().is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        let mut round = [0, 0].map(Run::empty);
        for i in order {
            let (worker, run) = (&mut self.workers[i], &mut round[i]);
            let t0 = Instant::now();
            while t0.elapsed() < window {
                let k = key(b'p', self.run, i as u32, self.seq[i]);
                let s = Instant::now();
                let c = worker.claim(&k);
                run.hist.saturating_record(s.elapsed().as_nanos() as u64);
                assert!(c == Claim::Won, "a fresh unique key must be acquired");
                self.seq[i] += 1;
                run.ops += 1;
            }
            run.elapsed = t0.elapsed();
        }
        let first = (round[0].ops, round[0].elapsed);
        self.rounds.push(round);
        first
    }

    /// Both engines' figures over the last `n` rounds (criterion's measurement samples).
    pub fn finish(self, n: usize) -> [Run; 2] {
        let total_ops = self.seq;
        let skip = self.rounds.len().saturating_sub(n);
        let mut out = total_ops.map(Run::empty);
        for round in self.rounds.into_iter().skip(skip) {
            for (o, r) in out.iter_mut().zip(round) {
                o.ops += r.ops;
                o.elapsed += r.elapsed;
                o.hist.add(&r.hist).expect("merge histograms");
            }
        }
        out
    }
}
