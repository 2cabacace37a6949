//! The shared Redis/Valkey connection (`[redis]`) used by global rate limits and idempotency
//! records. One multiplexed connection (`redis::aio::ConnectionManager`): concurrent commands
//! from every request are pipelined on it, and it reconnects by itself after a failure.
//!
//! Every command runs within `timeout`. A connection failure or a timeout marks Redis down:
//! for `retry_after` every call fails at once without touching the network (callers take
//! their fallback instead of each waiting `timeout`); then one call probes while the others
//! keep failing fast, and its success marks Redis up again. `sumun_redis_up` tracks it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, ServerErrorKind};

/// A cheap-to-clone handle on the `[redis]` connection. Builds no connection until the first
/// command.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: sumun_config::Redis,
    client: redis::Client,
    /// Made on first use: building it spawns a task, which needs the tokio runtime.
    manager: OnceLock<ConnectionManager>,
    timeout: Duration,
    retry_after: Duration,
    epoch: Instant,
    /// 0 = up. Otherwise Redis is down, and calls fail fast until this instant (milliseconds
    /// since `epoch`, at least 1).
    down_until: AtomicU64,
    up_gauge: OnceLock<metrics::Gauge>,
}

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisErrorKind {
    /// Redis failed recently: the call failed fast, nothing was sent.
    Down,
    /// The connection failed (refused, reset, TLS, authentication) or the server cannot serve
    /// (loading, busy script, read-only replica…).
    Unreachable,
    /// No answer within `timeout`.
    Timeout,
    /// Redis answered with an error for this command, or an answer of an unexpected type.
    Command,
}

/// A failed Redis command. `Display` is meant for logs (it never contains the URL).
#[derive(Debug)]
pub struct RedisError {
    kind: RedisErrorKind,
    source: Option<redis::RedisError>,
    timeout: Duration,
}

impl RedisError {
    pub fn kind(&self) -> RedisErrorKind {
        self.kind
    }

    /// Redis is down or did not answer in time (as opposed to an error for this command):
    /// the caller takes its fallback.
    pub fn is_unavailable(&self) -> bool {
        self.kind != RedisErrorKind::Command
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, &self.source) {
            (RedisErrorKind::Down, _) => {
                f.write_str("redis is down (failing fast until the retry delay passes)")
            }
            (RedisErrorKind::Timeout, _) => write!(f, "redis did not answer within {:?}", self.timeout),
            (RedisErrorKind::Unreachable, Some(e)) => write!(f, "redis unreachable: {e}"),
            (RedisErrorKind::Unreachable, None) => f.write_str("redis unreachable"),
            (RedisErrorKind::Command, Some(e)) => write!(f, "redis command failed: {e}"),
            (RedisErrorKind::Command, None) => f.write_str("redis command failed"),
        }
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Whether a driver error means Redis cannot serve at all (rather than refusing one command).
fn classify(e: &redis::RedisError) -> RedisErrorKind {
    match e.kind() {
        ErrorKind::Io | ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => {
            if e.is_timeout() { RedisErrorKind::Timeout } else { RedisErrorKind::Unreachable }
        }
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ReadOnly,
        ) => RedisErrorKind::Unreachable,
        // A script running past lua-time-limit blocks every client: BUSY.
        ErrorKind::Extension if e.code() == Some("BUSY") => RedisErrorKind::Unreachable,
        _ => RedisErrorKind::Command,
    }
}

