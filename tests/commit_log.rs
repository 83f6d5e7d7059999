//! The commit log in front of the store file: replay after a crash, checkpoints when it is
//! full, and damaged or foreign log contents.

use idemstore::sim_disk::SimDisk;
use idemstore::{ClaimOutcome, Error, Key, ManualClock, Response, Store};
use redb::StorageBackend;

const T0: u64 = 1_700_000_000_000;
/// Frames start at multiples of this (`log.rs`).
const BLOCK: u64 = 4096;

fn open(disk: &SimDisk, capacity: u64) -> Result<Store, Error> {
    Store::builder()
        .clock(ManualClock::new(T0))
        .log_capacity(capacity)
        .open_sim(disk)
}

fn key(i: u32) -> Key {
    Key::new("log", format!("k{i}"))
}

/// Claims and completes `n` keys, one group commit each.
fn fill(store: &Store, keys: std::ops::Range<u32>) {
    for i in keys {
        let ClaimOutcome::Acquired(lease) = store.claim(&key(i), None).unwrap() else {
            panic!("key {i} was not new");
        };
        store
            .complete(&lease, Response::new(200).body(format!("body {i}")))
            .unwrap();
    }
}

fn assert_replays(store: &Store, keys: std::ops::Range<u32>) {
    for i in keys {
        match store.claim(&key(i), None).unwrap() {
            ClaimOutcome::Replay(r) => assert_eq!(r.response.body, format!("body {i}").as_bytes()),
            other => panic!("key {i}: {other:?}"),
        }
    }
}

/// The disk after a power loss: the log's frames are synced; redb's commits since the last
/// checkpoint were only in memory.
fn power_loss(disk: &SimDisk) -> SimDisk {
    disk.crash(1)
}

/// A store on a new disk with `keys` completed, after a power loss: the keys are in its log only.
fn crashed_with(keys: std::ops::Range<u32>) -> SimDisk {
    let disk = SimDisk::new();
    let store = open(&disk, 64 << 20).unwrap();
    fill(&store, keys);
    // No checkpoint: only the log holds them.
    assert_eq!(store.stats().checkpoints, 0);
    let after = power_loss(&disk);
    drop(store);
    after
}

fn assert_new(store: &Store, i: u32) {
    assert!(
        matches!(
            store.claim(&key(i), None).unwrap(),
            ClaimOutcome::Acquired(_)
        ),
        "key {i} is not new"
    );
}

fn log_bytes(disk: &SimDisk) -> Vec<u8> {
    let log = disk.log_backend();
    let mut bytes = vec![0; log.len().unwrap() as usize];
    log.read(0, &mut bytes).unwrap();
    bytes
}

#[test]
fn acknowledged_operations_are_replayed_from_the_log_after_a_power_loss() {
    let after = crashed_with(0..20);
    let store = open(&after, 64 << 20).unwrap();
    assert_replays(&store, 0..20);
}

#[test]
fn a_full_log_checkpoints_and_nothing_is_lost() {
    let disk = SimDisk::new();
    let store = open(&disk, 64 << 10).unwrap();
    fill(&store, 0..100);
    // 200 one-block commits in a 16-block log.
    let checkpoints = store.stats().checkpoints;
    assert!(checkpoints >= 10, "{checkpoints} checkpoints");
    let after = power_loss(&disk);
    drop(store);
    let store = open(&after, 64 << 10).unwrap();
    assert_replays(&store, 0..100);
    fill(&store, 100..120);
    store.close().unwrap();
    let store = open(&after, 64 << 10).unwrap();
    assert_replays(&store, 0..120);
}

