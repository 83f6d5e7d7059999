//! Power-loss campaign: random workloads on a simulated disk, a power loss at a random point,
//! and a check of every acknowledged operation against a model after reopening.
//!
//! Each workload runs on a [`SimDisk`] with a [`ManualClock`] for three *generations*. A
//! generation runs random claims (some with their own lifetime, some with another fingerprint),
//! completes (bodies up to 40 KB), releases, renews, expiries, reads, sweeps
//! (`run_pending_expiry`) and clock moves (past leases and past lifetimes too), then the power
//! goes. Three tests, one per way the power goes:
//! - `power_loss_in_the_middle_of_io`: the machine stops at a random disk operation
//!   (`fail_from(Any, m)`), the workload runs on until the store notices, and the disk crashes;
//! - `power_loss_under_concurrent_callers`: three threads run operations on their own keys and
//!   race for two shared keys (claim, complete, release, renew), and the disk crashes under them
//!   after a random number of operations, at once or after the machine stopped at a random
//!   disk operation in the middle of their batches. Their later operations fail, which is
//!   fine: only acknowledged operations count;
//! - `transient_faults_under_concurrent_callers`: the same three threads, while one write,
//!   `set_len` or sync fails (`fail_nth`) in the middle of their batches; the store recovers
//!   by itself and the threads run on against it, each answer checked against the model (an
//!   operation answered `OutcomeUnknown` happened or not, and every later answer must agree
//!   on which), until they are done; then the power goes. It found the store answering from
//!   its directory as before a failed batch while it reopened the file (fixed in 4237433;
//!   `io_faults::answers_after_an_unknown_outcome_never_change_their_mind`).
//!
//! Each power loss is one *crash point* (a random moment of the workload). The dead disk then
//! yields up to ten distinct outcomes of it (`SimDisk::crash(seed)` over 24 seeds: the durable
//! image plus a random, sector-torn subset of the unsynced writes), and each distinct image is
//! checked: the store must reopen on it, and then
//! - every key reads (`get`) as a record the model allows (`tests/support/ack_model.rs`): an
//!   acknowledged completion replays byte for byte with its attempt and times, an acknowledged
//!   claim not later released, completed or expired is in flight and flagged
//!   `from_previous_process`, an acknowledged release or expiry stays done, a key whose lifetime
//!   passed is absent, nothing fails to decode (`Corrupt` is a violation);
//! - `records_on_disk()` lies between the live keys and the keys that may have a record;
//! - for the shared keys: at most one lease completed each, an acknowledged completion is what
//!   replays, a replay is a response some owner gave, an in-flight record is an acquisition
//!   some owner made, an acknowledged claim is only gone if its owner tried to release it;
//! - on the image carried on and on one more: a sweep reclaims every record due and nothing
//!   live (the expiry order on disk matches the records), and on the shared keys and a few
//!   random ones, a claim takes an in-flight key over (`is_takeover`, attempt + 1) with a
//!   fencing token above every token handed out before, replays a completed one, and a
//!   completion with any older lease is refused or is the completing lease's own retry, leaving
//!   the stored response as it was (no key has two live owners).
//!
//! One image per power loss carries the workload into the next generation, a quarter of the
//! time after a second power loss in the middle of reopening (`fail_from` during the open).
//!
//! Knobs: `IDEMSTORE_CRASH_POINTS` (power losses; default 2,000, half for each of the first two
//! tests and a quarter more for the transient faults) and `IDEMSTORE_SEED` (base
//! seed; workload `i` uses seed + i, and a failure prints the seed that reproduces it as
//! workload 0). The concurrent phase depends on thread scheduling, so a seed reproduces its
//! operations but not always their interleaving.

#[path = "support/ack_model.rs"]
mod ack_model;

