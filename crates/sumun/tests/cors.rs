//! CORS at the edge, end to end: preflights answered by sumun and never forwarded, refusals
//! without any CORS header, actual responses with the policy's headers in place of the
//! upstream's own and `Vary: Origin` merged in; then the acceptance test in a real browser:
//! headless Chromium (Debian's `/usr/bin/chromium`, driven by playwright-core from
//! `tests/browser/cors.mjs`) calls the API from an allowed origin (it works, and the second
//! identical call sends no new preflight thanks to `Access-Control-Max-Age`) and from another
//! origin (the fetch fails, and the request never reaches the API).
//!
//! Needs `curl`, and for the browser test `/usr/bin/chromium`, `node` and the npm packages of
//! `tests/browser` (scripts/test installs all three).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

const CORS_HEADERS: [&str; 7] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-private-network",
];

fn assert_no_cors_headers(out: &CurlOut, what: &str) {
    for h in CORS_HEADERS {
        assert_eq!(out.header(h), None, "{what}: `{h}` present; headers: {:?}", out.headers);
    }
}

/// A preflight with curl: `OPTIONS` with `Origin`, `Access-Control-Request-Method` and, when
/// given, `Access-Control-Request-Headers`.
fn preflight(url: &str, origin: &str, method: &str, headers: Option<&str>) -> CurlOut {
    let origin = format!("origin: {origin}");
    let method = format!("access-control-request-method: {method}");
    let mut args = vec!["-X", "OPTIONS", "-H", &origin, "-H", &method];
    let req_headers;
    if let Some(h) = headers {
        req_headers = format!("access-control-request-headers: {h}");
        args.extend(["-H", &req_headers]);
    }
    args.push(url);
    curl(&args)
}

fn admin_metrics(s: &Sumun) -> String {
    curl(&[&format!("http://{}/metrics", s.admin_addr().expect("admin listener"))]).text()
}

/// Waits until `/metrics` shows `series` with exactly `value`.
fn wait_metric(s: &Sumun, series: &str, value: u64) {
    let want = format!("{series} {value}");
    wait_for(T, &want, || {
        let m = admin_metrics(s);
        m.lines().any(|l| l == want).then_some(())
    });
}

