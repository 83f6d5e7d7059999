//! Every rule of `docs/BEHAVIOUR.md` (the behaviour the store was designed for), through the
//! public API, with a manual clock.
//!
//! One module per rule. The last module is a tiny HTTP adapter written on top of the store,
//! reproducing the HTTP contract of `docs/BEHAVIOUR.md` exactly, and a test driving it.

use idemstore::{
    ClaimOutcome, Error, Fingerprint, Key, Lease, ManualClock, RecordInfo, Replay, Response, Store,
    Takeover,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2025-03-14T12:00:00Z, in milliseconds since the Unix epoch.
const T0: u64 = 1_741_953_600_000;
const TTL_MS: u64 = 24 * 3600 * 1000;
const LEASE_MS: u64 = 60_000;
const LEASE: Duration = Duration::from_millis(LEASE_MS);

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    clock: ManualClock,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("idem.redb");
        Fixture {
            _dir: dir,
            path,
            clock: ManualClock::new(T0),
        }
    }

    /// A store with the production defaults (24 h records, 60 s leases) and the manual clock.
    fn open(&self) -> Store {
        open_at(&self.path, &self.clock, Takeover::OnRestart)
    }

    fn set(&self, ms: u64) {
        self.clock.set_ms(ms);
    }
}

fn open_at(path: &Path, clock: &ManualClock, takeover: Takeover) -> Store {
    Store::builder()
        .clock(clock.clone())
        .takeover(takeover)
        .open(path)
        .expect("open store")
}

fn acquired(outcome: ClaimOutcome) -> Lease {
    match outcome {
        ClaimOutcome::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn replayed(outcome: ClaimOutcome) -> Replay {
    match outcome {
        ClaimOutcome::Replay(replay) => replay,
        other => panic!("expected Replay, got {other:?}"),
    }
}

fn in_flight(outcome: ClaimOutcome) -> (Duration, u32) {
    match outcome {
        ClaimOutcome::InFlight {
            retry_after,
            attempt,
        } => (retry_after, attempt),
        other => panic!("expected InFlight, got {other:?}"),
    }
}

fn claim(store: &Store, key: &Key) -> ClaimOutcome {
    store.claim(key, None).expect("claim")
}

/// A `201 Created` with several headers (one repeated, one binary) and a binary body.
fn created() -> Response {
    Response::new(201)
        .header("Content-Type", "application/json")
        .header("Location", "/v1/projects/prj_01")
        .header("Set-Cookie", "a=1")
        .header("Set-Cookie", "b=2")
        .header("X-Binary", [0u8, 255, b'\r', b'\n', 0x7f])
        .body((0..=255u8).chain([0, 0, 255]).collect::<Vec<u8>>())
}

fn key(s: &str) -> Key {
    Key::new("tenant-42", s)
}

mod first_request {
    use super::*;

    #[test]
    fn acquires_with_lease_and_expiry() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(store.get(&k).expect("get"), None);
        let lease = acquired(claim(&store, &k));
        assert_eq!(lease.attempt(), 1);
        assert!(!lease.is_takeover());
        assert_eq!(lease.key(), &k);
        assert_eq!(lease.lease_deadline(), at(T0 + LEASE_MS));
        assert_eq!(lease.expires_at(), at(T0 + TTL_MS));
        assert_eq!(
            store.get(&k).expect("get"),
            Some(RecordInfo::InFlight {
                attempt: 1,
                lease_deadline: at(T0 + LEASE_MS),
                expires_at: at(T0 + TTL_MS),
                from_previous_process: false,
            })
        );
    }
}

mod replay {
    use super::*;

    #[test]
    fn same_status_byte_exact_body_and_headers() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("redeploy-abc123def456");
        let fp = Fingerprint::of_request("POST", "/v1/projects", b"{\"name\":\"web\"}");
        let lease = acquired(store.claim(&k, Some(fp)).expect("claim"));
        f.set(T0 + 1_500);
        store.complete(&lease, created()).expect("complete");

        f.set(T0 + 10_000);
        for _ in 0..3 {
            let replay = replayed(store.claim(&k, Some(fp)).expect("claim"));
            assert_eq!(replay.response.status, 201);
            assert_eq!(replay.response.headers, created().headers);
            assert_eq!(replay.response.body, created().body);
            assert_eq!(replay.response, created());
            assert_eq!(replay.completed_at, at(T0 + 1_500));
            assert_eq!(replay.expires_at, at(T0 + TTL_MS));
            assert_eq!(replay.attempt, 1);
            assert_eq!(
                store.get(&k).expect("get"),
                Some(RecordInfo::Completed(replay))
            );
        }
    }

    #[test]
    fn completing_twice_keeps_the_first_response() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("gh-actions-run-12345678");
        let lease = acquired(claim(&store, &k));
        store.complete(&lease, created()).expect("first complete");
        store
            .complete(&lease, Response::new(500).body("other"))
            .expect("second complete with the same lease is Ok");
        assert_eq!(replayed(claim(&store, &k)).response, created());
    }
}

mod in_flight {
    use super::*;

