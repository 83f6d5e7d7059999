//! The pure state machine: every claim, complete, release, renew and expiry is decided here,
//! from the key's current entry and `now`, with no I/O.
//!
//! ```text
//!                 claim (new)                  complete(token)
//!   absent ───────────────────▶ in flight ───────────────────────▶ completed
//!     ▲   ◀─────────────────────  │   ▲                              │
//!     │      release(token)       │   │ claim after lease end, or    │
//!     │                           │   │ after a restart (takeover,   │
//!     │                           └───┘ attempt + 1, new token)      │
//!     └───────────────────────── expiry (at expires_at) ◀────────────┘
//! ```
//!
//! Invariants (numbered as in the crate docs):
//! 1. An entry at or past its `expires_at` is absent for every operation.
//! 2. A key has at most one live owner: the token of its in-flight state.
//! 3. Only the current token may complete, release or renew; any other token is stale and
//!    changes nothing.
//! 4. A fingerprint mismatch is reported before in-flight or replay.

use crate::clock::Millis;
use crate::config::Takeover;
use crate::key::Fingerprint;
use serde::{Deserialize, Serialize};

/// What the store knows about one live key (the response body lives on disk only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) expires_at: Millis,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
    pub(crate) state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum State {
    InFlight {
        lease_until: Millis,
        /// The store epoch (one per open of the file) the claim was made in.
        epoch: u32,
    },
    Completed {
        completed_at: Millis,
    },
}

impl Entry {
    pub(crate) fn is_live(&self, now: Millis) -> bool {
        now < self.expires_at
    }
}

/// The fixed inputs of a decision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    pub(crate) now: Millis,
    pub(crate) epoch: u32,
    pub(crate) lease_ms: Millis,
    pub(crate) takeover: Takeover,
}

/// The decision for a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimDecision {
    /// Write a new in-flight entry. `takeover` when an earlier attempt's lease was taken over.
    Acquire { attempt: u32, takeover: bool },
    /// Someone else owns the key until `lease_until`.
    InFlight { lease_until: Millis, attempt: u32 },
    /// The key is completed: replay the stored response.
    Replay,
    /// The key exists with another fingerprint.
    Mismatch,
}

pub(crate) fn claim(current: Option<&Entry>, fp: Option<Fingerprint>, r: &Rules) -> ClaimDecision {
    let Some(e) = current.filter(|e| e.is_live(r.now)) else {
        return ClaimDecision::Acquire {
            attempt: 1,
            takeover: false,
        };
    };
    if fingerprints_differ(e.fingerprint, fp) {
        return ClaimDecision::Mismatch;
    }
    match e.state {
        State::Completed { .. } => ClaimDecision::Replay,
        State::InFlight { lease_until, epoch } => {
            let owner_gone = epoch < r.epoch && r.takeover == Takeover::OnRestart;
            if owner_gone || r.now >= lease_until {
                ClaimDecision::Acquire {
                    attempt: e.attempt.saturating_add(1),
                    takeover: true,
                }
            } else {
                ClaimDecision::InFlight {
                    lease_until,
                    attempt: e.attempt,
                }
            }
        }
    }
}

/// Both sides gave a fingerprint and they differ (compared by their 64-bit folds, which is
/// what the directory keeps). A claim without a fingerprint matches
/// anything (the caller opted out of the check).
fn fingerprints_differ(stored: Option<Fingerprint>, given: Option<Fingerprint>) -> bool {
    matches!((stored, given), (Some(a), Some(b)) if a.fold() != b.fold())
}

/// The decision for an operation by a lease holder (complete, release, renew).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerDecision {
    /// The token owns the key: apply the operation.
    Apply,
    /// Already done by this same token (a retried `complete` or `release`): succeed, change nothing.
    AlreadyDone,
    /// The token does not own the key.
    Stale,
}

/// Which owner operation is being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OwnerOp {
    Complete,
    Release,
    Renew,
}

