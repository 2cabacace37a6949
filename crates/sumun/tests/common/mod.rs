//! The end-to-end test kit: starts the real `sumun` binary with a config string, mock
//! upstreams (hyper 1, TCP or unix socket, HTTP/1.1 or h2c), and clients (curl, raw TCP,
//! hyper). Every wait polls a state with a deadline; nothing sleeps to wait for a state.
//!
//! Tests are plain `#[test]` functions: blocking clients run on the test thread, async code
//! (mocks, hyper clients) runs on one shared tokio runtime through [`block_on`].

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod mock;
pub mod redis;
pub mod sumun;
pub mod tls;

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

pub use client::{CurlOut, RawResponse, curl, raw_request};
pub use mock::{Behavior, Gate, Mock, MockOpts, Payload, Proto, RawMock, Recorded};
pub use sumun::Sumun;

/// The runtime mocks and async clients run on.
pub static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
});

/// Runs a future to completion on the shared runtime (call from the test thread only).
pub fn block_on<F: Future>(f: F) -> F::Output {
    RT.block_on(f)
}

/// Fills `@NAME@` placeholders in a config template: keeps TOML inline tables free of
/// `format!` brace escaping.
pub fn cfg(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    s
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that a problem+json body is well formed, has `status`, and leaks no address.
pub fn assert_problem(out: &CurlOut, status: u16) -> serde_json::Value {
    assert_eq!(out.status, status, "status; body: {}", out.text());
    assert_eq!(out.header("content-type"), Some("application/problem+json"), "content-type of a {status}");
    let v: serde_json::Value = serde_json::from_slice(&out.body)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {}", out.text()));
    assert_eq!(v["status"], status, "problem status field: {v}");
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()), "title: {v}");
    assert!(v["detail"].as_str().is_some(), "detail: {v}");
    let rid = out.header("x-request-id").expect("x-request-id on an error");
    assert_eq!(v["request_id"], rid, "problem request_id matches the header");
    assert_no_leak(out, &[]);
    v
}

/// Asserts that a response body names no internal address, socket path or any of `secrets`
/// (upstream ports, paths). The request id is left out of the comparison.
pub fn assert_no_leak(out: &CurlOut, secrets: &[&str]) {
    let mut text = out.text();
    if let Some(id) = out.header("x-request-id") {
        text = text.replace(id, "");
    }
    for s in
        ["127.0.0.1", "localhost", "unix:", "/tmp", "Connection refused", "os error"].iter().chain(secrets)
    {
        assert!(!text.contains(s), "response body leaks `{s}`: {text}");
    }
}
