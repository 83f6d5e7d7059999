//! Every bad input gets its typed error, and nothing panics: keys, responses, configuration,
//! files that are held, damaged, or written by a newer format.

use idemstore::{ClaimOutcome, Durability, Error, Key, Lease, RecordInfo, Response, Store};
use redb::{ReadableTable, TableDefinition, TableHandle};
use std::path::{Path, PathBuf};
use std::time::Duration;

const META: TableDefinition<&str, u64> = TableDefinition::new("idemstore_meta");
const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("idemstore_records");

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idem.redb");
    (dir, path)
}

fn acquired(outcome: ClaimOutcome) -> Lease {
    match outcome {
        ClaimOutcome::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Display is a sentence, not empty and not the Debug form.
fn assert_explained(e: &Error) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "{e:?}");
    assert_ne!(msg, format!("{e:?}"));
}

mod keys {
    use super::*;

    #[test]
    fn empty_key_is_refused_by_every_operation() {
        let (_dir, path) = temp();
        let store = Store::open(&path).unwrap();
        // The scope does not count: a key needs bytes of its own.
        for key in [Key::unscoped(""), Key::new("tenant-42", "")] {
            assert!(matches!(store.claim(&key, None), Err(Error::EmptyKey)));
            assert!(matches!(
                store.claim_with_ttl(&key, None, Duration::from_secs(1)),
                Err(Error::EmptyKey)
            ));
            assert!(matches!(store.get(&key), Err(Error::EmptyKey)));
            assert!(matches!(store.expire(&key), Err(Error::EmptyKey)));
            assert_explained(&store.claim(&key, None).unwrap_err());
        }
        // An empty scope is fine.
        acquired(store.claim(&Key::unscoped("k"), None).unwrap());
        assert_eq!(store.stats().claims_acquired, 1);
    }

    #[test]
    fn key_length_counts_scope_plus_key() {
        let (_dir, path) = temp();
        let store = Store::open(&path).unwrap();
        let scope = "tenant-42"; // 9 bytes; the default maximum is 255
        let too_long = Key::new(scope, "k".repeat(247));
        for r in [
            store.claim(&too_long, None).map(drop),
            store.get(&too_long).map(drop),
            store.expire(&too_long).map(drop),
        ] {
            assert!(
                matches!(r, Err(Error::KeyTooLong { len: 256, max: 255 })),
                "{r:?}"
            );
        }
        assert_explained(&store.claim(&too_long, None).unwrap_err());

        let longest = Key::new(scope, "k".repeat(246));
        assert_eq!(longest.len(), 255);
        let lease = acquired(store.claim(&longest, None).unwrap());
        store.complete(&lease, Response::new(201)).unwrap();
        assert!(matches!(
            store.claim(&longest, None).unwrap(),
            ClaimOutcome::Replay(_)
        ));
    }

    #[test]
    fn configured_maximum_key_length() {
        let (_dir, path) = temp();
        let store = Store::builder().max_key_len(16).open(&path).unwrap();
        assert!(matches!(
            store.claim(&Key::new("abcdef", "0123456789X"), None),
            Err(Error::KeyTooLong { len: 17, max: 16 })
        ));
        assert!(matches!(
            store.claim(&Key::unscoped("0123456789abcdefX"), None),
            Err(Error::KeyTooLong { len: 17, max: 16 })
        ));
        acquired(
            store
                .claim(&Key::new("abcdef", "0123456789"), None)
                .unwrap(),
        );
        acquired(
            store
                .claim(&Key::unscoped("0123456789abcdef"), None)
                .unwrap(),
        );
    }

