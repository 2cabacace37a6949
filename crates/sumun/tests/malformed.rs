//! Malformed and ambiguous HTTP/1.1 requests over raw TCP: each is answered 400 and never
//! reaches the upstream (request smuggling and header-injection vectors).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(10);

fn gateway(mock: &Mock) -> Sumun {
    Sumun::start(&cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
        &[("UP", mock.endpoint())],
    ))
}

/// Sends `req` raw, expects a 400, then proves with a sentinel request that the upstream is
/// reachable and that it got nothing else, or (with `partial_ok`) nothing complete.
fn assert_rejected(req: &[u8], partial_ok: bool) {
    let mock = Mock::start(Behavior::text("upstream answered"));
    let s = gateway(&mock);
    let r = raw_request(s.addr("web"), req, T);
    assert_eq!(r.status, Some(400), "request:\n{}\nresponse:\n{}", String::from_utf8_lossy(req), r.text());
    assert!(!r.text().contains("upstream answered"), "the upstream's answer came back: {}", r.text());
    let out = curl(&[&s.url("web", "/sentinel")]);
    assert_eq!(out.status, 200);
    let reqs = mock.wait(T, "the sentinel and any partial request to finish", |r| {
        r.iter().any(|r| r.path == "/sentinel" && r.finished) && r.iter().all(|r| r.finished)
    });
    for r in &reqs {
        if r.path == "/sentinel" {
            continue;
        }
        assert!(
            partial_ok,
            "the malformed request reached the upstream as {} {} ({} body bytes)",
            r.method, r.uri, r.body_len
        );
        assert!(
            !r.complete,
            "the upstream got a complete request: {} {} {:?}",
            r.method,
            r.uri,
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn content_length_then_transfer_encoding_is_400() {
    assert_rejected(
        b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        false,
    );
}

#[test]
fn transfer_encoding_then_content_length_is_400() {
    assert_rejected(
        b"POST /smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        false,
    );
}

#[test]
fn duplicate_differing_content_length_is_400() {
    assert_rejected(
        b"POST /dup HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        false,
    );
}

#[test]
fn content_length_list_with_differing_values_is_400() {
    assert_rejected(b"POST /dup HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", false);
}

#[test]
fn invalid_chunk_size_is_400_and_never_complete_upstream() {
    assert_rejected(
        b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        true,
    );
}

#[test]
fn bare_cr_in_header_value_is_400() {
    assert_rejected(b"GET /cr HTTP/1.1\r\nHost: x\r\nX-Inject: a\rX-Evil: 1\r\n\r\n", false);
}

#[test]
fn obs_fold_continuation_line_is_400() {
    assert_rejected(b"GET /fold HTTP/1.1\r\nHost: x\r\nX-Folded: first\r\n  second\r\n\r\n", false);
}

#[test]
fn space_before_colon_is_400() {
    assert_rejected(b"GET /space HTTP/1.1\r\nHost: x\r\nX-Thing : 1\r\n\r\n", false);
}

#[test]
fn chunked_applied_twice_is_400() {
    assert_rejected(
        b"POST /twice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        false,
    );
}

#[test]
fn transfer_encoding_not_ending_in_chunked_is_400() {
    assert_rejected(b"POST /gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", false);
}

#[test]
fn two_host_fields_are_400() {
    assert_rejected(b"GET /hosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", false);
}

#[test]
fn http11_without_host_is_400() {
    assert_rejected(b"GET /nohost HTTP/1.1\r\nX-A: 1\r\n\r\n", false);
}

#[test]
fn pipelined_request_after_smuggling_attempt_is_not_forwarded() {
    // The classic CL.TE desync: a front end using Content-Length would forward the second
    // request as part of the body; sumun must refuse the connection's framing outright.
    assert_rejected(
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
}
