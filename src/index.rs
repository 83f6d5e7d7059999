//! The in-memory directory of live keys: key digest → where the record is and what it says.
//!
//! Only the writer thread changes it, and only after the commit that wrote the change returned
//! (nothing is published before it is on disk). Claim losers (in flight, mismatch, replay) are
//! answered from here without touching the writer.

use crate::machine::Entry;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SHARDS: usize = 64;

/// Where a key's record is stored and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Sequence number of the record (its position in the time-ordered table, with expiry).
    pub(crate) seq: u64,
    pub(crate) entry: Entry,
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
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Shard = HashMap<u128, Slot, BuildHasherDefault<DigestHasher>>;

pub(crate) struct Index {
    shards: Box<[Mutex<Shard>]>,
}

impl Index {
    pub(crate) fn new() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, digest: u128) -> &Mutex<Shard> {
        &self.shards[(digest >> 122) as usize % SHARDS]
    }

    pub(crate) fn get(&self, digest: u128) -> Option<Slot> {
        self.shard(digest).lock().get(&digest).copied()
    }

    pub(crate) fn set(&self, digest: u128, slot: Option<Slot>) {
        let mut shard = self.shard(digest).lock();
        match slot {
            Some(s) => {
                shard.insert(digest, s);
            }
            None => {
                shard.remove(&digest);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Replaces the whole content (after a reload from disk).
    pub(crate) fn replace_all(&self, slots: impl IntoIterator<Item = (u128, Slot)>) {
        for shard in self.shards.iter() {
            shard.lock().clear();
        }
        for (d, s) in slots {
            self.set(d, Some(s));
        }
    }

    /// Reserves room for `n` keys in total, spread over the shards.
    pub(crate) fn reserve(&self, n: usize) {
        for shard in self.shards.iter() {
            shard.lock().reserve(n / SHARDS + 1);
        }
    }
}
