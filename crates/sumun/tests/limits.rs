//! Listener limits: header and body sizes, the slowloris header timeout, idle keep-alive
//! connections, and the connection cap (excess connections wait, they are not refused).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::client::{read_response, wait_closed};
use common::*;

const T: Duration = Duration::from_secs(10);

fn proxy_config(endpoint: &str, limits: &str) -> String {
    cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"
limits = @LIMITS@

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "quick"
match = { path = "/quick" }
to = { respond = { status = 200, body = "quick" } }

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
        &[("UP", endpoint), ("LIMITS", limits)],
    )
}

fn body_file(dir: &std::path::Path, name: &str, len: usize) -> String {
    let p = dir.join(name);
    std::fs::write(&p, vec![b'b'; len]).unwrap();
    format!("@{}", p.display())
}

#[test]
fn oversized_header_section_is_431() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ max_header_bytes = "16KiB" }"#));
    let fits = format!("X-Big: {}", "a".repeat(10 * 1024));
    let out = curl(&["-H", &fits, &s.url("web", "/fits")]);
    assert_eq!(out.status, 200, "a 10 KiB header is under the limit");
    let too_big = format!("X-Big: {}", "a".repeat(24 * 1024));
    let out = curl(&["-H", &too_big, &s.url("web", "/too-big")]);
    assert_eq!(out.status, 431, "{}", out.text());
    // Many small fields count too.
    let mut args: Vec<String> = (0..200)
        .map(|i| format!("X-Field-{i}: {}", "v".repeat(100)))
        .flat_map(|h| ["-H".to_owned(), h])
        .collect();
    args.push(s.url("web", "/many"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&args);
    assert_eq!(out.status, 431);
    let reqs = mock.wait_finished(1, T);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/fits");
}

#[test]
fn oversized_body_with_content_length_is_413() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ max_body_bytes = "1KiB" }"#));
    let exact = body_file(s.dir(), "exact", 1024);
    let over = body_file(s.dir(), "over", 1025);
    let out = curl(&["--data-binary", &over, &s.url("web", "/over")]);
    assert_problem(&out, 413);
    let out = curl(&["--data-binary", &exact, &s.url("web", "/exact")]);
    assert_eq!(out.status, 200, "exactly the limit is fine");
    let reqs = mock.wait_finished(1, T);
    assert_eq!(reqs.len(), 1, "the oversized request never reached the upstream");
    assert_eq!(reqs[0].path, "/exact");
    assert_eq!(reqs[0].body_len, 1024);
}

#[test]
fn oversized_chunked_body_is_refused_and_never_completes_upstream() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ max_body_bytes = "1KiB" }"#));
    let over = body_file(s.dir(), "over", 64 * 1024);
    let out =
        curl(&["-H", "Transfer-Encoding: chunked", "--data-binary", &over, &s.url("web", "/chunked-over")]);
    assert!(
        out.status == 413 || (out.code != 0 && out.status == 0),
        "expected 413 or an aborted exchange, got status {} (curl {}): {}",
        out.status,
        out.code,
        out.text()
    );
    if out.status == 413 {
        assert_problem(&out, 413);
    }
    // Whatever reached the upstream must not be a complete request.
    if mock.count() > 0 {
        let reqs = mock.wait(T, "the partial upload to end", |r| r.iter().all(|r| r.finished));
        for r in reqs {
            assert!(!r.complete, "upstream got a complete {} byte request", r.body_len);
            assert!(r.body_len <= 64 * 1024);
        }
    }
    // Under the limit, chunked is fine.
    let small = body_file(s.dir(), "small", 512);
    let out =
        curl(&["-H", "Transfer-Encoding: chunked", "--data-binary", &small, &s.url("web", "/chunked-small")]);
    assert_eq!(out.status, 200, "{}", out.text());
    mock.wait(T, "the small chunked upload", |r| {
        r.iter().any(|r| r.path == "/chunked-small" && r.complete && r.body_len == 512)
    });
}

const SLOW_HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: slow.example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";

