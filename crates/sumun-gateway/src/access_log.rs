//! The access log: one JSON line per request, written by a dedicated thread so a slow disk or
//! terminal never stalls request handling. The queue is bounded; lines that do not fit are
//! counted in `sumun_access_log_dropped_total` rather than blocking the proxy.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::Serialize;
use sumun_config::AccessLog as AccessLogTarget;

const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub listener: &'a str,
    pub route: Option<&'a str>,
    pub client: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream: Option<&'a str>,
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// The authenticated caller (`sub`, or `apikey:NAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// What the cache did (`hit`, `miss`, `stale`…), on caching routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    /// Forward-proxy audit fields; absent for reverse-proxy requests.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub egress: Option<&'a EgressAudit>,
}

/// What the access log records about a forward-proxy request or tunnel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EgressAudit {
    /// "forward" (absolute-form) or "tunnel" (CONNECT).
    pub kind: &'static str,
    pub target_host: String,
    pub target_port: u16,
    /// The address connected to (tunnels); None when none was, or for pooled forward requests.
    pub target_addr: Option<String>,
    pub user: Option<String>,
    /// "allowed", "denied" or "auth_required".
    pub decision: &'static str,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct AccessLogger {
    tx: SyncSender<String>,
}

impl AccessLogger {
    /// Starts the writer for `target`, or returns None when the log is off.
    pub fn start(target: &AccessLogTarget) -> std::io::Result<Option<AccessLogger>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(p) => {
                Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?)
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("sumun-access-log".into()).spawn(move || write_loop(rx, out))?;
        Ok(Some(AccessLogger { tx }))
    }

    pub fn log(&self, record: &AccessRecord<'_>) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::counter!("sumun_access_log_dropped_total").increment(1);
            }
        }
    }
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut ok = writeln!(out, "{line}").is_ok();
        // Drain what is already queued before flushing: one write syscall per burst.
        while let Ok(line) = rx.try_recv() {
            ok &= writeln!(out, "{line}").is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            metrics::counter!("sumun_access_log_write_errors_total").increment(1);
        }
    }
}

/// RFC 3339 UTC time with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