    #[test]
    fn second_claim_is_told_to_retry_after_the_lease() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("redeploy-env_01abc-1741958400");
        let fp = Fingerprint::of_request("POST", "/v1/environments/env_01abc/redeploy", b"{}");
        let lease = acquired(store.claim(&k, Some(fp)).expect("claim"));
        f.set(T0 + 20_000);
        let (retry_after, attempt) = in_flight(store.claim(&k, Some(fp)).expect("claim"));
        assert_eq!(attempt, 1);
        assert_eq!(retry_after, Duration::from_millis(LEASE_MS - 20_000));
        assert!(retry_after > Duration::ZERO && retry_after <= LEASE);
        // Without a fingerprint too.
        let (retry_after, _) = in_flight(claim(&store, &k));
        assert!(retry_after > Duration::ZERO && retry_after <= LEASE);
        // The owner is unaffected by the conflicts.
        store.complete(&lease, created()).expect("complete");
        assert_eq!(replayed(claim(&store, &k)).response, created());
    }
}

mod expiry {
    use super::*;

    #[test]
    fn completed_key_replays_until_ttl_then_is_new() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("550e8400-e29b-41d4-a716-446655440000");
        let first = acquired(claim(&store, &k));
        f.set(T0 + 1_000);
        store.complete(&first, created()).expect("complete");

        f.set(T0 + TTL_MS - 1);
        assert_eq!(replayed(claim(&store, &k)).response, created());
        assert!(store.get(&k).expect("get").is_some());

        f.set(T0 + TTL_MS);
        assert_eq!(store.get(&k).expect("get"), None);
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 1);
        assert!(!second.is_takeover());
        assert!(second.token() > first.token());
        assert_eq!(second.expires_at(), at(T0 + 2 * TTL_MS));
    }

    #[test]
    fn in_flight_key_is_new_exactly_at_ttl() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("in-flight-forever");
        let first = acquired(claim(&store, &k));
        f.set(T0 + TTL_MS);
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 1, "an expired key is new, not taken over");
        assert!(!second.is_takeover());
        assert!(matches!(
            store.complete(&first, created()),
            Err(Error::StaleLease { token }) if token == first.token()
        ));
    }

    #[test]
    fn in_flight_key_just_before_ttl_is_a_takeover() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("in-flight-almost-forever");
        let _first = acquired(claim(&store, &k));
        f.set(T0 + TTL_MS - 1);
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 2);
        assert!(second.is_takeover());
        // A takeover is a new claim: the record's lifetime and the lease run from it.
        assert_eq!(second.expires_at(), at(T0 + TTL_MS - 1 + TTL_MS));
        assert_eq!(second.lease_deadline(), at(T0 + TTL_MS - 1 + LEASE_MS));
    }
}

mod scopes {
    use super::*;

    #[test]
    fn same_key_string_in_two_scopes_is_independent() {
        let f = Fixture::new();
        let store = f.open();
        let id = "550e8400-e29b-41d4-a716-446655440000";
        let a = Key::new("tenant-a", id);
        let b = Key::new("tenant-b", id);
        let fp_a = Fingerprint::of_request("POST", "/v1/projects", b"a");
        let fp_b = Fingerprint::of_request("POST", "/v1/projects", b"b");
        let lease_a = acquired(store.claim(&a, Some(fp_a)).expect("claim a"));
        // Not in flight, not a mismatch: another tenant's key.
        let lease_b = acquired(store.claim(&b, Some(fp_b)).expect("claim b"));
        assert_eq!(lease_b.attempt(), 1);
        store
            .complete(&lease_a, Response::new(201).body("for a"))
            .expect("complete a");
        assert!(matches!(
            store.get(&b).expect("get b"),
            Some(RecordInfo::InFlight { .. })
        ));
        store
            .complete(&lease_b, Response::new(202).body("for b"))
            .expect("complete b");
        let ra = replayed(store.claim(&a, Some(fp_a)).expect("claim a"));
        let rb = replayed(store.claim(&b, Some(fp_b)).expect("claim b"));
        assert_eq!(
            (ra.response.status, ra.response.body),
            (201, b"for a".to_vec())
        );
        assert_eq!(
            (rb.response.status, rb.response.body),
            (202, b"for b".to_vec())
        );
        // A scope/key boundary is part of the identity.
        let shifted = acquired(claim(&store, &Key::new("tenant-", format!("a{id}"))));
        assert_eq!(shifted.attempt(), 1);
        // Removing one scope's key leaves the other alone.
        assert!(store.expire(&a).expect("expire a"));
        assert_eq!(store.get(&a).expect("get a"), None);
        assert!(store.get(&b).expect("get b").is_some());
    }
}

mod release {
    use super::*;

    #[test]
    fn release_lets_a_retry_run_fresh() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("validation-failed");
        let first = acquired(claim(&store, &k));
        store.release(&first).expect("release");
        assert_eq!(store.get(&k).expect("get"), None);
        // Releasing again is a harmless no-op (a retried release).
        store.release(&first).expect("second release");

        let retry = acquired(claim(&store, &k));
        assert_eq!(retry.attempt(), 1);
        assert!(!retry.is_takeover());
        assert!(retry.token() > first.token());
        // The released attempt can no longer act on the key.
        assert!(matches!(
            store.complete(&first, created()),
            Err(Error::StaleLease { .. })
        ));
        assert!(matches!(
            store.release(&first),
            Err(Error::StaleLease { .. })
        ));
        store.complete(&retry, created()).expect("complete retry");
        assert_eq!(replayed(claim(&store, &k)).response, created());
        // A completed key cannot be released.
        assert!(matches!(
            store.release(&retry),
            Err(Error::StaleLease { .. })
        ));
        assert_eq!(replayed(claim(&store, &k)).response, created());
    }
}

