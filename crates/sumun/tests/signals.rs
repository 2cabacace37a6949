//! Signals are handled from the moment sumun says it is ready: a supervisor that reloads
//! right after the `sumun ready` line must get a reload, never the default action of SIGHUP
//! (terminate).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const CONFIG: &str = r#"
[listener.web]
bind = "127.0.0.1:0"

[[route]]
name = "hello"
match = { path = "/hello" }
to = { respond = { status = 200, body = "hi" } }
"#;

#[test]
fn sighup_right_after_ready_reloads_instead_of_killing() {
    // The window is short: try a few starts so a late handler is caught reliably.
    for attempt in 0..8 {
        let mut s = Sumun::start(CONFIG);
        s.signal(Signal::SIGHUP);
        let outcome = wait_for(Duration::from_secs(10), "a reload or an exit", || {
            if let Some(status) = s.exited() {
                return Some(Err(status));
            }
            s.stderr.json().iter().any(|v| v["message"] == "configuration reloaded").then_some(Ok(()))
        });
        if let Err(status) = outcome {
            panic!("attempt {attempt}: SIGHUP sent after `sumun ready` killed sumun ({status})");
        }
        assert_eq!(curl(&[&s.url("web", "/hello")]).text(), "hi");
    }
}

#[test]
fn sigterm_right_after_ready_exits_cleanly() {
    for attempt in 0..8 {
        let mut s = Sumun::start(CONFIG);
        s.signal(Signal::SIGTERM);
        let status = wait_for(Duration::from_secs(10), "sumun to exit", || s.exited());
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM after `sumun ready` gave {status} instead of a clean exit"
        );
    }
}
