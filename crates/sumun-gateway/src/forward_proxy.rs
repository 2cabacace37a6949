//! The forward proxy: what a listener with `forward_proxy = true` does with absolute-form
//! requests (`GET http://host/path`, what `HTTP_PROXY` clients send) and `CONNECT host:port`
//! tunnels (what `HTTPS_PROXY` clients send). Every destination goes through the egress
//! policy twice: by name before resolving, and on each resolved address at connect time, so a
//! name that resolves to a private address cannot slip through (DNS rebinding).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sumun_config::ForwardProxy;
use sumun_http::forwarded::{ViaEntries, append_via};
use sumun_http::hop::{strip_hop_by_hop, strip_hop_by_hop_response};
use sumun_http::problem::problem_response;
use sumun_http::{Body, ErrorKind, ProxyError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::access_log::{AccessLogger, AccessRecord, EgressAudit, now_rfc3339};
use crate::egress::{DnsError, EgressPolicy, ProxyAuth, Refusal, Resolver};
use crate::exchange::Exchange;
use crate::server::ConnCtx;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The compiled forward-proxy state of a runtime.
pub struct ForwardRuntime {
    policy: Arc<EgressPolicy>,
    resolver: Arc<Resolver>,
    auth: ProxyAuth,
    client: Client<EgressConnector, Body>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// `sumun_egress_requests_total{decision}`, resolved once.
    decisions: Decisions,
}

struct Decisions {
    allowed: metrics::Counter,
    denied: metrics::Counter,
    auth_required: metrics::Counter,
}

impl ForwardRuntime {
    pub fn new(cfg: &ForwardProxy) -> Result<Self, String> {
        let policy = Arc::new(EgressPolicy::new(cfg));
        let resolver = Arc::new(Resolver::new(&cfg.dns));
        let connector = EgressConnector {
            policy: policy.clone(),
            resolver: resolver.clone(),
            connect_timeout: cfg.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .set_host(false)
            .build(connector);
        Ok(ForwardRuntime {
            policy,
            resolver,
            auth: ProxyAuth::new(&cfg.users),
            client,
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.tunnel_idle_timeout,
            decisions: Decisions {
                allowed: metrics::counter!("sumun_egress_requests_total", "decision" => "allowed"),
                denied: metrics::counter!("sumun_egress_requests_total", "decision" => "denied"),
                auth_required: metrics::counter!("sumun_egress_requests_total", "decision" => "auth_required"),
            },
        })
    }
}

/// Whether this request is the forward proxy's: CONNECT, or an HTTP/1 absolute-form target.
/// (HTTP/2 requests always carry a scheme and authority, so only CONNECT counts there.)
pub fn is_forward_request(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT || (req.version() < Version::HTTP_2 && req.uri().scheme().is_some())
}

/// Handles a forward-proxy request. Refusals are answered here (403/407 with the reason);
/// transport failures come back as `ProxyError`.
pub async fn handle(
    mut req: Request<Incoming>,
    ctx: &ConnCtx,
    fwd: &ForwardRuntime,
    via: &ViaEntries,
    max_body: u64,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let is_connect = req.method() == Method::CONNECT;
    let uri = req.uri().clone();
    if !is_connect && uri.scheme_str() != Some("http") {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "only http:// targets are proxied; use CONNECT for https",
        ));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(ProxyError::new(ErrorKind::BadRequest, "the request target has no host"));
    };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = match (authority.port_u16(), is_connect) {
        (Some(p), _) => p,
        (None, false) => 80,
        (None, true) => return Err(ProxyError::new(ErrorKind::BadRequest, "CONNECT needs host:port")),
    };
    ex.upstream = Some(Arc::from(format!("{host}:{port}")));
    ex.egress = Some(Box::new(EgressAudit {
        kind: if is_connect { "tunnel" } else { "forward" },
        target_host: host.clone(),
        target_port: port,
        decision: "allowed",
        ..EgressAudit::default()
    }));
    let user = match fwd.auth.verify(req.headers()).await {
        Ok(u) => u,
        Err(_) => {
            ex.error = Some("proxy_auth_required");
            if let Some(e) = ex.egress.as_deref_mut() {
                e.decision = "auth_required";
            }
            fwd.decisions.auth_required.increment(1);
            let mut res = problem_response(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "this proxy requires authentication",
                Some(&ex.request_id),
            );
            res.headers_mut().insert(header::PROXY_AUTHENTICATE, crate::egress::challenge());
            return Ok(res);
        }
    };
    if let Some(e) = ex.egress.as_deref_mut() {
        e.user = user.clone();
    }
    let user = user.as_deref();
    if let Err(r) = fwd.policy.check_name(&host, port, user) {
        return Ok(refused(fwd, ex, &r));
    }
    let addrs = match fwd.resolver.resolve(&host, port).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return Err(dns_error(ex, DnsError::NoAddresses)),
        Err(e) => return Err(dns_error(ex, e)),
    };
    let mut allowed = Vec::with_capacity(addrs.len());
    let mut first_refusal = None;
    for a in addrs {
        match fwd.policy.check_addr(&host, a.ip(), port, user) {
            Ok(()) => allowed.push(a),
            Err(r) => {
                first_refusal.get_or_insert(r);
            }
        }
    }
    if allowed.is_empty() {
        let r = first_refusal
            .unwrap_or(Refusal { rule: "not_allowed".into(), detail: "destination not allowed" });
        return Ok(refused(fwd, ex, &r));
    }
    fwd.decisions.allowed.increment(1);

    if is_connect {
        let stream = connect_any(&allowed, fwd.connect_timeout)
            .await
            .inspect_err(|e| ex.error = Some(e.kind_name()))?;
        let mut audit = ex.egress.as_deref().cloned().unwrap_or_default();
        audit.target_addr = stream.peer_addr().ok().map(|a| a.ip().to_string());
        // The tunnel writes the access-log line when it closes, with its bytes and lifetime.
        ex.deferred_log = true;
        let log = TunnelLog {
            logger: ex.access_log.clone(),
            listener: ex.listener.clone(),
            client: ex.peer.map(|p| p.ip().to_string()),
            request_id: ex.request_id.to_str().unwrap_or("").to_owned(),
            version: ex.version,
            started: ex.start,
            audit,
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let idle = fwd.idle_timeout;
        // The tunnel keeps the connection's max_connections slot and is waited for on drain.
        let hold = ctx.hold.clone();
        tokio::spawn(async move {
            let _hold = hold;
            match on_upgrade.await {
                Ok(upgraded) => tunnel(TokioIo::new(upgraded), stream, idle, log).await,
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        return Ok(Response::new(Body::empty()));
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // RFC 9112 §3.2.2: the target's authority wins over Host.
    if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
        parts.headers.insert(header::HOST, v);
    }
    append_via(&mut parts.headers, parts.version, via);
    parts.version = Version::HTTP_11;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let out = Request::from_parts(parts, ex.request_body(body, max_body, declared));
    let res = match tokio::time::timeout(fwd.idle_timeout, fwd.client.request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return classify(fwd, &e, ex),
        Err(_) => {
            return Err(ProxyError::new(
                ErrorKind::UpstreamTimeout,
                "the destination did not answer in time",
            ));
        }
    };
    let (mut rparts, rbody) = res.into_parts();
    strip_hop_by_hop_response(&mut rparts.headers);
    append_via(&mut rparts.headers, rparts.version, via);
    rparts.version = Version::HTTP_11;
    Ok(Response::from_parts(rparts, Body::incoming(rbody)))
}

/// 403 naming the rule that refused, audited in the access log.
fn refused(fwd: &ForwardRuntime, ex: &mut Exchange, r: &Refusal) -> Response<Body> {
    ex.error = Some("egress_denied");
    if let Some(e) = ex.egress.as_deref_mut() {
        e.decision = "denied";
    }
    ex.rule = Some(r.rule.clone());
    fwd.decisions.denied.increment(1);
    tracing::info!(target_host = ex.upstream.as_deref().unwrap_or(""), rule = %r.rule, "egress refused");
    problem_response(StatusCode::FORBIDDEN, &format!("{} (rule {})", r.detail, r.rule), Some(&ex.request_id))
}

/// DNS failures: 504 for a timeout, 502 otherwise, with the cause in the access log.
fn dns_error(ex: &mut Exchange, e: DnsError) -> ProxyError {
    ex.error = Some(match e {
        DnsError::Timeout => "dns_timeout",
        DnsError::NotFound => "dns_nxdomain",
        DnsError::NoAddresses => "dns_no_addresses",
        DnsError::InvalidName => "dns_invalid_name",
        DnsError::Failed => "dns_failed",
    });
    match e {
        DnsError::Timeout => {
            ProxyError::new(ErrorKind::ConnectTimeout, "resolving the destination timed out")
        }
        DnsError::InvalidName => {
            ProxyError::new(ErrorKind::BadRequest, "the destination is not a valid host name")
        }
        _ => ProxyError::new(ErrorKind::ConnectFailed, "the destination host could not be resolved"),
    }
}

fn classify(
    fwd: &ForwardRuntime,
    e: &hyper_util::client::legacy::Error,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<EgressRefused>() {
            return Ok(refused(fwd, ex, &r.0));
        }
        if err.is::<ConnectTimedOut>() {
            return Err(ProxyError::new(
                ErrorKind::ConnectTimeout,
                "connecting to the destination timed out",
            ));
        }
        cur = err.source();
    }
    if e.is_connect() {
        return Err(ProxyError::new(ErrorKind::ConnectFailed, "could not connect to the destination"));
    }
    Err(ProxyError::new(ErrorKind::UpstreamReset, "the connection to the destination failed"))
}

async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ProxyError> {
    let mut timed_out = false;
    for a in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(_)) => {}
            Err(_) => timed_out = true,
        }
    }
    if timed_out {
        Err(ProxyError::new(ErrorKind::ConnectTimeout, "connecting to the destination timed out"))
    } else {
        Err(ProxyError::new(ErrorKind::ConnectFailed, "could not connect to the destination"))
    }
}

