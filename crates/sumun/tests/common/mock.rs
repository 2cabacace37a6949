//! Mock upstreams on hyper 1: HTTP/1.1 or h2c (prior knowledge), on 127.0.0.1:0 or a unix
//! socket. They record every request (head first, then body and trailers as they arrive) and
//! answer with a programmable [`Behavior`]. [`RawMock`] hands raw TCP connections to a
//! closure for answers hyper would never produce.

use std::convert::Infallible;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};

use super::RT;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// As received: origin-form for HTTP/1.1, absolute for h2 (with `:authority`).
    pub uri: String,
    pub path: String,
    /// `path?query` as received.
    pub path_and_query: String,
    pub authority: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    /// Stored body bytes (empty when the behaviour discards the body).
    pub body: Vec<u8>,
    /// Body bytes received so far (stored or discarded).
    pub body_len: u64,
    pub trailers: Option<HeaderMap>,
    /// The body ended cleanly.
    pub complete: bool,
    /// Reading the body ended (cleanly or with `body_error`).
    pub finished: bool,
    pub body_error: Option<String>,
}

impl Recorded {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

/// Opens a gate a mock response body waits on.
#[derive(Clone, Default)]
pub struct Gate(Arc<Notify>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        self.0.notify_one();
    }

    async fn wait(&self) {
        self.0.notified().await;
    }
}

/// What the response body is.
#[derive(Clone)]
pub enum Payload {
    /// A fixed body (Content-Length unless trailers are sent).
    Bytes(Bytes),
    /// `total` bytes generated on the fly in `chunk`-sized frames (chunked encoding).
    Stream { total: u64, chunk: usize },
    /// `first`, then wait for the gate, then `rest` (chunked encoding).
    Gated { first: Bytes, gate: Gate, rest: Bytes },
    /// These bytes, then the body fails: hyper aborts the connection mid-body.
    AbortAfter(Bytes),
}

/// How the mock answers one request.
#[derive(Clone)]
pub struct Behavior {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub payload: Payload,
    pub trailers: Vec<(String, String)>,
    /// Sleep after reading the request body, before sending the response head.
    pub delay: Duration,
    /// Count the request body without keeping it (large uploads).
    pub discard_body: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::text("mock")
    }
}