use ack_model::{
    Ctx, Effect, Info, KeyModel, Model, Phase, Rec, Rng, Tokens, base_seed, env_u64, mix,
    panic_count, random_op, random_step, response_for, short, sweep, take_errors, token_of,
};
use idemstore::sim_disk::{Op, SimDisk};
use idemstore::{ClaimOutcome, Error, Fingerprint, Key, Lease, ManualClock, Store};
use parking_lot::Mutex;
use redb::StorageBackend;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_POINTS: u64 = 2_000;
const DEFAULT_SEED: u64 = 0x1de5_7003_0000_0000;

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);
const MAX_TTL: Duration = Duration::from_secs(3600);
/// The sweeper's tick: a record is reclaimed by `run_pending_expiry` within a tick of expiring.
const SWEEP_TICK: Duration = Duration::from_secs(60);
const OWN_KEYS: usize = 8;
const HOT_KEYS: usize = 2;
const THREADS: usize = 3;
const GENERATIONS: u32 = 3;
/// Crash seeds tried per power loss, and the distinct images wanted among them.
const SEEDS_TRIED: u64 = 24;
const IMAGES_WANTED: usize = 10;
/// Random keys given the write checks on the image carried on (besides the shared keys of
/// the concurrent phase, which always get them), and on one more image of each power loss.
const CARRIED_KEYS: usize = 4;
const SAMPLED_KEYS: usize = 2;

/// Commit log sizes the workloads draw from: 64 KiB (16 one-block frames) makes the log fill
/// and checkpoint every few batches; 0 is the store without a log.
const LOG_CAPACITIES: [u64; 4] = [64 << 10, 64 << 10, 1 << 20, 0];

fn open_store(
    disk: &SimDisk,
    clock: &ManualClock,
    (quick_repair, log): (bool, u64),
) -> Result<Store, Error> {
    let d = disk.clone();
    Store::builder()
        .clock(clock.clone())
        .lease(LEASE)
        .ttl(TTL)
        .max_ttl(MAX_TTL)
        .quick_repair(quick_repair)
        .log_capacity(log)
        // Fencing tokens reserved 8 at a time: crashes fall around reservations too.
        .token_block(8)
        // Sweeps of 2 records, scans of 2 rows: sweep passes pause and resume their scans.
        .sweep_chunk(2)
        .scan_chunk(2)
        // Sweeps run as workload steps (`run_pending_expiry`): the timer never fires in the
        // life of a store here
        .sweep_interval(SWEEP_TICK)
        .open_sim(&d)
}

/// A disk's contents (the store file, then its commit log), to tell the outcomes of one power
/// loss apart.
fn image_of(disk: &SimDisk) -> Vec<u8> {
    let mut image = Vec::new();
    for backend in [disk.backend(), disk.log_backend()] {
        let start = image.len();
        image.resize(start + backend.len().unwrap() as usize, 0);
        backend.read(0, &mut image[start..]).unwrap();
        image.extend_from_slice(&[0xa5; 8]);
    }
    image
}

/// What happened to a shared ("hot") key in the concurrent phase.
#[derive(Clone, Debug)]
enum HotEvent {
    /// An acknowledged acquisition.
    Acquired(Lease),
    /// A claim whose answer was lost (it may have acquired).
    ClaimUnknown,
    /// A completion, acknowledged or not (`acked`).
    Completed {
        token: u64,
        response: idemstore::Response,
        acked: bool,
    },
    /// A release, acknowledged or not.
    Released { token: u64, acked: bool },
}

struct Hot {
    keys: Vec<(Key, Fingerprint)>,
    events: Vec<(usize, HotEvent)>,
}

struct WorkerDone {
    own: Vec<(usize, KeyModel)>,
    tokens: Tokens,
    violations: Vec<String>,
}

struct Worker {
    store: Arc<Store>,
    own: Vec<(usize, KeyModel)>,
    hot: Arc<Vec<(Key, Fingerprint)>>,
    log: Arc<Mutex<Vec<(usize, HotEvent)>>>,
    ctx: Ctx,
    rng: Rng,
    tokens: Tokens,
    stop: Arc<AtomicBool>,
    /// Set before the disk starts failing: failures are expected from then on.
    crashed: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    /// Go on after an operation whose outcome is unknown or that failed (a transient fault:
    /// the store recovers by itself); stop at `Poisoned` only.
    keep_going: bool,
}

