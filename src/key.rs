//! Keys, request fingerprints and stored responses: the values callers hand to the store.

use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;

/// An idempotency key within a tenant scope.
///
/// The scope (an API key, an account id, a tenant name) is part of the key: two scopes using the
/// same key string never see each other's records. Both parts are arbitrary bytes: a UUID, a
/// `redeploy-abc123def456`, a pipeline run id, or binary data. The store checks the length
/// (scope plus key, [`Builder::max_key_len`](crate::Builder::max_key_len)) and that the key is
/// not empty when the key is used.
///
/// ```
/// use idemstore::Key;
/// let key = Key::new("tenant-42", "550e8400-e29b-41d4-a716-446655440000");
/// assert_eq!(key.scope(), b"tenant-42");
/// assert_eq!(key.key(), b"550e8400-e29b-41d4-a716-446655440000");
/// // Same key string, other tenant: a different key.
/// assert_ne!(key, Key::new("tenant-7", "550e8400-e29b-41d4-a716-446655440000"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    scope: Vec<u8>,
    key: Vec<u8>,
}

impl Key {
    /// A key `key` in the tenant scope `scope`.
    pub fn new(scope: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        Key {
            scope: scope.as_ref().to_vec(),
            key: key.as_ref().to_vec(),
        }
    }

    /// A key with the empty scope, for single-tenant services.
    pub fn unscoped(key: impl AsRef<[u8]>) -> Self {
        Key::new([], key)
    }

    /// The tenant scope.
    pub fn scope(&self) -> &[u8] {
        &self.scope
    }

    /// The key bytes within the scope.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Scope plus key length, the figure checked against `max_key_len`.
    pub fn len(&self) -> usize {
        self.scope.len() + self.key.len()
    }

    /// Whether the key bytes are empty (the scope does not count).
    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// The in-memory directory's 128-bit identity of this key.
    pub(crate) fn digest(&self, seeds: &KeySeeds) -> u128 {
        seeds.digest(&self.scope, &self.key)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Key({:?}/{:?})",
            String::from_utf8_lossy(&self.scope),
            String::from_utf8_lossy(&self.key)
        )
    }
}

/// Random per-process keys for key digests (SipHash-1-3 with 128-bit output), so that nobody
/// can aim keys at collisions in the directory.
#[derive(Clone, Debug)]
pub(crate) struct KeySeeds(u64, u64);

impl KeySeeds {
    pub(crate) fn new() -> Self {
        // std's RandomState is seeded from the OS's random source.
        let random = std::collections::hash_map::RandomState::new();
        KeySeeds(random.hash_one(0u8), random.hash_one(1u8))
    }

    /// The two SipHash keys (a directory snapshot keeps them: its digests were made with them).
    pub(crate) fn parts(&self) -> [u64; 2] {
        [self.0, self.1]
    }

    pub(crate) fn from_parts([a, b]: [u64; 2]) -> Self {
        KeySeeds(a, b)
    }

    /// The digest of the key `key` in scope `scope` (each part length-prefixed).
    pub(crate) fn digest(&self, scope: &[u8], key: &[u8]) -> u128 {
        use siphasher::sip128::{Hasher128, SipHasher13};
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.0, self.1);
        h.write(&(scope.len() as u64).to_le_bytes());
        h.write(scope);
        h.write(&(key.len() as u64).to_le_bytes());
        h.write(key);
        h.finish128().as_u128()
    }
}

/// A 128-bit digest of the request a key was first used with.
///
/// Supply one at claim time and the store reports a key reused for a *different* request as
/// [`ClaimOutcome::Mismatch`](crate::ClaimOutcome::Mismatch) (HTTP 422) instead of replaying
/// someone else's result. [`Fingerprint::of_request`] computes one from the parts that identify
/// an HTTP request; [`Fingerprint::from_bytes`] takes any digest you already have.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    /// Fingerprint of a request: XXH3-128 over the length-prefixed method, path and body.
    ///
    /// ```
    /// use idemstore::Fingerprint;
    /// let a = Fingerprint::of_request("POST", "/v1/deploy", br#"{"env":"prod"}"#);
    /// let b = Fingerprint::of_request("POST", "/v1/deploy", br#"{"env":"dev"}"#);
    /// assert_ne!(a, b);
    /// ```
    pub fn of_request(method: &str, path: &str, body: &[u8]) -> Self {
        Self::from_parts(&[method.as_bytes(), path.as_bytes(), body])
    }

    /// Fingerprint of any sequence of parts (length-prefixed, so part boundaries matter).
    pub fn from_parts(parts: &[&[u8]]) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in parts {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Fingerprint(h.digest128())
    }

    /// The 64 bits the in-memory directory keeps. Folding is idempotent on folded values, so
    /// `a.fold() == b.fold()` decides "same request" both for full and for folded fingerprints.
    /// Two different requests fold alike with probability 2^-64.
    pub(crate) fn fold(self) -> u64 {
        (self.0 as u64) ^ ((self.0 >> 64) as u64)
    }

    /// A fingerprint from a digest computed elsewhere (the first 16 bytes are used, zero-padded).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut buf = [0u8; 16];
        let n = bytes.len().min(16);
        buf[..n].copy_from_slice(&bytes[..n]);
        Fingerprint(u128::from_le_bytes(buf))
    }
}

/// The result of an operation, as stored by `complete` and returned, byte for byte, on replay.
///
/// Modelled on an HTTP response (status code, headers, body) but usable for any result: a job
/// runner can store an exit code as `status` and its output as `body`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Status code, replayed as is (a `201` replays as `201`).
    pub status: u16,
    /// Header names and values, in order. Values are bytes; names are not normalised.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a status code and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            ..Default::default()
        }
    }

    /// Adds a header (builder style).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body (builder style).
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Size counted against `max_response_size`: status, header names and values, and body,
    /// with a small per-field overhead.
    pub(crate) fn stored_size(&self) -> usize {
        2 + 8
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 16)
                .sum::<usize>()
    }
}
