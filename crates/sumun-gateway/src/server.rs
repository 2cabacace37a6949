//! Listeners and connections: binding (TCP or unix socket), the accept loop with its
//! connection limit and error back-off, TLS with ALPN, HTTP/1.1 and HTTP/2 (prior knowledge or
//! ALPN) per connection, idle and header timeouts, and graceful drain. Listeners are diffed
//! on reload: new ones are bound before the new runtime is swapped in, removed ones stop
//! accepting and their connections drain.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sumun_config::BindAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, watch};

use crate::access_log::AccessLogger;
use crate::conn_state::{ActivityIo, ConnState, Verdict};
use crate::h1guard::{GuardVerdict, H1Guard};
use crate::runtime::Runtime;

/// State shared by every connection of every listener.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub access_log: Option<AccessLogger>,
}

/// What a request handler knows about its connection.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    pub peer: Option<SocketAddr>,
    /// The peer in `Forwarded`/`X-Forwarded-For` syntax, formatted once per connection.
    pub node: sumun_http::forwarded::ClientNode,
    pub tls: bool,
    pub state: Arc<ConnState>,
    guard: GuardVerdict,
    /// Keeps the connection's slot (max_connections) and drain count while anything still
    /// uses it — a CONNECT tunnel outlives the HTTP connection task.
    pub(crate) hold: Arc<ConnHold>,
}

impl ConnCtx {
    /// Set when the raw HTTP/1 stream carried an ambiguous frame (request smuggling attempt).
    pub fn guard_violation(&self) -> Option<&'static str> {
        self.guard.violation().map(|v| v.reason())
    }
}

struct RunningListener {
    bind: BindAddr,
    /// The address actually bound (differs from `bind` for port 0).
    local: BindAddr,
    stop: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: usize,
}

impl RunningListener {
    /// Whether this socket already serves `bind`: the same text, or the address a port-0
    /// bind was given (a config rewritten with the real port must not rebind it).
    fn serves(&self, bind: &BindAddr) -> bool {
        self.bind == *bind || self.local == *bind
    }
}

/// A connection's slot under `max_connections` and its place in the drain count; released
/// when the last holder (the connection task, or a tunnel it became) drops it.
pub(crate) struct ConnHold {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _guard: ConnGuard,
}

/// Counts live connections so shutdown can wait for them.
#[derive(Default)]
struct ConnTracker {
    active: AtomicUsize,
    idle: Notify,
}

struct ConnGuard {
    tracker: Arc<ConnTracker>,
    gauge: metrics::Gauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        if self.tracker.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// Errors that keep a configuration from being applied.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listener `{name}`: cannot bind {bind}: {source}")]
    Bind { name: String, bind: String, source: std::io::Error },
}

/// The running gateway: current runtime plus the listeners serving it.
pub struct Gateway {
    shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<HashMap<String, RunningListener>>,
    shutdown: watch::Sender<bool>,
    tracker: Arc<ConnTracker>,
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Gateway {
    pub fn new(runtime: Runtime, access_log: Option<AccessLogger>) -> Arc<Gateway> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Gateway {
            shared: Arc::new(Shared { runtime: ArcSwap::from_pointee(runtime), access_log }),
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            shutdown,
            tracker: Arc::new(ConnTracker::default()),
        })
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// Binds every listener of the current runtime and starts accepting.
    pub async fn start(self: &Arc<Self>) -> Result<(), ListenError> {
        let rt = self.runtime();
        self.apply(rt, None).await
    }

    /// Swaps in `next` after binding the listeners it adds. On a bind error nothing changes.
    pub async fn reload(self: &Arc<Self>, next: Runtime) -> Result<(), ListenError> {
        let next = Arc::new(next);
        let current = self.runtime();
        self.apply(next, Some(current)).await
    }

