//! Reference model of what a store may hold, for the power-loss and I/O-fault campaigns
//! (`tests/power_loss.rs`, `tests/io_faults.rs`; `tests/bounded_crash.rs` uses its helpers).
//!
//! For each key the model keeps the set of records the store may hold, given everything it
//! answered so far:
//! - an answer narrows the set to the records that explain it (an answer no possible record
//!   explains is a violation, reported with what was expected);
//! - an operation whose outcome is unknown (`OutcomeUnknown`, or an answer lost in a crash)
//!   widens it: applied or not;
//! - an operation that certainly did nothing (`Poisoned`) leaves it alone.
//!
//! The rules mirror the documented state machine (crate docs, `Takeover::OnRestart`): a record
//! at or past its expiry is absent, only the current token may complete, release or renew, a
//! claim takes over an in-flight key whose lease ended or whose claim was made before the store
//! was last opened. Acknowledged work therefore stays in the model exactly until an
//! acknowledged operation (or the clock) legitimately removes it, and a store that lost it
//! after a crash answers `get` with something no possible record explains.
// Shared by three test binaries, none of which uses every item.
#![allow(dead_code)]

use idemstore::{ClaimOutcome, Error, Fingerprint, Key, Lease, RecordInfo, Response, Store};
use std::fmt::Debug;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Deterministic splitmix64 generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A seed derived from `seed` and a label, so that sub-streams do not overlap.
pub fn mix(seed: u64, label: u64) -> u64 {
    Rng::new(seed ^ label.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// The base seed: `IDEMSTORE_SEED` (decimal or 0x-hex) or `default`.
pub fn base_seed(default: u64) -> u64 {
    env_u64("IDEMSTORE_SEED").unwrap_or(default)
}

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// Milliseconds since the Unix epoch.
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `value`'s Debug text, cut to a readable length (responses carry kilobytes of body).
pub fn short(value: &impl Debug) -> String {
    let s = format!("{value:?}");
    if s.len() <= 900 {
        return s;
    }
    let mut cut = 900;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} chars)", &s[..cut], s.len())
}

/// Counts panics in the store's threads (`idemstore-*`) and the campaigns' worker threads,
/// after printing them as usual. A campaign fails if the count moved. (Panics of a test's own
/// thread are caught where the campaign runs; they are not counted, so that tests running in
/// parallel do not see each other's failures.)
pub fn panic_count() -> usize {
    static HOOK: Once = Once::new();
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if name.starts_with("idemstore") || name.starts_with("power-loss-worker") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// Settings the store runs with and where time and the store's life stand.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// The store's time (the manual clock; it only moves forward in these campaigns).
    pub now: u64,
    /// Which open of the file the store is (a claim of an earlier open may be taken over).
    pub generation: u32,
    pub lease_ms: u64,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    InFlight {
        lease_until: u64,
        generation: u32,
    },
    Completed {
        completed_at: u64,
        response: Response,
    },
}

/// A record as the store would hold it. `token` is `None` for a claim whose answer was lost.
#[derive(Clone, Debug, PartialEq)]
pub struct Rec {
    pub token: Option<u64>,
    pub attempt: u32,
    pub fp: Option<Fingerprint>,
    pub expires_at: u64,
    pub phase: Phase,
}

/// What `get` shows of a record.
#[derive(Clone, Debug, PartialEq)]
pub enum Info {
    InFlight {
        attempt: u32,
        lease_until: u64,
        expires_at: u64,
        from_previous_process: bool,
    },
    Completed {
        response: Response,
        attempt: u32,
        completed_at: u64,
        expires_at: u64,
    },
}

impl Info {
    pub fn of(info: &RecordInfo) -> Info {
        match info {
            RecordInfo::InFlight {
                attempt,
                lease_deadline,
                expires_at,
                from_previous_process,
            } => Info::InFlight {
                attempt: *attempt,
                lease_until: ms(*lease_deadline),
                expires_at: ms(*expires_at),
                from_previous_process: *from_previous_process,
            },
            RecordInfo::Completed(r) => Info::Completed {
                response: r.response.clone(),
                attempt: r.attempt,
                completed_at: ms(r.completed_at),
                expires_at: ms(r.expires_at),
            },
            other => panic!("unknown RecordInfo {other:?}"),
        }
    }
}

