//! Expiry: reclaiming expired records from disk and from the directory, on time, across
//! restarts, without getting in the way of claims.
//!
//! Correctness never depends on this module: every operation treats a record at or past its
//! expiry as absent (invariant 1). The sweeper only reclaims space.
//!
//! - The durable expiry order is the record table itself, keyed by `(expires_at, seq)`.
//! - A hierarchical [`Wheel`] holds the records that expire before `horizon_end` (a near-future
//!   horizon, one hour ahead by default). The writer schedules every record it publishes at a
//!   new place (expiry, token) that falls inside the horizon (one rewritten in place, by a
//!   renew or a complete, is in the wheel already, or in the span a scan will cover); a pass
//!   that moves the horizon scans the newly covered span of the table (in chunks of short read
//!   transactions) and schedules what it finds, pausing whenever the wheel holds a scan chunk
//!   of due records (8,192, or `sweep_chunk` if more) until they are reclaimed. After a reopen
//!   the first pass scans from the start of the table, so records that fell due while the store
//!   was closed are reclaimed first, a scan chunk at a time. So does the first pass after the
//!   writer recovered from a failed commit, whose batch may have reached the disk unscheduled.
//! - Cancellation is lazy: a fired entry is dropped unless the directory still points at that
//!   very record (same token) and it has expired; a key re-claimed or completed since
//!   has a new record, scheduled on its own.
//! - Fired entries go to the writer in chunks of `sweep_chunk` through a separate queue that the
//!   writer reads only after the claims waiting at that moment, one chunk per commit.
//!
//! Why the horizon is race-free: a pass raises `horizon_end` before it starts scanning; the
//! writer checks `horizon_end` only after its commit returned. A record committed before the
//! raise is seen by the scan; one committed after it is scheduled by the writer (both is
//! harmless: the second firing finds nothing). In bounded mode the writer checks it once the
//! batch is staged, before its rows reach the file (`stage.rs`): so the pass applies the stage
//! after the raise and before the scan, and a record staged before the raise is in the file
//! when the scan reads it.

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::index::Slot;
use crate::store::Shared;
use crate::wheel::Wheel;
use crate::writer::Op;
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// One scheduled expiry: the record at `(expires_at, token)` of the key with `digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) digest: u128,
    pub(crate) token: u64,
    pub(crate) expires_at: Millis,
}

/// Rows read per read transaction while scanning the table into the wheel (the default of
/// `Config::scan_chunk`, and its most).
pub(crate) const SCAN_CHUNK: usize = 8192;

pub(crate) struct Sweep {
    /// One pass at a time, so a pass that returns has reclaimed everything due when it began
    /// (the background thread's and `run_pending_expiry`'s passes take turns).
    pass_lock: Mutex<()>,
    state: Mutex<SweepState>,
    tick_ms: Millis,
    horizon_ms: Millis,
    chunk: usize,
    /// Rows per read transaction of a scan.
    scan_chunk: usize,
    pub(crate) expired: AtomicU64,
    pub(crate) lag_ms: AtomicU64,
    pub(crate) backlog: AtomicU64,
    /// The store is closing: a pass stops between chunks (what is left is found again by the
    /// next open's first pass, which scans the whole table).
    stopping: AtomicBool,
}

struct SweepState {
    wheel: Wheel<Due>,
    /// Every record expiring before this instant is in the wheel, or is being scanned into it.
    horizon_end: Millis,
}

