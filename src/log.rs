//! The commit log in front of redb (with `Durability::Immediate`).
//!
//! A durable redb commit writes every page its transaction touched (about seven scattered
//! 4 KiB pages for one claim among a million keys) and then syncs. With the log, the rows a
//! batch wrote or removed are appended to this file as one frame, followed by one fdatasync,
//! and the batch's callers are answered; its rows then reach redb through the stage
//! (`stage.rs`: applied in bulk without a sync, `Durability::None`, in memory only). When the
//! log is full, the batch and everything staged are committed durably to redb instead (a
//! *checkpoint*) and the log starts over from its beginning.
//! Opening the store replays the current generation's frames and checkpoints.
//!
//! ```text
//! frame  = header (40 bytes) | payload | zeros up to a multiple of 4 KiB
//! header = magic "IDLG" | version u8 | 3 zero bytes | generation u64 | number u64
//!        | payload length u32 | entry count u32 | xxh3-64 of (header bytes 0..32, payload)
//! entry  = table u8 | key length u32 | key | 0 (remove) or 1 (put) [| value length u32 | value]
//! ```
//! Integers are little-endian.
//!
//! A *generation* is one interval between checkpoints: redb's meta table holds the current
//! one, every checkpoint (the open's included) draws a new random one, and each generation
//! writes its frames from offset 0, numbered 0, 1, 2, ... Random rather than counted: a copy
//! of a closed store file restored beside a log that a later life of the same store wrote
//! would otherwise start the very generation whose frames that log holds.
//!
//! A batch's frame is appended and synced *before* its redb commit, so redb never holds a
//! batch that the log lacks, even when redb makes pending non-durable commits durable as a
//! database is dropped (it does unless it has seen an I/O error). Between two checkpoints the
//! frames are the only writes to redb's rows (but the metadata checksum, which every commit
//! recomputes), so redb holds the checkpoint's state plus frames `0..m` for some `m` no
//! greater than the log's synced frames. Replay therefore applies the generation's frames from
//! the first, whatever redb kept: every entry is a whole-row put or a remove, so applying
//! frames `0..n` (`n >= m`) in order over that state leaves the same rows as applying them
//! over the checkpoint's (for each row, the last write wins). (Before this order the redb
//! commit came first, and every commit recorded in redb how many frames its state included,
//! `log_applied`, for replay to start after them: a failed append could leave redb with a
//! batch whose frame never reached the log, and replaying older frames over it would have
//! undone part of it. A file written then may hold such a count; replay starts after it.)
//!
//! A clean close checkpoints and sets `log_applied` to `u64::MAX`: the next open does not read
//! the log at all.
//!
//! Replay reads the frames of the current generation in order and stops at the first that is
//! missing, torn or of an older generation. A frame is written only after the one before it
//! was synced, so a valid frame *after* a damaged one means that an acknowledged frame was
//! damaged: that is reported as corruption rather than silently dropping what follows. Frames
//! start on 4 KiB boundaries, so a torn write never touches an earlier, acknowledged frame.

use crate::error::{Error, Result};
use redb::StorageBackend;

/// Frames start at multiples of this.
pub(crate) const BLOCK: u64 = 4096;
const MAGIC: [u8; 4] = *b"IDLG";
const VERSION: u8 = 1;
const HEADER: usize = 40;
/// The log grows zero-filled (so that later appends overwrite allocated blocks and their sync
/// writes no file metadata), doubling from this size, by at most `MAX_GROWTH` at a time.
const FIRST_SIZE: u64 = 64 << 10;
const MAX_GROWTH: u64 = 4 << 20;
/// Bytes read at a time when scanning.
const READ_CHUNK: u64 = 1 << 20;

/// The table an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogTable {
    /// `&str -> u64`; the value is 8 bytes.
    Meta = 0,
    /// `(u64, u64) -> &[u8]`; the key is 16 bytes, both big-endian.
    Records = 1,
    /// `&[u8] -> &[u8]`.
    ByKey = 2,
}