    #[test]
    fn binary_keys_are_accepted_and_round_trip() {
        let (_dir, path) = temp();
        let key = Key::new([0u8, 0xff, 0], [0xffu8, 0, b'\n', 0x7f, 0xfe, 0]);
        let response = Response::new(200)
            .header("x-bin", [0u8, 0xff])
            .body([0u8, 0xff, 0]);
        {
            let store = Store::open(&path).unwrap();
            let lease = acquired(store.claim(&key, None).unwrap());
            assert_eq!(lease.key(), &key);
            store.complete(&lease, response.clone()).unwrap();
            // Neighbours of the binary key are other keys, and the scope/key boundary counts.
            for other in [
                Key::new([0u8, 0xff], [0u8, 0xff, 0, b'\n', 0x7f, 0xfe, 0]),
                Key::new([0u8, 0xff, 0], [0xffu8, 0, b'\n', 0x7f, 0xfe]),
                Key::unscoped([0u8, 0xff, 0, 0xff, 0, b'\n', 0x7f, 0xfe, 0]),
            ] {
                assert_ne!(other, key);
                acquired(store.claim(&other, None).unwrap());
            }
        }
        let store = Store::open(&path).unwrap();
        match store.claim(&key, None).unwrap() {
            ClaimOutcome::Replay(replay) => assert_eq!(replay.response, response),
            other => panic!("expected Replay, got {other:?}"),
        }
    }
}

mod responses {
    use super::*;

    #[test]
    fn too_large_response_is_refused_and_nothing_stored() {
        let (_dir, path) = temp();
        let store = Store::builder()
            .max_response_size(1024)
            .open(&path)
            .unwrap();
        let key = Key::new("tenant-42", "big-report");
        let lease = acquired(store.claim(&key, None).unwrap());

        let big_body = Response::new(200).body(vec![7u8; 1024]);
        let big_headers = Response::new(200).header("x-blob", vec![b'h'; 1000]);
        for big in [big_body, big_headers] {
            let r = store.complete(&lease, big);
            assert!(
                matches!(r, Err(Error::ResponseTooLarge { size, max: 1024 }) if size > 1024),
                "{r:?}"
            );
            assert_explained(&r.unwrap_err());
        }
        // Nothing stored: still in flight, for the owner and for everyone else.
        assert!(matches!(
            store.get(&key).unwrap(),
            Some(RecordInfo::InFlight { attempt: 1, .. })
        ));
        assert!(matches!(
            store.claim(&key, None).unwrap(),
            ClaimOutcome::InFlight { .. }
        ));
        assert_eq!(store.stats().completes, 0);

        // The owner can still store a result that fits.
        let small = Response::new(200).body(vec![7u8; 900]);
        store.complete(&lease, small.clone()).unwrap();
        match store.claim(&key, None).unwrap() {
            ClaimOutcome::Replay(replay) => assert_eq!(replay.response, small),
            other => panic!("expected Replay, got {other:?}"),
        }
    }
}

mod config {
    use super::*;
    use idemstore::Builder;

    const SEC: Duration = Duration::from_secs(1);
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    const MAX_TTL: Duration = Duration::from_millis(u32::MAX as u64);

    fn bounded(max_delay: Duration) -> Durability {
        Durability::Bounded { max_delay }
    }

