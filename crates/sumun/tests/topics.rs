//! Topics end to end through the real binary: publish through a route and the admin API,
//! push delivery to mock workers (retries, backoff, Retry-After, DLQ and redrive, per-key
//! ordering), pull delivery (leases, expiry, ack/nack/extend), idempotent publish, restarts
//! that keep cursors and leases, retention, a kill -9 crash loop, and real peers: the Python
//! `standardwebhooks` package verifies our signatures and the `cloudevents` SDK parses what we
//! deliver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A config with a `web` listener, an admin listener, `@DATA@` as data_dir and the worker
/// mock as upstream `worker`; `extra` adds topics, subscriptions and routes.
fn config(data: &std::path::Path, worker: &str, extra: &str) -> String {
    let base = r#"
data_dir = "@DATA@"
[admin]
bind = "127.0.0.1:0"
[listener.web]
bind = "127.0.0.1:0"
[upstream.worker]
endpoints = ["@WORKER@"]
"#;
    cfg(&format!("{base}{extra}"), &[("DATA", &data.display().to_string()), ("WORKER", worker)])
}

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sumun-topics").tempdir_in("/tmp").expect("temp dir")
}

fn admin_url(s: &Sumun, path: &str) -> String {
    format!("http://{}{path}", s.admin_addr().expect("admin listener"))
}

fn get_json(url: &str) -> Value {
    let out = curl(&[url]);
    assert_eq!(out.status, 200, "GET {url}: {}", out.text());
    out.json()
}

fn post_json(url: &str, body: &Value) -> CurlOut {
    let text = body.to_string();
    curl(&["-X", "POST", "-H", "content-type: application/json", "--data-binary", &text, url])
}

/// POSTs `body` to `url` with extra headers.
fn publish(url: &str, body: &str, headers: &[&str]) -> CurlOut {
    let mut args: Vec<&str> = vec!["-X", "POST", "--data-binary", body];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    args.push(url);
    curl(&args)
}

fn subscription(s: &Sumun, name: &str) -> Value {
    get_json(&admin_url(s, &format!("/v1/subscriptions/{name}")))
}

/// The `ce-id`s of the requests a mock received, in arrival order.
fn ids(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter().filter_map(|r| r.header("ce-id").map(str::to_owned)).collect()
}

const ORDERS: &str = r#"
[topic.orders]
partitions = 2
key = "header:x-order-id"
keep_headers = ["x-tenant"]
[topic.dead]
[[route]]
match = { path = "/orders" }
to = { topic = "orders" }
"#;

#[test]
fn publish_is_pushed_to_the_worker_as_a_signed_cloudevent() {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let s = Sumun::start(
        &config(
            data.path(),
            worker.endpoint(),
            &format!(
                r#"{ORDERS}
[subscription.jobs]
topic = "orders"
deliver = {{ upstream = "worker", path = "/internal/orders" }}
dead_letter = "dead"
signing_secret = "env:SUMUN_TEST_SECRET"
"#
            ),
        )
        .replace("env:SUMUN_TEST_SECRET", &format!("file:{}", write_secret(data.path()).display())),
    );
    let out = publish(
        &s.url("web", "/orders"),
        r#"{"order":7}"#,
        &[
            "content-type: application/json",
            "x-order-id: o-7",
            "x-tenant: acme",
            "x-dropped: yes",
            "ce-type: com.example.order.created",
        ],
    );
    assert_eq!(out.status, 202, "{}", out.text());
    let v = out.json();
    let id = v["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("msg_"), "{v}");
    assert_eq!(v["topic"], "orders");
    let location = out.header("location").expect("Location").to_owned();
    assert_eq!(location, format!("/v1/topics/orders/partitions/{}/messages/{}", v["partition"], v["offset"]));

    let r = worker.wait(Duration::from_secs(10), "the delivery", |r| r.iter().any(|r| r.finished)).remove(0);
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/internal/orders");
    assert_eq!(r.body, br#"{"order":7}"#);
    assert_eq!(r.header("ce-id"), Some(id.as_str()));
    assert_eq!(r.header("ce-specversion"), Some("1.0"));
    assert_eq!(r.header("ce-type"), Some("com.example.order.created"));
    assert_eq!(r.header("ce-source"), Some("/orders"));
    assert_eq!(r.header("ce-partitionkey"), Some("o-7"));
    assert!(r.header("ce-time").is_some_and(|t| t.ends_with('Z')));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-tenant"), Some("acme"));
    assert_eq!(r.header("x-dropped"), None, "only keep_headers travel");
    assert_eq!(r.header("webhook-id"), Some(id.as_str()));
    assert!(r.header("webhook-timestamp").is_some_and(|t| t.parse::<u64>().is_ok()));
    assert!(r.header("webhook-signature").is_some_and(|t| t.starts_with("v1,")));

    // The status resource says the subscription is done with it.
    let status = wait_for(Duration::from_secs(10), "status done", || {
        let v = get_json(&admin_url(&s, &location));
        (v["subscriptions"][0]["status"] == "done").then_some(v)
    });
    assert_eq!(status["event"]["id"], id.as_str());
    assert_eq!(status["event"]["data"]["order"], 7);
    let sub = subscription(&s, "jobs");
    assert_eq!(sub["delivered"], 1, "{sub}");
    assert_eq!(sub["lag"]["messages"], 0, "{sub}");
    // The access log and the metrics see it.
    let metrics = curl(&[&admin_url(&s, "/metrics")]).text();
    assert!(metrics.contains("sumun_bus_published_total{topic=\"orders\"} 1"), "{metrics}");
    assert!(metrics.contains("sumun_bus_deliveries_total{subscription=\"jobs\",result=\"success\"} 1"));
    // Every attempt is logged.
    assert!(
        s.stderr
            .wait_json(Duration::from_secs(5), |l| l["message"] == "delivery attempt"
                && l["id"] == id.as_str())
            .is_some()
    );
}

fn write_secret(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("signing.secret");
    std::fs::write(&p, SECRET).expect("secret");
    p
}

#[test]
fn publish_refusals_are_problems() {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        r#"
[topic.small]
max_message_bytes = 16
[[route]]
match = { path = "/small" }
to = { topic = "small" }
"#,
    ));
    let big = publish(&s.url("web", "/small"), "0123456789abcdefXYZ", &[]);
    assert_problem(&big, 413);
    let bad = publish(&s.url("web", "/small"), "x", &["ce-specversion: 0.3"]);
    assert_problem(&bad, 400);
    let unknown = publish(&admin_url(&s, "/v1/topics/nope/messages"), "x", &[]);
    assert_eq!(unknown.status, 404);
    let ok = publish(&admin_url(&s, "/v1/topics/small/messages"), "tiny", &[]);
    assert_eq!(ok.status, 202, "{}", ok.text());
    assert_eq!(ok.json()["topic"], "small");
}

