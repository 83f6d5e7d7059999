//! Store configuration and its builder.

use crate::clock::Clock;
use crate::error::{Error, Result};
use std::path::Path;
use std::time::Duration;

/// When an acknowledged operation is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every acknowledgement follows an fdatasync of the batch that holds it: when `claim`
    /// returns `Acquired`, or `complete`/`release`/`renew` return `Ok`, the change survives a
    /// process crash and a power loss. The default.
    Immediate,
    /// Acknowledge once the batch is committed in memory, and make it durable within `max_delay`
    /// (a group sync runs at most `max_delay` after the oldest unsynced acknowledgement).
    ///
    /// A process crash or power loss can lose every operation acknowledged in the last
    /// `max_delay` before it; nothing acknowledged earlier. An I/O error loses nothing
    /// acknowledged: the store keeps the changes it has not synced yet (in memory, for at
    /// most `max_delay`) and writes them again when it recovers. If the disk still fails then
    /// the store is poisoned and keeps them in memory until it
    /// is closed, when it tries once more: they are lost only if the disk still fails at
    /// close (as in a crash; the close's `Poisoned` reason says which), or if another store
    /// opened the file meanwhile (see [`Error::Poisoned`](crate::Error::Poisoned): drop a
    /// poisoned store before opening its file again). The sync runs on the store's
    /// writer thread: a machine too busy to schedule it delays it by as much;
    /// [`Store::flush`](crate::Store::flush) makes everything acknowledged before it durable.
    /// A lost claim means a retry may run the action a second time; a lost completion means a
    /// retry runs the action again instead of replaying. Use only where that is acceptable.
    Bounded {
        /// Upper bound between an acknowledgement and its sync.
        max_delay: Duration,
    },
}

/// What a claim may do with a key left in flight by a process that has since stopped (the
/// store was closed or crashed and opened again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Takeover {
    /// Take such a key over at once: its owner is gone with the previous process. The new
    /// owner is told that an earlier attempt may have had effects. The default.
    OnRestart,
    /// Wait for the previous owner's lease to run out, as for a live owner (for deployments
    /// where another process may still be working on a key it claimed before a restart).
    AfterLease,
}

/// The on-disk layout. Chosen by measurement (see the crate docs); the other layout remains for
/// the layout benchmark only.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Records in a table keyed by (expiry time, sequence), plus an in-memory directory.
    TimeOrdered,
    /// Records in a table keyed by the scoped key (benchmark baseline; no sweeper support).
    KeyOrdered,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) durability: Durability,
    pub(crate) takeover: Takeover,
    pub(crate) max_key_len: usize,
    pub(crate) max_response_size: usize,
    pub(crate) clock: Clock,
    pub(crate) cache_size: Option<usize>,
    pub(crate) quick_repair: bool,
    pub(crate) max_batch: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) layout: Layout,
    pub(crate) sweep_interval: Duration,
    pub(crate) sweep_horizon: Duration,
    pub(crate) sweep_chunk: usize,
    pub(crate) max_in_flight: u64,
    pub(crate) log_capacity: u64,
    pub(crate) snapshot_min_keys: u64,
    /// Fencing tokens reserved (durably) at a time.
    pub(crate) token_block: u64,
    /// Records read per read transaction by the sweeper's scans.
    pub(crate) scan_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(60),
            durability: Durability::Immediate,
            takeover: Takeover::OnRestart,
            max_key_len: 255,
            max_response_size: 1 << 20,
            clock: Clock::System,
            cache_size: Some(64 << 20),
            quick_repair: false,
            max_batch: 4096,
            queue_capacity: 16 * 1024,
            layout: Layout::TimeOrdered,
            sweep_interval: Duration::from_secs(1),
            sweep_horizon: Duration::from_secs(3600),
            sweep_chunk: 1024,
            max_in_flight: 1_000_000,
            log_capacity: DEFAULT_LOG_CAPACITY,
            snapshot_min_keys: 1_000_000,
            token_block: crate::storage::SEQ_BLOCK,
            scan_chunk: crate::sweeper::SCAN_CHUNK,
        }
    }
}

/// Most `sweep_horizon`.
const MAX_SWEEP_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// Default size of the commit log.
pub(crate) const DEFAULT_LOG_CAPACITY: u64 = 64 << 20;
/// Bounds of a commit log's size (besides 0, no log).
const LOG_CAPACITY_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(4 << 30);

