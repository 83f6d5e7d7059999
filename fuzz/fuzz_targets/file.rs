//! Records read back from a store file, through the public API (the `codec` target fuzzes the
//! codec alone, much faster; this one covers what the store does with what it decodes):
//!
//! - `Raw` plants arbitrary bytes as a record value in the store file's record table;
//!   `Mutated` plants a real record with bytes changed, cut or appended. With `reseal`, the
//!   version byte and checksum (`src/codec.rs`: byte 0 = 1, bytes 1..9 = XXH3-64 of the rest)
//!   are made valid again, so the damage reaches the decoder and the checks behind it. Opening
//!   the store and using it must answer `Ok` or a typed error, never panic.
//! - `Log` damages the commit log of a store that crashed with two completed keys only in its
//!   log (bytes changed, the log cut short; with `reseal`, every frame's checksum is made
//!   valid again so the damage reaches replay). Opening must answer `Ok` or a typed error,
//!   never panic; with the log intact, both keys replay.
//! - `RoundTrip` claims a structured key with a structured response, completes it, reopens
//!   the store and checks the replay is byte-exact (encode, then decode).

#![no_main]

use arbitrary::Arbitrary;
use idemstore::sim_disk::SimDisk;
use idemstore::{ClaimOutcome, Fingerprint, Key, ManualClock, RecordInfo, Response, Store};
use libfuzzer_sys::fuzz_target;
use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use std::sync::OnceLock;
use std::time::Duration;

/// The store's record table: `(expires_at ms, seq) -> record`.
const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("idemstore_records");
const START_MS: u64 = 1_700_000_000_000;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw {
        expires_at: u64,
        token: u64,
        value: Vec<u8>,
        reseal: bool,
    },
    Mutated {
        /// (position modulo the record length, byte to xor in)
        edits: Vec<(u16, u8)>,
        cut: Option<u16>,
        append: Vec<u8>,
        /// Move the record to another position in the table.
        expires_at: Option<u64>,
        reseal: bool,
    },
    Log {
        /// (position modulo the log's length, byte to xor in)
        edits: Vec<(u32, u8)>,
        cut: Option<u32>,
        reseal: bool,
    },
    RoundTrip {
        scope: Vec<u8>,
        key: Vec<u8>,
        fingerprint: Option<u128>,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        ttl_s: u16,
        complete: bool,
    },
}

fn open(disk: &SimDisk, clock: &ManualClock) -> idemstore::Result<Store> {
    let disk = disk.clone();
    Store::builder()
        .queue_capacity(64)
        .clock(clock.clone())
        .open_backend(move || disk.backend())
}

fn the_key() -> Key {
    Key::new("tenant", "key-1")
}

/// A store file holding one completed record: its image, and the record's table key and value.
struct Base {
    image: Vec<u8>,
    position: (u64, u64),
    record: Vec<u8>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let disk = SimDisk::new();
        let store = open(&disk, &ManualClock::new(START_MS)).unwrap();
        let ClaimOutcome::Acquired(lease) = store.claim(&the_key(), Some(Fingerprint(7))).unwrap()
        else {
            panic!("a new key is acquired");
        };
        let response = Response::new(201).header("h", [0u8, 1]).body(&b"body"[..]);
        store.complete(&lease, response).unwrap();
        store.close().unwrap();
        let (position, record) = {
            let db = Database::builder()
                .create_with_backend(disk.backend())
                .unwrap();
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(RECORDS).unwrap();
            let (k, v) = table.first().unwrap().expect("one record");
            (k.value(), v.value().to_vec())
        };
        let backend = disk.backend();
        let mut image = vec![0; backend.len().unwrap() as usize];
        backend.read(0, &mut image).unwrap();
        Base {
            image,
            position,
            record,
        }
    })
}

/// A store file and its commit log, after a power loss that left two completed keys in the log
/// only.
struct LogBase {
    db: Vec<u8>,
    log: Vec<u8>,
}

fn image(backend: &impl StorageBackend) -> Vec<u8> {
    let mut image = vec![0; backend.len().unwrap() as usize];
    backend.read(0, &mut image).unwrap();
    image
}

fn log_key(i: u8) -> Key {
    Key::new("log", [i])
}

fn log_base() -> &'static LogBase {
    static BASE: OnceLock<LogBase> = OnceLock::new();
    BASE.get_or_init(|| {
        let disk = SimDisk::new();
        let store = Store::builder()
            .queue_capacity(64)
            .clock(ManualClock::new(START_MS))
            .open_sim(&disk)
            .unwrap();
        for i in 0..2 {
            let Ok(ClaimOutcome::Acquired(lease)) = store.claim(&log_key(i), None) else {
                panic!("a new key is acquired");
            };
            let response = Response::new(200).body(vec![i; 3]);
            store.complete(&lease, response).unwrap();
        }
        let crashed = disk.crash(7);
        drop(store);
        LogBase {
            db: image(&crashed.backend()),
            log: image(&crashed.log_backend()),
        }
    })
}

