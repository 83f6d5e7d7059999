//! The redb file: tables, format checks, opening and recovery scans, and the two layouts.
//!
//! ```text
//! table idemstore_meta     &str -> u64     format_version, layout, epoch, seq_reserved, clock_high_water,
//!                                          log_generation, log_applied (see `log.rs`), snapshot_id,
//!                                          meta_check (a checksum of the other rows, `meta_checks`)
//! table idemstore_records  (u64, u64) -> &[u8]
//!                          key (expires_at ms, token): one record per live key, in expiry order
//! table idemstore_by_key   &[u8] -> &[u8]  (key-ordered layout, benchmark baseline only)
//! ```
//!
//! The time-ordered table is both the record store and the durable expiry order. A record keeps
//! its position from claim to expiry (complete and renew overwrite it in place); a takeover or a
//! claim after expiry writes a new record and removes the old one in the same transaction, so
//! the table holds one record per key and everything expired is a prefix of it.
//!
//! Every row a batch writes or removes is also recorded (`Changes`) for the commit log, which
//! opening replays into these tables before loading the directory.

use crate::codec::{self, Record};
use crate::config::{Config, Durability, Layout};
use crate::error::{Error, Result};
use crate::index::{Index, Slot};
use crate::key::{Key, KeySeeds};
use crate::log::{self, Changes, Log, LogTable};
use crate::snapshot;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: TableDefinition<&str, u64> = TableDefinition::new("idemstore_meta");
const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("idemstore_records");
const BY_KEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idemstore_by_key");

/// On-disk format version written by this build. Version 2 added the commit log: a build that
/// knows only version 1 would ignore the log and lose what it holds. Version 3 added the
/// directory snapshot: a build that knows only version 2 would change the file without
/// clearing the snapshot's id, and a later open would trust a stale snapshot. Version 4 added
/// the metadata checksum (`M_CHECK`): a build that knows only version 3 would change the
/// metadata without it, and the next open would refuse the file as damaged.
pub(crate) const FORMAT_VERSION: u32 = 4;
/// The first version whose metadata carries `M_CHECK`: from it on, a missing one is damage.
const FORMAT_CHECKED: u64 = 4;
/// Sequence numbers (fencing tokens) are reserved durably in blocks of this size, so a token is
/// never handed out twice, even across crashes, without a meta write per commit.
pub(crate) const SEQ_BLOCK: u64 = 1 << 20;

const M_FORMAT: &str = "format_version";
const M_LAYOUT: &str = "layout";
const M_EPOCH: &str = "epoch";
const M_SEQ: &str = "seq_reserved";
pub(crate) const M_HIGH_WATER: &str = "clock_high_water";
pub(crate) const M_LOG_GEN: &str = "log_generation";
pub(crate) const M_LOG_APPLIED: &str = "log_applied";
/// The id of the directory snapshot written at the last clean close (0 or absent: none; see
/// `snapshot.rs`).
pub(crate) const M_SNAPSHOT: &str = "snapshot_id";
/// A checksum of every other metadata row (`meta_check`), kept by every commit. Records carry
/// their own checksums; without this one, one changed byte of the clock's high-water mark
/// would expire every record at the next open, and no error would say so.
const M_CHECK: &str = "meta_check";
/// `log_applied` after a clean close: the database holds everything, the log need not be read.
pub(crate) const LOG_ALL_APPLIED: u64 = u64::MAX;

/// The store's redb database. Dropping it runs redb's close, which commits once more; after
/// a redb panic on a damaged file that close can panic too. It runs under `catch_unwind`, so
/// such a panic is reported here instead of unwinding out of whichever call held the last
/// reference (a `get`, a recovery, the store's close or drop).
pub(crate) struct Db(Option<Database>);

impl Db {
    pub(crate) fn new(db: Database) -> Self {
        Db(Some(db))
    }
}

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("the database is there until the drop")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(db) = self.0.take()
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).is_err()
        {
            warn!("closing the database panicked (the file is damaged; the next open checks it)");
        }
    }
}

pub(crate) type BackendFactory = dyn Fn() -> Box<dyn redb::StorageBackend> + Send + Sync;

/// Where the database lives.
#[derive(Clone)]
pub(crate) enum Target {
    Path(PathBuf),
    #[cfg_attr(
        not(feature = "test-util"),
        allow(dead_code, reason = "built by Builder::open_backend")
    )]
    Backend {
        db: Arc<BackendFactory>,
        /// The commit log's storage; `None`: no log.
        log: Option<Arc<BackendFactory>>,
    },
}

/// A database freshly opened and scanned.
pub(crate) struct Opened {
    pub(crate) db: Db,
    pub(crate) epoch: u32,
    pub(crate) next_seq: u64,
    pub(crate) seq_reserved: u64,
    pub(crate) high_water: u64,
    /// The commit log, restarted at a new generation (`None` when the configuration or the
    /// target has none).
    pub(crate) log: Option<Log>,
    /// Keys read from a directory snapshot instead of the records (0: the records were scanned),
    /// and the digest seeds of that snapshot, which the store must use from now on.
    pub(crate) snapshot_keys: u64,
    pub(crate) snapshot_seeds: Option<KeySeeds>,
}

fn layout_code(layout: Layout) -> u64 {
    match layout {
        Layout::TimeOrdered => 1,
        Layout::KeyOrdered => 2,
    }
}

