//! The record codec: how one key's state is laid out in a redb value.
//!
//! ```text
//! byte 0       record version (RECORD_V1 = 1)
//! bytes 1..9   XXH3-64 of bytes 9.. (little endian): redb does not verify page checksums on
//!              reads, so a flipped bit would otherwise replay a wrong response
//! bytes 9..    bincode 2 (standard config, serde) of `Record`:
//!              scope, key, expires_at, fingerprint, token, attempt, state, response
//! ```
//!
//! Decoding never panics: a wrong version byte, a checksum mismatch, a truncated or garbled body
//! and trailing bytes are all [`Error::Corrupt`]. bincode is not developed any more; it stays behind this module
//! and the version byte, so a later version can switch codecs without migrating old records.

use crate::error::{Error, Result};
use crate::key::{Key, Response};
use crate::machine::Entry;
use serde::{Deserialize, Serialize};

/// Version byte of records written by this build.
pub(crate) const RECORD_V1: u8 = 1;
/// Version byte plus checksum.
const HEADER: usize = 9;

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
    let mut out = vec![RECORD_V1, 0, 0, 0, 0, 0, 0, 0, 0];
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
    let sum = xxhash_rust::xxh3::xxh3_64(&out[HEADER..]);
    out[1..HEADER].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes a record; every malformed input is `Error::Corrupt`.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
    let body = checked_body(bytes)?;
    let (record, used): (Record, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| Error::Corrupt {
            detail: format!("record does not decode: {e}"),
        })?;
    if used != body.len() {
        return Err(Error::Corrupt {
            detail: format!("record has {} trailing bytes", body.len() - used),
        });
    }
    Ok(record)
}

/// A record's key, borrowed from the record bytes.
#[derive(Debug, Deserialize)]
pub(crate) struct KeyRef<'a> {
    #[serde(borrow)]
    scope: &'a [u8],
    #[serde(borrow)]
    key: &'a [u8],
}

impl KeyRef<'_> {
    /// The same digest as [`Key::digest`] of the key it borrows.
    pub(crate) fn digest(&self, seeds: &crate::key::KeySeeds) -> u128 {
        seeds.digest(self.scope, self.key)
    }
}

/// What opening the store needs from a record: its key and entry, decoded without copying
/// (and without touching the response). Checksum-verified like [`decode`].
pub(crate) fn decode_head(bytes: &[u8]) -> Result<(KeyRef<'_>, Entry)> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        key: KeyRef<'a>,
        entry: Entry,
    }
    let body = checked_body(bytes)?;
    let (head, _): (Head<'_>, usize) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|e| Error::Corrupt {
            detail: format!("record does not decode: {e}"),
        })?;
    Ok((head.key, head.entry))
}

