//! The public handle: validation, the loser fast path, and the round trip to the writer.

use crate::clock::{self, Millis, StoreTime};
use crate::config::{Builder, Config, Layout};
use crate::error::{Error, Result};
use crate::index::{Index, Slot};
use crate::key::{Fingerprint, Key, KeySeeds, Response};
use crate::machine::{self, ClaimDecision, OwnerDecision, OwnerOp, Rules, State};
use crate::outcome::{ClaimOutcome, Lease, RecordInfo};
use crate::stats::{Counters, Stats};
use crate::storage::{self, Db, Target};
use crate::sweeper::Sweep;
use crate::writer::{self, Desk, Op, Writer};
use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// State shared by the callers and the writer thread.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) seeds: KeySeeds,
    pub(crate) index: Index,
    /// Keys of the batch being committed (see `pending.rs`).
    pub(crate) pending: crate::pending::Pending,
    pub(crate) time: StoreTime,
    pub(crate) counters: Counters,
    pub(crate) epoch: u32,
    pub(crate) target: Target,
    /// The expiry sweeper's state (`None` for the key-ordered benchmark layout).
    pub(crate) sweep: Option<Sweep>,
    /// With `Durability::Bounded`: rows decided and answered, not yet applied to redb.
    pub(crate) stage: Option<crate::stage::Stage>,
    db: RwLock<Option<Arc<Db>>>,
    /// Set when a commit fails, before its operations get `OutcomeUnknown`; cleared once the
    /// writer has reopened the file and reloaded the directory. Meanwhile the directory lacks
    /// the failed batch's changes, which may have reached the disk.
    recovery_pending: AtomicBool,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn rules(&self, now: Millis) -> Rules {
        Rules {
            now,
            epoch: self.epoch,
            lease_ms: clock::duration_ms(self.config.lease),
            takeover: self.config.takeover,
        }
    }

    pub(crate) fn database(&self) -> Option<Arc<Db>> {
        self.db.read().clone()
    }

    /// The database, waiting with `flush` (an operation queued at the writer, which runs
    /// after a recovery in progress) from a failed commit until the writer has reopened it: the
    /// old database, still installed for a moment, may hold the failed batch's changes (its
    /// commit reached redb before the log append failed) while the reopened file may not.
    pub(crate) fn database_after_recovery(
        &self,
        flush: impl Fn() -> Result<()>,
    ) -> Result<Arc<Db>> {
        for _ in 0..REPLAY_LOOKUPS {
            self.check_poison()?;
            if !self.recovery_pending()
                && let Some(db) = self.database()
            {
                return Ok(db);
            }
            flush()?;
        }
        // Every flush succeeded and a new failure took the file away again each time.
        Err(kept_reopening())
    }

    /// Reads the file with `read`, once any recovery is over. A commit that fails on the
    /// database a read holds (the writer thread applying staged rows, another caller's batch)
    /// makes redb fail every later use of it (`PreviousIo`), also while the failing thread has
    /// yet to mark the recovery; such a read, or any that fails while a recovery is pending,
    /// reads again once the writer has reopened the file: the failure is not the reader's, and
    /// the recovery writes everything answered. (It answered `Error::Storage` before: a pass
    /// of the sweeper, `records_on_disk`, a replay's body.) A failed read makes redb refuse
    /// the database too, with no recovery to wait for: then the error is the answer (found by
    /// the damage campaign, case 1613 of the default seed: it answered "kept reopening").
    pub(crate) fn read_file<T>(
        &self,
        flush: impl Fn() -> Result<()>,
        read: impl Fn(&Db) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..REPLAY_LOOKUPS {
            let db = self.database_after_recovery(&flush)?;
            match read(&db) {
                Err(e) if is_previous_io(&e) || self.recovery_pending() => {
                    // Not held while the writer reopens the file (a weak handle keeps its
                    // address from being reused, to tell whether it was replaced).
                    let read_from = Arc::downgrade(&db);
                    drop(db);
                    // Queued behind the recovery, begun or about to be.
                    flush()?;
                    // A failed read also makes redb refuse the database, and no recovery
                    // follows a read: unless a commit failed on it (a recovery is pending, or
                    // has replaced it), the error is the answer. (A later commit's failure on
                    // it starts the recovery.)
                    let same = self
                        .database()
                        .is_some_and(|now| std::ptr::eq(Arc::as_ptr(&now), read_from.as_ptr()));
                    if same && !self.recovery_pending() {
                        return Err(e);
                    }
                }
                answer => return answer,
            }
        }
        Err(kept_reopening())
    }

    /// A commit failed and the writer has not reopened the file yet.
    fn recovery_pending(&self) -> bool {
        self.recovery_pending.load(Ordering::Acquire)
    }

    /// A commit failed: answers from the directory wait for the recovery from now on.
    pub(crate) fn recovery_begins(&self) {
        self.recovery_pending.store(true, Ordering::Release);
    }

    /// The directory was reloaded from the reopened file.
    pub(crate) fn recovery_ends(&self) {
        self.recovery_pending.store(false, Ordering::Release);
    }

    pub(crate) fn take_database(&self) -> Option<Arc<Db>> {
        self.db.write().take()
    }

    pub(crate) fn install_database(&self, db: Db) {
        *self.db.write() = Some(Arc::new(db));
    }

    pub(crate) fn poison(&self, reason: String) {
        *self.poison_reason.lock() = Some(reason);
        self.poisoned.store(true, Ordering::Release);
    }

    pub(crate) fn poison_reason(&self) -> Option<String> {
        if !self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.poison_reason.lock().clone()
    }

    fn check_poison(&self) -> Result<()> {
        match self.poison_reason() {
            Some(reason) => Err(Error::Poisoned { reason }),
            None => Ok(()),
        }
    }
}

