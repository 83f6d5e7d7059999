//! A snapshot of the directory, written at a clean close of a large store, so that the next
//! open reads 47 bytes per live key instead of scanning, checking and decoding every record
//! (at 10 M keys: one 470 MB sequential read instead of a 1 GB B-tree scan).
//!
//! File `<path>-snapshot`, little-endian:
//! ```text
//! header  = "IDEMSNAP" | version u32 | shards u32 | id u64 | digest seeds 2 x u64
//!           | count u64 per shard | xxh3-64 of the header bytes before it
//! section = for each shard in order: its entries | xxh3-64 of those entries
//! entry   = digest u128 | slot (31 bytes, see `Slot::to_bytes`)
//! ```
//! The digests are keyed by the seeds of the open that wrote them, which the next open adopts.
//!
//! The snapshot is derived data; the store file stays the truth. The close writes and syncs it
//! and only then commits its random `id` into the store file's meta table, in the commit that
//! ends the store's life (the log fully applied). Every open commits id 0 before anything can
//! change the file again, and removes the snapshot. An open uses a snapshot only when its id is
//! the one in the meta table and the log replayed nothing; anything else (no file, another id,
//! a short file, a checksum or content that does not hold) falls back to the scan.

use crate::error::{Error, Result};
use crate::index::{Index, SLOT_BYTES, SNAPSHOT_SHARDS as SHARDS, Slot};
use crate::key::KeySeeds;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"IDEMSNAP";
const VERSION: u32 = 1;
const ENTRY: usize = 16 + SLOT_BYTES;
const HEADER: usize = 8 + 4 + 4 + 8 + 16 + 8 * SHARDS + 8;

/// `<path>-snapshot`.
pub(crate) fn path_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-snapshot");
    name.into()
}

/// Removes the snapshot of the store file at `path` and any half-written one, if there.
pub(crate) fn remove(path: &Path) {
    let target = path_for(path);
    let _ = std::fs::remove_file(tmp_for(&target));
    let _ = std::fs::remove_file(target);
}

fn tmp_for(target: &Path) -> PathBuf {
    let mut tmp = target.as_os_str().to_os_string();
    tmp.push(".tmp");
    tmp.into()
}

/// A nonzero random id.
pub(crate) fn new_id() -> u64 {
    crate::log::new_generation() | 1
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Writes the snapshot of `index` for the store file at `path` under `id`: to a temporary
/// file, synced, then renamed into place.
pub(crate) fn write(path: &Path, index: &Index, seeds: &KeySeeds, id: u64) -> Result<()> {
    let target = path_for(path);
    let tmp = tmp_for(&target);
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(SHARDS as u32).to_le_bytes());
        header.extend_from_slice(&id.to_le_bytes());
        for part in seeds.parts() {
            header.extend_from_slice(&part.to_le_bytes());
        }
        for i in 0..SHARDS {
            header.extend_from_slice(&(index.shard_len(i) as u64).to_le_bytes());
        }
        let sum = xxh3(&header);
        header.extend_from_slice(&sum.to_le_bytes());
        out.write_all(&header)?;
        let mut section = Vec::new();
        for i in 0..SHARDS {
            section.clear();
            index.for_each_in_shard(i, |digest, slot| {
                section.extend_from_slice(&digest.to_le_bytes());
                section.extend_from_slice(&slot.to_bytes());
            });
            out.write_all(&section)?;
            out.write_all(&xxh3(&section).to_le_bytes())?;
        }
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::Io)?;
    crate::storage::sync_parent(&target)
}

fn corrupt(detail: &str) -> Error {
    Error::Corrupt {
        detail: format!("directory snapshot: {detail}"),
    }
}

/// The seeds and counts of a header, when it is one of snapshot `id`.
pub(crate) fn parse_header(bytes: &[u8], id: u64) -> Result<(KeySeeds, Vec<u64>)> {
    let bytes = bytes.get(..HEADER).ok_or_else(|| corrupt("short header"))?;
    let (body, sum) = bytes.split_at(HEADER - 8);
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    if &body[..8] != MAGIC || u32_at(8) != VERSION || u32_at(12) as usize != SHARDS {
        return Err(corrupt("not a snapshot of this version"));
    }
    if xxh3(body).to_le_bytes() != sum {
        return Err(corrupt("header checksum"));
    }
    if u64_at(16) != id {
        return Err(corrupt("written for another state of the store file"));
    }
    let seeds = KeySeeds::from_parts([u64_at(24), u64_at(32)]);
    Ok((seeds, (0..SHARDS).map(|i| u64_at(40 + 8 * i)).collect()))
}

/// The rows of one section (its entries and checksum), checked.
pub(crate) fn parse_section(bytes: &[u8]) -> Result<Vec<(u128, Slot)>> {
    let Some((entries, sum)) = bytes.split_last_chunk::<8>() else {
        return Err(corrupt("short section"));
    };
    if entries.len() % ENTRY != 0 || xxh3(entries).to_le_bytes() != *sum {
        return Err(corrupt("section checksum"));
    }
    entries
        .chunks_exact(ENTRY)
        .map(|e| {
            let digest = u128::from_le_bytes(e[..16].try_into().expect("16 bytes"));
            let slot = Slot::from_bytes_next_epoch(e[16..].try_into().expect("slot bytes"))
                .ok_or_else(|| corrupt("a slot no directory holds"))?;
            Ok((digest, slot))
        })
        .collect()
}

