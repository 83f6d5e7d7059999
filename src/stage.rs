//! Staged rows: batches answered, their rows not yet in redb.
//!
//! A batch's answer does not need redb: with `Durability::Bounded` it needs no sync at all,
//! and with `Durability::Immediate` and the commit log it rests on the batch's log frame.
//! Before this module each batch still waited for its own non-durable redb commit (~19 µs of
//! table opens, page handling and commit bookkeeping, for a batch of one or two claims when
//! callers are few): in bounded mode two callers made fewer claims per second than one (29k
//! against 75k), queueing for each other's commits, and a lone durable claim paid it on top of
//! its fdatasync. Now a batch is decided exactly as before (under the writer's lock, against
//! the directory), its rows go to this stage, and the batch is published and answered (after
//! its frame is synced, in `Immediate` mode); the writer thread applies everything staged in
//! one redb transaction (`Durability::None`), and in bounded mode makes it durable at most
//! `max_delay` after the oldest answer. So redb's per-transaction cost is paid once for many
//! batches, outside the callers' path.
//!
//! Reads of a record (a replay's body, `get`) that miss in redb may be looking for a row still
//! staged: they call [`Stage::commit`] and read again. Lock order: the writer's lock, then
//! [`Stage::committer`], then the staged rows; the committer never takes the writer's lock.
//!
//! Nothing acknowledged is lost to an I/O error: in `Immediate` mode the log holds every
//! staged row and a recovery replays it; in bounded mode the committer keeps every row applied
//! since the last durable commit ([`Committer::unsynced`]), and a recovery writes those, and the
//! rows still staged, again (`Writer::recover`).

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::log::Changes;
use crate::stats::Counters;
use crate::storage;
use crate::store::Shared;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The most bytes of rows kept for a recovery to write again: beyond it the sync is due at
/// once, whatever `max_delay` says.
pub(crate) const UNSYNCED_LIMIT: usize = 64 << 20;

/// Staged bytes past which the batch that stages more applies them itself, before answering:
/// callers faster than redb wait for it rather than grow the stage without bound.
const STAGED_LIMIT: usize = 16 << 20;

/// Why a commit was refused: an earlier one failed and the writer thread has not recovered
/// yet (not a failed commit of its own).
/// It names the earlier failure.
#[derive(Debug)]
struct Recovering(String);

impl std::fmt::Display for Recovering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an earlier commit failed ({}); the store is recovering",
            self.0
        )
    }
}

impl std::error::Error for Recovering {}

/// Whether `e` is a commit refused because an earlier one failed.
pub(crate) fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<Recovering>()))
}

/// Rows decided and answered, not yet applied to redb.
struct Staged {
    rows: Changes,
    /// When the oldest staged row was answered.
    since: Option<Instant>,
}

/// What the rows applied to redb since the last durable commit need.
pub(crate) struct Committer {
    /// Every row applied since the last durable commit, in order (redb drops its pending
    /// non-durable commits once it has seen an I/O error; recovery writes these again).
    pub(crate) unsynced: Changes,
    /// When the oldest of them was answered.
    pub(crate) unsynced_since: Option<Instant>,
    /// A commit failed (why): nothing is applied until the writer thread has recovered.
    failed: Option<String>,
    /// A non-durable commit was made since the last durable one: a durable commit is due
    /// even with nothing staged (a checkpoint whose rows the writer thread applied first
    /// must still be made durable before the log restarts).
    dirty: bool,
    /// A buffer swapped with the staged rows at each commit (no allocation per commit).
    spare: Changes,
}

pub(crate) struct Stage {
    staged: Mutex<Staged>,
    pub(crate) committer: Mutex<Committer>,
    /// Wakes the writer thread: rows were staged into an empty stage.
    wake_tx: crossbeam_channel::Sender<()>,
    pub(crate) wake_rx: crossbeam_channel::Receiver<()>,
    /// Bounded mode's `max_delay`; `None` with `Durability::Immediate`, where every staged
    /// row is durable in the commit log already, and nothing is kept for a recovery.
    max_delay: Option<Duration>,
    /// [`Committer::failed`], readable without the committer's lock (which a commit holds).
    failed: AtomicBool,
}

impl Stage {
    pub(crate) fn new(max_delay: Option<Duration>) -> Stage {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        Stage {
            staged: Mutex::new(Staged {
                rows: Changes::default().recycled(),
                since: None,
            }),
            committer: Mutex::new(Committer {
                unsynced: Changes::default().recycled(),
                unsynced_since: None,
                failed: None,
                dirty: false,
                spare: Changes::default().recycled(),
            }),
            wake_tx,
            wake_rx,
            max_delay,
            failed: AtomicBool::new(false),
        }
    }

    /// Stages a decided batch's rows (answered right after). Answers whether the stage has
    /// grown past its limit: the caller then applies it before answering.
    pub(crate) fn push(&self, rows: &Changes) -> bool {
        if rows.is_empty() {
            return false;
        }
        let mut s = self.staged.lock();
        let was_empty = s.rows.is_empty();
        s.rows.append(rows);
        s.since.get_or_insert_with(Instant::now);
        let full = s.rows.byte_len() > STAGED_LIMIT;
        drop(s);
        if was_empty {
            let _ = self.wake_tx.try_send(());
        }
        full
    }