mod takeover {
    use super::*;

    #[test]
    fn after_the_lease_and_the_stale_owner_is_fenced() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("redeploy-abc123def456");
        let first = acquired(claim(&store, &k));
        let first_token = first.token();

        f.set(T0 + LEASE_MS - 1);
        let (retry_after, _) = in_flight(claim(&store, &k));
        assert_eq!(retry_after, Duration::from_millis(1));

        f.set(T0 + LEASE_MS);
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 2);
        assert!(second.is_takeover());
        assert!(second.token() > first.token());
        assert_eq!(second.lease_deadline(), at(T0 + 2 * LEASE_MS));
        assert_eq!(second.expires_at(), at(T0 + TTL_MS + LEASE_MS));
        let before = store.get(&k).expect("get");

        let stale = |r: Result<(), Error>| {
            assert!(
                matches!(r, Err(Error::StaleLease { token }) if token == first_token),
                "{r:?}"
            );
        };
        stale(store.complete(&first, Response::new(200).body("old")));
        stale(store.release(&first));
        let mut renewed = first.clone();
        stale(store.renew(&mut renewed));
        assert_eq!(renewed, first, "a refused renew leaves the lease alone");
        assert_eq!(store.get(&k).expect("get"), before, "nothing changed");

        store
            .complete(&second, created())
            .expect("new owner completes");
        stale(store.complete(&first, Response::new(200).body("old")));
        stale(store.renew(&mut first.clone()));
        let replay = replayed(claim(&store, &k));
        assert_eq!(replay.response, created());
        assert_eq!(replay.attempt, 2);
    }

    #[test]
    fn owner_may_finish_after_its_lease_if_nobody_took_over() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("slow-but-alone");
        let lease = acquired(claim(&store, &k));
        f.set(T0 + 5 * LEASE_MS);
        store.complete(&lease, created()).expect("complete");
        assert_eq!(replayed(claim(&store, &k)).attempt, 1);
    }
}

mod mismatch {
    use super::*;

    #[test]
    fn reported_while_in_flight_and_after_completion() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("reused-key");
        let deploy = Fingerprint::of_request("POST", "/v1/environments/env_01/deploy", b"{}");
        let stop = Fingerprint::of_request("POST", "/v1/environments/env_01/stop", b"{}");
        let lease = acquired(store.claim(&k, Some(deploy)).expect("claim"));
        assert!(matches!(
            store.claim(&k, Some(stop)).expect("claim"),
            ClaimOutcome::Mismatch
        ));
        // Mismatch wins over a takeover too.
        f.set(T0 + LEASE_MS);
        assert!(matches!(
            store.claim(&k, Some(stop)).expect("claim"),
            ClaimOutcome::Mismatch
        ));
        store.complete(&lease, created()).expect("complete");
        assert!(matches!(
            store.claim(&k, Some(stop)).expect("claim"),
            ClaimOutcome::Mismatch
        ));
        assert_eq!(
            replayed(store.claim(&k, Some(deploy)).expect("claim")).response,
            created()
        );
    }

    #[test]
    fn a_claim_without_fingerprint_matches_any() {
        let f = Fixture::new();
        let store = f.open();
        let with_fp = key("with-fingerprint");
        let fp = Fingerprint::of_request("POST", "/v1/webhooks", b"{\"url\":\"x\"}");
        let other = Fingerprint::from_bytes(b"some other request digest");
        let lease = acquired(store.claim(&with_fp, Some(fp)).expect("claim"));
        in_flight(store.claim(&with_fp, None).expect("claim"));
        store.complete(&lease, created()).expect("complete");
        replayed(store.claim(&with_fp, None).expect("claim"));

        // Stored without a fingerprint: any later fingerprint matches.
        let without = key("without-fingerprint");
        let lease = acquired(store.claim(&without, None).expect("claim"));
        in_flight(store.claim(&without, Some(other)).expect("claim"));
        store.complete(&lease, created()).expect("complete");
        replayed(store.claim(&without, Some(fp)).expect("claim"));
        replayed(store.claim(&without, Some(other)).expect("claim"));
    }

    /// A takeover by a claim without a fingerprint keeps the key's: another request using the
    /// key later is still a mismatch, not a replay of a result that was not its own; across a
    /// reopen too.
    #[test]
    fn a_takeover_without_fingerprint_keeps_the_keys() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("taken-over");
        let deploy = Fingerprint::of_request("POST", "/v1/environments/env_01/deploy", b"{}");
        let stop = Fingerprint::of_request("POST", "/v1/environments/env_01/stop", b"{}");
        acquired(store.claim(&k, Some(deploy)).expect("claim"));
        f.set(T0 + LEASE_MS);
        let lease = acquired(store.claim(&k, None).expect("claim"));
        assert!(lease.is_takeover());
        store.complete(&lease, created()).expect("complete");
        assert!(matches!(
            store.claim(&k, Some(stop)).expect("claim"),
            ClaimOutcome::Mismatch
        ));
        drop(store);
        let store = f.open();
        assert!(matches!(
            store.claim(&k, Some(stop)).expect("claim"),
            ClaimOutcome::Mismatch
        ));
        replayed(store.claim(&k, Some(deploy)).expect("claim"));
    }
}

mod renew {
    use super::*;

