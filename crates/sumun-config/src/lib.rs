//! sumun's configuration: TOML text → raw serde model (with spans) → validated [`Config`],
//! plus the units it is written in (durations, sizes, `env:`/`file:` secrets) and
//! diagnostics located by file:line:col. It owns parsing, defaults, validation and the
//! "route shadowed by an earlier route" warning. It does not own what the values do: the
//! gateway compiles a [`Config`] into its runtime. No I/O beyond reading the config file and
//! checking that the files it names (TLS certificates, secrets) exist.

#![forbid(unsafe_code)]

mod bus;
mod cache_model;
mod diagnostics;
mod forward_proxy;
mod headers;
mod listener;
pub mod model;
mod parse;
mod protect;
mod protect_model;
mod raw;
mod resilience;
mod route;
mod shadow;
pub mod units;
mod upstream;
mod validate;

use std::path::{Path, PathBuf};

pub use bus::{
    Deliver, DeliveryOrdering, DeliveryRetry, PartitionKey, StartPosition, Subscription, Topic,
    TopicDurability,
};
pub use cache_model::*;
pub use diagnostics::{Diagnostic, Severity};
pub use model::*;
pub use protect_model::*;

/// A valid configuration and the warnings found while checking it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates the config file at `path`. On failure, every error found, in file
/// order; an unreadable file is one error at 1:1.
pub fn load(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    match std::fs::read_to_string(path) {
        Ok(source) => parse_str(&source, path),
        Err(e) => Err(vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read config file: {}", units::io_reason(&e)),
        }]),
    }
}

/// Validates config text as if read from `path`: diagnostics name `path`, and relative paths
/// in the text are resolved against `path`'s directory.
pub fn parse_str(source: &str, path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let mut sink = diagnostics::Sink::new(path, source);
    let Some(parsed) = parse::parse(source, &mut sink) else {
        return Err(sink.into_sorted());
    };
    let mut cx = validate::Ctx { sink: &mut sink, base_dir: base_dir(path), removed: parsed.removed };
    let config = validate::validate(parsed.raw, path, &mut cx);
    match config {
        Some(config) if !sink.has_errors() => {
            let mut warnings = shadow::shadow_warnings(&config, path);
            warnings.extend(sink.into_sorted());
            warnings.sort_by_key(|w| (w.line, w.col));
            Ok(Loaded { config, warnings })
        }
        _ => Err(sink.into_sorted()),
    }
}

/// The directory relative paths are resolved against, made absolute so that the result does
/// not depend on the working directory staying the same.
fn base_dir(config_path: &Path) -> PathBuf {
    let dir = match config_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

#[cfg(test)]
mod tests;