fn open_db(target: &Target, creating: Option<std::fs::File>, config: &Config) -> Result<Database> {
    let mut builder = Database::builder();
    if let Some(bytes) = config.cache_size {
        builder.set_cache_size(bytes);
    }
    let db = match (target, creating) {
        // The creation's own handle, which holds its lock (see `Creation`).
        (_, Some(file)) => redb::backends::FileBackend::new(file)
            .and_then(|backend| builder.create_with_backend(backend)),
        (Target::Path(p), None) => builder.create(p),
        (Target::Backend { db, .. }, None) => builder.create_with_backend(DynBackend(db())),
    };
    db.map_err(|e| match e {
        redb::DatabaseError::UpgradeRequired(v) => Error::UnsupportedFormat {
            found: u32::from(v),
            supported: FORMAT_VERSION,
        },
        other => Error::from(other),
    })
}

/// A store file being created: redb writes a new file in several steps (size, header, sync,
/// magic number), and a file left half-written by a failure or a crash is refused by every
/// later open ("not a redb database"). So a new file is created under a temporary name and
/// renamed into place after its first durable commit; a new backend is emptied again if its
/// creation fails.
///
/// Two opens of the same new path may race. The temporary file is the creation's lock: an
/// exclusive lock on it (held until the creation is installed or abandoned, and by the
/// database's own handle for as long as it is open) admits one creator at a time, and a creator
/// checks, holding it, that no other creation has been installed meanwhile. Without it two
/// opens could each build a store, one renamed over the other's, sharing one commit log: both
/// would acknowledge, and one's acknowledgements would be lost.
enum Creation {
    /// The file exists: a plain open.
    Existing,
    /// A new file at `path`, built at `tmp` first. `file` goes to redb; `lock` is another handle
    /// on it (the same open file description), which keeps the lock until redb closes the
    /// database: redb's close unlocks it.
    NewFile {
        tmp: PathBuf,
        path: PathBuf,
        file: std::cell::Cell<Option<std::fs::File>>,
        lock: std::fs::File,
    },
    /// An empty custom backend.
    NewBackend,
}

impl Creation {
    fn of(target: &Target) -> Result<Creation> {
        Ok(match target {
            // `try_exists`: a path that cannot be examined is an error, never a new store to be
            // renamed over whatever is there.
            Target::Path(p) if !p.try_exists().map_err(Error::Io)? => Creation::new_file(p)?,
            Target::Path(_) => Creation::Existing,
            Target::Backend { db, .. } => {
                let empty = db().len().map_err(Error::Io)? == 0;
                if empty {
                    Creation::NewBackend
                } else {
                    Creation::Existing
                }
            }
        })
    }

    /// Takes the creation lock on `path`'s temporary file: `AlreadyOpen` while another open is
    /// creating it, a plain open if another creation was installed meanwhile.
    fn new_file(path: &Path) -> Result<Creation> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".creating");
        let tmp = path.with_file_name(name);
        let open_tmp = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&tmp)
                .map_err(Error::Io)
        };
        // A creator that gives up unlinks the file it held: the one we locked may be such a
        // file (not the one the name leads to any more), then look again.
        for _ in 0..8 {
            let mut file = open_tmp()?;
            match lock(&file)? {
                Locked::Busy => return Err(Error::AlreadyOpen),
                Locked::Held if !same_file(&file, &tmp) => continue,
                Locked::Held => {
                    if path.try_exists().map_err(Error::Io)? {
                        // Installed by another open since `Creation::of` looked; our file
                        // is one of our own making (or a leftover): not needed.
                        let _ = std::fs::remove_file(&tmp);
                        return Ok(Creation::Existing);
                    }
                    // What a creation that died left, if anything.
                    file.set_len(0).map_err(Error::Io)?;
                }
                Locked::Unavailable => {
                    // No lock to exclude another creator (as before locks were used): start
                    // from a file of our own rather than truncate one that may be in use.
                    drop(file);
                    let _ = std::fs::remove_file(&tmp);
                    file = open_tmp()?;
                }
            }
            let lock = file.try_clone().map_err(Error::Io)?;
            return Ok(Creation::NewFile {
                tmp,
                path: path.to_path_buf(),
                file: std::cell::Cell::new(Some(file)),
                lock,
            });
        }
        Err(Error::AlreadyOpen)
    }

    /// The new file's handle, for redb (once).
    fn take_file(&self) -> Option<std::fs::File> {
        match self {
            Creation::NewFile { file, .. } => file.take(),
            _ => None,
        }
    }

    /// After the first durable commit: moves a new file into place.
    fn finish(&self) -> Result<()> {
        if let Creation::NewFile { tmp, path, .. } = self {
            std::fs::rename(tmp, path).map_err(Error::Io)?;
            sync_parent(path)?;
        }
        Ok(())
    }

    /// After a failed creation: leaves nothing behind.
    fn abandon(&self, target: &Target) {
        match (self, target) {
            // redb's close unlocked the file (the lock belongs to the open file description
            // `held` shares with redb's handle): take it again, and leave the file to any
            // creator that took it meanwhile.
            (
                Creation::NewFile {
                    tmp, lock: held, ..
                },
                _,
            ) if !matches!(lock(held), Ok(Locked::Busy)) && same_file(held, tmp) => {
                let _ = std::fs::remove_file(tmp);
            }
            (Creation::NewBackend, Target::Backend { db, .. }) => {
                let _ = db().set_len(0);
            }
            _ => {}
        }
    }
}

/// The creation lock on a temporary file.
enum Locked {
    Held,
    /// Another open holds it.
    Busy,
    /// No lock here: the file system refuses them, or (off unix) we take none, as there the
    /// lock would also stand in the way of redb's own range locks through the same handle.
    /// Two opens creating one path at once are then not kept apart.
    Unavailable,
}