    #[test]
    fn renew_extends_the_lease() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("long-running-deploy");
        let mut lease = acquired(claim(&store, &k));
        f.set(T0 + 50_000);
        let (before, _) = in_flight(claim(&store, &k));
        assert_eq!(before, Duration::from_secs(10));

        store.renew(&mut lease).expect("renew");
        assert_eq!(lease.lease_deadline(), at(T0 + 50_000 + LEASE_MS));
        let (after, _) = in_flight(claim(&store, &k));
        assert!(after > before);
        assert_eq!(after, LEASE);

        // Past the original deadline: still in flight, no takeover.
        f.set(T0 + LEASE_MS + 40_000);
        let (retry_after, attempt) = in_flight(claim(&store, &k));
        assert_eq!((retry_after, attempt), (Duration::from_secs(10), 1));
        f.set(T0 + 50_000 + LEASE_MS - 1);
        in_flight(claim(&store, &k));

        // At the new deadline the key may be taken over.
        f.set(T0 + 50_000 + LEASE_MS);
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 2);
        assert!(second.is_takeover());
    }

    #[test]
    fn renew_is_capped_at_the_record_expiry() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("short-lived");
        let mut lease = acquired(
            store
                .claim_with_ttl(&k, None, Duration::from_secs(90))
                .expect("claim"),
        );
        f.set(T0 + 50_000);
        store.renew(&mut lease).expect("renew");
        assert_eq!(lease.lease_deadline(), at(T0 + 90_000));
    }
}

mod operator {
    use super::*;

    #[test]
    fn expire_removes_a_key_now() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("to-remove");
        assert!(!store.expire(&k).expect("expire absent"));

        let lease = acquired(claim(&store, &k));
        store.complete(&lease, created()).expect("complete");
        assert!(store.expire(&k).expect("expire completed"));
        assert_eq!(store.get(&k).expect("get"), None);
        assert!(!store.expire(&k).expect("expire again"));

        let fresh = acquired(claim(&store, &k));
        assert_eq!(fresh.attempt(), 1);
        assert!(!fresh.is_takeover());
        assert!(store.expire(&k).expect("expire in flight"));
        assert!(matches!(
            store.complete(&fresh, created()),
            Err(Error::StaleLease { .. })
        ));
        assert_eq!(store.get(&k).expect("get"), None);

        // A key past its lifetime is not live: nothing to remove.
        let lease = acquired(claim(&store, &k));
        store.complete(&lease, created()).expect("complete");
        f.set(T0 + TTL_MS);
        assert!(!store.expire(&k).expect("expire expired"));
    }

    #[test]
    fn get_reports_without_changing_anything() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("inspected");
        assert_eq!(store.get(&k).expect("get"), None);
        let lease = acquired(claim(&store, &k));
        for _ in 0..2 {
            assert!(matches!(
                store.get(&k).expect("get"),
                Some(RecordInfo::InFlight {
                    attempt: 1,
                    from_previous_process: false,
                    ..
                })
            ));
        }
        f.set(T0 + 2_000);
        store.complete(&lease, created()).expect("complete");
        let Some(RecordInfo::Completed(replay)) = store.get(&k).expect("get") else {
            panic!("expected Completed");
        };
        assert_eq!(replay.response, created());
        assert_eq!(replay.completed_at, at(T0 + 2_000));
        assert_eq!(replay.expires_at, at(T0 + TTL_MS));
        assert_eq!(store.stats().replays, 0, "get is not a claim");
        f.set(T0 + TTL_MS);
        assert_eq!(store.get(&k).expect("get"), None);
    }
}

mod restart {
    use super::*;

    #[test]
    fn claim_left_by_a_dead_process_is_taken_over_at_once() {
        let f = Fixture::new();
        let k = key("interrupted");
        let first = {
            let store = f.open();
            acquired(claim(&store, &k))
        };
        let store = f.open();
        assert!(matches!(
            store.get(&k).expect("get"),
            Some(RecordInfo::InFlight {
                attempt: 1,
                from_previous_process: true,
                ..
            })
        ));
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 2);
        assert!(second.is_takeover());
        assert!(second.token() > first.token());
        assert!(matches!(
            store.complete(&first, Response::new(200)),
            Err(Error::StaleLease { .. })
        ));
        store.complete(&second, created()).expect("complete");
        assert_eq!(replayed(claim(&store, &k)).attempt, 2);
    }

    #[test]
    fn with_after_lease_the_claim_waits_for_the_lease() {
        let f = Fixture::new();
        let k = key("interrupted-patiently");
        drop(acquired(claim(&f.open(), &k)));
        let store = open_at(&f.path, &f.clock, Takeover::AfterLease);
        let (retry_after, attempt) = in_flight(claim(&store, &k));
        assert_eq!((retry_after, attempt), (LEASE, 1));
        f.set(T0 + LEASE_MS - 1);
        in_flight(claim(&store, &k));
        f.set(T0 + LEASE_MS);
        let second = acquired(claim(&store, &k));
        assert_eq!(second.attempt(), 2);
        assert!(second.is_takeover());
    }

    #[test]
    fn completed_keys_replay_after_a_restart() {
        let f = Fixture::new();
        let k = key("done-before-restart");
        {
            let store = f.open();
            let lease = acquired(claim(&store, &k));
            store.complete(&lease, created()).expect("complete");
        }
        let store = f.open();
        assert_eq!(replayed(claim(&store, &k)).response, created());
    }
}

mod lifetime {
    use super::*;

