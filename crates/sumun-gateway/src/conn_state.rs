//! Per-connection activity bookkeeping for the idle and header timeouts: the IO wrapper
//! records when bytes move, the request handler records when requests start and end, and the
//! connection task reads both to decide when to close.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_io: AtomicU64,
    /// Milliseconds since `epoch` + 1 of the first byte of a request head still being read; 0
    /// when no head is pending.
    head_started: AtomicU64,
    /// HTTP/2 connections send frames between requests; the header timeout is HTTP/1's.
    h2: AtomicBool,
}

/// What the connection task should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    WaitUntil(Instant),
    /// No request and no traffic for the idle timeout: close gracefully.
    Idle,
    /// A request head took longer than the header timeout: drop the connection.
    HeaderTimeout,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read_activity(&self) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now + 1, Ordering::Relaxed);
        }
    }

    fn write_activity(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn request_started(&self, h2: bool) {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Decides between waiting, closing an idle connection and dropping a slow one.
    ///
    /// Nothing wakes the connection task when a request starts or ends (that would cost a
    /// task wake-up per request), so every wait is capped at half the shorter timeout: a slow
    /// head or an idle connection is cut off after at most 1.5× its timeout.
    pub fn check(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now_ms();
        let at = |ms: u64| self.epoch + Duration::from_millis(ms);
        let header_ms = header_timeout.as_millis() as u64;
        let idle_ms = idle_timeout.as_millis() as u64;
        let recheck = now + (header_ms.min(idle_ms) / 2).max(1);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::WaitUntil(at(recheck));
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let started = head - 1;
            if now >= started + header_ms {
                return Verdict::HeaderTimeout;
            }
            return Verdict::WaitUntil(at((started + header_ms).min(recheck)));
        }
        let last = self.last_io.load(Ordering::Relaxed);
        if now >= last + idle_ms {
            return Verdict::Idle;
        }
        Verdict::WaitUntil(at((last + idle_ms).min(recheck)))
    }
}

pin_project_lite::pin_project! {
    /// Passes bytes through unchanged, noting activity in the connection state.
    pub struct ActivityIo<S> {
        #[pin]
        inner: S,
        state: Arc<ConnState>,
    }
}

impl<S> ActivityIo<S> {
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        ActivityIo { inner, state }
    }
}

impl<S: AsyncRead> AsyncRead for ActivityIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.read_activity();
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for ActivityIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.write_activity();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.write_activity();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_then_header_timeout() {
        let s = ConnState::new();
        let d = Duration::from_millis(0);
        assert_eq!(s.check(Duration::from_secs(10), d), Verdict::Idle);
        s.read_activity();
        assert_eq!(s.check(d, Duration::from_secs(10)), Verdict::HeaderTimeout);
        s.request_started(false);
        assert!(matches!(s.check(d, d), Verdict::WaitUntil(_)));
        s.request_finished();
        assert_eq!(s.check(d, d), Verdict::Idle);
    }

    #[test]
    fn h2_is_exempt_from_header_timeout() {
        let s = ConnState::new();
        s.request_started(true);
        s.request_finished();
        s.read_activity();
        assert!(matches!(s.check(Duration::ZERO, Duration::from_secs(5)), Verdict::WaitUntil(_)));
    }
}