#[cfg(unix)]
fn lock(file: &std::fs::File) -> Result<Locked> {
    match file.try_lock() {
        Ok(()) => Ok(Locked::Held),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Locked::Busy),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(Locked::Unavailable)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Io(e)),
    }
}

#[cfg(not(unix))]
fn lock(_file: &std::fs::File) -> Result<Locked> {
    Ok(Locked::Unavailable)
}

/// Whether `file` is the file `path` names now (off unix, where that cannot be told: `true`).
#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &std::fs::File, _path: &Path) -> bool {
    true
}

/// Runs `f`, turning a panic (redb panics on some damaged files instead of returning an error)
/// into `Error::Corrupt`.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Error::Corrupt {
            detail: format!("the storage engine failed reading the file: {what}"),
        })
    })
}

/// Why the database is opened.
#[derive(Clone, Copy)]
pub(crate) enum Reopen<'a> {
    /// The store opens: a new epoch (claims of earlier processes can be taken over at once).
    Start,
    /// The writer recovers from a failed commit: the same epoch; `rewrite` holds the rows of
    /// the batches acknowledged since the last durable commit (bounded mode), written again,
    /// unless the file's epoch is no longer `epoch`: another store opened the file since (it
    /// was unlocked meanwhile), and its changes must not be written over. That answers
    /// `Poisoned`.
    Recovery { rewrite: &'a Changes, epoch: u32 },
}

/// Opens the database, checks its format, bumps the epoch (when `Reopen::Start`), reserves a new
/// block of sequence numbers durably, and loads every record into `index` (a new, empty
/// directory that nobody else reads yet). A
/// panic inside redb on a damaged file becomes `Error::Corrupt`.
pub(crate) fn open(
    index: &Index,
    target: &Target,
    config: &Config,
    seeds: &KeySeeds,
    reopen: Reopen<'_>,
) -> Result<Opened> {
    let creation = Creation::of(target)?;
    let opened = guard(|| open_and_load(index, target, &creation, config, seeds, reopen))
        .and_then(|opened| creation.finish().map(|()| opened));
    if opened.is_err() {
        creation.abandon(target);
    }
    opened
}

