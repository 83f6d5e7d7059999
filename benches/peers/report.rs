//! The run's figures: a CSV of every case and one markdown table of figures and ratios (each
//! peer measured in the same run), followed by the targets with their measured ratio.

use crate::engines::Kind;
use crate::load::{HOT_KEYS, HOT_REPEATS};
use crate::scale::ScaleFacts;
use std::fmt::Write as _;
use std::path::Path;

/// The scale rows' workload name.
pub const SCALE: &str = "unique (scale)";
/// The alternating-window rows of the 1-thread latency target.
pub const PAIRED: &str = "unique (paired windows)";

/// What one case measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// The median of criterion's measurement samples, as operations per second.
    pub ops_per_s: f64,
    /// Latency window: percentiles in microseconds, and how many operations it timed.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub latency_ops: u64,
    /// Hot workload: the fraction of claims that acquired.
    pub win_rate: Option<f64>,
    /// idemstore: the share of calls that went through the writer, and operations per commit.
    pub writer: Option<(f64, f64)>,
    pub scale: Option<ScaleFacts>,
}

pub enum Outcome {
    Measured(Figures),
    Unavailable(String),
}

pub struct CaseResult {
    pub workload: &'static str,
    pub live: u64,
    pub threads: usize,
    pub kind: Kind,
    pub outcome: Outcome,
}

/// Lines of settings printed above the table.
pub struct Settings {
    pub lines: Vec<String>,
    pub scale_levels: Vec<u64>,
}

pub fn short(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn us(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) if x < 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.0}"),
    }
}

fn find<'a>(
    results: &'a [CaseResult],
    workload: &str,
    live: u64,
    threads: usize,
    kind: Kind,
) -> Option<&'a Figures> {
    results.iter().find_map(|r| match &r.outcome {
        Outcome::Measured(f)
            if r.workload == workload
                && r.live == live
                && r.threads == threads
                && r.kind == kind =>
        {
            Some(f)
        }
        _ => None,
    })
}

pub fn write_csv(path: &Path, results: &[CaseResult]) {
    let mut s = String::from(
        "workload,live_keys,threads,engine,status,ops_per_s,p50_us,p99_us,p999_us,max_us,latency_ops,win_rate,writer_share,ops_per_commit,prefill_s,file_bytes,reopen_cold_s,reopen_warm_s,rss_bytes_per_key\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_default();
    for r in results {
        let _ = write!(
            s,
            "{},{},{},{},",
            r.workload,
            r.live,
            r.threads,
            r.kind.name()
        );
        match &r.outcome {
            Outcome::Unavailable(why) => {
                let _ = writeln!(
                    s,
                    "\"unavailable: {}\",,,,,,,,,,,,,,",
                    why.replace('"', "'")
                );
            }
            Outcome::Measured(f) => {
                let sc = f.scale.clone();
                let _ = writeln!(
                    s,
                    "measured,{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    f.ops_per_s,
                    opt(f.p50_us),
                    opt(f.p99_us),
                    opt(f.p999_us),
                    opt(f.max_us),
                    f.latency_ops,
                    opt(f.win_rate),
                    opt(f.writer.map(|w| w.0)),
                    opt(f.writer.map(|w| w.1)),
                    opt(sc.as_ref().map(|s| s.prefill_s)),
                    sc.as_ref()
                        .map(|s| s.file_bytes.to_string())
                        .unwrap_or_default(),
                    opt(sc.as_ref().map(|s| s.reopen_cold_s)),
                    opt(sc.as_ref().map(|s| s.reopen_warm_s)),
                    opt(sc.as_ref().map(|s| s.rss_per_key)),
                );
            }
        }
    }
    std::fs::write(path, s).expect("write the results CSV");
}

/// The markdown table of every case, then the targets.
pub fn table(results: &[CaseResult], settings: &Settings) -> String {
    let mut s = String::new();
    for line in &settings.lines {
        let _ = writeln!(s, "- {line}");
    }
    s.push('\n');
    s.push_str(
        "| workload | live keys | threads | engine | ops/s | p50 µs | p99 µs | p99.9 µs | immediate ÷ this | bounded ÷ this | notes |\n",
    );
    s.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in results {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | ",
            r.workload,
            short(r.live),
            r.threads,
            r.kind.name()
        );
        let f = match &r.outcome {
            Outcome::Unavailable(why) => {
                let _ = writeln!(s, "unavailable | | | | | | {why} |");
                continue;
            }
            Outcome::Measured(f) => f,
        };
        let ratio = |k: Kind| {
            find(results, r.workload, r.live, r.threads, k)
                .map(|i| format!("{:.2}", i.ops_per_s / f.ops_per_s))
                .unwrap_or_else(|| "-".into())
        };
        let mut notes = Vec::new();
        if let Some(w) = f.win_rate {
            notes.push(format!("{:.1}% of claims acquired", w * 100.0));
        }
        if let Some((share, per_commit)) = f.writer {
            notes.push(format!(
                "{:.0}% of calls through the writer, {per_commit:.1} per commit",
                share * 100.0
            ));
        }
        if let Some(sc) = &f.scale {
            notes.push(format!(
                "{:.0} B RSS/live key; reopen {:.2} s cold, {:.2} s warm; file {} MiB; prefill {:.0} s",
                sc.rss_per_key,
                sc.reopen_cold_s,
                sc.reopen_warm_s,
                sc.file_bytes >> 20,
                sc.prefill_s
            ));
        }
        let _ = writeln!(
            s,
            "{} | {} | {} | {} | {} | {} | {} |",
            rate(f.ops_per_s),
            us(f.p50_us),
            us(f.p99_us),
            us(f.p999_us),
            ratio(Kind::IdemImmediate),
            ratio(Kind::IdemBounded),
            notes.join("; ")
        );
    }
    s.push_str("\nTargets (issue 4), each a ratio within this run:\n\n");
    s.push_str("| target | measured | ratio | bar | result |\n|---|---|---:|---:|---|\n");
    for t in targets(results, settings) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            t.what, t.measured, t.ratio, t.bar, t.result
        );
    }
    s
}

