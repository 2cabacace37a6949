//! Active health checks: one tokio task per endpoint probes it every `interval` (plus random
//! jitter) and flips its [`EndpointState`] health after enough consecutive results.
//!
//! Choices:
//! - **Initial state**: the checker adopts whatever health the endpoint has when it starts, and
//!   new endpoints start healthy (`EndpointState::new`). A fresh pool serves at once; an endpoint
//!   that is down at start leaves after `unhealthy_threshold` failed checks. An endpoint state
//!   carried over a reload keeps its health.
//! - **Schedule**: the first check runs after a random delay within the jitter window (so a reload
//!   does not probe every endpoint in the same millisecond), then each check starts
//!   `interval + random(0..=interval × jitter_percent / 100)` after the previous one started.
//!   A check that takes longer than that is followed by the next one at once; checks of one
//!   endpoint never overlap.
//! - **HTTP checks** open a new connection each time and send `Connection: close`: that is what
//!   the proxy needs to know (the endpoint accepts new connections), and a kept-alive connection
//!   could hide a listener that stopped accepting. The check sends `GET path` with
//!   `Host: host` (or the endpoint's `host:port`, `localhost` for a unix socket) and
//!   `User-Agent: sumun-health-check`, and reads at most 64 KiB of the body before closing so the
//!   endpoint sees a clean close. Healthy when the status falls in any `expected` range (an empty
//!   list means 2xx).
//! - **TCP checks**: healthy when the connect (TCP or unix socket) succeeds.
//! - Connect and exchange together are bounded by `timeout`; running out is a failure. Any error
//!   is a failure with a reason, never a panic.
//! - Thresholds of 0 count as 1. A recovery calls `set_healthy(true, now)`, which starts slow
//!   start. Each transition is logged once (`warn` down, `info` up) and exported as the gauge
//!   `sumun_upstream_endpoint_healthy{upstream,endpoint}`; every check is counted in
//!   `sumun_upstream_health_checks_total{upstream,endpoint,result}` where `result` is `success`
//!   or one of [`CheckFailure::result`].
//!
//! [`HealthHandle`] aborts the tasks when dropped, so replacing a pool on reload stops its checks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sumun_config::{EndpointAddr, HealthCheck, HealthCheckKind, StatusRange};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use crate::endpoint::{Clock, EndpointState};

const USER_AGENT: &str = "sumun-health-check";
/// Body bytes read before closing; a health page is small and its content is not judged.
const MAX_BODY: usize = 64 * 1024;

/// Why one check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected status {0}")]
    Status(StatusCode),
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("the endpoint closed the connection without answering")]
    Closed,
    #[error("cannot build the check request: {0}")]
    InvalidRequest(#[source] http::Error),
}

impl CheckFailure {
    /// The `result` label of `sumun_upstream_health_checks_total` for this failure.
    pub fn result(&self) -> &'static str {
        match self {
            CheckFailure::Connect(_) => "connect_failure",
            CheckFailure::Timeout(_) => "timeout",
            CheckFailure::Status(_) => "bad_status",
            CheckFailure::Http(_) | CheckFailure::Closed => "protocol_error",
            CheckFailure::InvalidRequest(_) => "invalid_request",
        }
    }
}

