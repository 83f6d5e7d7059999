//! I/O-error injection: a representative workload run once per injection point, with the
//! `N`-th write, `set_len` or sync of the disk failing, and with the disk failing for good; and
//! a real file that runs out of space.
//!
//! The workload (fixed seed, one caller, so every run makes the same calls until its fault
//! fires; since the stage, the writer thread applies the answered rows to redb at times the
//! scheduler decides, so the file's operations around a point can differ between runs) opens
//! a store on a [`SimDisk`], runs claims, completes, releases, renews, expiries, reads, sweeps
//! and clock moves on six keys, closes and reopens the store, runs more of them, and closes it.
//! A first run counts the disk operations of each kind; then every injection point gets its
//! own run (`fail_nth(kind, N)` for every `N` of every kind: all of them, not a sample). In
//! each run:
//! - nothing panics, in the caller or in the store's threads;
//! - every failed operation answers a typed error: `OutcomeUnknown` naming the injected fault,
//!   or `Poisoned` naming it; a failed open answers a storage error naming it, never
//!   `Corrupt`;
//! - after an operation answered `OutcomeUnknown`, the next claim either succeeds (and its
//!   completion too: the store recovered by itself; while every `set_len` fails for good, the
//!   completion may answer `OutcomeUnknown` naming the fault, as on a full disk) or answers
//!   `Poisoned`, and once poisoned the store refuses claims, completions, expiries, flushes
//!   and sweeps alike;
//! - once the fault is healed, the store reopens on the same disk (no crash) and every key
//!   reads as a record the model allows (`tests/support/ack_model.rs`): every acknowledged
//!   completion replays byte for byte, every acknowledged claim, release and expiry is there;
//!   `records_on_disk()` is consistent, a sweep reclaims what is due and nothing live, and on
//!   three random keys (every key in the fault-free run) a claim takes over or replays with a
//!   fencing token above all earlier ones and every older lease is refused.
//!
//! `fail_from` (a disk that fails for good from the `N`-th operation on) runs every injection
//! point too; for writes and syncs the store must end poisoned with the cause in its message
//! (with `set_len` failing for good it may recover by itself: reopening needs no `set_len`).
//! A real file that runs out of space (`FaultyFile` with a space limit) gets the same checks.
//!
//! Four engine findings (all fixed) have their own tests:
//! `get_during_recovery_or_poison_is_not_reported_as_corruption`,
//! `counting_and_sweeping_during_recovery_wait_for_it`,
//! `a_store_whose_first_open_failed_opens_once_the_fault_is_gone` and
//! `answers_after_an_unknown_outcome_never_change_their_mind`. The workload here has one
//! caller; `tests/power_loss.rs` (`transient_faults_under_concurrent_callers`) runs faults under
//! three. The campaigns also fail if
//! a run hits the last one again (a fault in the creation of the file leaves it unopenable).
//!
//! `Durability::Bounded` has tests of its own (`bounded_mode_*`): an I/O error in a flush's sync
//! or in a later batch's commit takes back nothing acknowledged before it, recovery never
//! writes older batches over a failed one, and the changes kept for recovery stay bounded; a
//! fault that outlasts the recovery (a full disk too) loses nothing once healed before the
//! close, and the close's rescue never writes over the changes of a store opened meanwhile.
//!
//! Knobs: `IDEMSTORE_FAULT_STRIDE` (run only every `k`-th `fail_from` point beyond the first
//! 40; default 1, all of them) and `IDEMSTORE_FAULT_POINT` (`KIND:N`, e.g. `Sync:17`: only that
//! injection point in each campaign of its kind, which fails if the workload has no such point;
//! a failure prints it). The workloads are deterministic,
//! so an injection point reproduces its run.

#[path = "support/ack_model.rs"]
mod ack_model;

use ack_model::{
    Effect, KeyModel, MOVING_RECORD, Model, Rng, env_u64, panic_count, random_step, response_for,
    take_errors,
};
use idemstore::sim_disk::{FaultSwitch, FaultyFile, Op, SimDisk};
use idemstore::{
    Builder, ClaimOutcome, Durability, Error, Fingerprint, Key, ManualClock, Response, Store,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);
const MAX_TTL: Duration = Duration::from_secs(3600);
/// The sweeper's tick: a record is reclaimed by `run_pending_expiry` within a tick of expiring.
const SWEEP_TICK: Duration = Duration::from_secs(60);
const KEYS: usize = 6;
const WORKLOAD_SEED: u64 = 0x10fa_0175;
const STEPS_BEFORE_REOPEN: usize = 18;
const STEPS_AFTER_REOPEN: usize = 12;
/// Keys given the write checks after healing (all of them in the fault-free run).
const CHECKED_KEYS: usize = 3;
const KINDS: [Op; 3] = [Op::Write, Op::SetLen, Op::Sync];
/// What redb answers when asked to open a file whose creation failed half-way (see
/// `a_store_whose_first_open_failed_opens_once_the_fault_is_gone`).
const NOT_A_DATABASE: &str = "Not a redb database";

fn builder(clock: &ManualClock) -> Builder {
    Store::builder()
        .clock(clock.clone())
        .lease(LEASE)
        .ttl(TTL)
        .max_ttl(MAX_TTL)
        // Sweeps run as workload steps (the timer never fires in the life of a store here),
        // so the disk operations are the same in every run
        .sweep_interval(SWEEP_TICK)
        // 16 one-block frames: the workload fills the commit log and checkpoints several times,
        // so those writes and syncs are injection points too
        .log_capacity(64 << 10)
}

/// How a run's fault showed, for the summary.
#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    /// Runs in which the fault was reached (the disk saw the operation it was set on).
    fired: u64,
    /// Runs in which some operation or open answered an error.
    surfaced: u64,
    /// Failed operations (`OutcomeUnknown` answers).
    unknown: u64,
    /// Probes after an `OutcomeUnknown` that found the store recovered by itself.
    recovered: u64,
    poisoned: u64,
    failed_opens: u64,
    /// Runs whose fault hit the creation of the file, which no open accepts since.
    bricked: u64,
    /// Injection points reached without any error surfacing, with the step they fell in.
    silent: Vec<String>,
    /// Error kinds answered (`Debug` text up to the first brace).
    kinds: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, o: &RunOutcome, kind: Op, n: u64) {
        if o.fired && o.errors.is_empty() {
            self.silent.push(format!("{kind:?} #{n} ({})", o.fired_in));
        }
        self.runs += 1;
        self.fired += u64::from(o.fired);
        self.surfaced += u64::from(!o.errors.is_empty());
        self.unknown += o.unknown;
        self.recovered += o.recovered;
        self.poisoned += u64::from(o.poisoned);
        self.failed_opens += o.failed_opens;
        self.bricked += u64::from(o.bricked);
        for e in &o.errors {
            let kind = e.split([' ', '{', '(']).next().unwrap_or("").to_string();
            *self.kinds.entry(kind).or_default() += 1;
        }
    }
}