fn open_and_load(
    index: &Index,
    target: &Target,
    creation: &Creation,
    config: &Config,
    seeds: &KeySeeds,
    reopen: Reopen<'_>,
) -> Result<Opened> {
    let bump_epoch = matches!(reopen, Reopen::Start);
    // A store file at its path has its tables: a new one is built beside it and renamed into
    // place after its first commit. Only an empty file (made by the caller, say) is new there;
    // a custom backend that is not empty may hold a first open that never committed.
    let may_be_new = match (target, creation) {
        (Target::Path(path), Creation::Existing) => {
            std::fs::metadata(path).map_err(Error::Io)?.len() == 0
        }
        _ => true,
    };
    // Wrapped at once: an open that fails from here on drops it, and redb's close with it.
    let db = Db::new(open_db(target, creation.take_file(), config)?);
    // Only now, holding the database's lock.
    let log_file = open_log(target, creation, config)?;
    let mut txn = db.begin_write()?;
    let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>> {
        Ok(meta.get(k)?.map(|g| g.value()))
    };
    // The open creates the tables it opens: a record table (or metadata, or both) lost to
    // damage in redb's table directory would otherwise read as a new, empty store, and every
    // completed key would run again.
    let records_table = match config.layout {
        Layout::TimeOrdered => RECORDS.name(),
        Layout::KeyOrdered => BY_KEY.name(),
    };
    let has_records = txn.list_tables()?.any(|t| t.name() == records_table);
    let (generation, applied, snapshot_id) = {
        let mut meta = txn.open_table(META)?;
        let format = get(&meta, M_FORMAT)?;
        let damage = match (format.is_some(), has_records) {
            (true, true) => None,
            (true, false) => Some("the record table is missing"),
            (false, true) => Some("the metadata has no format version"),
            (false, false) if may_be_new => None,
            (false, false) => Some("a store file with neither metadata nor a record table"),
        };
        // A newer format may keep its metadata otherwise: refused as such, before the checksum.
        if let Some(v) = format
            && v > u64::from(FORMAT_VERSION)
        {
            return Err(Error::UnsupportedFormat {
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        // Before the layout is read: a damaged layout value is damage, not another layout.
        let (stored, computed) = meta_checks(&meta)?;
        let unchecked = match (stored, format) {
            (Some(check), _) if check != computed => {
                Some("the metadata does not match its checksum")
            }
            (None, Some(v)) if v >= FORMAT_CHECKED => Some("the metadata has no checksum"),
            // Verified, or a file from before the checksum (the open's commit adds it).
            _ => None,
        };
        if let Some(what) = unchecked {
            return Err(Error::Corrupt {
                detail: format!("the metadata is damaged: {what}"),
            });
        }
        if let Some(layout) = get(&meta, M_LAYOUT)?
            && layout != layout_code(config.layout)
        {
            return Err(Error::InvalidConfig(
                "the file was created with another record layout".into(),
            ));
        }
        if let Some(what) = damage {
            return Err(Error::Corrupt {
                detail: format!("the table directory or the metadata is damaged: {what}"),
            });
        }
        match format {
            None => {
                meta.insert(M_FORMAT, u64::from(FORMAT_VERSION))?;
                meta.insert(M_LAYOUT, layout_code(config.layout))?;
            }
            Some(v) if v < u64::from(FORMAT_VERSION) => {
                meta.insert(M_FORMAT, u64::from(FORMAT_VERSION))?;
            }
            Some(_) => {}
        }
        if get(&meta, M_LAYOUT)? != Some(layout_code(config.layout)) {
            return Err(Error::InvalidConfig(
                "the file was created with another record layout".into(),
            ));
        }
        (
            get(&meta, M_LOG_GEN)?,
            get(&meta, M_LOG_APPLIED)?.unwrap_or(0),
            get(&meta, M_SNAPSHOT)?.unwrap_or(0),
        )
    };
    // Read ahead unless a snapshot will spare the scan (it is read below if the file names it).
    let _prefetch = match (target, creation) {
        (Target::Path(path), Creation::Existing)
            if snapshot_id == 0 || !snapshot::path_for(path).exists() =>
        {
            Prefetch::start(path)
        }
        _ => None,
    };
    // Before anything else is read: frames carry meta rows too.
    let replayed = match (generation, &log_file, applied == LOG_ALL_APPLIED) {
        (Some(generation), Some(file), false) => {
            replay_log(&txn, config.layout, file.as_ref(), generation, applied)? > 0
        }
        _ => false,
    };
    if let Reopen::Recovery { rewrite, epoch } = reopen {
        let found = txn.open_table(META)?.get(M_EPOCH)?.map(|g| g.value());
        if found != Some(u64::from(epoch)) {
            return Err(Error::Poisoned {
                reason: format!(
                    "another store opened the file after the failed commit (epoch {found:?}, \
                     this store's {epoch}); nothing was written over its changes"
                ),
            });
        }
        rewrite_unsynced(&txn, config.layout, rewrite)?;
        // Durable before the directory is loaded (a scan of every record): a crash meanwhile
        // must not lose acknowledgements already waiting since a failed sync. (Not when log
        // frames were replayed into this transaction: they commit with the checkpoint below.
        // Bounded mode, the only one with rows to write again, replays none here: its open
        // started a new log generation.)
        if !rewrite.is_empty() && !replayed {
            commit(txn, config, true)?;
            txn = db.begin_write()?;
        }
    }
    let (epoch, next_seq, seq_reserved, high_water, from_snapshot);
    let next_generation = log::new_generation();
    {
        let mut meta = txn.open_table(META)?;
        let old_epoch = get(&meta, M_EPOCH)?.unwrap_or(0);
        let e = if bump_epoch {
            old_epoch.saturating_add(1)
        } else {
            old_epoch.max(1)
        };
        epoch = u32::try_from(e).map_err(|_| Error::Corrupt {
            detail: format!("epoch {e} out of range"),
        })?;
        meta.insert(M_EPOCH, e)?;
        high_water = get(&meta, M_HIGH_WATER)?.unwrap_or(0);
        // The snapshot of the last clean close, if this is the open after it (see
        // `snapshot.rs`); a damaged or missing one only costs the scan.
        from_snapshot = match target {
            Target::Path(path) if snapshot_id != 0 && !replayed && bump_epoch => {
                // No more keys than records: bounds what a crafted header can make it allocate.
                let records = records_in(&txn, config.layout, target)?;
                match snapshot::load(path, snapshot_id, records, index) {
                    Ok(loaded) => Some(loaded),
                    Err(_) => {
                        index.clear();
                        None
                    }
                }
            }
            _ => None,
        };
        let max_seq = match from_snapshot {
            Some((_, _, max_token)) => max_token,
            None => load(&txn, config.layout, target, seeds, index, epoch)?,
        };
        // From now on the file changes: no snapshot describes it.
        meta.insert(M_SNAPSHOT, 0)?;
        let reserved = get(&meta, M_SEQ)?.unwrap_or(1);
        // One token per operation: a file claiming more than 2^63 of them is damaged (and the
        // additions below and in the writer would overflow).
        if reserved.max(max_seq) > u64::MAX / 2 {
            return Err(Error::Corrupt {
                detail: format!("token {} out of range", reserved.max(max_seq)),
            });
        }
        next_seq = reserved.max(max_seq + 1);
        seq_reserved = next_seq + config.token_block;
        meta.insert(M_SEQ, seq_reserved)?;
        // A checkpoint: whatever the log held is in this commit.
        meta.insert(M_LOG_GEN, next_generation)?;
        meta.insert(M_LOG_APPLIED, 0)?;
    }
    commit(txn, config, true)?;
    if let Target::Path(path) = target {
        // Stale from now on (the meta table no longer names it), or never named by it (a close
        // that died before its last commit).
        snapshot::remove(path);
    }
    let log = match log_file {
        Some(file) if config.log_capacity > 0 && config.durability == Durability::Immediate => {
            Some(Log::new(file, next_generation, config.log_capacity)?)
        }
        _ => None,
    };
    Ok(Opened {
        db,
        epoch,
        next_seq,
        seq_reserved,
        high_water,
        log,
        snapshot_keys: from_snapshot.as_ref().map_or(0, |(_, keys, _)| *keys),
        snapshot_seeds: from_snapshot.map(|(seeds, _, _)| seeds),
    })
}

/// Opens the commit log of `target` (creating it when the configuration uses one). A new
/// database starts with an empty log.
fn open_log(
    target: &Target,
    creation: &Creation,
    config: &Config,
) -> Result<Option<Box<dyn redb::StorageBackend>>> {
    let file: Box<dyn redb::StorageBackend> = match target {
        Target::Path(db_path) => {
            let path = log::path_for(db_path);
            if !path.exists() && config.log_capacity == 0 {
                return Ok(None);
            }
            let file = log::LogFile::open(&path).map_err(Error::Io)?;
            // The log's directory entry must be durable before any frame in it is; at every
            // open, as an earlier open may have created the file and died before syncing.
            sync_parent(&path)?;
            Box::new(file)
        }
        Target::Backend { log: Some(log), .. } => log(),
        Target::Backend { log: None, .. } => return Ok(None),
    };
    if !matches!(creation, Creation::Existing) {
        file.set_len(0).map_err(Error::Io)?;
    }
    Ok(Some(file))
}

pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))
        .and_then(|d| d.sync_all())
        .map_err(Error::Io)
}