/// Runs one check against `addr`, connect and exchange bounded by `timeout`.
pub async fn probe(
    kind: &HealthCheckKind,
    addr: &EndpointAddr,
    timeout: Duration,
) -> Result<(), CheckFailure> {
    let check = async {
        match kind {
            HealthCheckKind::Tcp => connect(addr).await.map(drop),
            HealthCheckKind::Http { path, expected, host } => {
                let status = http_status(addr, path, host.as_deref()).await?;
                if status_expected(status, expected) { Ok(()) } else { Err(CheckFailure::Status(status)) }
            }
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(CheckFailure::Timeout(timeout)),
    }
}

fn status_expected(status: StatusCode, expected: &[StatusRange]) -> bool {
    let s = status.as_u16();
    if expected.is_empty() {
        return status.is_success();
    }
    expected.iter().any(|r| r.from <= s && s <= r.to)
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect(addr: &EndpointAddr) -> Result<Conn, CheckFailure> {
    match addr {
        EndpointAddr::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await.map_err(CheckFailure::Connect)?;
            // Small request, small answer: don't let Nagle add a round trip.
            let _ = stream.set_nodelay(true);
            Ok(Conn::Tcp(stream))
        }
        EndpointAddr::Unix(path) => {
            UnixStream::connect(path).await.map(Conn::Unix).map_err(CheckFailure::Connect)
        }
    }
}

async fn http_status(
    addr: &EndpointAddr,
    path: &str,
    host: Option<&str>,
) -> Result<StatusCode, CheckFailure> {
    let authority = match (host, addr) {
        (Some(host), _) => host.to_owned(),
        (None, EndpointAddr::Tcp { .. }) => addr.to_string(),
        (None, EndpointAddr::Unix(_)) => "localhost".to_owned(),
    };
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(CheckFailure::InvalidRequest)?;
    match connect(addr).await? {
        Conn::Tcp(s) => exchange(TokioIo::new(s), req).await,
        Conn::Unix(s) => exchange(TokioIo::new(s), req).await,
    }
}

/// Sends `req` on a fresh HTTP/1.1 connection driven in this task (nothing is spawned, so
/// aborting the check task tears everything down) and returns the response status.
async fn exchange<I>(io: I, req: Request<Empty<Bytes>>) -> Result<StatusCode, CheckFailure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(CheckFailure::Http)?;
    let mut conn = std::pin::pin!(conn);
    let mut conn_done = false;
    let mut send = std::pin::pin!(sender.send_request(req));
    // The connection may finish (answer read, `Connection: close`) before the response is
    // taken from the channel, so keep waiting for it after the connection ends.
    let response = loop {
        tokio::select! {
            res = &mut send => break res.map_err(|e| if conn_done { CheckFailure::Closed } else { CheckFailure::Http(e) })?,
            res = &mut conn, if !conn_done => {
                res.map_err(CheckFailure::Http)?;
                conn_done = true;
            }
        }
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut read = 0;
    // The status is the verdict; the body is read (bounded) only for a clean close, and its
    // errors don't matter.
    while read < MAX_BODY {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            },
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
    Ok(status)
}

/// Active health checking of one endpoint; [`HealthChecker::spawn`] starts one per endpoint.
pub struct HealthChecker {
    upstream: Arc<str>,
    kind: HealthCheckKind,
    interval: Duration,
    timeout: Duration,
    jitter: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    endpoint: Arc<EndpointState>,
    clock: Clock,
    healthy_gauge: metrics::Gauge,
}

/// Keeps a pool's health-check tasks running; dropping it stops them.
#[derive(Debug, Default)]
pub struct HealthHandle {
    tasks: Vec<tokio::task::AbortHandle>,
}

impl HealthHandle {
    /// How many endpoint checkers it runs.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl HealthChecker {
    /// Starts checking every endpoint of `upstream` on the current tokio runtime. Outside a
    /// runtime nothing can run: it logs an error and returns an empty handle.
    pub fn spawn(
        upstream: &str,
        cfg: &HealthCheck,
        endpoints: Vec<Arc<EndpointState>>,
        clock: Clock,
    ) -> HealthHandle {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(upstream, "health checks need a tokio runtime; none started");
            return HealthHandle::default();
        };
        let upstream: Arc<str> = Arc::from(upstream);
        // Zero would spin and a huge value would overflow `Instant` arithmetic; both are
        // misconfigurations, kept harmless.
        let interval = cfg.interval.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        let jitter = (interval / 100) * u32::from(cfg.jitter_percent.min(100));
        let tasks = endpoints
            .into_iter()
            .map(|endpoint| {
                let healthy_gauge = metrics::gauge!(
                    "sumun_upstream_endpoint_healthy",
                    "upstream" => upstream.clone(),
                    "endpoint" => endpoint.label.clone()
                );
                healthy_gauge.set(if endpoint.is_healthy() { 1.0 } else { 0.0 });
                let checker = HealthChecker {
                    upstream: upstream.clone(),
                    kind: cfg.kind.clone(),
                    interval,
                    timeout: cfg.timeout,
                    jitter,
                    healthy_threshold: cfg.healthy_threshold.max(1),
                    unhealthy_threshold: cfg.unhealthy_threshold.max(1),
                    endpoint,
                    clock,
                    healthy_gauge,
                };
                runtime.spawn(checker.run()).abort_handle()
            })
            .collect();
        HealthHandle { tasks }
    }

    async fn run(self) {
        // Seeded per task from the thread's generator, so endpoints drift apart.
        let mut rng = fastrand::Rng::new();
        let mut successes = 0u32;
        let mut failures = 0u32;
        tokio::time::sleep(jitter(&mut rng, self.jitter)).await;
        loop {
            let started = Instant::now();
            let result = probe(&self.kind, &self.endpoint.address, self.timeout).await;
            let label = match &result {
                Ok(()) => "success",
                Err(e) => e.result(),
            };
            metrics::counter!(
                "sumun_upstream_health_checks_total",
                "upstream" => self.upstream.clone(),
                "endpoint" => self.endpoint.label.clone(),
                "result" => label
            )
            .increment(1);
            match result {
                Ok(()) => {
                    failures = 0;
                    successes = successes.saturating_add(1);
                    if successes >= self.healthy_threshold {
                        self.mark(
                            true,
                            successes,
                            &format_args!("{successes} consecutive successful checks"),
                        );
                    }
                }
                Err(e) => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    tracing::debug!(upstream = %self.upstream, endpoint = %self.endpoint.label, reason = %e, failures, "health check failed");
                    if failures >= self.unhealthy_threshold {
                        self.mark(
                            false,
                            failures,
                            &format_args!("{failures} consecutive failed checks, last: {e}"),
                        );
                    }
                }
            }
            tokio::time::sleep_until(started + self.interval + jitter(&mut rng, self.jitter)).await;
        }
    }

    /// Sets the endpoint's health; logs and exports only a change.
    fn mark(&self, healthy: bool, checks: u32, reason: &std::fmt::Arguments<'_>) {
        if !self.endpoint.set_healthy(healthy, self.clock.now_ms()) {
            return;
        }
        self.healthy_gauge.set(if healthy { 1.0 } else { 0.0 });
        let (upstream, endpoint) = (&self.upstream, &self.endpoint.label);
        if healthy {
            tracing::info!(%upstream, %endpoint, %reason, checks, "endpoint healthy again; slow start begins");
        } else {
            tracing::warn!(%upstream, %endpoint, %reason, checks, "endpoint unhealthy; out of rotation");
        }
    }
}

