//! Proxying to upstreams: header hygiene, forwarding headers, Via and loops, rewrites,
//! header edits, unix sockets, request ids and the access log; plus the non-upstream
//! targets (respond, redirect, echo).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(10);

/// One listener, one upstream `up` at `endpoint`, one catch-all route to it.
fn proxy_config(endpoint: &str, listener_extra: &str, route_extra: &str) -> String {
    cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"
@LEXTRA@

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
@REXTRA@
"#,
        &[("UP", endpoint), ("LEXTRA", listener_extra), ("REXTRA", route_extra)],
    )
}

#[test]
fn respond_target() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "teapot"
match = { path = "/tea" }
to = { respond = { status = 418, body = "short and stout", headers = { "content-type" = "text/plain", "x-kind" = "teapot" } } }
"#,
    );
    let out = curl(&[&s.url("web", "/tea")]);
    assert_eq!(out.status, 418);
    assert_eq!(out.text(), "short and stout");
    assert_eq!(out.header("content-type"), Some("text/plain"));
    assert_eq!(out.header("x-kind"), Some("teapot"));
    assert_eq!(out.header("content-length"), Some("15"));
    assert!(out.header("x-request-id").is_some());
}

#[test]
fn redirect_target() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "short"
match = { path = "/old" }
to = { redirect = "https://example.com/new" }

[[route]]
name = "full"
match = { path = "/moved" }
to = { redirect = { location = "/elsewhere", status = 301 } }
"#,
    );
    let out = curl(&[&s.url("web", "/old")]);
    assert_eq!(out.status, 308, "default redirect status");
    assert_eq!(out.header("location"), Some("https://example.com/new"));
    let out = curl(&[&s.url("web", "/moved")]);
    assert_eq!(out.status, 301);
    assert_eq!(out.header("location"), Some("/elsewhere"));
}

#[test]
fn echo_target() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "echo"
match = { path_prefix = "/echo" }
to = { echo = true }
"#,
    );
    let out = curl(&[
        "-X",
        "PUT",
        "-H",
        "X-Thing: one",
        "--data-binary",
        "hello world",
        "--path-as-is",
        &s.url("web", "/echo/./a/../b?x=1"),
    ]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.header("content-type"), Some("application/json"));
    let v = out.json();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/echo/b");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["body_length"], 11);
    assert_eq!(v["headers"]["x-thing"], "one");
    assert_eq!(v["headers"]["content-length"], "11");
}

#[test]
fn request_hop_by_hop_headers_are_stripped() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let out = curl(&[
        "-H",
        "Connection: x-secret, x-other",
        "-H",
        "X-Secret: 1",
        "-H",
        "X-Other: 2",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "TE: gzip",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Proxy-Authorization: Basic dXNlcjpwYXNz",
        "-H",
        "X-Kept: yes",
        &s.url("web", "/hop"),
    ]);
    assert_eq!(out.status, 200, "{}", out.text());
    let got = mock.only();
    for h in [
        "connection",
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!got.has(h), "upstream received hop-by-hop `{h}`: {:?}", got.headers);
    }
    assert_eq!(got.header("x-kept"), Some("yes"));
}

#[test]
fn response_hop_by_hop_headers_are_stripped() {
    let mock = Mock::start(
        Behavior::text("ok")
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"inner\"")
            .header("x-public", "1"),
    );
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let out = curl(&[&s.url("web", "/")]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert!(out.header("x-internal").is_none(), "{:?}", out.headers);
    assert!(out.header("keep-alive").is_none(), "{:?}", out.headers);
    assert!(out.header("proxy-authenticate").is_none(), "{:?}", out.headers);
    for c in out.header_all("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-internal"), "upstream Connection leaked: {c}");
    }
    assert_eq!(out.header("x-public"), Some("1"));
    assert_eq!(out.text(), "ok");
}

#[test]
fn forwarding_headers_replace_client_values_by_default() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let host = s.addr("web").to_string();
    let out = curl(&[
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Host: evil.example",
        "-H",
        "Forwarded: for=6.6.6.6;proto=https",
        &s.url("web", "/fw"),
    ]);
    assert_eq!(out.status, 200);
    let got = mock.only();
    assert_eq!(got.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(got.header_all("x-forwarded-host"), vec![host.clone()]);
    assert_eq!(got.header_all("forwarded"), vec![format!("for=127.0.0.1;host=\"{host}\";proto=http")]);
    assert_eq!(got.header_all("via"), vec!["1.1 sumun"]);
    assert_eq!(got.header("host"), Some(host.as_str()), "Host is kept");
    // Our Via goes back to the client too.
    assert_eq!(out.header_all("via"), vec!["1.1 sumun"]);
}