/// Applies the frames of log `generation` from `applied` on (0, or a count a file written
/// before the frame-first order may hold: see `log.rs`) to `txn`; answers how many frames it
/// applied.
fn replay_log(
    txn: &redb::WriteTransaction,
    layout: Layout,
    file: &dyn redb::StorageBackend,
    generation: u64,
    applied: u64,
) -> Result<u64> {
    apply_rows(txn, layout, "commit log", |apply| {
        log::replay(file, generation, applied, apply)
    })
}

/// Writes again the rows of batches acknowledged since the last durable commit (bounded mode:
/// see `Writer::unsynced`), in order.
pub(crate) fn rewrite_unsynced(
    txn: &redb::WriteTransaction,
    layout: Layout,
    rewrite: &Changes,
) -> Result<()> {
    apply_rows(txn, layout, "recorded changes", |apply| {
        log::apply_changes(rewrite, apply).map(|()| 0)
    })
    .map(drop)
}

/// Applies to `txn` the row changes that `feed` hands to the function it is given (whole-row
/// puts and removes, so applying one twice changes nothing).
fn apply_rows(
    txn: &redb::WriteTransaction,
    layout: Layout,
    source: &str,
    feed: impl FnOnce(&mut dyn FnMut(log::Entry<'_>) -> Result<()>) -> Result<u64>,
) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    let mut rows = Tables::open(txn, layout, Changes::default())?;
    let bad = |what: &str| Error::Corrupt {
        detail: format!("{source}: {what}"),
    };
    feed(&mut |e: log::Entry<'_>| {
        match (e.table, &mut rows.rows) {
            (LogTable::Meta, _) => {
                let k = std::str::from_utf8(e.key).map_err(|_| bad("a meta key is not UTF-8"))?;
                match e.value {
                    Some(v) => {
                        let v = <[u8; 8]>::try_from(v)
                            .map_err(|_| bad("a meta value is not 8 bytes"))?;
                        meta.insert(k, u64::from_le_bytes(v))?;
                    }
                    None => {
                        meta.remove(k)?;
                    }
                }
            }
            (LogTable::Records, Rows::Time(t)) => {
                let k = log::parse_record_key(e.key)
                    .ok_or_else(|| bad("a record key is not 16 bytes"))?;
                match e.value {
                    Some(v) => t.insert(k, v)?,
                    None => t.remove(k)?,
                };
            }
            (LogTable::ByKey, Rows::Key(t)) => {
                match e.value {
                    Some(v) => t.insert(e.key, v)?,
                    None => t.remove(e.key)?,
                };
            }
            (table, _) => return Err(bad(&format!("a {table:?} row in a file of another layout"))),
        }
        Ok(())
    })
}

