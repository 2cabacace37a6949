//! HTTP/1.1 keep-alive connections to one endpoint, on hyper's connection API.
//!
//! A connection is handed back to the pool when its response head arrives, while the body may
//! still stream: hyper's `SendRequest` says when the connection is free again (`is_ready`),
//! so a checkout takes the oldest entry that is ready, and busy ones wait their turn in the
//! queue. Nothing is spawned per request. (hyper-util's pooling client, which this replaces,
//! spawned a task per response to wait for the connection to become free, boxed its request
//! future and hashed a pool key per request: ~10% of the proxy's CPU per request.)
//!
//! A request that was never written — the pooled connection turned out closed, or not free
//! after all — is tried on the next connection, as hyper-util's client did: nothing reached
//! the upstream, so this is safe for every method. A request the upstream may have seen is
//! never resent here; that is the retry policy's decision (`retry.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use sumun_http::{Body, ProxyError};

use crate::connector::Connector;

/// One endpoint's connections.
pub(crate) struct H1Pool {
    conns: Mutex<VecDeque<Pooled>>,
    /// The most connections kept (busy ones count: a connection beyond this closes once its
    /// response is done).
    max: usize,
    idle_timeout: Duration,
    /// Whether the sweeper task runs (started with the first pooled connection).
    sweeping: std::sync::atomic::AtomicBool,
    /// Counts connections opened (`sumun_upstream_connections_opened_total`): with keep-alive
    /// working it barely moves under load.
    opened: metrics::Counter,
}

struct Pooled {
    sender: SendRequest<Body>,
    /// When its last response head arrived.
    since: Instant,
}

/// Why no connection could carry the request.
pub(crate) enum SendError {
    Connect(Box<dyn std::error::Error + Send + Sync>),
    Send(hyper::Error),
}

impl H1Pool {
    pub(crate) fn new(max: usize, idle_timeout: Duration, opened: metrics::Counter) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            conns: Mutex::new(VecDeque::new()),
            max,
            idle_timeout,
            sweeping: std::sync::atomic::AtomicBool::new(false),
            opened,
        })
    }

    /// Sends `req` (origin-form) on a pooled connection, or on a new one to `connect_uri`.
    pub(crate) async fn send(
        self: &Arc<Self>,
        connector: &Connector,
        connect_uri: &Uri,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(s) => (s, true),
                None => {
                    let sender = Box::pin(connect(connector, connect_uri)).await?;
                    self.opened.increment(1);
                    (sender, false)
                }
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin(sender);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // Not written: a pooled connection that was closed or not free. Another one.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Send(e.into_error())),
                },
            }
        }
    }

    /// The oldest free connection; closed and expired ones met on the way are dropped, busy
    /// ones stay queued.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..conns.len() {
            let p = conns.pop_front()?;
            if p.sender.is_closed() {
                continue;
            }
            if p.sender.is_ready() {
                if now.saturating_duration_since(p.since) > self.idle_timeout {
                    continue;
                }
                return Some(p.sender);
            }
            conns.push_back(p);
        }
        None
    }

    /// Queues a connection whose response head has arrived; beyond `max` it is dropped, and
    /// hyper closes it once that response is done.
    fn checkin(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut conns = self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if conns.len() >= self.max {
                return;
            }
            conns.push_back(Pooled { sender, since: Instant::now() });
        }
        if !self.sweeping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// Drops closed connections and idle ones past the idle timeout.
    fn sweep(&self) {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        conns.retain(|p| {
            let expired = p.sender.is_ready() && now.saturating_duration_since(p.since) > self.idle_timeout;
            !(p.sender.is_closed() || expired)
        });
    }

    /// Connections held (busy and idle), for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// Closes idle connections past the timeout, until the pool is gone.
async fn sweep(pool: Weak<H1Pool>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.sweep(),
            None => return,
        }
    }
}

