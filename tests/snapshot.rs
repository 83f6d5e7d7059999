//! The directory snapshot written at a clean close (`Builder::snapshot_min_keys`): the next
//! open reads it instead of scanning the records and then answers exactly as a scan would;
//! a stale, foreign or damaged snapshot is never used.

use idemstore::{ClaimOutcome, Fingerprint, Key, ManualClock, Response, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const KEYS: u32 = 1_200;
/// The lifetime of every 7th key: gone after the clock moves past it.
const SHORT: Duration = Duration::from_secs(5);

fn builder(clock: &ManualClock) -> idemstore::Builder {
    Store::builder().clock(clock.clone()).snapshot_min_keys(1)
}

fn key(i: u32) -> Key {
    Key::new("snap", format!("k{i}"))
}

fn fingerprint(i: u32) -> Option<Fingerprint> {
    i.is_multiple_of(3)
        .then(|| Fingerprint::from_bytes(&i.to_le_bytes()))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    name.into()
}

fn snapshot_of(path: &Path) -> PathBuf {
    sibling(path, "-snapshot")
}

/// Every kind of record: completed (some with fingerprints), in flight, released, and short
/// lifetimes.
fn populate(store: &Store) {
    for i in 0..KEYS {
        let outcome = if i.is_multiple_of(7) {
            store.claim_with_ttl(&key(i), fingerprint(i), SHORT)
        } else {
            store.claim(&key(i), fingerprint(i))
        };
        let Ok(ClaimOutcome::Acquired(lease)) = outcome else {
            panic!("key {i}: {outcome:?}");
        };
        match i % 4 {
            0 | 1 => store
                .complete(&lease, Response::new(200).body(format!("body {i}")))
                .unwrap(),
            2 => {}
            _ => store.release(&lease).unwrap(),
        }
    }
}

/// What the store says of key `i`, looking and then claiming it (with its fingerprint).
fn describe(store: &Store, i: u32) -> String {
    let info = store.get(&key(i)).unwrap();
    let claim = store.claim(&key(i), fingerprint(i)).unwrap();
    format!("{info:?} / {claim:?}")
}

/// A closed store at `dir/s.redb` with `populate`'s records and a snapshot.
fn closed_store(dir: &Path) -> PathBuf {
    let path = dir.join("s.redb");
    let store = builder(&ManualClock::new(T0)).open(&path).unwrap();
    populate(&store);
    store.close().unwrap();
    assert!(snapshot_of(&path).exists(), "the close wrote a snapshot");
    path
}

/// Copies the store file and its log to `to` (not the snapshot).
fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    std::fs::copy(sibling(from, "-log"), sibling(to, "-log")).unwrap();
}

#[test]
fn an_open_from_the_snapshot_answers_as_the_scan_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    let scanned_path = dir.path().join("scanned.redb");
    copy_store(&path, &scanned_path);

    let (clock_a, clock_b) = (ManualClock::new(T0 + 1_000), ManualClock::new(T0 + 1_000));
    let from_snapshot = builder(&clock_a).open(&path).unwrap();
    let scanned = builder(&clock_b).open(&scanned_path).unwrap();
    let (a, b) = (from_snapshot.stats(), scanned.stats());
    assert_eq!(b.keys_from_snapshot, 0, "no snapshot beside the copy");
    assert!(a.live_keys > 0);
    assert_eq!(a.keys_from_snapshot, a.live_keys);
    assert_eq!(
        (a.live_keys, a.in_flight_keys),
        (b.live_keys, b.in_flight_keys)
    );
    assert!(
        !snapshot_of(&path).exists(),
        "the open removed the snapshot"
    );
    // Looks, replays, conflicts, mismatches and takeovers of the claims left in flight by the
    // earlier open, then the same after the short lifetimes ended.
    for i in 0..KEYS {
        assert_eq!(
            describe(&from_snapshot, i),
            describe(&scanned, i),
            "key {i}"
        );
    }
    for c in [&clock_a, &clock_b] {
        c.advance(SHORT * 2);
    }
    // The background sweepers may have been first; either way, everything due goes.
    for store in [&from_snapshot, &scanned] {
        store.run_pending_expiry().unwrap();
    }
    assert_eq!(
        from_snapshot.records_on_disk().unwrap(),
        scanned.records_on_disk().unwrap()
    );
    for i in 0..KEYS {
        assert_eq!(
            describe(&from_snapshot, i),
            describe(&scanned, i),
            "key {i}"
        );
    }
}

#[test]
fn a_snapshot_of_an_earlier_close_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    let old = std::fs::read(snapshot_of(&path)).unwrap();
    let clock = ManualClock::new(T0 + 1_000);

    // A later life changes keys and closes without a snapshot.
    let store = builder(&clock)
        .snapshot_min_keys(u64::MAX)
        .open(&path)
        .unwrap();
    assert!(store.stats().keys_from_snapshot > 0);
    let ClaimOutcome::Acquired(lease) = store.claim(&key(2), fingerprint(2)).unwrap() else {
        panic!("key 2 was in flight under the earlier open: taken over");
    };
    store
        .complete(&lease, Response::new(201).body("later"))
        .unwrap();
    assert!(store.expire(&key(1)).unwrap());
    store.close().unwrap();
    assert!(!snapshot_of(&path).exists());

    let check = |store: &Store| {
        assert_eq!(store.stats().keys_from_snapshot, 0);
        match store.claim(&key(2), fingerprint(2)).unwrap() {
            ClaimOutcome::Replay(r) => assert_eq!(r.response.body, b"later"),
            other => panic!("key 2: {other:?}"),
        }
        assert_eq!(store.get(&key(1)).unwrap(), None);
    };
    // The old snapshot put back: its id is not the file's.
    std::fs::write(snapshot_of(&path), &old).unwrap();
    let store = builder(&clock).open(&path).unwrap();
    check(&store);
    store.close().unwrap();

    // The old snapshot over a newer one: the id differs too.
    assert!(snapshot_of(&path).exists());
    std::fs::write(snapshot_of(&path), &old).unwrap();
    let store = builder(&clock).open(&path).unwrap();
    check(&store);
}