/// The policy refused every resolved address of the destination.
#[derive(Debug, thiserror::Error)]
#[error("egress refused by {}", .0.rule)]
struct EgressRefused(Refusal);

#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
struct ConnectTimedOut;

/// Connects absolute-form requests: resolves, checks every address against the (global)
/// policy at connect time, and connects to the first allowed one.
#[derive(Clone)]
struct EgressConnector {
    policy: Arc<EgressPolicy>,
    resolver: Arc<Resolver>,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let addrs = tokio::time::timeout(this.connect_timeout, this.resolver.resolve(&host, port))
                .await
                .map_err(|_| Box::new(ConnectTimedOut) as BoxError)?
                .map_err(|e| Box::new(e) as BoxError)?;
            let mut refusal = None;
            let mut allowed = Vec::new();
            for a in addrs {
                match this.policy.check_addr(&host, a.ip(), port, None) {
                    Ok(()) => allowed.push(a),
                    Err(r) => {
                        refusal.get_or_insert(r);
                    }
                }
            }
            if allowed.is_empty() {
                let r = refusal
                    .unwrap_or(Refusal { rule: "not_allowed".into(), detail: "destination not allowed" });
                return Err(Box::new(EgressRefused(r)) as BoxError);
            }
            match connect_any(&allowed, this.connect_timeout).await {
                Ok(s) => Ok(TokioIo::new(s)),
                Err(e) if e.kind == ErrorKind::ConnectTimeout => Err(Box::new(ConnectTimedOut) as BoxError),
                Err(e) => Err(Box::new(e) as BoxError),
            }
        })
    }
}