/// The bincode body of a record after checking its version byte and checksum.
fn checked_body(bytes: &[u8]) -> Result<&[u8]> {
    let corrupt = |detail: String| Error::Corrupt { detail };
    match bytes.first() {
        None => Err(corrupt("empty record".into())),
        Some(&RECORD_V1) => {
            let (sum, body) = bytes[1..]
                .split_first_chunk::<8>()
                .ok_or_else(|| corrupt("record shorter than its header".into()))?;
            if u64::from_le_bytes(*sum) != xxhash_rust::xxh3::xxh3_64(body) {
                return Err(corrupt("record checksum mismatch".into()));
            }
            Ok(body)
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

/// The codec for the `codec` fuzz target (feature `test-util`; not part of the API). Each
/// function panics when a property of the codec does not hold.
#[cfg(feature = "test-util")]
pub mod probe {
    use super::{Entry, Error, Key, Record, Response, decode, decode_head, encode};
    use crate::key::Fingerprint;
    use crate::machine::State;

    /// Decodes arbitrary bytes: never panics; when the record decodes, its head decodes to
    /// the same key and entry, and encoding it again decodes to the same record. Answers
    /// whether it decoded.
    pub fn decode_any(bytes: &[u8]) -> bool {
        let head = decode_head(bytes);
        let full = match decode(bytes) {
            Ok(record) => record,
            Err(Error::Corrupt { .. }) => return false,
            Err(other) => panic!("decode answered a non-corruption error: {other}"),
        };
        let (key, entry) = head.expect("a record that decodes has a head that decodes");
        let seeds = crate::key::KeySeeds::new();
        assert_eq!(key.digest(&seeds), full.key.digest(&seeds), "head key");
        assert_eq!(entry, full.entry, "head entry");
        let again = encode(&full.key, &full.entry, full.response.as_ref());
        assert_eq!(decode(&again).expect("re-encoded record decodes"), full);
        true
    }

    /// Makes the version byte and checksum of `value` valid (padding it to a header), so that
    /// damage planted in the body reaches the decoder behind them.
    pub fn reseal(value: &mut Vec<u8>) {
        if value.len() < super::HEADER {
            value.resize(super::HEADER, 0);
        }
        value[0] = super::RECORD_V1;
        let sum = xxhash_rust::xxh3::xxh3_64(&value[super::HEADER..]);
        value[1..super::HEADER].copy_from_slice(&sum.to_le_bytes());
    }

    /// Makes the checksum of every frame header in a commit log image valid again (a frame is
    /// a block starting with the log's magic and version), so that damage planted in a frame's
    /// header fields or payload reaches the replay behind the checksum.
    pub fn reseal_log(image: &mut [u8]) {
        crate::log::reseal(image);
    }

    /// Parses arbitrary bytes as a directory snapshot's header and section (the section's
    /// checksum made valid first when `reseal`): never panics; a section that parses
    /// re-encodes to its bytes. Answers whether it parsed.
    pub fn snapshot_any(data: &mut Vec<u8>, reseal: bool) -> bool {
        crate::snapshot::probe(data, reseal)
    }

    /// The parts of a record, as plain values.
    #[allow(
        missing_docs,
        reason = "the fields are the record's, documented on `Parts`"
    )]
    #[derive(Clone, Debug)]
    pub struct Parts {
        pub scope: Vec<u8>,
        pub key: Vec<u8>,
        pub expires_at: u64,
        pub fingerprint: Option<u128>,
        pub token: u64,
        pub attempt: u32,
        /// `Some((lease_until, epoch))` in flight, `None` completed at `expires_at / 2`.
        pub in_flight: Option<(u64, u32)>,
        pub response: Option<Response>,
    }

    /// Encodes `parts`, decodes them back (whole and head) byte-exact, then checks that every
    /// truncation, an appended byte and a flipped bit at `flip` are refused as corrupt.
    pub fn round_trip(parts: Parts, flip: (usize, u8)) {
        let record = Record {
            key: Key::new(parts.scope, parts.key),
            entry: Entry {
                expires_at: parts.expires_at,
                fingerprint: parts.fingerprint.map(Fingerprint),
                token: parts.token,
                attempt: parts.attempt,
                state: match parts.in_flight {
                    Some((lease_until, epoch)) => State::InFlight { lease_until, epoch },
                    None => State::Completed {
                        completed_at: parts.expires_at / 2,
                    },
                },
            },
            response: parts.response,
        };
        let bytes = encode(&record.key, &record.entry, record.response.as_ref());
        assert_eq!(decode(&bytes).expect("an encoded record decodes"), record);
        let (key, entry) = decode_head(&bytes).expect("an encoded record's head decodes");
        let seeds = crate::key::KeySeeds::new();
        assert_eq!(key.digest(&seeds), record.key.digest(&seeds));
        assert_eq!(entry, record.entry);
        let corrupt = |b: &[u8]| matches!(decode(b), Err(Error::Corrupt { .. }));
        for cut in [0, 1, 8, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(corrupt(&bytes[..cut.min(bytes.len() - 1)]), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(corrupt(&longer), "a trailing byte");
        if flip.1 != 0 {
            let mut flipped = bytes;
            let at = flip.0 % flipped.len();
            flipped[at] ^= flip.1;
            assert!(corrupt(&flipped), "xor {:#x} at {}", flip.1, flip.0);
        }
    }
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
    fn head_decodes_without_copying_and_digests_like_the_key() {
        let r = sample();
        let bytes = encode(&r.key, &r.entry, r.response.as_ref());
        let (key, entry) = decode_head(&bytes).unwrap();
        assert_eq!(entry, r.entry);
        let seeds = crate::key::KeySeeds::new();
        assert_eq!(key.digest(&seeds), r.key.digest(&seeds));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode_head(&flipped), Err(Error::Corrupt { .. })));
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
        // A flipped bit anywhere is caught by the checksum.
        for i in 1..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x10;
            inputs.push(flipped);
        }
        // A huge length prefix with a valid checksum must be refused, not allocated.
        let body = [252u8, 255, 255, 255, 255];
        let mut huge = vec![RECORD_V1];
        huge.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        huge.extend_from_slice(&body);
        inputs.push(huge);
        for input in inputs {
            assert!(
                matches!(decode(&input), Err(Error::Corrupt { .. })),
                "{input:?}"
            );
        }
    }
}