#[test]
fn retries_back_off_and_honour_retry_after() {
    // The first attempt gets 503 + Retry-After: 1, the second 500, the third 200.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let worker = Mock::start_opts(MockOpts::default(), move |_| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Behavior::text("busy").status(503).header("retry-after", "1"),
        1 => Behavior::text("boom").status(500),
        _ => Behavior::text("ok"),
    });
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.jobs]
topic = "orders"
deliver = {{ upstream = "worker" }}
dead_letter = "dead"
retry = {{ max_attempts = 5, initial = "50ms", max = "200ms" }}
"#
        ),
    ));
    let start = Instant::now();
    assert_eq!(publish(&s.url("web", "/orders"), "job", &[]).status, 202);
    let reqs = worker.wait(Duration::from_secs(15), "three attempts", |r| r.len() >= 3);
    let total = start.elapsed();
    assert_eq!(ids(&reqs).iter().collect::<HashSet<_>>().len(), 1, "the same message each time");
    // The wait after the 503 honoured Retry-After (1 s); the one after the 500 was the jittered
    // backoff, at most 100 ms (loosely: well under a second).
    let waits = wait_for(Duration::from_secs(5), "attempt log lines", || {
        let lines: Vec<Value> =
            s.stderr.json().into_iter().filter(|l| l["message"] == "delivery attempt").collect();
        (lines.len() >= 3).then_some(lines)
    });
    let at =
        |i: usize| -> chrono_ms::Ms { chrono_ms::parse(waits[i]["timestamp"].as_str().expect("timestamp")) };
    let first_gap = at(1).0 - at(0).0;
    let second_gap = at(2).0 - at(1).0;
    assert!(first_gap >= 950, "Retry-After: 1 must hold the retry back a second, got {first_gap} ms");
    assert!(second_gap < 900, "backoff after a 500 is ≤ 100 ms plus scheduling, got {second_gap} ms");
    assert!(total < Duration::from_secs(10), "{total:?}");
    let sub = wait_for(Duration::from_secs(5), "delivered", || {
        let v = subscription(&s, "jobs");
        (v["delivered"] == 1).then_some(v)
    });
    assert_eq!(sub["failures"], 2, "{sub}");
    assert_eq!(sub["dlq_size"], 0, "{sub}");
}

/// Log timestamps (RFC 3339, UTC) to milliseconds, without a date library.
mod chrono_ms {
    pub struct Ms(pub i64);

    pub fn parse(t: &str) -> Ms {
        // 2026-11-22T07:13:07.752028Z → seconds of the day are enough within one test.
        let time = t.split('T').nth(1).expect("time part").trim_end_matches('Z');
        let mut parts = time.split(':');
        let h: i64 = parts.next().unwrap().parse().unwrap();
        let m: i64 = parts.next().unwrap().parse().unwrap();
        let s: f64 = parts.next().unwrap().parse().unwrap();
        Ms(((h * 3600 + m * 60) * 1000) + (s * 1000.0) as i64)
    }
}

