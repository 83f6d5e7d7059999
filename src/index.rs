//! The in-memory directory of live keys: key digest → where the record is and what it says.
//!
//! Only the holder of the writer's lock changes it, and only after the commit that wrote the
//! change returned (nothing is published before it is on disk); in bounded mode, once the
//! change's rows are staged for the file (`stage.rs`). Claim losers (in flight, mismatch,
//! replay) are answered from here without touching the writer.

use crate::clock::Millis;
use crate::key::Fingerprint;
use crate::machine::{Entry, State};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SHARDS: usize = 64;
/// A shard left with under a quarter of its room (and room for more than this) after a
/// removal shrinks to twice its keys: a spike of keys that expired gives its memory back.
/// Halving at a quarter, doubling when full: no size is paid for twice in a row.
const SHRINK_ABOVE: usize = 64;

/// What the directory keeps per live key: the decision-relevant part of its record, packed
/// into 32 bytes (plus the 16-byte digest it is filed under: 49 bytes per hash-table bucket
/// with its control byte).
///
/// The record's position in the time-ordered table is `(expires_at, token)`: a record keeps its
/// position from claim to expiry (complete and renew rewrite it in place; a takeover is a new
/// claim with a new token and expiry).
///
/// The record's epoch is not kept: decisions only ask whether an in-flight claim was made by
/// an earlier open of the file (its owner is gone), which is one flag relative to the epoch of
/// the open that filed the slot. A directory is always built and read under one epoch (a
/// reload after a failed commit keeps the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    token: u64,
    expires_at: Millis,
    /// 64-bit fold of the fingerprint (see `Fingerprint::fold`); meaningful when `HAS_FP`.
    fingerprint: u64,
    /// In flight: `expires_at - lease_until`. Completed: 0.
    lease_before_expiry: u32,
    attempt: u16,
    flags: u8,
}

const COMPLETED: u8 = 1;
const HAS_FP: u8 = 2;
/// In flight, claimed under an earlier epoch than the directory's.
pub(crate) const EARLIER_EPOCH: u8 = 4;

impl Slot {
    /// The slot of `e` in a directory of epoch `epoch` (the store's current one).
    pub(crate) fn new(e: &Entry, epoch: u32) -> Slot {
        let (lease_before_expiry, state_flag) = match e.state {
            State::InFlight {
                lease_until,
                epoch: claimed_in,
            } => (
                // Lease deadlines are capped at expiry, and lifetimes at max_ttl (< 2^32 ms, which
                // `Config::validate` enforces).
                u32::try_from(e.expires_at.saturating_sub(lease_until)).unwrap_or(u32::MAX),
                if claimed_in < epoch { EARLIER_EPOCH } else { 0 },
            ),
            State::Completed { .. } => (0, COMPLETED),
        };
        Slot {
            token: e.token,
            expires_at: e.expires_at,
            fingerprint: e.fingerprint.map_or(0, Fingerprint::fold),
            lease_before_expiry,
            attempt: u16::try_from(e.attempt).unwrap_or(u16::MAX),
            flags: state_flag | if e.fingerprint.is_some() { HAS_FP } else { 0 },
        }
    }

    /// Whether this slot was made from `e` (under any epoch): the record has not been
    /// rewritten since.
    pub(crate) fn describes(&self, e: &Entry) -> bool {
        let mine = Slot {
            flags: self.flags & !EARLIER_EPOCH,
            ..*self
        };
        // Under epoch 0 no claim is from an earlier epoch, so the flag stays clear.
        mine == Slot::new(e, 0)
    }

    /// The entry for decisions in a directory of epoch `epoch`. Fingerprints come back folded
    /// (equal folds compare equal); a completed entry's `completed_at` is not kept here (it is
    /// read from the record); a claim from an earlier epoch comes back as `epoch - 1`.
    pub(crate) fn entry(&self, epoch: u32) -> Entry {
        Entry {
            expires_at: self.expires_at,
            fingerprint: (self.flags & HAS_FP != 0)
                .then(|| Fingerprint(u128::from(self.fingerprint))),
            token: self.token,
            attempt: u32::from(self.attempt),
            state: if self.flags & COMPLETED != 0 {
                State::Completed { completed_at: 0 }
            } else {
                State::InFlight {
                    lease_until: self.expires_at - u64::from(self.lease_before_expiry),
                    epoch: if self.flags & EARLIER_EPOCH != 0 {
                        epoch.saturating_sub(1)
                    } else {
                        epoch
                    },
                }
            },
        }
    }

    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    pub(crate) fn expires_at(&self) -> Millis {
        self.expires_at
    }