impl Redis {
    /// Checks the URL; no I/O (the connection is made by the first command).
    pub fn new(cfg: &sumun_config::Redis) -> Result<Self, String> {
        // The driver's parse errors do not echo the URL (which may hold a password).
        let client =
            redis::Client::open(cfg.url.0.as_str()).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(Redis {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                client,
                manager: OnceLock::new(),
                timeout: cfg.timeout,
                retry_after: cfg.retry_after,
                epoch: Instant::now(),
                down_until: AtomicU64::new(0),
                up_gauge: OnceLock::new(),
            }),
        })
    }

    /// Whether this handle was built from exactly this configuration (a reload keeps it, and
    /// its connection, when nothing changed).
    pub fn same_config(&self, cfg: &sumun_config::Redis) -> bool {
        let mine = &self.inner.cfg;
        mine.url == cfg.url && mine.timeout == cfg.timeout && mine.retry_after == cfg.retry_after
    }

    /// One command within `timeout`. After a connection failure, fails fast (no network) for
    /// `retry_after`.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut conn = self.begin()?;
        let res = tokio::time::timeout(self.inner.timeout, cmd.query_async::<T>(&mut conn)).await;
        self.finish(res)
    }

    /// A pipeline (one round trip) within `timeout`.
    pub async fn pipe<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, RedisError> {
        let mut conn = self.begin()?;
        let res = tokio::time::timeout(self.inner.timeout, p.query_async::<T>(&mut conn)).await;
        self.finish(res)
    }

    /// `EVALSHA`, loading the script on `NOSCRIPT` (after a Redis restart or `SCRIPT FLUSH`),
    /// all within `timeout`.
    pub async fn script<T: FromRedisValue>(
        &self,
        s: &redis::Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T, RedisError> {
        let mut conn = self.begin()?;
        let mut inv = s.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let res = tokio::time::timeout(self.inner.timeout, inv.invoke_async::<T>(&mut conn)).await;
        self.finish(res)
    }

    /// False from a connection failure until a command succeeds again; true before any
    /// command was tried.
    pub fn is_up(&self) -> bool {
        self.inner.down_until.load(Ordering::Acquire) == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn err(&self, kind: RedisErrorKind, source: Option<redis::RedisError>) -> RedisError {
        RedisError { kind, source, timeout: self.inner.timeout }
    }

    /// The connection to send on, or `Down` while Redis is in its fail-fast window. When the
    /// window is over, exactly one caller goes through as the probe; the window is stretched
    /// by `timeout` meanwhile so the others keep failing fast.
    fn begin(&self) -> Result<ConnectionManager, RedisError> {
        let until = self.inner.down_until.load(Ordering::Acquire);
        if until != 0 {
            let now = self.now_ms();
            if now < until {
                return Err(self.err(RedisErrorKind::Down, None));
            }
            let probe_until = now.saturating_add(duration_ms(self.inner.timeout)).max(1);
            if self
                .inner
                .down_until
                .compare_exchange(until, probe_until, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(self.err(RedisErrorKind::Down, None));
            }
        }
        if let Some(m) = self.inner.manager.get() {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout))
            // One connection attempt per probe; `retry_after` paces them, not the driver.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
            .map_err(|e| self.err(RedisErrorKind::Unreachable, Some(e)))?;
        // A concurrent first call may have won: use its manager (ours never connected).
        Ok(self.inner.manager.get_or_init(|| manager).clone())
    }

    fn finish<T>(
        &self,
        res: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, RedisError> {
        match res {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                let kind = classify(&e);
                let err = self.err(kind, Some(e));
                if kind == RedisErrorKind::Command {
                    // Redis answered: it is up even though this command failed.
                    self.mark_up();
                } else {
                    self.mark_down(&err);
                }
                Err(err)
            }
            Err(_) => {
                let err = self.err(RedisErrorKind::Timeout, None);
                self.mark_down(&err);
                Err(err)
            }
        }
    }

    fn gauge(&self) -> &metrics::Gauge {
        self.inner.up_gauge.get_or_init(|| metrics::gauge!("sumun_redis_up"))
    }

    fn mark_up(&self) {
        let was = self.inner.down_until.swap(0, Ordering::AcqRel);
        if was != 0 {
            tracing::info!("redis reachable again");
        }
        self.gauge().set(1.0);
    }

    fn mark_down(&self, err: &RedisError) {
        let until = self.now_ms().saturating_add(duration_ms(self.inner.retry_after)).max(1);
        let was = self.inner.down_until.swap(until, Ordering::AcqRel);
        if was == 0 {
            tracing::warn!(error = %err, retry_after = ?self.inner.retry_after, "redis unavailable; failing fast");
        }
        self.gauge().set(0.0);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A private `redis-server` for unit tests: an ephemeral port, no persistence, killed on drop.
/// Tests never share it, so they need no cleanup and may kill and restart it.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testing {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct RedisServer {
        pub port: u16,
        child: Option<Child>,
    }

    impl RedisServer {
        /// Starts `redis-server` (panics with a clear message when it is not installed).
        pub fn start() -> RedisServer {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let mut s = RedisServer { port, child: None };
            s.restart();
            s
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// Kills the server (connections see a reset).
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Starts it again on the same port and waits until it answers PING.
        pub fn restart(&mut self) {
            self.kill();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--protected-mode", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is required by these tests (scripts/test installs it)");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.pong() {
                assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        fn pong(&self) -> bool {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str, timeout_ms: u64, retry_ms: u64) -> sumun_config::Redis {
        sumun_config::Redis {
            url: sumun_config::Secret(url.to_owned()),
            timeout: Duration::from_millis(timeout_ms),
            retry_after: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn bad_url_is_refused_without_echoing_it() {
        let e = match Redis::new(&cfg("http://user:hunter2@example.com", 100, 100)) {
            Err(e) => e,
            Ok(_) => panic!("http URL accepted"),
        };
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn same_config_compares_every_field() {
        let r = Redis::new(&cfg("redis://127.0.0.1:1", 100, 100)).unwrap();
        assert!(r.same_config(&cfg("redis://127.0.0.1:1", 100, 100)));
        assert!(!r.same_config(&cfg("redis://127.0.0.1:2", 100, 100)));
        assert!(!r.same_config(&cfg("redis://127.0.0.1:1", 101, 100)));
        assert!(!r.same_config(&cfg("redis://127.0.0.1:1", 100, 101)));
    }

    fn real(server: &testing::RedisServer) -> Redis {
        Redis::new(&cfg(&server.url(), 1000, 200)).unwrap()
    }

    #[tokio::test]
    async fn query_pipe_and_script_against_a_real_server() {
        let server = testing::RedisServer::start();
        let r = real(&server);
        let pong: String = r.query(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
        assert!(r.is_up());
        let mut p = redis::pipe();
        p.cmd("SET").arg("k").arg("v").ignore().cmd("GET").arg("k").cmd("STRLEN").arg("k");
        let (v, n): (String, u32) = r.pipe(&p).await.unwrap();
        assert_eq!((v.as_str(), n), ("v", 1));
        let s = redis::Script::new("return {KEYS[1], ARGV[1], ARGV[2]}");
        let out: Vec<Vec<u8>> = r.script(&s, &[b"key"], &[b"a", b"\xffb"]).await.unwrap();
        assert_eq!(out, vec![b"key".to_vec(), b"a".to_vec(), b"\xffb".to_vec()]);
        // After SCRIPT FLUSH (as after a restart) EVALSHA gets NOSCRIPT and the script is loaded.
        let _: String = r.query(redis::cmd("SCRIPT").arg("FLUSH")).await.unwrap();
        let out: Vec<Vec<u8>> = r.script(&s, &[b"key2"], &[b"x", b"y"]).await.unwrap();
        assert_eq!(out[0], b"key2");
    }

    #[tokio::test]
    async fn command_error_is_not_an_outage() {
        let server = testing::RedisServer::start();
        let r = real(&server);
        let _: () = r.query(redis::cmd("SET").arg("s").arg("x")).await.unwrap();
        let e = r.query::<i64>(redis::cmd("LPUSH").arg("s").arg("y")).await.unwrap_err();
        assert_eq!(e.kind(), RedisErrorKind::Command, "{e}");
        assert!(!e.is_unavailable());
        assert!(r.is_up());
        let e = r.query::<i64>(redis::cmd("GET").arg("s")).await.unwrap_err();
        assert_eq!(e.kind(), RedisErrorKind::Command, "a type mismatch is a command error: {e}");
        assert!(r.is_up());
    }

    /// Killed and restarted on the same port: calls fail (unavailable, then fast), and once
    /// it is back a probe after `retry_after` reconnects and everything works again.
    #[tokio::test]
    async fn recovers_after_a_restart() {
        let mut server = testing::RedisServer::start();
        let r = real(&server);
        let _: String = r.query(&redis::cmd("PING")).await.unwrap();
        server.kill();
        let e = r.query::<String>(&redis::cmd("PING")).await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(!r.is_up());
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match r.query::<String>(&redis::cmd("PING")).await {
                Ok(p) => {
                    assert_eq!(p, "PONG");
                    break;
                }
                Err(e) => {
                    assert!(e.is_unavailable(), "{e}");
                    assert!(Instant::now() < deadline, "no recovery: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert!(r.is_up());
    }

    /// A closed port: the first command fails as unreachable, the next ones fail fast without
    /// waiting, and after `retry_after` one probe goes to the network again.
    #[tokio::test]
    async fn connection_failure_fails_fast_for_retry_after() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = Redis::new(&cfg(&format!("redis://127.0.0.1:{port}"), 500, 300)).unwrap();
        assert!(r.is_up());
        let e = r.query::<String>(&redis::cmd("PING")).await.unwrap_err();
        assert_eq!(e.kind(), RedisErrorKind::Unreachable, "{e}");
        assert!(e.is_unavailable());
        assert!(!r.is_up());
        let e = r.query::<String>(&redis::cmd("PING")).await.unwrap_err();
        assert_eq!(e.kind(), RedisErrorKind::Down, "failed fast, nothing sent: {e}");
        tokio::time::sleep(Duration::from_millis(320)).await;
        let e = r.query::<String>(&redis::cmd("PING")).await.unwrap_err();
        assert_eq!(e.kind(), RedisErrorKind::Unreachable, "after retry_after a probe is sent: {e}");
    }

    /// A server that accepts and never answers: the command times out within `timeout`.
    #[tokio::test]
    async fn silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let r = Redis::new(&cfg(&format!("redis://127.0.0.1:{port}"), 150, 1000)).unwrap();
        let t = Instant::now();
        let e = r.query::<String>(&redis::cmd("PING")).await.unwrap_err();
        assert!(matches!(e.kind(), RedisErrorKind::Timeout | RedisErrorKind::Unreachable), "{e}");
        assert!(t.elapsed() < Duration::from_millis(1000), "took {:?}", t.elapsed());
        assert!(!r.is_up());
        hold.abort();
    }
}