/// A new connection, its hyper connection task spawned.
async fn connect(connector: &Connector, uri: &Uri) -> Result<SendRequest<Body>, SendError> {
    let io = connector.connect(uri.clone()).await.map_err(SendError::Connect)?;
    let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(SendError::Send)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

impl SendError {
    /// The error as the transport classifies it.
    pub(crate) fn into_proxy_error(
        self,
        classify: fn(&(dyn std::error::Error + Send + Sync + 'static)) -> ProxyError,
    ) -> ProxyError {
        match self {
            SendError::Connect(e) => classify(e.as_ref()),
            SendError::Send(e) => classify(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server answering each request on a connection with "ok N" (N counts requests on that
    /// connection), closing after `per_conn` requests (0: never); with `slow`, the last byte of
    /// each body comes 300 ms after the rest, so the connection stays busy that long. Returns
    /// its address and a counter of accepted connections.
    async fn server(per_conn: usize) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        serve(per_conn, false, true).await
    }

    /// `announce`: say `connection: close` on the last response of a connection (otherwise the
    /// server just closes it, as one whose keep-alive timeout passed).
    async fn serve(
        per_conn: usize,
        slow: bool,
        announce: bool,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(k) = s.read(&mut chunk).await else { return };
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            n += 1;
                            let body = format!("ok {n}");
                            let close = per_conn > 0 && n >= per_conn;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n",
                                body.len(),
                                if close && announce { "connection: close\r\n" } else { "" }
                            );
                            let all = format!("{head}{body}");
                            let (now, later) = all.as_bytes().split_at(all.len() - usize::from(slow));
                            if s.write_all(now).await.is_err() {
                                return;
                            }
                            if slow {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                if s.write_all(later).await.is_err() {
                                    return;
                                }
                            }
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// A pool in front of a test server.
    struct Fixture {
        uri: Uri,
        pool: Arc<H1Pool>,
        connector: Connector,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Fixture {
        fn new(
            server: (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>),
            max: usize,
            idle: Duration,
        ) -> Self {
            let (addr, accepted) = server;
            Fixture {
                uri: format!("http://{addr}/").parse().unwrap(),
                pool: H1Pool::new(max, idle, metrics::Counter::noop()),
                connector: Connector::new(HashMap::new(), Duration::from_secs(2), None),
                accepted,
            }
        }

        async fn get(&self) -> Response<Incoming> {
            let req = Request::get("/").header("host", "x").body(Body::empty()).unwrap();
            self.pool.send(&self.connector, &self.uri, req).await.ok().unwrap()
        }

        fn accepted(&self) -> usize {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    async fn text(res: Response<Incoming>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn reuses_a_connection_once_its_response_is_read() {
        let f = Fixture::new(server(0).await, 8, LONG);
        for i in 1..=5 {
            assert_eq!(text(f.get().await).await, format!("ok {i}"));
        }
        assert_eq!(f.accepted(), 1);
        assert_eq!(f.pool.len(), 1);
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_shared() {
        let f = Fixture::new(serve(0, true, true).await, 8, LONG);
        // The first response's body is not complete yet: its connection is busy.
        let first = f.get().await;
        let second = f.get().await;
        assert_eq!(text(second).await, "ok 1");
        assert_eq!(text(first).await, "ok 1");
        assert_eq!(f.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
        // The server closes after each response: every request needs a new connection, and
        // the closed one left in the pool must never surface as an error.
        let f = Fixture::new(server(1).await, 8, LONG);
        for _ in 0..5 {
            assert_eq!(text(f.get().await).await, "ok 1");
        }
        assert_eq!(f.accepted(), 5);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_dropped_while_idle_is_not_used() {
        let f = Fixture::new(serve(1, false, false).await, 8, LONG);
        for _ in 0..5 {
            assert_eq!(text(f.get().await).await, "ok 1");
            // The server's close reaches hyper's connection task before the next request.
            let deadline = Instant::now() + Duration::from_secs(5);
            while f.pool.conns.lock().unwrap().iter().any(|p| !p.sender.is_closed()) {
                assert!(Instant::now() < deadline, "the closed connection was not noticed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(f.accepted(), 5);
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_closed() {
        let f = Fixture::new(server(0).await, 8, Duration::from_millis(50));
        text(f.get().await).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.pool.len() > 0 {
            assert!(Instant::now() < deadline, "the idle connection was not swept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(text(f.get().await).await, "ok 1");
        assert_eq!(f.accepted(), 2);
    }

    #[tokio::test]
    async fn keeps_at_most_max_connections() {
        let f = Fixture::new(serve(0, true, true).await, 2, LONG);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(f.get().await);
        }
        assert_eq!(f.pool.len(), 2);
        for r in held {
            text(r).await;
        }
    }

    #[tokio::test]
    async fn a_response_dropped_mid_body_leaves_no_busy_connection_behind() {
        // The client went away while the body was still coming: hyper closes that connection
        // (it cannot be reused mid-body), and the pool must not keep it as a busy entry.
        let f = Fixture::new(serve(0, true, true).await, 8, LONG);
        drop(f.get().await);
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.pool.conns.lock().unwrap().iter().any(|p| !p.sender.is_closed()) {
            assert!(Instant::now() < deadline, "the abandoned connection stayed open");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(text(f.get().await).await, "ok 1");
        assert_eq!(f.accepted(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let f = Fixture::new((addr, Arc::default()), 2, LONG);
        let req = Request::get("/").header("host", "x").body(Body::empty()).unwrap();
        assert!(matches!(f.pool.send(&f.connector, &f.uri, req).await, Err(SendError::Connect(_))));
    }
}