#[derive(Debug, Default)]
struct RunOutcome {
    /// Disk operations of the workload (the final checks excluded).
    ops: idemstore::sim_disk::OpCounts,
    fired: bool,
    /// Where the workload was when the fault's operation came.
    fired_in: &'static str,
    /// Disk operations made by the end of each part of the workload.
    marks: Vec<(&'static str, idemstore::sim_disk::OpCounts)>,
    errors: Vec<String>,
    unknown: u64,
    recovered: u64,
    poisoned: bool,
    failed_opens: u64,
    bricked: bool,
}

/// The disk under test: simulated, or a real file with a fault switch.
trait Disk {
    fn open(&self, clock: &ManualClock) -> Result<Store, Error>;
    fn switch(&self) -> FaultSwitch;
    /// Text every error caused by the fault contains.
    fn cause(&self) -> &'static str;
}

impl Disk for SimDisk {
    fn open(&self, clock: &ManualClock) -> Result<Store, Error> {
        let disk = self.clone();
        builder(clock).open_sim(&disk)
    }
    fn switch(&self) -> FaultSwitch {
        self.faults()
    }
    fn cause(&self) -> &'static str {
        "injected fault"
    }
}

/// A real file behind a [`FaultyFile`].
struct FileDisk {
    path: std::path::PathBuf,
    switch: FaultSwitch,
    durability: Durability,
}

impl Disk for FileDisk {
    fn open(&self, clock: &ManualClock) -> Result<Store, Error> {
        let (path, switch) = (self.path.clone(), self.switch.clone());
        let (log, log_switch) = (idemstore_log_path(&path), self.switch.clone());
        builder(clock).durability(self.durability).open_backends(
            move || FaultyFile::open(&path, switch.clone()).expect("open the store file"),
            move || FaultyFile::open(&log, log_switch.clone()).expect("open the log file"),
        )
    }
    fn switch(&self) -> FaultSwitch {
        self.switch.clone()
    }
    fn cause(&self) -> &'static str {
        "disk full"
    }
}

/// The representative workload and its model.
struct Workload<'d> {
    disk: &'d dyn Disk,
    rng: Rng,
    clock: ManualClock,
    model: Model,
    out: RunOutcome,
    probes: u64,
    /// Whether a store was ever opened on the disk.
    created: bool,
}

impl<'d> Workload<'d> {
    fn new(disk: &'d dyn Disk) -> Self {
        let mut rng = Rng::new(WORKLOAD_SEED);
        let model = Model::new(&mut rng, KEYS, T0, LEASE, TTL);
        take_errors();
        Workload {
            disk,
            rng,
            clock: ManualClock::new(T0),
            model,
            out: RunOutcome::default(),
            probes: 0,
            created: false,
        }
    }