impl LogTable {
    fn of(byte: u8) -> Option<LogTable> {
        match byte {
            0 => Some(LogTable::Meta),
            1 => Some(LogTable::Records),
            2 => Some(LogTable::ByKey),
            _ => None,
        }
    }
}

/// One change read back from the log.
pub(crate) struct Entry<'a> {
    pub(crate) table: LogTable,
    pub(crate) key: &'a [u8],
    /// `None`: the row was removed.
    pub(crate) value: Option<&'a [u8]>,
}

/// The rows one batch changed, encoded as they are made (when `recording`: without a log, or
/// while replaying one, nothing is copied).
#[derive(Default)]
pub(crate) struct Changes {
    buf: Vec<u8>,
    count: u32,
    recording: bool,
}

impl Changes {
    fn entry(&mut self, table: LogTable, key: &[u8], value: Option<&[u8]>) {
        if !self.recording {
            return;
        }
        self.count += 1;
        self.buf.push(table as u8);
        self.buf.extend_from_slice(&len32(key.len()).to_le_bytes());
        self.buf.extend_from_slice(key);
        match value {
            None => self.buf.push(0),
            Some(v) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&len32(v.len()).to_le_bytes());
                self.buf.extend_from_slice(v);
            }
        }
    }

    pub(crate) fn put(&mut self, table: LogTable, key: &[u8], value: &[u8]) {
        self.entry(table, key, Some(value));
    }

    pub(crate) fn remove(&mut self, table: LogTable, key: &[u8]) {
        self.entry(table, key, None);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether these changes record and the batch changed nothing: its transaction is
    /// aborted, and it has nothing to make durable. (Changes that do not record say nothing
    /// about the transaction.)
    pub(crate) fn changed_nothing(&self) -> bool {
        self.recording && self.is_empty()
    }

    /// Empties these changes, keeping the buffer (and whether they record) for reuse; a
    /// buffer grown past 1 MiB (a batch of large responses) is given back.
    pub(crate) fn clear(&mut self) {
        const KEEP: usize = 1 << 20;
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.count = 0;
    }

    /// Bytes held.
    pub(crate) fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// These changes, emptied, recording from now on (a buffer reused from batch to batch).
    pub(crate) fn recycled(mut self) -> Changes {
        self.clear();
        self.recording = true;
        self
    }

    /// Appends `later`'s entries after these.
    pub(crate) fn append(&mut self, later: &Changes) {
        self.buf.extend_from_slice(&later.buf);
        self.count += later.count;
    }
}

/// Keys and values are bounded far below 4 GiB (`KEY_LEN_CEILING`, `RESPONSE_SIZE_CEILING`).
fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("keys and records are far below 4 GiB")
}

/// The time-ordered table's key as logged.
pub(crate) fn record_key(expires_at: u64, seq: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The inverse of [`record_key`].
pub(crate) fn parse_record_key(k: &[u8]) -> Option<(u64, u64)> {
    let (a, b) = k.split_first_chunk::<8>()?;
    let b: [u8; 8] = b.try_into().ok()?;
    Some((u64::from_be_bytes(*a), u64::from_be_bytes(b)))
}

fn frame_len(payload: usize) -> u64 {
    (HEADER as u64 + payload as u64).div_ceil(BLOCK) * BLOCK
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        detail: format!("commit log: {detail}"),
    }
}

/// The log of an open store; only the writer thread appends.
pub(crate) struct Log {
    file: Box<dyn StorageBackend>,
    generation: u64,
    /// Frames appended in this generation.
    number: u64,
    /// Where the next frame goes.
    offset: u64,
    /// Bytes of the file known to exist (written at least once).
    allocated: u64,
    capacity: u64,
    frame: Vec<u8>,
}

