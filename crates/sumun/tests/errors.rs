//! Upstream failures map to the right status (502/504) with problem+json bodies that leak
//! nothing, and a response that breaks mid-body reaches the client as an aborted response,
//! never as a short success.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::h1_connect;
use common::mock::read_head;
use common::*;
use http::Request;
use http_body_util::BodyExt;

const T: Duration = Duration::from_secs(10);

fn proxy_config(endpoint: &str, timeouts: &str) -> String {
    cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.up]
endpoints = ["@UP@"]
timeouts = @TIMEOUTS@

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
        &[("UP", endpoint), ("TIMEOUTS", timeouts)],
    )
}

const DEFAULT_TIMEOUTS: &str = r#"{ connect = "2s", request = "10s" }"#;

/// A loopback port nobody listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

#[test]
fn connection_refused_is_502() {
    let dead = closed_port();
    let s = Sumun::start(&proxy_config(&dead.to_string(), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/x")]);
    assert_problem(&out, 502);
    assert_no_leak(&out, &[&dead.port().to_string()]);
    let log = s.access_log(&out.request_id(), T);
    assert_eq!(log["status"], 502);
    assert_eq!(log["error"], "connect_failed");
}

#[test]
fn upstream_slower_than_request_timeout_is_504() {
    let mock = Mock::start(Behavior::text("late").delay(Duration::from_secs(5)));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ connect = "2s", request = "400ms" }"#));
    let started = Instant::now();
    let out = curl(&[&s.url("web", "/slow")]);
    let elapsed = started.elapsed();
    assert_problem(&out, 504);
    assert_no_leak(&out, &[mock.endpoint()]);
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "504 after {elapsed:?}, expected about 400ms"
    );
    let log = s.access_log(&out.request_id(), T);
    assert_eq!(log["error"], "upstream_timeout");
}