impl Worker {
    fn run(mut self, max_ops: u64) -> WorkerDone {
        let mut held: HashMap<usize, Lease> = HashMap::new();
        let mut violations = Vec::new();
        for _ in 0..max_ops {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let result = if self.rng.chance(3) {
                sweep(&self.store, true)
            } else if !self.own.is_empty() && self.rng.chance(70) {
                let i = self.rng.below(self.own.len() as u64) as usize;
                let km = &mut self.own[i].1;
                random_op(
                    &mut self.rng,
                    &self.store,
                    km,
                    &self.ctx,
                    &mut self.tokens,
                    true,
                )
            } else {
                self.hot_op(&mut held)
            };
            self.progress.fetch_add(1, Ordering::SeqCst);
            match result {
                Ok(Effect::Answered) => {}
                Ok(effect) => {
                    if !self.crashed.load(Ordering::SeqCst) {
                        violations.push(format!("{effect:?} failure before the power loss"));
                        break;
                    }
                    if !self.keep_going || effect == Effect::Poisoned {
                        break;
                    }
                }
                Err(v) => {
                    violations.push(v);
                    break;
                }
            }
        }
        WorkerDone {
            own: self.own,
            tokens: self.tokens,
            violations,
        }
    }

    /// One operation on a shared key: claim it, or complete, release or renew a lease held.
    fn hot_op(&mut self, held: &mut HashMap<usize, Lease>) -> Result<Effect, String> {
        let h = self.rng.below(self.hot.len() as u64) as usize;
        let (key, fp) = &self.hot[h];
        let log = |e: HotEvent| self.log.lock().push((h, e));
        let unknown = |e: &Error| match e {
            Error::OutcomeUnknown { .. } | Error::Closed => Ok(Effect::Unknown),
            Error::Poisoned { .. } => Ok(Effect::Poisoned),
            Error::Storage(_) | Error::Io(_) => Ok(Effect::Failed),
            other => Err(format!("{key:?}: unexpected error {other} ({other:?})")),
        };
        let Some(mut lease) = held.remove(&h) else {
            return match self.store.claim(key, Some(*fp)) {
                Ok(ClaimOutcome::Acquired(lease)) => {
                    self.tokens.accept(key, lease.token())?;
                    log(HotEvent::Acquired(lease.clone()));
                    held.insert(h, lease);
                    Ok(Effect::Answered)
                }
                Ok(ClaimOutcome::Mismatch) => Err(format!("{key:?}: mismatch for its own fp")),
                Ok(_) => Ok(Effect::Answered),
                Err(e) => {
                    let effect = unknown(&e)?;
                    if effect == Effect::Unknown {
                        log(HotEvent::ClaimUnknown);
                    }
                    Ok(effect)
                }
            };
        };
        let token = lease.token();
        let stale =
            || format!("{key:?}: lease {token} refused as stale while no one could take it over");
        match self.rng.below(100) {
            0..60 => {
                let response = response_for(&mut self.rng, key, token);
                match self.store.complete(&lease, response.clone()) {
                    Ok(()) => {
                        log(HotEvent::Completed {
                            token,
                            response,
                            acked: true,
                        });
                        Ok(Effect::Answered)
                    }
                    Err(Error::StaleLease { .. }) => Err(stale()),
                    Err(e) => {
                        let effect = unknown(&e)?;
                        if effect == Effect::Unknown {
                            log(HotEvent::Completed {
                                token,
                                response,
                                acked: false,
                            });
                        }
                        Ok(effect)
                    }
                }
            }
            60..85 => match self.store.release(&lease) {
                Ok(()) => {
                    log(HotEvent::Released { token, acked: true });
                    Ok(Effect::Answered)
                }
                Err(Error::StaleLease { .. }) => Err(stale()),
                Err(e) => {
                    let effect = unknown(&e)?;
                    if effect == Effect::Unknown {
                        log(HotEvent::Released {
                            token,
                            acked: false,
                        });
                    }
                    Ok(effect)
                }
            },
            _ => match self.store.renew(&mut lease) {
                Ok(()) => {
                    held.insert(h, lease);
                    Ok(Effect::Answered)
                }
                Err(Error::StaleLease { .. }) => Err(stale()),
                Err(e) => unknown(&e),
            },
        }
    }
}