/// A generation for a new checkpoint interval: random (std's `RandomState` keys are drawn
/// from the OS once per thread and stepped for each new one), below 2^63.
pub(crate) fn new_generation() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8) >> 1
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("generation", &self.generation)
            .field("number", &self.number)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// A log that starts `generation` (just checkpointed: redb holds everything) at offset 0.
    pub(crate) fn new(
        file: Box<dyn StorageBackend>,
        generation: u64,
        capacity: u64,
    ) -> Result<Log> {
        let allocated = file.len().map_err(Error::Io)?;
        Ok(Log {
            file,
            generation,
            number: 0,
            offset: 0,
            allocated,
            capacity,
            frame: Vec::new(),
        })
    }

    /// Whether a frame of `changes` fits before the end of the log.
    pub(crate) fn fits(&self, changes: &Changes) -> bool {
        self.offset + frame_len(changes.buf.len()) <= self.capacity
    }

    /// Appends `changes` as the next frame and syncs it.
    pub(crate) fn append(&mut self, changes: &Changes) -> Result<()> {
        let f = &mut self.frame;
        f.clear();
        f.extend_from_slice(&MAGIC);
        f.extend_from_slice(&[VERSION, 0, 0, 0]);
        f.extend_from_slice(&self.generation.to_le_bytes());
        f.extend_from_slice(&self.number.to_le_bytes());
        f.extend_from_slice(&len32(changes.buf.len()).to_le_bytes());
        f.extend_from_slice(&changes.count.to_le_bytes());
        let mut sum = xxhash_rust::xxh3::Xxh3::new();
        sum.update(&f[..32]);
        sum.update(&changes.buf);
        f.extend_from_slice(&sum.digest().to_le_bytes());
        f.extend_from_slice(&changes.buf);
        let len = frame_len(changes.buf.len());
        f.resize(len as usize, 0);
        let end = self.offset + len;
        if end > self.allocated {
            let step = self.allocated.clamp(FIRST_SIZE, MAX_GROWTH);
            let grown = end.max((self.allocated + step).min(self.capacity));
            let zeros = vec![0; (grown - self.allocated).min(READ_CHUNK) as usize];
            let mut at = self.allocated;
            while at < grown {
                let n = (grown - at).min(zeros.len() as u64);
                self.file
                    .write(at, &zeros[..n as usize])
                    .map_err(Error::Io)?;
                at += n;
            }
            self.allocated = grown;
        }
        self.file
            .write(self.offset, &self.frame)
            .map_err(Error::Io)?;
        self.file.sync_data().map_err(Error::Io)?;
        self.offset = end;
        self.number += 1;
        Ok(())
    }

    /// Starts `generation` from the beginning of the file, after a checkpoint.
    pub(crate) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.number = 0;
        self.offset = 0;
    }
}

/// A frame header as read.
struct Header {
    generation: u64,
    number: u64,
    payload: u32,
    count: u32,
    sum: u64,
}

fn parse_header(h: &[u8]) -> Option<Header> {
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    if h.len() < HEADER || h[..4] != MAGIC || h[4] != VERSION {
        return None;
    }
    Some(Header {
        generation: u64_at(8),
        number: u64_at(16),
        payload: u32_at(24),
        count: u32_at(28),
        sum: u64_at(32),
    })
}

/// Reads `len` bytes at `offset`.
fn read(file: &dyn StorageBackend, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).map_err(|_| corrupt("frame too large".into()))?];
    file.read(offset, &mut buf).map_err(Error::Io)?;
    Ok(buf)
}