struct TargetRow {
    what: String,
    measured: String,
    ratio: String,
    bar: String,
    result: String,
}

/// A throughput ratio `a ÷ b` of two cases, judged against `bar` (at least).
fn ratio_row(
    what: &str,
    results: &[CaseResult],
    case: (&str, u64, usize),
    a: Kind,
    b: Kind,
    bar: f64,
) -> TargetRow {
    let (w, live, t) = case;
    let (fa, fb) = (find(results, w, live, t, a), find(results, w, live, t, b));
    judge(
        what,
        fa.zip(fb).map(|(fa, fb)| {
            (
                fa.ops_per_s / fb.ops_per_s,
                format!(
                    "{} {}/s vs {} {}/s",
                    a.name(),
                    rate(fa.ops_per_s),
                    b.name(),
                    rate(fb.ops_per_s)
                ),
            )
        }),
        bar,
        true,
        "",
    )
}

fn judge(
    what: &str,
    measured: Option<(f64, String)>,
    bar: f64,
    at_least: bool,
    missing: &str,
) -> TargetRow {
    let bar_text = format!("{} {bar}", if at_least { "≥" } else { "≤" });
    match measured {
        None => TargetRow {
            what: what.into(),
            measured: if missing.is_empty() {
                "not measured in this run".into()
            } else {
                missing.into()
            },
            ratio: "-".into(),
            bar: bar_text,
            result: "NOT RUN".into(),
        },
        Some((ratio, text)) => {
            let pass = if at_least { ratio >= bar } else { ratio <= bar };
            TargetRow {
                what: what.into(),
                measured: text,
                ratio: format!("{ratio:.2}"),
                bar: bar_text,
                result: if pass { "PASS" } else { "MISS" }.into(),
            }
        }
    }
}

/// The hot-key throughput no engine can pass if it answers a claim only once the claim it
/// depends on is durable: every caller walks a round's 64 keys in the same order, so a caller
/// reaches key `k + 1` only after key `k`'s acquisition was made durable (its own answer for `k`,
/// acquired or in flight, rests on it). A round's `callers * 64 * HOT_REPEATS` claims therefore
/// take at least 64 synchronous durable writes, each no faster than the raw write + fdatasync.
fn durable_hot_bound(callers: usize, sync_us: f64) -> f64 {
    let claims_per_round = callers as f64 * (HOT_KEYS * HOT_REPEATS) as f64;
    claims_per_round / (HOT_KEYS as f64 * sync_us * 1e-6)
}

