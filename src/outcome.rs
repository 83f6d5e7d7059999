//! What a claim can answer, as values: acquired, in flight, replay, mismatch.

use crate::clock::{Millis, to_system_time};
use crate::key::{Key, Response};
use std::time::{Duration, SystemTime};

/// The answer to [`Store::claim`](crate::Store::claim). None of these is an error.
#[derive(Debug)]
#[must_use = "a claim outcome says whether to run the request, wait, or replay"]
pub enum ClaimOutcome {
    /// The caller owns the key: run the request, then [`complete`](crate::Store::complete) or
    /// [`release`](crate::Store::release) with this lease.
    Acquired(Lease),
    /// Another attempt owns the key (HTTP `409 Conflict`). Retry after `retry_after`, when its
    /// lease ends unless it is renewed or completed first.
    InFlight {
        /// Time until the current owner's lease ends.
        retry_after: Duration,
        /// The current owner's attempt number.
        attempt: u32,
    },
    /// The request already completed: send back this stored response (with
    /// `X-Idempotency-Replayed: true`), do not run the request again.
    Replay(Replay),
    /// The key is in use with a different request fingerprint (HTTP `422`). Reported even
    /// while the other request is in flight.
    Mismatch,
}

/// Ownership of a key, handed out by an acquiring claim. Pass it to
/// [`complete`](crate::Store::complete), [`release`](crate::Store::release) or
/// [`renew`](crate::Store::renew); its fencing token makes those refuse to act once a later
/// attempt took the key over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub(crate) key: Key,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
    pub(crate) lease_until: Millis,
    pub(crate) expires_at: Millis,
    pub(crate) takeover: bool,
}

impl Lease {
    /// The key this lease owns.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The fencing token: unique per acquisition across the life of the file, increasing.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// 1 for the first attempt on this key; each takeover adds one.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the lease ends unless renewed; after it, another claim may take the key over.
    pub fn lease_deadline(&self) -> SystemTime {
        to_system_time(self.lease_until)
    }

    /// When the record expires (the key becomes new again).
    pub fn expires_at(&self) -> SystemTime {
        to_system_time(self.expires_at)
    }

    /// Whether this claim took over an earlier attempt (its lease ended or its process died):
    /// that attempt may already have had effects, so the request should be run in a way that
    /// tolerates a partial earlier run.
    pub fn is_takeover(&self) -> bool {
        self.takeover
    }
}

/// A stored result, returned by a claim on a completed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The response exactly as given to `complete`.
    pub response: Response,
    /// When `complete` stored it.
    pub completed_at: SystemTime,
    /// When the record expires.
    pub expires_at: SystemTime,
    /// The attempt that completed it.
    pub attempt: u32,
}

/// What [`Store::get`](crate::Store::get) finds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordInfo {
    /// Claimed and not yet completed.
    InFlight {
        /// Current owner's attempt number.
        attempt: u32,
        /// When its lease ends.
        lease_deadline: SystemTime,
        /// When the record expires.
        expires_at: SystemTime,
        /// Whether it was claimed before the store was last opened (its owner may be gone).
        from_previous_process: bool,
    },
    /// Completed, with the stored result.
    Completed(Replay),
}