pub(crate) fn owner(
    current: Option<&Entry>,
    token: u64,
    op: OwnerOp,
    now: Millis,
) -> OwnerDecision {
    let live = current.filter(|e| e.is_live(now));
    match (live, op) {
        // Released (or expired) and nobody claimed since: the release already happened.
        (None, OwnerOp::Release) => OwnerDecision::AlreadyDone,
        (None, _) => OwnerDecision::Stale,
        (Some(e), _) if e.token != token => OwnerDecision::Stale,
        (Some(e), op) => match (e.state, op) {
            (State::InFlight { .. }, _) => OwnerDecision::Apply,
            (State::Completed { .. }, OwnerOp::Complete) => OwnerDecision::AlreadyDone,
            (State::Completed { .. }, _) => OwnerDecision::Stale,
        },
    }
}

/// The entry written by an acquiring claim.
pub(crate) fn acquired_entry(
    token: u64,
    attempt: u32,
    fp: Option<Fingerprint>,
    ttl_ms: Millis,
    r: &Rules,
) -> Entry {
    let expires_at = r.now.saturating_add(ttl_ms);
    Entry {
        expires_at,
        fingerprint: fp,
        token,
        attempt,
        state: State::InFlight {
            lease_until: r.now.saturating_add(r.lease_ms).min(expires_at),
            epoch: r.epoch,
        },
    }
}

/// The entry after a successful complete.
pub(crate) fn completed_entry(e: &Entry, now: Millis) -> Entry {
    Entry {
        state: State::Completed { completed_at: now },
        ..*e
    }
}

