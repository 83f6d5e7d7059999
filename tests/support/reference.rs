//! A sequential reference model of one store, restating `src/machine.rs` over small keys,
//! small fingerprints and lease ids, with a manual clock, reopen and crash.
//!
//! Used by the model test (`tests/model.rs`) and the ops fuzz target
//! (`fuzz/fuzz_targets/ops.rs`, which includes this file by path). It models the documented
//! semantics with these settings: record lifetime [`TTL_MS`], lease [`LEASE_MS`], per-claim
//! lifetimes up to [`MAX_TTL_MS`], `Takeover::OnRestart`, `Durability::Immediate`.
//!
//! Time: the store reads `max(clock, high water)`, raising the high water at every read of
//! the clock, and persists the high water with every write it acknowledges and when it
//! closes. Reopening starts again from the persisted high water (after a crash, the one of
//! the last acknowledged write); a step back of the clock below it is ignored (invariant 7). The background sweeper also reads the clock, at
//! moments no test controls, and removes expired records: so a step back of the clock is
//! modelled as "the store writes at the current time, then the clock steps back" (the driver
//! expires an unused probe key first), after which the high water is the same whether the
//! sweeper ran or not; and expired records may or may not still be on disk.
// Included by several test binaries, not all of which use every item.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// The store's default record lifetime, in ms.
pub const TTL_MS: u64 = 10_000;
/// Upper bound of per-claim lifetimes, in ms.
pub const MAX_TTL_MS: u64 = 60_000;
/// Lease length, in ms.
pub const LEASE_MS: u64 = 1_000;
/// The sweeper's tick (`sweep_interval`): a record expiring at `e` is due at the first tick
/// at or after `e`.
pub const SWEEP_TICK_MS: u64 = 1_000;
/// Where the manual clock starts.
pub const START_MS: u64 = 1_700_000_000_000;

/// Lease ids: the position of the lease in the harness's list of acquired leases.
pub type LeaseId = u64;

/// One key's record.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub expires_at: u64,
    pub fp: Option<u8>,
    pub lease: LeaseId,
    pub attempt: u32,
    pub state: State,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum State {
    InFlight { lease_until: u64, epoch: u32 },
    Completed { completed_at: u64, body: Vec<u8> },
}

/// An operation on the store, by key index; owner operations name the lease they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `claim` (`ttl_ms: None`) or `claim_with_ttl`.
    Claim {
        key: u8,
        fp: Option<u8>,
        ttl_ms: Option<u64>,
    },
    Complete {
        key: u8,
        lease: LeaseId,
        body: Vec<u8>,
    },
    Release {
        key: u8,
        lease: LeaseId,
    },
    Renew {
        key: u8,
        lease: LeaseId,
    },
    Expire {
        key: u8,
    },
    Get {
        key: u8,
    },
}

/// A stored result as a claim or `get` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub body: Vec<u8>,
    pub completed_at: u64,
    pub expires_at: u64,
    pub attempt: u32,
}

/// What an operation answers; times are ms since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acquired {
        attempt: u32,
        takeover: bool,
        lease_until: u64,
        expires_at: u64,
    },
    InFlight {
        retry_after_ms: u64,
        attempt: u32,
    },
    Replay(Replayed),
    Mismatch,
    InvalidTtl,
    /// `complete` or `release` answered `Ok`.
    Done,
    /// `renew` answered `Ok` and moved the lease deadline here.
    Renewed {
        lease_until: u64,
    },
    Stale,
    /// `expire` answered whether a live record was removed.
    Expired(bool),
    /// `get` found nothing live.
    Absent,
    GetInFlight {
        attempt: u32,
        lease_until: u64,
        expires_at: u64,
        from_previous_process: bool,
    },
    GetCompleted(Replayed),
}

/// The model of one store file and the process that has it open.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RefStore {
    /// The manual clock.
    pub clock: u64,
    /// The open store's time high water (in memory).
    pub high_water: u64,
    /// The high water as persisted by acknowledged writes.
    pub persisted: u64,
    /// Opens of the file so far (the store's epoch, up to a constant).
    pub epoch: u32,
    /// Records on disk, live or expired but not removed.
    pub records: BTreeMap<u8, Entry>,
}