#[test]
fn exhausted_messages_go_to_the_dlq_and_redrive_delivers_them_again() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let worker = Mock::start_opts(MockOpts::default(), move |_| {
        if h.load(Ordering::SeqCst) { Behavior::text("ok") } else { Behavior::text("nope").status(500) }
    });
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.jobs]
topic = "orders"
deliver = {{ upstream = "worker" }}
dead_letter = "dead"
retry = {{ max_attempts = 3, initial = "10ms", max = "50ms" }}
"#
        ),
    ));
    let mut published = Vec::new();
    for i in 0..3 {
        let out = publish(&s.url("web", "/orders"), &format!("job-{i}"), &["content-type: text/plain"]);
        published.push(out.json()["id"].as_str().unwrap().to_owned());
    }
    let sub = wait_for(Duration::from_secs(15), "three dead letters", || {
        let v = subscription(&s, "jobs");
        (v["dlq_size"] == 3).then_some(v)
    });
    assert_eq!(sub["failures"], 9, "{sub}");
    assert_eq!(worker.count(), 9);
    // The dead-letter topic holds them, with the attempt history.
    let topics = get_json(&admin_url(&s, "/v1/topics"));
    let dead = topics["topics"].as_array().unwrap().iter().find(|t| t["name"] == "dead").unwrap().clone();
    assert_eq!(dead["messages"], 3, "{dead}");

    let cli = |args: &[&str]| -> std::process::Output {
        Command::new(common::sumun::binary())
            .args(args)
            .env("SUMUN_ADMIN", s.admin_addr().unwrap().to_string())
            .output()
            .expect("run sumun cli")
    };
    let list = cli(&["dlq", "list", "jobs"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let text = String::from_utf8_lossy(&list.stdout);
    for id in &published {
        assert!(text.contains(id.as_str()), "{id} missing from:\n{text}");
    }
    assert!(text.contains("HTTP 500"), "{text}");
    let show = cli(&["dlq", "show", "jobs", &published[0]]);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    let v: Value = serde_json::from_slice(&show.stdout).expect("show prints JSON");
    let history = v["history"].as_array().expect("history");
    assert_eq!(history.len(), 3, "{v}");
    for a in history {
        assert_eq!(a["status"], 500, "{v}");
        assert_eq!(a["error"], "HTTP 500");
        assert!(a["at"].as_str().is_some() && a["latency_ms"].is_u64(), "{a}");
    }
    assert_eq!(v["event"]["data"], "job-0");
    assert_eq!(v["event"]["id"], published[0].as_str());

    // Redrive one by id, then the rest by filter: each is delivered again with its id.
    healthy.store(true, Ordering::SeqCst);
    let one = cli(&["dlq", "redrive", "jobs", "--id", &published[1]]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert!(String::from_utf8_lossy(&one.stdout).contains("\"redriven\":1"));
    worker.wait(Duration::from_secs(10), "the redriven message", |r| {
        r.iter().skip(9).any(|r| {
            r.header("ce-id") == Some(published[1].as_str())
                && r.header("webhook-id") == Some(published[1].as_str())
        })
    });
    let rest = cli(&["dlq", "redrive", "jobs", "--status", "500"]);
    assert!(
        String::from_utf8_lossy(&rest.stdout).contains("\"redriven\":2"),
        "{}",
        String::from_utf8_lossy(&rest.stdout)
    );
    let reqs = worker.wait(Duration::from_secs(10), "all redriven", |r| r.len() >= 12);
    let again: HashSet<String> = ids(&reqs[9..]).into_iter().collect();
    assert_eq!(again, published.iter().cloned().collect::<HashSet<_>>());
    let sub = wait_for(Duration::from_secs(5), "dlq empty", || {
        let v = subscription(&s, "jobs");
        (v["dlq_size"] == 0 && v["delivered"] == 3).then_some(v)
    });
    assert_eq!(sub["pending"], 0, "{sub}");
    let empty = cli(&["dlq", "list", "jobs", "--json"]);
    let v: Value = serde_json::from_slice(&empty.stdout).expect("json");
    assert_eq!(v["dead_letters"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_failing_key_holds_back_only_its_own_messages() {
    // Message "a-1" fails three times; the other messages of key `a` must wait for it and
    // arrive in order; key `b` flows meanwhile.
    let failures = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let f = failures.clone();
    let worker = Mock::start_opts(MockOpts::default(), move |parts| {
        let id = parts.headers.get("ce-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let mut f = f.lock().unwrap();
        let n = f.entry(id.clone()).or_default();
        *n += 1;
        // Retry-After makes each retry of a-1 wait a second: key b has all the time it needs.
        if id == "a-1" && *n <= 3 {
            Behavior::text("fail").status(503).header("retry-after", "1")
        } else {
            Behavior::text("ok")
        }
    });
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.jobs]
topic = "orders"
deliver = {{ upstream = "worker" }}
dead_letter = "dead"
concurrency = 8
ordering = "per_key"
retry = {{ max_attempts = 10, initial = "150ms", max = "300ms" }}
"#
        ),
    ));
    for (id, key) in [("a-1", "a"), ("b-1", "b"), ("a-2", "a"), ("b-2", "b"), ("a-3", "a"), ("b-3", "b")] {
        let out =
            publish(&s.url("web", "/orders"), id, &[&format!("x-order-id: {key}"), &format!("ce-id: {id}")]);
        assert_eq!(out.status, 202, "{}", out.text());
    }
    let reqs = worker.wait(Duration::from_secs(30), "every message delivered", |r| {
        let ok: HashSet<String> = ids(r).into_iter().collect();
        ok.len() == 6 && r.iter().filter(|r| r.header("ce-id") == Some("a-1")).count() == 4
    });
    let order = ids(&reqs);
    let pos = |id: &str| order.iter().rposition(|x| x == id).unwrap();
    let first = |id: &str| order.iter().position(|x| x == id).unwrap();
    // Key a: in offset order, each only after the previous one succeeded.
    assert!(pos("a-1") < first("a-2") && first("a-2") < first("a-3"), "{order:?}");
    assert_eq!(order.iter().filter(|x| *x == "a-2").count(), 1, "{order:?}");
    // Key b did not wait for a-1's retries.
    assert!(first("b-3") < pos("a-1"), "key b was held back: {order:?}");
    assert!(first("b-1") < first("b-2") && first("b-2") < first("b-3"), "{order:?}");
}

#[test]
fn pull_leases_expire_and_are_redelivered() {
    let worker = Mock::start(Behavior::text("unused"));
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.pullers]
topic = "orders"
deliver = {{ pull = true }}
dead_letter = "dead"
visibility_timeout = "1s"
retry = {{ max_attempts = 3, initial = "10ms", max = "20ms" }}
"#
        ),
    ));
    let pull = |max: usize, wait: &str| -> Vec<Value> {
        let v =
            get_json(&admin_url(&s, &format!("/v1/subscriptions/pullers/messages?max={max}&wait={wait}")));
        v["messages"].as_array().cloned().unwrap_or_default()
    };
    // Long-poll: nothing yet, the pull waits; a publish meanwhile answers it.
    let url = s.url("web", "/orders");
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        publish(&url, "m1", &["content-type: text/plain", "x-order-id: k1"])
    });
    let t0 = Instant::now();
    let got = pull(10, "10s");
    let waited = t0.elapsed();
    assert_eq!(publisher.join().unwrap().status, 202);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
    let m = &got[0];
    assert_eq!(m["attempt"], 1);
    assert_eq!(m["event"]["data"], "m1");
    assert_eq!(m["event"]["specversion"], "1.0");
    let first_ack = m["ack_id"].as_str().unwrap().to_owned();
    let id = m["event"]["id"].as_str().unwrap().to_owned();

    // Not acked: invisible for the visibility timeout, then delivered again.
    assert!(pull(10, "0s").is_empty());
    let again = pull(10, "5s");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["event"]["id"], id.as_str());
    assert_eq!(again[0]["attempt"], 2);
    // The expired lease's ack id no longer works; the new one does, once.
    let stale = post_json(
        &admin_url(&s, "/v1/subscriptions/pullers/ack"),
        &serde_json::json!({ "ack_ids": [first_ack] }),
    );
    assert_eq!(stale.json()["results"][0]["ok"], false, "{}", stale.text());
    // Extend, then nack with a delay, then ack.
    let ack_id = again[0]["ack_id"].as_str().unwrap().to_owned();
    let ext = post_json(
        &admin_url(&s, "/v1/subscriptions/pullers/extend"),
        &serde_json::json!({ "ack_ids": [ack_id], "by": "3s" }),
    );
    assert_eq!(ext.json()["results"][0]["ok"], true, "{}", ext.text());
    std::thread::sleep(Duration::from_millis(1200)); // past the original 1 s visibility
    assert!(pull(10, "0s").is_empty(), "an extended lease stays invisible");
    let nack = post_json(
        &admin_url(&s, "/v1/subscriptions/pullers/nack"),
        &serde_json::json!({ "ack_ids": [ack_id], "delay": "200ms" }),
    );
    assert_eq!(nack.json()["results"][0]["ok"], true);
    let third = pull(10, "5s");
    assert_eq!(third.len(), 1);
    assert_eq!(third[0]["attempt"], 3);
    let ack = post_json(
        &admin_url(&s, "/v1/subscriptions/pullers/ack"),
        &serde_json::json!({ "ack_ids": [third[0]["ack_id"]] }),
    );
    assert_eq!(ack.json()["results"][0]["ok"], true);
    assert!(pull(10, "1500ms").is_empty(), "an acked message never comes back");
    let sub = subscription(&s, "pullers");
    assert_eq!(sub["pending"], 0, "{sub}");
    assert_eq!(sub["delivered"], 1, "{sub}");
    // Pulling a push subscription is refused.
    let out = curl(&[&admin_url(&s, "/v1/subscriptions/nope/messages")]);
    assert_eq!(out.status, 404);
}

