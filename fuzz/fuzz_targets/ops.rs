//! Operations against the reference model: claims (with fingerprints and lifetimes),
//! completes, releases, renews, expiries and gets on 8 keys, clock moves both ways, clean
//! reopens, power losses (`SimDisk::crash`) and injected I/O failures, run on a store over a
//! `SimDisk` with a `ManualClock` and checked after every step against the model of
//! `tests/support/reference.rs` (shared with `tests/model.rs`).
//!
//! An operation answered `OutcomeUnknown` may or may not have reached the disk, so the model
//! is a set of candidate states: each such operation doubles it, and every later answer keeps
//! only the candidates that predicted it. After an `OutcomeUnknown` the target waits for the
//! store's recovery (a `flush` queues behind it) and reads back the keys involved.
//!
//! `IDEMSTORE_FUZZ_STATS=1` prints, every 1,000 inputs, how often the interesting paths ran.

#![no_main]

#[path = "../../tests/support/driver.rs"]
mod driver;
#[path = "../../tests/support/reference.rs"]
mod reference;

use arbitrary::{Arbitrary, Unstructured};
use driver::Driver;
use idemstore::Error;
use idemstore::sim_disk::Op as DiskOp;
use libfuzzer_sys::fuzz_target;
use reference::{LeaseId, Op, Outcome, RefStore};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Steps per input.
const MAX_STEPS: usize = 48;
/// Response body bytes.
const MAX_BODY: usize = 32;
/// Candidate states kept before the input is abandoned (not a failure).
const MAX_CANDIDATES: usize = 256;
/// Flushes tried while waiting for the store to settle after a failed commit.
const MAX_SETTLE: usize = 16;

/// Counters for `IDEMSTORE_FUZZ_STATS`: inputs, steps, `OutcomeUnknown` answers, stores
/// found poisoned, opens that failed on a faulty disk, crashes, sweeps, most candidates.
static STATS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
const NAMES: [&str; 8] = [
    "inputs",
    "steps",
    "unknown",
    "poisoned",
    "failed_opens",
    "crashes",
    "sweeps",
    "max_cand",
];

fn count(i: usize) {
    STATS[i].fetch_add(1, Relaxed);
}

/// A value in `0..N`.
#[derive(Clone, Copy, Debug)]
struct Below<const N: u64>(u64);

impl<'a, const N: u64> Arbitrary<'a> for Below<N> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Below(u.int_in_range(0..=N - 1)?))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (8, Some(8))
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Fingerprint 0 is none; lifetime `None` is the store's default (0 and above 60 s are
    /// refused).
    Claim {
        key: Below<8>,
        fp: Below<3>,
        ttl_ms: Option<Below<70_001>>,
    },
    /// Lease index, modulo the leases acquired so far.
    Complete {
        lease: u8,
        body: Vec<u8>,
    },
    Release {
        lease: u8,
    },
    Renew {
        lease: u8,
    },
    Expire {
        key: Below<8>,
    },
    Get {
        key: Below<8>,
    },
    Advance {
        ms: Below<25_001>,
    },
    Rewind {
        ms: Below<25_001>,
    },
    /// `run_pending_expiry`.
    Sweep,
    Reopen,
    Crash {
        seed: u64,
    },
    /// Fail the `n`+1-th write, set_len, sync or read from now (every one from it if `sticky`).
    Fail {
        kind: Below<4>,
        n: Below<8>,
        sticky: bool,
    },
    Heal,
}

