//! A flood of distinct keys that never complete cannot grow the store without bound.

use idemstore::{ClaimOutcome, Error, Key, ManualClock, Response, Store};
use std::time::Duration;

const START: u64 = 1_750_000_000_000;

fn open(dir: &tempfile::TempDir, clock: &ManualClock, max: u64) -> Store {
    Store::builder()
        .clock(clock.clone())
        .ttl(Duration::from_secs(3600))
        .max_in_flight(max)
        .open(dir.path().join("s.redb"))
        .unwrap()
}

#[test]
fn a_flood_of_never_completed_keys_is_capped_and_drains_at_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let store = open(&dir, &clock, 100);
    let mut leases = vec![];
    let mut refused = 0;
    for i in 0..1_000 {
        match store.claim(&Key::new("flood", format!("k{i}")), None) {
            Ok(ClaimOutcome::Acquired(lease)) => leases.push(lease),
            Err(Error::Overloaded { in_flight, max }) => {
                assert_eq!((in_flight, max), (100, 100));
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((leases.len(), refused), (100, 900));
    let stats = store.stats();
    assert_eq!((stats.live_keys, stats.in_flight_keys), (100, 100));
    assert_eq!(store.records_on_disk().unwrap(), 100);

    // Keys already held are still answered: in flight, and replays once completed.
    assert!(matches!(
        store.claim(&Key::new("flood", "k0"), None).unwrap(),
        ClaimOutcome::InFlight { .. }
    ));
    store.complete(&leases[0], Response::new(200)).unwrap();
    assert!(matches!(
        store.claim(&Key::new("flood", "k0"), None).unwrap(),
        ClaimOutcome::Replay(_)
    ));
    // Completing one made room for exactly one new key.
    assert!(matches!(
        store.claim(&Key::new("flood", "new-1"), None).unwrap(),
        ClaimOutcome::Acquired(_)
    ));
    assert!(matches!(
        store.claim(&Key::new("flood", "new-2"), None),
        Err(Error::Overloaded { .. })
    ));
    // A release makes room too; a takeover after the lease does not need any.
    store.release(&leases[1]).unwrap();
    assert!(matches!(
        store.claim(&Key::new("flood", "new-2"), None).unwrap(),
        ClaimOutcome::Acquired(_)
    ));
    clock.advance(Duration::from_secs(61));
    match store.claim(&Key::new("flood", "k2"), None).unwrap() {
        ClaimOutcome::Acquired(lease) => assert!(lease.is_takeover()),
        other => panic!("expected a takeover, got {other:?}"),
    }

    // At expiry the abandoned claims are reclaimed and new keys are accepted again.
    clock.advance(Duration::from_secs(3600));
    store.run_pending_expiry().unwrap();
    let stats = store.stats();
    assert_eq!((stats.live_keys, stats.in_flight_keys), (0, 0));
    assert_eq!(store.records_on_disk().unwrap(), 0);
    assert!(matches!(
        store.claim(&Key::new("flood", "after"), None).unwrap(),
        ClaimOutcome::Acquired(_)
    ));
}

#[test]
fn the_in_flight_count_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let store = open(&dir, &clock, 10);
    for i in 0..10 {
        assert!(matches!(
            store.claim(&Key::new("t", format!("k{i}")), None).unwrap(),
            ClaimOutcome::Acquired(_)
        ));
    }
    drop(store);
    let store = open(&dir, &clock, 10);
    assert_eq!(store.stats().in_flight_keys, 10);
    // Orphaned claims are taken over at once (no new room needed); new keys wait.
    assert!(matches!(
        store.claim(&Key::new("t", "k0"), None).unwrap(),
        ClaimOutcome::Acquired(_)
    ));
    assert!(matches!(
        store.claim(&Key::new("t", "other"), None),
        Err(Error::Overloaded { .. })
    ));
}

#[test]
fn a_zero_limit_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::builder().max_in_flight(0).open(dir.path().join("s.redb")),
        Err(Error::InvalidConfig(msg)) if msg.contains("max_in_flight")
    ));
}
