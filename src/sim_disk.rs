//! Storage backends for crash and fault testing of redb databases.
//!
//! * [`SimDisk`] is an in-memory disk with a *live* image (every write applied) and a *durable*
//!   image (advanced at each `sync_data`). [`SimDisk::crash`] simulates a power loss.
//! * [`FaultyFile`] wraps redb's [`FileBackend`] for a real file and forwards every method.
//! * Both share the fault-injection API of [`FaultSwitch`]: fail the n-th operation of a kind,
//!   every operation from the n-th on, or writes beyond a byte limit ("disk full").

use parking_lot::{Condvar, Mutex, MutexGuard};
use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// Granularity at which [`SimDisk::crash`] tears a write.
pub const SECTOR_SIZE: usize = 512;

/// Kind of backend operation, for counting and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `StorageBackend::write`.
    Write,
    /// `StorageBackend::set_len`.
    SetLen,
    /// `StorageBackend::sync_data`.
    Sync,
    /// `StorageBackend::read`.
    Read,
    /// Any of the four above.
    Any,
}

/// Operations a backend attempted since its [`FaultSwitch`] was created, failed ones included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Calls to `write`.
    pub writes: u64,
    /// Calls to `set_len`.
    pub set_lens: u64,
    /// Calls to `sync_data`.
    pub syncs: u64,
    /// Calls to `read`.
    pub reads: u64,
}

impl OpCounts {
    /// The count for `op`; for [`Op::Any`] the sum of all four.
    pub fn get(&self, op: Op) -> u64 {
        match op {
            Op::Write => self.writes,
            Op::SetLen => self.set_lens,
            Op::Sync => self.syncs,
            Op::Read => self.reads,
            Op::Any => self.writes + self.set_lens + self.syncs + self.reads,
        }
    }
}

/// The error of an injected fault: kind `Other`, message "injected fault".
pub fn injected_fault() -> io::Error {
    io::Error::other("injected fault")
}

/// The error of every operation on a disk that has crashed (see [`SimDisk::crash`]).
pub fn crashed_disk() -> io::Error {
    io::Error::other("simulated disk has crashed")
}

#[derive(Debug, Default)]
struct FaultState {
    counts: OpCounts,
    // (kind, the count of that kind at which to fail)
    nth: Option<(Op, u64)>,
    from: Option<(Op, u64)>,
    space_limit: Option<u64>,
}

/// Cloneable handle that counts a backend's operations and injects faults into them. Keep a
/// clone after moving the backend into redb. A failed operation has no effect on the storage.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch {
    state: Arc<Mutex<FaultState>>,
}

impl FaultSwitch {
    /// A switch with no fault armed and all counts zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`-th (1-based, counted from this call) operation of kind `op` fail once with
    /// [`injected_fault`]. Replaces an earlier `fail_nth`.
    pub fn fail_nth(&self, op: Op, n: u64) {
        self.state.lock().nth = Some(self.at(op, n));
    }

    /// Makes every operation of kind `op` fail with [`injected_fault`], from the `n`-th (1-based,
    /// counted from this call) on, until [`Self::heal`].
    pub fn fail_from(&self, op: Op, n: u64) {
        self.state.lock().from = Some(self.at(op, n));
    }

    /// The rule for the `n`-th operation of kind `op` from now.
    fn at(&self, op: Op, n: u64) -> (Op, u64) {
        assert!(n >= 1, "n is 1-based");
        (op, self.counts().get(op) + n)
    }

    /// Simulates a full disk: a write ending beyond `limit` bytes, or a `set_len` beyond it, fails
    /// with `ErrorKind::StorageFull`. `None` removes the limit.
    pub fn set_space_limit(&self, limit: Option<u64>) {
        self.state.lock().space_limit = limit;
    }

    /// Whether every operation of kind `op` fails from some point on ([`Self::fail_from`]).
    pub fn fails_for_good(&self, op: Op) -> bool {
        matches!(self.state.lock().from, Some((o, _)) if o == op)
    }

    /// Disarms every fault, the space limit included. Counts are kept.
    pub fn heal(&self) {
        let mut s = self.state.lock();
        (s.nth, s.from, s.space_limit) = (None, None, None);
    }

