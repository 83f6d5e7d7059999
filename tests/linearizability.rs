//! Linearizability: threads run random operations (claim with and without fingerprints,
//! complete, release, renew, expire, get) on a few shared keys of one store, recording when
//! each call started and returned on a shared counter, and what the clock read just after the
//! call and just before the return; every history is then checked per key against the
//! sequential model below with the Wing-Gong checker in `support/lin.rs`.
//!
//! One store on a temporary file serves every history (each in a key scope of its own); it is
//! reopened every 50 histories, with `Durability::Bounded` three times in four and
//! `Immediate` otherwise. The model is absent / in flight (token, fingerprint, attempt,
//! lease deadline, expiry) / completed (the same, body, completion time), and each answer
//! carries the times the store reported. Tokens are opaque: the model accepts any token for a
//! claim that acquires, then tracks it. Across the whole history, fencing tokens must be
//! unique and ordered like the acquisitions that returned before others were called
//! (invariant 6).
//!
//! The first test holds the `ManualClock` still, so leases never end and records never
//! expire. `histories_with_a_moving_clock_are_linearizable` moves it forward (one step in ten,
//! up to 700 ms; lease 1 s, lifetime 4 s), so claims take over ended leases and find expired
//! records while other threads use them. There each operation may decide by any time the clock
//! showed during its call (see `KeyState` and the DESIGN's "Time"). Without the clock moving,
//! a store that took over a lease 50 ms early, or served a record 100 ms past its expiry,
//! passes; with it, both fail within two histories.
//!
//! `histories_with_injected_faults_are_linearizable` runs the still-clock histories on a
//! simulated disk with one write, sync or `set_len` failing in each: operations answered
//! `OutcomeUnknown` took effect before they returned or not at all (`Output::Unknown`, through
//! `Model::step_all`), and every later answer must agree on which. Without 4237433 it fails
//! within a few histories.
//!
//! Knobs: `IDEMSTORE_LIN_HISTORIES`, `IDEMSTORE_LIN_CLOCK_HISTORIES` (default 200 each; the
//! long run is 10,000), `IDEMSTORE_LIN_FAULT_HISTORIES` (default 100),
//! `IDEMSTORE_LIN_THREADS` (default 8), `IDEMSTORE_LIN_OPS` (operations per thread per
//! history, default 24), `IDEMSTORE_LIN_IMMEDIATE` (1: every store `Immediate`, 0: every one
//! `Bounded`; unset: the mix above), `IDEMSTORE_SEED` (base seed; a failure prints the
//! settings that rerun its history). A seed fixes each thread's operations, not the
//! interleaving.

#[path = "support/lin.rs"]
mod lin;

use idemstore::{
    ClaimOutcome, Durability, Error, Fingerprint, Key, Lease, ManualClock, RecordInfo,
};
use idemstore::{Response, Store};
use lin::{Model, Operation, Verdict, check_partitioned_with_budget};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const KEYS: u8 = 3;
/// Where the manual clock starts.
const START_MS: u64 = 1_700_000_000_000;
/// The store's lease and record lifetime. With the clock held still (the first two tests)
/// neither ever ends; with the moving clock both end within a history.
const LEASE_MS: u64 = 1_000;
const TTL_MS: u64 = 4_000;
/// Longest step of the moving clock.
const MAX_ADVANCE_MS: u64 = 700;
/// Histories per store process.
const SEGMENT: u64 = 50;
/// Search steps per key and history before the checker gives up ("unknown" fails the test).
const BUDGET: u64 = 20_000_000;

#[derive(Clone, Debug)]
enum Input {
    Claim { key: u8, fp: Option<u8> },
    Complete { key: u8, token: u64, body: u32 },
    Release { key: u8, token: u64 },
    Renew { key: u8, token: u64 },
    Expire { key: u8 },
    Get { key: u8 },
}

impl Input {
    fn key(&self) -> u8 {
        match *self {
            Input::Claim { key, .. }
            | Input::Complete { key, .. }
            | Input::Release { key, .. }
            | Input::Renew { key, .. }
            | Input::Expire { key }
            | Input::Get { key } => key,
        }
    }
}

/// An operation and the clock's readings just after its call and just before its return: the
/// store's time for it (the one reading it decides by) lies between.
#[derive(Clone, Debug)]
struct Call {
    input: Input,
    lo: u64,
    hi: u64,
}

/// Answers, with every time the store reports (ms since the Unix epoch).
#[derive(Clone, Debug, PartialEq)]
enum Output {
    Acquired {
        token: u64,
        attempt: u32,
        takeover: bool,
        lease_until: u64,
        expires_at: u64,
    },
    InFlight {
        attempt: u32,
        retry_after_ms: u64,
    },
    Replay {
        body: u32,
        attempt: u32,
        completed_at: u64,
        expires_at: u64,
    },
    Mismatch,
    /// `complete` or `release` answered `Ok`.
    Ok,
    /// `renew` answered `Ok`, moving the lease's deadline here.
    Renewed {
        lease_until: u64,
    },
    Stale,
    Expired(bool),
    Absent,
    GetInFlight {
        attempt: u32,
        lease_until: u64,
        expires_at: u64,
        previous: bool,
    },
    GetCompleted {
        body: u32,
        attempt: u32,
        completed_at: u64,
        expires_at: u64,
    },
    /// `Error::OutcomeUnknown` (a commit failed): the operation took effect before it
    /// returned, or not at all; every later answer must agree on which.
    Unknown,
    /// `Error::Poisoned`: refused before anything was done.
    Refused,
    /// `Error::Storage`: reading the file failed (redb refuses reads after a failed write until
    /// the store has reopened it); nothing was done. Only a claim (reading a stored response to
    /// replay) or a get may answer it.
    ReadFailed,
    /// Anything else, which no state allows.
    Unexpected(String),
}

/// The token of an acquisition whose answer was lost (`Output::Unknown`): no client holds it.
const LOST_TOKEN: u64 = u64::MAX;

/// One key's record, live or expired.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Record {
    token: u64,
    fp: Option<u8>,
    attempt: u32,
    expires_at: u64,
    state: RecordState,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RecordState {
    InFlight {
        lease_until: u64,
    },
    /// Completed at a time in `at` (inclusive): `complete` does not say which; the first
    /// replay or read of the record does.
    Completed {
        body: u32,
        at: (u64, u64),
    },
}