#[test]
fn a_pulled_message_whose_attempts_run_out_is_dead_lettered() {
    let worker = Mock::start(Behavior::text("unused"));
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.pullers]
topic = "orders"
deliver = {{ pull = true }}
dead_letter = "dead"
visibility_timeout = "300ms"
retry = {{ max_attempts = 2, initial = "10ms", max = "20ms" }}
"#
        ),
    ));
    assert_eq!(publish(&s.url("web", "/orders"), "doomed", &[]).status, 202);
    for _ in 0..2 {
        let v = get_json(&admin_url(&s, "/v1/subscriptions/pullers/messages?max=1&wait=5s"));
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
    }
    let dlq = wait_for(Duration::from_secs(10), "dead letter", || {
        let v = get_json(&admin_url(&s, "/v1/subscriptions/pullers/dlq"));
        (v["dead_letters"].as_array().map(Vec::len) == Some(1)).then_some(v)
    });
    assert_eq!(dlq["dead_letters"][0]["last_error"], "visibility timeout expired");
}

#[test]
fn idempotent_publish_answers_with_the_original() {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.jobs]
topic = "orders"
deliver = {{ upstream = "worker" }}
dead_letter = "dead"
"#
        ),
    ));
    let url = s.url("web", "/orders");
    let first = publish(&url, "pay 10", &["idempotency-key: pay-123"]);
    assert_eq!(first.status, 202);
    assert_eq!(first.header("idempotency-replayed"), None);
    let again = publish(&url, "pay 10", &["idempotency-key: pay-123"]);
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.json(), first.json(), "the original id, partition and offset");
    // A client-given ce-id de-duplicates too; through the admin API as well.
    let a = publish(&url, "x", &["ce-id: evt-1"]);
    let b = publish(&admin_url(&s, "/v1/topics/orders/messages"), "x", &["ce-id: evt-1"]);
    assert_eq!(a.json()["id"], "evt-1");
    assert_eq!(b.json(), a.json());
    assert_eq!(b.header("idempotency-replayed"), Some("true"));
    // Concurrent repeats store one message.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                publish(&url, "burst", &["idempotency-key: burst-1"]).json()["id"].clone()
            })
        })
        .collect();
    let burst: HashSet<String> =
        handles.into_iter().map(|h| h.join().unwrap().as_str().unwrap().to_owned()).collect();
    assert_eq!(burst.len(), 1, "{burst:?}");
    let reqs = worker.wait(Duration::from_secs(10), "three distinct messages", |r| r.len() >= 3);
    std::thread::sleep(Duration::from_millis(300)); // would-be duplicates would arrive now
    assert_eq!(worker.count(), 3, "{:?}", ids(&reqs));
    let topics = get_json(&admin_url(&s, "/v1/topics/orders"));
    assert_eq!(topics["messages"], 3, "{topics}");
}