/// Where the power goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// In the middle of the store's I/O, while one thread runs operations.
    MidIo,
    /// Under three threads running operations.
    Concurrent,
    /// Under three threads running operations while one write, `set_len` or sync of the disk
    /// fails: the store recovers by itself (or poisons itself), the threads run on against
    /// the recovered store, and the power goes once they are done.
    TransientFault,
}

/// One workload: its generations, power losses and checks.
struct Run {
    seed: u64,
    mode: Mode,
    rng: Rng,
    clock: ManualClock,
    /// Quick repair and the commit log's capacity.
    settings: (bool, u64),
    model: Model,
    /// Power losses: one per generation, and one more for each power loss while reopening.
    losses: u64,
    /// Distinct post-crash images checked.
    images: u64,
    seeds_tried: u64,
    hot_serial: u64,
    /// Transient faults: armed, fired, and the store's recoveries and poisonings after them.
    faults: FaultTally,
}

/// What the transient faults of [`Mode::TransientFault`] did.
#[derive(Clone, Copy, Debug, Default)]
struct FaultTally {
    armed: u64,
    fired: u64,
    recoveries: u64,
    poisoned: u64,
    /// Operations answered after the store recovered from a fault.
    after_recovery: u64,
}

impl FaultTally {
    fn add(&mut self, o: &FaultTally) {
        self.armed += o.armed;
        self.fired += o.fired;
        self.recoveries += o.recoveries;
        self.poisoned += o.poisoned;
        self.after_recovery += o.after_recovery;
    }
}