    pub(crate) fn is_live(&self, now: Millis) -> bool {
        now < self.expires_at
    }

    pub(crate) fn is_in_flight(&self) -> bool {
        self.flags & COMPLETED == 0
    }
}

/// Bytes of a slot in a directory snapshot (see `snapshot.rs`).
pub(crate) const SLOT_BYTES: usize = 31;

impl Slot {
    /// The snapshot form: token, expiry, fingerprint fold, lease offset, attempt, flags
    /// (little-endian).
    pub(crate) fn to_bytes(self) -> [u8; SLOT_BYTES] {
        let mut b = [0u8; SLOT_BYTES];
        b[0..8].copy_from_slice(&self.token.to_le_bytes());
        b[8..16].copy_from_slice(&self.expires_at.to_le_bytes());
        b[16..24].copy_from_slice(&self.fingerprint.to_le_bytes());
        b[24..28].copy_from_slice(&self.lease_before_expiry.to_le_bytes());
        b[28..30].copy_from_slice(&self.attempt.to_le_bytes());
        b[30] = self.flags;
        b
    }

    /// A slot read back from a snapshot, for a directory of a later epoch than the one that
    /// wrote it: every claim in flight is then from an earlier epoch. `None` for bytes no slot
    /// encodes to (unknown flags, a lease deadline before time 0).
    pub(crate) fn from_bytes_next_epoch(b: &[u8; SLOT_BYTES]) -> Option<Slot> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let slot = Slot {
            token: u64_at(0),
            expires_at: u64_at(8),
            fingerprint: u64_at(16),
            lease_before_expiry: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
            attempt: u16::from_le_bytes([b[28], b[29]]),
            flags: b[30],
        };
        let known = COMPLETED | HAS_FP | EARLIER_EPOCH;
        let lease_ok = u64::from(slot.lease_before_expiry) <= slot.expires_at;
        let completed_ok = slot.flags & COMPLETED == 0 || slot.lease_before_expiry == 0;
        (slot.flags & !known == 0 && lease_ok && completed_ok).then(|| Slot {
            flags: if slot.is_in_flight() {
                slot.flags | EARLIER_EPOCH
            } else {
                slot.flags & !EARLIER_EPOCH
            },
            ..slot
        })
    }
}

/// Keys are already uniformly random 128-bit digests: hash them by taking 64 of their bits.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 keys, which the directory does not use.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// A digest as the directory files it: two halves, so a bucket aligns to 8 bytes. (A `u128`
/// key aligns the (key, slot) pair to 16 and pads it from 48 to 64 bytes.)
#[derive(Clone, Copy, PartialEq, Eq)]
struct Filed([u64; 2]);

impl Filed {
    fn of(digest: u128) -> Filed {
        Filed([digest as u64, (digest >> 64) as u64])
    }

    fn digest(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)
    }
}

impl std::hash::Hash for Filed {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.0[0]);
    }
}

type Shard = HashMap<Filed, Slot, BuildHasherDefault<DigestHasher>>;

pub(crate) struct Index {
    shards: Box<[Mutex<Shard>]>,
    /// Slots in flight (not completed), expired or not: what `max_in_flight` limits.
    in_flight: AtomicU64,
}