    /// Open, steps, close, open, steps, close. Faults may fire anywhere in it.
    fn run(&mut self) -> Result<(), String> {
        for (i, steps) in [STEPS_BEFORE_REOPEN, STEPS_AFTER_REOPEN]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                self.clock.advance(Duration::from_secs(1));
                self.model.ctx.now = self.clock.now_ms();
            }
            if self.out.bricked {
                break;
            }
            let opened = self.open()?;
            self.mark(["first open", "reopen"][i]);
            if let Some(store) = opened {
                self.steps(&store, steps)?;
                self.mark(["steps before the reopen", "steps after the reopen"][i]);
                // Closing writes too: the store's final commit, whose failure `close` reports
                // (nothing acknowledged is at stake in it), and redb's record of a clean
                // shutdown in `Database::drop`, whose failure cannot be reported (the next open
                // repairs the file).
                // A failure may also strike the writer thread's application of rows already
                // answered (grown by a commit, redb's file length is synced, and set), up to
                // the close's own: then nobody is told until the recovery fails too, and the
                // close is the first to hear it. It must name the fault.
                match store.close() {
                    Ok(()) => {}
                    Err(Error::Poisoned { .. }) if self.out.poisoned => {}
                    Err(Error::Poisoned { reason })
                        if reason.starts_with("the final commit at close failed") => {}
                    Err(Error::Poisoned { reason }) if reason.contains(self.disk.cause()) => {
                        self.out.poisoned = true;
                    }
                    Err(e) => return Err(format!("close answered {e:?}")),
                }
                self.mark(["close before the reopen", "final close"][i]);
            }
        }
        Ok(())
    }

    /// Notes the disk operations made by the end of a part of the workload.
    fn mark(&mut self, part: &'static str) {
        self.out.marks.push((part, self.disk.switch().counts()));
    }

    /// Opens the store; a failed open must answer a typed error and is retried once (a
    /// one-shot fault is spent by then). `None` if the retry failed too.
    fn open(&mut self) -> Result<Option<Store>, String> {
        for attempt in 0..2 {
            match self.disk.open(&self.clock) {
                Ok(store) => {
                    self.model.ctx.generation += 1;
                    self.created = true;
                    return Ok(Some(store));
                }
                Err(e) => {
                    self.out.failed_opens += 1;
                    self.out.errors.push(format!("{e:?}"));
                    let text = e.to_string();
                    if attempt > 0 && !self.created && text.contains(NOT_A_DATABASE) {
                        // The fault hit the creation of the file: a known engine finding
                        self.out.bricked = true;
                        return Ok(None);
                    }
                    if matches!(e, Error::Corrupt { .. }) || !text.contains(self.disk.cause()) {
                        return Err(format!("a failed open answered {e:?}"));
                    }
                }
            }
        }
        Ok(None)
    }

    fn steps(&mut self, store: &Store, n: usize) -> Result<(), String> {
        for _ in 0..n {
            match self.step(store, true)? {
                Effect::Answered => {}
                Effect::Unknown => {
                    self.out.unknown += 1;
                    self.check_errors()?;
                    if !self.probe(store)? {
                        return Ok(());
                    }
                }
                Effect::Poisoned => {
                    self.check_errors()?;
                    self.check_poisoned(store)?;
                    return Ok(());
                }
                Effect::Failed => {
                    return Err(format!("an untyped failure: {:?}", take_errors()));
                }
            }
            self.check_errors()?;
        }
        Ok(())
    }

    /// A random step: the clock, a sweep, or an operation on a random key.
    fn step(&mut self, store: &Store, failures: bool) -> Result<Effect, String> {
        let (rng, clock, model) = (&mut self.rng, &self.clock, &mut self.model);
        random_step(rng, clock, (LEASE, TTL), model, store, failures)
    }

    /// Every error answered since the last check is typed and names the fault.
    fn check_errors(&mut self) -> Result<(), String> {
        for e in take_errors() {
            let typed = e.starts_with("StaleLease")
                || ((e.starts_with("OutcomeUnknown") || e.starts_with("Poisoned"))
                    && e.contains(self.disk.cause()));
            if !typed {
                return Err(format!("an operation answered {e}"));
            }
            if !e.starts_with("StaleLease") {
                self.out.errors.push(e);
            }
        }
        Ok(())
    }

    /// After an `OutcomeUnknown`: a claim of a new key either succeeds, and its completion
    /// too, or answers `Poisoned`. Answers whether the store is usable.
    fn probe(&mut self, store: &Store) -> Result<bool, String> {
        self.probes += 1;
        let key = Key::new("probe", format!("probe-{}", self.probes));
        let mut km = KeyModel::new(key, Fingerprint(u128::from(self.probes)));
        let usable = self.probe_key(store, &mut km);
        self.model.keys.push(km);
        usable
    }

    fn probe_key(&mut self, store: &Store, km: &mut KeyModel) -> Result<bool, String> {
        let c = self.model.ctx;
        let fp = Some(km.fp);
        let effect = km.claim(store, &c, fp, None, &mut self.model.tokens, true)?;
        self.check_errors()?;
        match effect {
            Effect::Answered if !km.leases.is_empty() => {
                let response = response_for(&mut self.rng, &km.key, km.leases[0].token());
                match km.complete(store, &c, 0, response, true)? {
                    Effect::Answered => {
                        self.out.recovered += 1;
                        Ok(true)
                    }
                    // With every set_len failing, the claim fitted in the file and the
                    // completion needed it to grow: usable until then, as a full disk.
                    Effect::Unknown if self.disk.switch().fails_for_good(Op::SetLen) => {
                        self.out.unknown += 1;
                        self.check_errors()?;
                        Ok(true)
                    }
                    other => Err(format!(
                        "the store recovered a claim, then answered {other:?}"
                    )),
                }
            }
            Effect::Poisoned => {
                self.check_poisoned(store)?;
                Ok(false)
            }
            other => Err(format!(
                "after OutcomeUnknown, a new claim answered {other:?}"
            )),
        }
    }

    /// A poisoned store refuses every kind of write, naming the cause.
    fn check_poisoned(&mut self, store: &Store) -> Result<(), String> {
        self.out.poisoned = true;
        let key = Key::new("probe", "while-poisoned");
        let lease = self
            .model
            .keys
            .iter()
            .find_map(|k| k.leases.last().cloned());
        let mut answers: Vec<(&str, Result<(), Error>)> = vec![
            ("claim", store.claim(&key, None).map(drop)),
            ("expire", store.expire(&key).map(drop)),
            ("flush", store.flush()),
            ("run_pending_expiry", store.run_pending_expiry().map(drop)),
        ];
        if let Some(lease) = lease {
            answers.push(("complete", store.complete(&lease, Response::new(200))));
            answers.push(("release", store.release(&lease)));
        }
        for (what, answer) in answers {
            match answer {
                Err(Error::Poisoned { reason }) if reason.contains(self.disk.cause()) => {}
                other => return Err(format!("{what} on a poisoned store answered {other:?}")),
            }
        }
        Ok(())
    }

    /// Heals the disk, reopens the store on it and checks every key against the model, then
    /// runs the write checks on `CHECKED_KEYS` random keys (on all with `all`).
    fn check_after_heal(&mut self, all: bool) -> Result<(), String> {
        self.disk.switch().heal();
        self.clock.advance(Duration::from_secs(1));
        self.model.ctx.now = self.clock.now_ms();
        let store = match self.disk.open(&self.clock) {
            Ok(store) => store,
            Err(e) if self.out.bricked && e.to_string().contains(NOT_A_DATABASE) => {
                let acked = self.model.keys.iter().any(|k| !k.leases.is_empty());
                return match acked {
                    false => Ok(()),
                    true => Err(format!(
                        "acknowledged work on a file that no longer opens: {e}"
                    )),
                };
            }
            Err(e) => return Err(format!("the store did not reopen once healed: {e}")),
        };
        self.model.ctx.generation += 1;
        let live = self.model.get_all(&store)?;
        self.model.check_record_count(&store, live)?;
        self.model.check_sweep(&store, SWEEP_TICK)?;
        let n = self.model.keys.len();
        let chosen: Vec<usize> = match all {
            true => (0..n).collect(),
            false => (0..CHECKED_KEYS)
                .map(|_| self.rng.below(n as u64) as usize)
                .collect(),
        };
        self.model.write_checks(&store, &mut self.rng, &chosen)?;
        store
            .close()
            .map_err(|e| format!("closing the healed store: {e}"))
    }
}

/// Runs the workload on a fresh simulated disk with `arm` applied first, then checks it
/// (write checks on every key with `all`).
fn run_once(arm: impl Fn(&SimDisk), all: bool) -> Result<RunOutcome, String> {
    let disk = SimDisk::new();
    arm(&disk);
    let mut w = Workload::new(&disk);
    let panics = panic_count();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.run()?;
        w.out.ops = disk.counts();
        w.check_after_heal(all)
    }));
    match result {
        Ok(Ok(())) if panic_count() == panics => Ok(std::mem::take(&mut w.out)),
        Ok(Ok(())) => Err("a store thread panicked (see the panic message above)".into()),
        Ok(Err(v)) => Err(v),
        Err(_) => Err("panicked (see the panic message above)".into()),
    }
}

/// Operations of each kind the fault-free workload makes.
fn baseline() -> BTreeMap<&'static str, u64> {
    let out = run_once(|_| {}, true).unwrap_or_else(|v| panic!("fault-free run: {v}"));
    assert!(out.errors.is_empty(), "fault-free run: {:?}", out.errors);
    let c = out.ops;
    BTreeMap::from([
        ("Write", c.writes),
        ("SetLen", c.set_lens),
        ("Sync", c.syncs),
    ])
}

fn count_of(counts: &BTreeMap<&'static str, u64>, op: Op) -> u64 {
    counts[format!("{op:?}").as_str()]
}

