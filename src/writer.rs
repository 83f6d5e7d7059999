//! The durable writer: one thread that turns queued operations into group commits.
//!
//! Callers send operations through a bounded channel. The writer takes every operation queued
//! (up to `max_batch`), decides each one in arrival order against the directory plus the
//! batch's own earlier changes (the overlay), records the rows it changes, commits them,
//! publishes the overlay into the directory, and only then answers the callers. A batch forms
//! by itself while the previous commit syncs. With the commit log (`log.rs`), the batch is made
//! durable by appending its changes to the log (one fdatasync), and its rows reach redb after,
//! in memory, through the stage (`stage.rs`); when the log is full the batch and everything
//! staged are committed durably to redb instead, which checkpoints the log. Without the log each
//! batch is a durable redb write transaction. In bounded mode a batch is staged and answered
//! without any commit.
//!
//! Only one batch commits at a time: the writer's state sits behind a lock ([`Desk`]). A
//! caller that finds the queue empty and the writer idle takes the lock and commits its own
//! operation in its own thread, exactly as the writer thread would (in bounded mode the writer
//! thread still times the syncs).
//!
//! A failed commit is indeterminate: every operation of the batch gets `OutcomeUnknown`, the
//! database is dropped and reopened (redb refuses writes after a failed commit), and the
//! directory is rebuilt from what is on disk. If reopening fails the store is poisoned.

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::index::{Index, Slot};
use crate::key::{Fingerprint, Key, Response};
use crate::log::{Changes, Log};
use crate::machine::{self, ClaimDecision, OwnerDecision, OwnerOp, Rules, State};
use crate::outcome::{ClaimOutcome, Lease, Replay};
use crate::snapshot;
use crate::stats::Counters;
use crate::storage::{self, Opened, Tables, Target};
use crate::store::Shared;
use crate::sweeper::Due;
use crate::{clock, codec};
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::oneshot::Batch;
pub(crate) use crate::oneshot::Reply;

/// A batch's directory changes, published after its commit (`None`: the key is gone).
type Overlay =
    HashMap<u128, Option<Slot>, std::hash::BuildHasherDefault<crate::index::DigestHasher>>;

/// One queued operation.
pub(crate) enum Op {
    Claim {
        key: Key,
        digest: u128,
        fingerprint: Option<Fingerprint>,
        ttl_ms: Millis,
        reply: Reply<ClaimOutcome>,
    },
    Owner {
        key: Key,
        digest: u128,
        token: u64,
        kind: OwnerOp,
        response: Option<Response>,
        /// The new lease deadline for a renew.
        reply: Reply<Option<Millis>>,
    },
    Expire {
        key: Key,
        digest: u128,
        reply: Reply<bool>,
    },
    /// Makes everything acknowledged so far durable (a no-op with `Durability::Immediate`).
    Flush { reply: Reply<()> },
    /// Reclaims expired records (from the sweeper, through the low-priority queue); answers
    /// how many were removed.
    Sweep { due: Vec<Due>, reply: Reply<u64> },
}

/// An operation decided in the current batch, waiting for the commit to be answered.
enum Done {
    Claim(Reply<ClaimOutcome>, Result<ClaimOutcome>),
    Owner(Reply<Option<Millis>>, OwnerOp, Result<Option<Millis>>),
    Expire(Reply<bool>, Result<bool>),
    Flush(Reply<()>),
    Sweep(Reply<u64>, Result<u64>),
}

impl Done {
    fn count(&self, c: &Counters) {
        let bump = Counters::bump;
        match self {
            Done::Claim(_, Ok(ClaimOutcome::Acquired(lease))) => {
                bump(&c.claims_acquired);
                if lease.takeover {
                    bump(&c.takeovers);
                }
            }
            Done::Claim(_, Ok(ClaimOutcome::InFlight { .. })) => bump(&c.in_flight_conflicts),
            Done::Claim(_, Ok(ClaimOutcome::Replay(_))) => bump(&c.replays),
            Done::Claim(_, Ok(ClaimOutcome::Mismatch)) => bump(&c.mismatches),
            Done::Owner(_, _, Err(Error::StaleLease { .. })) => bump(&c.stale_token_rejections),
            Done::Owner(_, OwnerOp::Complete, Ok(_)) => bump(&c.completes),
            Done::Owner(_, OwnerOp::Release, Ok(_)) => bump(&c.releases),
            Done::Owner(_, OwnerOp::Renew, Ok(_)) => bump(&c.renews),
            Done::Expire(_, Ok(true)) => bump(&c.expired_by_operator),
            _ => {}
        }
    }

    /// Stores the caller's answer; `batch.start()` wakes the callers.
    fn store(self, batch: &mut Batch) {
        match self {
            Done::Claim(r, v) => r.store(v, batch),
            Done::Owner(r, _, v) => r.store(v, batch),
            Done::Expire(r, v) => r.store(v, batch),
            Done::Flush(r) => r.store(Ok(()), batch),
            Done::Sweep(r, v) => r.store(v, batch),
        }
    }

    fn fail(self, err: impl Fn() -> Error) {
        match self {
            Done::Claim(r, _) => r.send(Err(err())),
            Done::Owner(r, _, _) => r.send(Err(err())),
            Done::Expire(r, _) => r.send(Err(err())),
            Done::Flush(r) => r.send(Err(err())),
            Done::Sweep(r, _) => r.send(Err(err())),
        }
    }
}

impl Op {
    fn into_failed(self) -> Done {
        match self {
            Op::Claim { reply, .. } => Done::Claim(reply, Err(Error::Closed)),
            Op::Owner { reply, kind, .. } => Done::Owner(reply, kind, Err(Error::Closed)),
            Op::Expire { reply, .. } => Done::Expire(reply, Err(Error::Closed)),
            Op::Flush { reply } => Done::Flush(reply),
            Op::Sweep { reply, .. } => Done::Sweep(reply, Err(Error::Closed)),
        }
    }
}