    #[test]
    fn claim_with_ttl_honours_a_shorter_lifetime() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("ten-seconds");
        let lease = acquired(
            store
                .claim_with_ttl(&k, None, Duration::from_secs(10))
                .expect("claim"),
        );
        assert_eq!(lease.expires_at(), at(T0 + 10_000));
        assert_eq!(lease.lease_deadline(), at(T0 + 10_000), "lease capped");
        store.complete(&lease, created()).expect("complete");
        f.set(T0 + 9_999);
        assert_eq!(replayed(claim(&store, &k)).expires_at, at(T0 + 10_000));
        f.set(T0 + 10_000);
        let again = acquired(claim(&store, &k));
        assert_eq!(again.attempt(), 1);
        assert_eq!(again.expires_at(), at(T0 + 10_000 + TTL_MS));
    }

    #[test]
    fn claim_with_ttl_rejects_zero_and_above_max() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("bad-ttl");
        let week = Duration::from_secs(7 * 24 * 3600);
        assert!(matches!(
            store.claim_with_ttl(&k, None, Duration::ZERO),
            Err(Error::InvalidTtl { requested, max }) if requested.is_zero() && max == week
        ));
        let over = week + Duration::from_millis(1);
        assert!(matches!(
            store.claim_with_ttl(&k, None, over),
            Err(Error::InvalidTtl { requested, max }) if requested == over && max == week
        ));
        assert_eq!(store.get(&k).expect("get"), None, "nothing claimed");
        let lease = acquired(store.claim_with_ttl(&k, None, week).expect("claim"));
        assert_eq!(lease.expires_at(), at(T0 + week.as_millis() as u64));
    }
}

mod stats {
    use super::*;

    #[test]
    fn counters_move_as_expected() {
        let f = Fixture::new();
        let store = f.open();
        let s0 = store.stats();
        assert_eq!((s0.claims_acquired, s0.replays, s0.live_keys), (0, 0, 0));

        let fp = Some(Fingerprint::of_request("POST", "/a", b""));
        let other = Some(Fingerprint::of_request("POST", "/b", b""));
        let a = acquired(store.claim(&key("a"), fp).expect("claim"));
        let mut b = acquired(claim(&store, &key("b")));
        let c = acquired(claim(&store, &key("c")));
        in_flight(store.claim(&key("a"), fp).expect("claim"));
        in_flight(claim(&store, &key("a")));
        assert!(matches!(
            store.claim(&key("a"), other).expect("claim"),
            ClaimOutcome::Mismatch
        ));
        store.complete(&a, created()).expect("complete");
        replayed(store.claim(&key("a"), fp).expect("claim"));
        replayed(claim(&store, &key("a")));
        replayed(claim(&store, &key("a")));
        store.release(&c).expect("release");
        store.renew(&mut b).expect("renew");
        f.set(T0 + 2 * LEASE_MS);
        let b2 = acquired(claim(&store, &key("b")));
        assert!(b2.is_takeover());
        assert!(matches!(
            store.complete(&b, created()),
            Err(Error::StaleLease { .. })
        ));
        assert!(matches!(store.release(&b), Err(Error::StaleLease { .. })));
        assert!(store.expire(&key("a")).expect("expire"));

        let s = store.stats();
        assert_eq!(s.claims_acquired, 4, "a, b, c and the takeover of b");
        assert_eq!(s.takeovers, 1);
        assert_eq!(s.replays, 3);
        assert_eq!(s.in_flight_conflicts, 2);
        assert_eq!(s.mismatches, 1);
        assert_eq!(s.completes, 1);
        assert_eq!(s.releases, 1);
        assert_eq!(s.renews, 1);
        assert_eq!(s.expired_by_operator, 1);
        assert_eq!(s.stale_token_rejections, 2);
        assert_eq!(s.failed_commits, 0);
        assert_eq!(s.live_keys, 1, "only b is left");
        assert!(s.batches_committed > 0);
        assert!(s.syncs > 0);
        assert!(s.batched_ops >= s.batches_committed);
    }
}

mod clock {
    use super::*;

    /// Completes `k` at T0 with a 10 s lifetime, then lets a commit observe T0 + 10 s.
    fn expire_one(store: &Store, f: &Fixture, k: &Key) {
        let lease = acquired(
            store
                .claim_with_ttl(k, None, Duration::from_secs(10))
                .expect("claim"),
        );
        store.complete(&lease, created()).expect("complete");
        f.set(T0 + 10_000);
        // A claim of another key commits, which persists the time it saw.
        drop(acquired(claim(store, &key("witness"))));
        assert_eq!(store.get(k).expect("get"), None);
    }

    #[test]
    fn stepping_back_does_not_resurrect_an_expired_key() {
        let f = Fixture::new();
        let store = f.open();
        let k = key("expired");
        expire_one(&store, &f, &k);
        f.set(T0 + 1_000);
        assert_eq!(store.get(&k).expect("get"), None);
        let again = acquired(claim(&store, &k));
        assert_eq!(again.attempt(), 1);
        assert!(!again.is_takeover());
    }