impl Run {
    fn new(seed: u64, mode: Mode) -> Run {
        let seed = mix(seed, mode as u64);
        let mut rng = Rng::new(mix(seed, 1));
        let settings = (rng.chance(50), LOG_CAPACITIES[rng.below(4) as usize]);
        let clock = ManualClock::new(T0);
        let mut model = Model::new(&mut rng, OWN_KEYS, T0, LEASE, TTL);
        model.ctx.generation = 1;
        Run {
            seed,
            mode,
            rng,
            clock,
            settings,
            model,
            losses: 0,
            images: 0,
            seeds_tried: 0,
            hot_serial: 0,
            faults: FaultTally::default(),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let mut disk = SimDisk::new();
        let mut store = open_store(&disk, &self.clock, self.settings)
            .map_err(|e| format!("a fresh store did not open: {e}"))?;
        for generation in 0..GENERATIONS {
            let steps = self.rng.range(4, 30);
            for _ in 0..steps {
                self.sequential_step(&store, false)?;
            }
            let hot = if self.mode != Mode::MidIo {
                Some(self.concurrent_phase(store, &disk)?)
            } else {
                self.stop_mid_io(&store, &disk)?;
                drop(store);
                None
            };
            let (s, d) = self.after_power_loss(&disk, hot.as_ref(), generation)?;
            (store, disk) = (s, d);
        }
        Ok(())
    }

    /// A random step with the clock or on a random key, by this thread alone.
    fn sequential_step(&mut self, store: &Store, failures: bool) -> Result<Effect, String> {
        let (rng, clock, model) = (&mut self.rng, &self.clock, &mut self.model);
        random_step(rng, clock, (LEASE, TTL), model, store, failures)
    }

    /// The machine stops at the `m`-th disk operation from now; the workload runs on until the
    /// store notices.
    fn stop_mid_io(&mut self, store: &Store, disk: &SimDisk) -> Result<(), String> {
        disk.fail_from(Op::Any, self.rng.range(1, 30));
        for _ in 0..200 {
            match self.sequential_step(store, true)? {
                Effect::Unknown | Effect::Poisoned => return Ok(()),
                Effect::Answered | Effect::Failed => {}
            }
        }
        Err("the store kept answering with every disk operation failing".into())
    }

    /// Threads run operations; the power goes after a random number of them.
    fn concurrent_phase(&mut self, store: Store, disk: &SimDisk) -> Result<Hot, String> {
        let store = Arc::new(store);
        let hot: Vec<(Key, Fingerprint)> = (0..HOT_KEYS)
            .map(|_| {
                self.hot_serial += 1;
                let key = Key::new("hot", format!("hot-{}", self.hot_serial));
                (key, Fingerprint(u128::from(self.rng.next_u64())))
            })
            .collect();
        let hot = Arc::new(hot);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let crashed = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let mut groups: Vec<Vec<(usize, KeyModel)>> = (0..THREADS).map(|_| Vec::new()).collect();
        for (i, km) in std::mem::take(&mut self.model.keys).into_iter().enumerate() {
            groups[i % THREADS].push((i, km));
        }
        let floor = self.model.tokens.floor;
        let target = self.rng.range(1, 90);
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(t, own)| {
                let worker = Worker {
                    store: Arc::clone(&store),
                    own,
                    hot: Arc::clone(&hot),
                    log: Arc::clone(&log),
                    ctx: self.model.ctx,
                    rng: Rng::new(mix(self.seed, 100 + t as u64 + 10 * self.hot_serial)),
                    tokens: Tokens::starting_above(floor),
                    stop: Arc::clone(&stop),
                    crashed: Arc::clone(&crashed),
                    progress: Arc::clone(&progress),
                    keep_going: self.mode == Mode::TransientFault,
                };
                let finished = Arc::clone(&finished);
                std::thread::Builder::new()
                    .name(format!("power-loss-worker-{t}"))
                    .spawn(move || {
                        let done = worker.run(60);
                        finished.fetch_add(1, Ordering::SeqCst);
                        done
                    })
                    .unwrap()
            })
            .collect();
        let all_done = || finished.load(Ordering::SeqCst) == THREADS;
        while progress.load(Ordering::SeqCst) < target && !all_done() {
            std::thread::sleep(Duration::from_micros(100));
        }
        crashed.store(true, Ordering::SeqCst);
        if self.mode == Mode::TransientFault {
            self.transient_fault(&store, disk, &progress, &all_done);
        } else if self.rng.chance(50) {
            // The machine stops at a disk operation in the middle of the threads' batches;
            // the power goes once the store noticed (every thread stops at its first failure).
            disk.fail_from(Op::Any, self.rng.range(1, 20));
            while !all_done() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // The power goes; the outcome images are drawn from the dead disk afterwards.
        let _ = disk.crash(0);
        stop.store(true, Ordering::SeqCst);
        let mut own = Vec::new();
        let mut violations = Vec::new();
        let mut all_tokens = Vec::new();
        for h in handles {
            let done = h
                .join()
                .map_err(|_| "a worker thread panicked".to_string())?;
            own.extend(done.own);
            violations.extend(done.violations);
            all_tokens.extend(done.tokens.all);
        }
        own.sort_by_key(|(i, _)| *i);
        self.model.keys = own.into_iter().map(|(_, km)| km).collect();
        let unique: HashSet<u64> = all_tokens.iter().copied().collect();
        if unique.len() != all_tokens.len() {
            violations.push(format!(
                "a fencing token was handed out twice: {all_tokens:?}"
            ));
        }
        let max = all_tokens.iter().copied().max().unwrap_or(0);
        self.model.tokens.floor = self.model.tokens.floor.max(max);
        if !violations.is_empty() {
            return Err(violations.join("\n"));
        }
        // Close the crashed store here: every handle is back.
        drop(Arc::try_unwrap(store).map_err(|_| "store still shared".to_string())?);
        let events = std::mem::take(&mut *log.lock());
        let keys = Arc::try_unwrap(hot).map_err(|_| "hot keys still shared".to_string())?;
        Ok(Hot { keys, events })
    }

    /// One write, `set_len` or sync fails while the threads run; they run on until done (the
    /// store recovered) or poisoned, then the disk is healed.
    fn transient_fault(
        &mut self,
        store: &Store,
        disk: &SimDisk,
        progress: &AtomicU64,
        all_done: &dyn Fn() -> bool,
    ) {
        let kind = [Op::Write, Op::SetLen, Op::Sync][self.rng.below(3) as usize];
        let n = self.rng.range(1, 6);
        let before = disk.counts().get(kind);
        let (recoveries, answered) = (store.stats().recoveries, progress.load(Ordering::SeqCst));
        disk.fail_nth(kind, n);
        while !all_done() {
            std::thread::sleep(Duration::from_micros(100));
        }
        disk.heal();
        let t = &mut self.faults;
        t.armed += 1;
        if disk.counts().get(kind) - before >= n {
            t.fired += 1;
            let recovered = store.stats().recoveries - recoveries;
            t.recoveries += recovered;
            if store.flush().is_err() {
                t.poisoned += 1;
            } else if recovered > 0 {
                t.after_recovery += progress.load(Ordering::SeqCst) - answered;
            }
        }
    }

    /// Draws the outcomes of the power loss on `dead`, checks each, and returns the store and
    /// disk of the one carried on.
    fn after_power_loss(
        &mut self,
        dead: &SimDisk,
        hot: Option<&Hot>,
        generation: u32,
    ) -> Result<(Store, SimDisk), String> {
        self.losses += 1;
        let mut images = Vec::new();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for i in 0..SEEDS_TRIED {
            let crash_seed = mix(self.seed, 1_000 + u64::from(generation) * 100 + i);
            let image = dead.crash(crash_seed);
            self.seeds_tried += 1;
            let bytes = image_of(&image);
            if !seen.contains(&bytes) {
                seen.push(bytes);
                images.push((crash_seed, image));
                if images.len() == IMAGES_WANTED {
                    break;
                }
            }
        }
        self.clock.advance(Duration::from_millis(self.rng.below(3)));
        let mut carried = None;
        let count = images.len();
        for (i, (crash_seed, mut image)) in images.into_iter().enumerate() {
            let carry = i + 1 == count;
            let context = |v: String| {
                format!("generation {generation}, crash seed {crash_seed:#x}, image {i}: {v}")
            };
            if carry && self.rng.chance(25) {
                image = self.crash_while_reopening(&image).map_err(context)?;
            }
            let mut model = self.model.clone();
            model.ctx.generation += 1;
            model.ctx.now = self.clock.now_ms();
            let store = open_store(&image, &self.clock, self.settings)
                .map_err(|e| context(format!("the store did not reopen: {e}")))?;
            let mut rng = Rng::new(mix(crash_seed, 7));
            let writes = match i {
                _ if carry => Writes::Carried,
                0 => Writes::Sample,
                _ => Writes::None,
            };
            verify(&mut model, &store, hot, &mut rng, writes).map_err(context)?;
            self.images += 1;
            if carry {
                self.model = model;
                carried = Some((store, image));
            }
        }
        carried.ok_or_else(|| "no image".to_string())
    }

    /// A second power loss while the store reopens: the machine stops at a random disk
    /// operation of the open, then the disk crashes. Returns an image of that second loss.
    fn crash_while_reopening(&mut self, image: &SimDisk) -> Result<SimDisk, String> {
        image.fail_from(Op::Any, self.rng.range(1, 40));
        match open_store(image, &self.clock, self.settings) {
            Ok(store) => drop(store),
            Err(Error::Corrupt { detail }) => {
                return Err(format!("an open cut short reported corruption: {detail}"));
            }
            Err(_) => {}
        }
        self.losses += 1;
        Ok(image.crash(mix(self.seed, 5_000 + self.losses)))
    }
}

/// Which keys get the write checks after a reopen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// The image carried on: the shared keys and a few random ones.
    Carried,
    /// One more image: a couple of random keys.
    Sample,
    None,
}