impl Default for RefStore {
    fn default() -> Self {
        RefStore::new()
    }
}

fn fingerprints_differ(stored: Option<u8>, given: Option<u8>) -> bool {
    matches!((stored, given), (Some(a), Some(b)) if a != b)
}

impl RefStore {
    /// A new file opened once, the clock at [`START_MS`].
    pub fn new() -> Self {
        RefStore {
            clock: START_MS,
            high_water: 0,
            persisted: 0,
            epoch: 1,
            records: BTreeMap::new(),
        }
    }

    /// The store's time for an operation (raises the high water).
    fn now(&mut self) -> u64 {
        self.high_water = self.high_water.max(self.clock);
        self.high_water
    }

    /// A write was acknowledged at `now`: its commit persisted the time.
    fn persist(&mut self, now: u64) {
        self.persisted = self.persisted.max(now);
    }

    /// The live record of `key` at `now`.
    fn live(&self, key: u8, now: u64) -> Option<&Entry> {
        self.records.get(&key).filter(|e| now < e.expires_at)
    }

    /// The store was closed (`clean`: it persists its time), or crashed with every
    /// acknowledgement durable, and opened again.
    pub fn reopen(&mut self, clean: bool) {
        if clean {
            let now = self.now();
            self.persist(now);
        }
        self.epoch += 1;
        self.high_water = self.persisted;
    }

    /// The store's time if it were asked now, without asking.
    pub fn peek_now(&self) -> u64 {
        self.high_water.max(self.clock)
    }

    /// A write at the current time (the probe), then the clock moves back by `ms`.
    pub fn step_back(&mut self, ms: u64) {
        let now = self.now();
        self.persist(now);
        self.clock = self.clock.saturating_sub(ms);
    }

    /// `run_pending_expiry`: removes every record due by now and answers how many. The
    /// store may answer fewer (the background sweeper may have reclaimed some already).
    pub fn sweep(&mut self) -> u64 {
        let now = self.now();
        let before = self.records.len();
        let tick = now / SWEEP_TICK_MS;
        self.records
            .retain(|_, e| e.expires_at.div_ceil(SWEEP_TICK_MS) > tick);
        (before - self.records.len()) as u64
    }

    /// The range of record counts the file may hold: live records at least (the sweeper may
    /// have reclaimed the expired ones), every record not removed by an operation at most.
    pub fn records_on_disk(&self) -> std::ops::RangeInclusive<u64> {
        let now = self.peek_now();
        let live = self.records.values().filter(|e| now < e.expires_at).count();
        live as u64..=self.records.len() as u64
    }

    /// Applies `op`; `next_lease` is the id an acquired lease gets.
    pub fn apply(&mut self, op: &Op, next_lease: LeaseId) -> Outcome {
        match op {
            Op::Claim { key, fp, ttl_ms } => self.claim(*key, *fp, *ttl_ms, next_lease),
            Op::Complete { key, lease, body } => self.complete(*key, *lease, body),
            Op::Release { key, lease } => self.release(*key, *lease),
            Op::Renew { key, lease } => self.renew(*key, *lease),
            Op::Expire { key } => {
                let now = self.now();
                let live = self.live(*key, now).is_some();
                self.records.remove(key);
                self.persist(now);
                Outcome::Expired(live)
            }
            Op::Get { key } => self.get(*key),
        }
    }