#[test]
fn a_restart_keeps_cursors_leases_and_dedup_keys() {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let text = config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.jobs]
topic = "orders"
deliver = {{ upstream = "worker" }}
dead_letter = "dead"
[subscription.pullers]
topic = "orders"
deliver = {{ pull = true }}
dead_letter = "dead"
visibility_timeout = "1m"
"#
        ),
    );
    let s = Sumun::start(&text);
    for i in 0..5 {
        assert_eq!(
            publish(&s.url("web", "/orders"), &format!("m{i}"), &[&format!("idempotency-key: k{i}")]).status,
            202
        );
    }
    worker.wait(Duration::from_secs(10), "five deliveries", |r| r.len() >= 5);
    let pulled = get_json(&admin_url(&s, "/v1/subscriptions/pullers/messages?max=2&wait=5s"));
    let leased: Vec<String> = pulled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(leased.len(), 2);
    s.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(s.stderr.wait_line(Duration::from_secs(15), |l| l.contains("topics closed")).is_some());
    drop(s);

    let s = Sumun::start(&text);
    // Push: nothing delivered again; a new message goes out.
    assert_eq!(publish(&s.url("web", "/orders"), "m5", &[]).status, 202);
    worker.wait(Duration::from_secs(10), "the sixth delivery", |r| r.len() >= 6);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(worker.count(), 6, "{:?}", ids(&worker.requests()));
    // Pull: the two leases survived (their ack ids still work); the other four come now.
    let ack =
        post_json(&admin_url(&s, "/v1/subscriptions/pullers/ack"), &serde_json::json!({ "ack_ids": leased }));
    assert_eq!(
        ack.json()["results"].as_array().unwrap().iter().filter(|r| r["ok"] == true).count(),
        2,
        "{}",
        ack.text()
    );
    let rest = get_json(&admin_url(&s, "/v1/subscriptions/pullers/messages?max=10&wait=5s"));
    let datas: HashSet<String> = rest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"]["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(datas.len(), 4, "{rest}");
    // Dedup keys too.
    let again = publish(&s.url("web", "/orders"), "m0", &["idempotency-key: k0"]);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
}