/// Checks a store reopened after a power loss against the model, then claims, completes and
/// completes with old leases on some keys (`writes`), still against the model.
fn verify(
    model: &mut Model,
    store: &Store,
    hot: Option<&Hot>,
    rng: &mut Rng,
    writes: Writes,
) -> Result<(), String> {
    let c = model.ctx;
    let mut live = model.get_all(store)?;
    if let Some(hot) = hot {
        for (h, (key, fp)) in hot.keys.iter().enumerate() {
            let events: Vec<&HotEvent> = hot
                .events
                .iter()
                .filter(|(i, _)| *i == h)
                .map(|(_, e)| e)
                .collect();
            let info = store
                .get(key)
                .map_err(|e| format!("{key:?}: get failed: {e}"))?
                .map(|i| Info::of(&i));
            live += usize::from(info.is_some());
            model.keys.push(check_hot(key, *fp, &events, info, &c)?);
        }
    }
    model.check_record_count(store, live)?;
    if writes != Writes::None {
        model.check_sweep(store, SWEEP_TICK)?;
    }
    let n = model.keys.len();
    let hot_keys = hot.map_or(0, |h| h.keys.len());
    let (shared, random) = match writes {
        Writes::Carried => (n - hot_keys..n, CARRIED_KEYS),
        Writes::Sample => (n..n, SAMPLED_KEYS),
        Writes::None => (n..n, 0),
    };
    let chosen: Vec<usize> = (0..random)
        .map(|_| rng.below(n as u64) as usize)
        .chain(shared)
        .collect();
    model.write_checks(store, rng, &chosen)
}