/// redb's answer on a database on which a write failed.
fn is_previous_io(e: &Error) -> bool {
    matches!(e, Error::Storage(redb::Error::PreviousIo))
}

/// The answer when every wait for a recovery met another failed commit.
fn kept_reopening() -> Error {
    Error::OutcomeUnknown {
        source: Arc::new(Error::Io(std::io::Error::other(
            "the store kept reopening its file after failed commits; retry",
        ))),
    }
}

/// An open idempotency-key store. Share it between threads with `Arc<Store>`.
///
/// See the [crate documentation](crate) for the model, the guarantees and an example.
pub struct Store {
    shared: Arc<Shared>,
    tx: Option<Sender<Op>>,
    desk: Arc<Desk>,
    writer: Option<JoinHandle<()>>,
    /// The writer's low-priority queue for expiry chunks; dropped after the writer ended.
    sweep_tx: Option<Sender<Op>>,
    /// Dropping it stops the sweeper thread.
    sweeper_stop: Option<Sender<()>>,
    sweeper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("epoch", &self.shared.epoch)
            .field("live_keys", &self.shared.index.len())
            .finish_non_exhaustive()
    }
}

/// How often a caller looks again when the record it was about to replay moved on meanwhile.
const REPLAY_LOOKUPS: usize = 4;
/// Longest wait for the batch committing a key before queueing at the writer anyway (a safety
/// net: the writer settles every batch).
const PENDING_WAIT: Duration = Duration::from_secs(1);