    #[test]
    fn every_out_of_range_setting_is_invalid_config() {
        let (_dir, path) = temp();
        let b = Store::builder;
        let cases: Vec<(&str, Builder, &str)> = vec![
            ("ttl zero", b().ttl(Duration::ZERO), "ttl"),
            ("ttl above default max_ttl", b().ttl(WEEK + SEC), "max_ttl"),
            (
                "ttl above max_ttl",
                b().max_ttl(5 * SEC).ttl(10 * SEC),
                "max_ttl",
            ),
            ("lease zero", b().lease(Duration::ZERO), "lease"),
            (
                "lease above ttl",
                b().ttl(10 * SEC).lease(11 * SEC),
                "lease",
            ),
            (
                "bounded zero",
                b().durability(bounded(Duration::ZERO)),
                "max_delay",
            ),
            (
                "bounded above 60 s",
                b().durability(bounded(61 * SEC)),
                "max_delay",
            ),
            ("max_key_len zero", b().max_key_len(0), "max_key_len"),
            (
                "max_key_len above 64 KiB",
                b().max_key_len(65_537),
                "max_key_len",
            ),
            (
                "max_response_size zero",
                b().max_response_size(0),
                "max_response_size",
            ),
            (
                "max_response_size above 256 MiB",
                b().max_response_size((256 << 20) + 1),
                "max_response_size",
            ),
            ("max_batch zero", b().max_batch(0), "max_batch"),
            (
                "queue_capacity zero",
                b().queue_capacity(0),
                "queue_capacity",
            ),
            (
                "queue_capacity above 2^20 (allocated at open)",
                b().queue_capacity(usize::MAX),
                "queue_capacity",
            ),
            ("token_block zero", b().token_block(0), "token_block"),
            (
                "token_block above 2^20",
                b().token_block((1 << 20) + 1),
                "token_block",
            ),
            ("scan_chunk zero", b().scan_chunk(0), "scan_chunk"),
            (
                "scan_chunk above 8,192",
                b().scan_chunk(8_193),
                "scan_chunk",
            ),
            (
                "max_ttl above 2^32 - 1 ms",
                b().max_ttl(MAX_TTL + Duration::from_millis(1)),
                "max_ttl",
            ),
            (
                "sweep_interval zero",
                b().sweep_interval(Duration::ZERO),
                "sweep_interval",
            ),
            (
                "sweep_interval above 1 hour",
                b().sweep_interval(3601 * SEC).sweep_horizon(7200 * SEC),
                "sweep_interval",
            ),
            (
                "sweep_horizon below sweep_interval",
                b().sweep_horizon(Duration::from_millis(999)),
                "sweep_horizon",
            ),
            (
                "sweep_horizon above 1 day",
                b().sweep_horizon(Duration::from_secs(24 * 3600 + 1)),
                "sweep_horizon",
            ),
            ("sweep_chunk zero", b().sweep_chunk(0), "sweep_chunk"),
            (
                "sweep_chunk above 2^20",
                b().sweep_chunk(usize::MAX),
                "sweep_chunk",
            ),
            ("max_in_flight zero", b().max_in_flight(0), "max_in_flight"),
            (
                "log_capacity below 64 KiB",
                b().log_capacity(4096),
                "log_capacity",
            ),
            (
                "log_capacity above 4 GiB",
                b().log_capacity((4 << 30) + 1),
                "log_capacity",
            ),
        ];
        for (what, builder, names) in cases {
            match builder.open(&path) {
                Err(e @ Error::InvalidConfig(_)) => {
                    assert!(e.to_string().contains(names), "{what}: {e}");
                    assert_explained(&e);
                }
                other => panic!("{what}: expected InvalidConfig, got {other:?}"),
            }
            assert!(
                !path.exists(),
                "{what}: an invalid configuration touched the disk"
            );
        }
    }

    /// At the longest lifetime, a lease still ends when it should: a claim after it takes the
    /// key over (the directory keeps the lease's distance to the expiry in 32 bits of ms).
    #[test]
    fn a_lease_ends_on_time_at_the_longest_ttl() {
        let (_dir, path) = temp();
        let clock = idemstore::ManualClock::new(1_700_000_000_000);
        let store = Store::builder()
            .max_ttl(MAX_TTL)
            .ttl(MAX_TTL)
            .lease(SEC)
            .clock(clock.clone())
            .open(&path)
            .unwrap();
        let key = Key::new("t", "k");
        acquired(store.claim(&key, None).unwrap());
        clock.advance(5 * SEC);
        let lease = acquired(store.claim(&key, None).unwrap());
        assert!(lease.is_takeover(), "{lease:?}");
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        let cases: Vec<(&str, Builder)> = vec![
            ("ttl = max_ttl", Store::builder().ttl(WEEK)),
            (
                "lease = ttl",
                Store::builder().ttl(10 * SEC).lease(10 * SEC),
            ),
            (
                "bounded 60 s",
                Store::builder().durability(bounded(60 * SEC)),
            ),
            ("max_key_len 64 KiB", Store::builder().max_key_len(65_536)),
            ("max_key_len 1", Store::builder().max_key_len(1)),
            (
                "max_response_size 256 MiB",
                Store::builder().max_response_size(256 << 20),
            ),
            (
                "max_batch 1",
                Store::builder().max_batch(1).queue_capacity(1),
            ),
            (
                "ttl = max_ttl = 2^32 - 1 ms",
                Store::builder().max_ttl(MAX_TTL).ttl(MAX_TTL),
            ),
            (
                "queue_capacity and sweep_chunk 2^20",
                Store::builder()
                    .queue_capacity(1 << 20)
                    .sweep_chunk(1 << 20),
            ),
            ("log_capacity 0 (no log)", Store::builder().log_capacity(0)),
            ("token_block 1", Store::builder().token_block(1)),
            ("scan_chunk 1", Store::builder().scan_chunk(1)),
            (
                "sweep_horizon 1 day",
                Store::builder().sweep_horizon(Duration::from_secs(24 * 3600)),
            ),
        ];
        for (what, builder) in cases {
            let (_dir, path) = temp();
            let store = builder
                .open(&path)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            acquired(store.claim(&Key::unscoped("k"), None).unwrap());
        }
    }
}