struct Run {
    d: Driver,
    models: Vec<RefStore>,
    /// A fault is armed on the disk: operations may fail.
    armed: bool,
    /// A fault was armed since the store was last opened. The writer thread applies answered
    /// rows to redb in the background (the stage), so a fault it met (a failed apply, a
    /// recovery that failed too and poisoned the store) can surface after the disk is healed,
    /// in any later call (found by this target: a store poisoned by a failed apply and a
    /// failed recovery, then healed, failed `records_on_disk` with no fault armed).
    faulted: bool,
    /// The store reported itself poisoned; it refuses operations until reopened.
    poisoned: bool,
    /// Keys touched by operations whose outcome is unknown, to read back.
    uncertain: Vec<u8>,
    /// An operation answered `OutcomeUnknown` in the last step and the target has not waited
    /// for the store's recovery yet: the next operation (or reopen) runs first, while the
    /// store may still be reopening its file, and its answer must agree with the candidates.
    unsettled: bool,
    /// Ids for leases whose claim did not return (counting down from the top).
    phantom: LeaseId,
}

/// An injected fault fails reads and writes, it never alters bytes: corruption reported with
/// or without one is a bug (the power-loss campaign holds the store to the same).
fn corrupt(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. } => true,
        Error::OutcomeUnknown { source } => corrupt(source),
        _ => false,
    }
}