/// Largest response the store accepts at all, whatever `max_response_size` says.
pub(crate) const RESPONSE_SIZE_CEILING: usize = 256 << 20;
/// Largest key (scope plus key) the store accepts at all.
pub(crate) const KEY_LEN_CEILING: usize = 64 << 10;
/// The longest `max_ttl`: 2^32 - 1 ms (see `index::Slot`).
const MAX_TTL_CEILING: Duration = Duration::from_millis(u32::MAX as u64);
/// Most for `sweep_chunk` and `queue_capacity` (allocated up front).
const COUNT_CEILING: usize = 1 << 20;

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.max_ttl > MAX_TTL_CEILING {
            return bad(format!(
                "max_ttl {:?} must be at most {MAX_TTL_CEILING:?} (about 49.7 days: the directory keeps a lease's distance to its record's expiry in 32 bits of milliseconds)",
                self.max_ttl
            ));
        }
        if self.ttl.is_zero() || self.ttl > self.max_ttl {
            return bad(format!(
                "ttl {:?} must be above zero and at most max_ttl {:?}",
                self.ttl, self.max_ttl
            ));
        }
        if self.lease.is_zero() || self.lease > self.ttl {
            return bad(format!(
                "lease {:?} must be above zero and at most the ttl {:?} (a longer lease would outlive its record; one as long as the ttl leaves a crashed owner's key wedged for its whole lifetime)",
                self.lease, self.ttl
            ));
        }
        if let Durability::Bounded { max_delay } = self.durability
            && (max_delay.is_zero() || max_delay > Duration::from_secs(60))
        {
            return bad(format!(
                "Durability::Bounded max_delay {max_delay:?} must be above zero and at most 60 s"
            ));
        }
        if self.max_key_len == 0 || self.max_key_len > KEY_LEN_CEILING {
            return bad(format!(
                "max_key_len {} must be between 1 and {KEY_LEN_CEILING}",
                self.max_key_len
            ));
        }
        if self.max_response_size == 0 || self.max_response_size > RESPONSE_SIZE_CEILING {
            return bad(format!(
                "max_response_size {} must be between 1 and {RESPONSE_SIZE_CEILING}",
                self.max_response_size
            ));
        }
        if self.sweep_interval < Duration::from_millis(1)
            || self.sweep_interval > Duration::from_secs(3600)
        {
            return bad(format!(
                "sweep_interval {:?} must be between 1 ms and 1 hour",
                self.sweep_interval
            ));
        }
        if self.sweep_horizon < self.sweep_interval {
            return bad(format!(
                "sweep_horizon {:?} must be at least the sweep_interval {:?}",
                self.sweep_horizon, self.sweep_interval
            ));
        }
        if self.sweep_horizon > MAX_SWEEP_HORIZON {
            return bad(format!(
                "sweep_horizon {:?} must be at most 1 day (the wheel would hold every record \
                 expiring within it, most of the store with the default 24-hour lifetime)",
                self.sweep_horizon
            ));
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be above zero".into());
        }
        if self.sweep_chunk == 0 || self.sweep_chunk > COUNT_CEILING {
            return bad(format!(
                "sweep_chunk {} must be between 1 and {COUNT_CEILING}",
                self.sweep_chunk
            ));
        }
        if self.log_capacity != 0 && !LOG_CAPACITY_RANGE.contains(&self.log_capacity) {
            return bad(format!(
                "log_capacity {} must be 0 (no log) or between {} and {} bytes",
                self.log_capacity,
                LOG_CAPACITY_RANGE.start(),
                LOG_CAPACITY_RANGE.end()
            ));
        }
        if self.token_block == 0 || self.token_block > crate::storage::SEQ_BLOCK {
            return bad(format!(
                "token_block {} must be between 1 and {}",
                self.token_block,
                crate::storage::SEQ_BLOCK
            ));
        }
        if self.scan_chunk == 0 || self.scan_chunk > crate::sweeper::SCAN_CHUNK {
            return bad(format!(
                "scan_chunk {} must be between 1 and {}",
                self.scan_chunk,
                crate::sweeper::SCAN_CHUNK
            ));
        }
        if self.max_batch == 0 || self.queue_capacity == 0 {
            return bad("max_batch and queue_capacity must be above zero".into());
        }
        // The queue's slots are allocated when the store opens.
        if self.queue_capacity > COUNT_CEILING {
            return bad(format!(
                "queue_capacity {} must be at most {COUNT_CEILING}",
                self.queue_capacity
            ));
        }
        Ok(())
    }
}

/// Builds a [`Store`](crate::Store) with settings other than the defaults.
///
/// ```
/// use idemstore::{Durability, Store};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir().unwrap();
/// let store = Store::builder()
///     .ttl(Duration::from_secs(24 * 3600))
///     .lease(Duration::from_secs(30))
///     .durability(Durability::Immediate)
///     .open(dir.path().join("idem.redb"))?;
/// # Ok::<(), idemstore::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct Builder {
    pub(crate) config: Config,
}