#[test]
fn forwarding_headers_are_appended_when_trusted() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "trust_forwarded = true", ""));
    let host = s.addr("web").to_string();
    let out = curl(&[
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "Forwarded: for=6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        &s.url("web", "/fw"),
    ]);
    assert_eq!(out.status, 200);
    let got = mock.only();
    assert_eq!(got.header_all("x-forwarded-for"), vec!["6.6.6.6, 127.0.0.1"]);
    assert_eq!(
        got.header_all("forwarded"),
        vec![format!("for=6.6.6.6, for=127.0.0.1;host=\"{host}\";proto=http")]
    );
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["https"], "kept when trusted");
}

#[test]
fn via_loop_is_508() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    for via in ["1.1 sumun", "1.0 other, 1.1 SUMUN", "2 sumun"] {
        let out = curl(&["-H", &format!("Via: {via}"), &s.url("web", "/")]);
        assert_problem(&out, 508);
    }
    // A foreign Via is fine and gets ours appended.
    let out = curl(&["-H", "Via: 1.1 other-proxy", &s.url("web", "/")]);
    assert_eq!(out.status, 200);
    let reqs = mock.wait_finished(1, T);
    assert_eq!(reqs.len(), 1, "looping requests must never reach the upstream");
    assert_eq!(reqs[0].header_all("via"), vec!["1.1 other-proxy, 1.1 sumun"]);
}

#[test]
fn via_pseudonym_is_configurable() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&format!("via = \"edge-1\"\n{}", proxy_config(mock.endpoint(), "", "")));
    let out = curl(&[&s.url("web", "/")]);
    assert_eq!(out.status, 200);
    assert_eq!(out.header_all("via"), vec!["1.1 edge-1"]);
    let got = mock.only();
    assert_eq!(got.header_all("via"), vec!["1.1 edge-1"]);
    // "sumun" is no longer our name: not a loop.
    let out = curl(&["-H", "Via: 1.1 sumun", &s.url("web", "/")]);
    assert_eq!(out.status, 200);
    let reqs = mock.wait_finished(2, T);
    assert_eq!(reqs[1].header_all("via"), vec!["1.1 sumun, 1.1 edge-1"]);
    let out = curl(&["-H", "Via: 1.1 edge-1", &s.url("web", "/")]);
    assert_problem(&out, 508);
}

#[test]
fn rewrite_strip_prefix_and_path() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "strip"
match = { path_prefix = "/svc" }
to = { upstream = "up" }
rewrite = { strip_prefix = "/svc" }

[[route]]
name = "fixed"
match = { path_prefix = "/old" }
to = { upstream = "up" }
rewrite = { path = "/new/place" }
"#,
        &[("UP", mock.endpoint())],
    ));
    let cases = [
        ("/svc/users?q=1", "/users?q=1"),
        ("/svc", "/"),
        ("/svc/", "/"),
        ("/old/x/y?a=b", "/new/place?a=b"),
        ("/old", "/new/place"),
    ];
    for (i, (from, to)) in cases.iter().enumerate() {
        let out = curl(&[&s.url("web", from)]);
        assert_eq!(out.status, 200, "{from}");
        let reqs = mock.wait_finished(i + 1, T);
        assert_eq!(reqs[i].path_and_query, *to, "{from}");
    }
}

#[test]
fn request_and_response_header_edits() {
    let mock = Mock::start(
        Behavior::text("ok").header("x-resp-set", "orig").header("x-resp-add", "orig").header("x-drop", "1"),
    );
    let s = Sumun::start(&proxy_config(
        mock.endpoint(),
        "",
        r#"headers = { request = { set = { "x-set" = "s" }, add = { "x-add" = "a" }, remove = ["x-remove"] }, response = { set = { "x-resp-set" = "s" }, add = { "x-resp-add" = "a" }, remove = ["x-drop"] } }"#,
    ));
    let out = curl(&["-H", "X-Set: orig", "-H", "X-Add: orig", "-H", "X-Remove: 1", &s.url("web", "/h")]);
    assert_eq!(out.status, 200, "{}", out.text());
    let got = mock.only();
    assert_eq!(got.header_all("x-set"), vec!["s"]);
    assert_eq!(got.header_all("x-add"), vec!["orig", "a"]);
    assert!(!got.has("x-remove"));
    assert_eq!(out.header_all("x-resp-set"), vec!["s"]);
    assert_eq!(out.header_all("x-resp-add"), vec!["orig", "a"]);
    assert!(out.header("x-drop").is_none());
}

#[test]
fn response_header_edits_apply_to_respond_targets() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "r"
match = { path = "/" }
to = { respond = { status = 200, body = "x", headers = { "x-drop" = "1" } } }
headers = { response = { set = { "x-frame-options" = "DENY" }, remove = ["x-drop"] } }
"#,
    );
    let out = curl(&[&s.url("web", "/")]);
    assert_eq!(out.header("x-frame-options"), Some("DENY"));
    assert!(out.header("x-drop").is_none());
}

