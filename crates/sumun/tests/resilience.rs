//! Upstream pools that survive failure, end to end: retries (safe ones only, to another
//! endpoint, within a budget), the circuit breaker, active health checks with slow start on
//! recovery, passive outlier ejection, hashing and sticky balancing, and `/v1/upstreams`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::mock::read_head;
use common::*;

const T: Duration = Duration::from_secs(10);

fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A mock that answers with its own name, so the client sees which endpoint served it.
fn named(name: &str) -> Mock {
    Mock::start(Behavior::text(name))
}

/// A mock whose every answer depends on a switch: 200 with its name when up, `down` status
/// when down (health checks included).
fn switchable(name: &'static str, down_status: u16) -> (Mock, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let m = Mock::start_opts(MockOpts::default(), move |_| {
        if d.load(Ordering::SeqCst) {
            Behavior::text("down").status(down_status)
        } else {
            Behavior::text(name)
        }
    });
    (m, down)
}

fn gateway(upstream: &str, endpoints: &[String]) -> Sumun {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    Sumun::start(&format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[upstream.api]
endpoints = [{}]
{upstream}

[[route]]
name = "api"
to = {{ upstream = "api" }}
"#,
        eps.join(", ")
    ))
}

fn get(s: &Sumun, path: &str) -> CurlOut {
    curl(&[&s.url("web", path)])
}

/// Counts which endpoint answered `n` requests.
fn spread(s: &Sumun, n: usize, extra: &[&str]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let mut args = extra.to_vec();
        let url = s.url("web", "/");
        args.push(&url);
        let out = curl(&args);
        *m.entry(if out.status == 200 { out.text() } else { format!("status {}", out.status) })
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn get_is_retried_on_another_endpoint_after_a_connect_failure() {
    let ok = named("ok");
    let dead = closed_port().to_string();
    let s = gateway(
        r#"balance = "round_robin"
retry = { attempts = 3, on = ["connect_failure"] }"#,
        &[dead, ok.endpoint().to_owned()],
    );
    for _ in 0..10 {
        let out = get(&s, "/");
        assert_eq!((out.status, out.text().as_str()), (200, "ok"));
    }
    assert_eq!(ok.count(), 10);
}

#[test]
fn post_is_not_retried_once_its_body_reached_a_dying_upstream() {
    // Reads the whole request, then drops the connection without answering.
    let dying = RawMock::start(|mut s| {
        let head = read_head(&mut s);
        let text = String::from_utf8_lossy(&head).to_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        let _ = s.read_exact(&mut body);
    });
    let other = named("other");
    let s = gateway(
        r#"balance = "round_robin"
retry = { attempts = 3, on = ["connect_failure", "reset"] }"#,
        &[dying.endpoint(), other.endpoint().to_owned()],
    );
    // Round robin alternates: of four POSTs, those that meet the dying endpoint fail with 502
    // and are never replayed to the other endpoint.
    let mut failed = 0;
    for _ in 0..4 {
        let out = curl(&["-X", "POST", "--data", "payload", &s.url("web", "/orders")]);
        match out.status {
            502 => failed += 1,
            200 => {}
            other => panic!("unexpected status {other}: {}", out.text()),
        }
    }
    assert!(failed >= 1, "no POST reached the dying endpoint");
    assert_eq!(other.count(), 4 - failed, "a POST that reached an upstream must not be replayed");
    assert_eq!(dying.connections(), failed);
    // A GET that meets the same fate is retried on the other endpoint.
    let before = other.count();
    for _ in 0..4 {
        let out = get(&s, "/idempotent");
        assert_eq!(out.status, 200, "{}", out.text());
    }
    assert_eq!(other.count(), before + 4);
}

#[test]
fn retry_budget_caps_attempts_during_a_full_outage() {
    let a = Mock::start(Behavior::text("busy").status(503));
    let b = Mock::start(Behavior::text("busy").status(503));
    let s = gateway(
        r#"retry = { attempts = 3, on = ["503"], budget_percent = 20, min_retries_per_second = 1, backoff = { initial = "1ms", max = "2ms" } }"#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned()],
    );
    let n = 100;
    for _ in 0..n {
        assert_eq!(get(&s, "/").status, 503);
    }
    let attempts = a.count() + b.count();
    // Without a budget this would be 300. 20% of 100 plus the per-second floor over the run.
    assert!(attempts >= n, "every request tried at least once: {attempts}");
    assert!(
        attempts <= n + 20 + 15,
        "retries exceeded the budget: {attempts} upstream attempts for {n} requests"
    );
}

#[test]
fn breaker_opens_fails_fast_half_opens_and_closes() {
    let (m, down) = switchable("up", 500);
    down.store(true, Ordering::SeqCst);
    let s = gateway(
        r#"breaker = { failure_ratio = 0.5, window = "10s", min_requests = 5, open_for = "1s", half_open_probes = 1 }"#,
        &[m.endpoint().to_owned()],
    );
    for _ in 0..5 {
        assert_eq!(get(&s, "/").status, 500);
    }
    // Open: rejected without reaching the upstream, with Retry-After.
    let before = m.count();
    let out = get(&s, "/");
    assert_eq!(out.status, 503, "{}", out.text());
    assert!(out.header("retry-after").is_some(), "Retry-After on a breaker rejection");
    assert_eq!(out.header("content-type"), Some("application/problem+json"));
    assert_eq!(m.count(), before, "an open breaker must not forward");
    // After open_for, a probe goes through; the upstream has recovered, so the breaker closes.
    down.store(false, Ordering::SeqCst);
    wait_for(T, "breaker to half-open and close", || (get(&s, "/").status == 200).then_some(()));
    for _ in 0..5 {
        assert_eq!(get(&s, "/").status, 200);
    }
}

#[test]
fn health_checks_take_a_dead_endpoint_out_and_bring_it_back() {
    let (a, a_down) = switchable("a", 503);
    let b = named("b");
    let s = gateway(
        r#"health = { path = "/healthz", interval = "100ms", timeout = "80ms", healthy = 2, unhealthy = 2 }"#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned()],
    );
    let both = spread(&s, 20, &[]);
    assert!(both.get("a").copied().unwrap_or(0) > 0 && both.get("b").copied().unwrap_or(0) > 0, "{both:?}");

    a_down.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    wait_for(T, "traffic to leave the dead endpoint", || {
        let m = spread(&s, 10, &[]);
        (m.get("b") == Some(&10)).then_some(())
    });
    assert!(t0.elapsed() < Duration::from_secs(5), "left after {:?}", t0.elapsed());

    a_down.store(false, Ordering::SeqCst);
    wait_for(T, "traffic to return after recovery", || {
        let m = spread(&s, 10, &[]);
        m.get("a").is_some_and(|&n| n > 0).then_some(())
    });
}

#[test]
fn passive_ejection_without_active_checks() {
    let (bad, bad_down) = switchable("bad", 500);
    let good = named("good");
    bad_down.store(true, Ordering::SeqCst);
    let s = gateway(
        r#"outlier = { consecutive_5xx = 3, base_ejection = "30s", max_ejected_percent = 50 }"#,
        &[bad.endpoint().to_owned(), good.endpoint().to_owned()],
    );
    // Round robin: every other request hits the bad endpoint until it is ejected.
    for _ in 0..10 {
        get(&s, "/");
    }
    let hits_before = bad.count();
    assert!((3..=5).contains(&hits_before), "ejected after 3 consecutive 5xx: {hits_before}");
    let m = spread(&s, 20, &[]);
    assert_eq!(m.get("good"), Some(&20), "{m:?}");
    assert_eq!(bad.count(), hits_before);
}

#[test]
fn ring_hash_keeps_a_key_on_one_endpoint() {
    let a = named("a");
    let b = named("b");
    let c = named("c");
    let s = gateway(
        r#"balance = "ring_hash"
hash_key = "header:x-user""#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned(), c.endpoint().to_owned()],
    );
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let h = format!("x-user: user-{user}");
        let m = spread(&s, 3, &["-H", &h]);
        assert_eq!(m.len(), 1, "user {user} moved between endpoints: {m:?}");
        owners.extend(m.into_keys());
    }
    assert!(owners.len() >= 2, "30 keys all on one endpoint: {owners:?}");
}