impl Sweep {
    pub(crate) fn new(
        tick_ms: Millis,
        horizon_ms: Millis,
        chunk: usize,
        scan_chunk: usize,
    ) -> Self {
        Sweep {
            pass_lock: Mutex::new(()),
            state: Mutex::new(SweepState {
                wheel: Wheel::new(0),
                horizon_end: 0,
            }),
            tick_ms,
            horizon_ms,
            chunk,
            scan_chunk,
            expired: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// The tick at which a record expiring at `ms` fires: rounded up, so never early.
    fn tick_of(&self, ms: Millis) -> u64 {
        ms.div_ceil(self.tick_ms)
    }

    /// Schedules records the writer just published, if they expire within the horizon.
    pub(crate) fn schedule_published<'a>(
        &self,
        published: impl Iterator<Item = (&'a u128, &'a Option<Slot>)>,
    ) {
        let mut st = self.state.lock();
        let end = st.horizon_end;
        for (&digest, slot) in published {
            if let Some(s) = slot.filter(|s| s.expires_at() < end) {
                let due = Due {
                    digest,
                    token: s.token(),
                    expires_at: s.expires_at(),
                };
                st.wheel.schedule(self.tick_of(due.expires_at), due);
            }
        }
    }

    /// Makes the next pass scan the whole table again, as after a reopen: after a failed commit
    /// the writer reloaded the directory from disk, where the failed batch may have landed with
    /// records nobody scheduled (the wheel keeps its entries; a second firing finds nothing).
    pub(crate) fn rescan(&self) {
        self.state.lock().horizon_end = 0;
    }

    /// Makes a pass in progress stop after its current chunk, and later ones at once: the store
    /// is closing, and must not wait for a backlog of millions of records to drain.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// Entries held by the wheel (scheduled, due or not).
    pub(crate) fn scheduled(&self) -> usize {
        self.state.lock().wheel.len()
    }

    /// One sweep pass at the store's current time: moves the horizon (scanning newly covered
    /// records into the wheel), then hands every due record to the writer in chunks, waiting
    /// for each. Returns the number of records reclaimed.
    ///
    /// A scan stops whenever the wheel holds [`Sweep::due_cap`] due records, and goes on once
    /// they are reclaimed: a store reopened after a long downtime, with millions of records
    /// overdue, neither loads them all into memory at once nor holds the wheel's lock (which
    /// the writer takes after each commit) while they cascade through the levels.
    pub(crate) fn pass(&self, shared: &Shared, writer: &Sender<Op>) -> Result<u64> {
        let _one_at_a_time = self.pass_lock.lock();
        let now = shared.time.now();
        let mut scan = {
            let mut st = self.state.lock();
            // Time moves before the scan, so the overdue records it finds go straight to the
            // due queue.
            st.wheel.advance_time(now / self.tick_ms);
            let target = now.saturating_add(self.horizon_ms);
            // Move in steps of half a horizon so the scan cost is amortised.
            if st.horizon_end == 0 || target >= st.horizon_end.saturating_add(self.horizon_ms / 2) {
                let from = st.horizon_end;
                st.horizon_end = target;
                Some(((from, 0), target))
            } else {
                None
            }
        };
        // A record staged before the horizon moved did not see the new horizon when it was
        // published, and is not in the file yet: apply the stage before the scan. A failure
        // (here, or of an earlier commit) leaves the rows to the recovery, which writes them
        // to the reopened file; the scan waits for it (`Shared::read_file`), as a read
        // does. The pass does not fail for rows that are not its own.
        if scan.is_some()
            && let Some(stage) = &shared.stage
        {
            let _ = stage.commit(shared, false);
        }
        let mut reclaimed = 0;
        loop {
            if let Some((from, to)) = scan {
                scan = match self.scan(shared, from, to, writer) {
                    Ok(rest) => rest.map(|cursor| (cursor, to)),
                    Err(e) => {
                        // The span beyond the failure was neither scanned nor is it scheduled
                        // by the writer (whose records fall inside the raised horizon): scan
                        // everything again.
                        self.rescan();
                        return Err(e);
                    }
                };
            }
            let drained = self.drain(shared, writer, now);
            if scan.is_some() && (drained.is_err() || self.stopping.load(Relaxed)) {
                // The rest of the span is left unscanned: for the next pass (or the next
                // open's first one) to scan again.
                self.rescan();
                scan = None;
            }
            reclaimed += drained?;
            if scan.is_none() {
                break;
            }
        }
        if reclaimed == 0 {
            self.lag_ms.store(0, Relaxed);
        }
        Ok(reclaimed)
    }

    /// Due records the wheel holds before a scan pauses for them to be reclaimed: one scan
    /// chunk's worth (about 400 kB), or one sweep chunk if that is more.
    fn due_cap(&self) -> usize {
        self.chunk.max(self.scan_chunk)
    }

    /// Hands every record due at `now` to the writer, a chunk per commit, waiting for each;
    /// stops early when the store is closing. Returns the number reclaimed.
    fn drain(&self, shared: &Shared, writer: &Sender<Op>, now: Millis) -> Result<u64> {
        let mut reclaimed = 0;
        loop {
            if self.stopping.load(Relaxed) {
                return Ok(reclaimed);
            }
            let mut fired = Vec::with_capacity(self.chunk);
            let more = {
                let mut st = self.state.lock();
                let more = st
                    .wheel
                    .advance_bounded(now / self.tick_ms, self.chunk, &mut fired);
                self.backlog.store(st.wheel.due_len() as u64, Relaxed);
                more
            };
            // Lazy cancellation, first look (the writer checks again under its own order).
            let due: Vec<Due> = fired
                .into_iter()
                .map(|(_, d)| d)
                .filter(|d| {
                    shared
                        .index
                        .get(d.digest)
                        .is_some_and(|s| s.token() == d.token)
                })
                .collect();
            if let Some(oldest) = due.iter().map(|d| d.expires_at).min() {
                self.lag_ms.store(now.saturating_sub(oldest), Relaxed);
                let (reply, answer) = crate::oneshot::oneshot();
                writer
                    .send(Op::Sweep { due, reply })
                    .map_err(|_| Error::Closed)?;
                let n = answer.wait()?;
                reclaimed += n;
                self.expired.fetch_add(n, Relaxed);
            }
            if !more {
                return Ok(reclaimed);
            }
        }
    }

    /// Schedules the records on disk expiring in `[from, to)` (`from` a position in the record
    /// table: expiry, token). Stops early once the wheel holds [`Sweep::due_cap`] due records,
    /// answering where to go on from; or when the store is closing (answering `None`, the
    /// span left for a rescan).
    fn scan(
        &self,
        shared: &Shared,
        from: (Millis, u64),
        to: Millis,
        writer: &Sender<Op>,
    ) -> Result<Option<(Millis, u64)>> {
        let mut cursor = from;
        loop {
            let flush = || {
                let (reply, answer) = crate::oneshot::oneshot();
                writer
                    .send(Op::Flush { reply })
                    .map_err(|_| Error::Closed)?;
                answer.wait()
            };
            let rows = shared.read_file(flush, |db| {
                crate::storage::guard(|| {
                    crate::storage::scan_expiry(db, cursor, to, self.scan_chunk, &shared.seeds)
                })
            })?;
            let full = rows.len() == self.scan_chunk;
            if full && self.stopping.load(Relaxed) {
                // Closing: the rest of the span is for the next open's first pass to scan.
                self.rescan();
                return Ok(None);
            }
            if let Some(last) = rows.last() {
                cursor = (last.expires_at, last.token.saturating_add(1));
            }
            let backlog = {
                let mut st = self.state.lock();
                for due in rows {
                    st.wheel.schedule(self.tick_of(due.expires_at), due);
                }
                st.wheel.due_len()
            };
            if !full {
                return Ok(None);
            }
            if backlog >= self.due_cap() {
                return Ok(Some(cursor));
            }
        }
    }
}