/// The frame of `generation` numbered `number` at `offset`, if one is there intact: its
/// header and payload.
fn frame_at(
    file: &dyn StorageBackend,
    file_len: u64,
    offset: u64,
    generation: u64,
    number: Option<u64>,
) -> Result<Option<(Header, Vec<u8>)>> {
    if offset + HEADER as u64 > file_len {
        return Ok(None);
    }
    let head = read(file, offset, HEADER as u64)?;
    let Some(h) = parse_header(&head) else {
        return Ok(None);
    };
    if h.generation != generation || number.is_some_and(|n| n != h.number) {
        return Ok(None);
    }
    let end = offset + HEADER as u64 + u64::from(h.payload);
    if end > file_len {
        return Ok(None);
    }
    let payload = read(file, offset + HEADER as u64, u64::from(h.payload))?;
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    sum.update(&head[..32]);
    sum.update(&payload);
    Ok((sum.digest() == h.sum).then_some((h, payload)))
}

/// See `codec::probe::reseal_log`.
#[cfg(feature = "test-util")]
pub(crate) fn reseal(image: &mut [u8]) {
    for at in (0..image.len()).step_by(BLOCK as usize) {
        let Some(h) = parse_header(&image[at..]) else {
            continue;
        };
        let payload = at + HEADER..(at + HEADER).saturating_add(h.payload as usize);
        let Some(payload) = image.get(payload) else {
            continue;
        };
        let mut sum = xxhash_rust::xxh3::Xxh3::new();
        sum.update(&image[at..at + 32]);
        sum.update(payload);
        let sum = sum.digest().to_le_bytes();
        image[at + 32..at + 40].copy_from_slice(&sum);
    }
}

/// Calls `apply` for each entry of the frames of `generation` numbered from `applied` on, in
/// order; returns how many frames were applied. See the module docs for where it stops and
/// what is corruption.
pub(crate) fn replay(
    file: &dyn StorageBackend,
    generation: u64,
    applied: u64,
    mut apply: impl FnMut(Entry<'_>) -> Result<()>,
) -> Result<u64> {
    let file_len = file.len().map_err(Error::Io)?;
    let (mut offset, mut number, mut replayed) = (0, 0, 0);
    while let Some((h, payload)) = frame_at(file, file_len, offset, generation, Some(number))? {
        if number >= applied {
            entries(&payload, h.count, &mut apply).map_err(|e| match e {
                Bad::Format(what) => corrupt(format!("frame {number}: {what}")),
                Bad::Apply(e) => e,
            })?;
            replayed += 1;
        }
        offset += frame_len(payload.len());
        number += 1;
    }
    // Nothing of this generation may follow. Read in large chunks; a block that starts like a
    // header of this generation is read in full.
    let mut chunk_at = offset + BLOCK;
    while chunk_at < file_len {
        let chunk = read(file, chunk_at, (file_len - chunk_at).min(READ_CHUNK))?;
        for (i, block) in chunk.chunks(BLOCK as usize).enumerate() {
            let looks_like = parse_header(block).is_some_and(|h| h.generation == generation);
            let at = chunk_at + i as u64 * BLOCK;
            if looks_like
                && let Some((h, _)) = frame_at(file, file_len, at, generation, None)?
                && h.number > number
                && h.number >= applied
            {
                return Err(corrupt(format!(
                    "frame {number} at byte {offset} is damaged but frame {} follows it",
                    h.number
                )));
            }
        }
        chunk_at += chunk.len() as u64;
    }
    Ok(replayed)
}

/// Applies the entries of `changes` (recorded in this process, so well-formed) in order.
pub(crate) fn apply_changes(
    changes: &Changes,
    mut apply: impl FnMut(Entry<'_>) -> Result<()>,
) -> Result<()> {
    entries(&changes.buf, changes.count, &mut apply).map_err(|e| match e {
        Bad::Format(what) => corrupt(format!("recorded changes: {what}")),
        Bad::Apply(e) => e,
    })
}

/// Why a frame's entries could not be applied.
enum Bad {
    /// The (checksummed) payload does not parse.
    Format(String),
    /// Applying an entry failed.
    Apply(Error),
}

impl From<String> for Bad {
    fn from(what: String) -> Bad {
        Bad::Format(what)
    }
}

fn entries(
    mut p: &[u8],
    count: u32,
    apply: &mut impl FnMut(Entry<'_>) -> Result<()>,
) -> std::result::Result<(), Bad> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], String> {
        if p.len() < n {
            return Err("entry runs past the frame".into());
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head)
    }
    fn len(p: &mut &[u8]) -> std::result::Result<usize, String> {
        let b = take(p, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    }
    for _ in 0..count {
        let table = take(&mut p, 1)?[0];
        let table = LogTable::of(table).ok_or_else(|| format!("unknown table {table}"))?;
        let n = len(&mut p)?;
        let key = take(&mut p, n)?;
        let value = match take(&mut p, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut p)?;
                Some(take(&mut p, n)?)
            }
            other => return Err(format!("unknown entry kind {other}").into()),
        };
        apply(Entry { table, key, value }).map_err(Bad::Apply)?;
    }
    if !p.is_empty() {
        return Err(Bad::Format("bytes after the last entry".into()));
    }
    Ok(())
}

