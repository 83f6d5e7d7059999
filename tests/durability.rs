//! Every acknowledged claim and completion survives: dropping the store, closing it, and a
//! SIGKILL of a process in the middle of a 64-thread workload.
//!
//! The SIGKILL test re-executes this test binary as a child running only [`child_workload`]
//! (selected by `--exact`, enabled by the `IDEMSTORE_CHILD_DB` variable), reads the child's
//! acknowledgements from its stdout, kills it after a pseudo-random short time, reopens the file
//! and checks every acknowledgement. `IDEMSTORE_KILLS` sets the number of kills on fresh files
//! (default 10) and `IDEMSTORE_SAME_FILE_KILLS` the number in succession on one file (default:
//! as many; each verification re-checks every acknowledgement since the first, so this phase
//! grows quadratically and a long run keeps it to a hundred or so); `IDEMSTORE_SEED` (printed
//! first, and shown with a failure's output) fixes each child's operations and the moments of
//! the kills, not how far the child's threads got by then.

use idemstore::{ClaimOutcome, Durability, Key, ManualClock, RecordInfo, Response, Store};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_DB: &str = "IDEMSTORE_CHILD_DB";
const CHILD_SEED: &str = "IDEMSTORE_CHILD_SEED";
const SCOPE: &str = "crash-test";

/// splitmix64: a tiny deterministic generator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The result stored for `key` by the attempt holding fencing token `token`: it encodes both,
/// varies in length (up to a few KiB) and holds NUL and 0xFF bytes.
fn body_for(key: &str, token: u64) -> Vec<u8> {
    let mut body = format!("{key}:{token}:").into_bytes();
    let extra = (token % 5) as usize * 700 + (token % 48) as usize;
    body.extend((0..extra).map(|i| (i as u8).wrapping_mul(37) ^ (token as u8)));
    body.extend([0, 0xff]);
    body
}