/// Fills the fresh directory `index` from the snapshot `id` of the store file at `path`, which
/// holds `records` records (a directory has at most one key per record), sections filed by two
/// threads; answers the digest seeds to use from now on, the number of keys and the highest
/// token. On an error the directory may be partly filled.
pub(crate) fn load(
    path: &Path,
    id: u64,
    records: u64,
    index: &Index,
) -> Result<(KeySeeds, u64, u64)> {
    let file = std::fs::File::open(path_for(path)).map_err(Error::Io)?;
    let mut header = vec![0u8; HEADER];
    crate::log::read_at(&file, &mut header, 0).map_err(Error::Io)?;
    let (seeds, counts) = parse_header(&header, id)?;
    if counts.iter().try_fold(0u64, |sum, &n| sum.checked_add(n)) > Some(records) {
        return Err(corrupt("more keys than the store file has records"));
    }
    let mut offsets = Vec::with_capacity(SHARDS);
    let mut at = HEADER as u64;
    for &n in &counts {
        offsets.push(at);
        let len = n
            .checked_mul(ENTRY as u64)
            .and_then(|l| l.checked_add(8))
            .ok_or_else(|| corrupt("count out of range"))?;
        at = at
            .checked_add(len)
            .ok_or_else(|| corrupt("count out of range"))?;
    }
    if at != file.metadata().map_err(Error::Io)?.len() {
        return Err(corrupt("length differs from its header"));
    }
    let part = |first: usize| -> Result<(u64, u64)> {
        let (mut keys, mut max_token) = (0u64, 0u64);
        for i in (first..SHARDS).step_by(2) {
            let len = usize::try_from(counts[i] * ENTRY as u64 + 8)
                .map_err(|_| corrupt("section too large"))?;
            let mut bytes = vec![0u8; len];
            crate::log::read_at(&file, &mut bytes, offsets[i]).map_err(Error::Io)?;
            let rows = parse_section(&bytes)?;
            drop(bytes);
            keys += rows.len() as u64;
            max_token = rows
                .iter()
                .map(|(_, s)| s.token())
                .fold(max_token, u64::max);
            if !index.fill_shard(i, rows.into_iter()) {
                return Err(corrupt("a key twice, or in the wrong section"));
            }
        }
        Ok((keys, max_token))
    };
    let (a, b) = std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("idemstore-load".into())
            .spawn_scoped(scope, || part(1));
        let a = part(0);
        let b = match other {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(corrupt("the loading thread panicked"))),
            // No second thread: this one does the odd sections too.
            Err(_) => part(1),
        };
        (a, b)
    });
    let ((ka, ta), (kb, tb)) = (a?, b?);
    Ok((seeds, ka + kb, ta.max(tb)))
}

/// See `codec::probe::snapshot_any`. For the codec fuzz target: parses arbitrary bytes as a header and as a section (with its
/// checksum made valid first when `reseal`, so the damage reaches the slot checks); never
/// panics, and what parses re-encodes to the same bytes (apart from the epoch flag). Answers
/// whether the section parsed.
#[cfg(feature = "test-util")]
pub(crate) fn probe(data: &mut Vec<u8>, reseal: bool) -> bool {
    use crate::index::EARLIER_EPOCH;
    let id = data
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let _ = parse_header(data, id);
    if reseal {
        data.truncate(data.len() / ENTRY * ENTRY);
        let sum = xxh3(data);
        data.extend_from_slice(&sum.to_le_bytes());
    }
    let Ok(rows) = parse_section(data) else {
        return false;
    };
    for ((digest, slot), bytes) in rows.iter().zip(data.chunks_exact(ENTRY)) {
        assert_eq!(digest.to_le_bytes(), bytes[..16]);
        let mut again = slot.to_bytes();
        again[SLOT_BYTES - 1] =
            (again[SLOT_BYTES - 1] & !EARLIER_EPOCH) | (bytes[ENTRY - 1] & EARLIER_EPOCH);
        assert_eq!(again, bytes[16..], "a slot re-encodes to its bytes");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_of_another_id_or_damaged_is_refused() {
        let index = Index::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s");
        write(&path, &index, &KeySeeds::new(), 7).expect("write");
        let mut bytes = std::fs::read(path_for(&path)).expect("read");
        assert_eq!(bytes.len(), HEADER + 8 * SHARDS);
        assert!(parse_header(&bytes, 7).is_ok());
        assert!(parse_header(&bytes, 8).is_err());
        bytes[30] ^= 1;
        assert!(parse_header(&bytes, 7).is_err());
        assert!(parse_header(&bytes[..HEADER - 1], 7).is_err());
    }

    #[cfg(feature = "test-util")]
    #[test]
    fn the_fuzz_probe_accepts_a_real_section() {
        use crate::machine::{Entry, State};
        let index = Index::new();
        for (i, in_flight) in [(1u64, true), (2, false)] {
            let entry = Entry {
                expires_at: 10_000 + i,
                fingerprint: None,
                token: i,
                attempt: 1,
                state: if in_flight {
                    State::InFlight {
                        lease_until: 9_000,
                        epoch: 3,
                    }
                } else {
                    State::Completed { completed_at: 5 }
                },
            };
            index.set(u128::from(i) << 122, Some(Slot::new(&entry, 3)));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s");
        write(&path, &index, &KeySeeds::new(), 7).expect("write");
        let bytes = std::fs::read(path_for(&path)).expect("read");
        assert!(
            load(&path, 7, 1, &Index::new()).is_err(),
            "two keys, one record"
        );
        // Shards 1 and 2 hold one entry each.
        let first = HEADER + 8;
        let mut section = bytes[first..first + ENTRY + 8].to_vec();
        assert!(probe(&mut section.clone(), false));
        assert!(probe(&mut section, true));
        let loaded = Index::new();
        let (_, keys, max_token) = load(&path, 7, 2, &loaded).expect("load");
        assert_eq!((keys, max_token, loaded.in_flight()), (2, 2, 1));
    }
}