mod files {
    use super::*;

    #[test]
    fn a_file_open_in_a_store_cannot_be_opened_again() {
        let (_dir, path) = temp();
        let first = Store::open(&path).unwrap();
        let second = Store::open(&path);
        assert!(matches!(second, Err(Error::AlreadyOpen)), "{second:?}");
        assert_explained(&second.unwrap_err());
        // The first store is unaffected.
        acquired(first.claim(&Key::unscoped("k"), None).unwrap());
        drop(first);
        let again = Store::open(&path).unwrap();
        assert!(again.get(&Key::unscoped("k")).unwrap().is_some());
    }

    const HOLD_DB: &str = "IDEMSTORE_HOLD_DB";

    /// The other process of [`a_file_open_in_another_process_cannot_be_opened_again`]: opens
    /// the store named by `IDEMSTORE_HOLD_DB`, says so on stdout, and holds it until its stdin
    /// closes. Does nothing (and passes) when the variable is absent, as in a normal test run.
    #[test]
    fn holder_process() {
        let Some(path) = std::env::var_os(HOLD_DB) else {
            return;
        };
        let store = Store::open(&path).expect("holder: open");
        println!("\nopen");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
        drop(store);
    }

    /// The lock is the operating system's: a store open in another process refuses the open,
    /// and a holder killed with SIGKILL leaves nothing to refuse it.
    #[test]
    fn a_file_open_in_another_process_cannot_be_opened_again() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let (_dir, path) = temp();
        Store::open(&path).unwrap().close().unwrap();
        let mut holder = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", "files::holder_process", "--nocapture"])
            .env(HOLD_DB, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the holder");
        let stdout = holder.stdout.take().expect("holder stdout");
        let opened = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "open");
        assert!(opened, "the holder process did not open the store");
        let second = Store::open(&path);
        assert!(matches!(second, Err(Error::AlreadyOpen)), "{second:?}");
        assert_explained(&second.unwrap_err());
        holder.kill().expect("kill the holder");
        holder.wait().expect("reap the holder");
        let again = Store::open(&path).expect("open after the holder was killed");
        acquired(again.claim(&Key::unscoped("k"), None).unwrap());
    }

    /// redb does not verify a table's stored length at an open, and the directory reserves
    /// room by it: a damaged length must not make the open allocate terabytes (an abort, which
    /// no error can report). The open's scan counts the records and refuses the file.
    #[test]
    fn a_damaged_table_length_does_not_abort_the_open() {
        let (_dir, path) = temp();
        let store = Store::open(&path).unwrap();
        for i in 0..777 {
            acquired(
                store
                    .claim(&Key::new("t", format!("key-{i}")), None)
                    .unwrap(),
            );
        }
        store.close().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let (stored, damaged) = (777u64.to_le_bytes(), (1u64 << 45).to_le_bytes());
        let mut patched = 0;
        for i in 0..bytes.len() - 8 {
            if bytes[i..i + 8] == stored {
                bytes[i..i + 8].copy_from_slice(&damaged);
                patched += 1;
            }
        }
        assert!(patched > 0, "the table length is stored as a u64");
        std::fs::write(&path, &bytes).unwrap();
        // 777 keys is below `snapshot_min_keys`: the close wrote no snapshot, the open scans.
        // The scan reads 777 records where the table claims 2^45: the open refuses the file.
        match Store::open(&path) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// Two opens of the same new path at the same moment: one creates the store, the other gets
    /// `AlreadyOpen` (or opens it once the first is closed), never a store of its own. Each
    /// completion that a store acknowledged and closed is there at the next open, and no
    /// temporary file is left.
    #[test]
    fn two_opens_creating_one_path_at_once_make_one_store() {
        use std::sync::{Arc, Barrier};
        const ROUNDS: usize = 100;
        let mut both = 0;
        for round in 0..ROUNDS {
            let (dir, path) = temp();
            let barrier = Arc::new(Barrier::new(2));
            let openers: Vec<_> = (0..2)
                .map(|i| {
                    let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        match Store::open(&path) {
                            Ok(store) => {
                                let key = Key::new("t", format!("k{i}"));
                                let lease = acquired(store.claim(&key, None).unwrap());
                                store.complete(&lease, Response::new(201)).unwrap();
                                // Still open while the other one tries.
                                std::thread::sleep(Duration::from_millis(5));
                                store.close().unwrap();
                                Some(key)
                            }
                            Err(Error::AlreadyOpen) => None,
                            Err(e) => panic!("round {round}: opener {i}: {e}"),
                        }
                    })
                })
                .collect();
            let done: Vec<Key> = openers
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect();
            assert!(!done.is_empty(), "round {round}: neither open succeeded");
            both += usize::from(done.len() == 2);
            let store = Store::open(&path).unwrap();
            for key in &done {
                assert!(
                    store.get(key).unwrap().is_some(),
                    "round {round}: an acknowledged completion was lost"
                );
            }
            drop(store);
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().contains(".creating"))
                .collect();
            assert!(names.is_empty(), "round {round}: left behind {names:?}");
        }
        // Both succeed only one after the other; the point is that no round lost anything.
        assert!(both < ROUNDS, "the opens never overlapped");
    }

    fn splitmix(state: &mut u64) -> u8 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    }

    /// A file of garbage bytes is an error, not a panic: `Error::Storage(redb::Error::Io(
    /// InvalidData "Not a redb database: magic number mismatch"))` for every size (redb 4.6
    /// checks the magic number before anything else and reports it as an I/O error), as the
    /// README's error table says.
    #[test]
    fn a_file_of_garbage_is_an_error() {
        let mut state = 0x6a7ba6e;
        for len in [1usize, 10, 4096, 65_536] {
            let (_dir, path) = temp();
            let garbage: Vec<u8> = (0..len).map(|_| splitmix(&mut state)).collect();
            std::fs::write(&path, &garbage).unwrap();
            match Store::open(&path) {
                Err(e @ Error::Storage(_)) => {
                    eprintln!("{len} bytes of garbage: {e:?}");
                    assert_explained(&e);
                }
                other => panic!("{len} bytes of garbage: expected Error::Storage, got {other:?}"),
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                garbage,
                "the file was changed"
            );
        }
    }

    /// Creates a store with one completed and one in-flight key, then closes it.
    fn populated() -> (tempfile::TempDir, PathBuf) {
        let (dir, path) = temp();
        let store = Store::open(&path).unwrap();
        let lease = acquired(store.claim(&Key::unscoped("done"), None).unwrap());
        store
            .complete(&lease, Response::new(201).body("result"))
            .unwrap();
        acquired(store.claim(&Key::unscoped("running"), None).unwrap());
        store.close().unwrap();
        (dir, path)
    }

    fn with_redb(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
        let db = redb::Database::create(path).expect("redb open");
        let txn = db.begin_write().expect("begin");
        f(&txn);
        txn.commit().expect("commit");
    }

    /// Sets metadata rows as a store would: with the checksum (`meta_check`, an xxh3 of the
    /// other rows in key order, each as key length, key and value) brought up to date.
    fn set_meta(path: &Path, rows: &[(&str, u64)]) {
        with_redb(path, |txn| {
            let mut meta = txn.open_table(META).unwrap();
            for (k, v) in rows {
                assert!(meta.get(*k).unwrap().is_some(), "{k}");
                meta.insert(*k, *v).unwrap();
            }
            let mut hash = xxhash_rust::xxh3::Xxh3::new();
            for row in meta.iter().unwrap() {
                let (k, v) = row.unwrap();
                if k.value() != "meta_check" {
                    hash.update(&(k.value().len() as u64).to_le_bytes());
                    hash.update(k.value().as_bytes());
                    hash.update(&v.value().to_le_bytes());
                }
            }
            meta.insert("meta_check", hash.digest()).unwrap();
        });
    }

    /// The metadata carries a checksum: a damaged value is `Corrupt` at open, whichever row it
    /// is in. Without it, one changed byte of the clock's high-water mark (found by
    /// `tests/damage.rs`, seed 0xda3a6e0000001d8d) put the store's time 3,000 years ahead: it
    /// opened without an error and ran every completed key again, as expired. A damaged layout
    /// value is damage, not another layout.
    #[test]
    fn damaged_metadata_is_corrupt() {
        for name in ["clock_high_water", "layout", "epoch", "log_applied"] {
            let (_dir, path) = populated();
            with_redb(&path, |txn| {
                let mut meta = txn.open_table(META).unwrap();
                let v = meta.get(name).unwrap().expect(name).value();
                meta.insert(name, v ^ (0x5d << 40)).unwrap();
            });
            let r = Store::open(&path);
            assert!(
                matches!(&r, Err(Error::Corrupt { detail }) if detail.contains("checksum")),
                "{name}: {r:?}"
            );
        }
        let (_dir, path) = populated();
        with_redb(&path, |txn| {
            txn.open_table(META).unwrap().remove("meta_check").unwrap();
        });
        let r = Store::open(&path);
        assert!(
            matches!(&r, Err(Error::Corrupt { detail }) if detail.contains("no checksum")),
            "{r:?}"
        );
    }

    /// A file from before the checksum (format 3) opens, keeps its records, and is written
    /// back as format 4 with the checksum.
    #[test]
    fn a_format_3_file_is_upgraded_with_a_checksum() {
        let (_dir, path) = populated();
        with_redb(&path, |txn| {
            let mut meta = txn.open_table(META).unwrap();
            meta.remove("meta_check").unwrap().expect("a checksum");
            meta.insert("format_version", 3).unwrap();
        });
        let store = Store::open(&path).unwrap();
        let Some(RecordInfo::Completed(replay)) = store.get(&Key::unscoped("done")).unwrap() else {
            panic!("the completed key is gone")
        };
        assert_eq!(replay.response.body, b"result");
        store.close().unwrap();
        with_redb(&path, |txn| {
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 4);
            assert!(meta.get("meta_check").unwrap().is_some());
        });
        assert!(Store::open(&path).is_ok());
    }

    /// Damage to redb's table directory can make a table vanish. The open creates the tables
    /// it opens, so a store that lost its record table read as a new, empty store and ran
    /// every completed key again (found by `tests/damage.rs`, seed 0xda3a6e0000000d3c: 225
    /// completions forgotten). A store that lost its metadata would have started its fencing
    /// tokens and epochs over.
    #[test]
    fn a_missing_table_is_corrupt_not_a_new_store() {
        let cases: [(&str, &[&str]); 3] = [
            ("records", &[RECORDS.name()]),
            ("metadata", &[META.name()]),
            ("both", &[RECORDS.name(), META.name()]),
        ];
        for (what, tables) in cases {
            let (_dir, path) = populated();
            with_redb(&path, |txn| {
                for table in tables {
                    let handle = txn.list_tables().unwrap().find(|t| t.name() == *table);
                    let handle = handle.unwrap_or_else(|| panic!("{what}: no {table}"));
                    assert!(txn.delete_table(handle).unwrap(), "{what}: not deleted");
                }
            });
            match Store::open(&path) {
                Err(e @ Error::Corrupt { .. }) => assert_explained(&e),
                other => panic!("{what} missing: expected Corrupt, got {other:?}"),
            }
        }
    }

    /// What the table check must not refuse: an empty file at the path (made by the caller)
    /// is a new store, and a store opened with the other record layout is a configuration
    /// error, not damage.
    #[test]
    fn an_empty_file_is_a_new_store_and_another_layout_is_a_config_error() {
        let (_dir, path) = temp();
        std::fs::File::create(&path).unwrap();
        let store = Store::open(&path).expect("an empty file opens as a new store");
        acquired(store.claim(&Key::unscoped("k"), None).unwrap());
        store.close().unwrap();
        let other = Store::builder()
            .layout(idemstore::Layout::KeyOrdered)
            .open(&path);
        assert!(
            matches!(&other, Err(Error::InvalidConfig(m)) if m.contains("layout")),
            "{other:?}"
        );
        assert!(
            Store::open(&path)
                .unwrap()
                .get(&Key::unscoped("k"))
                .unwrap()
                .is_some()
        );
    }

    /// Refused as such whether or not the newer format keeps this build's metadata checksum
    /// (it is not read first).
    #[test]
    fn a_newer_format_version_is_unsupported() {
        for resealed in [true, false] {
            let (_dir, path) = populated();
            if resealed {
                set_meta(&path, &[("format_version", 99)]);
            } else {
                with_redb(&path, |txn| {
                    let mut meta = txn.open_table(META).unwrap();
                    meta.insert("format_version", 99).unwrap();
                    meta.remove("meta_check").unwrap();
                });
            }
            let r = Store::open(&path);
            assert!(
                matches!(
                    r,
                    Err(Error::UnsupportedFormat {
                        found: 99,
                        supported: 4
                    })
                ),
                "resealed {resealed}: {r:?}"
            );
            assert_explained(&r.unwrap_err());
        }
    }

    /// Counters read from the file that no store could have reached (an epoch beyond 32 bits,
    /// a token beyond 2^63) are `Corrupt`, not an overflow.
    #[test]
    fn out_of_range_counters_in_the_file_are_corrupt() {
        for (name, value) in [("epoch", u64::MAX), ("seq_reserved", u64::MAX)] {
            let (_dir, path) = populated();
            set_meta(&path, &[(name, value)]);
            // Named as such (a debug build's overflow panic would be `Corrupt` too, through the
            // guard against panics inside redb; a release build would wrap).
            let r = Store::open(&path);
            assert!(
                matches!(&r, Err(Error::Corrupt { detail }) if detail.contains("out of range")),
                "{name}: {r:?}"
            );
        }
    }

    #[test]
    fn a_corrupted_record_is_corrupt() {
        let (_dir, good) = populated();
        let valid = {
            let db = redb::Database::create(&good).unwrap();
            let txn = db.begin_write().unwrap();
            let table = txn.open_table(RECORDS).unwrap();
            let (_, v) = table.first().unwrap().expect("a record");
            v.value().to_vec()
        };
        let garbage: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("junk", b"\xde\xad\xbe\xef not a record".to_vec()),
            ("unknown record version", [&[7u8][..], &valid[1..]].concat()),
            ("truncated", valid[..valid.len() / 2].to_vec()),
            ("trailing bytes", [&valid[..], &[0u8, 1, 2][..]].concat()),
            ("huge length prefix", vec![1, 252, 255, 255, 255, 255, 0, 0]),
        ];
        for (what, bytes) in garbage {
            let (_dir, path) = populated();
            with_redb(&path, |txn| {
                let mut records = txn.open_table(RECORDS).unwrap();
                let positions: Vec<(u64, u64)> = records
                    .iter()
                    .unwrap()
                    .map(|row| row.unwrap().0.value())
                    .collect();
                assert_eq!(positions.len(), 2);
                records.insert(positions[0], bytes.as_slice()).unwrap();
            });
            match Store::open(&path) {
                Err(e @ Error::Corrupt { .. }) => assert_explained(&e),
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
        }
    }
}