/// The log file of a store at `path`.
pub(crate) fn path_for(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-log");
    name.into()
}

/// A plain file as a [`StorageBackend`] (positioned reads and writes; no locking: the store
/// opens its log only while it holds the database's lock).
///
/// On Linux, writes of whole aligned blocks (the frames) go through a second handle opened with
/// `O_DIRECT`: they skip the page cache and its writeback, and an append + fdatasync took
/// 186 us instead of 219 us (p50, alternating windows on this machine's ext4). The fdatasync
/// that follows still flushes the device's cache. Where the file system refuses `O_DIRECT`, at
/// open or on a write, every write is buffered.
#[derive(Debug)]
pub(crate) struct LogFile {
    file: std::fs::File,
    direct: parking_lot::Mutex<Option<Direct>>,
}

/// The `O_DIRECT` handle and a buffer to align what it writes.
#[derive(Debug)]
struct Direct {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl LogFile {
    /// Opens (creating it if needed) the log file at `path`.
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(LogFile {
            file,
            direct: parking_lot::Mutex::new(open_direct(path).map(|file| Direct {
                file,
                buf: Vec::new(),
            })),
        })
    }

    /// Writes `data` at `offset` through the `O_DIRECT` handle; `false` if it was not used.
    fn write_direct(&self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        if !offset.is_multiple_of(BLOCK) || !(data.len() as u64).is_multiple_of(BLOCK) {
            return Ok(false);
        }
        let mut direct = self.direct.lock();
        let Some(d) = direct.as_mut() else {
            return Ok(false);
        };
        // Direct I/O wants the memory aligned too: a block-aligned window of the buffer.
        d.buf.resize(data.len() + BLOCK as usize, 0);
        let start = d.buf.as_ptr().align_offset(BLOCK as usize);
        let aligned = &mut d.buf[start..start + data.len()];
        aligned.copy_from_slice(data);
        match write_at(&d.file, aligned, offset) {
            Ok(()) => Ok(true),
            // The file system wants other alignment or no direct I/O at all: buffered from now on.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                *direct = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &std::path::Path) -> Option<std::fs::File> {
    None
}

#[cfg(unix)]
pub(crate) fn read_at(file: &std::fs::File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, out, offset)
}

#[cfg(unix)]
fn write_at(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(windows)]
pub(crate) fn read_at(
    file: &std::fs::File,
    mut out: &mut [u8],
    mut offset: u64,
) -> std::io::Result<()> {
    while !out.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, out, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => (out, offset) = (&mut out[n..], offset + n as u64),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_at(file: &std::fs::File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        match std::os::windows::fs::FileExt::seek_write(file, data, offset)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => (data, offset) = (&data[n..], offset + n as u64),
        }
    }
    Ok(())
}

