//! Runs the real `sumun` binary: config written to a temp dir, readiness read from its JSON
//! log on stderr, stdout (the access log) and stderr captured into pollable buffers, killed
//! on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Lines a child process wrote, appended by a reader thread, waited on with deadlines.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<LinesInner>, Condvar)>);

#[derive(Default)]
struct LinesInner {
    lines: Vec<String>,
    eof: bool,
}

impl Lines {
    fn spawn_reader(&self, r: impl std::io::Read + Send + 'static) {
        let me = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        let (m, cv) = &*me.0;
                        m.lock().unwrap().lines.push(line);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*me.0;
            m.lock().unwrap().eof = true;
            cv.notify_all();
        });
    }

    /// Lines another process writes to `r` (its stdout), read by a background thread.
    pub fn from_reader(r: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        lines.spawn_reader(r);
        lines
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0.0.lock().unwrap().lines.clone()
    }

    /// Lines that parse as JSON objects.
    pub fn json(&self) -> Vec<Value> {
        self.all()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Waits for the first line (from the start) that satisfies `pred`. None on timeout or
    /// when the stream ended without one.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            if g.eof {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits for the first JSON line that satisfies `pred`.
    pub fn wait_json(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_line(timeout, |l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object() && pred(&v)))
            .and_then(|l| serde_json::from_str(&l).ok())
    }

    fn tail(&self, n: usize) -> String {
        let all = self.all();
        all[all.len().saturating_sub(n)..].join("\n")
    }
}

/// A running sumun process.
pub struct Sumun {
    child: Child,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    listeners: HashMap<String, String>,
    admin: Option<String>,
    /// Standard output: the access log by default.
    pub stdout: Lines,
    /// Standard error: the JSON application log.
    pub stderr: Lines,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sumun")
}

impl Sumun {
    /// Starts sumun with `config` (every `@DIR@` replaced by its temp dir) and waits until it
    /// logs `sumun ready`. Panics with its stderr if it exits or is not ready in 15 s.
    pub fn start(config: &str) -> Sumun {
        let dir = tempfile::Builder::new().prefix("sumun-e2e").tempdir_in("/tmp").expect("temp dir");
        Self::start_in(dir, config)
    }

    /// Like [`Sumun::start`], in a temp dir the test already made (and filled with TLS files,
    /// sockets…). `@DIR@` is replaced by its path.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Sumun {
        let config = config.replace("@DIR@", &dir.path().display().to_string());
        let config_path = dir.path().join("sumun.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let mut child = Command::new(binary())
            .args(["--log-format", "json", "--log-level", "info", "serve", "-c"])
            .arg(&config_path)
            .current_dir(dir.path())
            .env_remove("SUMUN_LOG_FORMAT")
            .env_remove("SUMUN_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sumun");
        let stdout = Lines::default();
        let stderr = Lines::default();
        stdout.spawn_reader(child.stdout.take().expect("stdout"));
        stderr.spawn_reader(child.stderr.take().expect("stderr"));
        let mut s = Sumun { child, dir, config_path, listeners: HashMap::new(), admin: None, stdout, stderr };
        let ready = s.stderr.wait_json(Duration::from_secs(15), |v| v["message"] == "sumun ready");
        if ready.is_none() {
            let status = s.child.try_wait().ok().flatten();
            panic!(
                "sumun did not become ready (exit: {status:?})\nconfig:\n{config}\nstderr:\n{}",
                s.stderr.tail(40)
            );
        }
        for v in s.stderr.json() {
            match v["message"].as_str() {
                Some("listening") => {
                    if let (Some(name), Some(addr)) = (v["listener"].as_str(), v["addr"].as_str()) {
                        s.listeners.insert(name.to_owned(), addr.to_owned());
                    }
                }
                Some("admin listening") => s.admin = v["addr"].as_str().map(str::to_owned),
                _ => {}
            }
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp dir holding the config (and anything the test put there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A listener's bound address as logged: `127.0.0.1:PORT` or `unix:/path`.
    pub fn listener(&self, name: &str) -> &str {
        self.listeners.get(name).unwrap_or_else(|| panic!("no listener `{name}` in {:?}", self.listeners))
    }

    /// A TCP listener's socket address.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listener(name).parse().unwrap_or_else(|_| panic!("listener `{name}` is not TCP"))
    }

    /// A unix listener's socket path.
    pub fn unix_path(&self, name: &str) -> PathBuf {
        PathBuf::from(
            self.listener(name)
                .strip_prefix("unix:")
                .unwrap_or_else(|| panic!("listener `{name}` is not a unix socket")),
        )
    }

    /// `http://127.0.0.1:PORT{path}` for a TCP listener.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_deref().and_then(|a| a.parse().ok())
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// Whether the process has exited (and its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// The access-log line (JSON on stdout) of the request with this id.
    pub fn access_log(&self, request_id: &str, timeout: Duration) -> Value {
        self.stdout.wait_json(timeout, |v| v["request_id"] == request_id).unwrap_or_else(|| {
            panic!("no access-log line with request_id {request_id}; stdout:\n{}", self.stdout.tail(20))
        })
    }
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Sumun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- sumun stderr (last lines) ----\n{}\n---- sumun stdout (last lines) ----\n{}",
                self.stderr.tail(30),
                self.stdout.tail(10)
            );
        }
    }
}
