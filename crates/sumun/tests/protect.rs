//! The protection pipeline's own pieces: the passport header no client can forge (on every
//! route, protected or not), IP allow/deny lists, per-route body limits, and the client
//! address behind a trusted proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(10);

fn gateway(up: &str) -> Sumun {
    Sumun::start(&cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[listener.edge]
bind = "127.0.0.1:0"
trust_forwarded = true

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "open"
match = { path_prefix = "/open" }
to = { upstream = "up" }

[[route]]
name = "internal"
match = { path_prefix = "/internal" }
to = { echo = true }
ip = { allow = ["10.0.0.0/8", "127.0.0.0/8"], deny = ["127.0.0.2"] }

[[route]]
name = "small"
match = { path_prefix = "/small" }
to = { echo = true }
max_body = "1KiB"

[[route]]
name = "only-tens"
match = { path_prefix = "/tens" }
to = { echo = true }
ip = { allow = ["10.0.0.0/8"] }
"#,
        &[("UP", up)],
    ))
}

#[test]
fn a_client_cannot_send_a_passport_even_where_no_auth_is_configured() {
    let up = Mock::start(Behavior::text("ok"));
    let s = gateway(up.endpoint());
    let out = curl(&["-H", "x-sumun-passport: forged.token.here", &s.url("web", "/open/x")]);
    assert_eq!(out.status, 200);
    let r = up.only();
    assert!(!r.has("x-sumun-passport"), "the forged passport reached the upstream");
}

#[test]
fn ip_lists_admit_deny_and_explain() {
    let s = gateway("127.0.0.1:9");
    let ok = curl(&[&s.url("web", "/internal/a")]);
    assert_eq!(ok.status, 200);
    // 127.0.0.2 is inside the allowed 127/8 but denied by name: deny wins.
    let web = s.addr("web");
    let denied = curl(&["--interface", "127.0.0.2", &format!("http://127.0.0.1:{}/internal/a", web.port())]);
    let p = assert_problem(&denied, 403);
    assert!(p["detail"].as_str().unwrap().contains("client address"), "{p}");
    let line = s.access_log(&denied.request_id(), T);
    assert_eq!(line["error"], "ip_denied");
    // Loopback is not in 10/8.
    assert_problem(&curl(&[&s.url("web", "/tens/a")]), 403);
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_filtered() {
    let s = gateway("127.0.0.1:9");
    // The trusted proxy in front says the client is 10.9.8.7: admitted by the 10/8 list.
    let out = curl(&["-H", "x-forwarded-for: 192.0.2.1, 10.9.8.7", &s.url("edge", "/tens/a")]);
    assert_eq!(out.status, 200, "{}", out.text());
    // The last entry is the one the trusted proxy wrote; an earlier one is the client's claim.
    let out = curl(&["-H", "x-forwarded-for: 10.9.8.7, 192.0.2.1", &s.url("edge", "/tens/a")]);
    assert_problem(&out, 403);
    // A listener that does not trust forwarding fields ignores them.
    let out = curl(&["-H", "x-forwarded-for: 10.9.8.7", &s.url("web", "/tens/a")]);
    assert_problem(&out, 403);
}

#[test]
fn a_route_body_limit_overrides_the_listener() {
    let s = gateway("127.0.0.1:9");
    let small = "x".repeat(1000);
    let ok = curl(&["--data-binary", &small, &s.url("web", "/small")]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_length"], 1000);
    // Declared too large: refused before reading.
    let big = "x".repeat(2000);
    assert_problem(&curl(&["--data-binary", &big, &s.url("web", "/small")]), 413);
    // Chunked (undeclared) and too large: refused while streaming.
    let chunked = curl(&["-H", "transfer-encoding: chunked", "--data-binary", &big, &s.url("web", "/small")]);
    assert_problem(&chunked, 413);
    // Other routes keep the listener's (larger) limit.
    assert_eq!(curl(&["--data-binary", &big, &s.url("web", "/internal/x")]).status, 200);
}