    /// Operations seen so far.
    pub fn counts(&self) -> OpCounts {
        self.state.lock().counts
    }

    /// Counts an operation of kind `op` (not `Any`) that ends at byte `end`, and fails it if a
    /// fault says so.
    fn check(&self, op: Op, end: Option<u64>) -> io::Result<()> {
        let mut s = self.state.lock();
        let c = &mut s.counts;
        *match op {
            Op::Write => &mut c.writes,
            Op::SetLen => &mut c.set_lens,
            Op::Sync => &mut c.syncs,
            Op::Read | Op::Any => &mut c.reads,
        } += 1;
        let counts = s.counts;
        let hit = |rule: Option<(Op, u64)>, sticky: bool| {
            rule.is_some_and(|(kind, at)| {
                let n = counts.get(kind);
                (kind == op || kind == Op::Any) && (n == at || (sticky && n > at))
            })
        };
        if hit(s.nth, false) {
            s.nth = None;
            return Err(injected_fault());
        }
        if hit(s.from, true) {
            return Err(injected_fault());
        }
        if end.is_some_and(|end| s.space_limit.is_some_and(|limit| end > limit)) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        Ok(())
    }
}

/// An unsynced change, recorded in order since the last `sync_data`.
enum Pending {
    Write(usize, Vec<u8>),
    SetLen(usize),
}

/// A lock range `start..end`, `end` exclusive and `None` if unbounded.
type Span = (u64, Option<u64>);

#[derive(Default)]
struct DiskState {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    dead: bool,
    // (owner, range, shared) of each lock held
    locks: Vec<(u64, Span, bool)>,
    next_owner: u64,
}

impl DiskState {
    /// Whether `owner` locking `span` conflicts with a lock another backend holds.
    fn conflicts(&self, owner: u64, (start, end): Span, shared: bool) -> bool {
        self.locks
            .iter()
            .any(|&(holder, (l_start, l_end), l_shared)| {
                holder != owner
                    && !(shared && l_shared)
                    && end.is_none_or(|end| l_start < end)
                    && l_end.is_none_or(|l_end| start < l_end)
            })
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<DiskState>,
    unlocked: Condvar,
    faults: FaultSwitch,
    /// The second file of this disk (the store's commit log), made on first use; it shares
    /// the fault switch and crashes with this one.
    log: Mutex<Option<SimDisk>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dead = self.state.lock().dead;
        f.debug_struct("SimDisk")
            .field("dead", &dead)
            .finish_non_exhaustive()
    }
}

/// Deterministic splitmix64 generator.
struct SplitMix64(u64);

impl SplitMix64 {
    /// A value in `0..n`, for `n` > 0.
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn write_at(image: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if end > image.len() {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(data);
}

fn apply(image: &mut Vec<u8>, change: &Pending) {
    match change {
        Pending::Write(offset, data) => write_at(image, *offset, data),
        Pending::SetLen(len) => image.resize(*len, 0),
    }
}

/// Cloneable handle to a simulated in-memory disk; clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    shared: Arc<Shared>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        Self::default()
    }

    /// A disk whose live and durable images are both `image`.
    pub fn from_image(image: Vec<u8>) -> SimDisk {
        Self::with_image(image, FaultSwitch::new())
    }

    fn with_image(image: Vec<u8>, faults: FaultSwitch) -> SimDisk {
        let disk = SimDisk {
            shared: Arc::new(Shared {
                faults,
                ..Shared::default()
            }),
        };
        let mut s = disk.shared.state.lock();
        (s.live, s.durable) = (image.clone(), image);
        drop(s);
        disk
    }

    /// The disk's second file, for a store's commit log: it shares this disk's fault switch
    /// (counts and faults cover both files) and [`crash`](Self::crash) takes both down.
    pub fn log_disk(&self) -> SimDisk {
        self.shared
            .log
            .lock()
            .get_or_insert_with(|| SimDisk::with_image(Vec::new(), self.faults()))
            .clone()
    }

    /// A backend over [`log_disk`](Self::log_disk).
    pub fn log_backend(&self) -> SimBackend {
        self.log_disk().backend()
    }