/// State only the writer thread touches.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    seq_reserved: u64,
    high_water_persisted: Millis,
    /// With `Durability::Bounded`, during a recovery: the rows of the batches acknowledged
    /// since the last durable commit, in order (the stage's, `stage.rs`). A failed commit or
    /// sync makes redb drop them (it does not persist pending non-durable commits once it has
    /// seen an I/O error), so recovery writes them again: an I/O error takes back nothing that
    /// was acknowledged. A recovery that failed keeps them for the close.
    unsynced: Changes,
    /// The buffer the next batch records its changes into (reused: no allocation per batch).
    spare: Changes,
    /// Batches committed or failed so far (the pending marks' batch numbers).
    batches: u64,
    /// The keys marked pending for the current batch.
    marked: Vec<u128>,
    /// The commit log, with `Durability::Immediate` (and a nonzero `log_capacity`).
    log: Option<Log>,
    /// A caller's batch, kept for its allocation.
    batch: Vec<Op>,
    /// The records a batch published at a new place (expiry, token), for the sweeper; kept
    /// for its allocation.
    moved: Vec<(u128, Option<Slot>)>,
    /// The last batch's commit failed: the writer thread must recover before the next commit.
    recovery_due: bool,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, opened: &mut Opened) -> Self {
        Writer {
            shared,
            next_seq: opened.next_seq,
            seq_reserved: opened.seq_reserved,
            high_water_persisted: opened.high_water,
            unsynced: Changes::default(),
            spare: Changes::default(),
            batches: 0,
            marked: Vec::new(),
            log: opened.log.take(),
            batch: Vec::new(),
            moved: Vec::new(),
            recovery_due: false,
        }
    }

    fn bounded(&self) -> bool {
        matches!(
            self.shared.config.durability,
            crate::Durability::Bounded { .. }
        )
    }

    /// With `Durability::Bounded`: when the oldest answer not yet durable must be synced.
    fn sync_deadline(&self) -> Option<Instant> {
        self.shared.stage.as_ref()?.sync_deadline()
    }

    /// Something acknowledged is unsynced and its deadline has come.
    fn sync_overdue(&self) -> bool {
        self.sync_deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Gathers the operations queued behind `batch`'s first, up to `max_batch`.
    fn gather(&self, batch: &mut Vec<Op>, rx: &Receiver<Op>) {
        let max_batch = self.shared.config.max_batch;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    }

    /// [`Writer::process`], with a panic (a bug: redb's own panics are caught inside) failing
    /// the batch's callers with `Closed` and poisoning the store, in whichever thread it ran.
    /// Answers whether the batch committed.
    fn process_guarded(&mut self, batch: &mut Vec<Op>) -> bool {
        let run = std::panic::AssertUnwindSafe(|| self.process(batch));
        std::panic::catch_unwind(run).unwrap_or_else(|_| {
            batch.clear();
            self.shared.poison("a group commit panicked".into());
            // Claims waiting for this batch's keys look again, and find the store poisoned.
            self.settle();
            false
        })
    }

    /// On shutdown, persists the highest time used (a `get` may have answered "expired" at a
    /// time no commit recorded), so a clock stepping back across a restart resurrects nothing,
    /// and checkpoints the commit log, marking it fully applied so the next open does not read it.
    /// A large store also writes a snapshot of its directory, named in this last commit.
    fn final_commit(&mut self) {
        let now = self.shared.time.now();
        if self.shared.poison_reason().is_some() {
            return;
        }
        let snapshot = match &self.shared.target {
            Target::Path(path)
                if self.shared.index.len() as u64 >= self.shared.config.snapshot_min_keys =>
            {
                let id = snapshot::new_id();
                match snapshot::write(path, &self.shared.index, &self.shared.seeds, id) {
                    Ok(()) => Some(id),
                    Err(e) => {
                        warn!("the directory snapshot at close failed: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        if now <= self.high_water_persisted && self.log.is_none() && snapshot.is_none() {
            return;
        }
        let Some(db) = self.shared.database() else {
            return;
        };
        let result = storage::guard(|| {
            let txn = db.begin_write()?;
            let mut meta = vec![(storage::M_HIGH_WATER, now.max(self.high_water_persisted))];
            if self.log.is_some() {
                meta.push((storage::M_LOG_APPLIED, storage::LOG_ALL_APPLIED));
            }
            if let Some(id) = snapshot {
                meta.push((storage::M_SNAPSHOT, id));
            }
            storage::put_meta(&txn, &meta, &mut Changes::default())?;
            storage::commit(txn, &self.shared.config, true)
        });
        match result {
            Ok(()) => self.high_water_persisted = now,
            Err(e) => self.final_commit_failed(&e),
        }
    }

    /// Every acknowledged operation was durable before the close's last commits (in the
    /// commit log, or synced by the close); what they record (the rows staged since, which the
    /// log holds; the clock's high-water mark, a clean close, the snapshot's id) is not.
    /// `close` reports it.
    fn final_commit_failed(&self, e: &Error) {
        let reason = format!(
            "the final commit at close failed: {e} (every acknowledged operation was already \
             durable; the next open recovers the file)"
        );
        warn!("{reason}");
        self.shared.poison(reason);
    }

    /// Decides, commits and answers a batch; answers whether it committed.
    fn process(&mut self, batch: &mut Vec<Op>) -> bool {
        if let Some(reason) = self.shared.poison_reason() {
            for op in batch.drain(..) {
                op.into_failed().fail(|| Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            return false;
        }
        let durable = !self.bounded() || batch.iter().any(|op| matches!(op, Op::Flush { .. }));
        let failures_before = self.shared.counters.failed_commits.load(Ordering::Relaxed);
        let mut done = Vec::with_capacity(batch.len());
        // A panic inside redb (it panics on some damaged pages) fails the batch like an I/O error.
        let result = storage::guard(|| self.build_and_commit(batch, &mut done, durable));
        match result {
            Ok((overlay, synced, changes)) => {
                let shared = &Arc::clone(&self.shared);
                // Records rewritten in place (a renew, a complete: same expiry, same token) are
                // scheduled already, or will be found by the scan that covers their expiry:
                // scheduling them again would grow the wheel with every operation.
                let mut moved = std::mem::take(&mut self.moved);
                let place = |s: Slot| (s.expires_at(), s.token());
                for (&digest, &slot) in &overlay {
                    let old = shared.index.set(digest, slot);
                    if old.map(place) != slot.map(place) {
                        moved.push((digest, slot));
                    }
                }
                self.settle();
                if let Some(sweep) = &shared.sweep {
                    sweep.schedule_published(moved.iter().map(|(d, s)| (d, s)));
                }
                moved.clear();
                self.moved = moved;
                Counters::bump(&shared.counters.batches_committed);
                shared
                    .counters
                    .batched_ops
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
                if synced {
                    Counters::bump(&shared.counters.syncs);
                }
                self.spare = changes;
                let mut answers = Batch::new(done.len());
                for d in done {
                    d.count(&shared.counters);
                    d.store(&mut answers);
                }
                answers.start();
                true
            }
            Err(e) => {
                warn!("group commit of {} operations failed: {e}", done.len());
                // Not when the stage refused the commit (an earlier one failed), nor when it
                // counted this failure itself (the batch applied the stage).
                let counted = self.shared.counters.failed_commits.load(Ordering::Relaxed);
                if !crate::stage::is_refusal(&e) && counted == failures_before {
                    Counters::bump(&self.shared.counters.failed_commits);
                }
                // Before any of the batch's callers learns of the failure.
                self.shared.recovery_begins();
                let source = Arc::new(e);
                for op in batch.drain(..) {
                    done.push(op.into_failed());
                }
                for d in done {
                    d.fail(|| Error::OutcomeUnknown {
                        source: source.clone(),
                    });
                }
                self.settle();
                // The writer thread recovers (`Desk`): a caller that committed this batch in its
                // own thread gets its answer first.
                self.recovery_due = true;
                false
            }
        }
    }

    /// Recovers from the last batch's failed commit, if it failed.
    fn recover_if_due(&mut self) {
        // Bounded mode: a commit of staged rows failed (in the writer thread, or in a read
        // that applied them). Not once poisoned: the close makes the one more attempt then
        // (`rescue_unsynced`).
        let stage_failed = self.shared.stage.as_ref().is_some_and(|s| s.failed())
            && self.shared.poison_reason().is_none();
        if std::mem::take(&mut self.recovery_due) || stage_failed {
            self.recover();
        }
    }

    /// Decides every operation of the batch, writes the changes and commits. Returns the
    /// directory changes to publish. Decided operations move from `batch` to `done`; on a
    /// storage failure the undecided ones stay in `batch`.
    fn build_and_commit(
        &mut self,
        batch: &mut Vec<Op>,
        done: &mut Vec<Done>,
        durable: bool,
    ) -> Result<(Overlay, bool, Changes)> {
        let shared = Arc::clone(&self.shared);
        let db = shared.database().ok_or(Error::Closed)?;
        let now = shared.time.now();
        // The batch's rows are staged (`stage.rs`; bounded mode, and `Immediate` with the
        // commit log): no write transaction here.
        let txn = match shared.stage {
            Some(_) => None,
            None => Some(db.begin_write()?),
        };
        let seq_before = self.seq_reserved;
        let layout = shared.config.layout;
        let mut b = BatchCtx {
            shared: &shared,
            // Changes are recorded for the log, and in bounded mode for the stage.
            tables: match &txn {
                None => Tables::staged(layout, db, std::mem::take(&mut self.spare).recycled()),
                Some(txn) if self.log.is_some() => {
                    Tables::open(txn, layout, std::mem::take(&mut self.spare).recycled())?
                }
                Some(txn) => Tables::open(txn, layout, Changes::default())?,
            },
            overlay: Overlay::with_capacity_and_hasher(batch.len(), Default::default()),
            rules: shared.rules(now),
            new_in_flight: 0,
        };
        batch.reverse();
        while let Some(op) = batch.pop() {
            let (d, fatal) = match op {
                Op::Claim {
                    key,
                    digest,
                    fingerprint,
                    ttl_ms,
                    reply,
                } => match b.claim(self, key, digest, fingerprint, ttl_ms) {
                    Ok(answer) => (Done::Claim(reply, answer), None),
                    Err(e) => (Done::Claim(reply, Err(Error::Closed)), Some(e)),
                },
                Op::Owner {
                    key,
                    digest,
                    token,
                    kind,
                    response,
                    reply,
                } => match b.owner(&key, digest, token, kind, response.as_ref()) {
                    Ok(answer) => (Done::Owner(reply, kind, answer), None),
                    Err(e) => (Done::Owner(reply, kind, Err(Error::Closed)), Some(e)),
                },
                Op::Expire { key, digest, reply } => match b.expire(&key, digest) {
                    Ok(answer) => (Done::Expire(reply, Ok(answer)), None),
                    Err(e) => (Done::Expire(reply, Err(Error::Closed)), Some(e)),
                },
                Op::Flush { reply } => (Done::Flush(reply), None),
                Op::Sweep { due, reply } => match b.sweep(&due) {
                    Ok(n) => (Done::Sweep(reply, Ok(n)), None),
                    Err(e) => (Done::Sweep(reply, Err(Error::Closed)), Some(e)),
                },
            };
            done.push(d);
            if let Some(e) = fatal {
                return Err(e);
            }
        }
        let overlay = std::mem::take(&mut b.overlay);
        let mut changes = std::mem::take(&mut b.tables.changes);
        drop(b);
        if !self.bounded() {
            // A bounded-mode batch is published as soon as it is decided: nothing to wait for.
            self.marked.extend(overlay.keys().copied());
            shared
                .pending
                .mark(self.batches + 1, self.marked.iter().copied());
        }
        let mut meta = Vec::with_capacity(2);
        if self.seq_reserved != seq_before {
            meta.push((storage::META_SEQ, self.seq_reserved));
        }
        if now > self.high_water_persisted {
            meta.push((storage::M_HIGH_WATER, now));
        }
        if !meta.is_empty() {
            match &txn {
                Some(txn) => storage::put_meta(txn, &meta, &mut changes)?,
                None => crate::stage::stage_meta(&mut changes, &meta),
            }
        }
        // A new block of fencing tokens is reserved durably, whatever the mode: tokens handed
        // out beyond a reservation that a crash loses would be handed out again.
        let durable = durable || self.seq_reserved != seq_before;
        let Some(txn) = txn else {
            let stage = shared.stage.as_ref().expect("no transaction: staged");
            if let Some(log) = self.log.as_mut() {
                // `Immediate` with the log: the frame makes the batch durable and it is
                // answered after; its rows reach redb later, in bulk, in memory (redb never
                // holds a batch the log lacks, as before: see `log.rs`).
                if changes.changed_nothing() {
                    return Ok((overlay, false, changes));
                }
                if log.fits(&changes) {
                    log.append(&changes)?;
                    if stage.push(&changes) {
                        stage.commit(&shared, false)?;
                    }
                    self.high_water_persisted = self.high_water_persisted.max(now);
                    return Ok((overlay, true, changes));
                }
                // The log is full: a durable redb commit of everything staged and this batch,
                // which starts a new log generation (a checkpoint).
                let next = crate::log::new_generation();
                let restart = [(storage::M_LOG_GEN, next), (storage::M_LOG_APPLIED, 0)];
                crate::stage::stage_meta(&mut changes, &restart);
                stage.push(&changes);
                stage.commit(&shared, true)?;
                log.restart(next);
                Counters::bump(&shared.counters.checkpoints);
                self.high_water_persisted = self.high_water_persisted.max(now);
                // The stage counted the sync.
                return Ok((overlay, false, changes));
            }
            // Past the stage's limit this batch applies it before answering (callers faster
            // than redb wait for it). A failure keeps the rows (staged, then unsynced) for the
            // recovery to write again; this batch's callers get `OutcomeUnknown`.
            let full = stage.push(&changes);
            if durable || full {
                stage.commit(&shared, durable)?;
            }
            self.high_water_persisted = self.high_water_persisted.max(now);
            // A sync was counted by the stage.
            return Ok((overlay, false, changes));
        };
        // Guarded here too: a panic inside redb's commit fails the batch like an I/O error.
        let synced = storage::guard(|| self.commit(txn, &changes, durable))?;
        self.high_water_persisted = self.high_water_persisted.max(now);
        Ok((overlay, synced, changes))
    }

    /// Commits a batch whose rows changed as `changes` say: with the log, redb keeps it in
    /// memory and the log makes it durable; when the log is full (or without one), by a durable
    /// redb commit, which also starts a new log generation. Answers whether it synced.
    fn commit(
        &mut self,
        txn: redb::WriteTransaction,
        changes: &Changes,
        durable: bool,
    ) -> Result<bool> {
        let config = &self.shared.config;
        if changes.changed_nothing() {
            // The batch changed nothing (refusals, a flush with nothing to sync): nothing to
            // commit, and its answers rest on earlier batches. Committing would still add a redb
            // transaction, and non-durable ones pile up in redb's memory until the next durable
            // commit, which with the log only a full log brings: a flood of refused claims grew
            // the process by about 12 bytes per claim without bound (`tests/flood_memory.rs`).
            txn.abort()?;
            return Ok(false);
        }
        let Some(log) = self.log.as_mut().filter(|_| durable) else {
            storage::commit(txn, config, durable)?;
            return Ok(durable);
        };
        if log.fits(changes) {
            // The frame first: redb never holds a batch the log lacks, so replaying the
            // generation from its start over whatever redb kept gives the same state (whole
            // rows, in order; see `log.rs`). When the append fails the transaction is dropped
            // uncommitted.
            log.append(changes)?;
            storage::commit(txn, config, false)?;
            return Ok(true);
        }
        let next = crate::log::new_generation();
        let restart = [(storage::M_LOG_GEN, next), (storage::M_LOG_APPLIED, 0)];
        storage::put_meta(&txn, &restart, &mut Changes::default())?;
        storage::commit(txn, config, true)?;
        log.restart(next);
        Counters::bump(&self.shared.counters.checkpoints);
        Ok(true)
    }

    /// Settles the current batch's pending marks (see `pending.rs`).
    fn settle(&mut self) {
        self.batches += 1;
        self.shared
            .pending
            .settle(self.batches, self.marked.drain(..));
    }

    fn alloc_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.next_seq >= self.seq_reserved {
            self.seq_reserved += self.shared.config.token_block;
        }
        seq
    }

    /// Makes every acknowledged commit durable (`Durability::Bounded`).
    fn sync(&mut self) {
        let Some(stage) = &self.shared.stage else {
            return;
        };
        if self.shared.database().is_none() {
            return;
        }
        // Applies what is staged and syncs; a failure leaves the rows for the recovery.
        if stage.commit(&self.shared, true).is_err() {
            self.recover();
        }
    }

    /// Drops the database after a failed commit, reopens it and rebuilds the directory from
    /// disk; poisons the store when that fails.
    ///
    /// In bounded mode the rows acknowledged since the last sync ([`Writer::unsynced`]) exist
    /// only in memory meanwhile: recovery writes them again, and when it fails keeps them for
    /// the store's close ([`Writer::rescue_unsynced`]), which tries once more. (No timed
    /// retries in between: they would hold every caller, and a close, for as long as they
    /// wait, when the fault lasts; the close's attempt comes when the operator is done.)
    fn recover(&mut self) {
        let shared = Arc::clone(&self.shared);
        // Bounded mode: the rows applied since the last durable commit and those still staged
        // are written again by the reopen; nothing is applied meanwhile (the committer's lock
        // is held, and callers wait for the writer's, which this holds).
        let bounded = self.bounded();
        let mut committer = shared.stage.as_ref().map(|stage| {
            let mut c = stage.committer.lock();
            if bounded {
                stage.take_into_unsynced(&mut c);
            } else {
                // The commit log holds every staged row: the reopen replays it.
                stage.discard_staged();
            }
            self.unsynced.append(&c.unsynced);
            c.unsynced.clear();
            c.unsynced_since = None;
            c
        });
        let old = shared.take_database();
        drop(old);
        self.log = None;
        let keeps_acks = !self.unsynced.is_empty();
        let result = self.reopen();
        if let (Some(c), Ok(()), Some(stage)) = (committer.as_mut(), &result, &shared.stage) {
            stage.recovered(c);
        }
        drop(committer);
        match result {
            Ok(()) => {
                Counters::bump(&shared.counters.recoveries);
                warn!("reopened the store after a failed commit");
            }
            Err(e) => {
                let mut reason = format!("reopening after a failed commit failed: {e}");
                if keeps_acks && matches!(e, Error::Poisoned { .. }) {
                    // Another store opened the file: never to be written over its changes.
                    self.unsynced.clear();
                    reason.push_str("; the operations acknowledged since the last sync are lost");
                } else if keeps_acks {
                    reason.push_str(
                        "; the operations acknowledged since the last sync are kept in memory \
                         and written when the store is closed, if the disk allows it by then \
                         (drop this store before opening the file again)",
                    );
                }
                warn!("{reason}");
                shared.poison(reason);
            }
        }
    }

    /// Opens the file again after a failure (writing [`Writer::unsynced`] again) and installs
    /// it; retries (for up to a second) an open the old database still holds.
    fn reopen(&mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Load into a directory of its own and swap it in only once the reopen succeeded:
            // callers keep reading the old one meanwhile, and keep it if recovery fails.
            let fresh = Index::new();
            let reopened = storage::open(
                &fresh,
                &shared.target,
                &shared.config,
                &shared.seeds,
                storage::Reopen::Recovery {
                    rewrite: &self.unsynced,
                    epoch: shared.epoch,
                },
            );
            match reopened {
                Ok(mut opened) => {
                    self.unsynced.clear();
                    self.log = opened.log.take();
                    shared.index.replace_with(fresh);
                    self.next_seq = opened.next_seq;
                    self.seq_reserved = opened.seq_reserved;
                    self.high_water_persisted = opened.high_water;
                    shared.install_database(opened.db);
                    shared.recovery_ends();
                    if let Some(sweep) = &shared.sweep {
                        sweep.rescan();
                    }
                    return Ok(());
                }
                // A reader may still hold the old database for a moment.
                Err(Error::AlreadyOpen) if attempt < 50 => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// At close, in bounded mode, when applying staged rows failed and no recovery ran (the
    /// store was poisoned meanwhile): the rows kept for a recovery join [`Writer::unsynced`],
    /// for [`Writer::rescue_unsynced`] to write.
    fn collect_failed_stage(&mut self) {
        let Some(stage) = self.shared.stage.as_ref().filter(|s| s.failed()) else {
            return;
        };
        if !self.bounded() {
            return;
        }
        let mut c = stage.committer.lock();
        stage.take_into_unsynced(&mut c);
        self.unsynced.append(&c.unsynced);
        c.unsynced.clear();
        c.unsynced_since = None;
    }

    /// At close, after a recovery that failed in bounded mode: writes the operations
    /// acknowledged since the last sync, which only memory holds, if the disk allows it now
    /// (and no other store opened the file since: see `Reopen::Recovery`). Either way the store
    /// stays poisoned; its reason says what became of them.
    fn rescue_unsynced(&mut self) {
        if self.unsynced.is_empty() || self.shared.database().is_some() {
            return;
        }
        let outcome = match self.reopen() {
            Ok(()) => "at close they were written".to_string(),
            Err(e) => format!("at close writing them failed too, so they are lost: {e}"),
        };
        warn!("operations acknowledged since the last sync: {outcome}");
        let reason = self.shared.poison_reason().unwrap_or_default();
        self.shared.poison(format!("{reason}; {outcome}"));
    }
}

/// The writer's state and the queue to it, shared by the writer thread and the callers.
///
/// The writer thread takes the lock for each batch it gathers from the queue. A caller that
/// finds the queue empty and the lock free commits its own operation in its own thread instead
/// ([`Desk::commit_here`]): a lone caller then skips two thread hand-offs (the wake-up of the
/// writer and its own), which cost 30-40 us of a ~200 us durable claim on this machine kind,
/// and most of a bounded-mode claim. Under load the queue is rarely empty, so batches still
/// form at the writer thread as before; and since every commit holds the lock, batches still
/// commit one at a time in the order they took it. When a caller's commit fails, the caller
/// gets its `OutcomeUnknown` at once and the writer thread recovers (reopens the file, reloads
/// the directory), as after its own batches; callers queue meanwhile.
///
/// In bounded mode every caller decides its own batch, waiting for the lock
/// ([`Desk::decide_here`]): the batch is staged, not committed (`stage.rs`). The writer thread
/// applies the stage to redb without the lock (woken by the first rows staged into an empty
/// stage) and keeps the sync timer, whose deadline it reads from the stage.
pub(crate) struct Desk {
    writer: parking_lot::Mutex<Writer>,
    rx: Receiver<Op>,
    /// The writer thread holds operations and waits for the lock: callers queue behind it
    /// rather than barge in ahead.
    thread_waiting: AtomicBool,
    /// Callers between sending an operation and taking its answer.
    waiting: AtomicUsize,
    /// Wakes the writer thread to recover from a failed commit a caller ran.
    recover_tx: crossbeam_channel::Sender<()>,
    recover_rx: Receiver<()>,
    /// Bounded mode: batches are staged (`stage.rs`) and answered without a sync, so a caller
    /// that finds another's batch being decided waits for the lock (a few microseconds)
    /// instead of queueing.
    bounded: bool,
    /// Unit tests: the writer thread panics on taking its next operation from the queue.
    #[cfg(test)]
    pub(crate) panic_on_next_op: AtomicBool,
}

impl Desk {
    pub(crate) fn new(writer: Writer, rx: Receiver<Op>) -> Desk {
        let (recover_tx, recover_rx) = crossbeam_channel::bounded(1);
        let bounded = writer.bounded();
        Desk {
            bounded,
            writer: parking_lot::Mutex::new(writer),
            rx,
            thread_waiting: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            recover_tx,
            recover_rx,
            #[cfg(test)]
            panic_on_next_op: AtomicBool::new(false),
        }
    }

    /// Commits `op` (and whatever queued meanwhile) in the calling thread, if the writer is
    /// idle; otherwise hands `op` back, to be queued. The answer goes to `op`'s reply slot
    /// either way.
    pub(crate) fn commit_here(&self, op: Op) -> Option<Op> {
        if self.bounded {
            return self.decide_here(op);
        }
        if self.waiting.load(Ordering::Relaxed) != 0
            || self.thread_waiting.load(Ordering::Acquire)
            || !self.rx.is_empty()
        {
            return Some(op);
        }
        let Some(writer) = self.writer.try_lock() else {
            return Some(op);
        };
        self.run_here(writer, op)
    }

    /// Bounded mode: decides `op` (and whatever queued meanwhile) in the calling thread,
    /// waiting for the lock; the batch is staged, not committed, so the lock is held for
    /// microseconds. Hands `op` back when the writer thread must recover first.
    fn decide_here(&self, op: Op) -> Option<Op> {
        self.run_here(self.writer.lock(), op)
    }

    /// Runs `op`'s batch (with whatever queued meanwhile) under `writer`, in the calling
    /// thread; hands `op` back when the writer thread must recover first.
    fn run_here(&self, mut writer: parking_lot::MutexGuard<'_, Writer>, op: Op) -> Option<Op> {
        // A commit failed just now (a caller's, or applying staged rows in a read): the writer
        // thread recovers, then takes the queued operation.
        let stage_failed = writer.shared.stage.as_ref().is_some_and(|s| s.failed());
        if writer.recovery_due || stage_failed {
            let _ = self.recover_tx.try_send(());
            return Some(op);
        }
        let mut batch = std::mem::take(&mut writer.batch);
        batch.push(op);
        writer.gather(&mut batch, &self.rx);
        if writer.process_guarded(&mut batch) {
            Counters::bump(&writer.shared.counters.caller_commits);
        }
        writer.batch = batch;
        if writer.recovery_due {
            // Recovery (reopening the file, reloading the directory) is not this caller's to
            // wait for; a wake-up already queued will do.
            let _ = self.recover_tx.try_send(());
        }
        None
    }

    /// Unit tests: holds the writer's lock, so that operations sent meanwhile queue and form
    /// one batch, in the order they were sent.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> parking_lot::MutexGuard<'_, Writer> {
        self.writer.lock()
    }

    /// Unit tests: operations queued for the writer thread, counting one it took from the
    /// queue and holds while it waits for the lock.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.rx.len() + usize::from(self.thread_waiting.load(Ordering::Acquire))
    }

    /// Counts the caller as waiting for the writer until the guard drops.
    pub(crate) fn wait_in_line(&self) -> impl Drop + '_ {
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        InLine(&self.waiting)
    }

    /// The writer thread's loop; returns when every sender of the queue is gone and the queue
    /// is drained. `sweeps` is the sweeper's low-priority queue: at most one chunk joins each
    /// batch, after the claims that were waiting.
    ///
    /// A panic outside a batch (batches have their own guard; this is for a bug in the timer,
    /// a sync or a recovery) poisons the store, and the thread goes on answering whatever is
    /// queued with `Poisoned` until the store is dropped: no caller waits forever for a thread
    /// that died.
    pub(crate) fn run(&self, sweeps: Receiver<Op>) {
        let serve = std::panic::AssertUnwindSafe(|| self.serve(&sweeps));
        if std::panic::catch_unwind(serve).is_ok() {
            return;
        }
        let shared = Arc::clone(&self.writer.lock().shared);
        shared.poison("the writer thread panicked".into());
        let refuse = |op: Op| {
            let reason = shared.poison_reason().unwrap_or_default();
            op.into_failed().fail(|| Error::Poisoned {
                reason: reason.clone(),
            });
        };
        loop {
            crossbeam_channel::select_biased! {
                recv(self.rx) -> op => match op {
                    Ok(op) => refuse(op),
                    Err(_) => break,
                },
                recv(sweeps) -> op => match op {
                    Ok(op) => refuse(op),
                    Err(_) => break,
                },
            }
        }
    }

    fn serve(&self, sweeps: &Receiver<Op>) {
        let rx = &self.rx;
        let mut batch = Vec::new();
        let shared = Arc::clone(&self.writer.lock().shared);
        let stage = shared.stage.as_ref();
        let staged_rows = stage.map_or_else(crossbeam_channel::never, |s| s.wake_rx.clone());
        loop {
            // Bounded mode's sync deadline, read from the stage (not under the writer's lock,
            // which would hold up callers).
            let deadline = stage
                .and_then(|s| s.sync_deadline())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let first = crossbeam_channel::select_biased! {
                recv(staged_rows) -> _ => {
                    // Bounded mode: apply what callers staged, without the writer's lock.
                    let stage = stage.expect("only staged stores wake this");
                    // Durable when the sync is due: while callers keep staging, this branch is
                    // always ready and the timer's below never fires.
                    let due = stage.sync_deadline().is_some_and(|d| Instant::now() >= d);
                    if stage.commit(&shared, due).is_err() {
                        // The stage is marked failed (unless the store is closing or
                        // poisoned): recover, unless poisoned.
                        self.writer.lock().recover_if_due();
                    } else {
                        // Rows staged during this commit found the stage non-empty and woke
                        // nobody: go on with them. (Measured against leaving them for the
                        // sync, and against lingering 0.5 ms first: bounded mode, 2 threads,
                        // unique keys, 812k/832k against 708k/647k and 734k/791k claims/s, and
                        // the lowest p99 of the three.)
                        stage.wake_if_staged();
                    }
                    // Then whatever queued meanwhile, before more staged rows: under sustained
                    // load this branch is always ready, and a sweep or a flush must not wait
                    // for a lull (a review found expiry stalled for as long as the load lasted).
                    match rx.try_recv().or_else(|_| sweeps.try_recv()) {
                        Ok(op) => op,
                        Err(_) => continue,
                    }
                },
                recv(self.recover_rx) -> _ => {
                    let mut writer = self.writer.lock();
                    writer.recover_if_due();
                    continue;
                },
                recv(rx) -> op => match op {
                    #[cfg(test)]
                    Ok(_) if self.panic_on_next_op.swap(false, Ordering::AcqRel) => {
                        panic!("injected panic in the writer loop")
                    }
                    Ok(op) => op,
                    Err(_) => break,
                },
                recv(sweeps) -> op => match op {
                    Ok(op) => op,
                    // The store drops the sweep queue only after this thread ended.
                    Err(_) => break,
                },
                default(deadline.saturating_duration_since(Instant::now())) => {
                    let mut writer = self.writer.lock();
                    // A caller's commit may have failed while this thread waited for the lock:
                    // recover first (which leaves nothing to sync), never sync a failed database.
                    writer.recover_if_due();
                    if writer.sync_overdue() {
                        writer.sync();
                    }
                    continue;
                }
            };
            self.thread_waiting.store(true, Ordering::Release);
            let mut writer = self.writer.lock();
            self.thread_waiting.store(false, Ordering::Release);
            writer.recover_if_due();
            let first_is_sweep = matches!(first, Op::Sweep { .. });
            batch.push(first);
            writer.gather(&mut batch, rx);
            // One sweep chunk joins every batch, full or not: under sustained load the queue
            // always fills a batch, and expiry must not wait for a lull.
            if !first_is_sweep && let Ok(op) = sweeps.try_recv() {
                batch.push(op);
            }
            writer.process_guarded(&mut batch);
            writer.recover_if_due();
            if writer.sync_overdue() {
                writer.sync();
            }
        }
        let mut writer = self.writer.lock();
        writer.recover_if_due();
        writer.collect_failed_stage();
        writer.rescue_unsynced();
        if let Some(stage) = stage.filter(|s| !s.is_clean()) {
            if writer.bounded() {
                writer.sync();
                // A sync that failed here, and the recovery after it, leave the operations in
                // memory with a reason promising an attempt at close: this is it.
                writer.rescue_unsynced();
            } else if writer.shared.poison_reason().is_none()
                && let Err(e) = stage.commit(&shared, false)
            {
                // `Immediate`: the staged rows are in the commit log; the final commit below
                // makes them durable in the file, and so does the next open if it fails.
                writer.final_commit_failed(&e);
            }
        }
        writer.final_commit();
    }
}

/// The replay answer for a completed record.
pub(crate) fn replay_of(record: codec::Record) -> Result<ClaimOutcome> {
    let State::Completed { completed_at } = record.entry.state else {
        return Err(Error::Corrupt {
            detail: "completed directory entry points at an in-flight record".into(),
        });
    };
    let response = record.response.ok_or_else(|| Error::Corrupt {
        detail: "completed record has no response".into(),
    })?;
    Ok(ClaimOutcome::Replay(Replay {
        response,
        completed_at: clock::to_system_time(completed_at),
        expires_at: clock::to_system_time(record.entry.expires_at),
        attempt: record.entry.attempt,
    }))
}

/// One batch being decided: its transaction's tables and the changes made so far.
///
/// Each method returns `Err` for a storage failure (the whole batch fails) and `Ok(answer)`
/// otherwise, where the answer itself may be an error for this caller only.
struct BatchCtx<'a, 't> {
    shared: &'a Shared,
    tables: Tables<'t>,
    overlay: Overlay,
    rules: Rules,
    /// Keys this batch put in flight that were not in flight before.
    new_in_flight: u64,
}

impl BatchCtx<'_, '_> {
    /// Whether one more key in flight would pass `max_in_flight` (counting this batch's own
    /// acquisitions; its completes and releases free room only once published).
    fn at_in_flight_limit(&self) -> bool {
        self.shared.index.in_flight() + self.new_in_flight >= self.shared.config.max_in_flight
    }

    /// The key's current slot: this batch's change if any, else the directory's.
    fn current(&self, digest: u128) -> Option<Slot> {
        match self.overlay.get(&digest) {
            Some(s) => *s,
            None => self.shared.index.get(digest),
        }
    }

    fn claim(
        &mut self,
        w: &mut Writer,
        key: Key,
        digest: u128,
        fingerprint: Option<Fingerprint>,
        ttl_ms: Millis,
    ) -> Result<Result<ClaimOutcome>> {
        let cur = self.current(digest);
        let now = self.rules.now;
        Ok(
            match machine::claim(
                cur.map(|s| s.entry(self.rules.epoch)).as_ref(),
                fingerprint,
                &self.rules,
            ) {
                ClaimDecision::Acquire { .. }
                    if !cur.is_some_and(|s| s.is_in_flight()) && self.at_in_flight_limit() =>
                {
                    Err(Error::Overloaded {
                        in_flight: self.shared.index.in_flight() + self.new_in_flight,
                        max: self.shared.config.max_in_flight,
                    })
                }
                ClaimDecision::Acquire { attempt, takeover } => {
                    if !cur.is_some_and(|s| s.is_in_flight()) {
                        self.new_in_flight += 1;
                    }
                    let seq = w.alloc_seq();
                    // A takeover without a fingerprint keeps the one the key was claimed with:
                    // a later claim of another request must still be told it is a mismatch.
                    let fingerprint = match (fingerprint, cur) {
                        (None, Some(s)) if takeover => s.entry(self.rules.epoch).fingerprint,
                        _ => fingerprint,
                    };
                    let entry =
                        machine::acquired_entry(seq, attempt, fingerprint, ttl_ms, &self.rules);
                    let slot = Slot::new(&entry, self.rules.epoch);
                    self.tables.put(
                        &key,
                        cur.as_ref(),
                        &slot,
                        &codec::encode(&key, &entry, None),
                    )?;
                    self.overlay.insert(digest, Some(slot));
                    let State::InFlight { lease_until, .. } = entry.state else {
                        unreachable!("acquired entries are in flight")
                    };
                    Ok(ClaimOutcome::Acquired(Lease {
                        key,
                        token: seq,
                        attempt,
                        lease_until,
                        expires_at: entry.expires_at,
                        takeover,
                    }))
                }
                ClaimDecision::InFlight {
                    lease_until,
                    attempt,
                } => Ok(ClaimOutcome::InFlight {
                    retry_after: Duration::from_millis(lease_until.saturating_sub(now)),
                    attempt,
                }),
                ClaimDecision::Mismatch => Ok(ClaimOutcome::Mismatch),
                ClaimDecision::Replay => {
                    let slot = cur.expect("a replay decision has an entry");
                    let mut found = self.tables.get(&key, &slot)?;
                    if found.is_none()
                        && let Some(stage) = self.shared.stage.as_ref()
                    {
                        // Staged tables read what redb has committed: the record may have been
                        // written earlier in this batch (read it there: this batch's rows must
                        // reach redb only after its log frame, which is built from them), or be
                        // staged by an earlier batch (apply the stage, then read).
                        found = self.tables.get_written(&key, &slot)?;
                        if found.is_none() {
                            stage.commit(self.shared, false)?;
                            found = self.tables.get(&key, &slot)?;
                        }
                    }
                    match found {
                        Some(record) => replay_of(record),
                        None => Err(Error::Corrupt {
                            detail: format!(
                                "record {} listed in the directory is missing",
                                slot.token()
                            ),
                        }),
                    }
                }
            },
        )
    }

    fn owner(
        &mut self,
        key: &Key,
        digest: u128,
        token: u64,
        kind: OwnerOp,
        response: Option<&Response>,
    ) -> Result<Result<Option<Millis>>> {
        let cur = self.current(digest);
        let now = self.rules.now;
        let old = match machine::owner(
            cur.map(|s| s.entry(self.rules.epoch)).as_ref(),
            token,
            kind,
            now,
        ) {
            OwnerDecision::Stale => return Ok(Err(Error::StaleLease { token })),
            OwnerDecision::AlreadyDone => return Ok(Ok(None)),
            OwnerDecision::Apply => cur.expect("an applied owner operation has an entry"),
        };
        let entry = match kind {
            OwnerOp::Release => {
                self.tables.remove(key, &old)?;
                self.overlay.insert(digest, None);
                return Ok(Ok(None));
            }
            OwnerOp::Complete => machine::completed_entry(&old.entry(self.rules.epoch), now),
            OwnerOp::Renew => machine::renewed_entry(&old.entry(self.rules.epoch), &self.rules),
        };
        // Same token and expiry: the record is rewritten in place.
        let slot = Slot::new(&entry, self.rules.epoch);
        self.tables.put(
            key,
            Some(&old),
            &slot,
            &codec::encode(key, &entry, response),
        )?;
        self.overlay.insert(digest, Some(slot));
        Ok(Ok(match entry.state {
            State::InFlight { lease_until, .. } => Some(lease_until),
            State::Completed { .. } => None,
        }))
    }

    /// Removes the due records that are still current and expired (lazy cancellation: a key
    /// written since has a new record and is left alone).
    fn sweep(&mut self, due: &[Due]) -> Result<u64> {
        let mut removed = 0;
        for d in due {
            let cur = self.current(d.digest);
            if cur.is_some_and(|s| s.token() == d.token && !s.is_live(self.rules.now)) {
                self.tables.remove_at(d.expires_at, d.token)?;
                self.overlay.insert(d.digest, None);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the key's record; answers whether it was live.
    fn expire(&mut self, key: &Key, digest: u128) -> Result<bool> {
        let cur = self.current(digest);
        let live = cur.is_some_and(|s| s.is_live(self.rules.now));
        if let Some(old) = cur {
            self.tables.remove(key, &old)?;
            self.overlay.insert(digest, None);
        }
        Ok(live)
    }
}