/// One key's state. It restates `tests/support/reference.rs` (and so `src/machine.rs`) with
/// opaque fencing tokens (an acquisition's token is whatever the store answered), and with the
/// store's time for each operation any time the clock showed during its call: an operation
/// takes effect at one instant of its call (linearizable), and decides by one reading of the
/// clock taken during its call, not necessarily at that instant. (A writer decides a batch by
/// the time it read when it built the batch, and the batch's effects appear when it is
/// published, a commit later; until then other callers are answered from the state before it,
/// at the clock's later times.) The clock never steps back here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KeyState {
    /// No operation placed from here on decides by an earlier time: the lowest time the last
    /// change could have been decided by (the writer's batches read the clock in order, and an
    /// answer showing a change read the clock after it), or a completion time a read learnt.
    /// Reads raise nothing: one that shows the state before a change may carry a later time.
    floor: u64,
    record: Option<Record>,
}

impl Model for KeyState {
    type Input = Call;
    type Output = Output;

    /// The first of [`Model::step_all`]'s states (the checker calls that one).
    fn step(&self, call: &Call, output: &Output) -> Option<Self> {
        self.step_all(call, output).into_iter().next()
    }

    fn step_all(&self, call: &Call, output: &Output) -> Vec<Self> {
        // The times this call may decide by.
        let call = &Call {
            lo: call.lo.max(self.floor),
            ..call.clone()
        };
        if call.lo > call.hi {
            return vec![];
        }
        // How far a change raises the floor: to the lowest time it can have been decided by.
        let changed = match *output {
            Output::Acquired { expires_at, .. } => expires_at - TTL_MS,
            Output::Renewed { lease_until } => call.lo.max(lease_until - LEASE_MS),
            Output::Ok | Output::Expired(_) | Output::Unknown => call.lo,
            // A completion time, learnt: the completion was decided then.
            Output::Replay { completed_at, .. } | Output::GetCompleted { completed_at, .. }
                if completed_at <= call.hi =>
            {
                completed_at
            }
            Output::Replay { .. } | Output::GetCompleted { .. } => return vec![],
            _ => 0,
        };
        let mut out = match output {
            Output::Unknown => {
                let mut out = vec![self.clone()];
                out.extend(self.effect(call));
                out
            }
            Output::Refused => vec![self.clone()],
            Output::ReadFailed => match call.input {
                Input::Claim { .. } | Input::Get { .. } => vec![self.clone()],
                _ => vec![],
            },
            _ => self.answers(call, output),
        };
        for next in &mut out {
            next.floor = self.floor.max(changed);
        }
        out.dedup();
        out
    }
}

fn fingerprints_differ(held: Option<u8>, given: Option<u8>) -> bool {
    matches!((held, given), (Some(a), Some(b)) if a != b)
}

impl KeyState {
    /// No record; the floor is set by `step_all`.
    const ABSENT: KeyState = KeyState {
        floor: 0,
        record: None,
    };

    fn with(record: Record) -> Self {
        KeyState {
            floor: 0,
            record: Some(record),
        }
    }

    /// The record if it is live at some time of `call`'s (before its expiry).
    fn live_in(&self, call: &Call) -> Option<&Record> {
        self.record.as_ref().filter(|r| call.lo < r.expires_at)
    }

    /// Whether there is no live record at some time of `call`'s.
    fn none_in(&self, call: &Call) -> bool {
        self.record.as_ref().is_none_or(|r| call.hi >= r.expires_at)
    }