    /// A new [`StorageBackend`] over this disk, for `Builder::create_with_backend`. Each backend
    /// is a separate lock owner, like a separately opened file.
    pub fn backend(&self) -> SimBackend {
        let mut s = self.shared.state.lock();
        s.next_owner += 1;
        let (shared, owner) = (self.shared.clone(), s.next_owner);
        SimBackend { shared, owner }
    }

    /// Simulates a power loss. Returns a new, independent disk holding the durable image plus a
    /// pseudo-random subset (deterministic in `seed`) of the writes since the last sync, each
    /// possibly torn at [`SECTOR_SIZE`] granularity, applied in random order. Its length is the
    /// durable length or one the live image had after an unsynced operation. This disk is marked
    /// dead: every later operation of its backends fails with [`crashed_disk`]. Calling `crash`
    /// again on the dead disk yields other outcomes of the same power loss. The
    /// [`log_disk`](Self::log_disk), if any, crashes too (with its own subset of unsynced writes)
    /// and becomes the new disk's.
    pub fn crash(&self, seed: u64) -> SimDisk {
        let crashed = SimDisk::from_image(self.crash_image(seed));
        let log = self.shared.log.lock().clone();
        if let Some(log) = log {
            let image = log.crash_image(seed ^ 0x0005_EED0_F106);
            *crashed.shared.log.lock() = Some(SimDisk::with_image(image, crashed.faults()));
        }
        crashed
    }

    /// What [`crash`](Self::crash) leaves of this file.
    fn crash_image(&self, seed: u64) -> Vec<u8> {
        let mut s = self.shared.state.lock();
        s.dead = true;
        self.shared.unlocked.notify_all();
        let mut rng = SplitMix64(seed);
        // Per-crash odds, in quarters, so that the seeds also cover "none" and "all" kept
        let (keep, tear) = (rng.below(5), rng.below(3));
        let mut lens = vec![s.durable.len()];
        for change in &s.pending {
            let len = match change {
                Pending::SetLen(len) => *len,
                Pending::Write(offset, data) => (offset + data.len()).max(lens[lens.len() - 1]),
            };
            lens.push(len);
        }
        let final_len = lens[rng.below(lens.len())];
        let mut chosen: Vec<(usize, &[u8])> = Vec::new();
        for change in &s.pending {
            if let Pending::Write(offset, data) = change
                && rng.below(4) < keep
            {
                chosen.push((*offset, data));
            }
        }
        for i in (1..chosen.len()).rev() {
            chosen.swap(i, rng.below(i + 1));
        }
        let mut image = s.durable.clone();
        for (offset, data) in chosen {
            let torn = rng.below(4) < tear;
            let mut pos = offset;
            while pos < offset + data.len() {
                let next = ((pos / SECTOR_SIZE + 1) * SECTOR_SIZE).min(offset + data.len());
                if !torn || rng.below(2) == 0 {
                    write_at(&mut image, pos, &data[pos - offset..next - offset]);
                }
                pos = next;
            }
        }
        image.resize(final_len, 0);
        image
    }

    /// The fault switch of this disk's backends (also for [`FaultSwitch::set_space_limit`]).
    pub fn faults(&self) -> FaultSwitch {
        self.shared.faults.clone()
    }

    /// See [`FaultSwitch::fail_nth`].
    pub fn fail_nth(&self, op: Op, n: u64) {
        self.shared.faults.fail_nth(op, n);
    }

    /// See [`FaultSwitch::fail_from`].
    pub fn fail_from(&self, op: Op, n: u64) {
        self.shared.faults.fail_from(op, n);
    }

    /// See [`FaultSwitch::heal`].
    pub fn heal(&self) {
        self.shared.faults.heal();
    }

    /// See [`FaultSwitch::counts`].
    pub fn counts(&self) -> OpCounts {
        self.shared.faults.counts()
    }

    /// Length of the live image.
    pub fn size(&self) -> u64 {
        self.shared.state.lock().live.len() as u64
    }

    /// Length of the durable image.
    pub fn durable_len(&self) -> u64 {
        self.shared.state.lock().durable.len() as u64
    }

