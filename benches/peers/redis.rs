//! Redis as a peer: the suite starts its own `redis-server` on 127.0.0.1 (a free port, a
//! temporary directory, AOF on) and speaks RESP to it directly over one blocking `TcpStream` per
//! caller thread.
//!
//! Why RESP by hand rather than the `redis` crate: the suite sends a handful of commands
//! (`PING`, `INFO`, `SET .. NX GET EX`, `SET .. XX KEEPTTL`), each one write and one read on a
//! blocking socket, which is exactly what a synchronous client connection does; doing it in
//! ~100 lines keeps the measured path free of any client-side pooling, async runtime or generic
//! value layer, and adds no dependency tree (and no MSRV churn) to the `peers` feature.
//!
//! A claim is `SET key F NX GET EX 86400` (Redis >= 7.0): one round trip that sets the key if it
//! is absent and otherwise answers its value, so a loser learns "in flight" or "done" without a
//! second command. A complete is `SET key D<response> XX KEEPTTL`.

use crate::engines::{Claim, Engine, RESPONSE, Worker, prefill_key};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` owned by the suite; killed when dropped.
pub struct RedisEngine {
    port: u16,
    child: Child,
    dir: PathBuf,
}

/// One connection (one caller thread).
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    buf: Vec<u8>,
    line: Vec<u8>,
}

/// A reply, as far as the suite needs to tell replies apart.
#[derive(PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG`.
    Simple(String),
    /// A bulk string, `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// Anything else (an error, an integer, an array header), as its raw line.
    Other(String),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Bulk(None) => write!(f, "(nil)"),
            Reply::Bulk(Some(b)) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Other(line) => write!(f, "{line}"),
        }
    }
}

/// `redis-server`'s version, or why Redis rows cannot be measured on this machine: starts a
/// throwaway server (no persistence) and pings it.
pub fn probe(dir: &Path) -> Result<String, String> {
    let version = match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or("?")
            .to_string(),
        Ok(out) => {
            return Err(format!(
                "`redis-server --version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => {
            return Err(format!(
                "redis-server not found ({e}); install it with `apt-get install -y redis-server` (scripts/bench-table.sh does)"
            ));
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    RedisEngine::spawn(dir, &["--appendonly", "no"])?;
    Ok(version)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl RedisEngine {
    /// Starts `redis-server` with AOF `appendfsync <fsync>` in `dir` and stores `live`
    /// pre-filled keys. `Err` is the reason it is unavailable.
    pub fn start(dir: &Path, fsync: &str, live: u64) -> Result<RedisEngine, String> {
        let engine = RedisEngine::spawn(dir, &["--appendonly", "yes", "--appendfsync", fsync])?;
        let mut c = engine.connect()?;
        // `SET .. NX GET` needs Redis 7.0.
        match c.command(&[b"SET", b"probe", b"x", b"NX", b"GET"]) {
            Reply::Bulk(_) => {}
            other => return Err(format!("redis-server too old for SET NX GET: {other}")),
        }
        c.prefill(live);
        Ok(engine)
    }

    fn spawn(dir: &Path, persistence: &[&str]) -> Result<RedisEngine, String> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .args(persistence)
            // No RDB snapshots and no AOF rewrites during the run: only the AOF fsync policy
            // under test decides the cost of a write.
            .args(["--save", "", "--auto-aof-rewrite-percentage", "0"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(["--maxclients", "4096"])
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot spawn redis-server: {e}"))?;
        let mut engine = RedisEngine {
            port,
            child,
            dir: dir.into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = engine.child.try_wait() {
                return Err(format!(
                    "redis-server exited at start ({status}): {}",
                    engine.log_tail()
                ));
            }
            if let Ok(mut c) = engine.connect()
                && c.command(&[b"PING"]) == Reply::Simple("PONG".into())
            {
                return Ok(engine);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer PING on 127.0.0.1:{port} within 10 s: {}",
                    engine.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> Result<Conn, String> {
        let s = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect 127.0.0.1:{}: {e}", self.port))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(s),
            writer,
            buf: Vec::with_capacity(256),
            line: Vec::with_capacity(128),
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Engine for RedisEngine {
    fn worker(&self, _thread: usize) -> Box<dyn Worker> {
        Box::new(self.connect().expect("connect to the suite's redis-server"))
    }
}

impl Conn {
    fn encode(&mut self, args: &[&[u8]]) {
        let b = &mut self.buf;
        b.clear();
        write!(b, "*{}\r\n", args.len()).expect("vec write");
        for a in args {
            write!(b, "${}\r\n", a.len()).expect("vec write");
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
    }

    fn read_reply(&mut self) -> Reply {
        self.line.clear();
        self.reader
            .read_until(b'\n', &mut self.line)
            .expect("read a redis reply");
        assert!(self.line.ends_with(b"\r\n"), "redis closed the connection");
        let text = std::str::from_utf8(&self.line[1..self.line.len() - 2]).expect("reply line");
        match self.line[0] {
            b'+' => Reply::Simple(text.to_string()),
            b'-' | b':' | b'*' => Reply::Other(format!("{}{text}", self.line[0] as char)),
            b'$' => {
                let len: i64 = text.parse().expect("bulk length");
                if len < 0 {
                    return Reply::Bulk(None);
                }
                let mut data = vec![0u8; len as usize + 2];
                self.reader.read_exact(&mut data).expect("bulk body");
                data.truncate(len as usize);
                Reply::Bulk(Some(data))
            }
            other => panic!("unexpected redis reply type {:?}", other as char),
        }
    }

    /// Sends one command and reads its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Reply {
        self.encode(args);
        self.writer.write_all(&self.buf).expect("send to redis");
        self.read_reply()
    }

    /// `live` pre-filled in-flight keys, pipelined 1,000 at a time.
    fn prefill(&mut self, live: u64) {
        let mut i = 0;
        while i < live {
            let n = (live - i).min(1000);
            let mut pipeline = Vec::new();
            for j in i..i + n {
                self.encode(&[b"SET", &prefill_key(j), b"F", b"EX", b"86400"]);
                pipeline.extend_from_slice(&self.buf);
            }
            self.writer.write_all(&pipeline).expect("send the prefill");
            for _ in 0..n {
                let reply = self.read_reply();
                assert!(reply == Reply::Simple("OK".into()), "prefill SET: {reply}");
            }
            i += n;
        }
    }
}

impl Worker for Conn {
    fn claim(&mut self, key: &[u8]) -> Claim {
        match self.command(&[b"SET", key, b"F", b"NX", b"GET", b"EX", b"86400"]) {
            Reply::Bulk(None) => Claim::Won,
            Reply::Bulk(Some(v)) if v.first() == Some(&b'D') => Claim::Done,
            Reply::Bulk(Some(_)) => Claim::Busy,
            other => panic!("SET NX GET answered {other}"),
        }
    }

    fn complete(&mut self, key: &[u8]) {
        let mut value = Vec::with_capacity(1 + RESPONSE.len());
        value.push(b'D');
        value.extend_from_slice(RESPONSE);
        let reply = self.command(&[b"SET", key, &value, b"XX", b"KEEPTTL"]);
        assert!(
            reply == Reply::Simple("OK".into()),
            "complete an existing key: {reply}"
        );
    }
}