impl Index {
    pub(crate) fn new() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            in_flight: AtomicU64::new(0),
        }
    }

    fn shard_no(digest: u128) -> usize {
        (digest >> 122) as usize % SHARDS
    }

    fn shard(&self, digest: u128) -> &Mutex<Shard> {
        &self.shards[Self::shard_no(digest)]
    }

    pub(crate) fn get(&self, digest: u128) -> Option<Slot> {
        self.shard(digest).lock().get(&Filed::of(digest)).copied()
    }

    pub(crate) fn set(&self, digest: u128, slot: Option<Slot>) -> Option<Slot> {
        let mut shard = self.shard(digest).lock();
        let old = match slot {
            Some(s) => shard.insert(Filed::of(digest), s),
            None => {
                let old = shard.remove(&Filed::of(digest));
                let len = shard.len();
                if shard.capacity() > SHRINK_ABOVE && len < shard.capacity() / 4 {
                    shard.shrink_to(len * 2);
                }
                old
            }
        };
        self.count(old.as_ref(), slot.as_ref());
        old
    }

    /// Keeps `in_flight` in step with a slot replaced by another.
    fn count(&self, old: Option<&Slot>, new: Option<&Slot>) {
        let flying = |s: Option<&Slot>| s.is_some_and(Slot::is_in_flight);
        match (flying(old), flying(new)) {
            (false, true) => self.in_flight.fetch_add(1, Relaxed),
            (true, false) => self.in_flight.fetch_sub(1, Relaxed),
            _ => 0,
        };
    }

    /// Keys in flight (claimed, not completed, not yet swept).
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Takes over the content of `other` (a directory reloaded from disk), with every shard
    /// locked at once so no caller sees a mix of the two.
    pub(crate) fn replace_with(&self, other: Index) {
        let mut mine: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        self.in_flight.store(other.in_flight(), Relaxed);
        for (shard, theirs) in mine.iter_mut().zip(other.shards.into_vec()) {
            **shard = theirs.into_inner();
        }
    }

    /// Files `slot` unless the directory already holds a newer record (higher token) of the key.
    fn insert_newest(&self, shard: &mut Shard, digest: u128, slot: Slot) {
        use std::collections::hash_map::Entry;
        match shard.entry(Filed::of(digest)) {
            Entry::Vacant(v) => {
                v.insert(slot);
                self.count(None, Some(&slot));
            }
            Entry::Occupied(mut o) if o.get().token() < slot.token() => {
                let old = o.insert(slot);
                self.count(Some(&old), Some(&slot));
            }
            Entry::Occupied(_) => {}
        }
    }
}

/// Shards of the directory, the unit of a snapshot's sections.
pub(crate) const SNAPSHOT_SHARDS: usize = SHARDS;

impl Index {
    /// Keys in shard `i`.
    pub(crate) fn shard_len(&self, i: usize) -> usize {
        self.shards[i].lock().len()
    }

    /// Calls `f` with every (digest, slot) of shard `i`, under its lock.
    pub(crate) fn for_each_in_shard(&self, i: usize, mut f: impl FnMut(u128, &Slot)) {
        for (filed, slot) in self.shards[i].lock().iter() {
            f(filed.digest(), slot);
        }
    }

    /// Files `rows` into the empty shard `i` of this fresh directory. `false` when a digest
    /// repeats or belongs to another shard (the rows did not come from a directory).
    pub(crate) fn fill_shard(
        &self,
        i: usize,
        rows: impl ExactSizeIterator<Item = (u128, Slot)>,
    ) -> bool {
        let mut shard = self.shards[i].lock();
        shard.reserve(rows.len());
        let mut in_flight = 0;
        for (digest, slot) in rows {
            if Self::shard_no(digest) != i || shard.insert(Filed::of(digest), slot).is_some() {
                return false;
            }
            in_flight += u64::from(slot.is_in_flight());
        }
        self.in_flight.fetch_add(in_flight, Relaxed);
        true
    }

    /// Empties this directory (after a failed fill).
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            *shard.lock() = Shard::default();
        }
        self.in_flight.store(0, Relaxed);
    }
}

/// Rows a [`Filler`] buffers before handing them to the filing thread.
const LOAD_CHUNK: usize = 1 << 18;

/// A chunk of rows grouped by shard.
type Parts = Vec<Vec<(u128, Slot)>>;

