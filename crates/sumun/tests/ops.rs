//! Operations: `sumun check` diagnostics in detail, admin metrics, hot reload (broken
//! configs with their location and metric, the file watch, listeners added and removed,
//! requests in flight across a reload), and SIGTERM draining requests in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::sumun::binary()).args(["check", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text.replace(&path.display().to_string(), "FILE"))
}

#[test]
fn check_accepts_the_quickstart() {
    let out = Command::new(common::sumun::binary())
        .args(["check", "-c", concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart.toml")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn check_reports_toml_syntax_error_with_line_and_col() {
    let (code, text) = check("[listener.web]\nbind = \"127.0.0.1:0\n");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FILE:2:"), "{text}");
}

#[test]
fn check_reports_every_unknown_key_with_a_hint() {
    let cfg = "[listener.web]\nbnd = \"127.0.0.1:0\"\n\n[upstream.api]\nendpoints = [\"127.0.0.1:1\"]\nbalanse = \"round_robin\"\n";
    let (code, text) = check(cfg);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FILE:2:1:") && text.contains("`bind`"), "{text}");
    assert!(text.contains("FILE:6:1:") && text.contains("`balance`"), "{text}");
}

#[test]
fn check_reports_bad_duration_and_missing_upstream() {
    let cfg = r#"[listener.web]
bind = "127.0.0.1:0"
limits = { header_timeout = "10 parsecs" }

[upstream.api]
endpoints = ["127.0.0.1:1"]

[[route]]
name = "r"
to = { upstream = "apj" }
"#;
    let (code, text) = check(cfg);
    assert_eq!(code, 1, "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("FILE:")).collect();
    assert!(lines.iter().any(|l| l.starts_with("FILE:3:") && l.contains("10 parsecs")), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("FILE:10:") && l.contains("apj") && l.contains("`api`")),
        "{text}"
    );
}

#[test]
fn check_warns_about_shadowed_routes_but_passes() {
    let cfg = r#"[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "all"
match = { path_prefix = "/" }
to = { echo = true }

[[route]]
name = "never"
match = { path = "/x" }
to = { echo = true }
"#;
    let (code, text) = check(cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("FILE:9:") && text.contains("warning") && text.contains("`never`"), "{text}");
}

fn admin_get(s: &Sumun, path: &str) -> CurlOut {
    let url = format!("http://{}{path}", s.admin_addr().expect("admin address"));
    curl(&[&url])
}

const WITH_ADMIN: &str = r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "hello"
match = { path = "/hello" }
to = { respond = { status = 200, body = "v1" } }
"#;

#[test]
fn admin_metrics_count_requests_by_route_and_status() {
    let s = Sumun::start(WITH_ADMIN);
    assert_eq!(curl(&[&s.url("web", "/hello")]).status, 200);
    assert_eq!(curl(&[&s.url("web", "/nope")]).status, 404);
    // Counters are recorded when a response body ends; poll for them.
    let metrics = wait_for(T, "request metrics", || {
        let m = admin_get(&s, "/metrics").text();
        (m.contains(r#"sumun_requests_total{route="hello",status="200"} 1"#)
            && m.contains(r#"status="404"} 1"#))
        .then_some(m)
    });
    assert!(metrics.contains("sumun_request_duration_seconds_bucket{route=\"hello\""), "{metrics}");
    assert!(metrics.contains("sumun_active_connections{listener=\"web\"}"), "{metrics}");
}

/// Rewrites the config file and sends SIGHUP; waits for the reload outcome in the log.
fn reload(s: &Sumun, config: &str, expect_ok: bool) {
    let before = s.stderr.all().len();
    std::fs::write(s.config_path(), config).unwrap();
    s.signal(Signal::SIGHUP);
    let want = if expect_ok { "configuration reloaded" } else { "configuration rejected" };
    wait_for(T, want, || {
        let lines = s.stderr.all();
        lines[before.min(lines.len())..].iter().any(|l| l.contains(want)).then_some(())
    });
}

#[test]
fn broken_reload_is_logged_with_its_location_and_counted() {
    let s = Sumun::start(WITH_ADMIN);
    reload(&s, &WITH_ADMIN.replace("\"v1\"", "\"v2\""), true);
    assert_eq!(curl(&[&s.url("web", "/hello")]).text(), "v2");

    let broken = WITH_ADMIN.replace("\"v1\"", "\"v3\"").replace("[[route]]", "[[route]]\nbogus_key = 1");
    reload(&s, &broken, false);
    assert!(
        s.stderr.all().iter().any(|l| l.contains("bogus_key") && l.contains("sumun.toml:")),
        "diagnostic with file:line:col logged"
    );
    assert_eq!(curl(&[&s.url("web", "/hello")]).text(), "v2");
    let m = admin_get(&s, "/metrics").text();
    assert!(m.contains(r#"sumun_config_reload_total{result="error"}"#), "{m}");
    assert!(m.contains(r#"sumun_config_reload_total{result="success"}"#), "{m}");
}

#[test]
fn file_watch_reloads_without_a_signal() {
    let s = Sumun::start(WITH_ADMIN);
    assert_eq!(curl(&[&s.url("web", "/hello")]).text(), "v1");
    std::fs::write(s.config_path(), WITH_ADMIN.replace("\"v1\"", "\"watched\"")).unwrap();
    wait_for(T, "file-watch reload", || (curl(&[&s.url("web", "/hello")]).text() == "watched").then_some(()));
}

#[test]
fn reload_opens_and_closes_listeners() {
    let s = Sumun::start(WITH_ADMIN);
    let old = s.addr("web");
    let two = WITH_ADMIN.replace("[[route]]", "[listener.extra]\nbind = \"127.0.0.1:0\"\n\n[[route]]");
    reload(&s, &two, true);
    let line = s
        .stderr
        .wait_json(T, |v| v["message"] == "listening" && v["listener"] == "extra")
        .expect("extra listener bound");
    let extra = line["addr"].as_str().unwrap().to_owned();
    assert_eq!(curl(&[&format!("http://{extra}/hello")]).text(), "v1");

    // Drop the original listener: it stops accepting; the other keeps serving.
    let only_extra = two.replace("[listener.web]\nbind = \"127.0.0.1:0\"\n", "");
    reload(&s, &only_extra, true);
    wait_for(T, "old listener closed", || std::net::TcpStream::connect(old).is_err().then_some(()));
    assert_eq!(curl(&[&format!("http://{extra}/hello")]).text(), "v1");
}

const SLOW: &str = r#"
shutdown_grace = "20s"

[listener.web]
bind = "127.0.0.1:0"

[upstream.slow]
endpoints = ["@UP@"]

[[route]]
name = "slow"
to = { upstream = "slow" }
"#;

#[test]
fn requests_in_flight_survive_a_reload() {
    let mock = Mock::start(Behavior::text("finished").delay(Duration::from_millis(1500)));
    let cfg = cfg(SLOW, &[("UP", mock.endpoint())]);
    let s = Sumun::start(&cfg);
    let url = s.url("web", "/x");
    let inflight = std::thread::spawn(move || curl(&[&url]));
    mock.wait(T, "request reached the upstream", |r| !r.is_empty());
    // The new config answers the route itself; the request in flight keeps its snapshot.
    let next = cfg.replace("to = { upstream = \"slow\" }", "to = { respond = { status = 418 } }");
    reload(&s, &next, true);
    assert_eq!(curl(&[&s.url("web", "/x")]).status, 418);
    let out = inflight.join().unwrap();
    assert_eq!((out.status, out.text().as_str()), (200, "finished"));
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_zero() {
    let mock = Mock::start(Behavior::text("drained").delay(Duration::from_millis(1500)));
    let mut s = Sumun::start(&cfg(SLOW, &[("UP", mock.endpoint())]));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = s.url("web", "/x");
            std::thread::spawn(move || curl(&[&url]))
        })
        .collect();
    mock.wait(T, "all requests reached the upstream", |r| r.len() == 4);
    s.signal(Signal::SIGTERM);
    // New connections are refused once draining starts.
    let addr = s.addr("web");
    wait_for(T, "listener closed", || std::net::TcpStream::connect(addr).is_err().then_some(()));
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!((out.status, out.text().as_str()), (200, "drained"));
    }
    let status = wait_for(T, "process exit", || s.exited());
    assert!(status.success(), "exit status {status:?}");
    assert!(s.stderr.all().iter().any(|l| l.contains("all connections drained")));
}
