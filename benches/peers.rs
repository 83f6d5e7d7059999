//! Claims under contention, side by side with the peers a user would pick instead (issue 4).
//!
//! Every criterion group holds idemstore (both durability modes) and its peers on the same
//! workload, thread count and pre-filled size, so every figure is a ratio measured in one run:
//! - `idemstore_immediate`, `idemstore_bounded` (`Durability::Bounded { max_delay: 1 s }`);
//! - `redb_naive`: one redb write transaction per operation, default durability;
//! - `sqlite_wal_full`: WAL, `synchronous=FULL`, `INSERT OR IGNORE`, a connection per thread;
//! - `redis_aof_always`, `redis_aof_everysec`: `SET key v NX GET EX 86400` on a `redis-server`
//!   the suite starts on 127.0.0.1 (a connection per thread);
//! - `memory_ceiling`: a sharded in-memory map, no durability;
//! - `raw_4k_fdatasync`: one 4 KiB write + fdatasync per operation, the physical limit.
//!
//! Workloads: `unique` (fresh keys, all must acquire), `hot64` (rounds of 64 fresh hot keys
//! every thread claims 4 times each; exactly one winner per key), `mix` (90% new requests, claim
//! then complete; 10% retries of a recent key, which must replay). Keys are 33 random-looking
//! bytes. The callers of a case run continuously; each criterion sample is a window of that
//! load (its median is the table's figure), and a last window records each operation's latency
//! in an HDR histogram. The `scale` group measures 64-thread durable claims, resident memory
//! per live key and reopen time at 10 k, 1 M (and, in the scale run, 10 M) live keys. The
//! `latency_paired_unique_t1` group times idemstore (durable) and the raw fdatasync on one
//! caller thread in alternating windows, for the 1-thread latency target: measured minutes
//! apart, the two see a disk whose latency drifts by a quarter within the hour. A case
//! whose engine answers wrongly (a fresh key not acquired, two winners for a hot key, a retry
//! not replayed) or fails stops the run with the reason.
//!
//! Run (needs the `peers` feature):
//! - `cargo bench --features peers --bench peers`: the full matrix (threads 1, 2, 8, 64, 256;
//!   0 and 1 M live keys; all workloads);
//! - `IDEMSTORE_BENCH_QUICK=1 cargo bench --features peers --bench peers`: the main table
//!   (5-7 minutes on 2 cores); `scripts/bench-table.sh` runs it and prints the table;
//! - `IDEMSTORE_BENCH_SCALE=1` adds 10 M live keys to the scale group;
//! - a criterion filter selects cases: `-- claim_unique_live0/idemstore`.
//!
//! Knobs (comma lists): `IDEMSTORE_BENCH_LIVE` (live keys of the claim groups, default
//! `0,1000000`), `IDEMSTORE_BENCH_THREADS`, `IDEMSTORE_BENCH_ENGINES`, `IDEMSTORE_BENCH_WORKLOADS`
//! (`unique,hot64,mix,scale`), `IDEMSTORE_BENCH_LATENCY_SECS`, `IDEMSTORE_BENCH_DIR` (where the
//! stores live; default the system temp dir), `IDEMSTORE_BENCH_OUT` (results; default
//! `<target>/idemstore-bench`: `results.csv`, `table.md`).

// A bench's root file looks for modules beside it; these live in `benches/peers/` so that cargo
// does not take them for bench targets of their own.
#[path = "peers/engines.rs"]
mod engines;
#[path = "peers/load.rs"]
mod load;
#[path = "peers/redis.rs"]
mod redis;
#[path = "peers/report.rs"]
mod report;
#[path = "peers/scale.rs"]
mod scale;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use engines::{Ctx, Engine, Kind};
use load::{Pool, Workload};
use report::{CaseResult, Figures, Outcome, Settings, short};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What this run measures.
struct Plan {
    quick: bool,
    test: bool,
    live: Vec<u64>,
    threads: Option<Vec<usize>>,
    engines: Vec<Kind>,
    workloads: Vec<Workload>,
    scale: Vec<u64>,
    warm_up: Duration,
    samples: usize,
    /// One criterion sample: a window of the running load.
    window: Duration,
    latency: Duration,
}