fn targets(results: &[CaseResult], settings: &Settings) -> Vec<TargetRow> {
    use Kind::*;
    let u1m = ("unique", 1_000_000, 64);
    let hot = ("hot64", 0, 64);
    let mut rows = vec![
        ratio_row(
            "64 threads, unique keys, durable, 1 M live keys: ≥ 2x Redis AOF always",
            results,
            u1m,
            IdemImmediate,
            RedisAlways,
            2.0,
        ),
        ratio_row(
            "64 threads, unique keys, durable, 1 M live keys: ≥ 20x naive redb",
            results,
            u1m,
            IdemImmediate,
            RedbNaive,
            20.0,
        ),
    ];
    // The paired windows when they ran: the two were measured in the same seconds.
    let paired = find(results, PAIRED, 0, 1, IdemImmediate).is_some();
    let (w, how) = if paired {
        (PAIRED, "alternating windows")
    } else {
        ("unique", "separate windows")
    };
    let p50 = |k: Kind| find(results, w, 0, 1, k).and_then(|f| f.p50_us);
    rows.push(judge(
        "1 thread durable: p50 latency ≤ 1.5x one raw 4 KiB write + fdatasync",
        p50(IdemImmediate).zip(p50(Fdatasync)).map(|(a, b)| {
            (
                a / b,
                format!("p50 {} µs vs {} µs ({how})", us(Some(a)), us(Some(b))),
            )
        }),
        1.5,
        false,
        "",
    ));
    for (peer, name) in [(RedisAlways, "AOF always"), (RedisEverysec, "AOF everysec")] {
        rows.push(ratio_row(
            &format!("64 threads on 64 hot keys: ≥ 10x Redis ({name})"),
            results,
            hot,
            IdemImmediate,
            peer,
            10.0,
        ));
    }
    let mut ceiling = ratio_row(
        "64 threads on 64 hot keys: ≥ 30% of the in-memory ceiling",
        results,
        hot,
        IdemImmediate,
        Memory,
        0.3,
    );
    if let (Some(sync_us), Some(memory)) = (p50(Fdatasync), find(results, hot.0, 0, 64, Memory)) {
        let bound = durable_hot_bound(hot.2, sync_us);
        let _ = write!(
            ceiling.measured,
            "; bound for any engine answering only from durable state: {}/s, {:.0}% of the \
             ceiling (a round needs 64 durable acquisitions one after another: {} claims per \
             64 raw syncs of p50 {} µs)",
            rate(bound),
            100.0 * bound / memory.ops_per_s,
            hot.2 as u64 * HOT_KEYS * HOT_REPEATS,
            us(Some(sync_us)),
        );
    }
    rows.push(ceiling);
    // The issue does not name a durability mode for the hot-key targets: the same targets with
    // bounded mode, which answers before the sync as Redis with `appendfsync everysec` does.
    rows.push(ratio_row(
        "64 threads on 64 hot keys, bounded-delay durability: ≥ 10x Redis (AOF everysec)",
        results,
        hot,
        IdemBounded,
        RedisEverysec,
        10.0,
    ));
    rows.push(ratio_row(
        "64 threads on 64 hot keys, bounded-delay durability: ≥ 30% of the in-memory ceiling",
        results,
        hot,
        IdemBounded,
        Memory,
        0.3,
    ));
    rows.push(ratio_row(
        "Bounded-delay durability, 2 threads, unique keys: ≥ 50% of the in-memory ceiling",
        results,
        ("unique", 0, 2),
        IdemBounded,
        Memory,
        0.5,
    ));
    let scale = |live: u64| find(results, SCALE, live, 64, IdemImmediate);
    let largest = settings
        .scale_levels
        .iter()
        .rev()
        .find_map(|&l| scale(l).map(|f| (l, f)));
    let not_run = match largest {
        Some((l, f)) if l < 10_000_000 => {
            let sc = f.scale.clone().unwrap_or_default();
            format!(
                "10 M keys only in the scale run (IDEMSTORE_BENCH_SCALE=1); at {}: {}/s, {:.0} B/key, reopen {:.2} s",
                short(l),
                rate(f.ops_per_s),
                sc.rss_per_key,
                sc.reopen_cold_s
            )
        }
        _ => "10 M keys only in the scale run (IDEMSTORE_BENCH_SCALE=1)".into(),
    };
    let big = scale(10_000_000);
    let small = scale(10_000);
    rows.push(judge(
        "10 M live keys: throughput ≥ 70% of the 10 k figure (64 threads, durable)",
        big.zip(small).map(|(b, s)| {
            (
                b.ops_per_s / s.ops_per_s,
                format!("{}/s vs {}/s", rate(b.ops_per_s), rate(s.ops_per_s)),
            )
        }),
        0.7,
        true,
        &not_run,
    ));
    let facts = big.and_then(|f| f.scale.clone());
    rows.push(judge(
        "10 M live keys: ≤ 100 bytes of RAM per live key",
        facts
            .as_ref()
            .map(|s| (s.rss_per_key, format!("{:.0} B/key", s.rss_per_key))),
        100.0,
        false,
        &not_run,
    ));
    rows.push(judge(
        "10 M live keys: reopen ≤ 3 s (file evicted from the page cache)",
        facts.as_ref().map(|s| {
            (
                s.reopen_cold_s,
                format!("{:.2} s (warm {:.2} s)", s.reopen_cold_s, s.reopen_warm_s),
            )
        }),
        3.0,
        false,
        &not_run,
    ));
    rows
}