    async fn apply(
        self: &Arc<Self>,
        next: Arc<Runtime>,
        current: Option<Arc<Runtime>>,
    ) -> Result<(), ListenError> {
        let mut running = self.listeners.lock().await;
        // Bind first: a failure leaves the running configuration untouched.
        let mut fresh = Vec::new();
        for l in &next.config.listeners {
            let keep = running.get(&l.name).is_some_and(|r| r.serves(&l.bind));
            if !keep {
                let bound = bind(&l.bind, running.get(&l.name).is_some()).await.map_err(|source| {
                    ListenError::Bind { name: l.name.clone(), bind: l.bind.to_string(), source }
                })?;
                fresh.push((l.name.clone(), l.bind.clone(), bound, l.limits.max_connections));
            }
        }
        if current.is_some() {
            self.shared.runtime.store(next.clone());
        }
        // Background work (health checks) of pools this runtime serves; pools it dropped stop
        // theirs when the last request holding them ends.
        for pool in &next.pools {
            pool.start();
        }
        // Stop listeners that are gone or moved.
        let wanted: HashMap<&str, &BindAddr> =
            next.config.listeners.iter().map(|l| (l.name.as_str(), &l.bind)).collect();
        running.retain(|name, r| {
            let keep = wanted.get(name.as_str()).is_some_and(|b| r.serves(b));
            if !keep {
                tracing::info!(listener = %name, bind = %r.bind, "listener closed");
                let _ = r.stop.send(true);
            }
            keep
        });
        // Adjust connection limits of listeners that stay.
        for l in &next.config.listeners {
            if let Some(r) = running.get_mut(&l.name) {
                let want = l.limits.max_connections;
                if want > r.max_connections {
                    r.permits.add_permits(want - r.max_connections);
                } else if want < r.max_connections {
                    let permits = r.permits.clone();
                    let n = (r.max_connections - want) as u32;
                    tokio::spawn(async move {
                        if let Ok(p) = permits.acquire_many_owned(n).await {
                            p.forget();
                        }
                    });
                }
                r.max_connections = want;
            }
        }
        for (name, bind_addr, bound, max) in fresh {
            let (stop, stop_rx) = watch::channel(false);
            let permits = Arc::new(Semaphore::new(max));
            let local = match &bound {
                Bound::Tcp(l) => l.local_addr().map(BindAddr::Tcp).unwrap_or_else(|_| bind_addr.clone()),
                Bound::Unix(_, p) => BindAddr::Unix(p.clone()),
            };
            tracing::info!(listener = %name, bind = %bind_addr, addr = %local, "listening");
            let gw = self.clone();
            let listener: Arc<str> = Arc::from(name.as_str());
            tokio::spawn(gw.accept_loop(listener, bound, permits.clone(), stop_rx));
            running.insert(
                name,
                RunningListener { bind: bind_addr, local, stop, permits, max_connections: max },
            );
        }
        Ok(())
    }

