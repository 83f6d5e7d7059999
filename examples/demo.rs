//! The store doing its job: one logical operation, retried by impatient clients.
//!
//! 1. Eight clients send the same `POST /deploy` with one idempotency key at once: the deploy
//!    runs exactly once; the others get `409` while it runs and a replay (same `201`, same body,
//!    `X-Idempotency-Replayed: true`) once it has finished.
//! 2. A server process is killed with SIGKILL right after it stored a result, and another one in
//!    the middle of a request; after the restart the first result is replayed, not recomputed,
//!    and the interrupted request is taken over at once (flagged as a takeover).
//!
//! Run with `cargo run --example demo`.

use idemstore::{ClaimOutcome, Fingerprint, Key, Response, Store};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// What an HTTP server would send back.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// The idempotency layer of an HTTP server, in a few lines over the store.
fn handle(
    store: &Store,
    tenant: &str,
    key: &str,
    method: &str,
    path: &str,
    body: &[u8],
    run: impl FnOnce() -> Response,
) -> HttpResponse {
    let key = Key::new(tenant, key);
    let fp = Fingerprint::of_request(method, path, body);
    match store.claim(&key, Some(fp)).expect("claim") {
        ClaimOutcome::Acquired(lease) => {
            let response = run();
            store.complete(&lease, response.clone()).expect("complete");
            to_http(response, false)
        }
        ClaimOutcome::Replay(replay) => to_http(replay.response, true),
        ClaimOutcome::InFlight { .. } => HttpResponse {
            status: 409,
            headers: vec![],
            body: r#"{"error": "idempotency_key_in_use", "message": "A request with this idempotency key is already being processed. Retry after a moment."}"#.into(),
        },
        ClaimOutcome::Mismatch => HttpResponse {
            status: 422,
            headers: vec![],
            body: r#"{"error": "idempotency_key_reused", "message": "This idempotency key was used with a different request."}"#.into(),
        },
    }
}

fn to_http(r: Response, replayed: bool) -> HttpResponse {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    if replayed {
        headers.push(("X-Idempotency-Replayed".into(), "true".into()));
    }
    HttpResponse {
        status: r.status,
        headers,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

fn deploy_response(job: u32) -> Response {
    Response::new(201)
        .header("content-type", "application/json")
        .body(format!(r#"{{"job":"job_{job}","status":"queued"}}"#))
}

fn concurrent_retries(store: Arc<Store>) {
    println!("== 8 clients retry one deploy with key redeploy-abc123def456");
    let executions = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|client| {
            let (store, executions) = (Arc::clone(&store), Arc::clone(&executions));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(client * 15));
                let mut answers = vec![];
                for attempt in 0..4 {
                    let r = handle(
                        &store,
                        "tenant-42",
                        "redeploy-abc123def456",
                        "POST",
                        "/v1/environments/env_01/redeploy",
                        b"{}",
                        || {
                            let n = executions.fetch_add(1, Ordering::SeqCst) + 1;
                            std::thread::sleep(Duration::from_millis(120)); // the deploy itself
                            deploy_response(n)
                        },
                    );
                    let replayed = r
                        .headers
                        .iter()
                        .any(|(n, v)| n == "X-Idempotency-Replayed" && v == "true");
                    answers.push(format!(
                        "{}{}",
                        r.status,
                        if replayed { " (replayed)" } else { "" }
                    ));
                    if r.status != 409 {
                        println!(
                            "client {client}: {} -> {} {}",
                            answers.join(", "),
                            r.status,
                            r.body
                        );
                        return r;
                    }
                    std::thread::sleep(Duration::from_millis(50 << attempt)); // client backoff
                }
                panic!("client {client} never got an answer: {answers:?}");
            })
        })
        .collect();
    let results: Vec<HttpResponse> = threads
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let runs = executions.load(Ordering::SeqCst);
    println!(
        "deploy executed {runs} time(s); every client got status {:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(runs, 1, "exactly one execution");
    assert!(
        results
            .iter()
            .all(|r| r.status == 201 && r.body == results[0].body)
    );

    let other = handle(
        &store,
        "tenant-42",
        "redeploy-abc123def456",
        "POST",
        "/v1/environments/env_01/stop",
        b"{}",
        || unreachable!(),
    );
    println!(
        "same key, different request -> {} {}",
        other.status, other.body
    );
    assert_eq!(other.status, 422);
    let tenant = handle(
        &store,
        "tenant-7",
        "redeploy-abc123def456",
        "POST",
        "/v1/environments/env_01/redeploy",
        b"{}",
        || deploy_response(900),
    );
    println!(
        "same key string, other tenant -> {} {} (its own result)",
        tenant.status, tenant.body
    );
    assert_eq!(
        tenant.body,
        String::from_utf8(deploy_response(900).body).unwrap()
    );
}

/// The child "server": completes one key, starts another, then waits to be killed.
fn child(path: &str) {
    let store = Store::open(path).expect("open");
    let done = Key::new("tenant-42", "gh-actions-run-12345678");
    let ClaimOutcome::Acquired(lease) = store.claim(&done, None).expect("claim") else {
        panic!("fresh key")
    };
    store
        .complete(&lease, deploy_response(7))
        .expect("complete");
    println!("completed");
    let busy = Key::new("tenant-42", "redeploy-env_01abc-1741958400");
    let ClaimOutcome::Acquired(_lease) = store.claim(&busy, None).expect("claim") else {
        panic!("fresh key")
    };
    println!("claimed");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn crash_and_restart(path: &std::path::Path) {
    println!("\n== a server completes one request, starts another, and is killed with SIGKILL");
    let mut server = Command::new(std::env::current_exe().expect("exe"))
        .arg("--child")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the server process");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    for want in ["completed", "claimed"] {
        let line = lines.next().expect("server output").expect("read");
        assert_eq!(line, want);
        println!("server: {line}");
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("wait");
    println!("server killed; restarting on the same file");

    let store = Store::open(path).expect("reopen");
    match store
        .claim(&Key::new("tenant-42", "gh-actions-run-12345678"), None)
        .expect("claim")
    {
        ClaimOutcome::Replay(replay) => println!(
            "retry of the completed request -> replay {} {}",
            replay.response.status,
            String::from_utf8_lossy(&replay.response.body)
        ),
        other => panic!("the stored result was lost: {other:?}"),
    }
    match store
        .claim(
            &Key::new("tenant-42", "redeploy-env_01abc-1741958400"),
            None,
        )
        .expect("claim")
    {
        ClaimOutcome::Acquired(lease) if lease.is_takeover() => {
            println!(
                "retry of the interrupted request -> taken over at once (attempt {}, earlier attempt may have had effects)",
                lease.attempt()
            );
            store
                .complete(&lease, deploy_response(8))
                .expect("complete");
        }
        other => panic!("expected a takeover, got {other:?}"),
    }
    println!("stats: {:?}", store.stats());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2]);
        return;
    }
    let dir = std::env::temp_dir().join(format!("idemstore-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = Arc::new(Store::open(dir.join("concurrent.redb")).expect("open"));
    concurrent_retries(Arc::clone(&store));
    println!("stats: {:?}", store.stats());
    drop(store);
    crash_and_restart(&dir.join("crash.redb"));
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "\ndemo finished: one execution per key, replays byte for byte, nothing lost across a crash"
    );
}
