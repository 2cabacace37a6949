//! Streaming fill: the response body the first client reads while the cache keeps a copy.
//! Frames go to the client as they arrive; the copy is stored only when the upstream body
//! ended cleanly. Past `max_object` the copy is dropped and the rest streams through. An
//! upstream error discards the copy (never stored truncated). If the client goes away first,
//! the rest of the body is read in the background (bounded in bytes and time) so the fill
//! still completes for the requests waiting on it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use sumun_http::{Body, BodyError};

use crate::coalesce::FillGuard;
use crate::store::{Store, Stored};

/// Bodies up to this size are joined into one buffer when stored, so a hit is one frame.
const JOIN_BELOW: u64 = 64 << 10;
/// How long a fill whose client left may keep reading the upstream body.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The copy being made, and where it goes when complete.
pub struct Fill {
    pub store: Arc<Store>,
    pub key: u128,
    pub url: String,
    /// The response to store, without its body yet.
    pub proto: Stored,
    pub max: u64,
    pub guard: Option<FillGuard>,
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) len: u64,
}

impl Fill {
    pub fn new(
        store: Arc<Store>,
        key: u128,
        url: String,
        proto: Stored,
        max: u64,
        guard: Option<FillGuard>,
    ) -> Fill {
        Fill { store, key, url, proto, max, guard, chunks: Vec::new(), len: 0 }
    }

    /// Keeps a copy of `data`; false when the object just grew past `max`.
    fn push(&mut self, data: &Bytes) -> bool {
        self.len += data.len() as u64;
        if self.len > self.max {
            return false;
        }
        if !data.is_empty() {
            self.chunks.push(data.clone());
        }
        true
    }

    fn complete(mut self) {
        let body = if self.len <= JOIN_BELOW && self.chunks.len() > 1 {
            let mut joined = BytesMut::with_capacity(self.len as usize);
            for c in &self.chunks {
                joined.extend_from_slice(c);
            }
            vec![joined.freeze()]
        } else {
            std::mem::take(&mut self.chunks)
        };
        self.proto.body = body;
        self.proto.body_len = self.len;
        let Fill { store, key, url, proto, guard, .. } = self;
        store.insert(key, &url, Arc::new(proto));
        if let Some(g) = guard {
            g.stored();
        }
    }
}

pin_project_lite::pin_project! {
    /// The client's view of a filling response.
    pub struct FillBody {
        inner: Option<Body>,
        fill: Option<Fill>,
    }

    impl PinnedDrop for FillBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(inner), Some(fill)) = (this.inner.take(), this.fill.take()) {
                drain(inner, fill);
            }
        }
    }
}

impl FillBody {
    pub fn new(inner: Body, fill: Fill) -> FillBody {
        FillBody { inner: Some(inner), fill: Some(fill) }
    }
}

impl http_body::Body for FillBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        let r = Pin::new(inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(fill)) = (frame.data_ref(), this.fill.as_mut())
                    && !fill.push(data)
                {
                    // Too big to keep: the waiters go upstream themselves.
                    this.fill.take();
                }
                // A body of known length ends with its last byte: store before the client
                // sees the end, so its next request is a hit.
                if this.inner.as_ref().is_some_and(|b| b.is_end_stream())
                    && let Some(fill) = this.fill.take()
                {
                    fill.complete();
                }
            }
            Poll::Ready(None) => {
                *this.inner = None;
                if let Some(fill) = this.fill.take() {
                    fill.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // Never store a truncated body.
                this.fill.take();
                *this.inner = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Reads the rest of `inner` into `fill` off the request path; gives up (storing nothing)
/// on error, past `max`, or after [`DRAIN_LIMIT`].
pub fn drain(inner: Body, fill: Fill) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        let mut body = FillBody::new(inner, fill);
        let read = async {
            while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                if frame.is_err() || body.fill.is_none() {
                    break;
                }
            }
        };
        if tokio::time::timeout(DRAIN_LIMIT, read).await.is_err() {
            body.fill.take();
        }
        // Whatever is left is dropped here without another drain.
        body.inner.take();
        body.fill.take();
    });
}

/// A stored body served to a hit: the stored chunks, cloned as handles.
pub struct StoredBody {
    entry: Arc<Stored>,
    next: usize,
}

impl StoredBody {
    /// The body for a hit: a plain full body for the common one-chunk case.
    pub fn for_entry(entry: &Arc<Stored>) -> Body {
        match entry.body.as_slice() {
            [] => Body::empty(),
            [one] => Body::full(one.clone()),
            _ => Body::boxed(StoredBody { entry: entry.clone(), next: 0 }),
        }
    }
}

impl http_body::Body for StoredBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let i = self.next;
        self.next += 1;
        Poll::Ready(self.entry.body.get(i).map(|c| Ok(Frame::data(c.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.entry.body.len()
    }

    fn size_hint(&self) -> SizeHint {
        let rest: u64 = self.entry.body.iter().skip(self.next).map(|c| c.len() as u64).sum();
        SizeHint::with_exact(rest)
    }
}

/// A body of a few `Bytes` handles (a range of a multi-chunk stored body).
pub struct ChunksBody {
    chunks: std::collections::VecDeque<Bytes>,
}

impl ChunksBody {
    pub fn new(chunks: Vec<Bytes>) -> ChunksBody {
        ChunksBody { chunks: chunks.into() }
    }
}

impl http_body::Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}
