//! The in-memory directory of live keys: key digest → where the record is and what it says.
//!
//! Only the writer thread changes it, and only after the commit that wrote the change returned
//! (nothing is published before it is on disk). Claim losers (in flight, mismatch, replay) are
//! answered from here without touching the writer.

use crate::clock::Millis;
use crate::key::Fingerprint;
use crate::machine::{Entry, State};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SHARDS: usize = 64;

/// What the directory keeps per live key: the decision-relevant part of its record, packed
/// into 40 bytes (plus the 16-byte digest it is filed under).
///
/// The record's position in the time-ordered table is `(expires_at, token)`: a record keeps its
/// position from claim to expiry (complete and renew rewrite it in place; a takeover is a new
/// claim with a new token and expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    token: u64,
    expires_at: Millis,
    /// 64-bit fold of the fingerprint (see `Fingerprint::fold`); meaningful when `HAS_FP`.
    fingerprint: u64,
    /// In flight: `expires_at - lease_until`. Completed: 0.
    lease_before_expiry: u32,
    epoch: u32,
    attempt: u16,
    flags: u8,
}

const COMPLETED: u8 = 1;
const HAS_FP: u8 = 2;

impl Slot {
    pub(crate) fn new(e: &Entry) -> Slot {
        let (lease_before_expiry, epoch, state_flag) = match e.state {
            State::InFlight { lease_until, epoch } => (
                // Lease deadlines are capped at expiry, and lifetimes at max_ttl (< 49 days).
                u32::try_from(e.expires_at.saturating_sub(lease_until)).unwrap_or(u32::MAX),
                epoch,
                0,
            ),
            State::Completed { .. } => (0, 0, COMPLETED),
        };
        Slot {
            token: e.token,
            expires_at: e.expires_at,
            fingerprint: e.fingerprint.map_or(0, Fingerprint::fold),
            lease_before_expiry,
            epoch,
            attempt: u16::try_from(e.attempt).unwrap_or(u16::MAX),
            flags: state_flag | if e.fingerprint.is_some() { HAS_FP } else { 0 },
        }
    }

    /// The entry for decisions. Fingerprints come back folded (equal folds compare equal), and
    /// a completed entry's `completed_at` is not kept here (it is read from the record).
    pub(crate) fn entry(&self) -> Entry {
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
                    epoch: self.epoch,
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

    fn shard(&self, digest: u128) -> &Mutex<Shard> {
        &self.shards[(digest >> 122) as usize % SHARDS]
    }

    pub(crate) fn get(&self, digest: u128) -> Option<Slot> {
        self.shard(digest).lock().get(&digest).copied()
    }

    pub(crate) fn set(&self, digest: u128, slot: Option<Slot>) {
        let mut shard = self.shard(digest).lock();
        let old = match slot {
            Some(s) => shard.insert(digest, s),
            None => shard.remove(&digest),
        };
        self.count(old.as_ref(), slot.as_ref());
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
    pub(crate) fn insert_newest(&self, digest: u128, slot: Slot) {
        let mut shard = self.shard(digest).lock();
        match shard.get_mut(&digest) {
            None => {
                shard.insert(digest, slot);
                self.count(None, Some(&slot));
            }
            Some(cur) if cur.token() < slot.token() => {
                let old = std::mem::replace(cur, slot);
                self.count(Some(&old), Some(&slot));
            }
            Some(_) => {}
        }
    }

    /// Reserves room for `n` keys in total, spread over the shards.
    pub(crate) fn reserve(&self, n: usize) {
        for shard in self.shards.iter() {
            shard.lock().reserve(n / SHARDS + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_small_and_round_trips_what_decisions_need() {
        assert_eq!(std::mem::size_of::<Slot>(), 40);
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
        let back = Slot::new(&in_flight).entry();
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
        let back = Slot::new(&done).entry();
        assert_eq!(back.state, State::Completed { completed_at: 0 });
        assert_eq!(
            (back.token, back.expires_at, back.attempt, back.fingerprint),
            (9, 86_400_000, 3, None)
        );
    }
}
