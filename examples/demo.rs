//! The store doing its job: one logical operation, retried by impatient clients.
//!
//! 1. Eight clients send the same `POST /deploy` with one idempotency key at once: the deploy
//!    runs exactly once; the others get `409` while it runs and a replay (same `201`, same body,
//!    `X-Idempotency-Replayed: true`) once it has finished. The same key with another request
//!    is a `422`, in another tenant it is another key; a handler error releases the key so
//!    the retry runs fresh; a `GET` ignores the key; a key with a control character is a `400`.
//! 2. A server process is killed with SIGKILL right after it stored a result, and another one in
//!    the middle of a request; after the restart the first result is replayed, not recomputed,
//!    and the interrupted request is taken over at once (flagged as a takeover).
//!
//! Run with `cargo run --example demo`.

use idemstore::{ClaimOutcome, Error, Fingerprint, Key, Response, Store};
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

/// The idempotency layer of an HTTP server over the store (the rules of docs/BEHAVIOUR.md): only
/// POST honours the key; a key is 1 to 255 bytes without control characters; a response the
/// server does not keep (4xx validation errors, 5xx handler errors) releases the key so a
/// retry runs fresh; a store that cannot answer is a 503, never a panic.
fn handle(
    store: &Store,
    tenant: &str,
    key: &str,
    method: &str,
    path: &str,
    body: &[u8],
    run: impl FnOnce() -> Response,
) -> HttpResponse {
    if method != "POST" {
        return to_http(run(), false); // GET, PUT, PATCH, DELETE: naturally idempotent
    }
    if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
        return json(400, &[], INVALID_KEY);
    }
    let key = Key::new(tenant, key);
    let fp = Fingerprint::of_request(method, path, body);
    match store.claim(&key, Some(fp)) {
        Ok(ClaimOutcome::Acquired(lease)) => {
            let response = run();
            if matches!(response.status, 400 | 422 | 500..=599) {
                let _ = store.release(&lease); // no effect kept: a retry runs fresh
            } else if let Err(Error::ResponseTooLarge { .. }) =
                store.complete(&lease, response.clone())
            {
                // It ran, so a retry must not run it again: keep a stand-in.
                let _ = store.complete(&lease, Response::new(500).body(NOT_KEPT));
            }
            // Any other failure to store it: the request ran, this client still gets its answer.
            to_http(response, false)
        }
        Ok(ClaimOutcome::Replay(replay)) => to_http(replay.response, true),
        Ok(ClaimOutcome::InFlight { retry_after, .. }) => {
            let secs = retry_after.as_secs().max(1).to_string();
            json(409, &[("Retry-After", &secs)], IN_USE)
        }
        Ok(ClaimOutcome::Mismatch) => json(422, &[], KEY_REUSED),
        // Overloaded, or the store failed: nothing ran, the client may retry.
        Err(_) => json(503, &[("Retry-After", "1")], UNAVAILABLE),
    }
}

const IN_USE: &str = r#"{"error": "idempotency_key_in_use", "message": "A request with this idempotency key is already being processed. Retry after a moment."}"#;
const KEY_REUSED: &str = r#"{"error": "idempotency_key_reused", "message": "This idempotency key was used with a different request."}"#;
const INVALID_KEY: &str = r#"{"error": "invalid_idempotency_key", "message": "The idempotency key must be 1 to 255 bytes without control characters."}"#;
const UNAVAILABLE: &str = r#"{"error": "unavailable", "message": "The request could not be checked for duplicates. Retry after a moment."}"#;
const NOT_KEPT: &str = r#"{"error": "idempotency_result_not_kept", "message": "This request was processed, but its response was too large to keep for replay."}"#;

fn json(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let mut all = vec![("Content-Type".to_string(), "application/json".to_string())];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    HttpResponse {
        status,
        headers: all,
        body: body.into(),
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

    let post = |key: &str, run: &mut dyn FnMut() -> Response| {
        handle(&store, "tenant-42", key, "POST", "/v1/projects", b"{}", run)
    };
    let failed = post("create-project-1", &mut || Response::new(503));
    let retried = post("create-project-1", &mut || {
        Response::new(201).body("{\"id\":\"prj_1\"}")
    });
    println!(
        "a handler error ({}) releases the key: the retry runs fresh -> {} {}",
        failed.status, retried.status, retried.body
    );
    assert_eq!((failed.status, retried.status), (503, 201));
    let mut gets = 0;
    for _ in 0..2 {
        handle(
            &store,
            "tenant-42",
            "create-project-1",
            "GET",
            "/v1/projects/prj_1",
            b"",
            || {
                gets += 1;
                Response::new(200)
            },
        );
    }
    println!("GET with a key: the key is ignored, it ran {gets} times");
    assert_eq!(gets, 2);
    let bad = post("bad\nkey", &mut || unreachable!());
    println!(
        "a key with a control character -> {} {}",
        bad.status, bad.body
    );
    assert_eq!(bad.status, 400);
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
    // The store's key limit counts the tenant too: room for 255-byte keys of a 64-byte tenant.
    let store = Store::builder()
        .max_key_len(64 + 255)
        .open(dir.join("concurrent.redb"))
        .expect("open");
    let store = Arc::new(store);
    concurrent_retries(Arc::clone(&store));
    println!("stats: {:?}", store.stats());
    drop(store);
    crash_and_restart(&dir.join("crash.redb"));
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "\ndemo finished: one execution per key, replays byte for byte, nothing lost across a crash"
    );
}