/// Runs every injection point of `kinds` with `arm(disk, kind, n)`; `check` sees each outcome.
fn campaign(
    name: &str,
    kinds: &[Op],
    points: impl Fn(u64) -> Vec<u64>,
    arm: impl Fn(&SimDisk, Op, u64),
    check: impl Fn(Op, u64, &RunOutcome) -> Result<(), String>,
) {
    let started = Instant::now();
    let only = std::env::var("IDEMSTORE_FAULT_POINT").ok();
    if let Some(p) = &only {
        let valid = p.trim().split_once(':').is_some_and(|(kind, n)| {
            ["Write", "SetLen", "Sync"].contains(&kind) && n.parse::<u64>().is_ok_and(|n| n > 0)
        });
        assert!(
            valid,
            "IDEMSTORE_FAULT_POINT={p}: expected Write:N, SetLen:N or Sync:N"
        );
    }
    let counts = baseline();
    let mut tally = Tally::default();
    for &kind in kinds {
        for n in points(count_of(&counts, kind)) {
            if only
                .as_deref()
                .is_some_and(|p| p.trim() != format!("{kind:?}:{n}"))
            {
                continue;
            }
            let result = run_once(|disk| arm(disk, kind, n), false).and_then(|mut out| {
                out.fired = out.ops.get(kind) >= n;
                out.fired_in = out
                    .marks
                    .iter()
                    .find(|(_, c)| c.get(kind) >= n)
                    .map_or("-", |(part, _)| part);
                check(kind, n, &out)?;
                Ok(out)
            });
            match result {
                Ok(out) => tally.add(&out, kind, n),
                Err(v) => panic!(
                    "{name}: injection point {kind:?} #{n} (of {} in the workload): {v}\n\
                     reproduce: IDEMSTORE_FAULT_POINT={kind:?}:{n} cargo test --test io_faults",
                    count_of(&counts, kind)
                ),
            }
        }
    }
    if let Some(p) = &only {
        let in_campaign = kinds
            .iter()
            .any(|k| p.trim().starts_with(&format!("{k:?}:")));
        assert!(
            !in_campaign || tally.runs == 1,
            "{name}: IDEMSTORE_FAULT_POINT={p} is not an injection point of this campaign \
             (its workload makes {counts:?} operations)"
        );
    }
    // A fault in the creation of the file once left it unopenable (fixed; see
    // `a_store_whose_first_open_failed_opens_once_the_fault_is_gone`).
    assert_eq!(
        tally.bricked, 0,
        "{name}: runs left the file unopenable after a failed creation"
    );
    eprintln!(
        "{name}: workload ops {counts:?}; {} runs, fault reached in {}, errors surfaced in {}, \
         {} OutcomeUnknown answers, {} self-recoveries, {} poisoned, {} failed opens, \
         {} files left unopenable by a failed creation; \
         error kinds {:?}; reached without an error: {:?}; \
         0 panics, 0 lost acknowledgements; {:.1?}",
        tally.runs,
        tally.fired,
        tally.surfaced,
        tally.unknown,
        tally.recovered,
        tally.poisoned,
        tally.failed_opens,
        tally.bricked,
        tally.kinds,
        tally.silent,
        started.elapsed()
    );
}

#[test]
fn every_write_failure_is_survived() {
    campaign(
        "fail_nth(Write)",
        &[Op::Write],
        |count| (1..=count).collect(),
        |disk, kind, n| disk.fail_nth(kind, n),
        |_, _, _| Ok(()),
    );
}

#[test]
fn every_set_len_and_sync_failure_is_survived() {
    campaign(
        "fail_nth(SetLen, Sync)",
        &[Op::SetLen, Op::Sync],
        |count| (1..=count).collect(),
        |disk, kind, n| disk.fail_nth(kind, n),
        |_, _, _| Ok(()),
    );
}

#[test]
fn a_disk_that_fails_for_good_poisons_the_store() {
    let stride = env_u64("IDEMSTORE_FAULT_STRIDE").unwrap_or(1).max(1);
    campaign(
        "fail_from(Write, SetLen, Sync)",
        &KINDS,
        |count| {
            (1..=count)
                .filter(|n| *n <= 40 || n % stride == 0)
                .collect()
        },
        |disk, kind, n| disk.fail_from(kind, n),
        |kind, _, out| {
            // Reopening after a failed commit writes and syncs: with writes or syncs failing
            // for good the store cannot recover by itself.
            if out.unknown > 0 && kind != Op::SetLen && !out.poisoned {
                return Err(format!(
                    "{} failed operations but the store never reported itself poisoned",
                    out.unknown
                ));
            }
            if out.unknown > 0 && out.recovered > 0 && kind != Op::SetLen {
                return Err("the store claimed to recover on a disk that fails for good".into());
            }
            Ok(())
        },
    );
}

/// A real file that runs out of space: typed errors, no panic, and once space is back the
/// acknowledged work is all there, through `FaultyFile` and through a plain open of the file.
#[test]
fn a_full_disk_loses_no_acknowledged_work() {
    full_disk(Durability::Immediate);
}

/// The same in bounded mode. Recovery's own durable commit needs space too: when it fails,
/// the operations acknowledged since the last sync stay in memory and the store writes them at
/// close (here once space is back). Failed before that fix: the fourth recovery failed with
/// `StorageFull` and an acknowledged completion was gone after the reopen.
#[test]
fn bounded_mode_a_full_disk_loses_no_acknowledged_work() {
    full_disk(Durability::Bounded {
        max_delay: Duration::from_secs(60),
    });
}

fn full_disk(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let disk = FileDisk {
        path: path.clone(),
        switch: FaultSwitch::new(),
        durability,
    };
    let panics = panic_count();
    let mut w = Workload::new(&disk);
    let store = w.open().unwrap().expect("opens");
    w.steps(&store, 30).unwrap();
    let full_at = std::fs::metadata(&path).unwrap().len();
    disk.switch.set_space_limit(Some(full_at));
    // Fill: new keys with 48 KB responses until the disk is full and the store says so
    let mut failures = 0;
    // Bounded mode applies answered rows in the background: a failure there poisons the store
    // when its recovery fails too (the disk is still full), and the next call says so.
    let mut refused = false;
    for i in 0..400 {
        let mut km = KeyModel::new(Key::new("fill", format!("fill-{i}")), Fingerprint(7));
        let c = w.model.ctx;
        let mut effect = km.claim(&store, &c, None, None, &mut w.model.tokens, true);
        if let (Ok(Effect::Answered), Some(lease)) = (&effect, km.leases.first()) {
            let mut response = response_for(&mut w.rng, &km.key, lease.token());
            response.body = w.rng.bytes(48 * 1024);
            effect = km.complete(&store, &c, 0, response, true);
        }
        w.model.keys.push(km);
        match effect.unwrap() {
            Effect::Answered => {}
            Effect::Unknown => failures += 1,
            Effect::Poisoned => {
                refused = true;
                break;
            }
            Effect::Failed => panic!("untyped failure: {:?}", take_errors()),
        }
        w.check_errors().unwrap();
        if failures >= 20 {
            break;
        }
    }
    w.check_errors().unwrap();
    assert!(
        failures > 0 || refused || w.out.poisoned,
        "the store never noticed the full disk ({} bytes, now {})",
        full_at,
        std::fs::metadata(&path).unwrap().len()
    );
    assert!(
        std::fs::metadata(&path).unwrap().len() <= full_at,
        "the file grew past the space limit"
    );
    // Space comes back: the store recovers by itself, or it is poisoned and reopens
    disk.switch.heal();
    let poisoned = matches!(store.flush(), Err(Error::Poisoned { .. }));
    if !poisoned {
        assert!(
            w.probe(&store).unwrap(),
            "the store did not recover once space was back"
        );
    }
    drop(store);
    w.check_after_heal(true).unwrap();
    // And the file is a plain store file: a normal open sees the same
    let store = builder(&w.clock).open(&path).unwrap();
    w.model.ctx.generation += 1;
    let live = w.model.get_all(&store).unwrap();
    w.model.check_record_count(&store, live).unwrap();
    drop(store);
    assert_eq!(panic_count(), panics, "a thread panicked");
    eprintln!(
        "disk full at {full_at} bytes: {failures} OutcomeUnknown answers, store {}, errors {:?}",
        if poisoned { "poisoned" } else { "recovered" },
        w.out.errors.iter().take(3).collect::<Vec<_>>()
    );
}