fn env_list(name: &str) -> Option<Vec<String>> {
    let v = std::env::var(name).ok()?;
    Some(
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn parse_count(s: &str) -> u64 {
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("not a count: {s}"))
        * mul
}

impl Plan {
    fn from_env() -> Plan {
        let test = std::env::args().any(|a| a == "--test");
        let quick = env_on("IDEMSTORE_BENCH_QUICK");
        let workloads_and_scale = env_list("IDEMSTORE_BENCH_WORKLOADS");
        let scale_on = workloads_and_scale
            .as_ref()
            .is_none_or(|w| w.iter().any(|s| s == "scale"));
        let mut scale = if scale_on {
            vec![10_000, 1_000_000]
        } else {
            vec![]
        };
        if env_on("IDEMSTORE_BENCH_SCALE") && scale_on {
            scale.push(10_000_000);
        }
        let live = env_list("IDEMSTORE_BENCH_LIVE")
            .map(|l| l.iter().map(|s| parse_count(s)).collect())
            .unwrap_or_else(|| vec![0, 1_000_000]);
        let latency_secs: f64 = std::env::var("IDEMSTORE_BENCH_LATENCY_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1.0 } else { 3.0 });
        let mut plan = Plan {
            quick,
            test,
            live,
            threads: env_list("IDEMSTORE_BENCH_THREADS").map(|l| {
                l.iter()
                    .map(|s| s.parse().expect("IDEMSTORE_BENCH_THREADS: numbers"))
                    .collect()
            }),
            engines: env_list("IDEMSTORE_BENCH_ENGINES")
                .map(|l| {
                    l.iter()
                        .map(|s| Kind::parse(s).unwrap_or_else(|| panic!("unknown engine {s}")))
                        .collect()
                })
                .unwrap_or_else(|| engines::ALL.to_vec()),
            workloads: workloads_and_scale
                .map(|l| l.iter().filter_map(|s| Workload::parse(s)).collect())
                .unwrap_or_else(|| vec![Workload::Unique, Workload::Hot, Workload::Mix]),
            scale,
            warm_up: Duration::from_millis(if quick { 500 } else { 1000 }),
            samples: 10,
            window: Duration::from_millis(if quick { 150 } else { 300 }),
            latency: Duration::from_secs_f64(latency_secs),
        };
        if test {
            // `cargo test --benches` / `-- --test`: each case once, small and fast.
            plan.live = vec![0];
            plan.scale = vec![10_000];
            plan.threads = Some(vec![2]);
            plan.window = Duration::from_millis(20);
            plan.latency = Duration::from_millis(20);
        }
        plan
    }

    /// Thread counts of a claim group.
    fn threads(&self, workload: Workload, live: u64) -> Vec<usize> {
        if let Some(t) = &self.threads {
            return t.clone();
        }
        let all = vec![1, 2, 8, 64, 256];
        if !self.quick {
            return all;
        }
        // The main table: what the targets need, plus the unique-key curve on an empty store.
        match (workload, live) {
            (Workload::Unique, 0) => all,
            (Workload::Unique, _) => vec![64],
            (Workload::Hot, 0) => vec![8, 64],
            (Workload::Mix, 0) => vec![64],
            _ => vec![],
        }
    }
}

/// The target directory this bench binary was built into (`<target>/release/deps/peers-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn figures(ops_per_s: f64, run: &load::Run, workload: Workload) -> Figures {
    let h = &run.hist;
    let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3);
    Figures {
        ops_per_s,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: q(1.0),
        latency_ops: run.ops,
        win_rate: (workload == Workload::Hot).then_some(run.win_rate),
        writer: None,
        scale: None,
    }
}

/// The rates (operations per second) of criterion's measurement samples: the last `n` calls of
/// `iter_custom`, sorted.
fn sample_rates(samples: &[(u64, Duration)], n: usize) -> Vec<f64> {
    let tail = &samples[samples.len().saturating_sub(n)..];
    let mut rates: Vec<f64> = tail
        .iter()
        .map(|(iters, d)| *iters as f64 / d.as_secs_f64().max(1e-12))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates
}