/// An answer, reduced to what the model predicts (tokens are checked separately).
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Acquired {
        attempt: u32,
        takeover: bool,
        expires_at: u64,
        lease_until: u64,
    },
    InFlight {
        attempt: u32,
        retry_after_ms: u64,
    },
    Replay {
        response: Response,
        attempt: u32,
        completed_at: u64,
        expires_at: u64,
    },
    Mismatch,
    /// `complete` or `release` returned `Ok`.
    Done,
    Renewed {
        lease_until: u64,
    },
    Stale,
    Expired(bool),
    Got(Option<Info>),
}

/// An operation on one key.
#[derive(Clone, Debug)]
pub enum Op {
    Claim {
        fp: Option<Fingerprint>,
        ttl_ms: u64,
    },
    Complete {
        token: u64,
        response: Response,
    },
    Release {
        token: u64,
    },
    Renew {
        token: u64,
    },
    Expire,
    Get,
}

/// What an operation's result says about its effect.
#[derive(Debug)]
pub enum Seen {
    Answer(Answer, Option<u64>),
    /// Applied or not: `OutcomeUnknown` (or `Closed`, conservatively).
    Unknown,
    /// Certainly not applied: `Poisoned`, or an error raised before the writer was asked.
    NoEffect,
}

/// The effect class of an operation, for the workload driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Answered,
    Unknown,
    Poisoned,
    /// Another error (a read of a dead disk, for example), with no effect.
    Failed,
}

fn live(rec: &Option<Rec>, now: u64) -> Option<&Rec> {
    rec.as_ref().filter(|r| now < r.expires_at)
}

fn differ(stored: Option<Fingerprint>, given: Option<Fingerprint>) -> bool {
    matches!((stored, given), (Some(a), Some(b)) if a != b)
}

/// The answer `op` gets on `rec` and the record after it. `token` is the token of an
/// acquiring claim (`None` when its answer was lost).
pub fn decide(rec: &Option<Rec>, op: &Op, c: &Ctx, token: Option<u64>) -> (Answer, Option<Rec>) {
    let now = c.now;
    let same = rec.clone();
    let cur = live(rec, now);
    match op {
        Op::Claim { fp, ttl_ms } => {
            let acquire = |attempt: u32, takeover: bool, fp: Option<Fingerprint>| {
                let expires_at = now.saturating_add(*ttl_ms);
                let lease_until = now.saturating_add(c.lease_ms).min(expires_at);
                let answer = Answer::Acquired {
                    attempt,
                    takeover,
                    expires_at,
                    lease_until,
                };
                let phase = Phase::InFlight {
                    lease_until,
                    generation: c.generation,
                };
                let rec = Rec {
                    token,
                    attempt,
                    fp,
                    expires_at,
                    phase,
                };
                (answer, Some(rec))
            };
            let Some(r) = cur else {
                return acquire(1, false, *fp);
            };
            if differ(r.fp, *fp) {
                return (Answer::Mismatch, same);
            }
            match &r.phase {
                Phase::Completed {
                    completed_at,
                    response,
                } => {
                    let answer = Answer::Replay {
                        response: response.clone(),
                        attempt: r.attempt,
                        completed_at: *completed_at,
                        expires_at: r.expires_at,
                    };
                    (answer, same)
                }
                Phase::InFlight {
                    lease_until,
                    generation,
                } => {
                    if *generation != c.generation || now >= *lease_until {
                        // A takeover without a fingerprint keeps the key's.
                        acquire(r.attempt.saturating_add(1), true, fp.or(r.fp))
                    } else {
                        let answer = Answer::InFlight {
                            attempt: r.attempt,
                            retry_after_ms: lease_until - now,
                        };
                        (answer, same)
                    }
                }
            }
        }
        Op::Complete { token, response } => match cur {
            Some(r) if r.token == Some(*token) => match r.phase {
                Phase::InFlight { .. } => {
                    let phase = Phase::Completed {
                        completed_at: now,
                        response: response.clone(),
                    };
                    (Answer::Done, Some(Rec { phase, ..r.clone() }))
                }
                Phase::Completed { .. } => (Answer::Done, same),
            },
            _ => (Answer::Stale, same),
        },
        Op::Release { token } => match cur {
            None => (Answer::Done, same),
            Some(r) if r.token == Some(*token) => match r.phase {
                Phase::InFlight { .. } => (Answer::Done, None),
                Phase::Completed { .. } => (Answer::Stale, same),
            },
            Some(_) => (Answer::Stale, same),
        },
        Op::Renew { token } => match cur {
            Some(r) if r.token == Some(*token) => match r.phase {
                Phase::InFlight { .. } => {
                    let lease_until = now.saturating_add(c.lease_ms).min(r.expires_at);
                    let phase = Phase::InFlight {
                        lease_until,
                        generation: c.generation,
                    };
                    (
                        Answer::Renewed { lease_until },
                        Some(Rec { phase, ..r.clone() }),
                    )
                }
                Phase::Completed { .. } => (Answer::Stale, same),
            },
            _ => (Answer::Stale, same),
        },
        Op::Expire => (Answer::Expired(cur.is_some()), None),
        Op::Get => {
            let info = cur.map(|r| match &r.phase {
                Phase::InFlight {
                    lease_until,
                    generation,
                } => Info::InFlight {
                    attempt: r.attempt,
                    lease_until: *lease_until,
                    expires_at: r.expires_at,
                    from_previous_process: *generation != c.generation,
                },
                Phase::Completed {
                    completed_at,
                    response,
                } => Info::Completed {
                    response: response.clone(),
                    attempt: r.attempt,
                    completed_at: *completed_at,
                    expires_at: r.expires_at,
                },
            });
            (Answer::Got(info), same)
        }
    }
}