    /// Stops accepting, asks every connection to finish, and waits up to `grace`. Returns the
    /// number of connections still open when the grace period ended.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        for (_, r) in self.listeners.lock().await.drain() {
            let _ = r.stop.send(true);
        }
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.tracker.idle.notified();
            let n = self.tracker.active.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.tracker.active.load(Ordering::Acquire);
            }
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        name: Arc<str>,
        bound: Bound,
        permits: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
    ) {
        let gauge = metrics::gauge!("sumun_active_connections", "listener" => name.to_string());
        let mut backoff = Duration::from_millis(5);
        loop {
            // Take the permit before accepting: excess connections wait in the kernel backlog.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.changed() => break,
            };
            let accepted = tokio::select! {
                r = accept(&bound) => r,
                _ = stop.changed() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    self.tracker.active.fetch_add(1, Ordering::AcqRel);
                    gauge.increment(1.0);
                    let guard = ConnGuard { tracker: self.tracker.clone(), gauge: gauge.clone() };
                    let hold = Arc::new(ConnHold { _permit: permit, _guard: guard });
                    let gw = self.clone();
                    let name = name.clone();
                    tokio::spawn(gw.connection(name, stream, peer, hold));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a full descriptor table.
                    tracing::warn!(listener = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    metrics::counter!("sumun_accept_errors_total", "listener" => name.to_string())
                        .increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        if let Bound::Unix(_, path) = &bound {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn connection(
        self: Arc<Self>,
        listener: Arc<str>,
        stream: Accepted,
        peer: Option<SocketAddr>,
        hold: Arc<ConnHold>,
    ) {
        let rt = self.runtime();
        let Some(lrt) = rt.listener(&listener) else {
            return;
        };
        let limits = lrt.limits.clone();
        let tls = lrt.tls.clone();
        drop(rt);
        let state = ConnState::new();
        let conn = Conn { listener, peer, state: state.clone(), limits, hold };
        match (stream, tls) {
            (Accepted::Tcp(s), None) => self.serve_plain(conn, ActivityIo::new(s, state)).await,
            (Accepted::Unix(s), None) => self.serve_plain(conn, ActivityIo::new(s, state)).await,
            (Accepted::Tcp(s), Some(acc)) => self.serve_tls(conn, &acc, ActivityIo::new(s, state)).await,
            (Accepted::Unix(s), Some(acc)) => self.serve_tls(conn, &acc, ActivityIo::new(s, state)).await,
        }
    }

    /// Cleartext: the first bytes tell HTTP/2 prior knowledge (`PRI * HTTP/2.0…`) from
    /// HTTP/1. Each protocol then gets a connection future of its own size, boxed, so an idle
    /// HTTP/1 connection does not carry HTTP/2 state.
    async fn serve_plain<S>(&self, conn: Conn, mut io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let mut first = [0u8; 3];
        let mut n = 0;
        let detect = async {
            // One byte settles it unless it is 'P' (PRI vs POST/PUT/PATCH).
            while n < 3 && !(n > 0 && first[0] != b'P') {
                match io.read(&mut first[n..]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(k) => n += k,
                }
            }
            true
        };
        if !matches!(tokio::time::timeout(conn.limits.header_timeout, detect).await, Ok(true)) {
            return;
        }
        let h2 = &first[..n] == b"PRI";
        let io = Prefixed::new(io, first, n);
        if h2 {
            Box::pin(self.drive_h2(conn, io, false)).await;
        } else {
            Box::pin(self.drive_h1(conn, io, false)).await;
        }
    }

    /// TLS: ALPN decides; without `h2` negotiated the connection speaks HTTP/1.1.
    async fn serve_tls<S>(&self, conn: Conn, acceptor: &tokio_rustls::TlsAcceptor, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(tls) = handshake(acceptor, io, conn.limits.header_timeout).await else {
            return;
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            Box::pin(self.drive_h2(conn, tls, true)).await;
        } else {
            Box::pin(self.drive_h1(conn, tls, true)).await;
        }
    }

    fn context(&self, conn: &Conn, tls: bool, guard: GuardVerdict) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            shared: self.shared.clone(),
            listener: conn.listener.clone(),
            peer: conn.peer,
            node: sumun_http::forwarded::ClientNode::new(conn.peer.map(|p| p.ip())),
            tls,
            state: conn.state.clone(),
            guard,
            hold: conn.hold.clone(),
        })
    }

    async fn drive_h1<S>(&self, conn: Conn, io: S, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // hyper reads at most max_buf_size of head; the guard tracks heads up to the same size.
        let max_head = conn.limits.max_header_bytes.max(8192);
        let (io, guard) = H1Guard::new(io, max_head);
        let ctx = self.context(&conn, tls, guard);
        let svc = hyper::service::service_fn(move |req| crate::proxy::handle(req, ctx.clone()));
        let c = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_head)
            .serve_connection(TokioIo::new(io), svc)
            // CONNECT tunnels take the connection over once answered with 200.
            .with_upgrades();
        self.supervise(&conn, c).await;
    }

    async fn drive_h2<S>(&self, conn: Conn, io: S, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ctx = self.context(&conn, tls, GuardVerdict::default());
        let svc = hyper::service::service_fn(move |req| crate::proxy::handle(req, ctx.clone()));
        let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(conn.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .serve_connection(TokioIo::new(io), svc);
        self.supervise(&conn, c).await;
    }

    /// Drives a connection to its end, applying the header and idle timeouts and the
    /// graceful drain on shutdown.
    async fn supervise<C: GracefulConn>(&self, conn: &Conn, c: C) {
        let limits = &conn.limits;
        let state = &conn.state;
        tokio::pin!(c);
        let mut shutdown = self.shutdown.subscribe();
        let mut draining = *shutdown.borrow();
        if draining {
            c.as_mut().graceful();
        }
        loop {
            let wake = match state.check(limits.header_timeout, limits.idle_timeout) {
                Verdict::WaitUntil(t) => t,
                Verdict::Idle => {
                    if !draining {
                        c.as_mut().graceful();
                        draining = true;
                    }
                    std::time::Instant::now() + limits.idle_timeout
                }
                Verdict::HeaderTimeout => {
                    metrics::counter!("sumun_header_timeouts_total").increment(1);
                    tracing::debug!(peer = ?conn.peer, "request head not received in time; closing");
                    return;
                }
            };
            tokio::select! {
                r = c.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = ?conn.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.changed(), if !draining => {
                    c.as_mut().graceful();
                    draining = true;
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

/// What a connection task knows before it speaks HTTP.
struct Conn {
    listener: Arc<str>,
    peer: Option<SocketAddr>,
    state: Arc<ConnState>,
    hold: Arc<ConnHold>,
    limits: sumun_config::Limits,
}

/// hyper's HTTP/1 and HTTP/2 server connections, seen alike by the supervisor.
trait GracefulConn: Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, S, B> GracefulConn for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> GracefulConn for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> GracefulConn for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

pin_project_lite::pin_project! {
    /// Replays the few bytes read to detect the protocol, then reads from the stream.
    struct Prefixed<S> {
        #[pin]
        inner: S,
        prefix: [u8; 3],
        pos: usize,
        len: usize,
    }
}

impl<S> Prefixed<S> {
    fn new(inner: S, prefix: [u8; 3], len: usize) -> Self {
        Prefixed { inner, prefix, pos: 0, len }
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if *this.pos < *this.len {
            let n = (*this.len - *this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[*this.pos..*this.pos + n]);
            *this.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn accept(bound: &Bound) -> std::io::Result<(Accepted, Option<SocketAddr>)> {
    match bound {
        Bound::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Accepted::Tcp(s), Some(peer)))
        }
        Bound::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok((Accepted::Unix(s), None))
        }
    }
}

async fn handshake<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    s: S,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(s)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            metrics::counter!("sumun_tls_handshake_errors_total").increment(1);
            None
        }
        Err(_) => {
            metrics::counter!("sumun_tls_handshake_errors_total").increment(1);
            None
        }
    }
}

/// Binds a listener socket. `replacing` allows taking over a unix socket path we own.
async fn bind(addr: &BindAddr, replacing: bool) -> std::io::Result<Bound> {
    match addr {
        BindAddr::Tcp(sa) => {
            let sock = if sa.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            sock.set_reuseaddr(true)?;
            sock.bind(*sa)?;
            Ok(Bound::Tcp(sock.listen(4096)?))
        }
        BindAddr::Unix(path) => {
            if path.exists() {
                // A socket file nobody answers on is left over from a crash: take it over.
                let alive = UnixStream::connect(path).await.is_ok();
                if alive && !replacing {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "a server is already listening on this socket",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(Bound::Unix(UnixListener::bind(path)?, path.clone()))
        }
    }
}