#[test]
fn a_damaged_snapshot_costs_only_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    let good = std::fs::read(snapshot_of(&path)).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let damages = [
        flipped,
        good[..good.len() - 1].to_vec(),
        good[..100].to_vec(),
        Vec::new(),
    ];
    let clock = ManualClock::new(T0 + 1_000);
    for (n, bytes) in damages.iter().enumerate() {
        let copy = dir.path().join(format!("copy{n}.redb"));
        copy_store(&path, &copy);
        std::fs::write(snapshot_of(&copy), bytes).unwrap();
        let store = builder(&clock).open(&copy).unwrap();
        assert_eq!(store.stats().keys_from_snapshot, 0, "damage {n}");
        for i in (0..KEYS).step_by(4) {
            match store.claim(&key(i), fingerprint(i)).unwrap() {
                ClaimOutcome::Replay(r) => {
                    assert_eq!(r.response.body, format!("body {i}").as_bytes())
                }
                other => panic!("damage {n}, key {i}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_small_store_writes_no_snapshot_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::builder()
        .clock(ManualClock::new(T0))
        .open(&path)
        .unwrap();
    let ClaimOutcome::Acquired(lease) = store.claim(&key(0), None).unwrap() else {
        panic!("a new key");
    };
    store.complete(&lease, Response::new(200)).unwrap();
    store.close().unwrap();
    assert!(!snapshot_of(&path).exists());
}

#[test]
fn a_header_announcing_more_keys_than_records_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    let snap = snapshot_of(&path);
    let mut bytes = std::fs::read(&snap).unwrap();
    // Layout of `src/snapshot.rs`: magic, version, shards, id, seeds, 64 counts, checksum.
    const COUNTS: usize = 8 + 4 + 4 + 8 + 16;
    const HEADER: usize = COUNTS + 8 * 64 + 8;
    let count = |b: &[u8], i: usize| {
        u64::from_le_bytes(b[COUNTS + 8 * i..COUNTS + 8 * i + 8].try_into().unwrap())
    };
    // A 1 TiB first section over a sparse file of the matching length, checksum made valid:
    // reading it would be an allocation that aborts the process.
    let huge = (1u64 << 40) / 47;
    let rest: u64 = (1..64).map(|i| count(&bytes, i) * 47 + 8).sum();
    bytes[COUNTS..COUNTS + 8].copy_from_slice(&huge.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..HEADER - 8]);
    bytes[HEADER - 8..HEADER].copy_from_slice(&sum.to_le_bytes());
    bytes.truncate(HEADER);
    std::fs::write(&snap, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&snap)
        .unwrap()
        .set_len(HEADER as u64 + huge * 47 + 8 + rest)
        .unwrap();
    let store = builder(&ManualClock::new(T0)).open(&path).unwrap();
    assert_eq!(store.stats().keys_from_snapshot, 0);
    assert!(matches!(
        store.claim(&key(0), fingerprint(0)).unwrap(),
        ClaimOutcome::Replay(_)
    ));
}

#[test]
fn a_snapshot_the_store_file_does_not_name_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::new(T0);
    Store::builder()
        .clock(clock.clone())
        .open(&path)
        .unwrap()
        .close()
        .unwrap();
    // What a close that died before its last commit leaves: a snapshot the file does not name,
    // and a half-written one.
    std::fs::write(snapshot_of(&path), b"junk").unwrap();
    std::fs::write(sibling(&path, "-snapshot.tmp"), b"junk").unwrap();
    let store = Store::builder().clock(clock).open(&path).unwrap();
    assert_eq!(store.stats().keys_from_snapshot, 0);
    assert!(!snapshot_of(&path).exists());
    assert!(!sibling(&path, "-snapshot.tmp").exists());
}

#[test]
fn a_snapshot_that_cannot_be_written_leaves_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    // A directory where the snapshot's temporary file goes: writing it fails.
    std::fs::create_dir(sibling(&path, "-snapshot.tmp")).unwrap();
    let store = builder(&ManualClock::new(T0)).open(&path).unwrap();
    populate(&store);
    store.close().unwrap();
    assert!(!snapshot_of(&path).exists());
    let store = builder(&ManualClock::new(T0 + 1_000)).open(&path).unwrap();
    assert_eq!(store.stats().keys_from_snapshot, 0);
    for i in (0..KEYS).step_by(4) {
        assert!(matches!(
            store.claim(&key(i), fingerprint(i)).unwrap(),
            ClaimOutcome::Replay(_)
        ));
    }
}