    fn claim(&mut self, key: u8, fp: Option<u8>, ttl_ms: Option<u64>, lease: LeaseId) -> Outcome {
        if ttl_ms.is_some_and(|t| t == 0 || t > MAX_TTL_MS) {
            return Outcome::InvalidTtl;
        }
        let now = self.now();
        let (attempt, takeover) = match self.live(key, now) {
            None => (1, false),
            Some(e) if fingerprints_differ(e.fp, fp) => return Outcome::Mismatch,
            Some(e) => match &e.state {
                State::Completed { completed_at, body } => {
                    return Outcome::Replay(Replayed {
                        body: body.clone(),
                        completed_at: *completed_at,
                        expires_at: e.expires_at,
                        attempt: e.attempt,
                    });
                }
                State::InFlight { lease_until, epoch }
                    if *epoch == self.epoch && now < *lease_until =>
                {
                    return Outcome::InFlight {
                        retry_after_ms: lease_until - now,
                        attempt: e.attempt,
                    };
                }
                State::InFlight { .. } => (e.attempt + 1, true),
            },
        };
        // A takeover without a fingerprint keeps the key's.
        let fp = match self.live(key, now) {
            Some(e) if takeover => fp.or(e.fp),
            _ => fp,
        };
        let expires_at = now + ttl_ms.unwrap_or(TTL_MS);
        let lease_until = (now + LEASE_MS).min(expires_at);
        let state = State::InFlight {
            lease_until,
            epoch: self.epoch,
        };
        let entry = Entry {
            expires_at,
            fp,
            lease,
            attempt,
            state,
        };
        self.records.insert(key, entry);
        self.persist(now);
        Outcome::Acquired {
            attempt,
            takeover,
            lease_until,
            expires_at,
        }
    }

    /// The live record of `key` if `lease` owns it: `Err(outcome)` answers at once.
    fn owned(&mut self, key: u8, lease: LeaseId) -> Result<(u64, Entry), Outcome> {
        let now = self.now();
        match self.live(key, now) {
            Some(e) if e.lease == lease => Ok((now, e.clone())),
            _ => Err(Outcome::Stale),
        }
    }

    fn complete(&mut self, key: u8, lease: LeaseId, body: &[u8]) -> Outcome {
        let (now, mut e) = match self.owned(key, lease) {
            Ok(owned) => owned,
            Err(answer) => return answer,
        };
        if let State::InFlight { .. } = e.state {
            e.state = State::Completed {
                completed_at: now,
                body: body.to_vec(),
            };
            self.records.insert(key, e);
        }
        // Completing twice keeps the first response (the writer still commits).
        self.persist(now);
        Outcome::Done
    }

    fn release(&mut self, key: u8, lease: LeaseId) -> Outcome {
        let now = self.now();
        match self.live(key, now) {
            // Released or expired and not claimed since: already done.
            None => {}
            Some(e) if e.lease != lease => return Outcome::Stale,
            Some(Entry {
                state: State::Completed { .. },
                ..
            }) => return Outcome::Stale,
            Some(_) => {
                self.records.remove(&key);
            }
        }
        self.persist(now);
        Outcome::Done
    }

    fn renew(&mut self, key: u8, lease: LeaseId) -> Outcome {
        let (now, mut e) = match self.owned(key, lease) {
            Ok(owned) => owned,
            Err(answer) => return answer,
        };
        let State::InFlight { .. } = e.state else {
            return Outcome::Stale;
        };
        let lease_until = (now + LEASE_MS).min(e.expires_at);
        e.state = State::InFlight {
            lease_until,
            epoch: self.epoch,
        };
        self.records.insert(key, e);
        self.persist(now);
        Outcome::Renewed { lease_until }
    }

    fn get(&mut self, key: u8) -> Outcome {
        if !self.records.contains_key(&key) {
            return Outcome::Absent;
        }
        let now = self.now();
        let Some(e) = self.live(key, now) else {
            return Outcome::Absent;
        };
        match &e.state {
            State::InFlight { lease_until, epoch } => Outcome::GetInFlight {
                attempt: e.attempt,
                lease_until: *lease_until,
                expires_at: e.expires_at,
                from_previous_process: *epoch < self.epoch,
            },
            State::Completed { completed_at, body } => Outcome::GetCompleted(Replayed {
                body: body.clone(),
                completed_at: *completed_at,
                expires_at: e.expires_at,
                attempt: e.attempt,
            }),
        }
    }
}