/// Keeps distinct candidates; `false` when there are too many to go on.
fn dedup(models: Vec<RefStore>) -> (Vec<RefStore>, bool) {
    let mut out: Vec<RefStore> = Vec::with_capacity(models.len());
    for m in models {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    STATS[7].fetch_max(out.len() as u64, Relaxed);
    let ok = out.len() <= MAX_CANDIDATES;
    (out, ok)
}

fn op_key(op: &Op) -> u8 {
    match *op {
        Op::Claim { key, .. }
        | Op::Complete { key, .. }
        | Op::Release { key, .. }
        | Op::Renew { key, .. }
        | Op::Expire { key }
        | Op::Get { key } => key,
    }
}

impl Run {
    /// Runs `op` on the store and on every candidate. `false` to abandon the input.
    fn op(&mut self, op: Op) -> bool {
        let next = self.d.next_lease();
        let predicted: Vec<(RefStore, Outcome)> = self
            .models
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let outcome = m.apply(&op, next);
                (m, outcome)
            })
            .collect();
        match self.d.run(&op) {
            Err(e) if corrupt(&e) => panic!("{op:?} reported corruption of a healthy file: {e}"),
            Ok(got) => {
                let kept: Vec<RefStore> = predicted
                    .iter()
                    .filter(|(_, o)| *o == got)
                    .map(|(m, _)| m.clone())
                    .collect();
                if kept.is_empty() {
                    let allowed: Vec<&Outcome> = predicted.iter().map(|(_, o)| o).collect();
                    panic!("{op:?} answered {got:?}; the model allows {allowed:?}");
                }
                let ok;
                (self.models, ok) = dedup(kept);
                ok
            }
            Err(Error::OutcomeUnknown { .. }) if self.faulted || self.poisoned => {
                count(2);
                let phantom = self.phantom;
                self.phantom -= 1;
                let mut next_models = self.models.clone();
                for m in &self.models {
                    let mut m = m.clone();
                    m.apply(&op, phantom);
                    next_models.push(m);
                }
                let ok;
                (self.models, ok) = dedup(next_models);
                self.uncertain.push(op_key(&op));
                self.unsettled = true;
                ok
            }
            Err(Error::Poisoned { .. }) if self.faulted || self.poisoned => {
                self.poisoned = true;
                true
            }
            // A failed read (replay or get): nothing changed.
            Err(_) if self.faulted => true,
            Err(e) => panic!("{op:?} failed with no fault armed: {e}"),
        }
    }

    /// Waits until the store has recovered from a failed commit (or poisoned itself), then
    /// reads back the keys whose state is uncertain.
    fn settle(&mut self) -> bool {
        for _ in 0..MAX_SETTLE {
            match self.d.store().flush() {
                Ok(()) => return self.read_back(),
                Err(Error::Poisoned { .. }) => {
                    count(3);
                    self.poisoned = true;
                    return true;
                }
                Err(Error::OutcomeUnknown { .. }) => continue,
                Err(e) => panic!("flush after a failed commit: {e}"),
            }
        }
        panic!("the store neither recovered nor poisoned itself after {MAX_SETTLE} flushes");
    }

    fn read_back(&mut self) -> bool {
        let keys = std::mem::take(&mut self.uncertain);
        keys.into_iter().all(|key| self.op(Op::Get { key }))
    }

    /// `run_pending_expiry`: reclaims what is due (the background sweeper may have been first).
    fn sweep(&mut self) -> bool {
        count(6);
        let swept: Vec<(RefStore, u64)> = self
            .models
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let n = m.sweep();
                (m, n)
            })
            .collect();
        match self.d.store().run_pending_expiry() {
            Ok(n) => {
                let kept = swept.into_iter().filter(|(_, due)| n <= *due);
                let kept: Vec<RefStore> = kept.map(|(m, _)| m).collect();
                assert!(!kept.is_empty(), "swept {n} records, more than were due");
                let ok;
                (self.models, ok) = dedup(kept);
                ok
            }
            // Failed part way, or before starting: each chunk is a commit of its own.
            Err(e) if corrupt(&e) => panic!("run_pending_expiry reported corruption: {e}"),
            Err(e) if self.faulted || self.poisoned => {
                let mut next = self.models.clone();
                next.extend(swept.into_iter().map(|(m, _)| m));
                let ok;
                (self.models, ok) = dedup(next);
                match e {
                    Error::OutcomeUnknown { .. } => ok && self.settle(),
                    Error::Poisoned { .. } => {
                        self.poisoned = true;
                        ok
                    }
                    _ => ok,
                }
            }
            Err(e) => panic!("run_pending_expiry failed with no fault armed: {e}"),
        }
    }

    /// Opens the store again, healing the disk if the open fails.
    fn reopen(&mut self, crash: Option<u64>) -> bool {
        let opened = match crash {
            None => self.d.reopen(),
            Some(seed) => self.d.crash(seed),
        };
        if crash.is_some() {
            // A new disk, without the old one's faults.
            self.armed = false;
        }
        if crash.is_some() {
            count(5);
        }
        if let Err(e) = opened {
            count(4);
            assert!(self.armed, "open failed with no fault armed: {e}");
            assert!(!corrupt(&e), "an open cut short reported corruption: {e}");
            self.d.disk.heal();
            self.armed = false;
            self.d
                .open()
                .expect("the store opens once the disk is healed");
        }
        self.poisoned = false;
        self.faulted = self.armed;
        // A clean close persists the time unless the disk fails it; the difference is never
        // observable here, as a step back of the clock writes first (see `reference.rs`).
        for m in &mut self.models {
            m.reopen(crash.is_none());
        }
        self.read_back()
    }

    fn check_records(&mut self) {
        let on_disk = match self.d.store().records_on_disk() {
            Ok(on_disk) => on_disk,
            Err(Error::Poisoned { .. }) if self.faulted || self.poisoned => {
                self.poisoned = true;
                return;
            }
            Err(e) => {
                assert!(self.faulted, "records cannot be counted: {e}");
                return;
            }
        };
        let fits = self
            .models
            .iter()
            .any(|m| m.records_on_disk().contains(&on_disk));
        assert!(
            fits,
            "{on_disk} records on disk; candidates {:?}",
            self.models
        );
    }

    fn lease(&self, i: u8) -> Option<(u8, LeaseId)> {
        let n = self.d.leases.len();
        let id = (n != 0).then(|| usize::from(i) % n)?;
        // Keys are `[b'k', index]`.
        Some((self.d.leases[id].key().key()[1], id as LeaseId))
    }

    /// Runs one step; `false` to stop. After an `OutcomeUnknown` the target waits for the
    /// store's recovery and reads back the keys involved: before a step of the clock, the
    /// disk or a sweep, or after the next operation or reopen (which thus runs while the
    /// store may still be reopening its file).
    fn step(&mut self, step: Step) -> bool {
        let unsettled = std::mem::take(&mut self.unsettled);
        let runs_first = matches!(
            step,
            Step::Claim { .. }
                | Step::Complete { .. }
                | Step::Release { .. }
                | Step::Renew { .. }
                | Step::Expire { .. }
                | Step::Get { .. }
                | Step::Reopen
                | Step::Crash { .. }
        );
        if unsettled && !runs_first && !self.settle() {
            return false;
        }
        let go = self.step_now(step);
        // Unless this step left an unknown outcome of its own, to be settled after the next.
        if go && unsettled && !self.unsettled && !self.poisoned {
            return self.settle();
        }
        go
    }

    fn step_now(&mut self, step: Step) -> bool {
        let go = match step {
            Step::Claim { key, fp, ttl_ms } => self.op(Op::Claim {
                key: key.0 as u8,
                fp: fp.0.checked_sub(1).map(|f| f as u8),
                ttl_ms: ttl_ms.map(|t| t.0),
            }),
            Step::Complete { lease, mut body } => match self.lease(lease) {
                Some((key, lease)) => {
                    body.truncate(MAX_BODY);
                    self.op(Op::Complete { key, lease, body })
                }
                None => true,
            },
            Step::Release { lease } => match self.lease(lease) {
                Some((key, lease)) => self.op(Op::Release { key, lease }),
                None => true,
            },
            Step::Renew { lease } => match self.lease(lease) {
                Some((key, lease)) => self.op(Op::Renew { key, lease }),
                None => true,
            },
            Step::Expire { key } => self.op(Op::Expire { key: key.0 as u8 }),
            Step::Get { key } => self.op(Op::Get { key: key.0 as u8 }),
            Step::Advance { ms } => {
                self.d.clock.advance(std::time::Duration::from_millis(ms.0));
                for m in &mut self.models {
                    m.clock += ms.0;
                }
                true
            }
            Step::Rewind { ms } => match self.d.step_back(ms.0) {
                Ok(()) => {
                    for m in &mut self.models {
                        m.step_back(ms.0);
                    }
                    true
                }
                // The clock stays; a probe write that may have landed changes nothing the
                // model tracks (it only persists the current time).
                Err(Error::OutcomeUnknown { .. }) if self.faulted || self.poisoned => self.settle(),
                Err(Error::Poisoned { .. }) if self.faulted || self.poisoned => {
                    self.poisoned = true;
                    true
                }
                Err(e) => panic!("probe write failed with no fault armed: {e}"),
            },
            Step::Sweep => self.sweep(),
            Step::Reopen => self.reopen(None),
            Step::Crash { seed } => self.reopen(Some(seed)),
            Step::Fail { kind, n, sticky } => {
                let kind =
                    [DiskOp::Write, DiskOp::SetLen, DiskOp::Sync, DiskOp::Read][kind.0 as usize];
                if sticky {
                    self.d.disk.fail_from(kind, n.0 + 1);
                } else {
                    self.d.disk.fail_nth(kind, n.0 + 1);
                }
                self.armed = true;
                self.faulted = true;
                true
            }
            Step::Heal => {
                self.d.disk.heal();
                self.armed = false;
                true
            }
        };
        if go {
            self.check_records();
        }
        go
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut run = Run {
        d: Driver::new(),
        models: vec![RefStore::new()],
        armed: false,
        faulted: false,
        poisoned: false,
        uncertain: Vec::new(),
        unsettled: false,
        phantom: LeaseId::MAX,
    };
    for step in steps.into_iter().take(MAX_STEPS) {
        count(1);
        if !run.step(step) {
            break;
        }
    }
    let inputs = STATS[0].fetch_add(1, Relaxed) + 1;
    if inputs.is_multiple_of(1000) && std::env::var_os("IDEMSTORE_FUZZ_STATS").is_some() {
        let line: Vec<String> = (0..8)
            .map(|i| format!("{}={}", NAMES[i], STATS[i].load(Relaxed)))
            .collect();
        eprintln!("ops stats: {}", line.join(" "));
    }
});
