//! Rate limits through the real binary: local buckets, keys, the global limit shared by two
//! instances through a real Redis, and Redis outages (fail open, local fallback, recovery).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::h1_connect;
use common::redis::RedisServer;
use common::*;
use http_body_util::BodyExt;

const T: Duration = Duration::from_secs(10);

fn get(s: &Sumun, path: &str, extra: &[&str]) -> CurlOut {
    let url = s.url("web", path);
    let mut args = extra.to_vec();
    args.push(&url);
    let out = curl(&args);
    assert_eq!(out.code, 0, "curl: {}", out.stderr);
    out
}

fn statuses(s: &Sumun, path: &str, extra: &[&str], n: usize) -> Vec<u16> {
    (0..n).map(|_| get(s, path, extra).status).collect()
}

fn admin_metrics(s: &Sumun) -> String {
    let url = format!("http://{}/metrics", s.admin_addr().expect("admin address"));
    curl(&[&url]).text()
}

/// The value of the sample of `name` whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        labels.iter().all(|(k, v)| head.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

const LOCAL: &str = r#"
[listener.web]
bind = "127.0.0.1:0"

[rate_limit.local]
key = "client_ip"
rate = "1/m"
burst = 3

[[route]]
name = "limited"
match = { path = "/" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "local"
"#;

/// The burst passes with the budget counting down in `RateLimit`; the next request gets a
/// 429 problem with `Retry-After` and both headers, logged as `rate_limited`.
#[test]
fn local_limit_burst_then_429() {
    let s = Sumun::start(LOCAL);
    for r in (0..3).rev() {
        let out = get(&s, "/", &[]);
        assert_eq!(out.status, 200, "{}", out.text());
        assert_eq!(out.header("ratelimit-policy"), Some("\"local\";q=1;w=60"));
        let want = format!("\"local\";r={r};t={}", 60 * (3 - r));
        assert_eq!(out.header("ratelimit"), Some(want.as_str()));
    }
    let out = get(&s, "/", &[]);
    assert_problem(&out, 429);
    let retry: u64 = out.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(out.header("ratelimit-policy"), Some("\"local\";q=1;w=60"));
    let state = out.header("ratelimit").expect("RateLimit on a 429");
    assert!(state.starts_with("\"local\";r=0;t="), "{state}");
    let log = s.access_log(&out.request_id(), T);
    assert_eq!(log["status"], 429);
    assert_eq!(log["error"], "rate_limited", "{log}");
}

/// `key = "client_ip"` behind a trusted proxy: the client is the address that proxy saw (the
/// last `X-Forwarded-For` entry); IPv6 clients count by their /64 unless `ipv6_prefix` says
/// otherwise, so one host cannot rotate through its addresses around the limit.
#[test]
fn client_addresses_behind_a_trusted_proxy_and_ipv6_prefixes() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"
trust_forwarded = true

[rate_limit.by-64]
key = "client_ip"
rate = "1/m"
burst = 2

[rate_limit.by-address]
key = "client_ip"
rate = "1/m"
burst = 2
ipv6_prefix = 128

[[route]]
name = "by-64"
match = { path_prefix = "/a" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "by-64"

[[route]]
name = "by-address"
match = { path_prefix = "/b" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "by-address"
"#,
    );
    let from = |ip: &str| format!("x-forwarded-for: 198.51.100.7, {ip}");
    // Four addresses of one /64 share a budget of two.
    let one_net: Vec<u16> = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3", "2001:db8:1:2::4"]
        .iter()
        .map(|ip| get(&s, "/a", &["-H", &from(ip)]).status)
        .collect();
    assert_eq!(one_net, [200, 200, 429, 429]);
    assert_eq!(statuses(&s, "/a", &["-H", &from("2001:db8:1:3::1")], 3), [200, 200, 429], "the next /64");
    assert_eq!(statuses(&s, "/a", &["-H", &from("203.0.113.9")], 3), [200, 200, 429], "an IPv4 client");
    // With ipv6_prefix = 128 every address is a client of its own.
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        assert_eq!(statuses(&s, "/b", &["-H", &from(ip)], 3), [200, 200, 429], "{ip}");
    }
}

/// `key = "header:x-user"`: each user has a budget of its own; requests without the header
/// share one bucket.
#[test]
fn header_keys_have_separate_budgets() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[rate_limit.per-user]
key = "header:x-user"
rate = "1/m"
burst = 2

[[route]]
name = "api"
match = { path_prefix = "/" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "per-user"
"#,
    );
    assert_eq!(statuses(&s, "/", &["-H", "x-user: alice"], 3), [200, 200, 429]);
    assert_eq!(statuses(&s, "/", &["-H", "x-user: bob"], 3), [200, 200, 429], "bob's own budget");
    assert_eq!(statuses(&s, "/", &[], 3), [200, 200, 429], "no header: one shared bucket");
    assert_eq!(statuses(&s, "/", &["-H", "x-user: alice"], 1), [429], "alice still limited");
}

struct Tally {
    ok: u64,
    limited: u64,
    other: u64,
    elapsed: Duration,
}

