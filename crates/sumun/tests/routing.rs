//! Routing: file order, every matcher, no-route answers, path normalization.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// A respond route whose body is its name.
fn respond(name: &str, matcher: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nmatch = {matcher}\nto = {{ respond = {{ status = 200, body = \"{name}\" }} }}\n\n"
    )
}

fn gateway(routes: &[(&str, &str)]) -> Sumun {
    let mut c = String::from("[listener.web]\nbind = \"127.0.0.1:0\"\n\n");
    for (name, m) in routes {
        c.push_str(&respond(name, m));
    }
    Sumun::start(&c)
}

/// GET `path` with extra curl args; returns (status, body).
fn hit(s: &Sumun, path: &str, extra: &[&str]) -> (u16, String) {
    let url = s.url("web", path);
    let mut args: Vec<&str> = extra.to_vec();
    args.push("--path-as-is");
    args.push(&url);
    let out = curl(&args);
    assert_eq!(out.code, 0, "curl failed: {}", out.stderr);
    (out.status, out.text())
}

fn routed(s: &Sumun, path: &str, extra: &[&str]) -> String {
    let (status, body) = hit(s, path, extra);
    if status == 404 {
        return "404".into();
    }
    assert_eq!(status, 200, "{path} {extra:?}: {body}");
    body
}

#[test]
fn first_match_wins_in_file_order() {
    let s = gateway(&[
        ("broad", r#"{ path_prefix = "/a" }"#),
        ("narrow", r#"{ path = "/a/b" }"#),
        ("exact-first", r#"{ path = "/c/x" }"#),
        ("prefix-after", r#"{ path_prefix = "/c" }"#),
    ]);
    // The broader route comes first, so it shadows the exact one.
    assert_eq!(routed(&s, "/a/b", &[]), "broad");
    assert_eq!(routed(&s, "/c/x", &[]), "exact-first");
    assert_eq!(routed(&s, "/c/y", &[]), "prefix-after");
    assert_eq!(routed(&s, "/c", &[]), "prefix-after");
}

#[test]
fn host_exact_wildcard_and_port() {
    let s = gateway(&[
        ("exact", r#"{ host = "api.example.com" }"#),
        ("wild", r#"{ host = "*.example.com" }"#),
        ("port8443", r#"{ host = "ports.test:8443" }"#),
        ("anyport", r#"{ host = "ports.test" }"#),
    ]);
    let h = |v: &str| format!("Host: {v}");
    assert_eq!(routed(&s, "/", &["-H", &h("api.example.com")]), "exact");
    assert_eq!(routed(&s, "/", &["-H", &h("API.Example.COM")]), "exact");
    assert_eq!(routed(&s, "/", &["-H", &h("api.example.com:9999")]), "exact");
    assert_eq!(routed(&s, "/", &["-H", &h("www.example.com")]), "wild");
    assert_eq!(routed(&s, "/", &["-H", &h("a.b.example.com")]), "wild");
    assert_eq!(routed(&s, "/", &["-H", &h("example.com")]), "404");
    assert_eq!(routed(&s, "/", &["-H", &h("badexample.com")]), "404");
    assert_eq!(routed(&s, "/", &["-H", &h("ports.test:8443")]), "port8443");
    assert_eq!(routed(&s, "/", &["-H", &h("ports.test:9000")]), "anyport");
    assert_eq!(routed(&s, "/", &["-H", &h("ports.test")]), "anyport");
    assert_eq!(routed(&s, "/", &["-H", &h("other.test")]), "404");
}

#[test]
fn path_exact_prefix_and_regex() {
    let s = gateway(&[
        ("exact", r#"{ path = "/exact" }"#),
        ("api", r#"{ path_prefix = "/api" }"#),
        ("slash", r#"{ path_prefix = "/dir/" }"#),
        ("regex", r#"{ path_regex = "/items/[0-9]+" }"#),
    ]);
    assert_eq!(routed(&s, "/exact", &[]), "exact");
    assert_eq!(routed(&s, "/exact/", &[]), "404");
    assert_eq!(routed(&s, "/exactly", &[]), "404");
    assert_eq!(routed(&s, "/exact?q=1", &[]), "exact", "query is not part of the path");
    assert_eq!(routed(&s, "/api", &[]), "api");
    assert_eq!(routed(&s, "/api/", &[]), "api");
    assert_eq!(routed(&s, "/api/x/y", &[]), "api");
    assert_eq!(routed(&s, "/apix", &[]), "404", "prefix is segment-aware");
    assert_eq!(routed(&s, "/dir/x", &[]), "slash");
    assert_eq!(routed(&s, "/dir", &[]), "slash");
    assert_eq!(routed(&s, "/dirx", &[]), "404");
    assert_eq!(routed(&s, "/items/42", &[]), "regex");
    assert_eq!(routed(&s, "/items/42/x", &[]), "404", "regex must match the whole path");
    assert_eq!(routed(&s, "/x/items/42", &[]), "404", "regex must match the whole path");
    assert_eq!(routed(&s, "/items/abc", &[]), "404");
}

#[test]
fn methods_matcher() {
    let s = gateway(&[
        ("write", r#"{ path = "/r", methods = ["POST", "put"] }"#),
        ("other", r#"{ path = "/r" }"#),
    ]);
    assert_eq!(routed(&s, "/r", &["-X", "POST"]), "write");
    assert_eq!(routed(&s, "/r", &["-X", "PUT"]), "write");
    assert_eq!(routed(&s, "/r", &[]), "other");
    assert_eq!(routed(&s, "/r", &["-X", "DELETE"]), "other");
}

#[test]
fn header_matcher_exact_and_presence() {
    let s = gateway(&[
        ("canary", r#"{ headers = { "x-canary" = "true" } }"#),
        ("debug", r#"{ headers = { "X-Debug" = true } }"#),
        ("fallback", r#"{ path_prefix = "/" }"#),
    ]);
    assert_eq!(routed(&s, "/", &["-H", "X-Canary: true"]), "canary");
    assert_eq!(routed(&s, "/", &["-H", "x-canary: false"]), "fallback");
    assert_eq!(routed(&s, "/", &["-H", "X-Canary: TRUE"]), "fallback", "values are exact");
    assert_eq!(routed(&s, "/", &["-H", "X-Debug: anything"]), "debug");
    assert_eq!(routed(&s, "/", &["-H", "X-Debug;"]), "debug", "an empty value is present");
    assert_eq!(routed(&s, "/", &[]), "fallback");
}

#[test]
fn version_matcher_three_ways() {
    let s = gateway(&[("v2", r#"{ version = "2" }"#), ("fallback", r#"{ path_prefix = "/" }"#)]);
    assert_eq!(routed(&s, "/api/v2/users", &[]), "v2");
    assert_eq!(routed(&s, "/v2", &[]), "v2");
    assert_eq!(routed(&s, "/api/v20/users", &[]), "fallback");
    assert_eq!(routed(&s, "/api/users", &[]), "fallback");
    assert_eq!(routed(&s, "/api/users", &["-H", "Accept: application/vnd.acme.v2+json"]), "v2");
    assert_eq!(
        routed(&s, "/api/users", &["-H", "Accept: text/html, application/vnd.acme.v2+json;q=0.9"]),
        "v2"
    );
    assert_eq!(routed(&s, "/api/users", &["-H", "Accept: application/vnd.acme.v3+json"]), "fallback");
    assert_eq!(routed(&s, "/api/users", &["-H", "X-API-Version: 2"]), "v2");
    assert_eq!(routed(&s, "/api/users", &["-H", "X-API-Version: 3"]), "fallback");
}

#[test]
fn route_listeners_restriction() {
    let s = Sumun::start(
        r#"
[listener.a]
bind = "127.0.0.1:0"

[listener.b]
bind = "127.0.0.1:0"

[[route]]
name = "only-b"
listeners = ["b"]
match = { path = "/x" }
to = { respond = { status = 200, body = "only-b" } }

[[route]]
name = "any"
match = { path = "/x" }
to = { respond = { status = 200, body = "any" } }
"#,
    );
    let a = curl(&[&s.url("a", "/x")]);
    let b = curl(&[&s.url("b", "/x")]);
    assert_eq!(a.text(), "any");
    assert_eq!(b.text(), "only-b");
}

#[test]
fn no_route_is_404_problem_json() {
    let s = gateway(&[("only", r#"{ path = "/only" }"#)]);
    let out = curl(&[&s.url("web", "/nowhere")]);
    let v = assert_problem(&out, 404);
    assert_eq!(v["title"], "Not Found");
}

#[test]
fn dot_segments_are_normalized_for_routing_and_forwarding() {
    let mock = Mock::start(Behavior::text("public"));
    let s = Sumun::start(&cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.pub]
endpoints = ["@UP@"]

[[route]]
name = "admin"
match = { path_prefix = "/admin" }
to = { respond = { status = 403, body = "admin" } }

[[route]]
name = "public"
match = { path_prefix = "/public" }
to = { upstream = "pub" }
"#,
        &[("UP", mock.endpoint())],
    ));
    let out = curl(&["--path-as-is", &s.url("web", "/admin/../public/x?q=1")]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.text(), "public");
    let got = mock.only();
    assert_eq!(got.path_and_query, "/public/x?q=1", "upstream gets the normalized path");

    // Dot segments the other way must land on the admin route, never upstream.
    let out = curl(&["--path-as-is", &s.url("web", "/public/../admin")]);
    assert_eq!(out.status, 403);
    assert_eq!(out.text(), "admin");

    let out = curl(&["--path-as-is", &s.url("web", "//public//./y/")]);
    assert_eq!(out.status, 200);
    let reqs = mock.wait_finished(2, Duration::from_secs(5));
    assert_eq!(reqs[1].path, "/public/y/");
    // Percent-encoded dots are dot segments too.
    let out = curl(&["--path-as-is", &s.url("web", "/admin/%2e%2e/public/z")]);
    assert_eq!(out.status, 200);
    let reqs = mock.wait_finished(3, Duration::from_secs(5));
    assert_eq!(reqs[2].path, "/public/z");
}

#[test]
fn encoded_slash_traversal_is_400() {
    let mock = Mock::start(Behavior::text("public"));
    let s = Sumun::start(&cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.pub]
endpoints = ["@UP@"]

[[route]]
name = "public"
match = { path_prefix = "/public" }
to = { upstream = "pub" }
"#,
        &[("UP", mock.endpoint())],
    ));
    for path in ["/public%2F..%2Fadmin", "/public%2f..%2fadmin", "/public%5C..%5Cadmin"] {
        let out = curl(&["--path-as-is", &s.url("web", path)]);
        assert_problem(&out, 400);
    }
    // A sentinel proves the mock is reachable; it must be the only request it saw.
    let out = curl(&[&s.url("web", "/public/ok")]);
    assert_eq!(out.status, 200);
    let reqs = mock.wait_finished(1, Duration::from_secs(5));
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].path, "/public/ok");
}