#[test]
fn retention_deletes_old_segments() {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        r#"
[topic.logs]
segment_bytes = "4KiB"
retention = { bytes = "8KiB" }
[[route]]
match = { path = "/logs" }
to = { topic = "logs" }
"#,
    ));
    let body = "x".repeat(1000);
    for _ in 0..40 {
        assert_eq!(publish(&s.url("web", "/logs"), &body, &[]).status, 202);
    }
    let dir = data.path().join("bus/topics/logs/0");
    let segments = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")))
            .count()
    };
    // Upkeep runs every 2 s: it may first run while the publishes go on, so wait for the end
    // state: the oldest segments deleted, a few recent ones kept.
    let t = wait_for(Duration::from_secs(20), "retention to delete segments", || {
        let v = get_json(&admin_url(&s, "/v1/topics/logs"));
        (v["partitions"][0]["start_offset"].as_u64().unwrap_or(0) > 0 && segments() <= 4).then_some(v)
    });
    let p = &t["partitions"][0];
    assert_eq!(p["end_offset"], 40, "{t}");
    assert!(p["start_offset"].as_u64().unwrap() >= 20, "at most ~8 KiB of 40 KiB kept: {t}");
    // The oldest messages are gone from the API too.
    let gone = curl(&[&admin_url(&s, "/v1/topics/logs/partitions/0/messages/0")]);
    assert_eq!(gone.status, 404);
}

/// Publishes as fast as `workers` concurrent connections allow until `stop`, recording the
/// body of every message that got a 202 by its id.
fn load(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, String>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                block_on(async move {
                    let client =
                        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                            .build_http::<http_body_util::Full<bytes::Bytes>>();
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let body = format!("w{w}-n{n}-{}", "p".repeat(200 + (n % 50) as usize));
                        let req = http::Request::post(&url)
                            .header("content-type", "text/plain")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                            .unwrap();
                        let res = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await;
                        let Ok(Ok(res)) = res else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        if res.status() != 202 {
                            continue;
                        }
                        let Ok((_, bytes, _)) =
                            tokio::time::timeout(Duration::from_secs(5), common::client::collect(res)).await
                        else {
                            continue;
                        };
                        // A 202 whose body we could not read still counts: the message is stored.
                        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                            if let Some(id) = v["id"].as_str() {
                                acked.lock().unwrap().insert(id.to_owned(), body);
                            }
                        }
                    }
                })
            })
        })
        .collect()
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    crash_loop(6);
}