mod errors {
    use super::*;
    use std::error::Error as _;
    use std::sync::Arc;

    #[test]
    fn errors_are_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }

    #[test]
    fn messages_are_sentences_and_sources_chain() {
        let io = || std::io::Error::other("disk on fire");
        let leaves = [
            Error::EmptyKey,
            Error::KeyTooLong { len: 300, max: 255 },
            Error::ResponseTooLarge { size: 2, max: 1 },
            Error::InvalidTtl {
                requested: Duration::ZERO,
                max: Duration::from_secs(1),
            },
            Error::InvalidConfig("lease".into()),
            Error::StaleLease { token: 7 },
            Error::Poisoned {
                reason: "fsync failed".into(),
            },
            Error::Closed,
            Error::AlreadyOpen,
            Error::UnsupportedFormat {
                found: 99,
                supported: 2,
            },
            Error::Corrupt {
                detail: "bad".into(),
            },
        ];
        for e in &leaves {
            assert_explained(e);
            assert!(e.source().is_none(), "{e:?}");
            assert!(!e.is_retryable(), "{e:?}");
        }

        let e = Error::Io(io());
        assert_explained(&e);
        assert_eq!(e.source().unwrap().to_string(), "disk on fire");

        let e = Error::Storage(redb::Error::Io(io()));
        assert_explained(&e);
        assert!(e.to_string().contains("disk on fire"), "{e}");
        assert!(e.source().unwrap().is::<redb::Error>());

        let e = Error::OutcomeUnknown {
            source: Arc::new(Error::Storage(redb::Error::Io(io()))),
        };
        assert_explained(&e);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("disk on fire"), "{e}");
        let inner = e.source().expect("the failure behind it");
        assert!(matches!(
            inner.downcast_ref::<Error>(),
            Some(Error::Storage(_))
        ));
        assert!(inner.source().unwrap().is::<redb::Error>());
    }
}