    /// Number of writes and `set_len`s since the last sync.
    pub fn unsynced_ops(&self) -> usize {
        self.shared.state.lock().pending.len()
    }
}

/// A [`StorageBackend`] over a [`SimDisk`], created by [`SimDisk::backend`].
#[derive(Debug)]
pub struct SimBackend {
    shared: Arc<Shared>,
    owner: u64,
}

/// The [`Span`] of a lock range.
fn lock_span(start: Bound<u64>, end: Bound<u64>) -> Result<Span, BackendError> {
    let start = match start {
        Bound::Unbounded => 0,
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
    };
    let end = match end {
        Bound::Unbounded => None,
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(e),
    };
    if end.is_some_and(|end| start >= end) {
        let err = io::Error::new(io::ErrorKind::InvalidInput, "empty lock range");
        return Err(BackendError::Io(err));
    }
    Ok((start, end))
}

fn to_usize(value: u64) -> io::Result<usize> {
    usize::try_from(value).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too large"))
}

impl SimBackend {
    fn state(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let s = self.shared.state.lock();
        if s.dead { Err(crashed_disk()) } else { Ok(s) }
    }

    /// Takes a lock, waiting for conflicting ones to go if `wait`; `Ok(false)` on a conflict.
    fn lock(&self, start: Bound<u64>, end: Bound<u64>, shared: bool, wait: bool) -> LockResult {
        let span = lock_span(start, end)?;
        let mut s = self.shared.state.lock();
        loop {
            if s.dead {
                return Err(BackendError::Io(crashed_disk()));
            }
            if !s.conflicts(self.owner, span, shared) {
                s.locks.push((self.owner, span, shared));
                return Ok(true);
            }
            if !wait {
                return Ok(false);
            }
            self.shared.unlocked.wait(&mut s);
        }
    }
}

type LockResult = Result<bool, BackendError>;