fn response_for(key: &str, token: u64) -> Response {
    Response::new(201)
        .header("content-type", "application/octet-stream")
        .header("x-token", token.to_string())
        .body(body_for(key, token))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn replayed(outcome: ClaimOutcome) -> idemstore::Replay {
    match outcome {
        ClaimOutcome::Replay(replay) => replay,
        other => panic!("expected Replay, got {other:?}"),
    }
}

mod reopen {
    //! (a) Acknowledged work is on disk after the store is dropped or closed.

    use super::*;

    /// What a workload left behind, key by key.
    #[derive(Default)]
    struct Expected {
        completed: Vec<(Key, Response, u64)>,
        in_flight: Vec<Key>,
        absent: Vec<Key>,
    }

    /// Claims 300 keys from 8 threads; completes most, releases some, expires some, leaves the
    /// rest in flight.
    fn workload(store: &Arc<Store>, clock: &ManualClock) -> Expected {
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (store, clock) = (store.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut out = Expected::default();
                    for i in 0..300u64 / 8 {
                        let name = format!("op-{t}-{i}");
                        let key = Key::new(SCOPE, &name);
                        let ClaimOutcome::Acquired(lease) = store.claim(&key, None).unwrap() else {
                            panic!("{name} is new");
                        };
                        match i % 6 {
                            0 => out.in_flight.push(key),
                            1 => {
                                store.release(&lease).unwrap();
                                out.absent.push(key);
                            }
                            2 => {
                                store.complete(&lease, Response::new(200)).unwrap();
                                assert!(store.expire(&key).unwrap());
                                out.absent.push(key);
                            }
                            _ => {
                                let response = response_for(&name, lease.token());
                                store.complete(&lease, response.clone()).unwrap();
                                out.completed.push((key, response, clock.now_ms()));
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = Expected::default();
        for t in threads {
            let out = t.join().expect("worker");
            all.completed.extend(out.completed);
            all.in_flight.extend(out.in_flight);
            all.absent.extend(out.absent);
        }
        all
    }

    fn verify(store: &Store, expected: &Expected) {
        for (key, response, completed_at) in &expected.completed {
            let Some(RecordInfo::Completed(replay)) = store.get(key).unwrap() else {
                panic!("{key:?}: acknowledged completion missing");
            };
            assert_eq!(&replay.response, response, "{key:?}");
            let completed_ms = replay
                .completed_at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert_eq!(completed_ms, *completed_at);
            assert_eq!(
                &replayed(store.claim(key, None).unwrap()).response,
                response
            );
        }
        for key in &expected.in_flight {
            assert!(
                matches!(
                    store.get(key).unwrap(),
                    Some(RecordInfo::InFlight {
                        attempt: 1,
                        from_previous_process: true,
                        ..
                    })
                ),
                "{key:?}: acknowledged claim missing"
            );
        }
        for key in &expected.absent {
            assert_eq!(
                store.get(key).unwrap(),
                None,
                "{key:?}: released or expired"
            );
        }
    }

    fn check(durability: Durability, shut: impl FnOnce(Store)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idem.redb");
        let clock = ManualClock::new(1_741_953_600_000);
        let open = || {
            // Every clean close writes a directory snapshot, which the next open reads.
            Store::builder()
                .clock(clock.clone())
                .durability(durability)
                .snapshot_min_keys(0)
                .open(&path)
                .unwrap()
        };
        let store = Arc::new(open());
        let expected = workload(&store, &clock);
        // Per thread, 37 keys: 18 completed, 7 in flight, 6 released, 6 expired.
        assert_eq!(expected.completed.len(), 8 * 18);
        assert_eq!(expected.in_flight.len(), 8 * 7);
        assert_eq!(expected.absent.len(), 8 * 12);
        shut(Arc::into_inner(store).expect("workers are done"));
        // Twice: reopening (which bumps the epoch) must not disturb the records either.
        for _ in 0..2 {
            let store = open();
            let stats = store.stats();
            assert_eq!(
                stats.keys_from_snapshot, stats.live_keys,
                "opened from the snapshot"
            );
            verify(&store, &expected);
            store.close().unwrap();
        }
    }

    #[test]
    fn after_drop() {
        check(Durability::Immediate, drop);
    }

    #[test]
    fn after_close() {
        check(Durability::Immediate, |s| s.close().unwrap());
    }

    #[test]
    fn after_drop_with_bounded_durability() {
        let bounded = Durability::Bounded {
            max_delay: Duration::from_secs(60),
        };
        check(bounded, drop);
    }

    #[test]
    fn after_close_with_bounded_durability() {
        let bounded = Durability::Bounded {
            max_delay: Duration::from_secs(60),
        };
        check(bounded, |s| s.close().unwrap());
    }
}

/// The child side of the SIGKILL test: a 64-thread claim/complete workload on the file named
/// by `IDEMSTORE_CHILD_DB`, printing `A <key> <token>` after each acquired claim and
/// `C <key> <hex of body>` after each completion that returned `Ok`. Does nothing (and passes)
/// when the variable is absent, as in a normal test run.
#[test]
fn child_workload() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let store = Arc::new(Store::open(&path).expect("child: open"));
    // End libtest's "test child_workload ... " so that every acknowledgement starts a line.
    say("\n");
    let stop_at = Instant::now() + Duration::from_secs(20);
    let pid = std::process::id();
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut rng = SplitMix(seed ^ (t << 32));
                let mut i = 0u64;
                while Instant::now() < stop_at {
                    i += 1;
                    // Half from a pool shared by the threads and by successive children on one
                    // file, half new keys.
                    let name = if rng.below(2) == 0 {
                        format!("pool-{}", rng.below(2_000))
                    } else {
                        format!("new-{pid}-{t}-{i}")
                    };
                    let key = Key::new(SCOPE, &name);
                    let ClaimOutcome::Acquired(lease) = store.claim(&key, None).expect("claim")
                    else {
                        continue;
                    };
                    let token = lease.token();
                    say(&format!("A {name} {token}\n"));
                    // Leave a quarter in flight, as a crashed request would.
                    if rng.below(4) == 0 {
                        continue;
                    }
                    let response = response_for(&name, token);
                    store.complete(&lease, response.clone()).expect("complete");
                    say(&format!("C {name} {}\n", hex(&response.body)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("child worker");
    }
}

/// Writes one whole line to stdout and flushes it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes()).expect("stdout");
    out.flush().expect("stdout");
}

#[cfg(unix)]
mod sigkill {
    //! (b) A process killed with SIGKILL in the middle of the workload.

    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    /// What the acknowledgements say about one key.
    #[derive(Clone, Debug)]
    enum Acked {
        /// Claimed by the attempt with this token, completion not acknowledged.
        Claimed(u64),
        /// Completion acknowledged with this response (status, headers and body).
        Completed(Response),
    }

    #[derive(Default)]
    struct Model {
        keys: HashMap<String, Acked>,
        tokens: HashSet<u64>,
        max_token: u64,
    }

    impl Model {
        fn acquired(&mut self, name: &str, token: u64) {
            assert!(
                !matches!(self.keys.get(name), Some(Acked::Completed(_))),
                "{name}: acquired again although its completion was acknowledged"
            );
            assert!(self.tokens.insert(token), "token {token} handed out twice");
            self.max_token = self.max_token.max(token);
            self.keys.insert(name.to_string(), Acked::Claimed(token));
        }

        fn apply(&mut self, line: &str) {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("A"), Some(name), Some(token)) => {
                    self.acquired(name, token.parse().expect("token"));
                }
                (Some("C"), Some(name), Some(body)) => {
                    let Some(Acked::Claimed(token)) = self.keys.get(name) else {
                        panic!("{name}: completion without an acknowledged claim");
                    };
                    let body = unhex(body);
                    assert_eq!(body, body_for(name, *token), "{name}: the child's own body");
                    let response = response_for(name, *token);
                    self.keys
                        .insert(name.to_string(), Acked::Completed(response));
                }
                _ => {} // libtest's own output
            }
        }
    }

    /// Runs the child on `path`, kills it after a pseudo-random time, and feeds its
    /// acknowledgements to `model`.
    fn run_and_kill(path: &Path, rng: &mut SplitMix, model: &mut Model) -> usize {
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .args([
                "--exact",
                "child_workload",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, path)
            .env(CHILD_SEED, rng.next().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            // Only whole lines count: a line cut by the kill was never fully acknowledged.
            while stdout.read_line(&mut line).expect("read child stdout") > 0 {
                if line.ends_with('\n') && tx.send(std::mem::take(&mut line)).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let mut lines = Vec::new();
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child acknowledged nothing within 60 s");
        lines.push(first);
        // Wait for the workload itself to start (libtest prints a header first).
        while !lines.last().is_some_and(|l| l.starts_with("A ")) {
            lines.push(rx.recv_timeout(Duration::from_secs(60)).expect("first ack"));
        }
        let run_for = Duration::from_millis(3 + rng.below(300));
        let deadline = Instant::now() + run_for;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        child.kill().expect("kill the child");
        let status = child.wait().expect("wait for the child");
        assert!(
            status.signal() == Some(9) || status.success(),
            "the child failed on its own: {status}"
        );
        // Everything the child wrote before it died is an acknowledgement too.
        reader.join().expect("reader");
        lines.extend(rx.try_iter());
        let acks = lines
            .iter()
            .filter(|l| l.starts_with("A ") || l.starts_with("C "))
            .count();
        for line in &lines {
            model.apply(line);
        }
        eprintln!("killed after {run_for:?} with {acks} acknowledgements");
        acks
    }

    /// Reopens the file and checks every acknowledgement; takes over a few of the claims left
    /// in flight, completing half of those and leaving the others in flight for the next child.
    fn verify(path: &Path, rng: &mut SplitMix, model: &mut Model) {
        // Its close writes a directory snapshot, which the next child on the same file opens.
        let store = Store::builder()
            .snapshot_min_keys(0)
            .open(path)
            .expect("reopen after SIGKILL");
        let mut takeovers = 0;
        // Completions, claims found in flight, claims found completed without an ack.
        let (mut completions, mut in_flight, mut unacked) = (0, 0, 0);
        let mut names: Vec<String> = model.keys.keys().cloned().collect();
        names.sort();
        for name in names {
            let key = Key::new(SCOPE, &name);
            match model.keys[&name].clone() {
                Acked::Completed(response) => {
                    completions += 1;
                    let Some(RecordInfo::Completed(replay)) = store.get(&key).unwrap() else {
                        panic!("{name}: acknowledged completion lost");
                    };
                    assert_eq!(replay.response, response, "{name}: replay not byte-exact");
                    let replay = replayed(store.claim(&key, None).unwrap());
                    assert_eq!(replay.response, response, "{name}: replay not byte-exact");
                }
                Acked::Claimed(token) => match store.get(&key).unwrap() {
                    None => panic!("{name}: acknowledged claim (token {token}) lost"),
                    Some(RecordInfo::Completed(replay)) => {
                        unacked += 1;
                        // Completed, killed before the acknowledgement was printed: by this
                        // attempt, or by a later one whose claim was not acknowledged either.
                        let by: u64 = std::str::from_utf8(
                            replay.response.header_value("x-token").expect("x-token"),
                        )
                        .unwrap()
                        .parse()
                        .unwrap();
                        assert!(
                            by == token || (by > token && !model.tokens.contains(&by)),
                            "{name}: completed by token {by}, acknowledged claim {token}"
                        );
                        assert_eq!(replay.response, response_for(&name, by), "{name}");
                        model.keys.insert(name, Acked::Completed(replay.response));
                    }
                    Some(RecordInfo::InFlight {
                        from_previous_process,
                        attempt,
                        ..
                    }) => {
                        assert!(from_previous_process, "{name}");
                        in_flight += 1;
                        // Each takeover costs two syncs: a few per kill are enough.
                        if takeovers == 8 || rng.below(2) != 0 {
                            continue;
                        }
                        takeovers += 1;
                        let ClaimOutcome::Acquired(lease) = store.claim(&key, None).unwrap() else {
                            panic!("{name}: a claim left by a killed process is not taken over");
                        };
                        assert!(lease.is_takeover(), "{name}");
                        assert_eq!(lease.attempt(), attempt + 1, "{name}");
                        assert!(lease.token() > model.max_token, "{name}: token went back");
                        model.acquired(&name, lease.token());
                        if rng.below(2) == 0 {
                            let response = response_for(&name, lease.token());
                            store.complete(&lease, response.clone()).unwrap();
                            model.keys.insert(name, Acked::Completed(response));
                        }
                    }
                    Some(other) => panic!("{name}: unexpected {other:?}"),
                },
            }
        }
        eprintln!(
            "  verified {completions} completions, {in_flight} claims in flight \
             ({takeovers} taken over), {unacked} completed without an ack"
        );
        store.close().expect("close");
    }

    fn env_u64(name: &str) -> Option<u64> {
        let value = std::env::var(name).ok()?;
        Some(
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        )
    }

    #[test]
    fn sigkill_loses_no_acknowledged_work() {
        if std::env::var_os(CHILD_DB).is_some() {
            return;
        }
        let seed = env_u64("IDEMSTORE_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
        let kills = env_u64("IDEMSTORE_KILLS").unwrap_or(10);
        let same_file_kills = env_u64("IDEMSTORE_SAME_FILE_KILLS").unwrap_or(kills);
        eprintln!(
            "IDEMSTORE_SEED={seed} IDEMSTORE_KILLS={kills} \
             IDEMSTORE_SAME_FILE_KILLS={same_file_kills}"
        );
        let mut rng = SplitMix(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut acks = 0;
        for i in 0..kills {
            let path = dir.path().join(format!("fresh-{i}.redb"));
            let mut model = Model::default();
            acks += run_and_kill(&path, &mut rng, &mut model);
            verify(&path, &mut rng, &mut model);
        }
        let path = dir.path().join("same.redb");
        let mut model = Model::default();
        for _ in 0..same_file_kills {
            acks += run_and_kill(&path, &mut rng, &mut model);
            verify(&path, &mut rng, &mut model);
        }
        assert!(
            kills + same_file_kills == 0 || acks > 0,
            "no acknowledgement was ever checked"
        );
        eprintln!(
            "checked {acks} acknowledgements over {} kills",
            kills + same_file_kills
        );
    }
}
