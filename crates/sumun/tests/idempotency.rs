//! Idempotency keys end to end, through the real binary and a counting mock upstream: the
//! first keyed POST runs and the repeat is replayed (same status and body, the upstream saw
//! one request, `idempotency-replayed: true`); the same key with another body is 422; a repeat
//! while the first is held at the upstream is 409 with `Retry-After`; keyless requests and GETs
//! are not covered; keys are scoped by authenticated subject; and with `store = "redis"` on a
//! private redis-server, a request replayed by a second sumun instance, then 503 while Redis
//! is down. Memory records survive a configuration reload.
//!
//! Needs `curl`, and `redis-server` for the Redis test (scripts/test installs both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;

const T: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[upstream.api]
endpoints = ["@UP@"]

[[route]]
name = "orders"
match = { path_prefix = "/orders" }
to = { upstream = "api" }
idempotency = true
"#;

fn post(url: &str, key: Option<&str>, body: &str) -> CurlOut {
    let key_header = key.map(|k| format!("idempotency-key: {k}"));
    let mut args = vec!["-X", "POST", "-H", "content-type: application/json", "--data-binary", body];
    if let Some(h) = &key_header {
        args.extend(["-H", h.as_str()]);
    }
    args.push(url);
    curl(&args)
}

fn created_upstream() -> Mock {
    Mock::start(Behavior::text(r#"{"id":42}"#).status(201).header("content-type", "application/json"))
}

fn wait_metric(s: &Sumun, series: &str, value: u64) {
    let want = format!("{series} {value}");
    let url = format!("http://{}/metrics", s.admin_addr().expect("admin listener"));
    wait_for(T, &want, || curl(&[&url]).text().lines().any(|l| l == want).then_some(()));
}

#[test]
fn repeat_is_replayed_without_reaching_the_upstream() {
    let up = created_upstream();
    let s = Sumun::start(&cfg(CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/orders?shop=1");

    let first = post(&url, Some("order-7f3a"), r#"{"item":"book"}"#);
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.text(), r#"{"id":42}"#);
    assert_eq!(first.header("idempotency-replayed"), None);
    assert_eq!(up.count(), 1);
    // The upstream got the buffered body whole, and the key.
    let seen = up.wait_finished(1, T);
    assert_eq!(seen[0].body, br#"{"item":"book"}"#);
    assert_eq!(seen[0].header("idempotency-key"), Some("order-7f3a"));

    let again = post(&url, Some("order-7f3a"), r#"{"item":"book"}"#);
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.text(), r#"{"id":42}"#);
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    // The replay carries its own exchange's request id.
    assert_ne!(again.request_id(), first.request_id());
    assert_eq!(up.count(), 1, "the repeat reached the upstream");

    // The same key for another request is refused.
    let reused = post(&url, Some("order-7f3a"), r#"{"item":"pen"}"#);
    assert_problem(&reused, 422);
    assert_eq!(up.count(), 1);

    // A new key is a new request.
    assert_eq!(post(&url, Some("order-8000"), r#"{"item":"pen"}"#).status, 201);
    assert_eq!(up.count(), 2);

    wait_metric(&s, r#"sumun_idempotency_total{route="orders",result="stored"}"#, 2);
    wait_metric(&s, r#"sumun_idempotency_total{route="orders",result="replayed"}"#, 1);
    wait_metric(&s, r#"sumun_idempotency_total{route="orders",result="mismatch"}"#, 1);
}

#[test]
fn repeat_while_the_first_is_in_flight_is_409() {
    let gate = Gate::new();
    let up = Mock::start(Behavior::text("").status(201).payload(Payload::Gated {
        first: Bytes::from_static(b"part one, "),
        gate: gate.clone(),
        rest: Bytes::from_static(b"part two"),
    }));
    let s = Sumun::start(&cfg(CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/orders");

    let first = {
        let url = url.clone();
        std::thread::spawn(move || post(&url, Some("slow-1"), "{}"))
    };
    // The upstream has the request and holds the rest of its answer.
    up.wait(T, "the first request at the upstream", |r| r.len() == 1);

    let busy = post(&url, Some("slow-1"), "{}");
    assert_problem(&busy, 409);
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(up.count(), 1);

    gate.open();
    let first = first.join().unwrap();
    assert_eq!((first.status, first.text().as_str()), (201, "part one, part two"));

    let again = post(&url, Some("slow-1"), "{}");
    assert_eq!((again.status, again.text().as_str()), (201, "part one, part two"));
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(up.count(), 1);
    wait_metric(&s, r#"sumun_idempotency_total{route="orders",result="conflict"}"#, 1);
}

#[test]
fn keyless_requests_and_gets_always_run() {
    let up = created_upstream();
    let s = Sumun::start(&cfg(CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/orders");
    for n in 1..=2 {
        let out = post(&url, None, "{}");
        assert_eq!(out.status, 201);
        assert_eq!(out.header("idempotency-replayed"), None);
        assert_eq!(up.count(), n);
    }
    // GET is not a covered method: the key is ignored.
    for n in 3..=4 {
        let out = curl(&["-H", "idempotency-key: get-1", &url]);
        assert_eq!(out.status, 201);
        assert_eq!(out.header("idempotency-replayed"), None);
        assert_eq!(up.count(), n);
    }
    // A malformed key is refused before anything runs.
    let long = "k".repeat(256);
    assert_problem(&post(&url, Some(&long), "{}"), 400);
    assert_eq!(up.count(), 4);
    wait_metric(&s, r#"sumun_idempotency_total{route="orders",result="skipped"}"#, 2);
}

#[test]
fn server_errors_are_not_replayed() {
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    let up = Mock::start_opts(MockOpts::default(), move |_| {
        if f.load(std::sync::atomic::Ordering::SeqCst) {
            Behavior::text("try later").status(503)
        } else {
            Behavior::text("done").status(201)
        }
    });
    let s = Sumun::start(&cfg(CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/orders");
    assert_eq!(post(&url, Some("retry-me"), "{}").status, 503);
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // The failure released the key: the retry runs, and its success is what gets replayed.
    let retry = post(&url, Some("retry-me"), "{}");
    assert_eq!((retry.status, retry.text().as_str()), (201, "done"));
    let again = post(&url, Some("retry-me"), "{}");
    assert_eq!((again.status, again.header("idempotency-replayed")), (201, Some("true")));
    assert_eq!(up.count(), 2);
}

#[test]
fn records_survive_a_reload() {
    let up = created_upstream();
    let config = cfg(CONFIG, &[("UP", up.endpoint())]);
    let s = Sumun::start(&config);
    let url = s.url("web", "/orders");
    assert_eq!(post(&url, Some("before-reload"), "{}").status, 201);

    // A reload rebuilds every route; a retry that comes after it must still be replayed.
    let before = s.stderr.all().len();
    let next = format!(
        "{config}\n[[route]]\nname = \"health\"\nmatch = {{ path = \"/health\" }}\nto = {{ respond = {{ status = 200, body = \"ok\" }} }}\n"
    );
    std::fs::write(s.config_path(), next).unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(T, "configuration reloaded", || {
        let lines = s.stderr.all();
        lines[before.min(lines.len())..].iter().any(|l| l.contains("configuration reloaded")).then_some(())
    });
    assert_eq!(curl(&[&s.url("web", "/health")]).text(), "ok");

    let again = post(&url, Some("before-reload"), "{}");
    assert_eq!((again.status, again.header("idempotency-replayed")), (201, Some("true")));
    assert_eq!(up.count(), 1);
}

const AUTH_CONFIG: &str = r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.api]
endpoints = ["@UP@"]

[auth.keys]
api_keys = { from = ["header:x-api-key"], keys = [
  { name = "alice", sha256 = "d85cc5e31c65548b64632af4304e20eb0f792b7280b1cf6fd73ffa0d9c745f5b" },
  { name = "bob", sha256 = "2656fecc42e5ed2e72a2a5f2d92068d8c7bfe8f9af4c62895a25dcb6f5bbb64b" },
] }

[[route]]
name = "orders"
match = { path_prefix = "/orders" }
to = { upstream = "api" }
auth = "keys"
idempotency = true
"#;

#[test]
fn keys_are_scoped_by_subject() {
    let up = created_upstream();
    let s = Sumun::start(&cfg(AUTH_CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/orders");
    let as_user = |api_key: &str| {
        let h = format!("x-api-key: {api_key}");
        curl(&["-X", "POST", "-H", &h, "-H", "idempotency-key: same", "--data-binary", "{}", &url])
    };
    let alice = as_user("alice-secret-key");
    assert_eq!((alice.status, alice.header("idempotency-replayed")), (201, None));
    // Bob's identical request with the same key is his own, not a replay of Alice's.
    let bob = as_user("bob-secret-key");
    assert_eq!((bob.status, bob.header("idempotency-replayed")), (201, None));
    assert_eq!(up.count(), 2);
    let alice_again = as_user("alice-secret-key");
    assert_eq!((alice_again.status, alice_again.header("idempotency-replayed")), (201, Some("true")));
    assert_eq!(up.count(), 2);
}

/// A private redis-server on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = tempfile::Builder::new().prefix("redis-e2e").tempdir_in("/tmp").unwrap();
        // The port is free when chosen; another process could take it before redis binds, so
        // a failed start is retried with a new port.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
            let mut child = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server");
            let up = wait_up(&mut child, port);
            if up {
                return RedisServer { child, port, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command with redis-cli; its raw output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The remaining lifetime (ms) of the only idempotency key in Redis.
    fn only_key_pttl(&self) -> i64 {
        let keys = self.cli(&["--scan", "--pattern", "sumun:idem:*"]);
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 1, "idempotency keys: {keys:?}");
        self.cli(&["pttl", keys[0]]).parse().unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until redis answers PING, or its process exits, or 10 s pass.
fn wait_up(child: &mut Child, port: u16) -> bool {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 16];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const REDIS_CONFIG: &str = r#"
[listener.web]
bind = "127.0.0.1:0"

[redis]
url = "@REDIS@"
timeout = "250ms"
retry_after = "1s"

[upstream.api]
endpoints = ["@UP@"]

[[route]]
name = "orders"
match = { path_prefix = "/orders" }
to = { upstream = "api" }
idempotency = { store = "redis", ttl = "1h" }
"#;

#[test]
fn redis_store_replays_across_instances_and_refuses_when_down() {
    let mut redis = RedisServer::start();
    let up = created_upstream();
    let config = cfg(REDIS_CONFIG, &[("UP", up.endpoint()), ("REDIS", &redis.url())]);
    let a = Sumun::start(&config);
    let b = Sumun::start(&config);

    let first = post(&a.url("web", "/orders"), Some("shared-1"), r#"{"n":1}"#);
    assert_eq!((first.status, first.text().as_str()), (201, r#"{"id":42}"#));
    // The record lives for the route's ttl (1h).
    let pttl = redis.only_key_pttl();
    assert!((3_500_000..=3_600_000).contains(&pttl), "record pttl {pttl}");
    // The other instance answers from the record the first one wrote.
    let again = post(&b.url("web", "/orders"), Some("shared-1"), r#"{"n":1}"#);
    assert_eq!((again.status, again.text().as_str()), (201, r#"{"id":42}"#));
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_eq!(up.count(), 1);
    assert_problem(&post(&b.url("web", "/orders"), Some("shared-1"), r#"{"n":2}"#), 422);

    // A request held at the upstream by one instance is in flight for the other.
    let gate = Gate::new();
    let held = Mock::start(Behavior::text("").status(201).payload(Payload::Gated {
        first: Bytes::from_static(b"slow "),
        gate: gate.clone(),
        rest: Bytes::from_static(b"answer"),
    }));
    let config = cfg(REDIS_CONFIG, &[("UP", held.endpoint()), ("REDIS", &redis.url())]);
    let c = Sumun::start(&config);
    let d = Sumun::start(&config);
    let slow = {
        let url = c.url("web", "/orders");
        std::thread::spawn(move || post(&url, Some("shared-2"), "{}"))
    };
    held.wait(T, "the held request at the upstream", |r| r.len() == 1);
    let busy = post(&d.url("web", "/orders"), Some("shared-2"), "{}");
    assert_problem(&busy, 409);
    assert_eq!(busy.header("retry-after"), Some("1"));
    // The in-flight marker has its own, short expiry: an instance that dies holding it does
    // not block the key for the record's ttl.
    let markers: Vec<i64> = redis
        .cli(&["--scan", "--pattern", "sumun:idem:*"])
        .lines()
        .map(|k| redis.cli(&["pttl", k]).parse().unwrap())
        .collect();
    assert!(markers.iter().any(|p| (1..=300_000).contains(p)), "marker pttls {markers:?}");
    gate.open();
    assert_eq!(slow.join().unwrap().text(), "slow answer");
    let replay = post(&d.url("web", "/orders"), Some("shared-2"), "{}");
    assert_eq!((replay.status, replay.text().as_str()), (201, "slow answer"));
    assert_eq!(held.count(), 1);

    // Redis gone: keyed requests are refused rather than run unprotected; others still run.
    redis.stop();
    let refused = post(&a.url("web", "/orders"), Some("shared-3"), "{}");
    assert_problem(&refused, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(up.count(), 1);
    assert_eq!(post(&a.url("web", "/orders"), None, "{}").status, 201);
    assert_eq!(up.count(), 2);
}