#[test]
fn rendezvous_keeps_a_key_on_one_endpoint() {
    let a = named("a");
    let b = named("b");
    let s = gateway(
        r#"balance = "rendezvous"
hash_key = "query:tenant""#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned()],
    );
    for t in 0..10 {
        let url = s.url("web", &format!("/x?tenant=t{t}"));
        let first = curl(&[&url]).text();
        for _ in 0..3 {
            assert_eq!(curl(&[&url]).text(), first);
        }
    }
}

#[test]
fn sticky_cookie_pins_a_client_to_its_endpoint() {
    let a = named("a");
    let b = named("b");
    let s = gateway(
        r#"sticky = { cookie = "sumun_sticky", ttl = "1h" }"#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned()],
    );
    let first = get(&s, "/");
    let set = first.header("set-cookie").expect("a sticky cookie is set").to_owned();
    assert!(set.starts_with("sumun_sticky=") && set.contains("Max-Age=3600"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let served_by = first.text();
    for _ in 0..10 {
        let out = curl(&["-H", &format!("Cookie: {cookie}"), &s.url("web", "/")]);
        assert_eq!(out.text(), served_by);
    }
}

#[test]
fn least_request_avoids_a_busy_endpoint() {
    let slow = Mock::start(Behavior::text("slow").delay(Duration::from_millis(1500)));
    let fast = named("fast");
    let s =
        gateway(r#"balance = "least_request""#, &[slow.endpoint().to_owned(), fast.endpoint().to_owned()]);
    // Occupy the slow endpoint with requests in flight, then see new requests avoid it. The
    // balancer may send the first ones to the fast endpoint (ties are broken at random), so
    // keep sending until the slow one holds one.
    let url = s.url("web", "/");
    let deadline = std::time::Instant::now() + T;
    let mut busy = Vec::new();
    while slow.try_wait(Duration::from_millis(50), |r| !r.is_empty()).is_none() {
        assert!(std::time::Instant::now() < deadline, "the slow endpoint never got a request");
        let u = url.clone();
        busy.push(std::thread::spawn(move || curl(&[&u])));
    }
    let m = spread(&s, 10, &[]);
    assert!(m.get("fast").copied().unwrap_or(0) >= 9, "{m:?}");
    for h in busy {
        h.join().unwrap();
    }
}

#[test]
fn upstreams_endpoint_reports_live_state() {
    let (a, a_down) = switchable("a", 503);
    let b = named("b");
    let s = gateway(
        r#"health = { path = "/healthz", interval = "100ms", timeout = "80ms", healthy = 1, unhealthy = 1 }"#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned()],
    );
    a_down.store(true, Ordering::SeqCst);
    let admin = s.admin_addr().unwrap();
    let doc = wait_for(T, "endpoint reported unhealthy", || {
        let v = curl(&[&format!("http://{admin}/v1/upstreams")]).json();
        let eps = v["upstreams"][0]["endpoints"].as_array()?.clone();
        eps.iter().any(|e| e["address"] == a.endpoint() && e["healthy"] == false).then_some(v)
    });
    let up = &doc["upstreams"][0];
    assert_eq!(up["name"], "api");
    let eps = up["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    for e in eps {
        for key in ["address", "weight", "healthy", "ejected", "in_flight"] {
            assert!(!e[key].is_null(), "endpoint field {key} missing: {e}");
        }
    }
    for _ in 0..5 {
        get(&s, "/");
    }
    let m = curl(&[&format!("http://{admin}/metrics")]).text();
    // Five requests one after the other: one kept-alive connection to b carried them all.
    let opened = m
        .lines()
        .find(|l| {
            l.starts_with("sumun_upstream_connections_opened_total{")
                && l.contains(&format!("endpoint=\"{}\"", b.endpoint()))
        })
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.to_owned());
    assert_eq!(opened.as_deref(), Some("1"), "{m}");
    for name in [
        "sumun_upstream_endpoint_healthy{",
        "sumun_upstream_endpoint_in_flight{",
        "sumun_upstream_endpoint_request_duration_seconds_bucket{",
        "sumun_upstream_health_checks_total{",
        "sumun_upstream_connections_opened_total{",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn retry_after_on_503_is_honoured_before_retrying() {
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = answered.clone();
    // First answer: 503 with Retry-After: 1; the retry a second later gets 200.
    let m2 = Mock::start_opts(MockOpts::default(), move |_| {
        if a.fetch_add(1, Ordering::SeqCst) == 0 {
            Behavior::text("wait").status(503).header("retry-after", "1")
        } else {
            Behavior::text("ok")
        }
    });
    let s = gateway(
        r#"retry = { attempts = 2, on = ["503"], backoff = { initial = "1ms", max = "5s" } }"#,
        &[m2.endpoint().to_owned()],
    );
    let t0 = Instant::now();
    let out = get(&s, "/");
    assert_eq!((out.status, out.text().as_str()), (200, "ok"));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "retried after {:?}, before Retry-After",
        t0.elapsed()
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2, "one try and one retry");
}

#[test]
fn slow_start_ramps_a_recovered_endpoint_back_in() {
    let (a, a_down) = switchable("a", 503);
    let b = named("b");
    let s = gateway(
        r#"health = { path = "/healthz", interval = "100ms", timeout = "80ms", healthy = 1, unhealthy = 1 }
slow_start = { window = "4s", min_weight = 0.05 }"#,
        &[a.endpoint().to_owned(), b.endpoint().to_owned()],
    );
    let admin = s.admin_addr().unwrap();
    let endpoint_a = |v: &serde_json::Value| {
        v["upstreams"][0]["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["address"] == a.endpoint()).cloned())
    };
    let state = || curl(&[&format!("http://{admin}/v1/upstreams")]).json();
    a_down.store(true, Ordering::SeqCst);
    wait_for(T, "a unhealthy", || endpoint_a(&state()).filter(|e| e["healthy"] == false));
    a_down.store(false, Ordering::SeqCst);
    wait_for(T, "a healthy again", || endpoint_a(&state()).filter(|e| e["healthy"] == true));

    // Early in the window: a small share.
    let early = spread(&s, 40, &[]);
    let early_a = early.get("a").copied().unwrap_or(0);
    assert!(early_a <= 14, "recovered endpoint got {early_a}/40 right after recovery: {early:?}");

    // After the window: its full share again (equal weights → about half).
    wait_for(T, "slow start window over", || {
        endpoint_a(&state()).filter(|e| e["effective_weight"].as_f64() == e["weight"].as_f64())
    });
    let late = spread(&s, 40, &[]);
    let late_a = late.get("a").copied().unwrap_or(0);
    assert!((14..=26).contains(&late_a), "after slow start a got {late_a}/40: {late:?}");
    assert!(late_a > early_a);
}