/// Uniform in `0..=max`, to the nanosecond.
fn jitter(rng: &mut fastrand::Rng, max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

    use sumun_config::SlowStart;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::outlier::test_recorder::TestRecorder;

    const DEADLINE: Duration = Duration::from_secs(5);

    /// What the in-test HTTP server answers and what it saw.
    #[derive(Default)]
    struct Script {
        status: AtomicU16,
        /// Don't answer at all (hold the connection) when set.
        silent: std::sync::atomic::AtomicBool,
        requests: AtomicUsize,
        /// Requests answered with a 5xx / 2xx.
        served_5xx: AtomicUsize,
        served_2xx: AtomicUsize,
        last_head: Mutex<String>,
    }

    impl Script {
        fn new(status: u16) -> Arc<Self> {
            let s = Script::default();
            s.status.store(status, Ordering::SeqCst);
            Arc::new(s)
        }
    }

    /// A hand-rolled HTTP/1.1 server: reads one request head per connection, answers with
    /// the scripted status and a small body, closes.
    fn serve(listener: TcpListener, script: Arc<Script>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let script = script.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    script.requests.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut last) = script.last_head.lock() {
                        *last = String::from_utf8_lossy(&head).into_owned();
                    }
                    if script.silent.load(Ordering::SeqCst) {
                        let _ = stream.read(&mut buf).await;
                        return;
                    }
                    let status = script.status.load(Ordering::SeqCst);
                    let answer =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                    if stream.write_all(answer.as_bytes()).await.is_ok() {
                        let counter = if status >= 500 { &script.served_5xx } else { &script.served_2xx };
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = stream.shutdown().await;
                });
            }
        })
    }

    async fn listener() -> (TcpListener, u16) {
        let Ok(l) = TcpListener::bind("127.0.0.1:0").await else { panic!("bind") };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        (l, port)
    }

    fn endpoint(port: u16) -> Arc<EndpointState> {
        Arc::new(EndpointState::new(0, EndpointAddr::Tcp { host: "127.0.0.1".into(), port }, 10))
    }

    fn http_cfg(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/healthz".into(),
                expected: vec![StatusRange { from: 200, to: 299 }],
                host: None,
            },
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            jitter_percent: 20,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    fn tcp_cfg() -> HealthCheck {
        HealthCheck { kind: HealthCheckKind::Tcp, ..http_cfg(2, 2) }
    }

    /// Polls `cond` every 5 ms until it holds or the deadline passes.
    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn http_check_goes_down_after_n_failures_and_recovers_after_m_successes() {
        let (l, port) = listener().await;
        let script = Script::new(200);
        let _server = serve(l, script.clone());
        let ep = endpoint(port);
        let clock = Clock::new();
        let handle = HealthChecker::spawn("api", &http_cfg(2, 3), vec![ep.clone()], clock);
        assert_eq!(handle.len(), 1);

        wait_for("a first check", || script.served_2xx.load(Ordering::SeqCst) >= 2).await;
        assert!(ep.is_healthy(), "starts healthy and stays so");
        let head = script.last_head.lock().map(|h| h.to_ascii_lowercase()).unwrap_or_default();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: 127.0.0.1:{port}\r\n")), "{head}");
        assert!(head.contains("user-agent: sumun-health-check\r\n"), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");

        script.status.store(500, Ordering::SeqCst);
        wait_for("unhealthy", || !ep.is_healthy()).await;
        assert!(script.served_5xx.load(Ordering::SeqCst) >= 3, "not before 3 failures");

        script.status.store(200, Ordering::SeqCst);
        let before = script.served_2xx.load(Ordering::SeqCst);
        wait_for("healthy again", || ep.is_healthy()).await;
        assert!(script.served_2xx.load(Ordering::SeqCst) >= before + 2, "not before 2 successes");
        // The recovery started slow start: the weight is ramping, not full.
        let ss = SlowStart { window: Duration::from_secs(60), aggression: 1.0, min_weight: 0.1 };
        assert!(ep.effective_weight(clock.now_ms(), Some(&ss)) < 5.0);
    }

    #[tokio::test]
    async fn endpoint_that_dies_goes_down_and_comes_back_when_restarted() {
        let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket.set_reuseaddr(true).unwrap_or_else(|e| panic!("{e}"));
        socket
            .bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let script = Script::new(204);
        let server = serve(socket.listen(64).unwrap_or_else(|e| panic!("{e}")), script.clone());
        let ep = endpoint(addr.port());
        let _handle = HealthChecker::spawn("api", &http_cfg(2, 2), vec![ep.clone()], Clock::new());
        wait_for("a check", || script.requests.load(Ordering::SeqCst) >= 1).await;

        server.abort();
        let _ = server.await;
        wait_for("unhealthy after the server died", || !ep.is_healthy()).await;

        let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket.set_reuseaddr(true).unwrap_or_else(|e| panic!("{e}"));
        socket.bind(addr).unwrap_or_else(|e| panic!("{e}"));
        let _server = serve(socket.listen(64).unwrap_or_else(|e| panic!("{e}")), script.clone());
        wait_for("healthy after restart", || ep.is_healthy()).await;
    }

    #[tokio::test]
    async fn tcp_check_fails_on_a_closed_port_and_passes_on_an_open_one() {
        let (l, closed) = listener().await;
        drop(l);
        let kind = HealthCheckKind::Tcp;
        let addr = EndpointAddr::Tcp { host: "127.0.0.1".into(), port: closed };
        let err = probe(&kind, &addr, Duration::from_secs(1)).await.err();
        assert!(matches!(err, Some(CheckFailure::Connect(_))), "{err:?}");

        let down = endpoint(closed);
        let (open_listener, open) = listener().await;
        let up = endpoint(open);
        up.set_healthy(false, 1);
        let _handle = HealthChecker::spawn("api", &tcp_cfg(), vec![down.clone(), up.clone()], Clock::new());
        wait_for("closed port unhealthy", || !down.is_healthy()).await;
        wait_for("open port healthy", || up.is_healthy()).await;
        drop(open_listener);
    }

    #[tokio::test]
    async fn a_check_that_times_out_is_a_failure() {
        let (l, port) = listener().await;
        let script = Script::new(200);
        script.silent.store(true, Ordering::SeqCst);
        let _server = serve(l, script.clone());
        let kind = http_cfg(1, 1).kind;
        let addr = EndpointAddr::Tcp { host: "127.0.0.1".into(), port };
        let started = Instant::now();
        let err = probe(&kind, &addr, Duration::from_millis(100)).await.err();
        assert!(matches!(err, Some(CheckFailure::Timeout(_))), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));

        let ep = endpoint(port);
        let cfg = HealthCheck { timeout: Duration::from_millis(80), ..http_cfg(1, 2) };
        let _handle = HealthChecker::spawn("api", &cfg, vec![ep.clone()], Clock::new());
        wait_for("unhealthy by timeouts", || !ep.is_healthy()).await;
        assert!(script.requests.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_checks() {
        let (l, port) = listener().await;
        let script = Script::new(200);
        let _server = serve(l, script.clone());
        let handle = HealthChecker::spawn("api", &http_cfg(1, 1), vec![endpoint(port)], Clock::new());
        wait_for("checks running", || script.requests.load(Ordering::SeqCst) >= 3).await;
        drop(handle);
        // A check already on the wire may still land; after that, silence. Absence can only be
        // shown by waiting: 10 intervals.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let seen = script.requests.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(script.requests.load(Ordering::SeqCst), seen);
    }

    #[tokio::test]
    async fn expected_statuses_and_host_override() {
        let (l, port) = listener().await;
        let script = Script::new(200);
        let _server = serve(l, script.clone());
        let addr = EndpointAddr::Tcp { host: "127.0.0.1".into(), port };
        let kind = HealthCheckKind::Http {
            path: "/ready?deep=1".into(),
            expected: vec![StatusRange { from: 204, to: 204 }, StatusRange { from: 300, to: 399 }],
            host: Some("api.internal".into()),
        };
        let err = probe(&kind, &addr, DEADLINE).await.err();
        assert!(matches!(err, Some(CheckFailure::Status(s)) if s == 200), "{err:?}");
        assert_eq!(err.map(|e| e.result()), Some("bad_status"));
        let head = script.last_head.lock().map(|h| h.to_ascii_lowercase()).unwrap_or_default();
        assert!(head.starts_with("get /ready?deep=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("host: api.internal\r\n"), "{head}");
        for ok in [204, 302] {
            script.status.store(ok, Ordering::SeqCst);
            assert!(probe(&kind, &addr, DEADLINE).await.is_ok(), "{ok}");
        }
        // No ranges: 2xx.
        let any_2xx = HealthCheckKind::Http { path: "/".into(), expected: vec![], host: None };
        script.status.store(299, Ordering::SeqCst);
        assert!(probe(&any_2xx, &addr, DEADLINE).await.is_ok());
        script.status.store(503, Ordering::SeqCst);
        assert!(probe(&any_2xx, &addr, DEADLINE).await.is_err());
        // A path that is not a URI is a failure with a reason, not a panic.
        let bad = HealthCheckKind::Http { path: "not a path".into(), expected: vec![], host: None };
        let err = probe(&bad, &addr, DEADLINE).await.err();
        assert!(matches!(err, Some(CheckFailure::InvalidRequest(_))), "{err:?}");
    }

    #[tokio::test]
    async fn checks_over_a_unix_socket() {
        let path = std::env::temp_dir().join(format!("sumun-health-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let Ok(listener) = tokio::net::UnixListener::bind(&path) else { panic!("bind {}", path.display()) };
        let seen = Arc::new(Mutex::new(String::new()));
        let seen2 = seen.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if let Ok(mut seen) = seen2.lock() {
                    *seen = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let addr = EndpointAddr::Unix(path.clone());
        let http = HealthCheckKind::Http { path: "/healthz".into(), expected: vec![], host: None };
        let result = probe(&http, &addr, DEADLINE).await;
        let tcp = probe(&HealthCheckKind::Tcp, &addr, DEADLINE).await;
        server.abort();
        let _ = std::fs::remove_file(&path);
        assert!(result.is_ok(), "{result:?}");
        assert!(tcp.is_ok(), "{tcp:?}");
        let head = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert!(head.contains("host: localhost\r\n"), "{head}");
        let missing = probe(&HealthCheckKind::Tcp, &addr, DEADLINE).await.err();
        assert!(matches!(missing, Some(CheckFailure::Connect(_))), "{missing:?}");
    }

    #[tokio::test]
    async fn transitions_and_checks_are_exported() {
        let rec = TestRecorder::default();
        // A current-thread runtime polls the check tasks on this thread, so a local recorder
        // sees their metrics.
        let _guard = metrics::set_default_local_recorder(&rec);
        let (l, port) = listener().await;
        let script = Script::new(503);
        let _server = serve(l, script.clone());
        let ep = endpoint(port);
        let _handle = HealthChecker::spawn("api", &http_cfg(1, 2), vec![ep.clone()], Clock::new());
        let gauge = format!("sumun_upstream_endpoint_healthy{{endpoint=127.0.0.1:{port},upstream=api}}");
        let checks = |result: &str| {
            rec.counter(&format!(
                "sumun_upstream_health_checks_total{{endpoint=127.0.0.1:{port},result={result},upstream=api}}"
            ))
            .unwrap_or(0)
        };
        assert_eq!(rec.gauge(&gauge), Some(1.0));
        wait_for("unhealthy", || !ep.is_healthy()).await;
        assert_eq!(rec.gauge(&gauge), Some(0.0));
        assert!(checks("bad_status") >= 2);
        script.status.store(200, Ordering::SeqCst);
        wait_for("healthy", || ep.is_healthy()).await;
        assert_eq!(rec.gauge(&gauge), Some(1.0));
        assert!(checks("success") >= 1);
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let mut rng = fastrand::Rng::with_seed(7);
        let max = Duration::from_millis(10);
        let draws: Vec<Duration> = (0..1000).map(|_| jitter(&mut rng, max)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        assert!(draws.iter().any(|d| *d < max / 4) && draws.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(jitter(&mut rng, Duration::ZERO), Duration::ZERO);
    }
}