impl Builder {
    /// A builder with the production defaults.
    pub fn new() -> Self {
        Builder::default()
    }

    /// How long a record (in flight or completed) is kept after its claim. Default 24 hours.
    /// Must not exceed [`max_ttl`](Self::max_ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Upper bound for per-claim lifetimes and for `ttl`. Default 7 days; at most 2^32 - 1 ms
    /// (about 49.7 days).
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.config.max_ttl = max_ttl;
        self
    }

    /// How long a claim owns its key before another claim may take it over, unless renewed.
    /// Default 60 seconds. Must be above zero and at most the ttl.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// When acknowledged operations are on disk. Default [`Durability::Immediate`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// What happens to keys left in flight by a previous process. Default
    /// [`Takeover::OnRestart`].
    pub fn takeover(mut self, takeover: Takeover) -> Self {
        self.config.takeover = takeover;
        self
    }

    /// Longest accepted key, scope plus key bytes. Default 255 bytes; at most 65,536.
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.config.max_key_len = bytes;
        self
    }

    /// Largest accepted response (status, headers and body). Default 1 MiB; at most 256 MiB.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.config.max_response_size = bytes;
        self
    }

    /// Page cache of the underlying redb file. Default 64 MiB: claims touch only the newest
    /// pages of the table and losers are answered from memory, so a large cache buys little.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.config.cache_size = Some(bytes);
        self
    }

    /// Makes each commit also record the allocator state (one more fdatasync per commit), so that
    /// reopening after a crash is near-instant instead of a full repair. Default off.
    pub fn quick_repair(mut self, enabled: bool) -> Self {
        self.config.quick_repair = enabled;
        self
    }

    /// Most operations in one group commit. Default 4,096.
    pub fn max_batch(mut self, ops: usize) -> Self {
        self.config.max_batch = ops;
        self
    }

    /// Capacity of the queue in front of the writer; callers wait when it is full. Default
    /// 16,384; at most 1,048,576 (its slots are allocated when the store opens).
    pub fn queue_capacity(mut self, ops: usize) -> Self {
        self.config.queue_capacity = ops;
        self
    }

    /// How often the sweeper looks for expired records (its tick). Default 1 second. An expired
    /// record is reclaimed from disk and memory within about one tick of its expiry (it stops
    /// being served exactly at its expiry regardless).
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.config.sweep_interval = interval;
        self
    }

    /// How far ahead the sweeper's in-memory timing wheel holds expiries; later ones stay on
    /// disk only until the horizon reaches them. Default 1 hour; between the `sweep_interval`
    /// and 1 day (the wheel holds about 50 bytes per record expiring within the horizon).
    pub fn sweep_horizon(mut self, horizon: Duration) -> Self {
        self.config.sweep_horizon = horizon;
        self
    }

    /// Most expired records removed per group commit. Default 1,024; at most 1,048,576.
    pub fn sweep_chunk(mut self, records: usize) -> Self {
        self.config.sweep_chunk = records;
        self
    }

    /// Most claims in flight at once (claimed, neither completed nor released, not yet
    /// reclaimed by the sweeper). Beyond it, claims of new keys get
    /// [`Error::Overloaded`](crate::Error::Overloaded), so a flood of requests that never
    /// complete cannot grow memory and disk without bound (their records stay until they
    /// expire). An expired claim counts until the sweeper reclaims it, within a sweep interval
    /// or so (after a reopen, by the first pass, which reclaims the overdue backlog oldest
    /// first, a chunk per commit: 3-4 s per million records on 2 cores). Default 1,000,000.
    pub fn max_in_flight(mut self, claims: u64) -> Self {
        self.config.max_in_flight = claims;
        self
    }

    /// Size of the commit log beside the store file (`<path>-log`), with
    /// [`Durability::Immediate`]. Default 64 MiB; 0 turns the log off; otherwise between 64 KiB
    /// and 4 GiB.
    ///
    /// With the log, a group commit is one sequential append and one fdatasync of the log,
    /// while the B-tree pages it changed stay in memory; they are written with one sync when
    /// the log is full (a checkpoint) and the log starts over. Without it, every group commit
    /// writes its pages and syncs the store file (about 2x the latency of one durable write,
    /// see docs/BENCHMARKS.md). Opening a store replays what the log holds. The log file is
    /// part of the store: copy or move it with the store file, or close the store first (a
    /// clean close leaves nothing in it).
    pub fn log_capacity(mut self, bytes: u64) -> Self {
        self.config.log_capacity = bytes;
        self
    }

    /// A clean close of a store with at least this many live keys writes a snapshot of its
    /// in-memory directory beside the store file (`<path>-snapshot`, 47 bytes per key), and the
    /// next open reads it instead of scanning every record: at 10 M keys, one sequential read
    /// of 470 MB instead of a scan of a 1 GB B-tree (see docs/BENCHMARKS.md). Default
    /// 1,000,000 (below it the scan takes well under a second); 0 writes one at every close,
    /// `u64::MAX` never.
    ///
    /// The store file stays the truth: a snapshot is used only by the open right after the
    /// close that wrote it (the store file names it), and any damage makes that open scan the
    /// records instead. Opening removes it.
    pub fn snapshot_min_keys(mut self, keys: u64) -> Self {
        self.config.snapshot_min_keys = keys;
        self
    }

    /// Reads time from `clock` instead of the system clock (`test-util` feature).
    #[cfg(feature = "test-util")]
    pub fn clock(mut self, clock: crate::ManualClock) -> Self {
        self.config.clock = Clock::Manual(clock);
        self
    }

    /// Fencing tokens reserved at a time (`test-util` feature; default and most 2^20). Each
    /// reservation is a durable commit, in every durability mode; a small block makes tests
    /// cross reservations often.
    #[cfg(feature = "test-util")]
    pub fn token_block(mut self, tokens: u64) -> Self {
        self.config.token_block = tokens;
        self
    }

    /// Records the sweeper reads per read transaction when it scans the record table into its
    /// wheel, and the due records it lets wait before a scan pauses for them to be reclaimed
    /// (or `sweep_chunk` if more) (`test-util` feature; default and most 8,192). A small one
    /// makes tests pause and resume scans often.
    #[cfg(feature = "test-util")]
    pub fn scan_chunk(mut self, records: usize) -> Self {
        self.config.scan_chunk = records;
        self
    }

    #[doc(hidden)]
    pub fn layout(mut self, layout: Layout) -> Self {
        self.config.layout = layout;
        self
    }

    /// Opens (or creates) the store file at `path`.
    pub fn open(self, path: impl AsRef<Path>) -> Result<crate::Store> {
        self.config.validate()?;
        crate::Store::open_with(
            self.config,
            crate::storage::Target::Path(path.as_ref().into()),
        )
    }

    /// Opens a store on a custom redb storage backend, without a commit log (fault injection
    /// and power-loss tests; `test-util` feature). `backend` is called once per open of the
    /// database: at first, and again when the store reopens the file after a failed commit.
    #[cfg(feature = "test-util")]
    pub fn open_backend<B, F>(self, backend: F) -> Result<crate::Store>
    where
        B: redb::StorageBackend,
        F: Fn() -> B + Send + Sync + 'static,
    {
        self.open_target(backend, None::<fn() -> B>)
    }

    /// As [`open_backend`](Self::open_backend), with the commit log on `log` (`test-util`
    /// feature).
    #[cfg(feature = "test-util")]
    pub fn open_backends<B, F, L, G>(self, backend: F, log: G) -> Result<crate::Store>
    where
        B: redb::StorageBackend,
        F: Fn() -> B + Send + Sync + 'static,
        L: redb::StorageBackend,
        G: Fn() -> L + Send + Sync + 'static,
    {
        self.open_target(backend, Some(log))
    }

    /// Opens a store on a simulated disk: the database and its commit log (`test-util`
    /// feature).
    #[cfg(feature = "test-util")]
    pub fn open_sim(self, disk: &crate::sim_disk::SimDisk) -> Result<crate::Store> {
        let (db, log) = (disk.clone(), disk.clone());
        self.open_backends(move || db.backend(), move || log.log_backend())
    }

    #[cfg(feature = "test-util")]
    fn open_target<B, F, L, G>(self, backend: F, log: Option<G>) -> Result<crate::Store>
    where
        B: redb::StorageBackend,
        F: Fn() -> B + Send + Sync + 'static,
        L: redb::StorageBackend,
        G: Fn() -> L + Send + Sync + 'static,
    {
        use std::sync::Arc;
        self.config.validate()?;
        let db = move || -> Box<dyn redb::StorageBackend> { Box::new(backend()) };
        let log = log.map(|log| {
            let log = move || -> Box<dyn redb::StorageBackend> { Box::new(log()) };
            Arc::new(log) as Arc<crate::storage::BackendFactory>
        });
        crate::Store::open_with(
            self.config,
            crate::storage::Target::Backend {
                db: Arc::new(db),
                log,
            },
        )
    }
}