/// Trickles a never-ending head one byte per 100 ms; returns how long after the first byte
/// the server hung up, or None if it was still listening after 6 s.
fn trickle_head(c: &mut TcpStream) -> Option<Duration> {
    c.set_nodelay(true).unwrap();
    let started = Instant::now();
    for b in SLOW_HEAD {
        if c.write_all(&[*b]).is_err() {
            return Some(started.elapsed());
        }
        // The client's pace; the read doubles as the pause.
        let (closed, _) = wait_closed(c, Duration::from_millis(100));
        if closed {
            return Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(6) {
            return None;
        }
    }
    None
}

fn assert_cut_after_header_timeout(closed_at: Option<Duration>) {
    let closed_at = closed_at.expect("a client trickling its head was never disconnected");
    assert!(
        closed_at >= Duration::from_millis(800) && closed_at < Duration::from_secs(4),
        "disconnected after {closed_at:?}; header_timeout is 1s"
    );
}

#[test]
fn slowloris_head_is_cut_off_after_header_timeout() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ header_timeout = "1s" }"#));
    let mut c = TcpStream::connect(s.addr("web")).unwrap();
    assert_cut_after_header_timeout(trickle_head(&mut c));
    assert_eq!(mock.count(), 0);
}

#[test]
fn slowloris_on_a_kept_alive_connection_is_cut_off() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ header_timeout = "1s" }"#));
    let mut c = TcpStream::connect(s.addr("web")).unwrap();
    c.write_all(b"GET /quick HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
    let r = read_response(&mut c, T);
    assert_eq!(r.status, Some(200));
    // The second head on the same connection gets the same deadline.
    assert_cut_after_header_timeout(trickle_head(&mut c));
    assert_eq!(mock.count(), 0);
}

#[test]
fn header_timeout_does_not_cut_a_slow_body() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ header_timeout = "1s" }"#));
    let mut c = TcpStream::connect(s.addr("web")).unwrap();
    c.write_all(b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n").unwrap();
    for _ in 0..20 {
        // A slow uploader: 20 bytes over 2 s, longer than header_timeout.
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(b"b").unwrap();
    }
    let r = read_response(&mut c, T);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert_eq!(mock.only().body_len, 20);
}

#[test]
fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ idle_timeout = "1s" }"#));
    let mut c = TcpStream::connect(s.addr("web")).unwrap();
    c.write_all(b"GET /quick HTTP/1.1\r\nHost: idle\r\n\r\n").unwrap();
    let r = read_response(&mut c, T);
    assert_eq!(r.status, Some(200));
    assert!(!r.closed, "keep-alive connection closed right after the response");
    let after_response = Instant::now();
    let (closed, extra) = wait_closed(&mut c, Duration::from_secs(6));
    let idle_for = after_response.elapsed();
    assert!(closed, "idle connection still open after {idle_for:?}");
    assert!(extra.is_empty(), "unexpected bytes: {:?}", String::from_utf8_lossy(&extra));
    assert!(
        idle_for >= Duration::from_millis(800) && idle_for < Duration::from_secs(4),
        "closed after {idle_for:?} of idleness; idle_timeout is 1s"
    );
}

#[test]
fn busy_connection_is_not_closed_by_idle_timeout() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ idle_timeout = "1s" }"#));
    let mut c = TcpStream::connect(s.addr("web")).unwrap();
    // Requests every 300 ms for 2 s: never idle for 1 s.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        c.write_all(b"GET /quick HTTP/1.1\r\nHost: busy\r\n\r\n").unwrap();
        let r = read_response(&mut c, T);
        assert_eq!(r.status, Some(200), "after {:?}: {}", started.elapsed(), r.text());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn connections_over_max_connections_wait_instead_of_being_refused() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), r#"{ max_connections = 2 }"#));
    let addr = s.addr("web");
    let req = b"GET /quick HTTP/1.1\r\nHost: cap\r\n\r\n";
    // Two connections, each proven accepted by a served request, kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(req).unwrap();
        let r = read_response(&mut c, T);
        assert_eq!(r.status, Some(200));
        held.push(c);
    }
    // The third connects (kernel backlog) but is not served while two are open.
    let mut third = TcpStream::connect(addr).expect("the third connection is not refused");
    third.write_all(req).unwrap();
    let early = read_response(&mut third, Duration::from_millis(700));
    assert!(
        early.status.is_none() && !early.closed,
        "the third connection was handled over the limit: {}",
        early.text()
    );
    // One closes: the third is served now.
    drop(held.remove(0));
    let r = read_response(&mut third, T);
    assert_eq!(r.status, Some(200), "the waiting connection was not served: {}", r.text());
    assert_eq!(r.body, b"quick");
}