    /// The store saw the key expire (`get` said absent) but committed nothing afterwards (the
    /// sweeper has not run yet); it is closed cleanly, and reopened with the clock stepped back.
    #[test]
    fn stepping_back_after_a_clean_close_does_not_resurrect() {
        let f = Fixture::new();
        let k = key("expired");
        {
            let store = Store::builder()
                .clock(f.clock.clone())
                .sweep_interval(Duration::from_secs(3600))
                .open(&f.path)
                .expect("open");
            let lease = acquired(
                store
                    .claim_with_ttl(&k, None, Duration::from_secs(10))
                    .expect("claim"),
            );
            store.complete(&lease, created()).expect("complete");
            f.set(T0 + 10_000);
            assert_eq!(store.get(&k).expect("get"), None);
            store.close().expect("close");
        }
        f.set(T0 + 1_000);
        let store = f.open();
        assert_eq!(store.get(&k).expect("get"), None, "expired key resurrected");
        assert!(matches!(claim(&store, &k), ClaimOutcome::Acquired(_)));
    }

    /// An owner told `StaleLease` because its record expired keeps that answer across a
    /// power loss and a clock stepping back. Before the fix the refusal came from the
    /// directory in memory, with no commit recording the time it used, and after the restart
    /// the same lease completed the key.
    #[test]
    fn a_stale_answer_for_an_expired_record_survives_a_crash_and_a_step_back() {
        use idemstore::sim_disk::SimDisk;
        let clock = ManualClock::new(T0);
        let open = |disk: &SimDisk| {
            Store::builder()
                .clock(clock.clone())
                .sweep_interval(Duration::from_secs(3600))
                .open_sim(disk)
                .expect("open")
        };
        let disk = SimDisk::new();
        let store = open(&disk);
        let k = key("expiring");
        let mut lease = acquired(
            store
                .claim_with_ttl(&k, None, Duration::from_secs(10))
                .expect("claim"),
        );
        clock.set_ms(T0 + 10_000);
        let late = store.complete(&lease, created());
        assert!(matches!(late, Err(Error::StaleLease { .. })), "{late:?}");
        let renewed = store.renew(&mut lease);
        assert!(
            matches!(renewed, Err(Error::StaleLease { .. })),
            "{renewed:?}"
        );
        let survivor = disk.crash(7);
        drop(store);
        clock.set_ms(T0 + 1_000);
        let store = open(&survivor);
        let again = store.complete(&lease, created());
        assert!(
            matches!(again, Err(Error::StaleLease { .. })),
            "the answer StaleLease was taken back: {again:?}"
        );
        assert_eq!(store.get(&k).expect("get"), None);
    }

    #[test]
    fn stepping_back_across_a_reopen_does_not_resurrect_either() {
        let f = Fixture::new();
        let k = key("expired");
        {
            let store = f.open();
            expire_one(&store, &f, &k);
        }
        f.set(T0 + 1_000);
        let store = f.open();
        assert_eq!(store.get(&k).expect("get"), None);
        let again = acquired(claim(&store, &k));
        assert_eq!(again.attempt(), 1);
        assert!(!again.is_takeover());
    }
}

mod http {
    //! A minimal HTTP idempotency layer on top of the store, reproducing `docs/BEHAVIOUR.md`.

    use super::*;
    use std::cell::Cell;

    pub const IN_USE: &str = r#"{"error": "idempotency_key_in_use", "message": "A request with this idempotency key is already being processed. Retry after a moment."}"#;
    pub const MISMATCH: &str = r#"{"error": "idempotency_key_mismatch", "message": "This idempotency key was already used with a different request."}"#;
    pub const BAD_KEY: &str = r#"{"error": "invalid_idempotency_key", "message": "The idempotency key must be 1 to 255 bytes without control characters."}"#;
    pub const UNAVAILABLE: &str = r#"{"error": "unavailable", "message": "The request could not be checked for duplicates. Retry after a moment."}"#;
    /// Replayed in place of a result too large to keep: the request ran, so a retry must not
    /// run it again.
    pub const NOT_KEPT: &str = r#"{"error": "idempotency_result_not_kept", "message": "This request was processed, but its response was too large to keep for replay."}"#;
    /// The longest key a client may send (the spec's "sane maximum"), whatever its tenant.
    pub const MAX_KEY: usize = 255;
    /// The scope a tenant's keys live in: a fixed-size digest of its credentials, so the key
    /// limit a client sees does not depend on how long its token is.
    const SCOPE_LEN: usize = 16;

    fn scope(authorization: &str) -> String {
        let digest = Fingerprint::of_request("AUTH", "", authorization.as_bytes()).0;
        format!("{:016x}", digest as u64)
    }

    /// The store behind the layer: keys of up to `MAX_KEY` bytes within a tenant's scope.
    pub fn open(f: &Fixture) -> Store {
        Store::builder()
            .clock(f.clock.clone())
            .max_key_len(SCOPE_LEN + MAX_KEY)
            .open(&f.path)
            .expect("open store")
    }

    /// Status, headers, body.
    pub type Http = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

    fn json(status: u16, body: &str) -> Http {
        let headers = vec![("Content-Type".into(), b"application/json".to_vec())];
        (status, headers, body.as_bytes().to_vec())
    }

    /// Validation errors (400, 422) and handler errors (5xx) had no effect the server keeps:
    /// they release the key so a retry runs fresh.
    fn kept(status: u16) -> bool {
        !matches!(status, 400 | 422 | 500..=599)
    }

