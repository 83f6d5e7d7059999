//! The engines under test, behind one small interface: idemstore (both durability modes) and
//! the peers a user would pick instead. Each peer is written the way its users write it first,
//! with the settings the issue names; none of them is tuned beyond that.

use crate::redis::RedisEngine;
use crate::scale::Templates;
use idemstore::{ClaimOutcome, Durability, Key, Lease, Response, Store};
use parking_lot::Mutex;
use redb::{Database, ReadableTable, TableDefinition};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a claim answered, reduced to what every peer can say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller acquired the key.
    Won,
    /// Someone else holds it, not completed.
    Busy,
    /// Completed: the stored response is there to replay.
    Done,
}

/// An engine: shared state, and one worker (connection, handle) per caller thread.
pub trait Engine: Send + Sync {
    fn worker(&self, thread: usize) -> Box<dyn Worker>;

    /// idemstore only: (operations carried by group commits, commits) so far.
    fn commits(&self) -> Option<(u64, u64)> {
        None
    }
}

/// One caller's connection to an engine.
pub trait Worker: Send {
    /// Claims `key` (24 h lifetime) and says what the engine answered.
    fn claim(&mut self, key: &[u8]) -> Claim;
    /// Stores a response for `key`, which this worker acquired last.
    fn complete(&mut self, key: &[u8]);
}

/// Every engine the suite knows, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    IdemImmediate,
    IdemBounded,
    RedbNaive,
    Sqlite,
    RedisAlways,
    RedisEverysec,
    Memory,
    Fdatasync,
}

pub const ALL: [Kind; 8] = [
    Kind::IdemImmediate,
    Kind::IdemBounded,
    Kind::RedbNaive,
    Kind::Sqlite,
    Kind::RedisAlways,
    Kind::RedisEverysec,
    Kind::Memory,
    Kind::Fdatasync,
];

/// `Durability::Bounded` delay used in the suite: Redis `everysec`'s bound.
pub const BOUNDED_DELAY: Duration = Duration::from_secs(1);
/// The record lifetime every engine is asked for.
const TTL_SECS: u64 = 86_400;
/// The workloads claim millions of keys they never complete (and the pre-filled keys stay in
/// flight): lift idemstore's `max_in_flight` guard, which would otherwise refuse them.
pub const MAX_IN_FLIGHT: u64 = u64::MAX;
/// The scope of every idemstore key in the suite.
pub const SCOPE: &str = "tenant-0001";
/// The stored response bytes for the peers (about the size of idemstore's encoded response).
pub const RESPONSE: &[u8] =
    br#"201 content-type: application/json {"id":"job_0123456789abcdef","status":"accepted"}"#;

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::IdemImmediate => "idemstore_immediate",
            Kind::IdemBounded => "idemstore_bounded",
            Kind::RedbNaive => "redb_naive",
            Kind::Sqlite => "sqlite_wal_full",
            Kind::RedisAlways => "redis_aof_always",
            Kind::RedisEverysec => "redis_aof_everysec",
            Kind::Memory => "memory_ceiling",
            Kind::Fdatasync => "raw_4k_fdatasync",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn is_redis(self) -> bool {
        matches!(self, Kind::RedisAlways | Kind::RedisEverysec)
    }

    /// The raw fdatasync row has no keys: it runs only the unique workload on an empty store.
    pub fn has_keys(self) -> bool {
        self != Kind::Fdatasync
    }
}

/// Where engines put their files, and where pre-filled idemstore files come from.
pub struct Ctx {
    pub dir: PathBuf,
    pub templates: RefCell<Templates>,
}