    /// The states `call` may leave, answering `output`, at some time of its call.
    fn answers(&self, call: &Call, output: &Output) -> Vec<Self> {
        let (lo, hi) = (call.lo, call.hi);
        let same = || vec![self.clone()];
        let live = self.live_in(call);
        match (&call.input, output) {
            (
                Input::Claim { fp, .. },
                &Output::Acquired {
                    token,
                    attempt,
                    takeover,
                    lease_until,
                    expires_at,
                },
            ) => {
                let Some(now) = expires_at
                    .checked_sub(TTL_MS)
                    .filter(|t| (lo..=hi).contains(t))
                else {
                    return vec![];
                };
                let held = self.record.as_ref().filter(|r| now < r.expires_at);
                let fp = match held {
                    None => (attempt == 1 && !takeover).then_some(*fp),
                    Some(r) => match r.state {
                        RecordState::InFlight { lease_until: l }
                            if l <= now && !fingerprints_differ(r.fp, *fp) =>
                        {
                            (attempt == r.attempt + 1 && takeover).then(|| fp.or(r.fp))
                        }
                        _ => None,
                    },
                };
                match fp {
                    Some(fp) if lease_until == (now + LEASE_MS).min(expires_at) => {
                        vec![KeyState::with(Record {
                            token,
                            fp,
                            attempt,
                            expires_at,
                            state: RecordState::InFlight { lease_until },
                        })]
                    }
                    _ => vec![],
                }
            }
            (
                Input::Claim { fp, .. },
                &Output::InFlight {
                    attempt,
                    retry_after_ms,
                },
            ) => match live {
                Some(r) if r.attempt == attempt && !fingerprints_differ(r.fp, *fp) => {
                    let RecordState::InFlight { lease_until } = r.state else {
                        return vec![];
                    };
                    // The one time that answer was given at.
                    let now = lease_until.checked_sub(retry_after_ms);
                    let fits = now.is_some_and(|t| (lo..=hi).contains(&t) && t < r.expires_at);
                    if fits && retry_after_ms > 0 {
                        same()
                    } else {
                        vec![]
                    }
                }
                _ => vec![],
            },
            (Input::Claim { fp, .. }, Output::Mismatch) => match live {
                Some(r) if fingerprints_differ(r.fp, *fp) => same(),
                _ => vec![],
            },
            (
                Input::Claim { fp, .. },
                &Output::Replay {
                    body,
                    attempt,
                    completed_at,
                    expires_at,
                },
            ) => match live {
                Some(r) if !fingerprints_differ(r.fp, *fp) => {
                    self.completed(r, body, attempt, completed_at, expires_at)
                }
                _ => vec![],
            },
            (Input::Complete { token, body, .. }, Output::Ok) => match live {
                Some(r) if r.token == *token => match r.state {
                    RecordState::InFlight { .. } => {
                        let mut r = r.clone();
                        r.state = RecordState::Completed {
                            body: *body,
                            at: (lo, hi.min(r.expires_at - 1)),
                        };
                        vec![KeyState::with(r)]
                    }
                    // Completing twice with the same lease succeeds and keeps the first response.
                    RecordState::Completed { .. } => same(),
                },
                _ => vec![],
            },
            (Input::Complete { token, .. }, Output::Stale) => {
                let owned = live.is_some_and(|r| r.token == *token);
                if !owned || self.none_in(call) {
                    same()
                } else {
                    vec![]
                }
            }
            (Input::Release { token, .. }, Output::Ok) => {
                let mut out = vec![];
                // Released or expired and not claimed since: already done.
                if self.none_in(call) {
                    out.push(self.clone());
                }
                if let Some(r) = live
                    && r.token == *token
                    && matches!(r.state, RecordState::InFlight { .. })
                {
                    out.push(KeyState::ABSENT);
                }
                out
            }
            (Input::Release { token, .. }, Output::Stale) => match live {
                Some(r)
                    if r.token != *token || matches!(r.state, RecordState::Completed { .. }) =>
                {
                    same()
                }
                _ => vec![],
            },
            (Input::Renew { token, .. }, &Output::Renewed { lease_until }) => match live {
                Some(r) if r.token == *token => {
                    let RecordState::InFlight { .. } = r.state else {
                        return vec![];
                    };
                    // Some time of the call, before the expiry, that gives this deadline.
                    let last = hi.min(r.expires_at - 1);
                    let fits = if lease_until < r.expires_at {
                        lease_until
                            .checked_sub(LEASE_MS)
                            .is_some_and(|t| (lo..=last).contains(&t))
                    } else {
                        lease_until == r.expires_at && last + LEASE_MS >= r.expires_at
                    };
                    if !fits {
                        return vec![];
                    }
                    let mut r = r.clone();
                    r.state = RecordState::InFlight { lease_until };
                    vec![KeyState::with(r)]
                }
                _ => vec![],
            },
            (Input::Renew { token, .. }, Output::Stale) => {
                let owned = live.is_some_and(|r| {
                    r.token == *token && matches!(r.state, RecordState::InFlight { .. })
                });
                if !owned || self.none_in(call) {
                    same()
                } else {
                    vec![]
                }
            }
            (Input::Expire { .. }, &Output::Expired(was_live)) => {
                let fits = if was_live {
                    live.is_some()
                } else {
                    self.none_in(call)
                };
                if fits { vec![KeyState::ABSENT] } else { vec![] }
            }
            (Input::Get { .. }, Output::Absent) => {
                if self.none_in(call) {
                    same()
                } else {
                    vec![]
                }
            }
            (
                Input::Get { .. },
                &Output::GetInFlight {
                    attempt,
                    lease_until,
                    expires_at,
                    previous: false,
                },
            ) => match live {
                Some(r)
                    if r.attempt == attempt
                        && r.expires_at == expires_at
                        && r.state == (RecordState::InFlight { lease_until }) =>
                {
                    same()
                }
                _ => vec![],
            },
            (
                Input::Get { .. },
                &Output::GetCompleted {
                    body,
                    attempt,
                    completed_at,
                    expires_at,
                },
            ) => match live {
                Some(r) => self.completed(r, body, attempt, completed_at, expires_at),
                None => vec![],
            },
            _ => vec![],
        }
    }

    /// A replay or read of the completed record `r`: the state, now knowing when it completed.
    fn completed(
        &self,
        r: &Record,
        body: u32,
        attempt: u32,
        completed_at: u64,
        expires_at: u64,
    ) -> Vec<Self> {
        match r.state {
            RecordState::Completed {
                body: b,
                at: (from, to),
            } if b == body
                && r.attempt == attempt
                && r.expires_at == expires_at
                && (from..=to).contains(&completed_at) =>
            {
                let mut r = r.clone();
                r.state = RecordState::Completed {
                    body,
                    at: (completed_at, completed_at),
                };
                vec![KeyState::with(r)]
            }
            _ => vec![],
        }
    }

    /// The state `call` leaves when it takes effect, whatever it answered. Only for a clock
    /// held still (the injected-fault test), where the time of the call is known.
    fn effect(&self, call: &Call) -> Option<Self> {
        assert_eq!(
            call.lo, call.hi,
            "an unknown outcome is modelled with the clock held still"
        );
        let now = call.lo;
        let live = self.live_in(call);
        match (&call.input, live) {
            (Input::Claim { fp, .. }, None) => Some(KeyState::with(Record {
                token: LOST_TOKEN,
                fp: *fp,
                attempt: 1,
                expires_at: now + TTL_MS,
                state: RecordState::InFlight {
                    lease_until: now + LEASE_MS,
                },
            })),
            (Input::Complete { token, body, .. }, Some(r))
                if r.token == *token && matches!(r.state, RecordState::InFlight { .. }) =>
            {
                let mut r = r.clone();
                r.state = RecordState::Completed {
                    body: *body,
                    at: (now, now),
                };
                Some(KeyState::with(r))
            }
            (Input::Release { token, .. }, Some(r))
                if r.token == *token && matches!(r.state, RecordState::InFlight { .. }) =>
            {
                Some(KeyState::ABSENT)
            }
            (Input::Expire { .. }, _) => Some(KeyState::ABSENT),
            _ => None,
        }
    }
}

/// xorshift64*: each thread's operations, from the history's seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn body_of(response: &Response) -> u32 {
    match response.body.as_slice().try_into() {
        Ok(bytes) => u32::from_le_bytes(bytes),
        Err(_) => u32::MAX,
    }
}

struct Settings {
    threads: usize,
    ops: usize,
    /// Percent of operations that move the clock forward (by up to `MAX_ADVANCE_MS`).
    advance_pct: u64,
}