    /// Handles one request. The tenant scope is the `Authorization` header.
    pub fn handle(
        store: &Store,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        run: impl FnOnce() -> Http,
    ) -> Http {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        // GET, PUT, PATCH, DELETE are naturally idempotent: a key on them is ignored.
        let Some(raw) = header("X-Idempotency-Key").filter(|_| method == "POST") else {
            return run();
        };
        if raw.is_empty() || raw.len() > MAX_KEY || raw.chars().any(char::is_control) {
            return json(400, BAD_KEY);
        }
        let key = Key::new(scope(header("Authorization").unwrap_or("")), raw);
        let fp = Fingerprint::of_request(method, path, body);
        match store.claim(&key, Some(fp)) {
            // Overloaded, or the store failed: nothing ran, the client may retry.
            Err(_) => {
                let mut r = json(503, UNAVAILABLE);
                r.1.push(("Retry-After".into(), b"1".to_vec()));
                r
            }
            Ok(ClaimOutcome::InFlight { retry_after, .. }) => {
                let mut r = json(409, IN_USE);
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                r.1.push(("Retry-After".into(), secs.to_string().into_bytes()));
                r
            }
            Ok(ClaimOutcome::Mismatch) => json(422, MISMATCH),
            Ok(ClaimOutcome::Replay(replay)) => {
                let Response {
                    status,
                    mut headers,
                    body,
                } = replay.response;
                headers.push(("X-Idempotency-Replayed".into(), b"true".to_vec()));
                (status, headers, body)
            }
            Ok(ClaimOutcome::Acquired(lease)) => {
                let (status, headers, body) = run();
                if !kept(status) {
                    // Whether or not this lands (a stale lease: a takeover ran meanwhile), the
                    // client gets the error it caused.
                    let _ = store.release(&lease);
                    return (status, headers, body);
                }
                let response = Response {
                    status,
                    headers: headers.clone(),
                    body: body.clone(),
                };
                let stored = match store.complete(&lease, response) {
                    Err(Error::ResponseTooLarge { .. }) => {
                        let stand_in = Response::new(500)
                            .header("Content-Type", "application/json")
                            .body(NOT_KEPT);
                        store.complete(&lease, stand_in)
                    }
                    // Completing again with the same lease is safe: the outcome is known after.
                    Err(Error::OutcomeUnknown { .. }) => store.complete(
                        &lease,
                        Response {
                            status,
                            headers: headers.clone(),
                            body: body.clone(),
                        },
                    ),
                    other => other,
                };
                // StaleLease: a takeover ran meanwhile and its result is the key's. Any other
                // error: the result may be lost. Either way the action ran, so this client
                // gets its response.
                let _ = stored;
                (status, headers, body)
            }
        }
    }