thread_local! {
    static ERRORS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The errors operations of this thread returned since the last call (`Debug` text), for
/// checking their types and messages.
pub fn take_errors() -> Vec<String> {
    ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

/// What `get` on a completed key answered, as the source of `Corrupt` inside
/// `OutcomeUnknown`, while the store reopened its file after a failed commit or once it was
/// poisoned, before that was fixed (`tests/io_faults.rs`,
/// `get_during_recovery_or_poison_is_not_reported_as_corruption`). The campaigns count any
/// `Corrupt` as a violation.
pub const MOVING_RECORD: &str = "the record kept moving while it was read";

/// Classifies an error. `Err(text)` for an error that must not happen (corruption, or any
/// failure while `failures_allowed` is false).
fn seen_err(e: &Error, failures_allowed: bool) -> Result<Seen, String> {
    ERRORS.with(|log| log.borrow_mut().push(format!("{e:?}")));
    match e {
        Error::StaleLease { .. } => Ok(Seen::Answer(Answer::Stale, None)),
        Error::Corrupt { .. } => Err(format!("a record does not decode: {e}")),
        Error::OutcomeUnknown { source } if matches!(**source, Error::Corrupt { .. }) => {
            Err(format!("corruption reported as an unknown outcome: {e}"))
        }
        _ if !failures_allowed => Err(format!("unexpected error: {e} ({e:?})")),
        Error::OutcomeUnknown { .. } | Error::Closed => Ok(Seen::Unknown),
        Error::Poisoned { .. } => Ok(Seen::NoEffect),
        Error::Storage(_) | Error::Io(_) => Ok(Seen::NoEffect),
        other => Err(format!("unexpected error: {other} ({other:?})")),
    }
}

fn effect_of(seen: &Seen, result_err: Option<&Error>) -> Effect {
    match (seen, result_err) {
        (Seen::Unknown, _) => Effect::Unknown,
        (Seen::NoEffect, Some(Error::Poisoned { .. })) => Effect::Poisoned,
        (Seen::NoEffect, _) => Effect::Failed,
        (Seen::Answer(..), _) => Effect::Answered,
    }
}

/// Fencing tokens seen by one sequential caller: each new one must exceed every earlier one.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub floor: u64,
    pub all: Vec<u64>,
}

impl Tokens {
    pub fn starting_above(floor: u64) -> Self {
        Tokens {
            floor,
            all: Vec::new(),
        }
    }

    pub fn accept(&mut self, key: &Key, token: u64) -> Result<(), String> {
        if token <= self.floor {
            return Err(format!(
                "{key:?}: fencing token {token} handed out, not above {} handed out before",
                self.floor
            ));
        }
        self.floor = token;
        self.all.push(token);
        Ok(())
    }
}

/// One key: the records the store may hold for it and every lease acquired on it.
#[derive(Clone, Debug)]
pub struct KeyModel {
    pub key: Key,
    pub fp: Fingerprint,
    pub possible: Vec<Option<Rec>>,
    /// Every acknowledged lease on this key, oldest first (renewals update them in place).
    pub leases: Vec<Lease>,
}

impl KeyModel {
    pub fn new(key: Key, fp: Fingerprint) -> Self {
        KeyModel {
            key,
            fp,
            possible: vec![None],
            leases: Vec::new(),
        }
    }

    /// Applies `op` with what the store answered to the possible records.
    pub fn apply(&mut self, c: &Ctx, op: &Op, seen: Seen) -> Result<(), String> {
        let mut next: Vec<Option<Rec>> = Vec::new();
        match seen {
            Seen::NoEffect => return Ok(()),
            Seen::Unknown => {
                for rec in &self.possible {
                    next.push(rec.clone());
                    next.push(decide(rec, op, c, None).1);
                }
            }
            Seen::Answer(answer, token) => {
                for rec in &self.possible {
                    let (expected, after) = decide(rec, op, c, token);
                    if expected == answer {
                        next.push(after);
                    }
                }
                if next.is_empty() {
                    let expected: Vec<Answer> = self
                        .possible
                        .iter()
                        .map(|rec| decide(rec, op, c, token).0)
                        .collect();
                    return Err(format!(
                        "{:?} at t={} (store open #{}): {} answered {}; the model expected one of {} (possible records {})",
                        self.key,
                        c.now,
                        c.generation,
                        short(op),
                        short(&answer),
                        short(&expected),
                        short(&self.possible)
                    ));
                }
            }
        }
        let mut unique: Vec<Option<Rec>> = Vec::with_capacity(next.len());
        for rec in next {
            if !unique.contains(&rec) {
                unique.push(rec);
            }
        }
        self.possible = unique;
        Ok(())
    }

    /// Whether the key may have a record on disk (live or expired but not removed).
    pub fn may_have_record(&self) -> bool {
        self.possible.iter().any(Option::is_some)
    }

    /// The index of the newest lease, or a random one (20 %) to exercise stale tokens.
    pub fn pick_lease(&self, rng: &mut Rng) -> Option<usize> {
        let n = self.leases.len() as u64;
        if n == 0 {
            return None;
        }
        Some(if rng.chance(20) { rng.below(n) } else { n - 1 } as usize)
    }

    pub fn claim(
        &mut self,
        store: &Store,
        c: &Ctx,
        fp: Option<Fingerprint>,
        ttl: Option<Duration>,
        tokens: &mut Tokens,
        failures_allowed: bool,
    ) -> Result<Effect, String> {
        let result = match ttl {
            None => store.claim(&self.key, fp),
            Some(ttl) => store.claim_with_ttl(&self.key, fp, ttl),
        };
        let ttl_ms = ttl.map_or(c.ttl_ms, |t| t.as_millis() as u64);
        let op = Op::Claim { fp, ttl_ms };
        let seen = match &result {
            Ok(outcome) => {
                let (answer, token) = claim_answer(outcome);
                if let ClaimOutcome::Acquired(lease) = outcome {
                    if lease.key() != &self.key {
                        return Err(format!("{:?}: lease for another key {lease:?}", self.key));
                    }
                    tokens.accept(&self.key, lease.token())?;
                    self.leases.push(lease.clone());
                }
                Seen::Answer(answer, token)
            }
            Err(e) => seen_err(e, failures_allowed)?,
        };
        let effect = effect_of(&seen, result.as_ref().err());
        self.apply(c, &op, seen)?;
        Ok(effect)
    }

    /// Completes with lease `i` and `response`.
    pub fn complete(
        &mut self,
        store: &Store,
        c: &Ctx,
        i: usize,
        response: Response,
        failures_allowed: bool,
    ) -> Result<Effect, String> {
        let lease = &self.leases[i];
        let result = store.complete(lease, response.clone());
        let op = Op::Complete {
            token: lease.token(),
            response,
        };
        self.owner_result(c, &op, result.map(|()| Answer::Done), failures_allowed)
    }

    pub fn release(
        &mut self,
        store: &Store,
        c: &Ctx,
        i: usize,
        failures_allowed: bool,
    ) -> Result<Effect, String> {
        let lease = &self.leases[i];
        let result = store.release(lease);
        let op = Op::Release {
            token: lease.token(),
        };
        self.owner_result(c, &op, result.map(|()| Answer::Done), failures_allowed)
    }

    pub fn renew(
        &mut self,
        store: &Store,
        c: &Ctx,
        i: usize,
        failures_allowed: bool,
    ) -> Result<Effect, String> {
        let mut lease = self.leases[i].clone();
        let result = store.renew(&mut lease);
        let op = Op::Renew {
            token: lease.token(),
        };
        let answer = result.map(|()| Answer::Renewed {
            lease_until: ms(lease.lease_deadline()),
        });
        if answer.is_ok() {
            self.leases[i] = lease;
        }
        self.owner_result(c, &op, answer, failures_allowed)
    }

    fn owner_result(
        &mut self,
        c: &Ctx,
        op: &Op,
        result: Result<Answer, Error>,
        failures_allowed: bool,
    ) -> Result<Effect, String> {
        let seen = match &result {
            Ok(answer) => Seen::Answer(answer.clone(), None),
            Err(e) => seen_err(e, failures_allowed)?,
        };
        let effect = effect_of(&seen, result.as_ref().err());
        self.apply(c, op, seen)?;
        Ok(effect)
    }

    pub fn expire(
        &mut self,
        store: &Store,
        c: &Ctx,
        failures_allowed: bool,
    ) -> Result<Effect, String> {
        let result = store.expire(&self.key);
        let seen = match &result {
            Ok(was_live) => Seen::Answer(Answer::Expired(*was_live), None),
            Err(e) => seen_err(e, failures_allowed)?,
        };
        let effect = effect_of(&seen, result.as_ref().err());
        self.apply(c, &Op::Expire, seen)?;
        Ok(effect)
    }

    /// Reads the key with `get` and narrows the model to what it shows. Returns what it showed
    /// (`None` when the read failed and failures are allowed).
    pub fn get(
        &mut self,
        store: &Store,
        c: &Ctx,
        failures_allowed: bool,
    ) -> Result<Option<Option<Info>>, String> {
        match store.get(&self.key) {
            Ok(info) => {
                let info = info.as_ref().map(Info::of);
                self.apply(c, &Op::Get, Seen::Answer(Answer::Got(info.clone()), None))?;
                Ok(Some(info))
            }
            Err(e) => {
                seen_err(&e, failures_allowed)?;
                Ok(None)
            }
        }
    }
}

/// The model's view of a claim's answer, and the token of an acquisition.
pub fn claim_answer(outcome: &ClaimOutcome) -> (Answer, Option<u64>) {
    match outcome {
        ClaimOutcome::Acquired(lease) => (
            Answer::Acquired {
                attempt: lease.attempt(),
                takeover: lease.is_takeover(),
                expires_at: ms(lease.expires_at()),
                lease_until: ms(lease.lease_deadline()),
            },
            Some(lease.token()),
        ),
        ClaimOutcome::InFlight {
            retry_after,
            attempt,
        } => (
            Answer::InFlight {
                attempt: *attempt,
                retry_after_ms: retry_after.as_millis() as u64,
            },
            None,
        ),
        ClaimOutcome::Replay(r) => (
            Answer::Replay {
                response: r.response.clone(),
                attempt: r.attempt,
                completed_at: ms(r.completed_at),
                expires_at: ms(r.expires_at),
            },
            None,
        ),
        ClaimOutcome::Mismatch => (Answer::Mismatch, None),
    }
}

/// A response that names its key and token (so a replay shows which lease stored it), with a
/// body of up to 1.5 KB, often a few KB, and now and then 20 to 40 KB (records spanning
/// several pages).
pub fn response_for(rng: &mut Rng, key: &Key, token: u64) -> Response {
    let len = match rng.below(100) {
        0..4 => rng.range(20_000, 40_000),
        4..20 => rng.range(2_000, 8_000),
        _ => rng.below(1_500),
    } as usize;
    let header_len = rng.below(24) as usize;
    Response::new(200 + rng.below(300) as u16)
        .header("x-key", key.key())
        .header("x-token", token.to_string())
        .header("x-bin", rng.bytes(header_len))
        .body(rng.bytes(len))
}

/// The token a response made by [`response_for`] names.
pub fn token_of(response: &Response) -> Option<u64> {
    std::str::from_utf8(response.header_value("x-token")?)
        .ok()?
        .parse()
        .ok()
}

/// Everything the model knows: per-key records, the tokens handed out, the time.
#[derive(Clone, Debug)]
pub struct Model {
    pub keys: Vec<KeyModel>,
    pub tokens: Tokens,
    pub ctx: Ctx,
}

impl Model {
    /// `n` keys over three tenant scopes, with random fingerprints, at `now`.
    pub fn new(rng: &mut Rng, n: usize, now: u64, lease: Duration, ttl: Duration) -> Model {
        let keys = (0..n)
            .map(|i| {
                let key = Key::new(format!("tenant-{}", i % 3), format!("key-{i}"));
                KeyModel::new(key, Fingerprint(u128::from(rng.next_u64()) + 1))
            })
            .collect();
        let ctx = Ctx {
            now,
            generation: 0,
            lease_ms: lease.as_millis() as u64,
            ttl_ms: ttl.as_millis() as u64,
        };
        Model {
            keys,
            tokens: Tokens::default(),
            ctx,
        }
    }

    /// Reads every key with `get` (failures are violations) and narrows the model; answers
    /// how many keys are live.
    pub fn get_all(&mut self, store: &Store) -> Result<usize, String> {
        let c = self.ctx;
        let mut live = 0;
        for km in &mut self.keys {
            if let Some(Some(_)) = km.get(store, &c, false)? {
                live += 1;
            }
        }
        Ok(live)
    }

    /// `records_on_disk()` lies between the live keys and the keys that may have a record.
    pub fn check_record_count(&self, store: &Store, live: usize) -> Result<(), String> {
        let records = store
            .records_on_disk()
            .map_err(|e| format!("records_on_disk failed: {e}"))?;
        let may_have = self.keys.iter().filter(|k| k.may_have_record()).count() as u64;
        if records < live as u64 || records > may_have {
            return Err(format!(
                "records_on_disk() = {records}, expected between {live} live keys and {may_have} keys that may have a record"
            ));
        }
        Ok(())
    }

    /// Runs the sweeper, then checks that it removed no live record (every key reads as
    /// before) and every record due: a record is certainly due `tick` after its expiry (the
    /// sweeper's tick, `Builder::sweep_interval`), so `records_on_disk()` is at most the
    /// number of keys that may have a record not yet due. A record filed at the wrong place
    /// of the expiry order would be reclaimed early (a live key lost) or stay.
    pub fn check_sweep(&mut self, store: &Store, tick: Duration) -> Result<(), String> {
        store
            .run_pending_expiry()
            .map_err(|e| format!("run_pending_expiry failed: {e}"))?;
        let live = self.get_all(store)?;
        let records = store
            .records_on_disk()
            .map_err(|e| format!("records_on_disk failed: {e}"))?;
        let due_by = self.ctx.now.saturating_sub(tick.as_millis() as u64);
        let not_due = self
            .keys
            .iter()
            .filter(|k| k.possible.iter().flatten().any(|r| r.expires_at > due_by))
            .count() as u64;
        if records < live as u64 || records > not_due {
            return Err(format!(
                "after a sweep records_on_disk() = {records}, expected between {live} live keys and {not_due} keys that may have a record not yet due"
            ));
        }
        Ok(())
    }

    /// On each chosen key: a claim (a takeover of a key left in flight, with a token above
    /// every earlier one; a replay of a completed one), usually completed; then a completion
    /// with every older lease of the key, which must be refused or be the completing lease's
    /// own retry (the stored response does not change); then a read. All against the model,
    /// on a healthy store.
    pub fn write_checks(
        &mut self,
        store: &Store,
        rng: &mut Rng,
        chosen: &[usize],
    ) -> Result<(), String> {
        let c = self.ctx;
        for &k in chosen {
            let km = &mut self.keys[k];
            let old_leases = km.leases.len();
            let fp = Some(km.fp);
            km.claim(store, &c, fp, None, &mut self.tokens, false)?;
            if km.leases.len() > old_leases && rng.chance(70) {
                let i = km.leases.len() - 1;
                let response = response_for(rng, &km.key, km.leases[i].token());
                km.complete(store, &c, i, response, false)?;
            }
            for i in 0..old_leases {
                let intruder = response_for(rng, &km.key, km.leases[i].token());
                km.complete(store, &c, i, intruder, false)?;
            }
            km.get(store, &c, false)?;
        }
        Ok(())
    }
}

/// One random operation on `km` (no clock moves). `failures` allows failed operations.
pub fn random_op(
    rng: &mut Rng,
    store: &Store,
    km: &mut KeyModel,
    c: &Ctx,
    tokens: &mut Tokens,
    failures: bool,
) -> Result<Effect, String> {
    let roll = rng.below(100);
    let lease = km.pick_lease(rng);
    match (roll, lease) {
        (0..40, _) | (40..88, None) => {
            let fp = match rng.below(100) {
                0..80 => Some(km.fp),
                80..88 => Some(Fingerprint(u128::from(rng.next_u64()))),
                _ => None,
            };
            let ttl = rng.chance(25).then(|| {
                let secs = [45, 120, 300, 1800][rng.below(4) as usize];
                Duration::from_secs(secs)
            });
            km.claim(store, c, fp, ttl, tokens, failures)
        }
        (40..65, Some(i)) => {
            let response = response_for(rng, &km.key, km.leases[i].token());
            km.complete(store, c, i, response, failures)
        }
        (65..75, Some(i)) => km.release(store, c, i, failures),
        (75..88, Some(i)) => km.renew(store, c, i, failures),
        (88..93, _) => km.expire(store, c, failures),
        _ => km.get(store, c, failures).map(|got| match got {
            Some(_) => Effect::Answered,
            None => Effect::Failed,
        }),
    }
}

/// Reclaims expired records now. Unobservable except in `records_on_disk` (an expired
/// record is absent whether or not it was reclaimed), so the model does not change.
pub fn sweep(store: &Store, failures: bool) -> Result<Effect, String> {
    match store.run_pending_expiry() {
        Ok(_) => Ok(Effect::Answered),
        Err(e @ Error::Corrupt { .. }) => Err(format!("sweep: {e}")),
        Err(e) if !failures => Err(format!("sweep failed: {e} ({e:?})")),
        Err(e) => {
            ERRORS.with(|log| log.borrow_mut().push(format!("{e:?}")));
            Ok(match e {
                Error::Poisoned { .. } => Effect::Poisoned,
                Error::OutcomeUnknown { .. } | Error::Closed => Effect::Unknown,
                _ => Effect::Failed,
            })
        }
    }
}

/// One random step of a campaign: a clock move, a sweep, or an operation on a random key.
pub fn random_step(
    rng: &mut Rng,
    clock: &idemstore::ManualClock,
    (lease, ttl): (Duration, Duration),
    model: &mut Model,
    store: &Store,
    failures: bool,
) -> Result<Effect, String> {
    if rng.chance(12) {
        advance(rng, clock, lease, ttl);
        model.ctx.now = clock.now_ms();
        return Ok(Effect::Answered);
    }
    if rng.chance(5) {
        return sweep(store, failures);
    }
    let k = rng.below(model.keys.len() as u64) as usize;
    random_op(
        rng,
        store,
        &mut model.keys[k],
        &model.ctx,
        &mut model.tokens,
        failures,
    )
}

/// Moves the clock: mostly a little, often past a lease, sometimes past lifetimes.
pub fn advance(rng: &mut Rng, clock: &idemstore::ManualClock, lease: Duration, ttl: Duration) {
    let ms = match rng.below(100) {
        0..45 => rng.below(5_000),
        45..80 => lease.as_millis() as u64 + rng.below(2_000),
        80..92 => rng.range(100_000, 400_000),
        _ => ttl.as_millis() as u64 + rng.below(60_000),
    };
    clock.advance(Duration::from_millis(ms));
}