#[test]
fn a_damaged_acknowledged_frame_is_corruption() {
    let after = crashed_with(0..3);
    // Flip a payload byte of the second frame: frames after it were acknowledged later.
    let log = after.log_backend();
    let mut byte = [0];
    log.read(BLOCK + 50, &mut byte).unwrap();
    log.write(BLOCK + 50, &[byte[0] ^ 0xff]).unwrap();
    match open(&after, 64 << 20) {
        Err(Error::Corrupt { detail }) => assert!(detail.contains("commit log"), "{detail}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_torn_last_frame_is_an_unacknowledged_append() {
    let after = crashed_with(0..3);
    // Six frames (claim and complete of three keys); tear the last one, the third complete.
    let log = after.log_backend();
    log.write(5 * BLOCK + 50, &[0xee; 100]).unwrap();
    let store = open(&after, 64 << 20).unwrap();
    assert_replays(&store, 0..2);
    assert_new(&store, 2);
}

#[test]
fn another_stores_log_is_not_replayed() {
    // Store A leaves frames in its log.
    let a_after = crashed_with(0..5);
    // Store B holds two keys in its file, then loses power right after an open: its next open
    // reads the log beside the file (a clean close would tell it not to), which is now A's.
    let b = SimDisk::new();
    let store = open(&b, 64 << 20).unwrap();
    fill(&store, 100..102);
    store.close().unwrap();
    let store = open(&b, 64 << 20).unwrap();
    let b_after = power_loss(&b);
    drop(store);
    let foreign = log_bytes(&a_after);
    b_after.log_backend().write(0, &foreign).unwrap();
    let store = open(&b_after, 64 << 20).unwrap();
    assert_replays(&store, 100..102);
    // A's frames carry another generation: none of them is applied.
    for i in 0..5 {
        assert_new(&store, i);
    }
}

#[test]
fn without_a_log_nothing_is_written_to_it() {
    let disk = SimDisk::new();
    let store = open(&disk, 0).unwrap();
    fill(&store, 0..5);
    assert_eq!(disk.log_disk().size(), 0);
    store.close().unwrap();
    // A log turned on later starts empty; turned off again, a clean close left nothing.
    let store = open(&disk, 64 << 10).unwrap();
    assert_replays(&store, 0..5);
    fill(&store, 5..10);
    store.close().unwrap();
    let store = open(&disk, 0).unwrap();
    assert_replays(&store, 0..10);
}

#[test]
fn a_bad_log_capacity_is_refused() {
    for bytes in [1, (64 << 10) - 1, (4 << 30) + 1] {
        assert!(matches!(
            open(&SimDisk::new(), bytes),
            Err(Error::InvalidConfig(_))
        ));
    }
}

#[test]
fn the_log_file_sits_beside_the_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let store = Store::open(&path).unwrap();
    let ClaimOutcome::Acquired(lease) = store.claim(&key(1), None).unwrap() else {
        panic!("new key")
    };
    store.complete(&lease, Response::new(201)).unwrap();
    assert!(dir.path().join("idem.redb-log").exists());
    store.close().unwrap();
    let store = Store::open(&path).unwrap();
    assert!(matches!(
        store.claim(&key(1), None).unwrap(),
        ClaimOutcome::Replay(_)
    ));
}

/// Found by review: generations were counted (the next one after a clean close was always the
/// same), so a copy of a closed store file, restored beside a log that a later life of the same
/// store had written, started the very generation whose frames that log held; after a power loss,
/// replay ran on into that life's frames and resurrected keys this timeline never had.
#[test]
fn a_restored_copy_of_a_closed_file_does_not_replay_a_later_life() {
    let disk = SimDisk::new();
    let store = open(&disk, 64 << 20).unwrap();
    fill(&store, 0..1);
    store.close().unwrap();
    let backup = {
        let db = disk.backend();
        let mut bytes = vec![0; db.len().unwrap() as usize];
        db.read(0, &mut bytes).unwrap();
        bytes
    };
    // The store lives on: 40 frames in its log.
    let store = open(&disk, 64 << 20).unwrap();
    fill(&store, 100..120);
    store.close().unwrap();
    // The backup comes back beside that log.
    let restored = SimDisk::from_image(backup);
    restored.log_backend().write(0, &log_bytes(&disk)).unwrap();
    restored.log_backend().sync_data().unwrap();
    let store = open(&restored, 64 << 20).unwrap();
    fill(&store, 200..203);
    let after = power_loss(&restored);
    drop(store);
    let store = open(&after, 64 << 20).unwrap();
    assert_replays(&store, 0..1);
    assert_replays(&store, 200..203);
    // Keys of another life of the store are not here.
    for i in 100..120 {
        assert_new(&store, i);
    }
    assert_eq!(store.records_on_disk().unwrap(), 24);
}