    fn header<'a>(r: &'a Http, name: &str) -> Option<&'a [u8]> {
        r.1.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn never() -> Http {
        panic!("the action must not run")
    }

    #[test]
    fn http_contract() {
        let f = Fixture::new();
        let store = open(&f);
        let runs = Cell::new(0);
        let tenant_a = ("Authorization", "Bearer key_a");
        let tenant_b = ("Authorization", "Bearer key_b");
        let uuid = "550e8400-e29b-41d4-a716-446655440000";
        let create = |tenant, key: &str, body: &[u8], id: &str| {
            let id = id.to_string();
            handle(
                &store,
                "POST",
                "/v1/projects",
                &[tenant, ("X-Idempotency-Key", key)],
                body,
                || {
                    runs.set(runs.get() + 1);
                    let mut r = json(201, &format!("{{\"id\":\"{id}\"}}"));
                    r.1.push(("Location".into(), format!("/v1/projects/{id}").into_bytes()));
                    r
                },
            )
        };

        // First request: processed, not marked as a replay.
        let first = create(tenant_a, uuid, b"{\"name\":\"web\"}", "prj_1");
        assert_eq!((first.0, runs.get()), (201, 1));
        assert_eq!(header(&first, "X-Idempotency-Replayed"), None);

        // Same key: same status (201 although nothing new is created), same body and headers,
        // marked as replayed, not run again.
        let retry = create(tenant_a, uuid, b"{\"name\":\"web\"}", "prj_2");
        assert_eq!((retry.0, runs.get()), (201, 1));
        assert_eq!(retry.2, first.2);
        assert_eq!(&retry.1[..first.1.len()], &first.1[..]);
        assert_eq!(header(&retry, "X-Idempotency-Replayed"), Some(&b"true"[..]));

        // Same key, different request: 422, never someone else's result.
        let reused = create(tenant_a, uuid, b"{\"name\":\"api\"}", "prj_3");
        assert_eq!(
            (reused.0, reused.2.as_slice(), runs.get()),
            (422, MISMATCH.as_bytes(), 1)
        );

        // Same key string, other tenant: independent.
        let other = create(tenant_b, uuid, b"{\"name\":\"web\"}", "prj_b");
        assert_eq!(
            (other.0, other.2.as_slice(), runs.get()),
            (201, &b"{\"id\":\"prj_b\"}"[..], 2)
        );

        // While the first request is processed: 409 with the exact body, and 422 for another
        // request with the same key.
        let redeploy = |key: &str, body: &[u8], run: &mut dyn FnMut() -> Http| {
            handle(
                &store,
                "POST",
                "/v1/environments/env_01/redeploy",
                &[tenant_a, ("X-Idempotency-Key", key)],
                body,
                run,
            )
        };
        let key = "redeploy-abc123def456";
        let done = redeploy(key, b"{}", &mut || {
            let conflict = redeploy(key, b"{}", &mut never);
            assert_eq!(conflict.0, 409);
            assert_eq!(conflict.2, IN_USE.as_bytes());
            let secs: u64 = std::str::from_utf8(header(&conflict, "Retry-After").unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&secs));
            assert_eq!(redeploy(key, b"{\"force\":true}", &mut never).0, 422);
            json(202, r#"{"job":"job_1","status":"queued"}"#)
        });
        assert_eq!(done.0, 202);
        let replay = redeploy(key, b"{}", &mut never);
        assert_eq!((replay.0, &replay.2), (202, &done.2));
        assert_eq!(
            header(&replay, "X-Idempotency-Replayed"),
            Some(&b"true"[..])
        );

        // A handler error releases the key: the retry runs fresh.
        let key = "redeploy-env_01abc-1741958400";
        assert_eq!(redeploy(key, b"{}", &mut || json(500, "{}")).0, 500);
        assert_eq!(redeploy(key, b"{}", &mut || json(400, "{}")).0, 400);
        let ran = redeploy(key, b"{}", &mut || json(202, r#"{"job":"job_2"}"#));
        assert_eq!((ran.0, header(&ran, "X-Idempotency-Replayed")), (202, None));
        assert_eq!(redeploy(key, b"{}", &mut never).2, ran.2);

        // GET, PUT, PATCH and DELETE ignore the key: they run every time, nothing is stored.
        let ignored = "gh-actions-run-12345678";
        for method in ["GET", "PUT", "PATCH", "DELETE", "GET"] {
            let before = runs.get();
            let r = handle(
                &store,
                method,
                "/v1/projects/prj_1",
                &[tenant_a, ("X-Idempotency-Key", ignored)],
                b"",
                || {
                    runs.set(runs.get() + 1);
                    json(200, "{}")
                },
            );
            assert_eq!((r.0, runs.get()), (200, before + 1), "{method}");
            assert_eq!(header(&r, "X-Idempotency-Replayed"), None);
        }
        assert_eq!(
            store
                .get(&Key::new(scope("Bearer key_a"), ignored))
                .expect("get"),
            None
        );

        // Keys are opaque but sane: no control characters (C0 or C1), not empty, at most 255
        // bytes whatever the tenant's token.
        assert_eq!(create(tenant_a, "bad\nkey", b"", "x").0, 400);
        assert_eq!(create(tenant_a, "bad\u{85}key", b"", "x").0, 400);
        assert_eq!(create(tenant_a, "", b"", "x").0, 400);
        assert_eq!(create(tenant_a, &"k".repeat(MAX_KEY + 1), b"", "x").0, 400);
        assert_eq!(runs.get(), 7, "2 creates and 5 ignored-key requests");
        let jwt = format!("Bearer {}", "t".repeat(300));
        let longest = "k".repeat(MAX_KEY);
        assert_eq!(create(("Authorization", &jwt), &longest, b"", "x").0, 201);
        assert_eq!(create(tenant_a, &longest, b"", "y").0, 201);
        assert_eq!(runs.get(), 9);

        // A result too large to keep: this client gets it, a retry gets the stand-in (the
        // request ran: it must not run again).
        let big = "redeploy-too-large";
        let huge = vec![b'x'; 2 << 20];
        let ran = redeploy(big, b"{}", &mut || (200, vec![], huge.clone()));
        assert_eq!((ran.0, ran.2.len()), (200, huge.len()));
        let retry = redeploy(big, b"{}", &mut never);
        assert_eq!((retry.0, retry.2.as_slice()), (500, NOT_KEPT.as_bytes()));
        assert_eq!(header(&retry, "X-Idempotency-Replayed"), Some(&b"true"[..]));

        // After 24 hours the key has expired: the request is treated as new.
        f.set(T0 + TTL_MS);
        let later = create(tenant_a, uuid, b"{\"name\":\"api\"}", "prj_4");
        assert_eq!((later.0, runs.get()), (201, 10));
        assert_eq!(header(&later, "X-Idempotency-Replayed"), None);
        assert_eq!(later.2, b"{\"id\":\"prj_4\"}");
    }
    /// A store that cannot check the key (here: `max_in_flight` requests already in flight)
    /// answers `503` with `Retry-After`, without running the action; once room is back the
    /// retry runs.
    #[test]
    fn http_store_unavailable_is_503() {
        let f = Fixture::new();
        let store = Store::builder()
            .clock(f.clock.clone())
            .max_key_len(SCOPE_LEN + MAX_KEY)
            .max_in_flight(1)
            .open(&f.path)
            .expect("open store");
        let tenant = ("Authorization", "Bearer key_a");
        let post = |key: &str, run: &mut dyn FnMut() -> Http| {
            handle(
                &store,
                "POST",
                "/v1/projects",
                &[tenant, ("X-Idempotency-Key", key)],
                b"{}",
                run,
            )
        };
        let first = post("first", &mut || {
            let refused = post("second", &mut never);
            assert_eq!(
                (refused.0, refused.2.as_slice()),
                (503, UNAVAILABLE.as_bytes())
            );
            assert_eq!(header(&refused, "Retry-After"), Some(&b"1"[..]));
            json(201, "{}")
        });
        assert_eq!(first.0, 201);
        let retry = post("second", &mut || json(201, r#"{"id":"prj_2"}"#));
        assert_eq!(
            (retry.0, header(&retry, "X-Idempotency-Replayed")),
            (201, None)
        );
    }
}