impl StorageBackend for LogFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        read_at(&self.file, out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.write_direct(offset, data)? {
            return Ok(());
        }
        write_at(&self.file, data, offset)
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;
    use crate::sim_disk::SimDisk;

    #[test]
    fn a_log_file_reads_back_what_it_wrote_direct_or_buffered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s-log");
        let log = LogFile::open(&path).expect("create");
        let block = |b: u8, n: usize| vec![b; n * BLOCK as usize];
        // Buffered zeros, then whole blocks over them (direct where the file system allows),
        // then an unaligned write (buffered) across a direct one.
        log.write(0, &block(0, 4)).expect("zeros");
        log.write(BLOCK, &block(7, 2)).expect("blocks");
        log.write(BLOCK * 2 + 10, &[9; 20]).expect("bytes");
        log.sync_data().expect("sync");
        let mut all = vec![0; 4 * BLOCK as usize];
        log.read(0, &mut all).expect("read");
        let mut expected = block(0, 4);
        expected[BLOCK as usize..3 * BLOCK as usize].fill(7);
        expected[2 * BLOCK as usize + 10..2 * BLOCK as usize + 30].fill(9);
        assert!(all == expected);
        assert_eq!(std::fs::read(&path).expect("read the file"), expected);
    }

    fn changes(n: usize) -> Changes {
        let mut c = Changes::default().recycled();
        for i in 0..n {
            c.put(LogTable::Records, &record_key(i as u64, 7), &[i as u8; 100]);
            c.remove(LogTable::ByKey, b"gone");
        }
        c
    }

    fn collect(disk: &SimDisk, generation: u64, applied: u64) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut out = Vec::new();
        replay(&disk.backend(), generation, applied, |e| {
            out.push((e.table as u8, e.value.map_or_else(Vec::new, <[u8]>::to_vec)));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn frames_round_trip_and_stop_at_an_older_generation() {
        let disk = SimDisk::new();
        let mut log = Log::new(Box::new(disk.backend()), 5, 1 << 20).unwrap();
        log.append(&changes(1)).unwrap();
        log.append(&changes(50)).unwrap();
        assert_eq!(collect(&disk, 5, 0).unwrap().len(), 102);
        // Frames before `applied` are skipped (a count a file written before the frame-first
        // order may hold).
        assert_eq!(collect(&disk, 5, 1).unwrap().len(), 100);
        // A new generation overwrites the start; the older frames after it are ignored.
        log.restart(6);
        log.append(&changes(1)).unwrap();
        assert_eq!(collect(&disk, 6, 0).unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_frame_with_frames_after_it_is_corruption() {
        let disk = SimDisk::new();
        let mut log = Log::new(Box::new(disk.backend()), 1, 1 << 20).unwrap();
        for _ in 0..3 {
            log.append(&changes(1)).unwrap();
        }
        // Damage the first frame's payload.
        use redb::StorageBackend;
        disk.backend().write(HEADER as u64 + 3, &[0xff]).unwrap();
        let err = collect(&disk, 1, 0).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        // The last frame damaged: a torn, unacknowledged append; replay stops before it.
        let disk = SimDisk::new();
        let mut log = Log::new(Box::new(disk.backend()), 1, 1 << 20).unwrap();
        for _ in 0..3 {
            log.append(&changes(1)).unwrap();
        }
        disk.backend()
            .write(2 * BLOCK + HEADER as u64 + 3, &[0xff])
            .unwrap();
        assert_eq!(collect(&disk, 1, 0).unwrap().len(), 4);
    }

    #[test]
    fn a_full_log_refuses_frames() {
        let disk = SimDisk::new();
        let mut log = Log::new(Box::new(disk.backend()), 1, 2 * BLOCK).unwrap();
        assert!(log.fits(&changes(1)));
        log.append(&changes(1)).unwrap();
        log.append(&changes(1)).unwrap();
        assert!(!log.fits(&changes(1)));
        assert_eq!(disk.size(), 2 * BLOCK);
    }
}