impl Behavior {
    /// 200 with this body and no headers of its own.
    pub fn text(body: &str) -> Behavior {
        Behavior {
            status: 200,
            headers: Vec::new(),
            payload: Payload::Bytes(Bytes::copy_from_slice(body.as_bytes())),
            trailers: Vec::new(),
            delay: Duration::ZERO,
            discard_body: false,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a response header (several with one name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn discard_body(mut self) -> Self {
        self.discard_body = true;
        self
    }

    pub fn payload(mut self, p: Payload) -> Self {
        self.payload = p;
        self
    }

    pub fn stream(self, total: u64, chunk: usize) -> Self {
        self.payload(Payload::Stream { total, chunk })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Proto {
    #[default]
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MockOpts {
    pub proto: Proto,
    /// Listen on a unix socket instead of 127.0.0.1:0.
    pub unix: bool,
}

type Handler = Arc<dyn Fn(&http::request::Parts) -> Behavior + Send + Sync>;

struct State {
    reqs: Mutex<Vec<Recorded>>,
    cv: Condvar,
    handler: Handler,
    connections: AtomicUsize,
}

impl State {
    fn push(&self, r: Recorded) -> usize {
        let mut g = self.reqs.lock().unwrap();
        g.push(r);
        self.cv.notify_all();
        g.len() - 1
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut Recorded)) {
        let mut g = self.reqs.lock().unwrap();
        if let Some(r) = g.get_mut(i) {
            f(r);
        }
        self.cv.notify_all();
    }
}

/// A running mock upstream; stops on drop.
pub struct Mock {
    state: Arc<State>,
    endpoint: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Mock {
    /// An HTTP/1.1 mock on 127.0.0.1 answering every request with `b`.
    pub fn start(b: Behavior) -> Mock {
        Self::start_opts(MockOpts::default(), move |_| b.clone())
    }

    /// An h2c (prior knowledge) mock on 127.0.0.1.
    pub fn h2c(b: Behavior) -> Mock {
        Self::start_opts(MockOpts { proto: Proto::H2c, unix: false }, move |_| b.clone())
    }

    /// An HTTP/1.1 mock on a unix socket.
    pub fn unix(b: Behavior) -> Mock {
        Self::start_opts(MockOpts { proto: Proto::Http1, unix: true }, move |_| b.clone())
    }

    /// A mock whose behaviour is chosen per request from its head.
    pub fn start_opts(
        opts: MockOpts,
        handler: impl Fn(&http::request::Parts) -> Behavior + Send + Sync + 'static,
    ) -> Mock {
        let state = Arc::new(State {
            reqs: Mutex::new(Vec::new()),
            cv: Condvar::new(),
            handler: Arc::new(handler),
            connections: AtomicUsize::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let proto = opts.proto;
        if opts.unix {
            let dir = tempfile::Builder::new().prefix("mock").tempdir_in("/tmp").expect("temp dir");
            let path: PathBuf = dir.path().join("up.sock");
            let listener = {
                let _g = RT.enter();
                tokio::net::UnixListener::bind(&path).expect("bind unix mock")
            };
            let st = state.clone();
            let task = RT.spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    st.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_io(s, proto, st.clone(), stop_rx.clone()));
                }
            });
            Mock { state, endpoint: format!("unix:{}", path.display()), stop, task, _dir: Some(dir) }
        } else {
            let std_l = StdListener::bind("127.0.0.1:0").expect("bind mock");
            std_l.set_nonblocking(true).expect("nonblocking");
            let addr = std_l.local_addr().expect("addr");
            let listener = {
                let _g = RT.enter();
                tokio::net::TcpListener::from_std(std_l).expect("tokio listener")
            };
            let st = state.clone();
            let task = RT.spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    st.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_io(s, proto, st.clone(), stop_rx.clone()));
                }
            });
            Mock { state, endpoint: addr.to_string(), stop, task, _dir: None }
        }
    }

    /// The address to write in `endpoints`: `127.0.0.1:PORT` or `unix:/path`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.reqs.lock().unwrap().clone()
    }

    /// Requests whose head arrived so far.
    pub fn count(&self) -> usize {
        self.state.reqs.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until `pred` holds for the recorded requests; panics after `timeout`.
    pub fn wait(&self, timeout: Duration, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        self.try_wait(timeout, pred).unwrap_or_else(|| {
            panic!(
                "mock: timed out after {timeout:?} waiting for {what}; have {:#?}",
                self.requests()
                    .iter()
                    .map(|r| (&r.method, &r.uri, r.body_len, r.finished))
                    .collect::<Vec<_>>()
            )
        })
    }

    /// Like [`Mock::wait`] but returns None on timeout.
    pub fn try_wait(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> Option<Vec<Recorded>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.state.reqs.lock().unwrap();
        loop {
            if pred(&g) {
                return Some(g.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self.state.cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits for `n` requests whose bodies were read to the end (or failed).
    pub fn wait_finished(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait(timeout, &format!("{n} finished request(s)"), |r| {
            r.iter().filter(|r| r.finished).count() >= n
        })
    }

    /// The single request the mock got, once its body has been read.
    pub fn only(&self) -> Recorded {
        let r = self.wait_finished(1, Duration::from_secs(10));
        assert_eq!(r.len(), 1, "expected exactly one upstream request");
        r.into_iter().next().expect("one")
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

async fn serve_io<I>(io: I, proto: Proto, state: Arc<State>, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
    let io = TokioIo::new(io);
    match proto {
        Proto::Http1 => {
            let conn =
                hyper::server::conn::http1::Builder::new().timer(TokioTimer::new()).serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        }
        Proto::H2c => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        }
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<MockBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let behavior = (state.handler)(&parts);
    let idx = state.push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        path: parts.uri.path().to_owned(),
        path_and_query: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        version: parts.version,
        headers: parts.headers.clone(),
        body: Vec::new(),
        body_len: 0,
        trailers: None,
        complete: false,
        finished: false,
        body_error: None,
    });
    let mut stored = Vec::new();
    let mut len = 0u64;
    let mut last_report = Instant::now();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    len += d.len() as u64;
                    if !behavior.discard_body {
                        stored.extend_from_slice(&d);
                    }
                    // Report the first bytes at once (streaming tests watch for them), then
                    // at most every 50 ms.
                    if len == d.len() as u64 || last_report.elapsed() > Duration::from_millis(50) {
                        last_report = Instant::now();
                        state.update(idx, |r| r.body_len = len);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        state.update(idx, |r| r.trailers = Some(t));
                    }
                }
            },
            Some(Err(e)) => {
                let stored = std::mem::take(&mut stored);
                state.update(idx, |r| {
                    r.body = stored;
                    r.body_len = len;
                    r.finished = true;
                    r.body_error = Some(e.to_string());
                });
                // The request is broken; answer anyway (the peer is probably gone).
                return Ok(error_response());
            }
            None => break,
        }
    }
    state.update(idx, |r| {
        r.body = stored;
        r.body_len = len;
        r.complete = true;
        r.finished = true;
    });
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    Ok(respond(&behavior))
}

