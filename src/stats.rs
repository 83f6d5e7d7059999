//! Operation counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the store's counters since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Claims that acquired a key (new or taken over).
    pub claims_acquired: u64,
    /// Of those, takeovers of an earlier attempt (lease ended or previous process gone).
    pub takeovers: u64,
    /// Claims answered with a stored response.
    pub replays: u64,
    /// Claims answered "in flight".
    pub in_flight_conflicts: u64,
    /// Claims answered "mismatch".
    pub mismatches: u64,
    /// Successful completes.
    pub completes: u64,
    /// Successful releases.
    pub releases: u64,
    /// Successful renews.
    pub renews: u64,
    /// Keys removed by `expire`.
    pub expired_by_operator: u64,
    /// Owner operations refused because their token was stale.
    pub stale_token_rejections: u64,
    /// Batches decided and answered without a failure. With the commit log or in bounded mode
    /// a batch's rows reach the store file later, in bulk ([`Stats::stage_commits`]); without
    /// the log each batch is a write transaction. A batch that changed nothing (only refusals,
    /// or a flush with nothing to sync, in the store's same millisecond: a batch in a new one
    /// persists the clock's high-water mark) is counted too, although it writes nothing.
    pub batches_committed: u64,
    /// Operations carried by those batches (divide by `batches_committed` for the mean batch
    /// size).
    pub batched_ops: u64,
    /// Of `batches_committed`, those a caller ran in its own thread, having found the writer
    /// idle (in bounded mode every caller decides its own batch, waiting for the lock).
    pub caller_commits: u64,
    /// Claims that found their key being acquired by the batch under commit and waited for
    /// that commit instead of queueing for the next one.
    pub claims_waited_for_commit: u64,
    /// Batches made durable: by an append to the commit log (one fdatasync) or by a durable
    /// commit of the store file (one fdatasync, two with quick repair). A batch that changed
    /// nothing needs neither.
    pub syncs: u64,
    /// Commits that failed (their operations got `OutcomeUnknown`).
    pub failed_commits: u64,
    /// Reopens of the file after a failed commit that succeeded (the store went on); while
    /// one runs, calls wait for it.
    pub recoveries: u64,
    /// Durable commits of the store file that emptied the commit log (the log was full).
    pub checkpoints: u64,
    /// Transactions that applied staged rows (of batches answered since the last one) to the
    /// store file, durable or not. A batch is answered before its rows reach the file (with
    /// [`Durability::Bounded`](crate::Durability::Bounded) once decided, otherwise once its
    /// commit-log frame is synced); the writer thread applies them in bulk. 0 without the
    /// commit log.
    pub stage_commits: u64,
    /// Keys the open read from the directory snapshot of the last clean close (0: it scanned
    /// the records; see [`Builder::snapshot_min_keys`](crate::Builder::snapshot_min_keys)).
    pub keys_from_snapshot: u64,
    /// Live keys in the in-memory directory (including expired keys not yet swept).
    pub live_keys: u64,
    /// Keys in flight (claimed, not completed, not yet swept), the figure `max_in_flight` limits.
    pub in_flight_keys: u64,
    /// Records reclaimed by the sweeper.
    pub keys_expired: u64,
    /// At the last sweep pass: how long ago the oldest record it reclaimed had expired (ms).
    pub sweep_lag_ms: u64,
    /// Records already due but not yet handed to the writer.
    pub sweep_backlog: u64,
    /// Expiries held by the sweeper's timing wheel.
    pub sweep_scheduled: u64,
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) claims_acquired: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) in_flight_conflicts: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) completes: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) renews: AtomicU64,
    pub(crate) expired_by_operator: AtomicU64,
    pub(crate) stale_token_rejections: AtomicU64,
    pub(crate) batches_committed: AtomicU64,
    pub(crate) batched_ops: AtomicU64,
    pub(crate) caller_commits: AtomicU64,
    pub(crate) claims_waited_for_commit: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) keys_from_snapshot: AtomicU64,
    pub(crate) stage_commits: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        live_keys: u64,
        in_flight_keys: u64,
        sweep: Option<&crate::sweeper::Sweep>,
    ) -> Stats {
        let sweep_stat = |f: fn(&crate::sweeper::Sweep) -> u64| sweep.map_or(0, f);
        Stats {
            keys_expired: sweep_stat(|s| s.expired.load(Relaxed)),
            sweep_lag_ms: sweep_stat(|s| s.lag_ms.load(Relaxed)),
            sweep_backlog: sweep_stat(|s| s.backlog.load(Relaxed)),
            sweep_scheduled: sweep_stat(|s| s.scheduled() as u64),
            claims_acquired: self.claims_acquired.load(Relaxed),
            takeovers: self.takeovers.load(Relaxed),
            replays: self.replays.load(Relaxed),
            in_flight_conflicts: self.in_flight_conflicts.load(Relaxed),
            mismatches: self.mismatches.load(Relaxed),
            completes: self.completes.load(Relaxed),
            releases: self.releases.load(Relaxed),
            renews: self.renews.load(Relaxed),
            expired_by_operator: self.expired_by_operator.load(Relaxed),
            stale_token_rejections: self.stale_token_rejections.load(Relaxed),
            batches_committed: self.batches_committed.load(Relaxed),
            batched_ops: self.batched_ops.load(Relaxed),
            caller_commits: self.caller_commits.load(Relaxed),
            claims_waited_for_commit: self.claims_waited_for_commit.load(Relaxed),
            syncs: self.syncs.load(Relaxed),
            failed_commits: self.failed_commits.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            keys_from_snapshot: self.keys_from_snapshot.load(Relaxed),
            stage_commits: self.stage_commits.load(Relaxed),
            live_keys,
            in_flight_keys,
        }
    }
}