impl Index {
    /// Fills this fresh directory (nobody else reads it yet) with the rows `scan` adds to the
    /// [`Filler`] it is given, for about `expected` records; answers what `scan` answers.
    ///
    /// The records come in expiry order, random with respect to digests. Rows are grouped by
    /// shard a chunk at a time and each group is filed under one lock, so consecutive inserts
    /// land in one shard's table (a few MB, within the CPU caches) instead of jumping across
    /// the whole directory; and when more than one chunk is expected, the chunks are filed by a
    /// second thread while `scan` goes on reading (inline if that thread cannot be started). A
    /// store of one chunk or less is filed inline: a thread would only wait for the scan to end.
    pub(crate) fn fill<T>(&self, expected: usize, scan: impl FnOnce(&mut Filler) -> T) -> T {
        for shard in self.shards.iter() {
            shard.lock().reserve(expected / SHARDS + 1);
        }
        let per_part = expected.min(LOAD_CHUNK) / SHARDS + 1;
        std::thread::scope(|scope| {
            let (full_tx, full_rx) = crossbeam_channel::bounded::<Parts>(1);
            let (spare_tx, spare_rx) = crossbeam_channel::bounded::<Parts>(2);
            let filer = (expected > LOAD_CHUNK).then(|| {
                std::thread::Builder::new()
                    .name("idemstore-load".into())
                    .spawn_scoped(scope, move || {
                        for mut parts in full_rx {
                            self.file(&mut parts);
                            let _ = spare_tx.send(parts);
                        }
                    })
            });
            let mut filler = Filler {
                index: self,
                parts: new_parts(per_part),
                held: 0,
                per_part,
                filer: matches!(filer, Some(Ok(_))).then_some((full_tx, spare_rx)),
            };
            let answer = scan(&mut filler);
            filler.flush();
            // Dropping the filler closes the channel: the filing thread ends. Joined here, not
            // left to the scope, which only waits for its closure to return: this way the thread
            // has exited, thread-local destructors included, when the open goes on (LeakSanitizer
            // in the fuzz targets' per-input leak check took an exiting thread's destructor list
            // for a leak). A panic in it is passed on, as the scope would have.
            drop(filler);
            if let Some(Ok(filer)) = filer
                && let Err(panic) = filer.join()
            {
                std::panic::resume_unwind(panic);
            }
            answer
        })
    }

    /// Files every row of `parts` (emptying it), one shard lock per group.
    fn file(&self, parts: &mut Parts) {
        for (part, shard) in parts.iter_mut().zip(self.shards.iter()) {
            if part.is_empty() {
                continue;
            }
            let mut shard = shard.lock();
            for (digest, slot) in part.drain(..) {
                self.insert_newest(&mut shard, digest, slot);
            }
        }
    }
}

/// An empty chunk, each shard's group with room for `per_part` rows.
fn new_parts(per_part: usize) -> Parts {
    (0..SHARDS).map(|_| Vec::with_capacity(per_part)).collect()
}

/// Collects the rows of [`Index::fill`].
pub(crate) struct Filler<'a> {
    index: &'a Index,
    parts: Parts,
    held: usize,
    /// Capacity of each shard's group in a new chunk.
    per_part: usize,
    /// Full chunks to the filing thread, emptied ones back.
    filer: Option<(
        crossbeam_channel::Sender<Parts>,
        crossbeam_channel::Receiver<Parts>,
    )>,
}