/// The median of sorted rates: robust to the windows in which other work on a shared machine
/// took the cores (criterion's mean of per-operation times is dominated by them).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One case: criterion samples windows of a running pool, then a last window records latency.
#[expect(clippy::too_many_arguments, reason = "one case's coordinates")]
fn bench_case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    plan: &Plan,
    engines: &mut HashMap<Kind, Arc<dyn Engine>>,
    ctx: &Ctx,
    kind: Kind,
    live: u64,
    threads: usize,
    workload: Workload,
    id: BenchmarkId,
    label: &str,
) -> Option<Figures> {
    let mut pool: Option<Pool> = None;
    let mut samples = Vec::new();
    let mut commits_before = None;
    g.bench_function(id, |b| {
        let pool = pool.get_or_insert_with(|| {
            let engine = engines.entry(kind).or_insert_with(|| {
                eprintln!("opening {} with {} live keys ...", kind.name(), short(live));
                engines::open(kind, live, ctx).unwrap_or_else(|e| panic!("{label}: {e}"))
            });
            scale::sync_disk();
            commits_before = engine.commits();
            Pool::start(label, engine, threads, workload)
        });
        b.iter_custom(|iters| {
            let d = pool.sample(iters, plan.window);
            samples.push((iters, d));
            d
        });
    });
    let run = pool?.finish(plan.latency);
    let writer = match (commits_before, engines.get(&kind).and_then(|e| e.commits())) {
        (Some((ops0, commits0)), Some((ops1, commits1))) => Some((
            (ops1 - ops0) as f64 / run.total_ops.max(1) as f64,
            (ops1 - ops0) as f64 / (commits1 - commits0).max(1) as f64,
        )),
        _ => None,
    };
    if kind == Kind::Memory {
        // Fresh per case: millions of keys from earlier cases would slow its map down.
        engines.remove(&kind);
    }
    let rates = sample_rates(&samples, plan.samples);
    let f = Figures {
        writer,
        ..figures(median(&rates), &run, workload)
    };
    eprintln!(
        "{label}: {:.0} ops/s (windows {:.0}..{:.0}); latency window {:.0} ops/s: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs{}",
        f.ops_per_s,
        rates.first().copied().unwrap_or(0.0),
        rates.last().copied().unwrap_or(0.0),
        run.ops as f64 / run.elapsed.as_secs_f64().max(1e-9),
        f.p50_us.unwrap_or(0.0),
        f.p99_us.unwrap_or(0.0),
        f.p999_us.unwrap_or(0.0),
        f.max_us.unwrap_or(0.0),
        f.win_rate
            .map(|w| format!("; {:.2}% of claims acquired", w * 100.0))
            .unwrap_or_default()
            + &f.writer
                .map(|(s, b)| format!(
                    "; {:.0}% of calls via the writer, {b:.1} per commit",
                    s * 100.0
                ))
                .unwrap_or_default()
    );
    Some(f)
}

/// The 1-thread latency target's pair: idemstore (durable) and one raw 4 KiB write + fdatasync
/// in alternating windows of one caller thread (see `load::Paired`); each criterion sample is a
/// round of both, timed as idemstore's window.
fn bench_paired(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    plan: &Plan,
    engines: &mut HashMap<Kind, Arc<dyn Engine>>,
    ctx: &Ctx,
) -> Option<[Figures; 2]> {
    const PAIR: [Kind; 2] = [Kind::IdemImmediate, Kind::Fdatasync];
    let mut paired: Option<load::Paired> = None;
    g.bench_function(
        BenchmarkId::new("idemstore_immediate_vs_raw_4k_fdatasync", 1),
        |b| {
            let paired = paired.get_or_insert_with(|| {
                let [a, raw] = PAIR.map(|kind| {
                    Arc::clone(engines.entry(kind).or_insert_with(|| {
                        engines::open(kind, 0, ctx)
                            .unwrap_or_else(|e| panic!("{}: {e}", kind.name()))
                    }))
                });
                scale::sync_disk();
                load::Paired::new([&a, &raw])
            });
            b.iter_custom(|iters| {
                let (ops, d) = paired.round(plan.window);
                d.mul_f64(iters as f64 / ops.max(1) as f64)
            });
        },
    );
    let runs = paired?.finish(plan.samples);
    Some(runs.map(|run| {
        let f = figures(
            run.ops as f64 / run.elapsed.as_secs_f64().max(1e-9),
            &run,
            Workload::Unique,
        );
        eprintln!(
            "paired: {:.0} ops/s, p50 {} µs, p99 {} µs over {} operations",
            f.ops_per_s,
            f.p50_us.unwrap_or(0.0),
            f.p99_us.unwrap_or(0.0),
            run.ops
        );
        f
    }))
}

fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, plan: &Plan) {
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(plan.samples)
        .warm_up_time(plan.warm_up)
        .measurement_time(plan.window * plan.samples as u32)
        .throughput(Throughput::Elements(1));
}

fn main() {
    if scale::child_main() {
        return;
    }
    let plan = Plan::from_env();
    let listing = std::env::args().any(|a| a == "--list");
    let mut c = Criterion::default().without_plots().configure_from_args();
    let base = std::env::var_os("IDEMSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::Builder::new()
        .prefix("idemstore-bench-")
        .tempdir_in(&base)
        .expect("bench temp dir");
    let ctx = Ctx {
        dir: tmp.path().join("engines"),
        templates: RefCell::new(scale::Templates::new(tmp.path().join("templates"))),
    };
    let wants_redis = plan.engines.iter().any(|k| k.is_redis());
    let redis = match (wants_redis, listing) {
        (false, _) => Err("not part of this run".into()),
        // Listing starts nothing: name the Redis cases as if it were there.
        (true, true) => Ok("(not probed)".into()),
        (true, false) => redis::probe(&tmp.path().join("redis-probe")),
    };
    if let Err(why) = &redis
        && wants_redis
        && !listing
    {
        println!("redis unavailable: {why}");
    }
    let mut results: Vec<CaseResult> = Vec::new();

    for &live in &plan.live {
        let mut engines: HashMap<Kind, Arc<dyn Engine>> = HashMap::new();
        for &workload in &plan.workloads {
            let threads = plan.threads(workload, live);
            if threads.is_empty() {
                continue;
            }
            let group = format!("claim_{}_live{}", workload.name(), short(live));
            let mut g = c.benchmark_group(&group);
            configure(&mut g, &plan);
            for &t in &threads {
                for &kind in &plan.engines {
                    if !kind.has_keys() && (workload != Workload::Unique || live != 0) {
                        continue;
                    }
                    let label = format!("{group}/{}/{t}", kind.name());
                    let result = |outcome| CaseResult {
                        workload: workload.name(),
                        live,
                        threads: t,
                        kind,
                        outcome,
                    };
                    if kind.is_redis()
                        && let Err(why) = &redis
                    {
                        if !listing {
                            println!("{label}: redis unavailable: {why}");
                            results.push(result(Outcome::Unavailable(why.clone())));
                        }
                        continue;
                    }
                    let id = BenchmarkId::new(kind.name(), t);
                    let measured = bench_case(
                        &mut g,
                        &plan,
                        &mut engines,
                        &ctx,
                        kind,
                        live,
                        t,
                        workload,
                        id,
                        &label,
                    );
                    if let Some(f) = measured {
                        results.push(result(Outcome::Measured(f)));
                    }
                }
            }
            g.finish();
        }
        let pair_wanted = live == 0
            && plan.workloads.contains(&Workload::Unique)
            && plan.threads(Workload::Unique, 0).contains(&1)
            && [Kind::IdemImmediate, Kind::Fdatasync]
                .iter()
                .all(|k| plan.engines.contains(k));
        if pair_wanted {
            let mut g = c.benchmark_group("latency_paired_unique_t1");
            configure(&mut g, &plan);
            if let Some([idem, raw]) = bench_paired(&mut g, &plan, &mut engines, &ctx) {
                for (kind, f) in [(Kind::IdemImmediate, idem), (Kind::Fdatasync, raw)] {
                    results.push(CaseResult {
                        workload: report::PAIRED,
                        live: 0,
                        threads: 1,
                        kind,
                        outcome: Outcome::Measured(f),
                    });
                }
            }
            g.finish();
        }
        drop(engines);
    }

    if !plan.scale.is_empty() {
        let group = "scale_unique_t64";
        let mut g = c.benchmark_group(group);
        configure(&mut g, &plan);
        let threads = if plan.test { 2 } else { 64 };
        for &live in &plan.scale {
            let kind = Kind::IdemImmediate;
            let label = format!("{group}/{}/{}", kind.name(), short(live));
            let mut engines = HashMap::new();
            let id = BenchmarkId::new(kind.name(), short(live));
            let measured = bench_case(
                &mut g,
                &plan,
                &mut engines,
                &ctx,
                kind,
                live,
                threads,
                Workload::Unique,
                id,
                &label,
            );
            drop(engines);
            if let Some(mut f) = measured {
                f.scale = Some(ctx.templates.borrow_mut().measure(live));
                results.push(CaseResult {
                    workload: report::SCALE,
                    live,
                    threads,
                    kind,
                    outcome: Outcome::Measured(f),
                });
            }
        }
        g.finish();
    }
    c.final_summary();
    if listing || plan.test || results.is_empty() {
        return;
    }

    let out = std::env::var_os("IDEMSTORE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("idemstore-bench"));
    std::fs::create_dir_all(&out).expect("results dir");
    report::write_csv(&out.join("results.csv"), &results);
    let settings = settings(&plan, &redis, tmp.path());
    let table = report::table(&results, &settings);
    std::fs::write(out.join("table.md"), &table).expect("write table.md");
    println!("\n{table}");
    println!(
        "(written to {} and {})",
        out.join("table.md").display(),
        out.join("results.csv").display()
    );
}

fn settings(plan: &Plan, redis: &Result<String, String>, dir: &std::path::Path) -> Settings {
    let fs = std::process::Command::new("df")
        .args(["--output=fstype,source"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" on "))
        })
        .unwrap_or_else(|| "?".into());
    let mode = if plan.test {
        "test"
    } else if plan.quick {
        "quick"
    } else {
        "full"
    };
    Settings {
        lines: vec![
            format!(
                "mode: {mode}; the callers run continuously; criterion: {} samples, each a {:.2} s window of the running load, after {:.1} s warm-up; then a {:.1} s window records every operation's latency (HDR histogram)",
                plan.samples,
                plan.window.as_secs_f64(),
                plan.warm_up.as_secs_f64(),
                plan.latency.as_secs_f64()
            ),
            format!(
                "stores in {} ({fs}); SQLite {} (bundled, WAL, synchronous=FULL, busy_timeout {} s); Redis {}",
                dir.display(),
                rusqlite::version(),
                engines::SQLITE_BUSY_TIMEOUT.as_secs(),
                match redis {
                    Ok(v) => format!(
                        "{v} (AOF appendfsync always / everysec, no RDB, no AOF rewrite, loopback, SET NX GET EX 86400)"
                    ),
                    Err(why) => format!("unavailable: {why}"),
                }
            ),
            format!(
                "idemstore: default settings (24 h ttl, max_batch 4096, queue 16384); bounded = Durability::Bounded {{ max_delay: {} s }}; keys 33 bytes in an 11-byte scope; pre-filled keys are in flight",
                engines::BOUNDED_DELAY.as_secs()
            ),
            "ops/s: the median of criterion's samples (windows of the running load: the machine is shared, and the median ignores windows in which other work took the cores) (unique, hot64: claims; mix: store calls, a new request is claim + complete); ratios: idemstore's ops/s ÷ this row's, same workload, live keys and threads".into(),
        ],
        scale_levels: plan.scale.clone(),
    }
}