/// The crash test: publish under load, `kill -9` at random moments `kills` times, restart,
/// and check every 202'd message was delivered (with its exact body) and nothing was dropped
/// as corrupt. `bench/bus-crash.sh` runs it with many more kills.
fn crash_loop(kills: usize) {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let text = config(
        data.path(),
        worker.endpoint(),
        r#"
[topic.jobs]
partitions = 2
[topic.dead]
[subscription.workers]
topic = "jobs"
deliver = { upstream = "worker" }
dead_letter = "dead"
concurrency = 16
[[route]]
match = { path = "/jobs" }
to = { topic = "jobs" }
"#,
    );
    let kills = std::env::var("SUMUN_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(kills);
    let acked = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    for round in 0..kills {
        let s = Sumun::start(&text);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = load(s.url("web", "/jobs"), 4, stop.clone(), acked.clone());
        // A random moment: somewhere in 150..650 ms of load.
        std::thread::sleep(Duration::from_millis(150 + (round as u64 * 7919 + 13) % 500));
        s.signal(nix::sys::signal::Signal::SIGKILL);
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        drop(s);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the load got only {} messages through", acked.len());
    let s = Sumun::start(&text);
    let reqs = worker.wait(Duration::from_secs(120), "every acknowledged message delivered", |r| {
        let got: HashSet<&str> = r.iter().filter(|r| r.finished).filter_map(|r| r.header("ce-id")).collect();
        acked.keys().all(|id| got.contains(id.as_str()))
    });
    for r in reqs.iter().filter(|r| r.finished) {
        let Some(id) = r.header("ce-id") else { continue };
        if let Some(body) = acked.get(id) {
            assert_eq!(String::from_utf8_lossy(&r.body), *body, "message {id} arrived altered");
        }
    }
    let sub = wait_for(Duration::from_secs(30), "the backlog drained", || {
        let v = subscription(&s, "workers");
        (v["lag"]["messages"] == 0).then_some(v)
    });
    assert_eq!(sub["dropped"], 0, "no record may be skipped as corrupt or lost: {sub}");
    eprintln!("crash loop: {kills} kills, {} acknowledged messages, {} deliveries", acked.len(), reqs.len());
}

#[test]
fn real_peers_verify_the_signature_and_parse_the_cloudevent() {
    // A Python worker: standardwebhooks verifies the signature, the cloudevents SDK parses the
    // binary-mode event; it prints one JSON line per request and answers 204 or 400.
    let dir = data_dir();
    let script = dir.path().join("worker.py");
    std::fs::write(&script, PY_WORKER).unwrap();
    let port_file = dir.path().join("port");
    let mut py = Command::new("python3")
        .arg(&script)
        .arg(&port_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .env("WEBHOOK_SECRET", SECRET)
        .spawn()
        .expect("python3");
    let port = wait_for(Duration::from_secs(20), "the python worker", || {
        std::fs::read_to_string(&port_file).ok().filter(|p| p.ends_with('\n')).map(|p| p.trim().to_owned())
    });
    let lines = common::sumun::Lines::from_reader(py.stdout.take().unwrap());
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        &format!("127.0.0.1:{port}"),
        &format!(
            r#"{ORDERS}
[subscription.py]
topic = "orders"
deliver = {{ upstream = "worker", path = "/hook" }}
dead_letter = "dead"
signing_secret = "file:{}"
retry = {{ max_attempts = 1 }}
"#,
            write_secret(data.path()).display()
        ),
    ));
    let out = publish(
        &s.url("web", "/orders"),
        r#"{"total":12.5,"items":["a","b"]}"#,
        &[
            "content-type: application/json",
            "ce-type: com.example.order.paid",
            "ce-subject: order-9",
            "x-order-id: 9",
        ],
    );
    assert_eq!(out.status, 202);
    let id = out.json()["id"].as_str().unwrap().to_owned();
    let line = lines
        .wait_json(Duration::from_secs(20), |v| v["webhook_id"] == id.as_str())
        .unwrap_or_else(|| panic!("the python worker saw no delivery: {:?}", lines.all()));
    let _ = py.kill();
    let _ = py.wait();
    assert_eq!(line["signature_ok"], true, "{line}");
    assert_eq!(line["cloudevent"]["id"], id.as_str(), "{line}");
    assert_eq!(line["cloudevent"]["type"], "com.example.order.paid");
    assert_eq!(line["cloudevent"]["source"], "/orders");
    assert_eq!(line["cloudevent"]["subject"], "order-9");
    assert_eq!(line["cloudevent"]["specversion"], "1.0");
    assert_eq!(line["cloudevent"]["partitionkey"], "9");
    assert_eq!(line["cloudevent"]["data"]["total"], 12.5);
    assert_eq!(line["tampered_rejected"], true, "{line}");
    let sub = wait_for(Duration::from_secs(5), "delivered", || {
        let v = subscription(&s, "py");
        (v["delivered"] == 1).then_some(v)
    });
    assert_eq!(sub["failures"], 0);
}

const PY_WORKER: &str = r#"
import json, sys, http.server
import standardwebhooks
from cloudevents.v1.http import from_http

wh = standardwebhooks.Webhook(__import__("os").environ["WEBHOOK_SECRET"])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        out = {"webhook_id": headers.get("webhook-id")}
        try:
            wh.verify(body, headers)
            out["signature_ok"] = True
        except Exception as e:
            out["signature_ok"] = False
            out["signature_error"] = str(e)
        try:
            wh.verify(body + b" ", headers)
            out["tampered_rejected"] = False
        except Exception:
            out["tampered_rejected"] = True
        try:
            event = from_http(headers, body)
            attrs = dict(event.get_attributes())
            attrs["data"] = event.data
            out["cloudevent"] = attrs
        except Exception as e:
            out["cloudevent_error"] = repr(e)
        print(json.dumps(out, default=str), flush=True)
        ok = out["signature_ok"] and "cloudevent" in out
        self.send_response(204 if ok else 400)
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(f"{server.server_address[1]}\n")
server.serve_forever()
"#;

#[test]
fn a_reload_opens_new_topics_and_keeps_the_running_ones() {
    let worker = Mock::start(Behavior::text("ok"));
    let data = data_dir();
    let sub = r#"
[subscription.jobs]
topic = "orders"
deliver = { upstream = "worker", path = "/v1" }
dead_letter = "dead"
"#;
    let first = config(data.path(), worker.endpoint(), &format!("{ORDERS}{sub}"));
    let s = Sumun::start(&first);
    assert_eq!(publish(&s.url("web", "/orders"), "before", &[]).status, 202);
    worker.wait(Duration::from_secs(10), "the first delivery", |r| r.len() == 1);

    // Add a topic with its route, and move the subscription's deliveries to another path.
    let second = config(
        data.path(),
        worker.endpoint(),
        &format!(
            "{ORDERS}{}\n[topic.audit]\n[[route]]\nmatch = {{ path = \"/audit\" }}\nto = {{ topic = \"audit\" }}\n",
            sub.replace("/v1", "/v2")
        ),
    );
    let before = s.stderr.all().len();
    std::fs::write(s.config_path(), &second).unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the reload", || {
        let lines = s.stderr.all();
        lines[before.min(lines.len())..].iter().any(|l| l.contains("configuration reloaded")).then_some(())
    });
    let audit = publish(&s.url("web", "/audit"), "new topic", &[]);
    assert_eq!(audit.status, 202, "{}", audit.text());
    assert_eq!(audit.json()["topic"], "audit");
    assert_eq!(publish(&s.url("web", "/orders"), "after", &[]).status, 202);
    // Recorded at the head: wait for the bodies too.
    let reqs = worker.wait_finished(2, Duration::from_secs(10));
    assert_eq!(reqs[1].path, "/v2", "the restarted subscription uses its new settings");
    assert_eq!(reqs[1].body, b"after");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(worker.count(), 2, "the restart did not deliver the first message again");
    let topics = get_json(&admin_url(&s, "/v1/topics"));
    let names: Vec<&str> =
        topics["topics"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["audit", "dead", "orders"]);
}