impl StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state()?.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.state()?;
        self.shared.faults.check(Op::Read, None)?;
        let start = to_usize(offset)?;
        let data = s.live.get(start..start + out.len());
        out.copy_from_slice(data.ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state()?;
        self.shared.faults.check(Op::SetLen, Some(len))?;
        let change = Pending::SetLen(to_usize(len)?);
        apply(&mut s.live, &change);
        s.pending.push(change);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state()?;
        self.shared.faults.check(Op::Sync, None)?;
        let s = &mut *s;
        for change in s.pending.drain(..) {
            apply(&mut s.durable, &change);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state()?;
        let end = offset.saturating_add(data.len() as u64);
        self.shared.faults.check(Op::Write, Some(end))?;
        to_usize(end)?;
        let change = Pending::Write(offset as usize, data.to_vec());
        apply(&mut s.live, &change);
        s.pending.push(change);
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        let mut s = self.shared.state.lock();
        s.locks.retain(|l| l.0 != self.owner);
        self.shared.unlocked.notify_all();
        if s.dead { Err(crashed_disk()) } else { Ok(()) }
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult {
        self.lock(start, end, false, false)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult {
        self.lock(start, end, true, false)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.lock(start, end, false, true).map(drop)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.lock(start, end, true, true).map(drop)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        let span = lock_span(start, end)?;
        let mut s = self.state()?;
        let owner = self.owner;
        if let Some(i) = s.locks.iter().position(|l| (l.0, l.1) == (owner, span)) {
            s.locks.remove(i);
        }
        self.shared.unlocked.notify_all();
        Ok(())
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult {
        let span = lock_span(start, end)?;
        Ok(self.state()?.conflicts(self.owner, span, false))
    }
}

/// A redb [`FileBackend`] with fault injection. Every method, the lock methods and `close`
/// included, is forwarded, so redb's exclusive-open guarantee holds as for a plain file.
#[derive(Debug)]
pub struct FaultyFile {
    inner: FileBackend,
    switch: FaultSwitch,
}

impl FaultyFile {
    /// Wraps `file`, with faults driven by `switch`.
    pub fn new(file: File, switch: FaultSwitch) -> Result<FaultyFile, DatabaseError> {
        let inner = FileBackend::new(file)?;
        Ok(FaultyFile { inner, switch })
    }

    /// Opens or creates the file at `path` as `Builder::create` does, and wraps it.
    pub fn open(path: impl AsRef<Path>, switch: FaultSwitch) -> Result<FaultyFile, DatabaseError> {
        let mut options = OpenOptions::new();
        let file = options
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Self::new(file, switch)
    }

    /// The fault switch of this backend.
    pub fn switch(&self) -> FaultSwitch {
        self.switch.clone()
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.switch.check(Op::Read, None)?;
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.switch.check(Op::SetLen, Some(len))?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.switch.check(Op::Sync, None)?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset.saturating_add(data.len() as u64);
        self.switch.check(Op::Write, Some(end))?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> LockResult {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Builder, Database, Durability, ReadableDatabase, TableDefinition};
    use std::ops::Range;

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
    const IMMEDIATE: Durability = Durability::Immediate;

    fn value(k: u64) -> Vec<u8> {
        (0..(k % 5 + 1) * 900)
            .map(|i| (k * 131 + i) as u8)
            .collect()
    }

    fn open(disk: &SimDisk) -> Result<Database, DatabaseError> {
        Builder::new().create_with_backend(disk.backend())
    }

    fn put(db: &Database, keys: Range<u64>, durability: Durability) -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        let mut table = txn.open_table(TABLE)?;
        for k in keys {
            table.insert(k, value(k).as_slice())?;
        }
        drop(table);
        Ok(txn.commit()?)
    }

    /// How many of `keys` are present; panics if a present value is not intact.
    fn present(db: &Database, keys: Range<u64>) -> usize {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        let intact = |k| {
            table
                .get(k)
                .unwrap()
                .map(|v| assert_eq!(v.value(), value(k)))
        };
        keys.filter(|&k| intact(k).is_some()).count()
    }

    fn is_injected(result: Result<(), redb::Error>) -> bool {
        matches!(result, Err(redb::Error::Io(e)) if e.to_string() == "injected fault")
    }

    /// A disk with 0..20 committed durably, and the open database.
    fn baseline() -> (SimDisk, Database) {
        let disk = SimDisk::new();
        let db = open(&disk).unwrap();
        put(&db, 0..20, IMMEDIATE).unwrap();
        (disk, db)
    }

    /// Operations of kind `op` that committing 20..40 after the baseline takes.
    fn ops_of_commit(op: Op) -> u64 {
        let (disk, db) = baseline();
        let before = disk.counts().get(op);
        put(&db, 20..40, IMMEDIATE).unwrap();
        disk.counts().get(op) - before
    }

    #[test]
    fn crash_keeps_sectors_whole_and_tears_writes() {
        let disk = SimDisk::new();
        let backend = disk.backend();
        backend.write(0, &[1; 2048]).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, &[2; 2048]).unwrap();
        backend.set_len(4096).unwrap();
        let (mut torn, mut lens) = (false, Vec::new());
        for seed in 0..64 {
            let crashed = disk.crash(seed).backend();
            let len = crashed.len().unwrap() as usize;
            let mut image = vec![0; len];
            crashed.read(0, &mut image).unwrap();
            let sectors: Vec<u8> = image.chunks(SECTOR_SIZE).map(|s| s[0]).collect();
            assert!(
                image
                    .chunks(SECTOR_SIZE)
                    .all(|s| s.iter().all(|b| *b == s[0]))
            );
            assert!(sectors[..4].iter().all(|b| *b == 1 || *b == 2));
            torn |= sectors[..4].contains(&1) && sectors[..4].contains(&2);
            lens.push(len);
        }
        assert!(torn && lens.contains(&2048) && lens.contains(&4096));
        assert!(backend.write(0, &[3]).is_err() && backend.len().is_err());
    }

    #[test]
    fn durable_commits_survive_a_crash_at_every_point() {
        let ops = ops_of_commit(Op::Any);
        assert!(ops > 0);
        for n in 1..=ops + 1 {
            let (disk, db) = baseline();
            // The machine stops at the n-th operation of the commit, then the power goes
            disk.fail_from(Op::Any, n);
            let committed = put(&db, 20..40, IMMEDIATE).is_ok();
            assert_eq!(committed, n > ops);
            for seed in 0..4 {
                let db = open(&disk.crash(n * 16 + seed)).unwrap();
                assert_eq!(present(&db, 0..20), 20);
                let second = present(&db, 20..40);
                assert!(second == 0 || second == 20, "partial commit: {second}");
                assert!(!committed || second == 20);
                put(&db, 40..41, IMMEDIATE).unwrap();
            }
        }
    }

    #[test]
    fn non_durable_commits_may_be_lost_durable_ones_never() {
        let disk = SimDisk::new();
        // A small cache makes redb write the non-durable commits out, unsynced
        let mut builder = Builder::new();
        let db = builder
            .set_cache_size(64 << 10)
            .create_with_backend(disk.backend());
        let db = db.unwrap();
        put(&db, 0..20, IMMEDIATE).unwrap();
        put(&db, 20..40, Durability::None).unwrap();
        put(&db, 40..60, Durability::None).unwrap();
        assert!(disk.unsynced_ops() > 0);
        let mut lost = 0;
        for seed in 0..32 {
            let db = open(&disk.crash(seed)).unwrap();
            assert_eq!(present(&db, 0..20), 20);
            lost += usize::from(present(&db, 20..60) < 40);
        }
        assert!(lost > 0);
        // The database of the crashed machine can no longer touch any disk
        let err = put(&db, 60..61, IMMEDIATE).unwrap_err();
        assert!(matches!(err, redb::Error::Io(e) if e.to_string() == crashed_disk().to_string()));
    }

    #[test]
    fn second_open_is_refused_while_the_first_is_alive() {
        let disk = SimDisk::new();
        let db = open(&disk).unwrap();
        assert!(matches!(
            open(&disk),
            Err(DatabaseError::DatabaseAlreadyOpen)
        ));
        let read_only = Builder::new().open_read_only_with_backend(disk.backend());
        assert!(matches!(read_only, Err(DatabaseError::DatabaseAlreadyOpen)));
        drop(db);
        put(&open(&disk).unwrap(), 0..1, IMMEDIATE).unwrap();
    }

    #[test]
    fn injected_faults_fail_the_commit_and_keep_earlier_data() {
        for op in [Op::Write, Op::SetLen, Op::Sync] {
            for n in 1..=ops_of_commit(op) {
                let (disk, db) = baseline();
                disk.fail_nth(op, n);
                assert!(is_injected(put(&db, 20..40, IMMEDIATE)), "{op:?} {n}");
                disk.heal();
                // redb refuses to go on after an I/O error, until it is reopened
                let after = put(&db, 40..41, IMMEDIATE);
                assert!(matches!(after, Err(redb::Error::PreviousIo)), "{after:?}");
                drop(db);
                let db = open(&disk).unwrap();
                assert_eq!(present(&db, 0..20), 20);
                let second = present(&db, 20..40);
                assert!(second == 0 || second == 20, "partial commit: {second}");
            }
        }
    }

    #[test]
    fn faulty_file_forwards_locks_and_fills_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let switch = FaultSwitch::new();
        let backend = FaultyFile::open(&path, switch.clone()).unwrap();
        let db = Builder::new().create_with_backend(backend).unwrap();
        let second = Database::create(&path);
        assert!(matches!(second, Err(DatabaseError::DatabaseAlreadyOpen)));
        put(&db, 0..20, IMMEDIATE).unwrap();

        switch.set_space_limit(Some(std::fs::metadata(&path).unwrap().len()));
        let err = put(&db, 20..200, IMMEDIATE).unwrap_err();
        assert!(matches!(&err, redb::Error::Io(e) if e.kind() == io::ErrorKind::StorageFull));
        switch.heal();
        drop(db);

        let db =
            Builder::new().create_with_backend(FaultyFile::open(&path, switch.clone()).unwrap());
        let db = db.unwrap();
        assert_eq!(present(&db, 0..20), 20);
        switch.fail_nth(Op::Sync, 1);
        assert!(is_injected(put(&db, 20..40, IMMEDIATE)));
        drop(db);
        assert_eq!(present(&Database::open(&path).unwrap(), 0..20), 20);
    }
}
