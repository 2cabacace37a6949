//! One body type for requests and responses, so layers never box per request on the hot path.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

/// Errors a body can yield while streaming.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body grew past the configured limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pin_project_lite::pin_project! {
    /// The body sumun streams: an incoming stream (optionally length-limited), a fixed buffer,
    /// nothing, or — off the hot path — any boxed body.
    #[project = BodyProj]
    pub enum Body {
        Empty,
        Full { data: Option<Bytes> },
        Incoming { #[pin] inner: Incoming },
        Limited { #[pin] inner: Incoming, seen: u64, limit: u64, counter: Option<Arc<AtomicU64>> },
        Boxed { #[pin] inner: UnsyncBoxBody<Bytes, BodyError> },
    }
}

impl Body {
    pub fn empty() -> Self {
        Body::Empty
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        if data.is_empty() { Body::Empty } else { Body::Full { data: Some(data) } }
    }

    pub fn incoming(inner: Incoming) -> Self {
        Body::Incoming { inner }
    }

    /// Streams `inner` but fails with [`BodyTooLarge`] once more than `limit` bytes went by.
    pub fn limited(inner: Incoming, limit: u64) -> Self {
        Body::Limited { inner, seen: 0, limit, counter: None }
    }

    /// Like [`Body::limited`], also publishing the bytes read so far to `counter` (the access
    /// log's `bytes_in` for bodies without a Content-Length).
    pub fn limited_counted(inner: Incoming, limit: u64, counter: Arc<AtomicU64>) -> Self {
        Body::Limited { inner, seen: 0, limit, counter: Some(counter) }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        use http_body_util::BodyExt;
        Body::Boxed { inner: body.map_err(Into::into).boxed_unsync() }
    }
}

// pin-project-lite's enum syntax has no room for `#[default]` on a variant.
#[allow(clippy::derivable_impls)]
impl Default for Body {
    fn default() -> Self {
        Body::Empty
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Body::Empty => "Empty",
            Body::Full { .. } => "Full",
            Body::Incoming { .. } => "Incoming",
            Body::Limited { .. } => "Limited",
            Body::Boxed { .. } => "Boxed",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            BodyProj::Empty => Poll::Ready(None),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Incoming { inner } => inner.poll_frame(cx).map_err(Into::into),
            BodyProj::Limited { inner, seen, limit, counter } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len() as u64;
                        if let Some(c) = counter {
                            c.store(*seen, Ordering::Relaxed);
                        }
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map_err(Into::into),
            },
            BodyProj::Boxed { inner } => inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full { data } => data.is_none(),
            Body::Incoming { inner } | Body::Limited { inner, .. } => inner.is_end_stream(),
            Body::Boxed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Incoming { inner } | Body::Limited { inner, .. } => inner.size_hint(),
            Body::Boxed { inner } => inner.size_hint(),
        }
    }
}

/// True when `err` (or anything in its source chain) is a [`BodyTooLarge`].
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        cur = e.source();
    }
    false
}
