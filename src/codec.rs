//! The record codec: how one key's state is laid out in a redb value.
//!
//! ```text
//! byte 0      record version (RECORD_V1 = 1)
//! bytes 1..   bincode 2 (standard config, serde) of `Record`:
//!             scope, key, expires_at, fingerprint, token, attempt, state, response
//! ```
//!
//! Decoding never panics: a wrong version byte, a truncated or garbled body and trailing bytes
//! are all [`Error::Corrupt`]. bincode is not developed any more; it stays behind this module
//! and the version byte, so a later version can switch codecs without migrating old records.

use crate::error::{Error, Result};
use crate::key::{Key, Response};
use crate::machine::Entry;
use serde::{Deserialize, Serialize};

/// Version byte of records written by this build.
pub(crate) const RECORD_V1: u8 = 1;

/// Upper bound for one decoded record, so a corrupt length prefix cannot ask for a huge
/// allocation.
const DECODE_LIMIT: usize =
    crate::config::RESPONSE_SIZE_CEILING + 2 * crate::config::KEY_LEN_CEILING + 4096;

/// One key's full state as stored on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) key: Key,
    pub(crate) entry: Entry,
    pub(crate) response: Option<Response>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a record, borrowing its parts.
pub(crate) fn encode(key: &Key, entry: &Entry, response: Option<&Response>) -> Vec<u8> {
    #[derive(Serialize)]
    struct RecordRef<'a> {
        key: &'a Key,
        entry: &'a Entry,
        response: Option<&'a Response>,
    }
    let mut out = vec![RECORD_V1];
    bincode::serde::encode_into_std_write(
        RecordRef {
            key,
            entry,
            response,
        },
        &mut out,
        config(),
    )
    .expect("encoding into a Vec cannot fail and records are bounded by validation");
    out
}

/// Decodes a record; every malformed input is `Error::Corrupt`.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
    let corrupt = |detail: String| Error::Corrupt { detail };
    match bytes.first() {
        None => Err(corrupt("empty record".into())),
        Some(&RECORD_V1) => {
            let (record, used): (Record, usize) =
                bincode::serde::decode_from_slice(&bytes[1..], config())
                    .map_err(|e| corrupt(format!("record does not decode: {e}")))?;
            if used + 1 != bytes.len() {
                return Err(corrupt(format!(
                    "record has {} trailing bytes",
                    bytes.len() - used - 1
                )));
            }
            Ok(record)
        }
        Some(v) => Err(corrupt(format!("unknown record version {v}"))),
    }
}

/// Bytes of the key-ordered layout's table key: u16 scope length, scope, key.
pub(crate) fn scoped_key_bytes(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    // Scope length fits: keys are validated against KEY_LEN_CEILING (64 KiB) first.
    out.extend_from_slice(&(key.scope().len() as u16).to_be_bytes());
    out.extend_from_slice(key.scope());
    out.extend_from_slice(key.key());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Fingerprint;
    use crate::machine::State;

    fn sample() -> Record {
        Record {
            key: Key::new("tenant", [0u8, 255, 10, 13]),
            entry: Entry {
                expires_at: 86_400_000,
                fingerprint: Some(Fingerprint(u128::MAX - 3)),
                token: 42,
                attempt: 3,
                state: State::Completed { completed_at: 5 },
            },
            response: Some(
                Response::new(201)
                    .header("content-type", "application/json")
                    .body(vec![0u8, 1, 2, 255]),
            ),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = encode(&r.key, &r.entry, r.response.as_ref());
        assert_eq!(bytes[0], RECORD_V1);
        assert_eq!(decode(&bytes).unwrap(), r);
    }

    #[test]
    fn malformed_records_are_errors() {
        let r = sample();
        let good = encode(&r.key, &r.entry, r.response.as_ref());
        let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0], vec![2], vec![RECORD_V1]];
        for cut in 1..good.len() {
            inputs.push(good[..cut].to_vec());
        }
        let mut trailing = good.clone();
        trailing.push(0);
        inputs.push(trailing);
        // A huge length prefix must be refused, not allocated.
        inputs.push(vec![RECORD_V1, 252, 255, 255, 255, 255]);
        for input in inputs {
            assert!(
                matches!(decode(&input), Err(Error::Corrupt { .. })),
                "{input:?}"
            );
        }
    }
}
