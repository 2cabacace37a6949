//! The life of one request after routing: the response body wrapper that counts bytes and,
//! when the body ends (or the client goes away), records metrics and the access-log line.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use sumun_http::{Body, BodyError};

use crate::access_log::{AccessRecord, now_rfc3339};
use crate::conn_state::ConnState;
use crate::runtime::Runtime;

/// Everything needed to account for a request once its response is done.
pub struct Exchange {
    pub runtime: Arc<Runtime>,
    pub conn: Arc<ConnState>,
    pub access_log: Option<crate::access_log::AccessLogger>,
    pub listener: Arc<str>,
    pub peer: Option<SocketAddr>,
    pub start: Instant,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub request_id: HeaderValue,
    /// Index of the matched route in `runtime.routes`.
    pub route: Option<usize>,
    pub upstream: Option<Arc<str>>,
    pub bytes_in: u64,
    pub error: Option<&'static str>,
    /// The egress rule that decided a forward-proxy request, for the audit trail.
    pub rule: Option<String>,
    /// Forward-proxy audit fields.
    pub egress: Option<Box<crate::access_log::EgressAudit>>,
    /// A CONNECT tunnel writes its own access-log line when it closes.
    pub deferred_log: bool,
    /// Bytes of a request body without Content-Length, counted as it streams.
    pub bytes_in_counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// The authenticated caller, for the access log.
    pub subject: Option<String>,
    /// The cache's verdict, for the access log.
    pub cache: Option<&'static str>,
}

impl Exchange {
    /// The request body, limited to `max` bytes; counted for the access log when its length
    /// was not declared.
    pub fn request_body(&mut self, inner: hyper::body::Incoming, max: u64, declared: Option<u64>) -> Body {
        if declared.is_none() && self.access_log.is_some() && !http_body::Body::is_end_stream(&inner) {
            let c = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            self.bytes_in_counter = Some(c.clone());
            Body::limited_counted(inner, max, c)
        } else {
            Body::limited(inner, max)
        }
    }
}

impl Exchange {
    fn finish(mut self, status: StatusCode, bytes_out: u64, aborted: bool) {
        if let Some(c) = &self.bytes_in_counter {
            self.bytes_in = c.load(std::sync::atomic::Ordering::Relaxed);
        }
        let route = self.route.and_then(|i| self.runtime.routes.get(i));
        let metrics = route.map_or(&self.runtime.unrouted, |r| &r.metrics);
        let elapsed = self.start.elapsed();
        metrics.count(status);
        metrics.duration.record(elapsed.as_secs_f64());
        self.conn.request_finished();
        if let Some(e) = self.egress.as_deref_mut().filter(|e| e.kind == "forward") {
            e.bytes_up = self.bytes_in;
            e.bytes_down = bytes_out;
        }
        if let Some(log) = self.access_log.as_ref().filter(|_| !self.deferred_log) {
            let error = if aborted { Some(self.error.unwrap_or("response_aborted")) } else { self.error };
            log.log(&AccessRecord {
                time: now_rfc3339(),
                listener: &self.listener,
                route: route.map(|r| &*r.name),
                client: self.peer.map(|p| p.ip().to_string()),
                method: self.method.as_str(),
                path: &self.path,
                version: version_str(self.version),
                status: status.as_u16(),
                bytes_in: self.bytes_in,
                bytes_out,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream: self.upstream.as_deref(),
                request_id: self.request_id.to_str().unwrap_or(""),
                error,
                rule: self.rule.as_deref(),
                subject: self.subject.as_deref(),
                cache: self.cache,
                egress: self.egress.as_deref(),
            });
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

pin_project_lite::pin_project! {
    /// The response body handed to hyper. Accounting happens exactly once: at the end of the
    /// stream, on a stream error, or when hyper drops it early (client gone).
    pub struct ResponseBody {
        #[pin]
        inner: Body,
        status: StatusCode,
        bytes_out: u64,
        exchange: Option<Box<Exchange>>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ex) = this.exchange.take() {
                let done = http_body::Body::is_end_stream(&*this.inner);
                ex.finish(*this.status, *this.bytes_out, !done);
            }
        }
    }
}

impl ResponseBody {
    pub fn new(inner: Body, status: StatusCode, exchange: Box<Exchange>) -> Self {
        ResponseBody { inner, status, bytes_out: 0, exchange: Some(exchange) }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes_out += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(ex) = this.exchange.take() {
                    ex.finish(*this.status, *this.bytes_out, false);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body aborted");
                if let Some(mut ex) = this.exchange.take() {
                    ex.error = Some("upstream_body_aborted");
                    ex.finish(*this.status, *this.bytes_out, true);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
