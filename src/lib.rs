//! # idemstore
//!
//! An embedded, persistent idempotency-key store. For each request that carries an
//! idempotency key it answers, atomically and durably: is this **new** (run it), a duplicate of
//! one **in flight** (conflict, retry later), a retry of one that **finished** (replay the stored
//! result byte for byte), or a key reused with a **different request** (mismatch)?
//!
//! ```
//! use idemstore::{ClaimOutcome, Fingerprint, Key, Response, Store};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path().join("idem.redb"))?;
//! let key = Key::new("tenant-42", "redeploy-abc123def456");
//! let fp = Fingerprint::of_request("POST", "/v1/environments/env_01/redeploy", b"{}");
//!
//! // First request: the caller owns the key, runs the action, stores its result.
//! let ClaimOutcome::Acquired(lease) = store.claim(&key, Some(fp))? else { unreachable!() };
//! let response = Response::new(201).header("content-type", "application/json").body(r#"{"job":"j_1"}"#);
//! store.complete(&lease, response.clone())?;
//!
//! // A retry with the same key: the stored result, same status, not run again.
//! match store.claim(&key, Some(fp))? {
//!     ClaimOutcome::Replay(replay) => assert_eq!(replay.response, response),
//!     other => panic!("expected a replay, got {other:?}"),
//! }
//!
//! // The same key with another request: a mismatch (HTTP 422), never someone else's result.
//! let other = Fingerprint::of_request("POST", "/v1/environments/env_01/stop", b"{}");
//! assert!(matches!(store.claim(&key, Some(other))?, ClaimOutcome::Mismatch));
//! # Ok::<(), idemstore::Error>(())
//! ```
//!
//! ## States
//!
//! ```text
//!                 claim (new)                  complete(lease)
//!   absent ───────────────────▶ in flight ───────────────────────▶ completed
//!     ▲   ◀─────────────────────  │   ▲                              │
//!     │      release(lease)       │   │ claim after the lease ends, or
//!     │                           └───┘ after a restart: takeover,   │
//!     │                                 attempt + 1, new token        │
//!     └──────────────── expiry (ttl after the claim) ◀───────────────┘
//! ```
//!
//! ## Guarantees
//!
//! With the default [`Durability::Immediate`]:
//! - when `claim` returns [`ClaimOutcome::Acquired`], the claim is on disk (fdatasync'd): after a
//!   crash or power loss the key is still claimed (and, by default, taken over at once by the
//!   next claim, flagged [`Lease::is_takeover`]);
//! - when `complete` returns `Ok`, the response is on disk: every later claim until expiry
//!   replays it byte for byte, across crashes and restarts;
//! - when `release` or `renew` returns `Ok`, that change is on disk;
//! - a replay is only ever served from committed, synced state;
//! - a commit that fails answers every operation in it with [`Error::OutcomeUnknown`] and
//!   acknowledges none of them; the store then reopens its file, and calls made meanwhile wait
//!   for that, so every call made after such an answer (but [`Store::stats`], whose counts
//!   may lag) shows each of those operations either done or not, for good.
//!
//! With [`Durability::Bounded`] acknowledgements come before the sync, and a crash loses what
//! was acknowledged within the configured delay before it (see its docs). There a batch is
//! answered, and visible to other callers, as soon as it is decided. In both modes the writer
//! thread applies answered batches to the store file in bulk, after (`docs/DESIGN.md`, "The
//! stage"); with `Immediate` the commit log holds them before they are answered.
//!
//! Invariants:
//! 1. A record at or past its expiry instant is absent for every operation, whether or not it
//!    has been removed from disk yet.
//! 2. A key has at most one live owner; two claims of one key are decided in arrival order.
//! 3. Only the current lease's fencing token may complete, release or renew; a stale token gets
//!    [`Error::StaleLease`] and changes nothing.
//! 4. A fingerprint mismatch is reported before in-flight and before replay.
//! 5. Nothing is visible to other callers before the commit that wrote it returned (with
//!    [`Durability::Bounded`]: before its batch was decided and staged for the file).
//! 6. Fencing tokens are unique and increasing over the life of the file, across crashes.
//! 7. Time never runs backwards for the store: a clock that steps back is ignored up to the
//!    highest time already used, or persisted (by every commit and a clean close) before a
//!    restart; the store's time stands still until the clock catches up, so leases and
//!    lifetimes do not run meanwhile (`docs/DESIGN.md`, Time). So a key that a write found
//!    expired (a claim, or a complete or renew refused as stale for it), or the sweeper
//!    removed, is never resurrected. A read alone persists nothing: a
//!    key that `get` saw expired in the moments before the sweeper removed it can read as
//!    live again if the process then crashes and restarts on a clock that stepped back.
//!
//! ## Expiry
//!
//! A record expires `ttl` after the claim that created it (24 hours by default;
//! [`Store::claim_with_ttl`] sets it per claim, up to [`Builder::max_ttl`]). Completing a record
//! keeps its expiry; a takeover is a new claim and starts a new lifetime.
//! - **When an expired key stops being served:** exactly at its expiry instant, by every
//!   operation (claim acquires it as new, `get` returns `None`, a late `complete` is stale),
//!   whether or not the sweeper has run.
//! - **When its space is reclaimed:** the background sweeper wakes every `sweep_interval`
//!   (1 s) and removes, from the file and from memory, every record whose expiry lies at or
//!   before the current tick, in chunks of `sweep_chunk` per group commit, behind the claims
//!   waiting at that moment. A record is therefore reclaimed within two ticks of its expiry
//!   under normal load (`cargo bench --bench expiry` measures it); a backlog (after downtime)
//!   drains at the rate that bench reports while claims keep flowing.
//!   [`Store::run_pending_expiry`] runs a pass now, for tests and examples.
//!
//! ## How it works
//!
//! Callers hand operations to one writer thread through a bounded channel; the writer decides a
//! whole batch against an in-memory directory of live keys into one redb transaction, appends
//! the rows it changed to the commit log beside the store file and syncs that once, commits the
//! transaction (in memory), publishes the changes to the directory, and answers. Losers (in flight, replay,
//! mismatch) are answered from the directory without the writer. Opening rebuilds the directory
//! from the records, or from the snapshot of it a clean close of a large store wrote
//! ([`Builder::snapshot_min_keys`]). The on-disk layout, the commit log, the snapshot, their
//! measurements and the memory cost per key are described in `docs/DESIGN.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Reports on stderr what the store cannot return to a caller (a failed background sweep, a
/// recovery), prefixed `idemstore: `. Never panics: `eprintln!` does when stderr is a closed
/// pipe, which would kill the writer thread it is called from.
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "idemstore: {}", format_args!($($arg)*));
    }};
}

mod clock;
mod codec;
mod config;
mod error;
mod index;
mod key;
mod log;
mod machine;
mod oneshot;
mod outcome;
mod pending;
#[cfg(feature = "test-util")]
pub mod sim_disk;
mod snapshot;
mod stage;
mod stats;
mod storage;
mod store;
mod sweeper;
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "the wheel's full API is exercised by its own tests"
    )
)]
mod wheel;
mod writer;

#[cfg(feature = "test-util")]
pub use clock::ManualClock;
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub use codec::probe as codec_probe;
pub use config::{Builder, Durability, Layout, Takeover};
pub use error::{Error, Result};
pub use key::{Fingerprint, Key, Response};
pub use outcome::{ClaimOutcome, Lease, RecordInfo, Replay};
pub use stats::Stats;
pub use store::Store;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
