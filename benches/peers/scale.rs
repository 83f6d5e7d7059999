//! Pre-filled idemstore files and the scale measurements that need a clean process: the
//! prefill runs in a child process (the bench binary itself, told so by an environment
//! variable), and the reopen time and resident memory per live key are measured in another
//! fresh child, so neither the parent's engines nor memory the allocator kept from the prefill
//! distort them.

use crate::engines::{self, Kind, SCOPE};
use idemstore::{Key, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CHILD: &str = "IDEMSTORE_BENCH_CHILD";
const CHILD_PATH: &str = "IDEMSTORE_BENCH_CHILD_PATH";
const CHILD_LIVE: &str = "IDEMSTORE_BENCH_CHILD_LIVE";

/// What the scale children measured for one live-key count.
#[derive(Clone, Debug, Default)]
pub struct ScaleFacts {
    pub prefill_s: f64,
    pub file_bytes: u64,
    /// Reopen with the file evicted from the page cache (after `sync`).
    pub reopen_cold_s: f64,
    /// Reopen right after, from the page cache.
    pub reopen_warm_s: f64,
    /// Resident memory the reopened store added, per live key.
    pub rss_per_key: f64,
}

/// Pre-filled idemstore files, made once per live-key count in the run's directory.
pub struct Templates {
    dir: PathBuf,
    made: HashMap<u64, (PathBuf, ScaleFacts)>,
}

/// Runs a child mode if this process is one; answers whether it was.
pub fn child_main() -> bool {
    let Ok(mode) = std::env::var(CHILD) else {
        return false;
    };
    let path = PathBuf::from(std::env::var(CHILD_PATH).expect("child path"));
    let live: u64 = std::env::var(CHILD_LIVE)
        .expect("child live")
        .parse()
        .expect("live count");
    match mode.as_str() {
        "prefill" => {
            let t = Instant::now();
            engines::prefill_idemstore(&path, live);
            println!("prefill_s={}", t.elapsed().as_secs_f64());
        }
        "reopen" => {
            let rss0 = rss_bytes();
            let t = Instant::now();
            let store = Store::builder()
                .max_in_flight(engines::MAX_IN_FLIGHT)
                .open(&path)
                .expect("reopen");
            let reopen = t.elapsed().as_secs_f64();
            let rss1 = rss_bytes();
            let stats = store.stats();
            assert!(
                stats.live_keys >= live,
                "reopened {} live keys, expected at least {live}",
                stats.live_keys
            );
            // A pre-filled key is still claimed after the reopen (taken over, not lost).
            let probe = Key::new(SCOPE, engines::prefill_key(live / 2));
            assert!(store.get(&probe).expect("get").is_some(), "prefill lost");
            println!(
                "reopen_s={reopen} rss_per_key={}",
                rss1.saturating_sub(rss0) as f64 / live.max(1) as f64
            );
            store.close().expect("close");
        }
        other => panic!("unknown child mode {other}"),
    }
    true
}

fn run_child(mode: &str, path: &Path, live: u64) -> HashMap<String, f64> {
    // /proc/self/exe runs this very binary even when a rebuild replaced the file meanwhile.
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_path_buf()
    } else {
        std::env::current_exe().expect("current exe")
    };
    let out = Command::new(exe)
        .env(CHILD, mode)
        .env(CHILD_PATH, path)
        .env(CHILD_LIVE, live.to_string())
        .output()
        .expect("spawn the bench child");
    assert!(
        out.status.success(),
        "bench child {mode} for {live} keys failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Writes dirty pages out, so background writeback of a prefill or of the previous case does
/// not land in the next measurement.
pub fn sync_disk() {
    let _ = Command::new("sync").status();
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    name.into()
}

/// The suffixes of the files beside a store file that belong to it (its commit log and
/// directory snapshot) present beside `path`.
fn companions(path: &Path) -> Vec<&'static str> {
    ["-log", "-snapshot"]
        .into_iter()
        .filter(|suffix| with_suffix(path, suffix).exists())
        .collect()
}

/// Evicts the store file at `path` and its companions from the page cache (GNU dd:
/// `iflag=nocache count=0` drops the whole file).
fn evict(path: &Path) {
    let files = companions(path).into_iter().map(|s| with_suffix(path, s));
    for file in std::iter::once(path.to_path_buf()).chain(files) {
        let _ = Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status();
    }
}

impl Templates {
    pub fn new(dir: PathBuf) -> Templates {
        std::fs::create_dir_all(&dir).expect("templates dir");
        Templates {
            dir,
            made: HashMap::new(),
        }
    }

    /// The pre-filled file for `live` keys (made on first use) and what making it measured.
    pub fn get(&mut self, live: u64) -> (PathBuf, ScaleFacts) {
        if let Some(made) = self.made.get(&live) {
            return made.clone();
        }
        let path = self.dir.join(format!("idem-{live}.redb"));
        eprintln!("prefilling an idemstore file with {live} live keys ...");
        let prefill = run_child("prefill", &path, live);
        sync_disk();
        let facts = ScaleFacts {
            prefill_s: prefill["prefill_s"],
            file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            ..ScaleFacts::default()
        };
        self.made.insert(live, (path.clone(), facts.clone()));
        (path, facts)
    }

    /// Copies the pre-filled file for `live` keys to `to`.
    pub fn copy(&mut self, live: u64, to: &Path) {
        let (from, _) = self.get(live);
        std::fs::copy(&from, to).expect("copy the pre-filled file");
        for suffix in companions(&from) {
            std::fs::copy(with_suffix(&from, suffix), with_suffix(to, suffix))
                .expect("copy the pre-filled file's companion");
        }
        sync_disk();
    }

    /// Prefill, file size, cold and warm reopen, resident memory per key for `live` keys.
    pub fn measure(&mut self, live: u64) -> ScaleFacts {
        let (path, mut facts) = self.get(live);
        sync_disk();
        evict(&path);
        let cold = run_child("reopen", &path, live);
        let warm = run_child("reopen", &path, live);
        facts.reopen_cold_s = cold["reopen_s"];
        facts.reopen_warm_s = warm["reopen_s"];
        facts.rss_per_key = warm["rss_per_key"];
        eprintln!(
            "scale {live} live keys ({}): prefill {:.1} s, file {} MiB, reopen {:.2} s cold / {:.2} s warm, {:.0} B RSS per live key",
            Kind::IdemImmediate.name(),
            facts.prefill_s,
            facts.file_bytes >> 20,
            facts.reopen_cold_s,
            facts.reopen_warm_s,
            facts.rss_per_key
        );
        facts
    }
}

/// Resident memory of this process, from /proc.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}
