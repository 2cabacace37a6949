//! The response side: the body handed to the client is teed into a bounded copy, and the copy
//! becomes the key's record when the body ends. The end of the stream is held back until a
//! shared store has the record, so a client that repeats the request as soon as it has the
//! answer finds the record, not the in-flight marker. If the client goes away first, the rest
//! of the body is read in the background (bounded by size and time) so the record is still
//! written: the upstream did the work, a retry must not do it again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::HeaderMap;
use http_body::Body as _;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use sumun_http::Body;
use sumun_http::body::BodyError;

use super::Claim;
use super::record::Record;

pub(super) type Write = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long the rest of a body is read after the client left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The copy being made of one response.
pub(super) struct Capture {
    pub(super) claim: Claim,
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) buf: BytesMut,
    pub(super) trailers: Option<HeaderMap>,
}

impl Capture {
    /// Adds a frame; false once the body is larger than `max_body` (the copy is abandoned).
    fn push(&mut self, frame: &Frame<Bytes>) -> bool {
        if let Some(data) = frame.data_ref() {
            if self.buf.len() + data.len() > self.claim.shared.max_body {
                return false;
            }
            self.buf.extend_from_slice(data);
        } else if let Some(t) = frame.trailers_ref() {
            self.trailers.get_or_insert_with(HeaderMap::new).extend(t.clone());
        }
        true
    }

    /// The body ended: the record goes to the store. The future, when there is one, is the
    /// shared store's write.
    fn finish(self) -> Option<Write> {
        let record = Record {
            fingerprint: self.claim.fingerprint,
            status: self.status,
            headers: self.headers,
            body: self.buf.freeze(),
            trailers: self.trailers,
        };
        self.claim.complete(record)
    }
}

/// The response body while it is being recorded.
pub(super) struct Recording {
    inner: Body,
    capture: Option<Capture>,
    writing: Option<Write>,
}

impl Recording {
    pub(super) fn new(inner: Body, capture: Capture) -> Self {
        Recording { inner, capture: Some(capture), writing: None }
    }

    fn abandon(&mut self) {
        if let Some(c) = self.capture.take() {
            c.claim.shared.metrics.skipped.increment(1);
        }
    }
}

impl http_body::Body for Recording {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(w) = this.writing.as_mut() {
            // The inner body has ended; its end is reported once the record is written.
            ready!(w.as_mut().poll(cx));
            this.writing = None;
            return Poll::Ready(None);
        }
        let res = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &res {
            Some(Ok(frame)) => {
                if let Some(c) = this.capture.as_mut() {
                    if !c.push(frame) {
                        this.abandon();
                    } else if this.inner.is_end_stream() {
                        this.writing = this.capture.take().and_then(Capture::finish);
                    }
                }
            }
            Some(Err(_)) => this.abandon(),
            None => {
                if let Some(mut w) = this.capture.take().and_then(Capture::finish) {
                    if w.as_mut().poll(cx).is_pending() {
                        this.writing = Some(w);
                        return Poll::Pending;
                    }
                }
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.writing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(w) = self.writing.take() {
            spawn(w);
        }
        let Some(capture) = self.capture.take() else { return };
        if self.inner.is_end_stream() {
            if let Some(w) = capture.finish() {
                spawn(w);
            }
            return;
        }
        // The client left mid-body: read the rest without it.
        let body = std::mem::take(&mut self.inner);
        spawn(Box::pin(drain(body, capture)));
    }
}

async fn drain(mut body: Body, mut capture: Capture) {
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) if capture.push(&f) => {}
                _ => return false,
            }
        }
        true
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, read).await {
        Ok(true) => {
            if let Some(w) = capture.finish() {
                w.await;
            }
        }
        // Dropping the capture releases the key.
        _ => capture.claim.shared.metrics.skipped.increment(1),
    }
}

/// Runs `w` on the current runtime; outside one (never on the request path) it is dropped,
/// and a shared store's marker then expires by itself.
pub(super) fn spawn(w: Write) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(w);
    }
}

/// The stored response, replayed.
pub(super) fn replay_body(record: &Arc<Record>) -> Body {
    match &record.trailers {
        None => Body::full(record.body.clone()),
        Some(t) => {
            let frames = [
                Ok::<_, std::convert::Infallible>(Frame::data(record.body.clone())),
                Ok(Frame::trailers(t.clone())),
            ];
            Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
        }
    }
}