/// Ms since the Unix epoch.
fn ms(t: std::time::SystemTime) -> u64 {
    let since = t.duration_since(std::time::UNIX_EPOCH);
    since.expect("after the epoch").as_millis() as u64
}

/// One thread's part of a history.
fn client(
    store: &Store,
    scope: &str,
    thread: usize,
    seed: u64,
    settings: &Settings,
    ticks: &AtomicU64,
    clock: &ManualClock,
) -> Vec<Operation<Call, Output>> {
    let mut rng = Rng::new(seed ^ ((thread as u64 + 1) << 32));
    let mut leases: Vec<Lease> = Vec::new();
    let mut out = Vec::with_capacity(settings.ops);
    let fps = [None, Some(0), Some(1)];
    for i in 0..settings.ops {
        // The clock moves (not an operation of the history: each operation carries the clock's
        // readings around it). Drawn only when the clock moves, so the other tests' seeds
        // keep their operations.
        if settings.advance_pct > 0 && rng.below(100) < settings.advance_pct {
            clock.advance(Duration::from_millis(1 + rng.below(MAX_ADVANCE_MS)));
            continue;
        }
        let key = rng.below(u64::from(KEYS)) as u8;
        let k = Key::new(scope, [key]);
        let pick = rng.below(100);
        // Owner operations use one of this thread's leases, current or stale.
        let lease = (!leases.is_empty()).then(|| rng.below(leases.len() as u64) as usize);
        let input = match (pick, lease) {
            (0..40, _) | (_, None) if pick < 80 => Input::Claim {
                key,
                fp: fps[rng.below(3) as usize],
            },
            (40..60, Some(l)) => Input::Complete {
                key: leases[l].key().key()[0],
                token: leases[l].token(),
                body: ((thread as u32) << 16) | i as u32,
            },
            (60..70, Some(l)) => Input::Release {
                key: leases[l].key().key()[0],
                token: leases[l].token(),
            },
            (70..80, Some(l)) => Input::Renew {
                key: leases[l].key().key()[0],
                token: leases[l].token(),
            },
            (80..85, _) => Input::Expire { key },
            _ => Input::Get { key },
        };
        let by_token = |t: u64| {
            leases
                .iter()
                .position(|l| l.token() == t)
                .expect("own lease")
        };
        let call = ticks.fetch_add(1, SeqCst);
        let lo = clock.now_ms();
        let output = match &input {
            Input::Claim { fp, .. } => {
                let fp = fp.map(|f| Fingerprint::from_parts(&[&[f]]));
                match store.claim(&k, fp) {
                    Ok(ClaimOutcome::Acquired(lease)) => {
                        let answer = Output::Acquired {
                            token: lease.token(),
                            attempt: lease.attempt(),
                            takeover: lease.is_takeover(),
                            lease_until: ms(lease.lease_deadline()),
                            expires_at: ms(lease.expires_at()),
                        };
                        leases.push(lease);
                        answer
                    }
                    Ok(ClaimOutcome::InFlight {
                        attempt,
                        retry_after,
                    }) => Output::InFlight {
                        attempt,
                        retry_after_ms: retry_after.as_millis() as u64,
                    },
                    Ok(ClaimOutcome::Replay(r)) => Output::Replay {
                        body: body_of(&r.response),
                        attempt: r.attempt,
                        completed_at: ms(r.completed_at),
                        expires_at: ms(r.expires_at),
                    },
                    Ok(ClaimOutcome::Mismatch) => Output::Mismatch,
                    Err(e) if failed(&e).is_some() => failed(&e).unwrap(),
                    other => Output::Unexpected(format!("{other:?}")),
                }
            }
            Input::Complete { token, body, .. } => {
                let response = Response::new(200).body(body.to_le_bytes());
                owner(store.complete(&leases[by_token(*token)], response))
            }
            Input::Release { token, .. } => owner(store.release(&leases[by_token(*token)])),
            Input::Renew { token, .. } => {
                let l = by_token(*token);
                match owner(store.renew(&mut leases[l])) {
                    Output::Ok => Output::Renewed {
                        lease_until: ms(leases[l].lease_deadline()),
                    },
                    other => other,
                }
            }
            Input::Expire { .. } => match store.expire(&k) {
                Ok(live) => Output::Expired(live),
                Err(e) => failed(&e).unwrap_or_else(|| Output::Unexpected(e.to_string())),
            },
            Input::Get { .. } => match store.get(&k) {
                Ok(None) => Output::Absent,
                Ok(Some(RecordInfo::InFlight {
                    attempt,
                    lease_deadline,
                    expires_at,
                    from_previous_process,
                })) => Output::GetInFlight {
                    attempt,
                    lease_until: ms(lease_deadline),
                    expires_at: ms(expires_at),
                    previous: from_previous_process,
                },
                Ok(Some(RecordInfo::Completed(r))) => Output::GetCompleted {
                    body: body_of(&r.response),
                    attempt: r.attempt,
                    completed_at: ms(r.completed_at),
                    expires_at: ms(r.expires_at),
                },
                Err(e) if failed(&e).is_some() => failed(&e).unwrap(),
                other => Output::Unexpected(format!("{other:?}")),
            },
        };
        let hi = clock.now_ms();
        let ret = ticks.fetch_add(1, SeqCst);
        out.push(Operation::new(
            thread,
            call,
            ret,
            Call { input, lo, hi },
            output,
        ));
    }
    out
}

fn owner(result: Result<(), Error>) -> Output {
    match result {
        Ok(()) => Output::Ok,
        Err(Error::StaleLease { .. }) => Output::Stale,
        Err(e) => failed(&e).unwrap_or_else(|| Output::Unexpected(e.to_string())),
    }
}

/// The output of a failure an injected I/O fault explains (never seen without one).
fn failed(e: &Error) -> Option<Output> {
    match e {
        Error::OutcomeUnknown { source } if !matches!(**source, Error::Corrupt { .. }) => {
            Some(Output::Unknown)
        }
        Error::Poisoned { .. } => Some(Output::Refused),
        Error::Storage(_) => Some(Output::ReadFailed),
        _ => None,
    }
}