/// A tunnel direction's copy buffer starts at this size and doubles whenever a read fills it,
/// up to `TUNNEL_BUFFER_MAX`: an idle or chatty tunnel (most HTTPS sessions) holds 16 KiB per
/// direction, a bulk transfer gets 1 MiB reads and writes. Measured with 1 GiB through a
/// tunnel (bench/forward-proxy.sh): fixed 256 KiB buffers moved 78–87% of a direct loopback
/// transfer, 1 MiB 90–112%, with less CPU per GB; 8 KiB a third.
const TUNNEL_BUFFER_MIN: usize = 16 * 1024;
const TUNNEL_BUFFER_MAX: usize = 1024 * 1024;

/// Copies `from` into `to` until `from` ends, then shuts `to`'s sending half (a half-close is
/// passed on). The buffer grows while reads fill it.
async fn copy_one_way<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; TUNNEL_BUFFER_MIN];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        // TLS streams hold what they encrypted until flushed; plain sockets do nothing here.
        to.flush().await?;
        if n == buf.len() && buf.len() < TUNNEL_BUFFER_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Both directions at once, until both have ended (or one fails).
async fn copy_both_ways<A, B>(a: A, b: B) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::try_join!(copy_one_way(ar, bw), copy_one_way(br, aw)).map(|_| ())
}

/// Bytes and last activity of a tunnel, shared by both directions.
#[derive(Default)]
struct TunnelStats {
    up: AtomicU64,
    down: AtomicU64,
    last: AtomicU64,
}