/// Reads an existing store file from start to end in a background thread while it is opened,
/// so the scan of the records (which reads B-tree pages one at a time, about 180 MB/s from a
/// cold cache on the disks measured) finds them in the page cache (a sequential read runs at
/// about 500 MB/s there). Only when the file fits comfortably in the memory the kernel reports
/// available; stops when dropped.
struct Prefetch {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Prefetch {
    fn start(path: &Path) -> Option<Prefetch> {
        let file = std::fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        if len.saturating_mul(2) > available_memory()? {
            return None;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("idemstore-prefetch".into())
            .spawn(move || {
                use std::io::Read;
                let mut file = file;
                let mut buf = vec![0u8; 1 << 20];
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    match file.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .ok()?;
        Some(Prefetch { stop })
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (`None` elsewhere than Linux).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Loads every record into the directory (the newest per key, should a file ever hold two)
/// and returns the highest token seen.
fn load(
    txn: &redb::WriteTransaction,
    layout: Layout,
    target: &Target,
    seeds: &KeySeeds,
    index: &Index,
    epoch: u32,
) -> Result<u64> {
    let mut max_seq = 0;
    let expected = records_in(txn, layout, target)?;
    index.fill(usize::try_from(expected).unwrap_or(0), |filler| {
        let mut add = |digest: u128, entry: &crate::machine::Entry| {
            max_seq = max_seq.max(entry.token);
            filler.add(digest, Slot::new(entry, epoch));
        };
        match layout {
            Layout::TimeOrdered => {
                let table = txn.open_table(RECORDS)?;
                // redb does not check its page checksums on reads: a damaged child pointer in
                // a branch page can make the scan read another page in place of the right one
                // (found by `tests/damage.rs`). What the scan can check costs nothing: the
                // positions come in strictly increasing order, and as many as the table counts.
                let mut last = None;
                let mut seen = 0u64;
                for row in table.iter()? {
                    let (k, v) = row?;
                    let (expires_at, seq) = k.value();
                    if last.is_some_and(|last| last >= (expires_at, seq)) {
                        return Err(at(
                            Error::Corrupt {
                                detail: "the record table's rows are out of order".into(),
                            },
                            expires_at,
                            seq,
                        ));
                    }
                    last = Some((expires_at, seq));
                    seen += 1;
                    // The checksum covers the whole record; only its key and entry are decoded.
                    let (key, entry) =
                        codec::decode_head(v.value()).map_err(|e| at(e, expires_at, seq))?;
                    if (entry.expires_at, entry.token) != (expires_at, seq) {
                        return Err(at(
                            Error::Corrupt {
                                detail: "expiry or token differs from the record's position".into(),
                            },
                            expires_at,
                            seq,
                        ));
                    }
                    add(key.digest(seeds), &entry);
                }
                counted(seen, table.len()?)?;
            }
            Layout::KeyOrdered => {
                let table = txn.open_table(BY_KEY)?;
                let mut seen = 0u64;
                for row in table.iter()? {
                    let (_, v) = row?;
                    let (record, _) = decode_with_seq(v.value())?;
                    add(record.key.digest(seeds), &record.entry);
                    seen += 1;
                }
                counted(seen, table.len()?)?;
            }
        }
        Ok(())
    })?;
    Ok(max_seq)
}

/// The scan found as many records as the record table counts (`Corrupt` if not).
fn counted(seen: u64, stored: u64) -> Result<()> {
    if seen == stored {
        return Ok(());
    }
    Err(Error::Corrupt {
        detail: format!("the record table counts {stored} records, and the scan read {seen}"),
    })
}

fn at(e: Error, expires_at: u64, seq: u64) -> Error {
    match e {
        Error::Corrupt { detail } => Error::Corrupt {
            detail: format!("record ({expires_at}, {seq}): {detail}"),
        },
        other => other,
    }
}

/// The key-ordered layout stores the record's token before the record.
fn decode_with_seq(bytes: &[u8]) -> Result<(Record, u64)> {
    let (seq, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| Error::Corrupt {
            detail: "record shorter than its sequence number".into(),
        })?;
    Ok((codec::decode(rest)?, u64::from_be_bytes(*seq)))
}

/// Commits `txn` durably (`durable`) or not, with the configured repair mode.
pub(crate) fn commit(
    mut txn: redb::WriteTransaction,
    config: &Config,
    durable: bool,
) -> Result<()> {
    txn.set_quick_repair(config.quick_repair);
    let durability = if durable {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| Error::Storage(e.into()))?;
    reseal_meta(&txn)?;
    txn.commit()?;
    Ok(())
}

/// The metadata checksum as stored (`M_CHECK`, if there is one) and as computed, in one pass:
/// xxh3 of the other rows in key order, for each the key's length (u64, little-endian), the
/// key, and the value (u64, little-endian).
fn meta_checks(meta: &impl ReadableTable<&'static str, u64>) -> Result<(Option<u64>, u64)> {
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut stored = None;
    for row in meta.iter()? {
        let (k, v) = row?;
        let (k, v) = (k.value(), v.value());
        if k == M_CHECK {
            stored = Some(v);
        } else {
            hash.update(&(k.len() as u64).to_le_bytes());
            hash.update(k.as_bytes());
            hash.update(&v.to_le_bytes());
        }
    }
    Ok((stored, hash.digest()))
}

/// Brings `M_CHECK` up to date with the metadata `txn` leaves (written only when it changed,
/// so a commit that left the metadata alone does not rewrite its page).
fn reseal_meta(txn: &redb::WriteTransaction) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    let (stored, computed) = meta_checks(&meta)?;
    if stored != Some(computed) {
        meta.insert(M_CHECK, computed)?;
    }
    Ok(())
}

/// The record tables of one write transaction, for the writer, and the changes made through
/// them (for the commit log).
pub(crate) struct Tables<'t> {
    rows: Rows<'t>,
    pub(crate) changes: Changes,
}

enum Rows<'t> {
    Time(redb::Table<'t, (u64, u64), &'static [u8]>),
    Key(redb::Table<'t, &'static [u8], &'static [u8]>),
    /// Bounded mode (`stage.rs`): changes are only recorded, to be staged; reads go to the
    /// database as committed.
    Staged(Layout, Arc<Db>),
}

impl<'t> Tables<'t> {
    /// The tables, recording the changes made through them into `changes` (when it records:
    /// see `Changes::recycled`).
    pub(crate) fn open(
        txn: &'t redb::WriteTransaction,
        layout: Layout,
        changes: Changes,
    ) -> Result<Self> {
        let rows = match layout {
            Layout::TimeOrdered => Rows::Time(txn.open_table(RECORDS)?),
            Layout::KeyOrdered => Rows::Key(txn.open_table(BY_KEY)?),
        };
        Ok(Tables { rows, changes })
    }

    /// Tables that only record their changes (which must record), for bounded mode's stage;
    /// reads go to `db`.
    pub(crate) fn staged<'x>(layout: Layout, db: Arc<Db>, changes: Changes) -> Tables<'x> {
        Tables {
            rows: Rows::Staged(layout, db),
            changes,
        }
    }

    /// Writes `record` as the key's record `new`, removing the previous record `old` when it
    /// stood elsewhere.
    pub(crate) fn put(
        &mut self,
        key: &Key,
        old: Option<&Slot>,
        new: &Slot,
        record: &[u8],
    ) -> Result<()> {
        match &mut self.rows {
            Rows::Time(t) => {
                let at = (new.expires_at(), new.token());
                if let Some(old) = old.filter(|o| (o.expires_at(), o.token()) != at) {
                    t.remove((old.expires_at(), old.token()))?;
                    let k = log::record_key(old.expires_at(), old.token());
                    self.changes.remove(LogTable::Records, &k);
                }
                t.insert(at, record)?;
                self.changes
                    .put(LogTable::Records, &log::record_key(at.0, at.1), record);
            }
            Rows::Key(t) => {
                let (k, value) = by_key_row(key, new, record);
                t.insert(k.as_slice(), value.as_slice())?;
                self.changes.put(LogTable::ByKey, &k, &value);
            }
            Rows::Staged(Layout::TimeOrdered, _) => {
                let at = (new.expires_at(), new.token());
                if let Some(old) = old.filter(|o| (o.expires_at(), o.token()) != at) {
                    let k = log::record_key(old.expires_at(), old.token());
                    self.changes.remove(LogTable::Records, &k);
                }
                self.changes
                    .put(LogTable::Records, &log::record_key(at.0, at.1), record);
            }
            Rows::Staged(Layout::KeyOrdered, _) => {
                let (k, value) = by_key_row(key, new, record);
                self.changes.put(LogTable::ByKey, &k, &value);
            }
        }
        Ok(())
    }

    pub(crate) fn remove(&mut self, key: &Key, old: &Slot) -> Result<()> {
        match &mut self.rows {
            Rows::Time(_) | Rows::Staged(Layout::TimeOrdered, _) => {
                self.remove_at(old.expires_at(), old.token())?
            }
            Rows::Key(t) => {
                let k = codec::scoped_key_bytes(key);
                t.remove(k.as_slice())?;
                self.changes.remove(LogTable::ByKey, &k);
            }
            Rows::Staged(Layout::KeyOrdered, _) => {
                let k = codec::scoped_key_bytes(key);
                self.changes.remove(LogTable::ByKey, &k);
            }
        }
        Ok(())
    }

    /// The key's record as this transaction sees it; for staged tables, as the database has
    /// committed it (rows of this batch or still staged are not seen: see `stage.rs`).
    pub(crate) fn get(&self, key: &Key, slot: &Slot) -> Result<Option<Record>> {
        match &self.rows {
            Rows::Time(t) => read_time(t, key, slot),
            Rows::Key(t) => read_key(t, key, slot),
            Rows::Staged(layout, db) => read(db, *layout, key, slot),
        }
    }

    /// The key's record as this batch last wrote it, if it did (from the changes recorded).
    pub(crate) fn get_written(&self, key: &Key, slot: &Slot) -> Result<Option<Record>> {
        let (table, row_key) = match &self.rows {
            Rows::Time(_) | Rows::Staged(Layout::TimeOrdered, _) => (
                LogTable::Records,
                log::record_key(slot.expires_at(), slot.token()).to_vec(),
            ),
            Rows::Key(_) | Rows::Staged(Layout::KeyOrdered, _) => {
                (LogTable::ByKey, codec::scoped_key_bytes(key))
            }
        };
        let mut last: Option<Option<Vec<u8>>> = None;
        log::apply_changes(&self.changes, |e| {
            if e.table == table && e.key == row_key.as_slice() {
                last = Some(e.value.map(<[u8]>::to_vec));
            }
            Ok(())
        })?;
        let Some(Some(value)) = last else {
            return Ok(None);
        };
        match table {
            LogTable::ByKey => key_row(&value, key, slot),
            _ => time_row(&value, key, slot),
        }
    }

    /// Removes the time-ordered record at `(expires_at, seq)` (the sweeper's delete).
    pub(crate) fn remove_at(&mut self, expires_at: u64, seq: u64) -> Result<()> {
        match &mut self.rows {
            Rows::Time(t) => {
                t.remove((expires_at, seq))?;
            }
            Rows::Staged(Layout::TimeOrdered, _) => {}
            _ => return Ok(()),
        }
        self.changes
            .remove(LogTable::Records, &log::record_key(expires_at, seq));
        Ok(())
    }
}

/// The key-ordered table's row for `record` as the key's record `new`.
fn by_key_row(key: &Key, new: &Slot, record: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut value = Vec::with_capacity(8 + record.len());
    value.extend_from_slice(&new.token().to_be_bytes());
    value.extend_from_slice(record);
    (codec::scoped_key_bytes(key), value)
}

fn check(record: Record, key: &Key, slot: &Slot) -> Result<Option<Record>> {
    if &record.key != key {
        return Err(Error::Corrupt {
            detail: format!(
                "record {} holds another key than the directory says",
                slot.token()
            ),
        });
    }
    // `None` when the record was rewritten since the slot was read.
    Ok(slot.describes(&record.entry).then_some(record))
}

fn read_time(
    t: &impl ReadableTable<(u64, u64), &'static [u8]>,
    key: &Key,
    slot: &Slot,
) -> Result<Option<Record>> {
    match t.get((slot.expires_at(), slot.token()))? {
        None => Ok(None),
        Some(v) => time_row(v.value(), key, slot),
    }
}

/// The record of a time-ordered row, checked against the directory slot that points at it.
fn time_row(value: &[u8], key: &Key, slot: &Slot) -> Result<Option<Record>> {
    check(codec::decode(value)?, key, slot)
}

/// The record of a key-ordered row; `None` when the row holds a later record of the key than
/// the slot's.
fn key_row(value: &[u8], key: &Key, slot: &Slot) -> Result<Option<Record>> {
    let (record, seq) = decode_with_seq(value)?;
    if seq != slot.token() {
        return Ok(None);
    }
    check(record, key, slot)
}

fn read_key(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &Key,
    slot: &Slot,
) -> Result<Option<Record>> {
    match t.get(codec::scoped_key_bytes(key).as_slice())? {
        None => Ok(None),
        Some(v) => key_row(v.value(), key, slot),
    }
}

/// Reads the record a directory slot points at, in a short read transaction. `None` when the
/// record has moved on since the slot was read (the caller looks again).
pub(crate) fn read(
    db: &Database,
    layout: Layout,
    key: &Key,
    slot: &Slot,
) -> Result<Option<Record>> {
    guard(|| {
        let txn = db.begin_read()?;
        match layout {
            Layout::TimeOrdered => read_time(&txn.open_table(RECORDS)?, key, slot),
            Layout::KeyOrdered => read_key(&txn.open_table(BY_KEY)?, key, slot),
        }
    })
}

/// Up to `limit` records of the time-ordered table from `from` (inclusive) to records
/// expiring before `to`, as sweeper entries.
pub(crate) fn scan_expiry(
    db: &Database,
    from: (u64, u64),
    to: u64,
    limit: usize,
    seeds: &KeySeeds,
) -> Result<Vec<crate::sweeper::Due>> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECORDS)?;
    let mut out = Vec::new();
    for row in table.range(from..(to, 0))? {
        if out.len() == limit {
            break;
        }
        let (k, v) = row?;
        let (expires_at, seq) = k.value();
        // A damaged record (possible only after an open from a snapshot, which does not decode
        // the records) has no key to sweep it by; failing here would stop every later pass at
        // it. Operations on its key report it.
        let Ok(record) = codec::decode(v.value()) else {
            continue;
        };
        out.push(crate::sweeper::Due {
            digest: record.key.digest(seeds),
            token: seq,
            expires_at,
        });
    }
    Ok(out)
}

/// The records table's length as redb stores it, at most what the file could hold: redb does
/// not verify that number at an open, and the directory reserves room by it.
fn records_in(txn: &redb::WriteTransaction, layout: Layout, target: &Target) -> Result<u64> {
    /// No record takes fewer bytes in the file (its key alone is 16).
    const MIN_RECORD_BYTES: u64 = 16;
    let stored = match layout {
        Layout::TimeOrdered => txn.open_table(RECORDS)?.len()?,
        Layout::KeyOrdered => txn.open_table(BY_KEY)?.len()?,
    };
    let file_len = match target {
        Target::Path(path) => std::fs::metadata(path).map(|m| m.len()).ok(),
        Target::Backend { db, .. } => db().len().ok(),
    };
    Ok(file_len.map_or(stored, |len| stored.min(len / MIN_RECORD_BYTES)))
}

/// Number of records on disk (live or expired but not yet swept).
pub(crate) fn record_count(db: &Database, layout: Layout) -> Result<u64> {
    let txn = db.begin_read()?;
    Ok(match layout {
        Layout::TimeOrdered => txn.open_table(RECORDS)?.len()?,
        Layout::KeyOrdered => txn.open_table(BY_KEY)?.len()?,
    })
}

/// Writes meta values in the writer's transaction, recording them in `changes` for the log.
pub(crate) fn put_meta(
    txn: &redb::WriteTransaction,
    pairs: &[(&str, u64)],
    changes: &mut Changes,
) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    for (k, v) in pairs {
        meta.insert(*k, *v)?;
        changes.put(LogTable::Meta, k.as_bytes(), &v.to_le_bytes());
    }
    Ok(())
}

pub(crate) const META_SEQ: &str = M_SEQ;

/// Forwards every method, the lock methods included, to a boxed backend.
#[derive(Debug)]
struct DynBackend(Box<dyn redb::StorageBackend>);

type IoResult<T> = std::result::Result<T, std::io::Error>;
type LockResult<T> = std::result::Result<T, redb::BackendError>;

impl redb::StorageBackend for DynBackend {
    fn len(&self) -> IoResult<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> IoResult<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> IoResult<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> IoResult<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> IoResult<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> IoResult<()> {
        self.0.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<bool> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<bool> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<()> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<()> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<()> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult<bool> {
        self.0.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// redb's in-memory backend, whose writes panic once `armed`: a stand-in for the redb
    /// panics a damaged file causes, at a place (the close's commit) no campaign case reached.
    #[derive(Debug)]
    struct PanicOnWrite {
        inner: redb::backends::InMemoryBackend,
        armed: Arc<AtomicBool>,
        panics: Arc<AtomicUsize>,
    }

    impl redb::StorageBackend for PanicOnWrite {
        fn len(&self) -> IoResult<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> IoResult<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> IoResult<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> IoResult<()> {
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> IoResult<()> {
            if self.armed.load(Ordering::Acquire) {
                self.panics.fetch_add(1, Ordering::AcqRel);
                panic!("injected panic in a write of the close");
            }
            self.inner.write(offset, data)
        }
    }

    /// A panic inside redb's close (`Database::drop`, which commits once more) stops at
    /// `Db`'s drop: the caller that dropped the last reference goes on.
    #[test]
    fn a_panic_in_the_close_stops_at_the_db() {
        let armed = Arc::new(AtomicBool::new(false));
        let panics = Arc::new(AtomicUsize::new(0));
        let backend = PanicOnWrite {
            inner: redb::backends::InMemoryBackend::new(),
            armed: Arc::clone(&armed),
            panics: Arc::clone(&panics),
        };
        let db = Db::new(Database::builder().create_with_backend(backend).unwrap());
        let table: TableDefinition<u64, u64> = TableDefinition::new("t");
        let tx = db.begin_write().unwrap();
        tx.open_table(table).unwrap().insert(1, 2).unwrap();
        tx.commit().unwrap();
        armed.store(true, Ordering::Release);
        // Without the catch, this drop would unwind into the test and fail it.
        drop(db);
        assert!(
            panics.load(Ordering::Acquire) > 0,
            "the close wrote nothing, so the injected panic never ran"
        );
    }
}