/// Runs one history on `store` (its keys in a scope of their own) and returns it.
fn run_history(
    store: &Arc<Store>,
    seed: u64,
    settings: &Arc<Settings>,
    clock: &ManualClock,
) -> Vec<Operation<Call, Output>> {
    let ticks = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(settings.threads));
    let scope = format!("history-{seed}");
    let handles: Vec<_> = (0..settings.threads)
        .map(|thread| {
            let (store, ticks, start) = (store.clone(), ticks.clone(), start.clone());
            let (scope, settings, clock) = (scope.clone(), settings.clone(), clock.clone());
            std::thread::spawn(move || {
                start.wait();
                client(&store, &scope, thread, seed, &settings, &ticks, &clock)
            })
        })
        .collect();
    let mut history: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a client thread panicked"))
        .collect();
    history.sort_by_key(|op| op.call);
    history
}

/// Checks history `h` (tokens, then linearizability per key); `rerun` says how to run it again.
fn check_history(h: u64, rerun: &str, history: &[Operation<Call, Output>]) {
    if let Err(e) = check_tokens(history) {
        panic!("history {h} ({rerun}): {e}");
    }
    if let Err(e) = check_keys(history) {
        panic!("history {h} ({rerun}): {e}");
    }
}

/// Checks each key's operations on their own (keys are independent).
fn check_keys(history: &[Operation<Call, Output>]) -> Result<(), String> {
    let key = |call: &Call| call.input.key();
    match check_partitioned_with_budget(|_| KeyState::ABSENT, history, key, BUDGET) {
        Verdict::Ok => Ok(()),
        Verdict::Unknown => Err("checker budget exhausted".into()),
        v @ Verdict::Violation { .. } => Err(v.explain(history)),
    }
}