/// A loopback listener whose accept queue is full, so new connects hang in SYN-SENT. None
/// when the kernel does not behave that way here.
fn unresponsive_listener() -> Option<(socket2::Socket, Vec<TcpStream>, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&bind.into()).ok()?;
    sock.listen(0).ok()?;
    let addr = sock.local_addr().ok()?.as_socket()?;
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Some((sock, fillers, addr));
            }
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn connect_timeout_is_504() {
    let Some((_listener, _fillers, addr)) = unresponsive_listener() else {
        eprintln!("SKIPPED: cannot build a loopback listener that never completes a connect");
        return;
    };
    let s = Sumun::start(&proxy_config(&addr.to_string(), r#"{ connect = "300ms", request = "10s" }"#));
    let started = Instant::now();
    let out = curl(&[&s.url("web", "/")]);
    let elapsed = started.elapsed();
    assert_problem(&out, 504);
    assert_no_leak(&out, &[&addr.port().to_string()]);
    assert!(elapsed < Duration::from_secs(3), "504 after {elapsed:?}");
    let log = s.access_log(&out.request_id(), T);
    assert_eq!(log["error"], "connect_timeout");
}

#[test]
fn upstream_reset_mid_body_with_length_aborts_the_client_response() {
    let mock = Mock::start(
        Behavior::text("")
            .header("content-length", "1048576")
            .payload(Payload::AbortAfter(Bytes::from(vec![b'a'; 100 * 1024]))),
    );
    let s = Sumun::start(&proxy_config(mock.endpoint(), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/reset")]);
    assert_ne!(out.code, 0, "curl saw a complete response (status {}, {} bytes)", out.status, out.body.len());
    assert!(out.body.len() < 1048576);
    let log = s.access_log(&out.request_id(), T);
    assert!(!log["error"].is_null(), "the access log marks the abort: {log}");
}

#[test]
fn upstream_reset_mid_chunked_body_aborts_the_client_response() {
    let mock =
        Mock::start(Behavior::text("").payload(Payload::AbortAfter(Bytes::from(vec![b'a'; 100 * 1024]))));
    let s = Sumun::start(&proxy_config(mock.endpoint(), DEFAULT_TIMEOUTS));
    let addr = s.addr("web");
    let result = block_on(async move {
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get("/reset").header("host", "r").body(http_body_util::Empty::new()).unwrap();
        let res = send.send_request(req).await.expect("response head");
        let status = res.status();
        let body =
            tokio::time::timeout(T, res.into_body().collect()).await.expect("body neither ended nor failed");
        (status, body.map(|c| c.to_bytes().len()))
    });
    match result {
        (_, Err(_)) => {}
        (status, Ok(n)) => panic!("the client got a clean end of body: status {status}, {n} bytes"),
    }
}

#[test]
fn upstream_rst_mid_body_aborts_the_client_response() {
    let raw = RawMock::start(|mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        let _ = s.write_all(&[b'z'; 1000]);
        let _ = s.flush();
        // Let sumun read what was sent, then RST.
        std::thread::sleep(Duration::from_millis(100));
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    });
    let s = Sumun::start(&proxy_config(&raw.endpoint(), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/rst")]);
    assert_ne!(out.code, 0, "curl saw a complete response (status {}, {} bytes)", out.status, out.body.len());
    assert!(out.body.len() < 100000);
}

#[test]
fn upstream_closing_before_answering_is_502() {
    let raw = RawMock::start(|mut s| {
        let _ = read_head(&mut s);
        drop(s);
    });
    let s = Sumun::start(&proxy_config(&raw.endpoint(), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/")]);
    assert_problem(&out, 502);
    assert_no_leak(&out, &[&raw.endpoint()]);
}

#[test]
fn upstream_garbage_is_502() {
    let raw = RawMock::start(|mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    let s = Sumun::start(&proxy_config(&raw.endpoint(), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/")]);
    assert_problem(&out, 502);
    assert_no_leak(&out, &[&raw.endpoint(), "SSH"]);
}

#[test]
fn upstream_error_statuses_pass_through_untouched() {
    let mock = Mock::start(
        Behavior::text("{\"upstream\":\"says no\"}")
            .status(503)
            .header("content-type", "application/json")
            .header("retry-after", "7"),
    );
    let s = Sumun::start(&proxy_config(mock.endpoint(), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/")]);
    assert_eq!(out.status, 503);
    assert_eq!(out.header("content-type"), Some("application/json"));
    assert_eq!(out.header("retry-after"), Some("7"));
    assert_eq!(out.text(), "{\"upstream\":\"says no\"}");
}

#[test]
fn request_timeout_covers_only_the_response_head() {
    let gate = Gate::new();
    let mock = Mock::start(Behavior::text("").payload(Payload::Gated {
        first: Bytes::from_static(b"head-on-time;"),
        gate: gate.clone(),
        rest: Bytes::from_static(b"body-after-the-timeout"),
    }));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ connect = "2s", request = "300ms" }"#));
    let addr = s.addr("web");
    let body = block_on(async move {
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get("/slow-body").header("host", "b").body(http_body_util::Empty::new()).unwrap();
        let res = send.send_request(req).await.expect("response head");
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = tokio::time::timeout(T, body.frame()).await.expect("first chunk").unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().as_ref(), b"head-on-time;");
        // The upstream is slow with the rest of its body: longer than the request timeout.
        tokio::time::sleep(Duration::from_millis(700)).await;
        gate.open();
        let rest = tokio::time::timeout(T, body.collect()).await.expect("rest of body");
        rest.map(|c| c.to_bytes())
    });
    let body = body.expect("the body was cut off by the request timeout");
    assert_eq!(&body[..], b"body-after-the-timeout");
}

#[test]
fn unix_upstream_without_a_listener_is_502() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let s = Sumun::start(&proxy_config(&format!("unix:{}", path.display()), DEFAULT_TIMEOUTS));
    let out = curl(&[&s.url("web", "/")]);
    assert_problem(&out, 502);
    assert_no_leak(&out, &["nobody.sock"]);
}