impl Store {
    /// Opens (or creates) the store file at `path` with the production defaults: 24-hour
    /// records, 60-second leases, every acknowledgement durable.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Builder::new().open(path)
    }

    /// A builder for other settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn open_with(config: Config, target: Target) -> Result<Store> {
        let seeds = KeySeeds::new();
        let index = Index::new();
        let mut opened = storage::open(&index, &target, &config, &seeds, storage::Reopen::Start)?;
        // A directory read from a snapshot was filed with the digests of the open that wrote it.
        let seeds = opened.snapshot_seeds.take().unwrap_or(seeds);
        let shared = Arc::new(Shared {
            time: StoreTime::new(config.clock.clone(), opened.high_water),
            seeds,
            index,
            pending: crate::pending::Pending::new(),
            counters: Counters::default(),
            epoch: opened.epoch,
            target,
            sweep: (config.layout == Layout::TimeOrdered).then(|| {
                Sweep::new(
                    clock::duration_ms(config.sweep_interval),
                    clock::duration_ms(config.sweep_horizon),
                    config.sweep_chunk,
                    config.scan_chunk,
                )
            }),
            stage: match config.durability {
                crate::Durability::Bounded { max_delay } => {
                    Some(crate::stage::Stage::new(Some(max_delay)))
                }
                // With the commit log: a batch is answered once its frame is synced, and its
                // rows reach redb after (`stage.rs`).
                crate::Durability::Immediate if opened.log.is_some() => {
                    Some(crate::stage::Stage::new(None))
                }
                crate::Durability::Immediate => None,
            },
            db: RwLock::new(None),
            recovery_pending: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            config,
        });
        shared
            .counters
            .keys_from_snapshot
            .store(opened.snapshot_keys, std::sync::atomic::Ordering::Relaxed);
        let writer = Writer::new(Arc::clone(&shared), &mut opened);
        shared.install_database(opened.db);
        let (tx, rx) = crossbeam_channel::bounded(shared.config.queue_capacity);
        let (sweep_tx, sweep_rx) = crossbeam_channel::bounded(2);
        let desk = Arc::new(Desk::new(writer, rx));
        let thread_desk = Arc::clone(&desk);
        let handle = std::thread::Builder::new()
            .name("idemstore-writer".into())
            .spawn(move || thread_desk.run(sweep_rx))
            .map_err(Error::Io)?;
        let mut store = Store {
            shared,
            tx: Some(tx),
            desk,
            writer: Some(handle),
            sweep_tx: Some(sweep_tx),
            sweeper_stop: None,
            sweeper: None,
        };
        if store.shared.sweep.is_some() {
            let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
            let shared = Arc::clone(&store.shared);
            let sweep_tx = store.sweep_tx.clone().expect("set above");
            let interval = shared.config.sweep_interval;
            let handle = std::thread::Builder::new()
                .name("idemstore-sweeper".into())
                .spawn(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(interval)
                    {
                        let sweep = shared.sweep.as_ref().expect("checked before spawning");
                        match sweep.pass(&shared, &sweep_tx) {
                            Ok(_) | Err(Error::Closed) | Err(Error::Poisoned { .. }) => {}
                            Err(e) => warn!("expiry sweep failed, will retry: {e}"),
                        }
                    }
                })
                .map_err(Error::Io)?;
            store.sweeper_stop = Some(stop);
            store.sweeper = Some(handle);
        }
        Ok(store)
    }

    /// Runs the expiry sweeper now, in the calling thread, at the store's current time, and
    /// answers how many expired records it reclaimed. The background sweeper does the same
    /// every `sweep_interval`; this hook makes expiry deterministic in tests and examples
    /// (with a manual clock: advance it, then call this).
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Key, ManualClock, Store};
    /// use std::time::Duration;
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let clock = ManualClock::new(1_700_000_000_000);
    /// let store = Store::builder()
    ///     .clock(clock.clone()) // `test-util` feature
    ///     .open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "order-7");
    /// let ClaimOutcome::Acquired(lease) = store.claim(&key, None)? else { unreachable!() };
    /// store.complete(&lease, idemstore::Response::new(200))?;
    ///
    /// clock.advance(Duration::from_secs(24 * 3600)); // the default lifetime
    /// assert_eq!(store.run_pending_expiry()?, 1);
    /// assert_eq!(store.records_on_disk()?, 0);
    /// // The key is new again.
    /// assert!(matches!(store.claim(&key, None)?, ClaimOutcome::Acquired(_)));
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn run_pending_expiry(&self) -> Result<u64> {
        self.shared.check_poison()?;
        match (&self.shared.sweep, &self.sweep_tx) {
            (Some(sweep), Some(tx)) => sweep.pass(&self.shared, tx),
            _ => Ok(0),
        }
    }

    fn validate_key(&self, key: &Key) -> Result<u128> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let max = self.shared.config.max_key_len;
        if key.len() > max {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max,
            });
        }
        Ok(key.digest(&self.shared.seeds))
    }

    /// Commits an operation in this thread if the writer is idle (see [`Desk`]), or sends it
    /// to the writer; then waits for its answer.
    fn call<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Op) -> Result<T> {
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        let (reply, answer) = crate::oneshot::oneshot();
        let _in_line = match self.desk.commit_here(make(reply)) {
            Some(op) => {
                let in_line = self.desk.wait_in_line();
                tx.send(op).map_err(|_| Error::Closed)?;
                Some(in_line)
            }
            None => None,
        };
        answer.wait()
    }

    /// Claims `key` for a request, with the store's default lifetime.
    ///
    /// Answers, without running anything:
    /// - [`ClaimOutcome::Acquired`]: the caller owns the key (durably, unless the store runs
    ///   with [`Durability::Bounded`](crate::Durability::Bounded)); run the request;
    /// - [`ClaimOutcome::InFlight`]: another attempt owns it; answer `409` and let the client retry;
    /// - [`ClaimOutcome::Replay`]: the stored result, to send back as it is;
    /// - [`ClaimOutcome::Mismatch`]: the key was used with another `fingerprint`; answer `422`.
    ///
    /// A key past its expiry is absent, whether or not it has been swept yet.
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Fingerprint, Key, Response, Store};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "charge-42");
    /// let fp = Fingerprint::of_request("POST", "/charges", br#"{"amount":100}"#);
    ///
    /// // A first request owns the key; a duplicate sent meanwhile is told to retry later.
    /// let ClaimOutcome::Acquired(lease) = store.claim(&key, Some(fp))? else { unreachable!() };
    /// match store.claim(&key, Some(fp))? {
    ///     ClaimOutcome::InFlight { retry_after, attempt } => {
    ///         // HTTP 409, with `Retry-After: retry_after`.
    ///         assert_eq!(attempt, 1);
    ///         assert!(retry_after.as_secs() <= 60); // the default lease
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    ///
    /// store.complete(&lease, Response::new(201).body("created"))?;
    /// let ClaimOutcome::Replay(replay) = store.claim(&key, Some(fp))? else { unreachable!() };
    /// assert_eq!(replay.response.body, b"created");
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn claim(&self, key: &Key, fingerprint: Option<Fingerprint>) -> Result<ClaimOutcome> {
        self.claim_inner(key, fingerprint, clock::duration_ms(self.shared.config.ttl))
    }

    /// Like [`claim`](Self::claim), with a lifetime for this key other than the store's
    /// default. `ttl` must be above zero and at most [`Builder::max_ttl`].
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Error, Key, Store};
    /// use std::time::Duration;
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "nightly-export-2026-12-06");
    /// // Kept for 7 days (the default `max_ttl`) instead of 24 hours.
    /// let week = Duration::from_secs(7 * 24 * 3600);
    /// let outcome = store.claim_with_ttl(&key, None, week)?;
    /// assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
    /// // Beyond `max_ttl`: refused before anything is written.
    /// let too_long = store.claim_with_ttl(&Key::new("tenant-1", "x"), None, week * 2);
    /// assert!(matches!(too_long, Err(Error::InvalidTtl { .. })));
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn claim_with_ttl(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        ttl: Duration,
    ) -> Result<ClaimOutcome> {
        let max = self.shared.config.max_ttl;
        if ttl.is_zero() || ttl > max {
            return Err(Error::InvalidTtl {
                requested: ttl,
                max,
            });
        }
        self.claim_inner(key, fingerprint, clock::duration_ms(ttl))
    }

    fn claim_inner(
        &self,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        ttl_ms: Millis,
    ) -> Result<ClaimOutcome> {
        let digest = self.validate_key(key)?;
        self.shared.check_poison()?;
        self.await_recovery()?;
        if let Some(answer) = self.answer_from_directory(key, digest, fingerprint)? {
            return Ok(answer);
        }
        self.call(|reply| Op::Claim {
            key: key.clone(),
            digest,
            fingerprint,
            ttl_ms,
            reply,
        })
    }

    /// The loser fast path: answers in-flight, mismatch and replay from the directory (and a
    /// short read transaction for a replay's body). `None` when the writer must decide.
    fn answer_from_directory(
        &self,
        key: &Key,
        digest: u128,
        fp: Option<Fingerprint>,
    ) -> Result<Option<ClaimOutcome>> {
        let shared = &self.shared;
        let mut waited = false;
        for _ in 0..REPLAY_LOOKUPS {
            let Some(slot) = shared.index.get(digest) else {
                // Absent, or being acquired by the batch the writer is committing: then wait
                // for that commit and read its answer, rather than queue for the next one.
                if !waited && let Some(batch) = shared.pending.batch_of(digest) {
                    waited = true;
                    // Published meanwhile (and marked again by a later batch): no need to wait.
                    if shared.index.get(digest).is_none() {
                        Counters::bump(&shared.counters.claims_waited_for_commit);
                        shared.pending.wait(batch, PENDING_WAIT);
                    }
                    continue;
                }
                return Ok(None);
            };
            let now = shared.time.now();
            let answer =
                match machine::claim(Some(&slot.entry(shared.epoch)), fp, &shared.rules(now)) {
                    ClaimDecision::Acquire { .. } => return Ok(None),
                    ClaimDecision::Mismatch => ClaimOutcome::Mismatch,
                    ClaimDecision::InFlight {
                        lease_until,
                        attempt,
                    } => ClaimOutcome::InFlight {
                        retry_after: Duration::from_millis(lease_until - now),
                        attempt,
                    },
                    ClaimDecision::Replay => match self.read_record(key, &slot)? {
                        Some(record) => writer::replay_of(record)?,
                        // The record moved on (expired and swept, or expired by an operator)
                        // between the lookup and the read: look again.
                        None => continue,
                    },
                };
            let c = &shared.counters;
            Counters::bump(match &answer {
                ClaimOutcome::Mismatch => &c.mismatches,
                ClaimOutcome::InFlight { .. } => &c.in_flight_conflicts,
                _ => &c.replays,
            });
            return Ok(Some(answer));
        }
        Ok(None)
    }

    /// Waits, after a failed commit, until the writer has reopened the file and reloaded the
    /// directory (a flush queues behind that). Until then the directory may lack the failed
    /// batch's changes, which may have reached the disk: an answer from it, given after the
    /// batch's callers got `OutcomeUnknown`, could show a state that the recovered store then
    /// contradicts (a key read as in flight, then found released). With this wait, every call
    /// made after an `OutcomeUnknown` answer shows the batch either applied or not, for good
    /// (a call made before it may still be answering from the old directory: it overlapped the
    /// failed batch, so either order is right for it).
    fn await_recovery(&self) -> Result<()> {
        for _ in 0..REPLAY_LOOKUPS {
            if !self.shared.recovery_pending() {
                return Ok(());
            }
            match self.flush() {
                // A later commit failed too: wait for that recovery.
                Ok(()) | Err(Error::OutcomeUnknown { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.shared.recovery_pending() {
            return Ok(());
        }
        Err(kept_reopening())
    }

    fn read_record(&self, key: &Key, slot: &Slot) -> Result<Option<crate::codec::Record>> {
        let layout = self.shared.config.layout;
        let read = || {
            self.shared
                .read_file(|| self.flush(), |db| storage::read(db, layout, key, slot))
        };
        let found = read()?;
        match &self.shared.stage {
            // The record may still be staged (`stage.rs`); apply the stage and read again. A
            // failed commit leaves the rows to the recovery, which the read waits for.
            Some(stage) if found.is_none() => {
                let _ = stage.commit(&self.shared, false);
                read()
            }
            _ => Ok(found),
        }
    }

    /// Stores the result of the request `lease` was acquired for; later claims of the key
    /// replay it byte for byte until the record expires.
    ///
    /// Fenced: if the key was taken over by a later attempt (or released, or expired), nothing
    /// is stored and [`Error::StaleLease`] is returned. Completing twice with the same lease
    /// succeeds and keeps the first response (so a retry after `OutcomeUnknown` is safe).
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Key, Response, Store};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "refund-9");
    /// let ClaimOutcome::Acquired(lease) = store.claim(&key, None)? else { unreachable!() };
    /// let response = Response::new(201)
    ///     .header("content-type", "application/json")
    ///     .body(r#"{"refund":"r_9"}"#);
    /// store.complete(&lease, response.clone())?;
    /// // A retry of the complete (say, after `OutcomeUnknown`) keeps the first response.
    /// store.complete(&lease, Response::new(500))?;
    /// let ClaimOutcome::Replay(replay) = store.claim(&key, None)? else { unreachable!() };
    /// assert_eq!(replay.response, response);
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn complete(&self, lease: &Lease, response: Response) -> Result<()> {
        let size = response.stored_size();
        let max = self.shared.config.max_response_size;
        if size > max {
            return Err(Error::ResponseTooLarge { size, max });
        }
        self.owner_op(lease, OwnerOp::Complete, Some(response))
            .map(|_| ())
    }

    /// Forgets the attempt `lease` was acquired for (it failed before having effects the
    /// server wants to keep), so a retry of the request runs afresh. Fenced: if the key was
    /// taken over by a later attempt, or completed, nothing changes and [`Error::StaleLease`]
    /// is returned. Releasing again, or after the record expired with nobody claiming the key
    /// since, succeeds (there is nothing left to release).
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Error, Key, Response, Store};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "upload-3");
    /// let ClaimOutcome::Acquired(first) = store.claim(&key, None)? else { unreachable!() };
    /// // The handler failed before doing anything: forget the attempt.
    /// store.release(&first)?;
    /// // The client's retry runs afresh, as a new attempt with a new fencing token.
    /// let ClaimOutcome::Acquired(retry) = store.claim(&key, None)? else { unreachable!() };
    /// assert!(retry.token() > first.token());
    /// // The released lease no longer owns the key.
    /// let late = store.complete(&first, Response::new(200));
    /// assert!(matches!(late, Err(Error::StaleLease { .. })));
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn release(&self, lease: &Lease) -> Result<()> {
        self.owner_op(lease, OwnerOp::Release, None).map(|_| ())
    }

    /// Extends the lease by the configured lease length from now (capped at the record's
    /// expiry), for requests that run longer than one lease. Fenced like `complete`.
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Key, ManualClock, Store};
    /// use std::time::Duration;
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let clock = ManualClock::new(1_700_000_000_000);
    /// let store = Store::builder()
    ///     .lease(Duration::from_secs(30))
    ///     .clock(clock.clone()) // `test-util` feature
    ///     .open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "long-job");
    /// let ClaimOutcome::Acquired(mut lease) = store.claim(&key, None)? else { unreachable!() };
    /// let first_deadline = lease.lease_deadline();
    /// clock.advance(Duration::from_secs(20));
    /// store.renew(&mut lease)?; // 30 s from now
    /// assert_eq!(lease.lease_deadline(), first_deadline + Duration::from_secs(20));
    /// // Past the first deadline, the key is still this attempt's.
    /// clock.advance(Duration::from_secs(20));
    /// assert!(matches!(store.claim(&key, None)?, ClaimOutcome::InFlight { .. }));
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn renew(&self, lease: &mut Lease) -> Result<()> {
        if let Some(until) = self.owner_op(lease, OwnerOp::Renew, None)? {
            lease.lease_until = until;
        }
        Ok(())
    }

    fn owner_op(
        &self,
        lease: &Lease,
        kind: OwnerOp,
        response: Option<Response>,
    ) -> Result<Option<Millis>> {
        let digest = self.validate_key(&lease.key)?;
        self.shared.check_poison()?;
        self.await_recovery()?;
        // Staleness never ends (a token never regains its key), so the committed directory
        // can refuse a stale token without a trip to the writer. Not when the refusal rests on
        // the record having expired: the writer answers that, in a commit that records the
        // time it used, so a crash and a clock stepping back cannot bring the record back to
        // an owner already told it lost it.
        let entry = self
            .shared
            .index
            .get(digest)
            .map(|s| s.entry(self.shared.epoch));
        let now = self.shared.time.now();
        let expired = entry.as_ref().is_some_and(|e| !e.is_live(now));
        if !expired
            && machine::owner(entry.as_ref(), lease.token, kind, now) == OwnerDecision::Stale
        {
            Counters::bump(&self.shared.counters.stale_token_rejections);
            return Err(Error::StaleLease { token: lease.token });
        }
        self.call(|reply| Op::Owner {
            key: lease.key.clone(),
            digest,
            token: lease.token,
            kind,
            response,
            reply,
        })
    }

    /// Removes `key` now, whatever its state (an operator action). Answers whether a live
    /// record was removed. A lease on it becomes stale.
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Key, Response, Store};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "bad-result");
    /// let ClaimOutcome::Acquired(lease) = store.claim(&key, None)? else { unreachable!() };
    /// store.complete(&lease, Response::new(200))?;
    /// assert!(store.expire(&key)?); // a live record was removed
    /// assert!(!store.expire(&key)?); // nothing left to remove
    /// assert!(matches!(store.claim(&key, None)?, ClaimOutcome::Acquired(_)));
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn expire(&self, key: &Key) -> Result<bool> {
        let digest = self.validate_key(key)?;
        self.shared.check_poison()?;
        self.call(|reply| Op::Expire {
            key: key.clone(),
            digest,
            reply,
        })
    }

    /// What the store holds for `key`, without changing anything. `None` when absent or
    /// expired.
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Key, RecordInfo, Response, Store};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path().join("idem.redb"))?;
    /// let key = Key::new("tenant-1", "invoice-5");
    /// assert_eq!(store.get(&key)?, None);
    /// let ClaimOutcome::Acquired(lease) = store.claim(&key, None)? else { unreachable!() };
    /// assert!(matches!(store.get(&key)?, Some(RecordInfo::InFlight { attempt: 1, .. })));
    /// store.complete(&lease, Response::new(204))?;
    /// match store.get(&key)? {
    ///     Some(RecordInfo::Completed(replay)) => assert_eq!(replay.response.status, 204),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn get(&self, key: &Key) -> Result<Option<RecordInfo>> {
        let digest = self.validate_key(key)?;
        self.shared.check_poison()?;
        self.await_recovery()?;
        for _ in 0..REPLAY_LOOKUPS {
            let Some(slot) = self.shared.index.get(digest) else {
                return Ok(None);
            };
            let e = slot.entry(self.shared.epoch);
            if !e.is_live(self.shared.time.now()) {
                return Ok(None);
            }
            match e.state {
                State::InFlight { lease_until, epoch } => {
                    return Ok(Some(RecordInfo::InFlight {
                        attempt: e.attempt,
                        lease_deadline: clock::to_system_time(lease_until),
                        expires_at: clock::to_system_time(e.expires_at),
                        from_previous_process: epoch < self.shared.epoch,
                    }));
                }
                State::Completed { .. } => {
                    if let Some(record) = self.read_record(key, &slot)? {
                        let ClaimOutcome::Replay(replay) = writer::replay_of(record)? else {
                            unreachable!("replay_of answers Replay or an error")
                        };
                        return Ok(Some(RecordInfo::Completed(replay)));
                    }
                    // The record was rewritten or removed since the lookup, or the writer is
                    // reopening the file after a failed commit: wait until the writer has
                    // caught up (a flush goes through its queue), then look again.
                    self.flush()?;
                }
            }
        }
        Err(Error::OutcomeUnknown {
            source: Arc::new(Error::Io(std::io::Error::other(
                "the record changed under every read; retry",
            ))),
        })
    }

    /// Makes every acknowledged operation durable now (useful with
    /// [`Durability::Bounded`](crate::Durability::Bounded); a cheap no-op otherwise).
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Durability, Key, Store};
    /// use std::time::Duration;
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// // Acknowledgements reach the disk within 50 ms instead of before each answer.
    /// let store = Store::builder()
    ///     .durability(Durability::Bounded { max_delay: Duration::from_millis(50) })
    ///     .open(dir.path().join("idem.redb"))?;
    /// let outcome = store.claim(&Key::new("tenant-1", "batch-1"), None)?;
    /// assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
    /// // Before reporting a batch as accepted elsewhere: make it durable now.
    /// store.flush()?;
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.shared.check_poison()?;
        self.call(|reply| Op::Flush { reply })
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(
            self.shared.index.len() as u64,
            self.shared.index.in_flight(),
            self.shared.sweep.as_ref(),
        )
    }

    /// Number of records in the file, live or expired but not yet swept.
    pub fn records_on_disk(&self) -> Result<u64> {
        if let Some(stage) = &self.shared.stage {
            // Bounded mode: every answered operation's rows in the file first (a failure
            // leaves them to the recovery, which the wait below waits for).
            let _ = stage.commit(&self.shared, false);
        }
        let layout = self.shared.config.layout;
        self.shared.read_file(
            || self.flush(),
            |db| storage::guard(|| storage::record_count(db, layout)),
        )
    }

    /// Finishes every queued operation, makes acknowledged work durable, stops the writer
    /// thread and closes the file. Dropping the store does the same; `close` also reports a
    /// failure of its last writes, as [`Error::Poisoned`] with a reason that says whether any
    /// acknowledged operation was affected (only those of
    /// [`Durability::Bounded`](crate::Durability::Bounded) not yet synced can be).
    ///
    /// ```
    /// use idemstore::{ClaimOutcome, Key, Response, Store};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("idem.redb");
    /// let key = Key::new("tenant-1", "deploy-1");
    /// let store = Store::open(&path)?;
    /// let ClaimOutcome::Acquired(lease) = store.claim(&key, None)? else { unreachable!() };
    /// store.complete(&lease, Response::new(202).body("queued"))?;
    /// store.close()?;
    ///
    /// // The next process replays the result.
    /// let store = Store::open(&path)?;
    /// let ClaimOutcome::Replay(replay) = store.claim(&key, None)? else { unreachable!() };
    /// assert_eq!(replay.response.body, b"queued");
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        self.shared.check_poison()
    }

    fn shutdown(&mut self) {
        if let Some(sweep) = &self.shared.sweep {
            sweep.stop();
        }
        drop(self.sweeper_stop.take());
        if let Some(handle) = self.sweeper.take()
            && handle.join().is_err()
        {
            self.shared.poison("the sweeper thread panicked".into());
        }
        drop(self.tx.take());
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            self.shared.poison("the writer thread panicked".into());
        }
        drop(self.sweep_tx.take());
        drop(self.shared.take_database());
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// `Immediate` mode with the commit log: one batch completes a key (its owner's lease is
    /// over) and then decides a claim of it, which replays the record written earlier in the
    /// batch. The completion must be in the batch's log frame. Before the fix, the replay's
    /// lookup sent the batch's earlier rows to redb (in memory) and left them out of the frame:
    /// after a power loss the acknowledged completion was gone (found by an independent
    /// review).
    #[cfg(feature = "test-util")]
    #[test]
    fn a_completion_replayed_in_its_own_batch_is_in_the_log() {
        use crate::sim_disk::SimDisk;
        let disk = SimDisk::new();
        let clock = crate::ManualClock::new(1_741_953_600_000);
        let open = |disk: &SimDisk| {
            Store::builder()
                .clock(clock.clone())
                .lease(Duration::from_secs(1))
                .open_sim(disk)
                .unwrap()
        };
        let store = Arc::new(open(&disk));
        let key = Key::new("t", "k");
        let ClaimOutcome::Acquired(lease) = store.claim(&key, None).unwrap() else {
            panic!("a new key is acquired")
        };
        // The lease is over: the next claim goes to the writer (to take the key over).
        clock.advance(Duration::from_secs(2));
        let held = store.desk.hold();
        let wait_for = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while store.desk.queued() < n {
                assert!(std::time::Instant::now() < deadline, "nothing queued");
                std::thread::yield_now();
            }
        };
        let (s, l) = (Arc::clone(&store), lease.clone());
        let completer = std::thread::spawn(move || s.complete(&l, Response::new(201).body("done")));
        wait_for(1);
        let (s, k) = (Arc::clone(&store), key.clone());
        let claimer = std::thread::spawn(move || s.claim(&k, None));
        wait_for(2);
        drop(held);
        completer
            .join()
            .unwrap()
            .expect("the completion is acknowledged");
        match claimer.join().unwrap().unwrap() {
            ClaimOutcome::Replay(r) => assert_eq!(r.response.body, b"done"),
            other => panic!("the claim in the completion's batch answered {other:?}"),
        }
        // A power loss now, before anything else reaches the disk.
        let crashed = disk.crash(7);
        let store = open(&crashed);
        match store.claim(&key, None).unwrap() {
            ClaimOutcome::Replay(r) => assert_eq!(r.response.body, b"done"),
            other => panic!("the acknowledged completion was lost: {other:?}"),
        }
    }

    /// A panic in the writer thread's loop (outside a batch, whose panics have their own
    /// guard) poisons the store; the caller whose operation it held gets `Closed`, every
    /// later call `Poisoned`, and nothing waits forever, the store's drop included.
    #[test]
    fn a_panic_in_the_writer_loop_poisons_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("s.redb")).unwrap());
        store.desk.panic_on_next_op.store(true, Ordering::Release);
        // A caller waiting in line makes the next claim queue for the writer thread.
        let in_line = store.desk.wait_in_line();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let caller = Arc::clone(&store);
        let handle = std::thread::spawn(move || {
            let _ = tx.send(caller.claim(&Key::new("t", "queued"), None));
        });
        let queued = rx.recv_timeout(Duration::from_secs(10)).expect("no answer");
        handle.join().unwrap();
        assert!(matches!(queued, Err(Error::Closed)), "{queued:?}");
        drop(in_line);
        // The answer goes out as the panic unwinds; the guard poisons the store right after.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.shared.poison_reason().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the store was never poisoned"
            );
            std::thread::yield_now();
        }
        let later = store.claim(&Key::new("t", "later"), None);
        let Err(Error::Poisoned { reason }) = later else {
            panic!("{later:?}")
        };
        assert!(reason.contains("writer thread panicked"), "{reason}");
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            drop(Arc::into_inner(store).expect("the only handle"));
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the store's drop waits forever");
    }
}