/// `get` must not report a healthy file as corrupt while the store reopens it after a failed
/// commit, nor a poisoned store as corrupt.
///
/// Failed before it was fixed: `Store::get` (src/store.rs) treats "no database" (the writer dropped it to
/// reopen the file, or for good once poisoned) like a record that moved on, looks again four
/// times, and answers `OutcomeUnknown { source: Corrupt { "the record kept moving while it
/// was read" } }`.
#[test]
fn get_during_recovery_or_poison_is_not_reported_as_corruption() {
    let corrupt = |r: &Result<Option<idemstore::RecordInfo>, Error>| {
        format!("{r:?}").contains(MOVING_RECORD) || matches!(r, Err(Error::Corrupt { .. }))
    };
    let setup = || {
        let disk = SimDisk::new();
        let store = Disk::open(&disk, &ManualClock::new(T0)).unwrap();
        let key = Key::new("t", "completed");
        let Ok(ClaimOutcome::Acquired(lease)) = store.claim(&key, None) else {
            panic!("claim")
        };
        store
            .complete(&lease, Response::new(201).body("done"))
            .unwrap();
        // Its rows in the file first: the writer thread applying them could grow the file,
        // whose sync would take the fault armed below.
        store.records_on_disk().unwrap();
        (disk, store, key)
    };
    // Right after a failed commit, while the writer reopens the (healthy) file
    let (disk, store, key) = setup();
    disk.fail_nth(Op::Sync, 1);
    let failed = store.claim(&Key::new("t", "other"), None);
    assert!(
        matches!(failed, Err(Error::OutcomeUnknown { .. })),
        "{failed:?}"
    );
    let during = store.get(&key);
    // Once the store is poisoned
    let (disk, poisoned, key2) = setup();
    disk.fail_from(Op::Write, 1);
    let failed = poisoned.claim(&Key::new("t", "other"), None);
    assert!(
        matches!(failed, Err(Error::OutcomeUnknown { .. })),
        "{failed:?}"
    );
    let refused = poisoned.flush();
    assert!(
        matches!(refused, Err(Error::Poisoned { .. })),
        "{refused:?}"
    );
    let after = poisoned.get(&key2);
    assert!(
        !corrupt(&during) && !corrupt(&after),
        "get() reported corruption of a healthy file: right after a failed commit it answered \
         {during:?}; on a poisoned store {after:?} (expected the replay or a retryable \
         error, and Poisoned once poisoned)"
    );
    assert!(matches!(after, Err(Error::Poisoned { .. })), "{after:?}");
}

/// A batch whose commit failed may still have reached the disk; the store then reloads its
/// directory from the file. Its records must still be reclaimed once they expire, although no
/// sweep schedule saw them (found by the `ops` fuzz target, input
/// `fuzz/corpus/ops/regression-sweep-after-failed-commit`).
#[test]
fn records_of_a_failed_commit_that_landed_are_swept() {
    let clock = ManualClock::new(T0);
    let disk = SimDisk::new();
    let store = Disk::open(&disk, &clock).unwrap();
    let short = Key::new("t", "short");
    let Ok(ClaimOutcome::Acquired(_)) =
        store.claim_with_ttl(&short, None, Duration::from_millis(15_573))
    else {
        panic!("claim")
    };
    // A pass now: the sweeper's horizon covers the next hour from here on.
    assert_eq!(store.run_pending_expiry().unwrap(), 0);
    // The sync of the next batch's frame fails: the commit is reported failed, and the store
    // reopens the file, whose log holds the frame (written, but its sync failed): replay
    // applies it.
    disk.fail_nth(Op::Sync, 1);
    let landed = Key::new("t", "landed");
    let failed = store.claim_with_ttl(&landed, None, Duration::from_secs(10));
    assert!(
        matches!(failed, Err(Error::OutcomeUnknown { .. })),
        "{failed:?}"
    );
    disk.heal();
    // Queues behind the writer's recovery.
    store.flush().unwrap();
    let info = store.get(&landed).unwrap();
    assert!(
        info.is_some(),
        "the failed commit reached the disk: {info:?}"
    );
    assert_eq!(store.records_on_disk().unwrap(), 2);
    // Both due, and a sweeper tick later.
    clock.advance(Duration::from_millis(15_573) + SWEEP_TICK);
    assert_eq!(store.run_pending_expiry().unwrap(), 2);
    assert_eq!(store.records_on_disk().unwrap(), 0);
    assert_eq!(store.stats().live_keys, 0);
}

/// A store whose very first open failed on an I/O error (the file was being created) must open
/// once the fault is gone, as after any other failed open.
///
/// Failed before it was fixed: redb creates a file by growing it, writing a header without its magic number,
/// syncing, then writing the magic number; when any of that fails the file is left non-empty
/// without the magic number, and every later open answers `Storage(Io(InvalidData "Not a redb
/// database: magic number mismatch"))` until someone deletes the file by hand.
#[test]
fn a_store_whose_first_open_failed_opens_once_the_fault_is_gone() {
    let clock = ManualClock::new(T0);
    let mut answers = Vec::new();
    for (kind, n) in [
        (Op::SetLen, 1),
        (Op::Write, 1),
        (Op::Write, 2),
        (Op::Sync, 1),
    ] {
        let disk = SimDisk::new();
        disk.fail_nth(kind, n);
        let first = Disk::open(&disk, &clock).map(drop);
        disk.heal();
        let second = Disk::open(&disk, &clock).map(drop);
        answers.push(format!(
            "{kind:?} #{n}: first open {first:?}, then {second:?}"
        ));
        assert!(
            first.is_err(),
            "{kind:?} #{n}: the fault did not fail the first open"
        );
    }
    let bricked: Vec<&String> = answers
        .iter()
        .filter(|a| a.contains(NOT_A_DATABASE))
        .collect();
    assert!(
        bricked.is_empty(),
        "a file whose creation failed never opens again:\n{}",
        answers.join("\n")
    );
}

