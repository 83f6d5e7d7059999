//! Runs the reference model's operations (`reference.rs`) against a real store on a
//! [`SimDisk`] with a [`ManualClock`], and turns the store's answers into model outcomes.
//!
//! Include it next to `reference.rs` as sibling modules of the crate root (`mod reference;
//! mod driver;`): the model test and the ops fuzz target both do.
// Included by several test binaries, not all of which use every item.
#![allow(dead_code)]

use crate::reference::{
    LEASE_MS, LeaseId, MAX_TTL_MS, Op, Outcome, Replayed, START_MS, SWEEP_TICK_MS, TTL_MS,
};
use idemstore::sim_disk::SimDisk;
use idemstore::{
    ClaimOutcome, Error, Fingerprint, Key, Lease, ManualClock, RecordInfo, Replay, Response, Store,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The key of key index `k`.
pub fn key(k: u8) -> Key {
    Key::new("tenant", [b'k', k])
}

/// A key no model operation uses: expiring it makes the store read and persist its time.
pub fn probe_key() -> Key {
    Key::new("probe", "clock")
}

/// The fingerprint of fingerprint index `fp`.
pub fn fingerprint(fp: u8) -> Fingerprint {
    Fingerprint::from_parts(&[b"request", &[fp]])
}

/// The response stored for a model body.
pub fn response(body: &[u8]) -> Response {
    Response::new(201)
        .header("content-type", "application/octet-stream")
        .header("x-binary", [0u8, 255, 10])
        .body(body.to_vec())
}

/// Milliseconds since the Unix epoch.
pub fn ms(t: SystemTime) -> u64 {
    let d = t
        .duration_since(UNIX_EPOCH)
        .expect("store times are after 1970");
    u64::try_from(d.as_millis()).expect("store times fit in u64 ms")
}

fn replayed(r: Replay) -> Replayed {
    assert_eq!(
        r.response,
        response(&r.response.body),
        "replayed status or headers differ from what was stored"
    );
    Replayed {
        body: r.response.body,
        completed_at: ms(r.completed_at),
        expires_at: ms(r.expires_at),
        attempt: r.attempt,
    }
}

/// A store on a simulated disk, the leases it handed out and the clock it reads.
pub struct Driver {
    pub clock: ManualClock,
    pub disk: SimDisk,
    pub store: Option<Store>,
    /// Every lease acquired, by [`LeaseId`] (renewals update them).
    pub leases: Vec<Lease>,
    /// The highest fencing token handed out (invariant 6: tokens only increase).
    pub last_token: u64,
}

impl Default for Driver {
    fn default() -> Self {
        Driver::new()
    }
}

impl Driver {
    /// A new, empty store.
    pub fn new() -> Self {
        let mut d = Driver {
            clock: ManualClock::new(START_MS),
            disk: SimDisk::new(),
            store: None,
            leases: Vec::new(),
            last_token: 0,
        };
        d.open().expect("a new store opens");
        d
    }

    /// Opens the store on the current disk.
    pub fn open(&mut self) -> Result<(), Error> {
        assert!(self.store.is_none(), "open twice");
        let disk = self.disk.clone();
        let store = Store::builder()
            .ttl(Duration::from_millis(TTL_MS))
            .max_ttl(Duration::from_millis(MAX_TTL_MS))
            .lease(Duration::from_millis(LEASE_MS))
            .sweep_interval(Duration::from_millis(SWEEP_TICK_MS))
            // One caller: a short queue opens faster than the default 16,384 slots.
            .queue_capacity(64)
            // Fencing tokens reserved 4 at a time: crashes and faults fall around reservations.
            .token_block(4)
            // Sweeps of 2 records, scans of 2 rows: a pass pauses its scan whenever 2 records
            // are due, and resumes it once they are reclaimed.
            .sweep_chunk(2)
            .scan_chunk(2)
            // 16 one-block frames: the commit log fills and checkpoints every few steps.
            .log_capacity(64 << 10)
            .clock(self.clock.clone())
            .open_sim(&disk)?;
        self.store = Some(store);
        Ok(())
    }

    /// The open store.
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    /// Closes the store cleanly (dropping it) and opens it again on the same disk.
    pub fn reopen(&mut self) -> Result<(), Error> {
        drop(self.store.take());
        self.open()
    }

    /// Simulates a power loss (`SimDisk::crash(seed)`), drops the store, and opens the
    /// surviving image.
    pub fn crash(&mut self, seed: u64) -> Result<(), Error> {
        let survivor = self.disk.crash(seed);
        // The old store's last writes go to the dead disk and fail.
        drop(self.store.take());
        self.disk = survivor;
        self.open()
    }

    /// Makes the store write at the current time (expiring [`probe_key`]), then moves the
    /// clock back by `ms` (see `RefStore::step_back`). On an error the clock stays.
    pub fn step_back(&mut self, ms: u64) -> Result<(), Error> {
        let removed = self.store().expire(&probe_key())?;
        assert!(!removed, "the probe key is never claimed");
        self.clock.set_ms(self.clock.now_ms().saturating_sub(ms));
        Ok(())
    }

    /// Runs `op`; answers that are not errors of the store become outcomes. A model
    /// `LeaseId` the driver never handed out (a lease whose claim did not return) is not
    /// allowed here.
    pub fn run(&mut self, op: &Op) -> Result<Outcome, Error> {
        let store = self.store.as_ref().expect("the store is open");
        let result = match op {
            Op::Claim { key: k, fp, ttl_ms } => {
                let fp = fp.map(fingerprint);
                let answer = match ttl_ms {
                    None => store.claim(&key(*k), fp),
                    Some(t) => store.claim_with_ttl(&key(*k), fp, Duration::from_millis(*t)),
                };
                answer.map(|a| self.claimed(*k, a))
            }
            Op::Complete {
                key: k,
                lease,
                body,
            } => {
                let lease = &self.leases[lease_index(*lease)];
                assert_eq!(
                    lease.key(),
                    &key(*k),
                    "the model's lease is for another key"
                );
                store
                    .complete(lease, response(body))
                    .map(|()| Outcome::Done)
            }
            Op::Release { key: k, lease } => {
                let lease = &self.leases[lease_index(*lease)];
                assert_eq!(
                    lease.key(),
                    &key(*k),
                    "the model's lease is for another key"
                );
                store.release(lease).map(|()| Outcome::Done)
            }
            Op::Renew { key: k, lease } => {
                let lease = &mut self.leases[lease_index(*lease)];
                assert_eq!(
                    lease.key(),
                    &key(*k),
                    "the model's lease is for another key"
                );
                let before = lease.clone();
                match store.renew(lease) {
                    Ok(()) => Ok(Outcome::Renewed {
                        lease_until: ms(lease.lease_deadline()),
                    }),
                    Err(e) => {
                        assert_eq!(*lease, before, "a failed renew changed the lease");
                        Err(e)
                    }
                }
            }
            Op::Expire { key: k } => store.expire(&key(*k)).map(Outcome::Expired),
            Op::Get { key: k } => store.get(&key(*k)).map(|info| match info {
                None => Outcome::Absent,
                Some(RecordInfo::InFlight {
                    attempt,
                    lease_deadline,
                    expires_at,
                    from_previous_process,
                }) => Outcome::GetInFlight {
                    attempt,
                    lease_until: ms(lease_deadline),
                    expires_at: ms(expires_at),
                    from_previous_process,
                },
                Some(RecordInfo::Completed(r)) => Outcome::GetCompleted(replayed(r)),
                Some(other) => panic!("unknown record info {other:?}"),
            }),
        };
        match result {
            Err(Error::StaleLease { token }) => {
                if let Op::Complete { lease, .. }
                | Op::Release { lease, .. }
                | Op::Renew { lease, .. } = op
                {
                    assert_eq!(
                        token,
                        self.leases[lease_index(*lease)].token(),
                        "StaleLease names another token"
                    );
                }
                Ok(Outcome::Stale)
            }
            Err(Error::InvalidTtl { .. }) => Ok(Outcome::InvalidTtl),
            other => other,
        }
    }

    fn claimed(&mut self, k: u8, answer: ClaimOutcome) -> Outcome {
        match answer {
            ClaimOutcome::Acquired(lease) => {
                assert_eq!(lease.key(), &key(k));
                assert!(
                    lease.token() > self.last_token,
                    "fencing token {} after {} (invariant 6)",
                    lease.token(),
                    self.last_token
                );
                self.last_token = lease.token();
                let outcome = Outcome::Acquired {
                    attempt: lease.attempt(),
                    takeover: lease.is_takeover(),
                    lease_until: ms(lease.lease_deadline()),
                    expires_at: ms(lease.expires_at()),
                };
                self.leases.push(lease);
                outcome
            }
            ClaimOutcome::InFlight {
                retry_after,
                attempt,
            } => Outcome::InFlight {
                retry_after_ms: u64::try_from(retry_after.as_millis()).expect("small"),
                attempt,
            },
            ClaimOutcome::Replay(r) => Outcome::Replay(replayed(r)),
            ClaimOutcome::Mismatch => Outcome::Mismatch,
        }
    }

    /// The id the next acquired lease gets.
    pub fn next_lease(&self) -> LeaseId {
        self.leases.len() as LeaseId
    }
}

fn lease_index(id: LeaseId) -> usize {
    usize::try_from(id).expect("lease ids are small")
}