/// Opens a fresh engine of `kind` pre-filled with `live` keys; `Err` says why it is
/// unavailable.
pub fn open(kind: Kind, live: u64, ctx: &Ctx) -> Result<Arc<dyn Engine>, String> {
    static OPENED: AtomicU32 = AtomicU32::new(0);
    let n = OPENED.fetch_add(1, Ordering::Relaxed);
    let dir = ctx.dir.join(format!("{}-{live}-{n}", kind.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(match kind {
        Kind::IdemImmediate | Kind::IdemBounded => {
            let path = dir.join("idem.redb");
            if live > 0 {
                ctx.templates.borrow_mut().copy(live, &path);
            }
            let durability = match kind {
                Kind::IdemImmediate => Durability::Immediate,
                _ => Durability::Bounded {
                    max_delay: BOUNDED_DELAY,
                },
            };
            let store = Store::builder()
                .durability(durability)
                .max_in_flight(MAX_IN_FLIGHT)
                // A claim holds its key for its whole life, as the peers' SET NX EX 86400 and
                // INSERT OR IGNORE do: a pool outliving a 60 s lease must not see takeovers
                // (the hot-key check would count one as a second winner).
                .lease(Duration::from_secs(24 * 3600))
                .open(&path)
                .map_err(|e| format!("open idemstore: {e}"))?;
            assert_eq!(store.stats().live_keys, live, "pre-filled live keys");
            Arc::new(Idem(Arc::new(store), kind == Kind::IdemBounded))
        }
        Kind::RedbNaive => Arc::new(RedbNaive::open(&dir.join("naive.redb"), live)),
        Kind::Sqlite => Arc::new(Sqlite::open(&dir.join("idem.sqlite"), live)),
        Kind::RedisAlways => Arc::new(RedisEngine::start(&dir, "always", live)?),
        Kind::RedisEverysec => Arc::new(RedisEngine::start(&dir, "everysec", live)?),
        Kind::Memory => Arc::new(Memory::new(live)),
        Kind::Fdatasync => Arc::new(Fdatasync { dir }),
    })
}

/// The key of the `i`-th pre-filled record (never produced by a workload).
pub fn prefill_key(i: u64) -> [u8; 33] {
    crate::load::key(b'p', 0, 0, i)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn response() -> Response {
    Response::new(201)
        .header("content-type", "application/json")
        .body(&br#"{"id":"job_0123456789abcdef","status":"accepted"}"#[..])
}

// ---------------------------------------------------------------------------------------------
// idemstore

/// The store, and whether it runs in bounded mode (whose batches reach redb in bulk).
struct Idem(Arc<Store>, bool);

struct IdemWorker {
    store: Arc<Store>,
    lease: Option<Lease>,
}

impl Engine for Idem {
    fn worker(&self, _thread: usize) -> Box<dyn Worker> {
        Box::new(IdemWorker {
            store: Arc::clone(&self.0),
            lease: None,
        })
    }

    fn commits(&self) -> Option<(u64, u64)> {
        let s = self.0.stats();
        // Bounded mode: operations per redb transaction that applied staged batches.
        let commits = if self.1 {
            s.stage_commits
        } else {
            s.batches_committed
        };
        Some((s.batched_ops, commits))
    }
}

impl Worker for IdemWorker {
    fn claim(&mut self, key: &[u8]) -> Claim {
        match self
            .store
            .claim(&Key::new(SCOPE, key), None)
            .expect("claim")
        {
            ClaimOutcome::Acquired(lease) => {
                self.lease = Some(lease);
                Claim::Won
            }
            ClaimOutcome::InFlight { .. } => Claim::Busy,
            ClaimOutcome::Replay(_) => Claim::Done,
            ClaimOutcome::Mismatch => panic!("no fingerprints in this suite"),
        }
    }

    fn complete(&mut self, key: &[u8]) {
        let lease = self
            .lease
            .take()
            .expect("complete follows an acquiring claim");
        assert_eq!(lease.key().key(), key, "complete the key acquired last");
        self.store.complete(&lease, response()).expect("complete");
    }
}

/// A pre-filled idemstore file: `live` in-flight keys claimed with `Durability::Bounded` by 64
/// threads, flushed and closed.
pub fn prefill_idemstore(path: &Path, live: u64) {
    let store = Arc::new(
        Store::builder()
            .durability(Durability::Bounded {
                max_delay: BOUNDED_DELAY,
            })
            .max_in_flight(MAX_IN_FLIGHT)
            .open(path)
            .expect("open for prefill"),
    );
    let threads = 64u64;
    let per = live.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in t * per..((t + 1) * per).min(live) {
                    let k = Key::new(SCOPE, prefill_key(i));
                    let outcome = store.claim(&k, None).expect("prefill claim");
                    assert!(matches!(outcome, ClaimOutcome::Acquired(_)));
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .for_each(|h| h.join().expect("prefill thread"));
    store.flush().expect("flush the prefill");
    Arc::into_inner(store)
        .expect("prefill threads ended")
        .close()
        .expect("close after the prefill");
}

// ---------------------------------------------------------------------------------------------
// redb, one durable write transaction per operation

const NAIVE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");

/// What a redb user writes first: a table keyed by the idempotency key, one write transaction
/// (one fdatasync, default durability) per claim, committed whatever the claim found.
struct RedbNaive(Arc<Database>);

impl RedbNaive {
    fn open(path: &Path, live: u64) -> RedbNaive {
        let db = Database::create(path).expect("create redb");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(NAIVE).expect("table");
            let value = record(b'F', now_ms() + TTL_SECS * 1000, b"");
            for i in 0..live {
                t.insert(prefill_key(i).as_slice(), value.as_slice())
                    .expect("prefill");
            }
        }
        txn.commit().expect("commit the prefill");
        RedbNaive(Arc::new(db))
    }
}

/// A record: state byte (`F` in flight, `D` done), expiry (ms, big endian), response.
fn record(state: u8, expires: u64, response: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + response.len());
    v.push(state);
    v.extend_from_slice(&expires.to_be_bytes());
    v.extend_from_slice(response);
    v
}

fn state_of(value: &[u8], now: u64) -> Option<Claim> {
    let expires = u64::from_be_bytes(value[1..9].try_into().expect("record header"));
    (expires > now).then_some(if value[0] == b'D' {
        Claim::Done
    } else {
        Claim::Busy
    })
}

impl Engine for RedbNaive {
    fn worker(&self, _thread: usize) -> Box<dyn Worker> {
        Box::new(RedbNaive(Arc::clone(&self.0)))
    }
}

impl Worker for RedbNaive {
    fn claim(&mut self, key: &[u8]) -> Claim {
        let now = now_ms();
        let txn = self.0.begin_write().expect("begin");
        let claim = {
            let mut t = txn.open_table(NAIVE).expect("table");
            let found = t
                .get(key)
                .expect("get")
                .and_then(|v| state_of(v.value(), now));
            match found {
                Some(c) => c,
                None => {
                    let value = record(b'F', now + TTL_SECS * 1000, b"");
                    t.insert(key, value.as_slice()).expect("insert");
                    Claim::Won
                }
            }
        };
        txn.commit().expect("commit");
        claim
    }

    fn complete(&mut self, key: &[u8]) {
        let txn = self.0.begin_write().expect("begin");
        {
            let mut t = txn.open_table(NAIVE).expect("table");
            let value = record(b'D', now_ms() + TTL_SECS * 1000, RESPONSE);
            t.insert(key, value.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite, WAL, synchronous=FULL

/// SQLite as its users write it: WAL, `synchronous=FULL`, `INSERT OR IGNORE`, one connection
/// per thread, a busy timeout, autocommit (one transaction per statement).
struct Sqlite {
    path: PathBuf,
}

pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(60);

fn sqlite_connect(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)
        .expect("busy_timeout");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("journal_mode=WAL");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous=FULL");
    conn
}

impl Sqlite {
    fn open(path: &Path, live: u64) -> Sqlite {
        let mut conn = sqlite_connect(path);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS idempotency (
                key BLOB PRIMARY KEY,
                done INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                response BLOB
            ) WITHOUT ROWID;",
        )
        .expect("create table");
        let txn = conn.transaction().expect("begin");
        {
            let mut insert = txn
                .prepare("INSERT INTO idempotency (key, done, expires_at) VALUES (?1, 0, ?2)")
                .expect("prepare");
            let expires = (now_ms() + TTL_SECS * 1000) as i64;
            for i in 0..live {
                insert
                    .execute(rusqlite::params![prefill_key(i).as_slice(), expires])
                    .expect("prefill");
            }
        }
        txn.commit().expect("commit the prefill");
        Sqlite { path: path.into() }
    }
}

struct SqliteWorker(rusqlite::Connection);

impl Engine for Sqlite {
    fn worker(&self, _thread: usize) -> Box<dyn Worker> {
        Box::new(SqliteWorker(sqlite_connect(&self.path)))
    }
}

impl Worker for SqliteWorker {
    fn claim(&mut self, key: &[u8]) -> Claim {
        let now = now_ms() as i64;
        let inserted = self
            .0
            .prepare_cached(
                "INSERT OR IGNORE INTO idempotency (key, done, expires_at) VALUES (?1, 0, ?2)",
            )
            .expect("prepare")
            .execute(rusqlite::params![key, now + (TTL_SECS * 1000) as i64])
            .expect("insert or ignore");
        if inserted == 1 {
            return Claim::Won;
        }
        let done: i64 = self
            .0
            .prepare_cached("SELECT done FROM idempotency WHERE key = ?1")
            .expect("prepare")
            .query_row([key], |row| row.get(0))
            .expect("select");
        if done == 1 { Claim::Done } else { Claim::Busy }
    }

    fn complete(&mut self, key: &[u8]) {
        let updated = self
            .0
            .prepare_cached("UPDATE idempotency SET done = 1, response = ?2 WHERE key = ?1")
            .expect("prepare")
            .execute(rusqlite::params![key, RESPONSE])
            .expect("update");
        assert_eq!(updated, 1, "complete an existing key");
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory sharded map: the ceiling

const SHARDS: usize = 64;

struct Entry {
    expires: u64,
    response: Option<Box<[u8]>>,
}

type Shards = Arc<Vec<Mutex<HashMap<Box<[u8]>, Entry>>>>;

/// No durability at all: the same decisions in memory, behind 64 mutexes.
struct Memory(Shards);

impl Memory {
    fn new(live: u64) -> Memory {
        let shards: Vec<_> = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        let expires = now_ms() + TTL_SECS * 1000;
        for i in 0..live {
            let k = prefill_key(i);
            shards[shard(&k)].lock().insert(
                Box::from(&k[..]),
                Entry {
                    expires,
                    response: None,
                },
            );
        }
        Memory(Arc::new(shards))
    }
}

fn shard(key: &[u8]) -> usize {
    xxhash_rust::xxh3::xxh3_64(key) as usize % SHARDS
}

impl Engine for Memory {
    fn worker(&self, _thread: usize) -> Box<dyn Worker> {
        Box::new(Memory(Arc::clone(&self.0)))
    }
}

impl Worker for Memory {
    fn claim(&mut self, key: &[u8]) -> Claim {
        let now = now_ms();
        let mut map = self.0[shard(key)].lock();
        match map.get(key) {
            Some(e) if e.expires > now => {
                if e.response.is_some() {
                    Claim::Done
                } else {
                    Claim::Busy
                }
            }
            _ => {
                map.insert(
                    Box::from(key),
                    Entry {
                        expires: now + TTL_SECS * 1000,
                        response: None,
                    },
                );
                Claim::Won
            }
        }
    }

    fn complete(&mut self, key: &[u8]) {
        let mut map = self.0[shard(key)].lock();
        let e = map.get_mut(key).expect("complete an existing key");
        e.response = Some(Box::from(RESPONSE));
    }
}

// ---------------------------------------------------------------------------------------------
// One raw 4 KiB write + fdatasync

/// The physical limit of one synchronous durable operation on this filesystem: each caller
/// overwrites 4 KiB at offset 0 of its own preallocated file and fdatasyncs it.
struct Fdatasync {
    dir: PathBuf,
}

struct FdatasyncWorker {
    file: File,
    block: Vec<u8>,
}

impl Engine for Fdatasync {
    fn worker(&self, thread: usize) -> Box<dyn Worker> {
        let path = self.dir.join(format!("caller-{thread}.bin"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the fdatasync file");
        let block = vec![0xA5u8; 4096];
        file.write_all_at(&block, 0).expect("preallocate");
        file.sync_all().expect("sync the new file");
        Box::new(FdatasyncWorker { file, block })
    }
}

impl Worker for FdatasyncWorker {
    fn claim(&mut self, key: &[u8]) -> Claim {
        self.block[..key.len()].copy_from_slice(key);
        self.file.write_all_at(&self.block, 0).expect("write 4 KiB");
        self.file.sync_data().expect("fdatasync");
        Claim::Won
    }

    fn complete(&mut self, _key: &[u8]) {
        unreachable!("the fdatasync row only runs the unique workload")
    }
}