/// Opens the base store with its log damaged as given, and uses it.
fn damaged_log(edits: &[(u32, u8)], cut: Option<u32>, seal: bool) {
    let b = log_base();
    let mut log = b.log.clone();
    for &(at, x) in edits {
        let i = at as usize % log.len();
        log[i] ^= x;
    }
    if let Some(cut) = cut {
        log.truncate(cut as usize % (log.len() + 1));
    }
    if seal {
        idemstore::codec_probe::reseal_log(&mut log);
    }
    let intact = log == b.log;
    let disk = SimDisk::from_image(b.db.clone());
    disk.log_backend().write(0, &log).unwrap();
    let clock = ManualClock::new(START_MS);
    let opened = Store::builder()
        .queue_capacity(64)
        .clock(clock.clone())
        .open_sim(&disk);
    let store = match opened {
        Ok(store) => store,
        Err(e) if !intact => {
            let _ = e.to_string();
            return;
        }
        Err(e) => panic!("the intact log did not open: {e}"),
    };
    for i in 0..2 {
        let answer = store.claim(&log_key(i), None);
        if intact {
            assert!(
                matches!(&answer, Ok(ClaimOutcome::Replay(r)) if r.response.body == vec![i; 3]),
                "key {i} after replaying the intact log: {answer:?}"
            );
        }
    }
    let _ = store.records_on_disk();
    clock.advance(Duration::from_secs(8 * 24 * 3600));
    let _ = store.run_pending_expiry();
    let _ = store.close();
}

/// Replaces the base record by `value` at `position`, then opens the store and uses it.
fn plant(position: (u64, u64), value: &[u8]) {
    let b = base();
    let disk = SimDisk::from_image(b.image.clone());
    {
        let db = Database::builder()
            .create_with_backend(disk.backend())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RECORDS).unwrap();
            table.remove(b.position).unwrap();
            table.insert(position, value).unwrap();
        }
        txn.commit().unwrap();
    }
    let clock = ManualClock::new(START_MS);
    // Ok or a typed error: either way, no panic.
    let Ok(store) = open(&disk, &clock) else {
        return;
    };
    let key = the_key();
    let _ = store.get(&key);
    let _ = store.claim(&key, Some(Fingerprint(7)));
    let _ = store.claim(&key, None);
    let _ = store.expire(&key);
    let _ = store.records_on_disk();
    clock.advance(Duration::from_secs(8 * 24 * 3600));
    let _ = store.run_pending_expiry();
    let _ = store.claim(&Key::new("tenant", "other"), None);
    let _ = store.close();
}

fn round_trip(
    key: Key,
    fp: Option<Fingerprint>,
    response: Response,
    ttl: Duration,
    complete: bool,
) {
    let disk = SimDisk::new();
    let clock = ManualClock::new(START_MS);
    let store = open(&disk, &clock).unwrap();
    let lease = match store.claim_with_ttl(&key, fp, ttl) {
        Ok(ClaimOutcome::Acquired(lease)) => lease,
        Ok(other) => panic!("a new key answered {other:?}"),
        // Empty or over-long keys, a zero lifetime: refused before anything is stored.
        Err(_) => return,
    };
    let completed = complete && store.complete(&lease, response.clone()).is_ok();
    drop(store);
    let store = open(&disk, &clock).unwrap();
    match (store.get(&key).unwrap(), completed) {
        (Some(RecordInfo::Completed(replay)), true) => {
            assert_eq!(
                replay.response, response,
                "replay differs from what was stored"
            );
            assert_eq!(replay.attempt, 1);
            let Ok(ClaimOutcome::Replay(again)) = store.claim(&key, fp) else {
                panic!("a completed key replays");
            };
            assert_eq!(again, replay);
        }
        (
            Some(RecordInfo::InFlight {
                attempt: 1,
                from_previous_process: true,
                ..
            }),
            false,
        ) => {}
        (other, _) => panic!("after reopening: {other:?}, completed: {completed}"),
    }
}

fuzz_target!(|input: Input| match input {
    Input::Raw {
        expires_at,
        token,
        mut value,
        reseal: seal,
    } => {
        if seal {
            idemstore::codec_probe::reseal(&mut value);
        }
        plant((expires_at, token), &value)
    }
    Input::Mutated {
        edits,
        cut,
        append,
        expires_at,
        reseal: seal,
    } => {
        let b = base();
        let mut value = b.record.clone();
        for (at, x) in edits {
            let i = usize::from(at) % value.len();
            value[i] ^= x;
        }
        if let Some(cut) = cut {
            value.truncate(usize::from(cut) % (value.len() + 1));
        }
        value.extend_from_slice(&append);
        if seal {
            idemstore::codec_probe::reseal(&mut value);
        }
        let position = (expires_at.unwrap_or(b.position.0), b.position.1);
        plant(position, &value);
    }
    Input::Log {
        edits,
        cut,
        reseal: seal,
    } => damaged_log(&edits, cut, seal),
    Input::RoundTrip {
        scope,
        key,
        fingerprint,
        status,
        headers,
        body,
        ttl_s,
        complete,
    } => {
        let response = Response {
            status,
            headers,
            body,
        };
        let ttl = Duration::from_secs(u64::from(ttl_s));
        round_trip(
            Key::new(scope, key),
            fingerprint.map(Fingerprint),
            response,
            ttl,
            complete,
        );
    }
});
