//! The one error type of the crate.
//!
//! Expected outcomes of a claim (in flight, replay, mismatch) are values of
//! [`ClaimOutcome`](crate::ClaimOutcome), not errors. `Err` means the operation could not be
//! carried out as asked; every variant says what the caller should do next.

use std::fmt;

/// Shorthand for `Result<T, idemstore::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in idemstore.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty. Idempotency keys need at least one byte.
    EmptyKey,
    /// The key (scope plus key bytes) is longer than the configured maximum.
    KeyTooLong {
        /// Length of the offending scope plus key, in bytes.
        len: usize,
        /// The configured maximum ([`Builder::max_key_len`](crate::Builder::max_key_len)).
        max: usize,
    },
    /// The response given to `complete` is larger than the configured maximum.
    ResponseTooLarge {
        /// Encoded size of the response (status, headers and body), in bytes.
        size: usize,
        /// The configured maximum ([`Builder::max_response_size`](crate::Builder::max_response_size)).
        max: usize,
    },
    /// A per-claim lifetime is zero or above the configured maximum.
    InvalidTtl {
        /// The requested lifetime.
        requested: std::time::Duration,
        /// The configured maximum ([`Builder::max_ttl`](crate::Builder::max_ttl)).
        max: std::time::Duration,
    },
    /// A builder setting is out of range; the message names it.
    InvalidConfig(String),
    /// The lease behind this token no longer owns the key: it was taken over by a later
    /// attempt, released, completed, or the record expired. Nothing was changed. The caller
    /// must not store its result; a retry of the request will see the current state.
    StaleLease {
        /// The fencing token that was refused.
        token: u64,
    },
    /// The batch this operation belonged to failed to commit, and the store cannot tell whether
    /// it reached the disk. Retry the operation: a retried `claim` sees either the earlier
    /// attempt (in flight until its lease ends) or a fresh key. Every call made after this
    /// answer agrees on which (calls wait while the store reopens its file after the failure).
    OutcomeUnknown {
        /// The storage failure behind it (shared by every operation of the failed batch).
        source: std::sync::Arc<Error>,
    },
    /// The store hit a storage failure it could not recover from and refuses all operations.
    /// Drop it and open the file again once the cause (disk full, I/O error) is fixed.
    ///
    /// Drop (or close) it *before* opening the file again: with
    /// [`Durability::Bounded`](crate::Durability::Bounded) a poisoned store may hold operations
    /// acknowledged since the last sync in memory, which it writes when it is closed; the file
    /// is unlocked meanwhile, and a store opened on it while the poisoned one is alive does not
    /// see them (they are then lost, and the poisoned store's close says so). So not
    /// `store = Store::open(&path)?`, which opens the new store before the old one is dropped.
    Poisoned {
        /// What failed.
        reason: String,
    },
    /// The store already holds `max_in_flight` claims that are neither completed nor reclaimed;
    /// new keys are refused (HTTP `503`) until some complete, are released, or expire and are
    /// reclaimed by the sweeper. Claims of keys the store already holds are answered as usual.
    Overloaded {
        /// Claims in flight.
        in_flight: u64,
        /// The configured limit ([`Builder::max_in_flight`](crate::Builder::max_in_flight)).
        max: u64,
    },
    /// The store has been closed.
    Closed,
    /// The file is already open, by this process or another one. One process at a time.
    AlreadyOpen,
    /// The file was written by a newer idemstore whose format this version cannot read.
    UnsupportedFormat {
        /// Format version found in the file.
        found: u32,
        /// Newest format version this build reads.
        supported: u32,
    },
    /// Data read from the file does not decode. The file is damaged; restore it or start anew.
    Corrupt {
        /// Where and what.
        detail: String,
    },
    /// An error from the storage engine (redb) or the file system.
    Storage(redb::Error),
    /// An operating-system error outside the storage engine (for example spawning a thread).
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmptyKey => f.write_str("idempotency key is empty: send at least one byte"),
            Error::KeyTooLong { len, max } => write!(
                f,
                "idempotency key is {len} bytes with its scope, over the limit of {max}: use a shorter key"
            ),
            Error::ResponseTooLarge { size, max } => write!(
                f,
                "response is {size} bytes encoded, over the limit of {max}: store a reference to it instead, or raise max_response_size"
            ),
            Error::InvalidTtl { requested, max } => write!(
                f,
                "lifetime {requested:?} is not allowed: it must be above zero and at most {max:?}"
            ),
            Error::InvalidConfig(msg) => write!(f, "invalid configuration: {msg}"),
            Error::StaleLease { token } => write!(
                f,
                "lease {token} no longer owns the key (taken over, released, completed or expired): discard this attempt's result"
            ),
            Error::OutcomeUnknown { source } => write!(
                f,
                "the commit failed and the outcome is unknown ({source}): retry the operation"
            ),
            Error::Poisoned { reason } => write!(
                f,
                "store refuses operations after an unrecoverable storage failure ({reason}): fix the cause and reopen the file"
            ),
            Error::Overloaded { in_flight, max } => write!(
                f,
                "{in_flight} requests are in flight, at the limit of {max}: retry later, or raise max_in_flight"
            ),
            Error::Closed => f.write_str("store is closed"),
            Error::AlreadyOpen => f.write_str(
                "store file is already open in this or another process: open it once and share the handle",
            ),
            Error::UnsupportedFormat { found, supported } => write!(
                f,
                "store file has format version {found}, this build reads up to {supported}: upgrade idemstore"
            ),
            Error::Corrupt { detail } => write!(f, "store file is corrupt: {detail}"),
            Error::Storage(e) => write!(f, "storage error: {e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::OutcomeUnknown { source } => Some(source.as_ref()),
            Error::Storage(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// Whether a retry of the same operation may succeed (the failure was transient or its
    /// outcome is unknown).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::OutcomeUnknown { .. } | Error::Overloaded { .. }
        )
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::DatabaseAlreadyOpen => Error::AlreadyOpen,
            redb::Error::Corrupted(detail) => Error::Corrupt { detail },
            other => Error::Storage(other),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