/// Fencing tokens are unique, and an acquisition that returned before another was called
/// has the smaller token.
fn check_tokens(history: &[Operation<Call, Output>]) -> Result<(), String> {
    let mut acquired: Vec<(u64, u64, u64)> = history
        .iter()
        .filter_map(|op| match op.output {
            Some(Output::Acquired { token, .. }) => Some((op.call, op.ret, token)),
            _ => None,
        })
        .collect();
    let mut tokens: Vec<u64> = acquired.iter().map(|a| a.2).collect();
    tokens.sort_unstable();
    if let Some(w) = tokens.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("token {} handed out twice", w[0]));
    }
    acquired.sort_unstable();
    for (i, a) in acquired.iter().enumerate() {
        if let Some(b) = acquired[i + 1..].iter().find(|b| a.1 < b.0 && a.2 > b.2) {
            return Err(format!(
                "token {} returned before token {} was asked for",
                a.2, b.2
            ));
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// A store's settings: the still clock, the lease, and `Immediate` or `Bounded` (2 ms).
fn builder(immediate: bool, clock: &ManualClock) -> idemstore::Builder {
    let durability = if immediate {
        Durability::Immediate
    } else {
        Durability::Bounded {
            max_delay: Duration::from_millis(2),
        }
    };
    Store::builder()
        .lease(Duration::from_millis(LEASE_MS))
        .ttl(Duration::from_millis(TTL_MS))
        .durability(durability)
        .clock(clock.clone())
}

/// The knobs the tests share: threads and operations, the base seed, and a forced durability
/// (`IDEMSTORE_LIN_IMMEDIATE`); `advance_pct` is the test's own.
fn knobs(advance_pct: u64) -> (Arc<Settings>, u64, Option<bool>) {
    let settings = Arc::new(Settings {
        threads: env_u64("IDEMSTORE_LIN_THREADS", 8) as usize,
        ops: env_u64("IDEMSTORE_LIN_OPS", 24) as usize,
        advance_pct,
    });
    let base = env_u64("IDEMSTORE_SEED", {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(0, |d| d.as_nanos() as u64)
    });
    let forced = std::env::var("IDEMSTORE_LIN_IMMEDIATE")
        .ok()
        .map(|v| v.trim() == "1");
    (settings, base, forced)
}

#[test]
fn concurrent_histories_are_linearizable() {
    histories_on_a_file("IDEMSTORE_LIN_HISTORIES", 0, "concurrent_histories");
}

/// The same histories with a moving clock: one operation in ten moves it forward by up to
/// 700 ms, so leases (1 s) end and are taken over, and records (4 s) expire, while other
/// threads claim, complete, renew and read them (and the sweeper removes them). Each answer
/// carries the times the store used (lease deadline, expiry, completion, retry-after), and the
/// checker must find for each operation one instant between its call and its return whose
/// time explains its answer.
///
/// Knob: `IDEMSTORE_LIN_CLOCK_HISTORIES` (default 200; the long run is 10,000), with the
/// first test's threads, operations, durability and seed knobs.
#[test]
fn histories_with_a_moving_clock_are_linearizable() {
    histories_on_a_file("IDEMSTORE_LIN_CLOCK_HISTORIES", 10, "moving_clock");
}

/// Runs `$knob` histories (default 200) on one store file, in which `advance_pct` percent of
/// the operations move the clock; `filter` names the test in the rerun line.
fn histories_on_a_file(knob: &str, advance_pct: u64, filter: &str) {
    let histories = env_u64(knob, 200);
    let (settings, base, forced) = knobs(advance_pct);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // Each store process runs SEGMENT histories; every fourth acknowledges after the sync
    // (`Immediate`, slower), the others before it (`Bounded`), unless the knob says otherwise.
    let immediate_in = |segment: u64| forced.unwrap_or(segment % 4 == 3);
    let open = |segment: u64| {
        builder(immediate_in(segment), &clock)
            .open(dir.path().join("lin.redb"))
            .expect("the store opens")
    };
    let mut store = Arc::new(open(0));
    let (started, mut ops, mut acquired, mut takeovers) = (Instant::now(), 0, 0, 0);
    for h in 0..histories {
        let seed = base.wrapping_add(h);
        // A fresh process now and then: the directory is rebuilt from the file.
        if h > 0 && h.is_multiple_of(SEGMENT) {
            drop(store);
            store = Arc::new(open(h / SEGMENT));
        }
        let history = run_history(&store, seed, &settings, &clock);
        ops += history.len();
        for op in &history {
            if let Some(Output::Acquired { takeover, .. }) = op.output {
                acquired += 1;
                takeovers += u64::from(takeover);
            }
        }
        let rerun = format!(
            "rerun: IDEMSTORE_SEED={seed} {knob}=1 IDEMSTORE_LIN_IMMEDIATE={} \
             IDEMSTORE_LIN_THREADS={} IDEMSTORE_LIN_OPS={} cargo test --test linearizability \
             {filter}",
            u8::from(immediate_in(h / SEGMENT)),
            settings.threads,
            settings.ops
        );
        // No fault is injected here: a failure is no answer this store may give.
        if let Some(op) = history.iter().find(|o| {
            let failed = [Output::Unknown, Output::Refused, Output::ReadFailed];
            o.output.as_ref().is_some_and(|out| failed.contains(out))
        }) {
            panic!("history {h} ({rerun}): {op:?} failed with no fault injected");
        }
        check_history(h, &rerun, &history);
    }
    eprintln!(
        "{histories} histories, {ops} operations ({acquired} acquisitions, {takeovers} \
         takeovers), the clock moved {} ms, 0 violations in {:?} (base IDEMSTORE_SEED={base})",
        clock.now_ms() - START_MS,
        started.elapsed()
    );
    // Not vacuous at the default size: leases ended and were taken over.
    if advance_pct > 0 && histories >= 50 {
        assert!(takeovers > 0, "no lease was taken over");
    }
}

/// Histories with an injected I/O fault: before each history one write, sync or `set_len` of
/// a simulated disk is set to fail (`fail_nth`, the first to the eighth from then), so a
/// commit in the middle of the threads' batches fails. Its operations answer
/// `OutcomeUnknown`: in the model each took effect before it returned or not at all, and every
/// answer after it must agree on which (the store waits for its recovery before answering
/// from its directory). A store that poisoned itself answers `Poisoned` (refused, no effect)
/// and is reopened for the next history.
///
/// Knob: `IDEMSTORE_LIN_FAULT_HISTORIES` (default 100; the long run is 10,000), with the
/// other test's threads, operations, durability and seed knobs (three stores in four are
/// `Immediate` here).
#[test]
fn histories_with_injected_faults_are_linearizable() {
    use idemstore::sim_disk::{Op as DiskOp, SimDisk};
    let histories = env_u64("IDEMSTORE_LIN_FAULT_HISTORIES", 100);
    let (settings, base, forced) = knobs(0);
    let clock = ManualClock::new(START_MS);
    // Three stores in four `Immediate`: a bounded-mode commit writes nothing until its sync,
    // which answers no caller, so faults there seldom reach an operation.
    let immediate_in = |segment: u64| forced.unwrap_or(segment % 4 != 3);
    let disk = SimDisk::new();
    let open = |segment: u64| {
        builder(immediate_in(segment), &clock)
            // 16 one-block frames: the log fills and checkpoints every few batches.
            .log_capacity(64 << 10)
            .open_sim(&disk)
            .expect("the store opens")
    };
    let mut store = Arc::new(open(0));
    let mut segment = 0;
    let started = Instant::now();
    let (mut ops, mut unknown, mut refused, mut read_failed, mut fired, mut reopened) =
        (0, 0, 0, 0, 0, 0);
    for h in 0..histories {
        let seed = base.wrapping_add(h);
        if h > 0 && h.is_multiple_of(SEGMENT) {
            drop(store);
            segment = h / SEGMENT;
            store = Arc::new(open(segment));
        }
        let mut rng = Rng::new(seed ^ 0xfa17);
        let kind = [DiskOp::Write, DiskOp::Sync, DiskOp::SetLen][rng.below(3) as usize];
        let n = 1 + rng.below(8);
        let before = disk.counts().get(kind);
        disk.fail_nth(kind, n);
        let history = run_history(&store, seed, &settings, &clock);
        disk.heal();
        fired += u64::from(disk.counts().get(kind) - before >= n);
        ops += history.len();
        let count = |o: &Output| {
            history
                .iter()
                .filter(|op| op.output.as_ref() == Some(o))
                .count()
        };
        unknown += count(&Output::Unknown);
        refused += count(&Output::Refused);
        read_failed += count(&Output::ReadFailed);
        let rerun = format!(
            "rerun: IDEMSTORE_SEED={seed} IDEMSTORE_LIN_FAULT_HISTORIES=1 \
             IDEMSTORE_LIN_IMMEDIATE={} IDEMSTORE_LIN_THREADS={} IDEMSTORE_LIN_OPS={} \
             cargo test --test linearizability faults (fault: {kind:?} #{n})",
            u8::from(immediate_in(segment)),
            settings.threads,
            settings.ops
        );
        check_history(h, &rerun, &history);
        // A poisoned store (the fault struck its recovery too) is reopened.
        if let Err(Error::Poisoned { .. }) = store.flush() {
            reopened += 1;
            drop(store);
            store = Arc::new(open(segment));
        }
    }
    eprintln!(
        "{histories} histories with a fault ({fired} reached), {ops} operations, {unknown} \
         OutcomeUnknown answers, {refused} refused by a poisoned store, {read_failed} reads \
         failed, {reopened} stores reopened after poisoning, 0 violations in {:?} (base IDEMSTORE_SEED={base})",
        started.elapsed()
    );
    // Not vacuous at the default size: faults struck the threads' operations.
    if histories >= 50 {
        assert!(
            fired * 3 >= histories && unknown > 0,
            "few faults reached the operations"
        );
    }
}

/// The sequential model and the checker together refuse what the store must never do, and
/// accept the overlapping answers it may give: without this, a model that accepted anything
/// would let every history pass.
#[test]
fn the_model_refuses_wrong_answers() {
    type Op = lin::Operation<Call, Output>;
    // Times are ms after the start, T.
    const T: u64 = START_MS;
    // An operation whose call saw the clock between T + `from` and T + `to`.
    let op_in = |client, call, ret, input, (from, to): (u64, u64), output| Op {
        client,
        call,
        ret,
        input: Call {
            input,
            lo: T + from,
            hi: T + to,
        },
        output: Some(output),
    };
    // One at T, the clock held still.
    let op = |client, call, ret, input, output| op_in(client, call, ret, input, (0, 0), output);
    let claim = Input::Claim { key: 0, fp: None };
    // An acquisition at T + `at`, the `attempt`-th on the key.
    let acquired_at = |token, attempt, at| Output::Acquired {
        token,
        attempt,
        takeover: attempt > 1,
        lease_until: T + at + LEASE_MS,
        expires_at: T + at + TTL_MS,
    };
    let acquired = |token| acquired_at(token, 1, 0);
    let in_flight_for = |ms| Output::InFlight {
        attempt: 1,
        retry_after_ms: ms,
    };
    let in_flight = in_flight_for(LEASE_MS);
    let complete = |token, body| Input::Complete {
        key: 0,
        token,
        body,
    };
    let replay = |body| Output::Replay {
        body,
        attempt: 1,
        completed_at: T,
        expires_at: T + TTL_MS,
    };
    let get_completed_at = |at| Output::GetCompleted {
        body: 7,
        attempt: 1,
        completed_at: T + at,
        expires_at: T + TTL_MS,
    };
    let release = |token| Input::Release { key: 0, token };
    let renew = |token| Input::Renew { key: 0, token };
    let get = || Input::Get { key: 0 };
    let replay_at = |body, at| Output::Replay {
        body,
        attempt: 1,
        completed_at: T + at,
        expires_at: T + TTL_MS,
    };
    let get_in_flight = Output::GetInFlight {
        attempt: 1,
        lease_until: T + LEASE_MS,
        expires_at: T + TTL_MS,
        previous: false,
    };
    let refused =
        |history: &[Op]| matches!(check_keys(history), Err(e) if e.contains("not linearizable"));
    let wrong: Vec<(&str, Vec<Op>)> = vec![
        (
            "two owners, one after the other",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(1, 2, 3, claim.clone(), acquired(2)),
            ],
        ),
        (
            "two owners at once",
            vec![
                op(0, 0, 3, claim.clone(), acquired(1)),
                op(1, 1, 2, claim.clone(), acquired(2)),
            ],
        ),
        (
            "in flight before anyone claimed",
            vec![
                op(1, 0, 1, claim.clone(), in_flight.clone()),
                op(0, 2, 3, claim.clone(), acquired(1)),
            ],
        ),
        (
            "a replay of a body never stored",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op(1, 4, 5, claim.clone(), replay(8)),
            ],
        ),
        (
            "a completion forgotten",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op(1, 4, 5, Input::Get { key: 0 }, Output::Absent),
            ],
        ),
        (
            "a stale lease completing",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, Input::Release { key: 0, token: 1 }, Output::Ok),
                op(1, 4, 5, claim.clone(), acquired(2)),
                op(0, 6, 7, complete(1, 7), Output::Ok),
            ],
        ),
        (
            "an unknown release read as not done, then as done (4237433)",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Unknown),
                op(1, 4, 5, get(), get_in_flight.clone()),
                op(1, 6, 7, get(), Output::Absent),
            ],
        ),
        (
            "an unknown claim handing out a lease",
            vec![
                op(0, 0, 1, claim.clone(), Output::Unknown),
                op(1, 2, 3, claim.clone(), in_flight.clone()),
                op(0, 4, 5, complete(1, 7), Output::Ok),
            ],
        ),
        (
            "a refused (poisoned) release taking effect",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Refused),
                op(1, 4, 5, get(), Output::Absent),
            ],
        ),
        (
            "a release answered with a failed read",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::ReadFailed),
            ],
        ),
        (
            "a failed read that took effect",
            vec![
                op(0, 0, 1, claim.clone(), Output::ReadFailed),
                op(1, 2, 3, claim.clone(), in_flight.clone()),
            ],
        ),
        (
            "a retry-after longer than a lease (a claim seeing an acquisition not made yet)",
            vec![
                op_in(
                    1,
                    0,
                    3,
                    claim.clone(),
                    (0, 0),
                    in_flight_for(LEASE_MS + 500),
                ),
                op_in(0, 1, 4, claim.clone(), (500, 500), acquired_at(1, 1, 500)),
            ],
        ),
        (
            "a read seeing a renewal not made yet",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    1,
                    2,
                    5,
                    get(),
                    (100, 100),
                    Output::GetInFlight {
                        attempt: 1,
                        lease_until: T + 600 + LEASE_MS,
                        expires_at: T + TTL_MS,
                        previous: false,
                    },
                ),
                op_in(
                    0,
                    3,
                    6,
                    renew(1),
                    (600, 600),
                    Output::Renewed {
                        lease_until: T + 600 + LEASE_MS,
                    },
                ),
            ],
        ),
        (
            "a replay showing a completion time after it returned",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(1, 2, 5, claim.clone(), (100, 100), replay_at(7, 600)),
                op_in(0, 3, 6, complete(1, 7), (600, 600), Output::Ok),
            ],
        ),
        (
            "a completion after the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, complete(1, 7), (3990, 4010), Output::Ok),
                op_in(1, 4, 5, get(), (3990, 4010), get_completed_at(4005)),
            ],
        ),
        (
            "a renewal past the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    0,
                    2,
                    3,
                    renew(1),
                    (2000, 2000),
                    Output::Renewed {
                        lease_until: T + TTL_MS,
                    },
                ),
            ],
        ),
        (
            "a release by a stranger before the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(1, 2, 3, release(2), (TTL_MS - 1, TTL_MS - 1), Output::Ok),
            ],
        ),
        (
            "an expired record before its expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(1, 2, 3, get(), (TTL_MS - 1, TTL_MS - 1), Output::Absent),
            ],
        ),
        (
            "an expiry of nothing live before the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    1,
                    2,
                    3,
                    Input::Expire { key: 0 },
                    (TTL_MS - 1, TTL_MS - 1),
                    Output::Expired(false),
                ),
            ],
        ),
        (
            "an owner's completion refused before the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    0,
                    2,
                    3,
                    complete(1, 7),
                    (TTL_MS - 1, TTL_MS - 1),
                    Output::Stale,
                ),
            ],
        ),
        (
            "a takeover before the lease ended",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(1, 2, 3, claim.clone(), (999, 999), acquired_at(2, 2, 999)),
            ],
        ),
        (
            "a replay after the record expired",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op_in(1, 4, 5, claim.clone(), (TTL_MS, TTL_MS), replay(7)),
            ],
        ),
        (
            "an answer given at a time before the call",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(1, 2, 3, claim.clone(), (500, 600), in_flight.clone()),
            ],
        ),
        (
            "a renewal that did not move the deadline",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    0,
                    2,
                    3,
                    renew(1),
                    (500, 500),
                    Output::Renewed {
                        lease_until: T + LEASE_MS,
                    },
                ),
            ],
        ),
        (
            "a completion time outside the complete's call",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, complete(1, 7), (10, 20), Output::Ok),
                op_in(1, 4, 5, claim.clone(), (30, 30), replay_at(7, 5)),
            ],
        ),
        (
            "two replays disagreeing on when it completed",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, complete(1, 7), (10, 20), Output::Ok),
                op_in(1, 4, 5, claim.clone(), (30, 30), replay_at(7, 12)),
                op_in(1, 6, 7, claim.clone(), (30, 30), replay_at(7, 15)),
            ],
        ),
    ];
    for (what, history) in &wrong {
        assert!(refused(history), "{what}: accepted");
    }
    let right: Vec<(&str, Vec<Op>)> = vec![
        (
            "a loser overlapping the winner",
            vec![
                op(1, 0, 3, claim.clone(), in_flight.clone()),
                op(0, 1, 2, claim.clone(), acquired(1)),
            ],
        ),
        (
            "a replay overlapping the completion",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 5, complete(1, 7), Output::Ok),
                op(1, 3, 4, claim.clone(), replay(7)),
            ],
        ),
        (
            "an unknown release done, for good",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Unknown),
                op(1, 4, 5, get(), Output::Absent),
                op(1, 6, 7, claim.clone(), acquired(2)),
            ],
        ),
        (
            "an unknown release not done, for good",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, release(1), Output::Unknown),
                op(1, 4, 5, get(), get_in_flight.clone()),
                op(0, 6, 7, complete(1, 7), Output::Ok),
            ],
        ),
        (
            "an unknown claim that acquired: its lease is nobody's",
            vec![
                op(0, 0, 1, claim.clone(), Output::Unknown),
                op(1, 2, 3, claim.clone(), in_flight.clone()),
            ],
        ),
        (
            "a replay whose read failed changes nothing",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op(1, 4, 5, claim.clone(), Output::ReadFailed),
                op(1, 6, 7, get(), Output::ReadFailed),
                op(1, 8, 9, claim.clone(), replay(7)),
            ],
        ),
        (
            "a renewal capped at the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    0,
                    2,
                    3,
                    renew(1),
                    (3500, 3500),
                    Output::Renewed {
                        lease_until: T + TTL_MS,
                    },
                ),
            ],
        ),
        (
            "a release by a stranger once the record may have expired",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(1, 2, 3, release(2), (TTL_MS - 1, TTL_MS), Output::Ok),
                op_in(0, 4, 5, get(), (TTL_MS, TTL_MS), Output::Absent),
            ],
        ),
        (
            "the owner's release at the expiry, either way",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, release(1), (TTL_MS - 1, TTL_MS), Output::Ok),
                op_in(
                    1,
                    4,
                    5,
                    claim.clone(),
                    (TTL_MS, TTL_MS),
                    acquired_at(2, 1, TTL_MS),
                ),
            ],
        ),
        (
            "an expiry of an expired record, at the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    1,
                    2,
                    3,
                    Input::Expire { key: 0 },
                    (TTL_MS, TTL_MS),
                    Output::Expired(false),
                ),
                op_in(1, 4, 5, get(), (TTL_MS, TTL_MS), Output::Absent),
            ],
        ),
        (
            "an owner's completion refused at the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, complete(1, 7), (TTL_MS - 1, TTL_MS), Output::Stale),
            ],
        ),
        (
            "a completion late in its call, before the expiry",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, complete(1, 7), (3990, 4010), Output::Ok),
                op_in(1, 4, 5, get(), (3995, 3999), get_completed_at(3995)),
            ],
        ),
        (
            "a takeover once the lease ended",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    1,
                    2,
                    3,
                    claim.clone(),
                    (LEASE_MS, LEASE_MS),
                    acquired_at(2, 2, LEASE_MS),
                ),
                op_in(0, 4, 5, complete(1, 7), (LEASE_MS, LEASE_MS), Output::Stale),
            ],
        ),
        (
            "an answer given at any time of the call",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(
                    1,
                    2,
                    3,
                    claim.clone(),
                    (0, 500),
                    in_flight_for(LEASE_MS - 300),
                ),
            ],
        ),
        (
            "a first attempt again once the record expired",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op(0, 2, 3, complete(1, 7), Output::Ok),
                op_in(
                    1,
                    4,
                    5,
                    claim.clone(),
                    (TTL_MS, TTL_MS),
                    acquired_at(2, 1, TTL_MS),
                ),
            ],
        ),
        (
            "a completion time learnt from its replay",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 3, complete(1, 7), (10, 20), Output::Ok),
                op_in(1, 4, 5, claim.clone(), (30, 30), replay_at(7, 12)),
                op_in(1, 6, 7, get(), (30, 30), get_completed_at(12)),
            ],
        ),
        (
            // What a strict model with the clock as shared state refuses: the completion
            // decided at T + 100 and published later, a claim answered from the state before it
            // at T + 700 meanwhile.
            "a batch decided by an earlier reading of the clock than a read before it",
            vec![
                op(0, 0, 1, claim.clone(), acquired(1)),
                op_in(0, 2, 9, complete(1, 7), (100, 900), Output::Ok),
                op_in(
                    1,
                    3,
                    4,
                    claim.clone(),
                    (700, 700),
                    in_flight_for(LEASE_MS - 700),
                ),
                op_in(1, 10, 11, claim.clone(), (900, 900), replay_at(7, 100)),
            ],
        ),
    ];
    for (what, history) in &right {
        assert_eq!(check_keys(history), Ok(()), "{what}: refused");
    }
}