/// Sends GET `path` to every address over `conns` HTTP/1.1 connections each, every connection
/// paced at `rps`, for `dur`; counts 200s and 429s.
fn drive(addrs: &[SocketAddr], path: &str, conns: usize, rps: u32, dur: Duration) -> Tally {
    block_on(async {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + dur;
        let mut tasks = Vec::new();
        for &addr in addrs {
            for _ in 0..conns {
                let path = path.to_owned();
                tasks.push(tokio::spawn(async move {
                    let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
                    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let (mut ok, mut limited, mut other) = (0u64, 0u64, 0u64);
                    while tokio::time::Instant::now() < deadline {
                        tick.tick().await;
                        send.ready().await.expect("connection ready");
                        let req = http::Request::get(path.as_str())
                            .header("host", "rl.test")
                            .body(http_body_util::Empty::new())
                            .unwrap();
                        let res = send.send_request(req).await.expect("response");
                        let status = res.status().as_u16();
                        res.into_body().collect().await.expect("body");
                        match status {
                            200 => ok += 1,
                            429 => limited += 1,
                            _ => other += 1,
                        }
                    }
                    (ok, limited, other)
                }));
            }
        }
        let mut t = Tally { ok: 0, limited: 0, other: 0, elapsed: Duration::ZERO };
        for task in tasks {
            let (ok, limited, other) = task.await.unwrap();
            t.ok += ok;
            t.limited += limited;
            t.other += other;
        }
        t.elapsed = start.elapsed();
        t
    })
}

fn global_config(redis: &RedisServer) -> String {
    cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[redis]
url = "@URL@"
timeout = "500ms"
retry_after = "200ms"

[rate_limit.global]
key = "route"
rate = "200/s"
burst = 20
store = "redis"

[[route]]
name = "g"
match = { path = "/g" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "global"
"#,
        &[("URL", &redis.url())],
    )
}

/// Two instances with the same policy on one Redis, both driven far above the limit at once:
/// together they accept the limit (burst + 200/s), within 10%.
#[test]
fn global_limit_is_shared_by_two_instances() {
    let redis = RedisServer::start();
    let config = global_config(&redis);
    let (a, b) = (Sumun::start(&config), Sumun::start(&config));
    // 2 instances × 4 connections × 150/s = 1200/s offered against 200/s (at least twice the
    // limit is required below, so a busy machine still tests the limit).
    let t = drive(&[a.addr("web"), b.addr("web")], "/g", 4, 150, Duration::from_secs(3));
    let secs = t.elapsed.as_secs_f64();
    let expected = 20.0 + 200.0 * secs;
    let offered = (t.ok + t.limited) as f64;
    eprintln!(
        "global limit: {} accepted, {} limited, {} other in {secs:.2} s; expected {expected:.0}",
        t.ok, t.limited, t.other
    );
    assert_eq!(t.other, 0, "only 200 and 429 answers");
    assert!(offered >= 2.0 * expected, "offered load {offered} is not well above the limit {expected:.0}");
    let ratio = t.ok as f64 / expected;
    assert!((0.9..=1.1).contains(&ratio), "accepted {} vs expected {expected:.0} (ratio {ratio:.3})", t.ok);
    let key = redis.command(&["EXISTS", "sumun:rl:global:g"]);
    assert_eq!(key.as_deref(), Some(":1"), "the bucket lives in Redis");
}

/// Redis killed: `fail_open = false` keeps limiting with the local bucket, `fail_open = true`
/// lets everything through; both counted. Redis back on the same port: the global limit
/// applies again.
#[test]
fn redis_outage_falls_back_then_recovers() {
    let mut redis = RedisServer::start();
    let s = Sumun::start(&cfg(
        r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[redis]
url = "@URL@"
timeout = "250ms"
retry_after = "200ms"

[rate_limit.closed]
key = "route"
rate = "1/m"
burst = 3
store = "redis"
fail_open = false

[rate_limit.open]
key = "route"
rate = "1/m"
burst = 3
store = "redis"
fail_open = true

[[route]]
name = "r-closed"
match = { path = "/closed" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "closed"

[[route]]
name = "r-open"
match = { path = "/open" }
to = { respond = { status = 200, body = "ok" } }
rate_limit = "open"
"#,
        &[("URL", &redis.url())],
    ));
    // Redis up: the global buckets.
    assert_eq!(statuses(&s, "/closed", &[], 5), [200, 200, 200, 429, 429]);
    assert_eq!(statuses(&s, "/open", &[], 5), [200, 200, 200, 429, 429]);
    assert_eq!(redis.command(&["EXISTS", "sumun:rl:closed:r-closed"]).as_deref(), Some(":1"));

    redis.kill();
    // fail_open = false: the instance's own bucket (same quota, untouched so far) limits.
    assert_eq!(statuses(&s, "/closed", &[], 6), [200, 200, 200, 429, 429, 429]);
    // fail_open = true: everything passes, with no budget advertised.
    for _ in 0..6 {
        let out = get(&s, "/open", &[]);
        assert_eq!(out.status, 200);
        assert_eq!(out.header("ratelimit"), None);
    }
    let m = admin_metrics(&s);
    let local =
        metric(&m, "sumun_rate_limit_redis_fallback_total", &[("policy", "closed"), ("mode", "local")]);
    let open = metric(&m, "sumun_rate_limit_redis_fallback_total", &[("policy", "open"), ("mode", "open")]);
    assert_eq!(local, Some(6.0), "{m}");
    assert_eq!(open, Some(6.0), "{m}");
    assert!(m.lines().any(|l| l == "sumun_redis_up 0"), "{m}");
    assert!(
        s.stderr.wait_line(T, |l| l.contains("Redis unavailable, using the fallback")).is_some(),
        "the fallback is logged"
    );

    redis.restart();
    // Back (and empty): once sumun's retry delay has passed, the open route is limited by the
    // global bucket again.
    wait_for(T, "the global limit on the open route", || (get(&s, "/open", &[]).status == 429).then_some(()));
    // The closed route uses Redis again: its fresh global bucket, not the exhausted local one.
    assert_eq!(statuses(&s, "/closed", &[], 4), [200, 200, 200, 429]);
    assert_eq!(redis.command(&["EXISTS", "sumun:rl:closed:r-closed"]).as_deref(), Some(":1"));
}