impl Filler<'_> {
    /// Files `slot` unless the directory holds a newer record (higher token) of the key.
    pub(crate) fn add(&mut self, digest: u128, slot: Slot) {
        self.parts[Index::shard_no(digest)].push((digest, slot));
        self.held += 1;
        if self.held >= LOAD_CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.held = 0;
        if let Some((full, spare)) = &self.filer {
            let next = spare
                .try_recv()
                .unwrap_or_else(|_| new_parts(self.per_part));
            let parts = std::mem::replace(&mut self.parts, next);
            match full.send(parts) {
                Ok(()) => {}
                // The filing thread is gone (it panicked): file here.
                Err(crossbeam_channel::SendError(mut parts)) => self.index.file(&mut parts),
            }
        } else {
            let mut parts = std::mem::take(&mut self.parts);
            self.index.file(&mut parts);
            self.parts = parts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_small_and_round_trips_what_decisions_need() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::size_of::<(Filed, Slot)>(), 48);
        let in_flight = Entry {
            expires_at: 86_400_000,
            fingerprint: Some(Fingerprint(0xDEAD_BEEF_0000_0001_0000_0000_0000_0042)),
            token: 9,
            attempt: 3,
            state: State::InFlight {
                lease_until: 60_000,
                epoch: 4,
            },
        };
        let back = Slot::new(&in_flight, 4).entry(4);
        assert_eq!(
            back.fingerprint.unwrap().fold(),
            in_flight.fingerprint.unwrap().fold()
        );
        assert_eq!(
            Entry {
                fingerprint: in_flight.fingerprint,
                ..back
            },
            in_flight
        );
        let done = Entry {
            fingerprint: None,
            state: State::Completed { completed_at: 5 },
            ..in_flight
        };
        let back = Slot::new(&done, 4).entry(4);
        assert_eq!(back.state, State::Completed { completed_at: 0 });
        assert_eq!(
            (back.token, back.expires_at, back.attempt, back.fingerprint),
            (9, 86_400_000, 3, None)
        );
    }

    #[test]
    fn an_earlier_epoch_survives_as_a_flag() {
        let claimed_in = |epoch| Entry {
            expires_at: 1_000,
            fingerprint: None,
            token: 1,
            attempt: 1,
            state: State::InFlight {
                lease_until: 500,
                epoch,
            },
        };
        let epoch_of = |e: Entry| match e.state {
            State::InFlight { epoch, .. } => epoch,
            State::Completed { .. } => unreachable!(),
        };
        // Made under epoch 5: an earlier claim reads back earlier, a current one as current.
        assert_eq!(epoch_of(Slot::new(&claimed_in(2), 5).entry(5)), 4);
        assert_eq!(epoch_of(Slot::new(&claimed_in(5), 5).entry(5)), 5);
        assert!(Slot::new(&claimed_in(2), 5).describes(&claimed_in(2)));
        assert!(Slot::new(&claimed_in(5), 5).describes(&claimed_in(5)));
        let moved = Entry {
            token: 2,
            ..claimed_in(5)
        };
        assert!(!Slot::new(&claimed_in(5), 5).describes(&moved));
    }

    #[test]
    fn filling_keeps_the_newest_record_of_each_key_across_chunks() {
        let n = LOAD_CHUNK as u64 + 1_000;
        // Expecting a few rows files them inline; expecting them all, on the filing thread.
        for expected in [10, n as usize] {
            fill_and_check(n, expected);
        }
    }

    fn fill_and_check(n: u64, expected: usize) {
        let index = Index::new();
        let entry = |token, completed| Entry {
            expires_at: 10_000 + token,
            fingerprint: None,
            token,
            attempt: 1,
            state: if completed {
                State::Completed { completed_at: 1 }
            } else {
                State::InFlight {
                    lease_until: 5_000,
                    epoch: 1,
                }
            },
        };
        index.fill(expected, |loader| {
            // Every key twice, the newer record first for even keys and last for odd ones; the
            // last keys' second copies come after the first chunk was filed.
            for round in 0..2u64 {
                for k in 0..n / 2 {
                    let digest =
                        u128::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
                    let newer_first = k % 2 == 0;
                    let token = if (round == 0) == newer_first {
                        2 * k + 2
                    } else {
                        2 * k + 1
                    };
                    // Newer records are completed, older ones in flight.
                    loader.add(digest, Slot::new(&entry(token, token % 2 == 0), 2));
                }
            }
        });
        assert_eq!(index.len() as u64, n / 2);
        assert_eq!(
            index.in_flight(),
            0,
            "every key ends on its completed record"
        );
        for k in 0..n / 2 {
            let digest = u128::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
            assert_eq!(index.get(digest).map(|s| s.token()), Some(2 * k + 2));
        }
    }
}

#[cfg(test)]
mod memory {
    use super::*;

    /// After a spike of live keys (a flood, a traffic peak) expires and is swept, the directory
    /// gives the peak's buckets back. Failed before (a review finding): 1,835,008 buckets
    /// (about 85 MB) stayed for 10 live keys.
    #[test]
    fn a_swept_spike_gives_its_buckets_back() {
        let index = Index::new();
        let slot = |t: u64| {
            Slot::new(
                &Entry {
                    expires_at: 1_000,
                    fingerprint: None,
                    token: t,
                    attempt: 1,
                    state: State::Completed { completed_at: 1 },
                },
                1,
            )
        };
        let digest = |k: u64| u128::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let n = 1_000_000u64;
        for k in 0..n {
            index.set(digest(k), Some(slot(k)));
        }
        // Everything expires and the sweeper removes it; a handful of keys stay live.
        for k in 10..n {
            index.set(digest(k), None);
        }
        assert_eq!(index.len(), 10);
        for k in 0..10 {
            assert_eq!(index.get(digest(k)).map(|s| s.token()), Some(k));
        }
        let buckets: usize = index.shards.iter().map(|s| s.lock().capacity()).sum();
        assert!(
            buckets < 10_000,
            "10 live keys, {buckets} buckets kept from the spike (~{} MB)",
            (buckets * 49) >> 20
        );
    }
}