mod creation {
    use super::*;

    /// A creation that crashed halfway leaves only a `.creating` file beside the store's path;
    /// the next open ignores it and creates the store afresh.
    #[test]
    fn a_half_created_file_from_a_crash_does_not_block_the_next_open() {
        let (_dir, path) = temp();
        let mut leftover = path.clone().into_os_string();
        leftover.push(".creating");
        std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
        let store = Store::open(&path).expect("open creates the store afresh");
        let lease = acquired(store.claim(&Key::new("t", "k"), None).unwrap());
        store.complete(&lease, Response::new(201)).unwrap();
        drop(store);
        assert!(!Path::new(&leftover).exists());
        let store = Store::open(&path).unwrap();
        assert!(matches!(
            store.claim(&Key::new("t", "k"), None).unwrap(),
            ClaimOutcome::Replay(_)
        ));
    }

    /// A creation that fails after redb built its file (here the commit log cannot be opened:
    /// a directory has its name) removes that file, although redb's close dropped the lock
    /// the creation held; once the cause is gone, the store is created.
    #[test]
    fn a_creation_failing_after_the_file_was_built_leaves_nothing_behind() {
        let (dir, path) = temp();
        let mut log = path.clone().into_os_string();
        log.push("-log");
        std::fs::create_dir(&log).unwrap();
        assert!(matches!(Store::open(&path), Err(Error::Io(_))));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [Path::new(&log).file_name().unwrap()], "left behind");
        std::fs::remove_dir(&log).unwrap();
        let store = Store::open(&path).expect("created once the cause is gone");
        acquired(store.claim(&Key::new("t", "k"), None).unwrap());
    }

    /// A store whose creation failed leaves no file behind, so a retry can create it.
    #[test]
    fn a_failed_creation_leaves_nothing_behind() {
        let (dir, _) = temp();
        let missing = dir.path().join("no-such-dir").join("s.redb");
        assert!(Store::open(&missing).is_err());
        assert!(!missing.exists());
        std::fs::create_dir(dir.path().join("no-such-dir")).unwrap();
        Store::open(&missing).expect("created once the directory exists");
    }
}
