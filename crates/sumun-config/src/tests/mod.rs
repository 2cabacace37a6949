//! End-to-end tests of `parse_str` / `load`: text in, validated model or diagnostics out.

mod bus;
mod errors;
mod forward_proxy;
mod keys;
mod protect;
mod upstream;

use std::path::Path;

use crate::{Diagnostic, Loaded, parse_str};

/// Where every test pretends its config lives.
const FILE: &str = "/etc/sumun/sumun.toml";

fn ok(source: &str) -> Loaded {
    match parse_str(source, Path::new(FILE)) {
        Ok(loaded) => loaded,
        Err(diags) => panic!("expected a valid config, got:\n{}", render(&diags)),
    }
}

fn errors(source: &str) -> Vec<Diagnostic> {
    match parse_str(source, Path::new(FILE)) {
        Ok(_) => panic!("expected errors for:\n{source}"),
        Err(diags) => diags,
    }
}

/// Errors rendered as `line:col: message` (the file is always FILE).
fn error_lines(source: &str) -> Vec<String> {
    errors(source)
        .iter()
        .map(|d| {
            assert_eq!(d.file, Path::new(FILE));
            assert_eq!(d.severity, crate::Severity::Error);
            format!("{}:{}: {}", d.line, d.col, d.message)
        })
        .collect()
}

fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("{d}\n")).collect()
}

/// The smallest valid config, for tests that add one thing to it.
const LISTENER: &str = "[listener.web]\nbind = \"127.0.0.1:8080\"\n";