/// The store's commit log beside the file at `path` (`<path>-log`).
fn idemstore_log_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-log");
    name.into()
}

/// Bounded mode with a 60 s `max_delay`, on `clock`.
fn bounded_builder(clock: &ManualClock) -> Builder {
    Store::builder()
        .durability(idemstore::Durability::Bounded {
            max_delay: Duration::from_secs(60),
        })
        .clock(clock.clone())
}

/// A bounded-mode store on a fresh disk.
fn bounded_store(disk: &SimDisk, cache: Option<usize>) -> Store {
    let mut b = bounded_builder(&ManualClock::new(T0));
    if let Some(bytes) = cache {
        b = b.cache_size(bytes);
    }
    b.open_sim(disk).expect("open")
}

/// Flushes until a flush succeeds (the store recovers by itself after a failed commit).
fn flush_until_ok(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = store.flush() {
        assert!(Instant::now() < deadline, "the store never recovered: {e}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn lease_of(outcome: ClaimOutcome) -> idemstore::Lease {
    match outcome {
        ClaimOutcome::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// `Durability::Bounded`: an I/O error in the sync of a flush takes back nothing that was
/// acknowledged. redb drops its pending non-durable commits once it has seen an I/O error, so
/// the writer's recovery writes the acknowledged batches again; when a flush then answers Ok,
/// a claim acknowledged earlier still holds its key (one owner, whose completion lands) and a
/// completion acknowledged earlier replays, in this process and after a reopen.
#[test]
fn bounded_mode_a_failed_flush_takes_back_no_acknowledgement() {
    let mut reached = 0;
    for (kind, n) in [
        (Op::Sync, 1),
        (Op::Write, 1),
        (Op::Write, 2),
        (Op::Write, 3),
        (Op::Write, 5),
        (Op::Write, 8),
    ] {
        let disk = SimDisk::new();
        let store = bounded_store(&disk, None);
        let (held, lease, done, body) = held_and_done(&store);
        disk.fail_nth(kind, n);
        if store.flush().is_err() {
            reached += 1;
        }
        disk.heal();
        flush_until_ok(&store);
        let what = format!("{kind:?} #{n}");
        let again = store.claim(&held, None).unwrap();
        assert!(
            matches!(again, ClaimOutcome::InFlight { .. }),
            "{what}: an acknowledged claim was taken back: {again:?}"
        );
        match store.claim(&done, None).unwrap() {
            ClaimOutcome::Replay(r) => assert_eq!(r.response, body, "{what}"),
            other => panic!("{what}: an acknowledged completion was taken back: {other:?}"),
        }
        store.complete(&lease, Response::new(201)).unwrap();
        drop(store);
        let store = bounded_store(&disk, None);
        for key in [&held, &done] {
            assert!(
                matches!(store.claim(key, None).unwrap(), ClaimOutcome::Replay(_)),
                "{what}: {key:?} after a reopen"
            );
        }
    }
    assert!(reached >= 3, "the faults failed only {reached} flushes");
}

/// `Durability::Bounded`: an I/O error in a later batch's commit (a small cache, so that
/// non-durable commits write pages) takes back no completion acknowledged before it.
#[test]
fn bounded_mode_a_failed_later_commit_takes_back_no_acknowledgement() {
    let mut reached = 0;
    for n in 1..=12u64 {
        let disk = SimDisk::new();
        let store = bounded_store(&disk, Some(64 << 10));
        let done = Key::unscoped("done");
        let lease = lease_of(store.claim(&done, None).unwrap());
        let body = Response::new(200).body(vec![7; 3000]);
        store.complete(&lease, body.clone()).unwrap();
        let failed_before = store.stats().failed_commits;
        disk.fail_nth(Op::Write, n);
        // Answers come before their rows reach redb (`stage.rs`): the failure may strike the
        // writer thread's commit of them rather than a caller. `records_on_disk` applies what
        // is staged.
        let failed = (0..200).any(|i| {
            let claimed = store.claim(&Key::new("x", format!("{i}")), None);
            // Applied as they come, as a commit per claim did before the stage.
            claimed.is_err() || store.records_on_disk().is_err()
        }) || store.records_on_disk().is_err()
            || store.stats().failed_commits > failed_before;
        disk.heal();
        if !failed {
            continue;
        }
        reached += 1;
        flush_until_ok(&store);
        match store.claim(&done, None).unwrap() {
            ClaimOutcome::Replay(r) => assert_eq!(r.response, body, "write #{n}"),
            other => panic!("write #{n}: an acknowledged completion was taken back: {other:?}"),
        }
    }
    assert!(reached >= 6, "the faults failed only {reached} commits");
}

/// `Durability::Bounded`: a durable batch (here a takeover of a key claimed in an unsynced
/// batch, and a flush) whose sync fails may have reached the file all the same. Recovery must
/// not write the earlier unsynced batches over it (the takeover's removed record would come
/// back beside the new one, never to be swept): once everything has expired, a sweep leaves
/// no record.
#[test]
fn bounded_mode_recovery_never_writes_older_batches_over_a_failed_one() {
    // Whether the takeover lands in the batch whose sync fails is a race: run rounds until it
    // did in 10 of them (1 round in 20 to 40 here, in debug and release builds alike).
    let mut hits = 0;
    let mut round = 0;
    while hits < 10 {
        assert!(
            round < 3000,
            "the takeover's batch failed in only {hits} of {round} rounds"
        );
        round += 1;
        let disk = SimDisk::new();
        let clock = ManualClock::new(T0);
        let store = std::sync::Arc::new(
            bounded_builder(&clock)
                .lease(Duration::from_secs(1))
                .ttl(Duration::from_secs(10))
                .sweep_interval(Duration::from_secs(3600))
                .open_sim(&disk)
                .expect("open"),
        );
        let k = Key::unscoped("k");
        lease_of(store.claim(&k, None).unwrap());
        // Its rows in the file first: the writer thread applying them could grow the file,
        // whose sync would take the fault armed below.
        store.records_on_disk().unwrap();
        clock.advance(Duration::from_secs(2)); // the lease is over: the next claim takes over
        disk.fail_nth(Op::Sync, 1);
        // The takeover and a flush race into one durable batch (most rounds).
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let callers: Vec<_> = (0..6)
            .map(|i| {
                let (store, barrier, k) = (store.clone(), barrier.clone(), k.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match i {
                        0 => store.claim(&k, None).map(drop),
                        1 => {
                            std::thread::sleep(Duration::from_micros(50));
                            store.flush()
                        }
                        _ => store
                            .claim(&Key::unscoped(format!("other-{i}")), None)
                            .map(drop),
                    }
                })
            })
            .collect();
        let results: Vec<_> = callers.into_iter().map(|h| h.join().unwrap()).collect();
        disk.heal();
        flush_until_ok(&store);
        // The takeover is answered before its rows reach redb (`stage.rs`): the batch whose
        // sync fails is the flush's, which carries the staged takeover (most rounds: the flush
        // waits 50 µs).
        if results[0].is_err() || results[1].is_err() {
            hits += 1;
        }
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            store.run_pending_expiry().unwrap();
        }
        let left = store.records_on_disk().unwrap();
        assert_eq!(
            left, 0,
            "round {round}: records left after everything expired ({results:?})"
        );
    }
}

/// `Durability::Bounded` keeps the changes it has not synced (for a recovery to write again):
/// past 64 MiB of them the sync is due at once, whatever `max_delay` says, so memory stays
/// bounded under a burst of large responses.
#[test]
fn bounded_mode_syncs_early_past_64_mib_of_unsynced_changes() {
    let disk = SimDisk::new();
    let store = bounded_store(&disk, None);
    let before = store.stats().syncs;
    let body = vec![b'x'; 1000 << 10];
    for i in 0..70 {
        let lease = lease_of(store.claim(&Key::new("big", format!("{i}")), None).unwrap());
        store
            .complete(&lease, Response::new(200).body(body.clone()))
            .unwrap();
    }
    // max_delay is 60 s: only the limit can make the writer sync within this wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().syncs == before {
        assert!(
            Instant::now() < deadline,
            "no sync 10 s after 70 MB of unsynced changes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Right after a failed commit, while the writer reopens the file, `records_on_disk()` and
/// `run_pending_expiry()` wait for the reopen instead of answering `Closed` (the store is not
/// closed; they answer once it has recovered).
#[test]
fn counting_and_sweeping_during_recovery_wait_for_it() {
    let mut closed = Vec::new();
    for round in 0..50 {
        let disk = SimDisk::new();
        let store = Disk::open(&disk, &ManualClock::new(T0)).unwrap();
        acquired_lease(&store, "k");
        // Its rows in the file first: the writer thread applying them could grow the file,
        // whose sync would take the fault armed below.
        store.records_on_disk().unwrap();
        disk.fail_nth(Op::Sync, 1);
        let failed = store.claim(&Key::new("t", "other"), None);
        assert!(
            matches!(failed, Err(Error::OutcomeUnknown { .. })),
            "{failed:?}"
        );
        // Each one first in half the rounds.
        let (count, swept) = if round % 2 == 0 {
            let count = store.records_on_disk();
            (count, store.run_pending_expiry())
        } else {
            let swept = store.run_pending_expiry();
            (store.records_on_disk(), swept)
        };
        if matches!(count, Err(Error::Closed)) || matches!(swept, Err(Error::Closed)) {
            closed.push((round, count, swept));
            continue;
        }
        // The failed claim's batch may or may not have landed.
        assert!(matches!(count, Ok(1 | 2)), "{count:?}");
        assert!(matches!(swept, Ok(0)), "{swept:?}");
    }
    assert!(
        closed.is_empty(),
        "answered Closed while recovering: {closed:?}"
    );
}

fn acquired_lease(store: &Store, key: &str) -> idemstore::Lease {
    lease_of(store.claim(&Key::new("t", key), None).unwrap())
}

/// `Durability::Bounded`: a fault that outlasts the recovery (its own durable commit fails
/// too) poisons the store, which keeps the operations acknowledged since the last sync in
/// memory and writes them when it is closed. Once the disk is healed before the close,
/// nothing acknowledged is lost; if it still fails at close, the close says they are lost.
/// Failed before the fix: the completion was gone after the reopen.
#[test]
fn bounded_mode_a_fault_outlasting_recovery_loses_nothing_once_healed() {
    for heal_before_close in [true, false] {
        let disk = SimDisk::new();
        let store = bounded_store(&disk, None);
        let (held, lease, done, body) = held_and_done(&store);
        disk.fail_from(Op::Write, 1);
        assert!(store.flush().is_err());
        // The writer recovers (and fails) before it answers the next flush.
        let Err(Error::Poisoned { reason }) = store.flush() else {
            panic!("a disk failing every write did not poison the store")
        };
        assert!(reason.contains("kept in memory"), "{reason}");
        if heal_before_close {
            disk.heal();
        }
        let Err(Error::Poisoned { reason }) = store.close() else {
            panic!("a poisoned store closed Ok")
        };
        if heal_before_close {
            assert!(reason.contains("at close they were written"), "{reason}");
        } else {
            assert!(reason.contains("so they are lost"), "{reason}");
            disk.heal();
        }
        let store = bounded_store_on(&disk);
        let replayed = store.claim(&done, None).unwrap();
        let again = store.claim(&held, None).unwrap();
        if heal_before_close {
            assert!(
                matches!(&replayed, ClaimOutcome::Replay(r) if r.response == body),
                "an acknowledged completion was lost: {replayed:?}"
            );
            // Held by the earlier process's lease: taken over, with a later token.
            assert!(
                matches!(&again, ClaimOutcome::Acquired(l) if l.is_takeover() && l.token() > lease.token()),
                "an acknowledged claim was lost: {again:?}"
            );
        } else {
            // Lost as in a power loss: gone entirely, never altered.
            assert!(
                matches!(&replayed, ClaimOutcome::Acquired(l) if !l.is_takeover()),
                "{replayed:?}"
            );
        }
    }
}

/// The close's final commit (the clock's high-water mark, the commit log marked applied)
/// fails: `close` says so, as `Poisoned` with a reason saying nothing acknowledged is at stake
/// (before, it answered `Ok`), and the next open has every acknowledged operation.
#[test]
fn a_failed_final_commit_is_reported_by_the_close() {
    let disk = SimDisk::new();
    let open = |disk: &SimDisk| builder(&ManualClock::new(T0)).open_sim(disk).expect("open");
    let store = open(&disk);
    let (held, lease, done, body) = held_and_done(&store);
    disk.fail_from(Op::Sync, 1);
    let Err(Error::Poisoned { reason }) = store.close() else {
        panic!("a close whose final commit failed answered Ok")
    };
    assert!(
        reason.starts_with("the final commit at close failed")
            && reason.contains("already durable"),
        "{reason}"
    );
    disk.heal();
    let store = open(&disk);
    let replayed = store.claim(&done, None).unwrap();
    assert!(
        matches!(&replayed, ClaimOutcome::Replay(r) if r.response == body),
        "an acknowledged completion was lost: {replayed:?}"
    );
    let again = store.claim(&held, None).unwrap();
    assert!(
        matches!(&again, ClaimOutcome::Acquired(l) if l.is_takeover() && l.token() > lease.token()),
        "an acknowledged claim was lost: {again:?}"
    );
}

/// A fault that first strikes the close's own sync (bounded mode, acknowledged operations not
/// yet synced, no fault before): the close's recovery fails too, and its `Poisoned` reason must
/// say what became of them. Before the fix it said they were "kept in memory and written when
/// the store is closed" although the close had already made its one attempt: they were lost.
#[test]
fn bounded_mode_a_fault_at_the_close_sync_is_reported_by_the_close() {
    let disk = SimDisk::new();
    let store = bounded_store(&disk, None);
    let (_held, _lease, done, _body) = held_and_done(&store);
    disk.fail_from(Op::Write, 1);
    let Err(Error::Poisoned { reason }) = store.close() else {
        panic!("a close whose sync failed for good answered Ok")
    };
    assert!(reason.contains("so they are lost"), "{reason}");
    disk.heal();
    // Lost as in a power loss: gone entirely, never altered.
    let store = bounded_store_on(&disk);
    let again = store.claim(&done, None).unwrap();
    assert!(
        matches!(&again, ClaimOutcome::Acquired(l) if !l.is_takeover()),
        "{again:?}"
    );
}

/// Recovery writes the acknowledged-but-unsynced operations of a poisoned bounded-mode store
/// only if no other store opened the file since (the file is unlocked while poisoned): never
/// over another store's changes. (Without that check, here, the stale record is written beside
/// the other store's and lingers; the other store's wins on its later token.)
#[test]
fn bounded_mode_recovery_at_close_never_writes_over_another_stores_changes() {
    let disk = SimDisk::new();
    let store = bounded_store(&disk, None);
    let key = Key::unscoped("k");
    let lease = lease_of(store.claim(&key, None).unwrap());
    store
        .complete(&lease, Response::new(200).body(b"first".to_vec()))
        .unwrap();
    disk.fail_from(Op::Write, 1);
    assert!(store.flush().is_err());
    assert!(matches!(store.flush(), Err(Error::Poisoned { .. })));
    disk.heal();
    // Another store opens the file meanwhile: the completion above is not on disk; the key is
    // claimed and completed afresh there.
    let second = bounded_store_on(&disk);
    // A shorter lifetime: its record sorts before the first one's in the file.
    let lease2 = lease_of(
        second
            .claim_with_ttl(&key, None, Duration::from_secs(60))
            .unwrap(),
    );
    second
        .complete(&lease2, Response::new(201).body(b"second".to_vec()))
        .unwrap();
    second.close().unwrap();
    let Err(Error::Poisoned { reason }) = store.close() else {
        panic!("a poisoned store closed Ok")
    };
    let store = bounded_store_on(&disk);
    let answer = store.claim(&key, None).unwrap();
    assert!(
        matches!(&answer, ClaimOutcome::Replay(r) if r.response.body == b"second"),
        "the other store's acknowledged completion was overwritten: {answer:?}"
    );
    // Without the check the stale record lands beside the other store's (which wins on its
    // later token) and lingers.
    assert_eq!(
        store.records_on_disk().unwrap(),
        1,
        "a stale record was written"
    );
    assert!(reason.contains("another store opened the file"), "{reason}");
}

/// Acknowledged, unsynced: a claim of `held` (its lease) and a completion of `done` (its
/// response).
fn held_and_done(store: &Store) -> (Key, idemstore::Lease, Key, Response) {
    let (held, done) = (Key::unscoped("held"), Key::unscoped("done"));
    let lease = lease_of(store.claim(&held, None).unwrap());
    let other = lease_of(store.claim(&done, None).unwrap());
    let body = Response::new(200).body(b"hello".to_vec());
    store.complete(&other, body.clone()).unwrap();
    (held, lease, done, body)
}

/// A bounded-mode store on an existing disk.
fn bounded_store_on(disk: &SimDisk) -> Store {
    bounded_builder(&ManualClock::new(T0))
        .open_sim(disk)
        .expect("reopen")
}

/// After a failed commit the writer thread reopens the file and reloads the directory, which
/// then holds the failed batch's changes if they reached the disk (here a release whose log
/// frame was written before its sync failed). Before the fix, answers given in between, after
/// the batch's callers had their `OutcomeUnknown`, came from the directory as it was before
/// the batch: the released key read as in flight, then, once recovered, as absent (and
/// `records_on_disk`, reading the old database, could count the other way). Every call made
/// after an `OutcomeUnknown` answer must show the batch either applied or not, for good.
/// Found by `transient_faults_under_concurrent_callers` (`tests/power_loss.rs`).
#[test]
fn answers_after_an_unknown_outcome_never_change_their_mind() {
    let (mut unknown, mut landed) = (0, 0);
    for kind in [Op::Write, Op::Sync] {
        for n in 1..=3 {
            let disk = SimDisk::new();
            let store = builder(&ManualClock::new(T0))
                .open_sim(&disk)
                .expect("open");
            let key = Key::new("tenant", "released");
            let lease = lease_of(store.claim(&key, None).unwrap());
            // The claim's rows in the file first: the fault is for the release's writes, not
            // for the writer thread's apply of the claim.
            store.records_on_disk().unwrap();
            disk.fail_nth(kind, n);
            let released = store.release(&lease);
            disk.heal();
            match released {
                Err(Error::OutcomeUnknown { .. }) => unknown += 1,
                // The fault fell after the release's commit.
                Ok(()) => continue,
                Err(e) => panic!("{kind:?} #{n}: release answered {e}"),
            }
            // At once: the writer thread may not have reopened the file yet. The record count
            // first (it reads the file), then the key (its directory entry).
            let first_count = store.records_on_disk().unwrap();
            let first = store.get(&key).unwrap();
            store.flush().unwrap();
            let second = store.get(&key).unwrap();
            assert_eq!(
                first.is_some(),
                second.is_some(),
                "{kind:?} #{n}: the key read {first:?}, then {second:?} once the store recovered"
            );
            let second_count = store.records_on_disk().unwrap();
            assert_eq!(
                first_count, second_count,
                "{kind:?} #{n}: {first_count} records on disk, then {second_count} once the store \
                 recovered"
            );
            if second.is_none() {
                landed += 1;
            }
        }
    }
    // Not vacuous: some failed releases reached the disk.
    assert!(
        unknown > 0 && landed > 0,
        "{unknown} unknown, {landed} landed"
    );
}