/// The entry after a successful renew: the lease runs `lease_ms` from now, capped at expiry.
pub(crate) fn renewed_entry(e: &Entry, r: &Rules) -> Entry {
    Entry {
        state: State::InFlight {
            lease_until: r.now.saturating_add(r.lease_ms).min(e.expires_at),
            epoch: r.epoch,
        },
        ..*e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;
    const FP_A: Option<Fingerprint> = Some(Fingerprint(1));
    const FP_B: Option<Fingerprint> = Some(Fingerprint(2));

    fn rules(now: Millis) -> Rules {
        Rules {
            now,
            epoch: 2,
            lease_ms: 1_000,
            takeover: Takeover::OnRestart,
        }
    }

    fn in_flight(epoch: u32) -> Entry {
        Entry {
            expires_at: NOW + 10_000,
            fingerprint: FP_A,
            token: 7,
            attempt: 1,
            state: State::InFlight {
                lease_until: NOW + 1_000,
                epoch,
            },
        }
    }

    fn completed() -> Entry {
        completed_entry(&in_flight(2), NOW)
    }

    const NEW: ClaimDecision = ClaimDecision::Acquire {
        attempt: 1,
        takeover: false,
    };
    const TAKEOVER: ClaimDecision = ClaimDecision::Acquire {
        attempt: 2,
        takeover: true,
    };
    const BUSY: ClaimDecision = ClaimDecision::InFlight {
        lease_until: NOW + 1_000,
        attempt: 1,
    };

    #[test]
    fn claim_on_every_state() {
        let r = rules(NOW);
        let live = in_flight(2);
        let old_epoch = in_flight(1);
        let done = completed();
        let cases: &[(Option<&Entry>, Option<Fingerprint>, Rules, ClaimDecision)] = &[
            // absent
            (None, FP_A, r, NEW),
            (None, None, r, NEW),
            // in flight, same process, lease running
            (Some(&live), FP_A, r, BUSY),
            (Some(&live), None, r, BUSY),
            (Some(&live), FP_B, r, ClaimDecision::Mismatch),
            // in flight, lease ended (exactly at lease_until and after)
            (Some(&live), FP_A, rules(NOW + 1_000), TAKEOVER),
            (Some(&live), FP_A, rules(NOW + 999), BUSY),
            // mismatch wins over takeover too
            (
                Some(&live),
                FP_B,
                rules(NOW + 5_000),
                ClaimDecision::Mismatch,
            ),
            // in flight from a previous epoch: takeover at once by default
            (Some(&old_epoch), FP_A, r, TAKEOVER),
            (Some(&old_epoch), FP_B, r, ClaimDecision::Mismatch),
            // ... or after the lease with Takeover::AfterLease
            (
                Some(&old_epoch),
                FP_A,
                Rules {
                    takeover: Takeover::AfterLease,
                    ..r
                },
                BUSY,
            ),
            // completed
            (Some(&done), FP_A, r, ClaimDecision::Replay),
            (Some(&done), None, r, ClaimDecision::Replay),
            (Some(&done), FP_B, r, ClaimDecision::Mismatch),
            // expiry: absent exactly at expires_at, for every state and fingerprint
            (Some(&done), FP_A, rules(NOW + 9_999), ClaimDecision::Replay),
            (Some(&done), FP_A, rules(NOW + 10_000), NEW),
            (Some(&done), FP_B, rules(NOW + 10_000), NEW),
            (Some(&live), FP_A, rules(NOW + 10_000), NEW),
            (Some(&old_epoch), FP_B, rules(NOW + 10_000), NEW),
        ];
        for (i, (cur, fp, r, want)) in cases.iter().enumerate() {
            assert_eq!(claim(*cur, *fp, r), *want, "case {i}");
        }
    }

    #[test]
    fn owner_ops_on_every_state() {
        use OwnerDecision::*;
        use OwnerOp::*;
        let live = in_flight(2);
        let done = completed();
        let later = NOW + 10_000;
        let cases: &[(Option<&Entry>, u64, OwnerOp, Millis, OwnerDecision)] = &[
            (Some(&live), 7, Complete, NOW, Apply),
            (Some(&live), 7, Release, NOW, Apply),
            (Some(&live), 7, Renew, NOW, Apply),
            // lease ended but nobody took over: the owner may still finish
            (Some(&live), 7, Complete, NOW + 5_000, Apply),
            // stale tokens
            (Some(&live), 6, Complete, NOW, Stale),
            (Some(&live), 6, Release, NOW, Stale),
            (Some(&live), 6, Renew, NOW, Stale),
            // completed
            (Some(&done), 7, Complete, NOW, AlreadyDone),
            (Some(&done), 7, Release, NOW, Stale),
            (Some(&done), 7, Renew, NOW, Stale),
            (Some(&done), 6, Complete, NOW, Stale),
            // absent or expired
            (None, 7, Complete, NOW, Stale),
            (None, 7, Renew, NOW, Stale),
            (None, 7, Release, NOW, AlreadyDone),
            (Some(&live), 7, Complete, later, Stale),
            (Some(&live), 7, Renew, later, Stale),
            (Some(&live), 7, Release, later, AlreadyDone),
            (Some(&done), 7, Complete, later, Stale),
        ];
        for (i, (cur, token, op, now, want)) in cases.iter().enumerate() {
            assert_eq!(owner(*cur, *token, *op, *now), *want, "case {i}");
        }
    }

    #[test]
    fn new_entries_respect_lease_and_expiry() {
        let r = rules(NOW);
        let e = acquired_entry(9, 1, FP_A, 500, &r);
        assert_eq!(e.expires_at, NOW + 500);
        // A lease longer than the remaining lifetime is capped at expiry.
        assert_eq!(
            e.state,
            State::InFlight {
                lease_until: NOW + 500,
                epoch: 2
            }
        );
        let renewed = renewed_entry(&in_flight(1), &rules(NOW + 600));
        assert_eq!(
            renewed.state,
            State::InFlight {
                lease_until: NOW + 1_600,
                epoch: 2
            }
        );
        assert_eq!(renewed.token, 7);
        let done = completed_entry(&e, NOW + 5);
        assert_eq!(
            done.state,
            State::Completed {
                completed_at: NOW + 5
            }
        );
        assert_eq!(done.expires_at, e.expires_at);
    }
}