#[test]
fn a_route_exposes_a_pull_subscription() {
    let worker = Mock::start(Behavior::text("unused"));
    let data = data_dir();
    let s = Sumun::start(&config(
        data.path(),
        worker.endpoint(),
        &format!(
            r#"{ORDERS}
[subscription.pullers]
topic = "orders"
deliver = {{ pull = true }}
dead_letter = "dead"
[[route]]
name = "queue"
match = {{ path_prefix = "/queues/pullers" }}
to = {{ subscription = "pullers" }}
"#
        ),
    ));
    assert_eq!(publish(&s.url("web", "/orders"), "via route", &["content-type: text/plain"]).status, 202);
    let out = curl(&[&s.url("web", "/queues/pullers/messages?max=5&wait=5s")]);
    assert_eq!(out.status, 200, "{}", out.text());
    let v = out.json();
    assert_eq!(v["messages"][0]["event"]["data"], "via route", "{v}");
    let ack_id = v["messages"][0]["ack_id"].clone();
    let ack = post_json(&s.url("web", "/queues/pullers/ack"), &serde_json::json!({ "ack_ids": [ack_id] }));
    assert_eq!(ack.status, 200, "{}", ack.text());
    assert_eq!(ack.json()["results"][0]["ok"], true);
    let wrong = curl(&["-X", "POST", &s.url("web", "/queues/pullers/messages")]);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET"));
    assert_problem(&curl(&[&s.url("web", "/queues/pullers/other")]), 404);
    let bad = post_json(&s.url("web", "/queues/pullers/nack"), &serde_json::json!({ "ids": [] }));
    assert_eq!(bad.status, 400, "{}", bad.text());
    let sub = subscription(&s, "pullers");
    assert_eq!((sub["delivered"].as_u64(), sub["pending"].as_u64()), (Some(1), Some(0)), "{sub}");
}

/// A small tmpfs, unmounted on drop: a real ENOSPC. Root only (the sandbox and CI are root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = data_dir();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_answers_507_and_the_topic_stays_readable() {
    let Some(fs) = Tmpfs::mount("4m") else {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(!root, "running as root but could not mount a tmpfs");
        eprintln!("skipping: not root, cannot mount a small tmpfs");
        return;
    };
    let worker = Mock::start(Behavior::text("unused"));
    let s = Sumun::start(&config(
        fs.0.path(),
        worker.endpoint(),
        r#"
[topic.big]
segment_bytes = "256KiB"
[topic.dead]
[subscription.readers]
topic = "big"
deliver = { pull = true }
dead_letter = "dead"
[[route]]
match = { path = "/big" }
to = { topic = "big" }
"#,
    ));
    let body = "y".repeat(60 * 1024);
    let mut stored = 0;
    let full = loop {
        let out = publish(&s.url("web", "/big"), &body, &[]);
        match out.status {
            202 => stored += 1,
            507 => break out,
            other => panic!("unexpected {other}: {}", out.text()),
        }
        assert!(stored < 200, "4 MiB never filled up");
    };
    assert!(stored > 10, "only {stored} messages fit");
    let v = assert_problem(&full, 507);
    assert!(v["detail"].as_str().unwrap().contains("full"), "{v}");
    assert!(full.header("retry-after").is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n > 0)));
    // Nothing half written: what was acknowledged is readable, and still served.
    let first = get_json(&admin_url(&s, "/v1/topics/big/partitions/0/messages/0"));
    assert_eq!(first["event"]["data"].as_str().map(str::len), Some(body.len()));
    let t = get_json(&admin_url(&s, "/v1/topics/big"));
    assert_eq!(t["partitions"][0]["end_offset"], stored, "{t}");
    let pulled = get_json(&admin_url(&s, "/v1/subscriptions/readers/messages?max=5&wait=5s"));
    assert_eq!(pulled["messages"].as_array().map(Vec::len), Some(5), "reads go on when the disk is full");
    // Still full: still a 507, never a silent drop.
    assert_eq!(publish(&s.url("web", "/big"), &body, &[]).status, 507);
    drop(s);
}