fn error_response() -> Response<MockBody> {
    let mut res = Response::new(MockBody::Full(Some(Bytes::from_static(b"mock: bad body"))));
    *res.status_mut() = http::StatusCode::BAD_REQUEST;
    res
}

fn respond(b: &Behavior) -> Response<MockBody> {
    let mut trailers = HeaderMap::new();
    for (n, v) in &b.trailers {
        trailers.append(
            HeaderName::from_bytes(n.as_bytes()).expect("trailer name"),
            HeaderValue::from_str(v).expect("trailer value"),
        );
    }
    let trailers = (!trailers.is_empty()).then_some(trailers);
    let body = match (&b.payload, trailers) {
        (Payload::Bytes(d), None) => MockBody::Full(Some(d.clone())),
        (payload, trailers) => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            let payload = payload.clone();
            tokio::spawn(async move {
                let ok = produce(&tx, payload).await;
                if ok && let Some(t) = trailers {
                    let _ = tx.send(Ok(Frame::trailers(t))).await;
                }
            });
            MockBody::Chan(rx)
        }
    };
    let mut res = Response::new(body);
    *res.status_mut() = http::StatusCode::from_u16(b.status).expect("status");
    for (n, v) in &b.headers {
        res.headers_mut().append(
            HeaderName::from_bytes(n.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    res
}

/// Sends the payload's frames; false when the body was failed on purpose or the peer left.
async fn produce(tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>, payload: Payload) -> bool {
    let send = |d: Bytes| tx.send(Ok(Frame::data(d)));
    match payload {
        Payload::Bytes(d) => send(d).await.is_ok(),
        Payload::Stream { total, chunk } => {
            let block = Bytes::from(vec![b'x'; chunk]);
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk as u64);
                if send(block.slice(..n as usize)).await.is_err() {
                    return false;
                }
                left -= n;
            }
            true
        }
        Payload::Gated { first, gate, rest } => {
            if send(first).await.is_err() {
                return false;
            }
            gate.wait().await;
            send(rest).await.is_ok()
        }
        Payload::AbortAfter(d) => {
            let _ = send(d).await;
            // Give hyper time to flush what was sent before failing the body.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Err(std::io::Error::other("mock aborts the body"))).await;
            false
        }
    }
}

/// The mock's response body: a fixed buffer or frames from a producer task.
pub enum MockBody {
    Full(Option<Bytes>),
    Chan(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>),
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            MockBody::Full(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
            MockBody::Chan(rx) => rx.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            MockBody::Full(d) => http_body::SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            MockBody::Chan(_) => http_body::SizeHint::default(),
        }
    }
}

/// A TCP server that hands each connection to a closure on its own thread.
pub struct RawMock {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl RawMock {
    pub fn start(handler: impl Fn(StdStream) + Send + Sync + 'static) -> RawMock {
        let l = StdListener::bind("127.0.0.1:0").expect("bind raw mock");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (st, conns) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let h = handler.clone();
                std::thread::spawn(move || h(s));
            }
        });
        RawMock { addr, stop, connections }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawMock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = StdStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Reads an HTTP/1 request head (up to the blank line) from a raw stream.
pub fn read_head(s: &mut StdStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    head
}