    /// Wakes the writer thread if rows are staged (they were staged during its commit).
    pub(crate) fn wake_if_staged(&self) {
        if !self.staged.lock().rows.is_empty() {
            let _ = self.wake_tx.try_send(());
        }
    }

    /// Drops the staged rows (`Durability::Immediate`: the commit log holds them, and the
    /// recovery replays it).
    pub(crate) fn discard_staged(&self) {
        let mut s = self.staged.lock();
        s.rows.clear();
        s.since = None;
    }

    /// Moves the staged rows (and their age) into `c.unsynced` without applying them: a
    /// recovery writes them with the rest.
    pub(crate) fn take_into_unsynced(&self, c: &mut Committer) {
        let mut s = self.staged.lock();
        c.unsynced.append(&s.rows);
        s.rows.clear();
        if let Some(since) = s.since.take() {
            c.unsynced_since.get_or_insert(since);
        }
    }

    /// Applies everything staged to redb in one transaction, durably when `durable` (which
    /// also makes every earlier non-durable commit durable). Answers whether it synced.
    pub(crate) fn commit(&self, shared: &Shared, durable: bool) -> Result<bool> {
        let mut c = self.committer.lock();
        self.commit_locked(&mut c, shared, durable)
    }

    fn commit_locked(&self, c: &mut Committer, shared: &Shared, durable: bool) -> Result<bool> {
        if let Some(why) = &c.failed {
            return Err(Error::Io(std::io::Error::other(Recovering(why.clone()))));
        }
        // Taken before the rows: without a database (the store is poisoned, or closing) the
        // rows stay staged for the recovery or the close.
        let db = shared.database().ok_or(Error::Closed)?;
        let since = {
            let mut s = self.staged.lock();
            std::mem::swap(&mut s.rows, &mut c.spare);
            s.since.take()
        };
        let rows = std::mem::take(&mut c.spare);
        let to_sync = durable && (c.dirty || c.unsynced_since.is_some() || since.is_some());
        if rows.is_empty() && !to_sync {
            c.spare = rows;
            return Ok(false);
        }
        let result = storage::guard(|| {
            let txn = db.begin_write()?;
            storage::rewrite_unsynced(&txn, shared.config.layout, &rows)?;
            storage::commit(txn, &shared.config, durable)
        });
        // Kept for a recovery unless made durable (or in the log): a failed commit may have
        // reached the file, and recovery writes it again after the earlier rows (never older
        // rows over it).
        if self.max_delay.is_some() && !(durable && result.is_ok()) {
            c.unsynced.append(&rows);
        }
        c.spare = rows.recycled();
        // The recovery must be able to open the file again.
        drop(db);
        let counters = &shared.counters;
        match result {
            Ok(()) => {
                c.dirty = !durable;
                if durable {
                    c.unsynced.clear();
                    c.unsynced_since = None;
                    Counters::bump(&counters.syncs);
                } else if let Some(since) = since.filter(|_| self.max_delay.is_some()) {
                    c.unsynced_since.get_or_insert(since);
                }
                Counters::bump(&counters.stage_commits);
                Ok(durable)
            }
            Err(e) => {
                warn!("applying staged rows failed: {e}");
                Counters::bump(&counters.failed_commits);
                // The rows kept for the recovery keep their age (the sync deadline, and a
                // close that finds them unsynced).
                if let Some(since) = since.filter(|_| self.max_delay.is_some()) {
                    c.unsynced_since.get_or_insert(since);
                }
                c.failed = Some(e.to_string());
                self.failed.store(true, Ordering::Release);
                // Before anyone reads the directory again: it holds rows the reopened file
                // will hold only once recovery has written them.
                shared.recovery_begins();
                // Whoever failed (a read, the sweeper), the writer thread recovers.
                let _ = self.wake_tx.try_send(());
                Err(e)
            }
        }
    }

    /// A commit failed and the writer thread has not recovered yet: batches wait for it.
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The recovery wrote every row again: commits may go on.
    pub(crate) fn recovered(&self, c: &mut Committer) {
        c.failed = None;
        // The reopen's commit was durable.
        c.dirty = false;
        self.failed.store(false, Ordering::Release);
    }

    /// When the oldest row answered and not yet durable must be synced (at once past
    /// [`UNSYNCED_LIMIT`] bytes kept).
    pub(crate) fn sync_deadline(&self) -> Option<Instant> {
        let max_delay = self.max_delay?;
        let c = self.committer.lock();
        let staged_since = self.staged.lock().since;
        let since = match (c.unsynced_since, staged_since) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(if c.unsynced.byte_len() > UNSYNCED_LIMIT {
            since
        } else {
            since + max_delay
        })
    }

    /// Nothing is staged or applied and unsynced.
    pub(crate) fn is_clean(&self) -> bool {
        let c = self.committer.lock();
        c.unsynced_since.is_none() && self.staged.lock().rows.is_empty()
    }
}

/// The high-water mark and a token reservation, recorded as meta rows of a staged batch.
pub(crate) fn stage_meta(rows: &mut Changes, pairs: &[(&str, Millis)]) {
    for (k, v) in pairs {
        rows.put(crate::log::LogTable::Meta, k.as_bytes(), &v.to_le_bytes());
    }
}