#[test]
fn unix_socket_listener() {
    let mock = Mock::start(Behavior::text("via unix listener"));
    let s = Sumun::start(&cfg(
        r#"
[listener.sock]
bind = "unix:@DIR@/in.sock"

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "echo"
match = { path_prefix = "/echo" }
to = { echo = true }

[[route]]
name = "up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
        &[("UP", mock.endpoint())],
    ));
    let path = s.unix_path("sock");
    assert!(path.ends_with("in.sock"));
    let p = path.to_str().unwrap();
    let out = curl(&["--unix-socket", p, "http://localhost/echo/x"]);
    assert_eq!(out.status, 200, "{} {}", out.stderr, out.text());
    assert_eq!(out.json()["path"], "/echo/x");
    assert_eq!(out.json()["listener"], "sock");
    let out = curl(&["--unix-socket", p, "http://localhost/up"]);
    assert_eq!(out.status, 200);
    assert_eq!(out.text(), "via unix listener");
    let got = mock.only();
    // A unix-socket client has no IP: no made-up X-Forwarded-For.
    assert!(!got.has("x-forwarded-for"), "{:?}", got.headers);
    assert_eq!(got.header("forwarded"), Some("for=unknown;host=\"localhost\";proto=http"));
}

#[test]
fn unix_socket_upstream() {
    let mock = Mock::unix(Behavior::text("from unix upstream"));
    assert!(mock.endpoint().starts_with("unix:/"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let out = curl(&["-H", "Host: svc.internal", &s.url("web", "/u?x=1")]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.text(), "from unix upstream");
    let got = mock.only();
    assert_eq!(got.path_and_query, "/u?x=1");
    assert_eq!(got.header("host"), Some("svc.internal"), "Host passes through");
    let log = s.access_log(&out.request_id(), T);
    assert_eq!(log["upstream"], mock.endpoint());
}

#[test]
fn client_request_id_is_propagated_and_echoed() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let out = curl(&["-H", "X-Request-Id: abc-123.x", &s.url("web", "/")]);
    assert_eq!(out.status, 200);
    assert_eq!(out.header_all("x-request-id"), vec!["abc-123.x"]);
    let got = mock.only();
    assert_eq!(got.header_all("x-request-id"), vec!["abc-123.x"]);
}

#[test]
fn request_id_is_generated_when_absent_and_sent_upstream() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let a = curl(&[&s.url("web", "/")]);
    let b = curl(&[&s.url("web", "/")]);
    let (ida, idb) = (a.request_id(), b.request_id());
    assert!(!ida.is_empty() && ida != idb, "ids are unique: {ida} {idb}");
    let reqs = mock.wait_finished(2, T);
    assert_eq!(reqs[0].header_all("x-request-id"), vec![ida], "the upstream gets the id the client sees");
}

#[test]
fn unacceptable_request_id_is_replaced_everywhere() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let junk = "x".repeat(200);
    let out = curl(&["-H", &format!("X-Request-Id: {junk}"), &s.url("web", "/")]);
    assert_eq!(out.status, 200);
    let id = out.request_id();
    assert_ne!(id, junk, "an over-long id is not kept");
    let got = mock.only();
    assert_eq!(
        got.header_all("x-request-id"),
        vec![id],
        "the upstream gets the replacement, not the refused id"
    );
}

#[test]
fn access_log_line_for_a_proxied_request() {
    let mock = Mock::start(Behavior::text("0123456789"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let out = curl(&["--data-binary", "hello", &s.url("web", "/logged?x=1")]);
    assert_eq!(out.status, 200);
    let id = out.request_id();
    let v = s.access_log(&id, T);
    assert_eq!(v["listener"], "web");
    assert_eq!(v["route"], "to-up");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/logged");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["bytes_in"], 5);
    assert_eq!(v["bytes_out"], 10);
    assert_eq!(v["upstream"], mock.endpoint());
    assert_eq!(v["request_id"], id.as_str());
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
    assert!(v["time"].as_str().is_some_and(|t| t.contains('T')), "{v}");
    assert!(v.get("error").is_none_or(|e| e.is_null()), "{v}");
}

#[test]
fn access_log_counts_a_chunked_upload() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "", ""));
    let body = "x".repeat(20_000);
    let out = curl(&["-H", "Transfer-Encoding: chunked", "--data-binary", &body, &s.url("web", "/upload")]);
    assert_eq!(out.status, 200);
    assert_eq!(mock.only().body_len, 20_000);
    let v = s.access_log(&out.request_id(), T);
    assert_eq!(v["bytes_in"], 20_000, "{v}");
}

#[test]
fn access_log_records_unrouted_requests() {
    let s = Sumun::start(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "only"
match = { path = "/only" }
to = { respond = { status = 204 } }
"#,
    );
    let out = curl(&[&s.url("web", "/missing")]);
    assert_eq!(out.status, 404);
    let v = s.access_log(&out.request_id(), T);
    assert_eq!(v["status"], 404);
    assert!(v["route"].is_null(), "{v}");
    assert_eq!(v["error"], "no_route");
    assert!(v["upstream"].is_null(), "{v}");
}