pin_project_lite::pin_project! {
    /// Counts bytes read from the wrapped side (the direction it feeds).
    struct Metered<S> {
        #[pin]
        inner: S,
        stats: Arc<TunnelStats>,
        epoch: Instant,
        upstream: bool,
    }
}

impl<S: AsyncRead> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            // Bytes read from the client go up; bytes read from the destination come down.
            let counter = if *this.upstream { &this.stats.down } else { &this.stats.up };
            counter.fetch_add(n, Ordering::Relaxed);
            this.stats.last.store(this.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Metered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Copies both ways until both sides close (a half-close is passed on), or until no byte
/// moved for `idle`.
/// What the tunnel's access-log line needs, captured when the CONNECT was answered.
struct TunnelLog {
    logger: Option<AccessLogger>,
    listener: Arc<str>,
    client: Option<String>,
    request_id: String,
    version: Version,
    started: Instant,
    audit: EgressAudit,
}

async fn tunnel<C>(client: C, upstream: TcpStream, idle: Duration, mut log: TunnelLog)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let stats = Arc::new(TunnelStats::default());
    let a = Metered { inner: client, stats: stats.clone(), epoch: start, upstream: false };
    let b = Metered { inner: upstream, stats: stats.clone(), epoch: start, upstream: true };
    let active = metrics::gauge!("sumun_egress_tunnels_active");
    active.increment(1.0);
    let copy = copy_both_ways(a, b);
    tokio::pin!(copy);
    let outcome = loop {
        let last = start + Duration::from_millis(stats.last.load(Ordering::Relaxed));
        tokio::select! {
            r = &mut copy => break match r { Ok(_) => None, Err(_) => Some("reset") },
            _ = tokio::time::sleep_until((last + idle).into()) => {
                let last = start + Duration::from_millis(stats.last.load(Ordering::Relaxed));
                if last.elapsed() >= idle {
                    break Some("idle_timeout");
                }
            }
        }
    };
    active.decrement(1.0);
    let (up, down) = (stats.up.load(Ordering::Relaxed), stats.down.load(Ordering::Relaxed));
    metrics::counter!("sumun_egress_tunnel_bytes_total", "direction" => "up").increment(up);
    metrics::counter!("sumun_egress_tunnel_bytes_total", "direction" => "down").increment(down);
    metrics::histogram!("sumun_egress_tunnel_duration_seconds").record(start.elapsed().as_secs_f64());
    tracing::debug!(target_host = %log.audit.target_host, bytes_up = up, bytes_down = down, ?outcome, "tunnel closed");
    if let Some(logger) = &log.logger {
        log.audit.bytes_up = up;
        log.audit.bytes_down = down;
        let path = format!("{}:{}", log.audit.target_host, log.audit.target_port);
        logger.log(&AccessRecord {
            time: now_rfc3339(),
            listener: &log.listener,
            route: None,
            client: log.client.clone(),
            method: "CONNECT",
            path: &path,
            version: if log.version == Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" },
            status: 200,
            bytes_in: up,
            bytes_out: down,
            duration_ms: log.started.elapsed().as_secs_f64() * 1000.0,
            upstream: Some(&path),
            request_id: &log.request_id,
            error: outcome,
            rule: None,
            egress: Some(&log.audit),
            subject: None,
            cache: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// client <-> (a | copy_both_ways | b) <-> server, over in-memory pipes: megabytes each way
    /// arrive intact (through buffers that grow from 16 KiB), and each side's end reaches the
    /// other as a half-close.
    #[tokio::test]
    async fn copies_both_ways_and_passes_half_closes_on() {
        let (mut client, a) = tokio::io::duplex(64 * 1024);
        let (b, mut server) = tokio::io::duplex(64 * 1024);
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let ends = async {
            let (mut cr, mut cw) = tokio::io::split(&mut client);
            let (mut sr, mut sw) = tokio::io::split(&mut server);
            let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
            let (r1, r2, r3, r4) = tokio::join!(
                async {
                    cw.write_all(&up).await?;
                    cw.shutdown().await
                },
                async {
                    sw.write_all(&down).await?;
                    sw.shutdown().await
                },
                sr.read_to_end(&mut got_up),
                cr.read_to_end(&mut got_down),
            );
            (r1.and(r2).and(r3).and(r4), got_up, got_down)
        };
        let (relay, (io, got_up, got_down)) = tokio::join!(copy_both_ways(a, b), ends);
        relay.unwrap();
        io.unwrap();
        assert!(got_up == up, "the upstream bytes differ");
        assert!(got_down == down, "the downstream bytes differ");
    }
}