/// The upstream sends CORS headers of its own (a permissive `*` with credentials, which the
/// policy must override) and a `Vary` sumun must keep.
fn sloppy_upstream() -> Mock {
    Mock::start(
        Behavior::text(r#"{"ok":true}"#)
            .header("content-type", "application/json")
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-credentials", "true")
            .header("access-control-expose-headers", "x-secret")
            .header("vary", "Accept-Encoding"),
    )
}

const API_CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[upstream.api]
endpoints = ["@UP@"]

[cors.app]
allow_origins = ["https://app.example.com", "https://*.example.org", "http://localhost:3000"]
allow_methods = ["GET", "POST", "PUT", "DELETE"]
allow_headers = ["content-type", "authorization", "x-custom"]
expose_headers = ["x-request-id", "x-total"]
allow_credentials = true
max_age = "10m"

[cors.public]
allow_origins = ["*"]
allow_headers = ["*"]
max_age = "1h"

[[route]]
name = "api"
match = { path_prefix = "/api" }
to = { upstream = "api" }
cors = "app"

[[route]]
name = "public"
match = { path_prefix = "/public" }
to = { upstream = "api" }
cors = "public"

[[route]]
name = "plain"
match = { path_prefix = "/plain" }
to = { upstream = "api" }
"#;

#[test]
fn preflights_are_answered_at_the_edge_and_never_forwarded() {
    let up = sloppy_upstream();
    let s = Sumun::start(&cfg(API_CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/api/orders");

    let out = preflight(&url, "https://app.example.com", "PUT", Some("content-type,x-custom"));
    assert_eq!(out.status, 204, "{:?}", out.headers);
    assert_eq!(out.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(out.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(out.header("access-control-allow-methods"), Some("GET, POST, PUT, DELETE"));
    assert_eq!(out.header("access-control-allow-headers"), Some("content-type, authorization, x-custom"));
    assert_eq!(out.header("access-control-max-age"), Some("600"));
    assert_eq!(
        out.header("vary"),
        Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
    );
    assert!(out.body.is_empty());

    // Wildcard subdomains, case and default ports do not matter; the origin is echoed as sent.
    for origin in ["https://a.b.example.org", "HTTPS://App.Example.com:443", "http://localhost:3000"] {
        let out = preflight(&url, origin, "DELETE", None);
        assert_eq!(out.status, 204, "{origin}");
        assert_eq!(out.header("access-control-allow-origin"), Some(origin));
    }

    // Refused: another origin, a look-alike, null, a method or a header not listed. A 403 with
    // no CORS header at all, which fails the preflight in any browser.
    for (origin, method, headers) in [
        ("https://evil.example.net", "PUT", None),
        ("https://example.org", "PUT", None),
        ("https://app.example.com.evil.net", "PUT", None),
        ("http://app.example.com", "PUT", None),
        ("http://localhost:3001", "PUT", None),
        ("null", "PUT", None),
        ("https://app.example.com", "PATCH", None),
        ("https://app.example.com", "PUT", Some("content-type, x-not-listed")),
    ] {
        let out = preflight(&url, origin, method, headers);
        assert_eq!(out.status, 403, "{origin} {method} {headers:?}");
        assert_no_cors_headers(&out, &format!("refused preflight from {origin} {method} {headers:?}"));
        assert_eq!(out.header("content-type"), Some("application/problem+json"));
    }

    // None of those reached the upstream.
    assert_eq!(up.count(), 0, "a preflight was forwarded: {:?}", up.requests());

    // An OPTIONS without Access-Control-Request-Method is no preflight: it goes upstream, and
    // comes back with the policy's headers.
    let out = curl(&["-X", "OPTIONS", "-H", "origin: https://app.example.com", &url]);
    assert_eq!(out.status, 200);
    assert_eq!(up.wait(T, "plain OPTIONS forwarded", |r| r.len() == 1)[0].method, "OPTIONS");
    assert_eq!(out.header("access-control-allow-origin"), Some("https://app.example.com"));

    // Preflights to a route without a policy are the upstream's business.
    let out = preflight(&s.url("web", "/plain/x"), "https://app.example.com", "PUT", None);
    assert_eq!(out.status, 200);
    up.wait(T, "preflight forwarded on a route without CORS", |r| r.len() == 2);
    assert_eq!(out.header("access-control-allow-origin"), Some("*"), "the upstream's own answer");

    wait_metric(&s, r#"sumun_cors_preflights_total{policy="app",result="allowed"}"#, 4);
    wait_metric(&s, r#"sumun_cors_preflights_total{policy="app",result="rejected"}"#, 8);
}

#[test]
fn actual_responses_carry_the_policy_not_the_upstream() {
    let up = sloppy_upstream();
    let s = Sumun::start(&cfg(API_CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/api/orders");

    // Allowed origin: the origin echoed with credentials and the exposed headers; the
    // upstream's `*` and `x-secret` are gone; Vary keeps the upstream's value and adds Origin.
    let out = curl(&["-H", "origin: https://app.example.com", "-H", "content-type: application/json", &url]);
    assert_eq!(out.status, 200);
    assert_eq!(out.header_all("access-control-allow-origin"), ["https://app.example.com"]);
    assert_eq!(out.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(out.header("access-control-expose-headers"), Some("x-request-id, x-total"));
    let vary: Vec<String> = out
        .header_all("vary")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(vary, ["accept-encoding", "origin"], "{:?}", out.headers);
    assert_eq!(out.text(), r#"{"ok":true}"#);
    // The request went upstream with its Origin.
    assert_eq!(up.requests()[0].header("origin"), Some("https://app.example.com"));

    // Another origin, a null origin, no origin: no CORS header at all (the upstream's
    // permissive answer included), and still Vary: Origin for caches.
    for origin in [Some("https://evil.example.net"), Some("null"), None] {
        let h = origin.map(|o| format!("origin: {o}"));
        let mut args: Vec<&str> = Vec::new();
        if let Some(h) = &h {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let out = curl(&args);
        assert_eq!(out.status, 200, "{origin:?}");
        assert_no_cors_headers(&out, &format!("actual request from {origin:?}"));
        assert!(
            out.header_all("vary").iter().any(|v| v.to_ascii_lowercase().contains("origin")),
            "{origin:?}: {:?}",
            out.headers
        );
    }

    // A route without a policy leaves the upstream's headers alone.
    let out = curl(&["-H", "origin: https://evil.example.net", &s.url("web", "/plain/x")]);
    assert_eq!(out.header("access-control-allow-origin"), Some("*"));
    assert_eq!(out.header("access-control-expose-headers"), Some("x-secret"));
}

#[test]
fn star_policy_answers_star_without_credentials() {
    let up = sloppy_upstream();
    let s = Sumun::start(&cfg(API_CONFIG, &[("UP", up.endpoint())]));
    let url = s.url("web", "/public/feed");

    let out = preflight(&url, "https://anyone.test", "GET", Some("x-a, x-b"));
    assert_eq!(out.status, 204);
    assert_eq!(out.header("access-control-allow-origin"), Some("*"));
    assert_eq!(out.header("access-control-allow-headers"), Some("*"));
    assert_eq!(out.header("access-control-allow-methods"), Some("GET, HEAD, POST"), "the default methods");
    assert_eq!(out.header("access-control-max-age"), Some("3600"));
    assert_eq!(out.header("access-control-allow-credentials"), None);
    // `*` does not cover Authorization: it is named.
    let out = preflight(&url, "https://anyone.test", "GET", Some("authorization"));
    assert_eq!(out.header("access-control-allow-headers"), Some("*, authorization"));

    let out = curl(&["-H", "origin: https://anyone.test", &url]);
    assert_eq!(out.status, 200);
    assert_eq!(out.header_all("access-control-allow-origin"), ["*"]);
    assert_eq!(
        out.header("access-control-allow-credentials"),
        None,
        "the upstream's credentials flag is dropped"
    );
    assert_eq!(up.count(), 1, "only the actual request went upstream");
    wait_metric(&s, r#"sumun_cors_preflights_total{policy="public",result="allowed"}"#, 2);
}

#[test]
fn credentials_with_star_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sumun.toml");
    std::fs::write(
        &path,
        r#"
[listener.web]
bind = "127.0.0.1:0"

[cors.bad]
allow_origins = ["*"]
allow_credentials = true

[[route]]
match = { path_prefix = "/" }
to = { echo = true }
cors = "bad"
"#,
    )
    .unwrap();
    let out = Command::new(common::sumun::binary()).arg("check").arg("-c").arg(&path).output().unwrap();
    assert!(!out.status.success(), "check accepted `*` with credentials");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("allow_credentials"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------------

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) with the command that installs what is missing.
fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it with `apt-get install -y chromium` (scripts/test does)"
    );
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(node_ok, "`node` is missing: install Node.js and npm (scripts/test does)");
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in {} (scripts/test does)",
        browser_dir().display()
    );
}

/// Runs the driver on these page URLs; its JSON result.
fn run_chromium(pages: &[String]) -> Value {
    let out = Command::new("node")
        .arg(browser_dir().join("cors.mjs"))
        .args(["--calls", "2"])
        .args(pages)
        .current_dir(browser_dir())
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "the Chromium driver failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("driver output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// A loopback port free right now, for the one address the config must name before sumun
/// binds it (the allowed origin).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The page both page listeners serve. `callApi()` sets a cookie on its host (shared by
/// every port of 127.0.0.1) and makes a credentialed, non-simple call (PUT, JSON, a custom
/// header) to the API named in its query string, so the browser must preflight.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>sumun cors</title>
<script>
window.callApi = async () => {
  const api = new URLSearchParams(location.search).get("api");
  document.cookie = "sid=s3cr3t; path=/";
  try {
    const r = await fetch(api, {
      method: "PUT",
      headers: { "content-type": "application/json", "x-custom": "1" },
      credentials: "include",
      body: JSON.stringify({ hello: "world" }),
      signal: AbortSignal.timeout(10000),
    });
    return { ok: true, status: r.status, body: await r.text(), requestId: r.headers.get("x-request-id") };
  } catch (e) {
    return { ok: false, error: `${e.name}: ${e.message}` };
  }
};
</script>
"#;

const BROWSER_CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"

# Three origins on one machine: the page's port is the allowed origin, `evil` serves the same
# page on another port (another origin), `api` is the cross-origin API.
[listener.site]
bind = "127.0.0.1:@SITE_PORT@"

[listener.evil]
bind = "127.0.0.1:0"

[listener.api]
bind = "127.0.0.1:0"

[cors.app]
allow_origins = ["http://127.0.0.1:@SITE_PORT@"]
allow_methods = ["GET", "POST", "PUT"]
allow_headers = ["content-type", "x-custom"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m"

[[route]]
name = "page"
listeners = ["site", "evil"]
match = { path = "/page.html" }
to = { respond = { status = 200, body = '''@PAGE@''', headers = { "content-type" = "text/html; charset=utf-8" } } }

[[route]]
name = "api"
listeners = ["api"]
match = { path_prefix = "/api" }
to = { echo = true }
cors = "app"
"#;

#[test]
fn chromium_calls_the_api_from_the_allowed_origin_only_and_caches_the_preflight() {
    require_browser();
    let site_port = free_port().to_string();
    let s = Sumun::start(&cfg(BROWSER_CONFIG, &[("SITE_PORT", &site_port), ("PAGE", PAGE)]));
    let api = s.url("api", "/api/items");
    let allowed_page = format!("{}?api={api}", s.url("site", "/page.html"));
    let evil_page = format!("{}?api={api}", s.url("evil", "/page.html"));
    let site_origin = format!("http://127.0.0.1:{site_port}");
    let evil_origin = format!("http://{}", s.addr("evil"));

    let result = run_chromium(&[allowed_page, evil_page]);
    let pages = result["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 2, "{result}");

    // The allowed origin: both calls succeed, with credentials (the cookie arrives), the
    // custom header and the exposed header readable.
    assert_eq!(pages[0]["origin"], site_origin.as_str(), "{result}");
    for call in pages[0]["calls"].as_array().unwrap() {
        assert_eq!(call["ok"], true, "the call from the allowed origin failed: {result}");
        assert_eq!(call["status"], 200, "{result}");
        let echo: Value = serde_json::from_str(call["body"].as_str().unwrap()).unwrap();
        assert_eq!(echo["method"], "PUT", "{echo}");
        assert_eq!(echo["headers"]["origin"], site_origin.as_str(), "{echo}");
        assert_eq!(echo["headers"]["x-custom"], "1", "{echo}");
        assert_eq!(echo["headers"]["cookie"], "sid=s3cr3t", "credentials were sent: {echo}");
        assert!(
            call["requestId"].as_str().is_some_and(|id| !id.is_empty()),
            "exposed header unreadable: {result}"
        );
    }

    // The other origin: the fetch fails in the page (the preflight is refused).
    assert_eq!(pages[1]["origin"], evil_origin.as_str(), "{result}");
    for call in pages[1]["calls"].as_array().unwrap() {
        assert_eq!(call["ok"], false, "the call from a disallowed origin succeeded: {result}");
        assert!(call["error"].as_str().unwrap().starts_with("TypeError"), "{result}");
    }

    // What sumun saw, from its access log: for the allowed origin one preflight for two calls
    // (the second reused Chromium's preflight cache), for the other origin a refused
    // preflight per call (browsers do not cache failures) and never the PUT itself.
    let api_lines =
        || -> Vec<Value> { s.stdout.json().into_iter().filter(|v| v["listener"] == "api").collect() };
    let lines = wait_for(T, "3 preflights and 2 PUTs in the access log", || {
        let l = api_lines();
        (l.len() >= 5).then_some(l)
    });
    let count = |method: &str, status: u16| {
        lines
            .iter()
            .filter(|v| v["method"] == method && v["status"] == status && v["path"] == "/api/items")
            .count()
    };
    assert_eq!(count("OPTIONS", 204), 1, "allowed preflights: {lines:#?}");
    assert_eq!(count("PUT", 200), 2, "actual calls: {lines:#?}");
    assert_eq!(count("OPTIONS", 403), 2, "refused preflights: {lines:#?}");
    assert_eq!(lines.len(), 5, "nothing else reached the API: {lines:#?}");
    wait_metric(&s, r#"sumun_cors_preflights_total{policy="app",result="allowed"}"#, 1);
    wait_metric(&s, r#"sumun_cors_preflights_total{policy="app",result="rejected"}"#, 2);
}