/// Checks a shared key after the power loss and returns its model from then on.
fn check_hot(
    key: &Key,
    fp: Fingerprint,
    events: &[&HotEvent],
    info: Option<Info>,
    c: &Ctx,
) -> Result<KeyModel, String> {
    let fail = |what: String| {
        Err(format!(
            "{key:?} (shared): {what}; events {}",
            short(&events)
        ))
    };
    let mut acked_completion = None;
    let mut acquired = Vec::new();
    let mut released = HashSet::new();
    // Tokens whose lease certainly ended (an acknowledged release or completion).
    let mut ended = HashSet::new();
    let mut attempted = Vec::new();
    let mut claim_unknown = false;
    for e in events {
        match e {
            HotEvent::Acquired(lease) => acquired.push(lease.clone()),
            HotEvent::ClaimUnknown => claim_unknown = true,
            HotEvent::Completed {
                token,
                response,
                acked,
            } => {
                attempted.push(response.clone());
                if *acked {
                    ended.insert(*token);
                    if let Some((t, _)) = &acked_completion
                        && t != token
                    {
                        return fail(format!("leases {t} and {token} both completed"));
                    }
                    acked_completion = Some((*token, response.clone()));
                }
            }
            HotEvent::Released { token, acked } => {
                released.insert(*token);
                if *acked {
                    ended.insert(*token);
                }
            }
        }
    }
    let mut km = KeyModel::new(key.clone(), fp);
    km.leases = acquired.clone();
    let rec = |token, attempt, expires_at, phase| Rec {
        token,
        attempt,
        fp: Some(fp),
        expires_at,
        phase,
    };
    km.possible = match info {
        Some(Info::Completed {
            response,
            attempt,
            completed_at,
            expires_at,
        }) => {
            match &acked_completion {
                Some((_, acked)) if *acked != response => {
                    return fail(format!(
                        "replays {} instead of the acknowledged {}",
                        short(&response),
                        short(acked)
                    ));
                }
                None if !attempted.contains(&response) => {
                    return fail(format!(
                        "replays a response never given: {}",
                        short(&response)
                    ));
                }
                _ => {}
            }
            let phase = Phase::Completed {
                completed_at,
                response: response.clone(),
            };
            vec![Some(rec(token_of(&response), attempt, expires_at, phase))]
        }
        Some(Info::InFlight {
            attempt,
            lease_until,
            expires_at,
            from_previous_process,
        }) => {
            if let Some((t, _)) = acked_completion {
                return fail(format!("in flight, but lease {t} completed it"));
            }
            if !from_previous_process {
                return fail("in flight after a restart, but not from a previous process".into());
            }
            let phase = Phase::InFlight {
                lease_until,
                generation: c.generation - 1,
            };
            // Which acquisition the record is: an acknowledged one with that attempt whose
            // release or completion was not acknowledged, or a claim whose answer was lost.
            let mut possible: Vec<Option<Rec>> = acquired
                .iter()
                .filter(|l| l.attempt() == attempt && !ended.contains(&l.token()))
                .map(|l| Some(rec(Some(l.token()), attempt, expires_at, phase.clone())))
                .collect();
            if claim_unknown {
                possible.push(Some(rec(None, attempt, expires_at, phase.clone())));
            }
            if possible.is_empty() {
                return fail(format!(
                    "in flight at attempt {attempt}, which nobody acquired"
                ));
            }
            possible
        }
        None => {
            if let Some((t, _)) = acked_completion {
                return fail(format!("absent, but lease {t} completed it"));
            }
            if let Some(l) = acquired.iter().find(|l| !released.contains(&l.token())) {
                return fail(format!(
                    "absent, but lease {} acquired it and never released it",
                    l.token()
                ));
            }
            vec![None]
        }
    };
    Ok(km)
}

/// Runs workloads in `mode` until they crashed at half the wanted crash points (the other half
/// is the other mode's), or a quarter more for [`Mode::TransientFault`].
fn campaign(mode: Mode) {
    let share = if mode == Mode::TransientFault { 4 } else { 2 };
    let wanted = env_u64("IDEMSTORE_CRASH_POINTS").unwrap_or(DEFAULT_POINTS) / share;
    let base = base_seed(DEFAULT_SEED);
    let panics = panic_count();
    let started = Instant::now();
    let (mut losses, mut images, mut tried, mut workloads) = (0, 0, 0, 0u64);
    let mut faults = FaultTally::default();
    while losses < wanted.max(1) {
        let seed = base.wrapping_add(workloads);
        let mut run = Run::new(seed, mode);
        take_errors();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.run()));
        let failure = match result {
            Ok(Ok(())) if panic_count() == panics => None,
            Ok(Ok(())) => Some("a thread panicked (see the panic message above)".to_string()),
            Ok(Err(violation)) => Some(violation),
            Err(_) => Some("panicked (see the panic message above)".to_string()),
        };
        if let Some(failure) = failure {
            panic!(
                "power-loss violation ({mode:?}) in workload {workloads} after {losses} good crash points:\n{failure}\n\
                 reproduce: IDEMSTORE_SEED={seed:#x} IDEMSTORE_CRASH_POINTS=2 cargo test --test power_loss"
            );
        }
        losses += run.losses;
        faults.add(&run.faults);
        images += run.images;
        tried += run.seeds_tried;
        workloads += 1;
    }
    eprintln!(
        "power loss, {mode:?}: {losses} crash points (power losses at random moments), {images} distinct post-crash images checked (from {tried} crash seeds), in {workloads} workloads, 0 violations, {:.1?} (base seed {base:#x})",
        started.elapsed()
    );
    if mode == Mode::TransientFault {
        eprintln!("transient faults: {faults:?}");
        // Not vacuous at the default size: the faults fire, and the store recovers from them
        // and answers again before the power goes. A third of them: a `set_len` (a third of
        // the faults armed) comes only when a file grows, and seldom within the first few
        // operations from the moment it is armed. (Half fired at b2ea198, 58%; since a19d2cf a
        // batch that changed nothing writes nothing, and at 100,000 crash points 49.7% fired.)
        if faults.armed >= 100 {
            assert!(
                faults.fired * 3 >= faults.armed,
                "few faults fired: {faults:?}"
            );
            assert!(
                faults.recoveries > 0 && faults.after_recovery > 0,
                "no operation ran after a recovery: {faults:?}"
            );
        }
    }
}

#[test]
fn power_loss_in_the_middle_of_io() {
    campaign(Mode::MidIo);
}

#[test]
fn power_loss_under_concurrent_callers() {
    campaign(Mode::Concurrent);
}

#[test]
fn transient_faults_under_concurrent_callers() {
    campaign(Mode::TransientFault);
}
