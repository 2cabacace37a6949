//! A request body that can be sent again: while a try streams it, its frames are also kept in
//! a bounded buffer, so a retry can replay them and then go on with what was not read yet.
//!
//! How it is used (the same pattern as linkerd2-proxy's replay body):
//!
//! ```text
//! let body = ReplayBody::new(body, policy.replay_buffer);
//! let mut spare = body.try_clone();          // made before the first try takes `body`
//! send(body) → fails
//! if retryable(.., spare.as_ref().is_some_and(|b| !b.is_capped()), ..) {
//!     let body = spare.take()?;  spare = body.try_clone();  send(body) …
//! }
//! ```
//!
//! - Streaming stays streaming: each frame goes out as soon as the inner body yields it; the
//!   buffer keeps a cheap `Bytes` clone of it.
//! - All clones share the inner body and the buffer behind one mutex, locked only while a
//!   clone is being polled. A clone first replays the buffered frames it has not yielded yet,
//!   then reads on from the inner body (adding to the buffer). So any clone sees the whole body
//!   in order, whichever clone read a given frame first, even if an abandoned try still polls.
//! - Once more than `limit` data bytes were read the body is *capped*: the buffer is freed,
//!   `try_clone` returns `None`, and only the clone that read past the limit can go on; any
//!   other clone yields an error rather than a silently short body. A body whose size hint
//!   already exceeds `limit` is capped at its first data frame without buffering anything.
//! - A body never polled (e.g. the try failed to connect) can always be cloned again.
//! - Whichever clone reads a frame from the inner body wakes the other clones waiting on it
//!   (the inner body only remembers the last poller's waker), so none of them hangs.
//! - Trailers are kept too (outside the byte limit) and replayed after the data.
//! - An error from the inner body ends replaying: the client's body is broken, no retry can
//!   send it again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use crate::body::{Body, BodyError};

/// Why a replay body could not yield the rest of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// More than the replay buffer was read by another try: the bytes are gone.
    #[error("request body is larger than the replay buffer and cannot be sent again")]
    Capped,
    /// The request body failed while an earlier try read it.
    #[error("request body failed while an earlier try was reading it")]
    Failed,
    /// A poll of the inner body panicked; the shared state cannot be trusted.
    #[error("request body state poisoned by a panic")]
    Poisoned,
}

/// See the module docs.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Shared>,
    cursor: Cursor,
}

/// Where one clone stands in the body.
#[derive(Debug, Default)]
struct Cursor {
    /// Which clone this is; the one that reads past the limit becomes the only reader.
    id: u64,
    /// Index of the next buffered chunk this clone replays.
    pos: usize,
    /// Bytes of the buffer this clone has yielded (for `size_hint`).
    replayed: u64,
    trailers_sent: bool,
    /// This clone yielded its end or an error: nothing more comes.
    finished: bool,
}

impl Cursor {
    fn fail(&mut self, error: ReplayError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.finished = true;
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limit: u64,
    /// The inner body's size hint before anything was read.
    original_hint: SizeHint,
}

#[derive(Debug)]
struct State {
    /// The rest of the body; `None` once it ended or failed.
    inner: Option<Body>,
    /// Data frames read so far (while not capped).
    buf: Vec<Bytes>,
    buffered: u64,
    trailers: Option<HeaderMap>,
    capped: bool,
    /// The clone that read past the limit (meaningful when `capped`).
    owner: u64,
    failed: bool,
    next_id: u64,
    /// Clones waiting on the inner body. It keeps one waker (the last poller's), so whichever
    /// clone reads the next frame wakes the others: none of them can hang on a lost wake-up.
    waiting: Vec<(u64, Waker)>,
}

impl State {
    fn wait(&mut self, id: u64, waker: &Waker) {
        match self.waiting.iter_mut().find(|(waiting, _)| *waiting == id) {
            Some((_, known)) => known.clone_from(waker),
            None => self.waiting.push((id, waker.clone())),
        }
    }

    /// The inner body moved on: every other waiting clone has something to do.
    fn wake_others(&mut self, id: u64) {
        for (waiting, waker) in self.waiting.drain(..) {
            if waiting != id {
                waker.wake();
            }
        }
    }
}

impl ReplayBody {
    /// Wraps `body`, keeping up to `limit` bytes of data for replays.
    pub fn new(body: Body, limit: u64) -> Self {
        let original_hint = http_body::Body::size_hint(&body);
        let state = State {
            inner: Some(body),
            buf: Vec::new(),
            buffered: 0,
            trailers: None,
            capped: false,
            owner: 0,
            failed: false,
            next_id: 0,
            waiting: Vec::new(),
        };
        ReplayBody {
            shared: Arc::new(Shared { state: Mutex::new(state), limit, original_hint }),
            cursor: Cursor::default(),
        }
    }

    /// A body for another try that yields the whole body from its start, or `None` when that
    /// is no longer possible (capped, or the body failed).
    pub fn try_clone(&self) -> Option<ReplayBody> {
        let mut state = self.shared.state.lock().ok()?;
        if state.capped || state.failed {
            return None;
        }
        state.next_id += 1;
        Some(ReplayBody {
            shared: Arc::clone(&self.shared),
            cursor: Cursor { id: state.next_id, ..Cursor::default() },
        })
    }

    /// True once more than the limit was read (or the body failed): no further try can send
    /// the whole body.
    pub fn is_capped(&self) -> bool {
        self.shared.state.lock().map_or(true, |state| state.capped || state.failed)
    }

    /// The limit this body was created with.
    pub fn limit(&self) -> u64 {
        self.shared.limit
    }

    fn lock(&self) -> Option<MutexGuard<'_, State>> {
        self.shared.state.lock().ok()
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let ReplayBody { shared, cursor: this } = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let Ok(mut state) = shared.state.lock() else {
            return this.fail(ReplayError::Poisoned);
        };
        let state = &mut *state;

        if state.capped {
            if state.owner != this.id {
                return this.fail(ReplayError::Capped);
            }
        } else if let Some(chunk) = state.buf.get(this.pos) {
            this.pos += 1;
            this.replayed += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }

        // Caught up with the buffer: read on from the inner body.
        if let Some(inner) = state.inner.as_mut() {
            let Poll::Ready(polled) = Pin::new(inner).poll_frame(cx) else {
                state.wait(this.id, cx.waker());
                return Poll::Pending;
            };
            if !state.waiting.is_empty() {
                state.wake_others(this.id);
            }
            match polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if !state.capped && !data.is_empty() {
                            let len = data.len() as u64;
                            let total = state.buffered.saturating_add(len);
                            if total > shared.limit || shared.original_hint.lower() > shared.limit {
                                state.capped = true;
                                state.owner = this.id;
                                state.buf = Vec::new();
                                state.buffered = 0;
                                state.trailers = None;
                            } else {
                                state.buf.push(data.clone());
                                state.buffered = total;
                                this.pos = state.buf.len();
                                this.replayed += len;
                            }
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        if !state.capped {
                            state.trailers = Some(trailers.clone());
                        }
                        this.trailers_sent = true;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(error)) => {
                    state.inner = None;
                    state.failed = true;
                    state.buf = Vec::new();
                    state.trailers = None;
                    this.finished = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => state.inner = None,
            }
        }

        // The inner body has ended.
        if state.failed {
            return this.fail(ReplayError::Failed);
        }
        if !this.trailers_sent {
            if let Some(trailers) = &state.trailers {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
            }
        }
        this.finished = true;
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        let this = &self.cursor;
        if this.finished {
            return true;
        }
        // When in doubt say "not yet": polling then yields the error instead of a short body.
        let Some(state) = self.lock() else { return false };
        if state.failed || (state.capped && state.owner != this.id) {
            return false;
        }
        if !state.capped && this.pos < state.buf.len() {
            return false;
        }
        if state.inner.as_ref().is_some_and(|inner| !inner.is_end_stream()) {
            return false;
        }
        this.trailers_sent || state.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let this = &self.cursor;
        if this.finished {
            return SizeHint::with_exact(0);
        }
        let Some(state) = self.lock() else { return SizeHint::default() };
        if state.failed || (state.capped && state.owner != this.id) {
            return SizeHint::default();
        }
        let unreplayed = if state.capped { 0 } else { state.buffered.saturating_sub(this.replayed) };
        let rest = state.inner.as_ref().map_or(SizeHint::with_exact(0), |inner| inner.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(unreplayed));
        if let Some(upper) = rest.upper().and_then(|upper| upper.checked_add(unreplayed)) {
            hint.set_upper(upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use http::HeaderValue;
    use http_body::Body as _;

    use super::*;

    /// One scripted step of a test body.
    enum Step {
        Data(&'static str),
        Trailers,
        Pending,
        Fail,
    }

    /// A body that yields the scripted steps, `Pending` included (it never wakes anyone: the
    /// tests poll by hand).
    struct Script {
        steps: VecDeque<Step>,
        hint: Option<u64>,
    }

    impl http_body::Body for Script {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            match self.steps.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Data(s)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(s))))),
                Some(Step::Trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers())))),
                Some(Step::Pending) => Poll::Pending,
                Some(Step::Fail) => Poll::Ready(Some(Err("client went away".into()))),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.steps.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            self.hint.map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    fn script(steps: Vec<Step>) -> Body {
        Body::boxed(Script { steps: steps.into(), hint: None })
    }

    fn trailers() -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("x-checksum", HeaderValue::from_static("abc"));
        map
    }

    /// What a body yielded until it ended, errored or was pending.
    #[derive(Debug, Default, PartialEq)]
    struct Read {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        error: Option<String>,
        ended: bool,
    }

    /// Polls `body` until it ends, fails, or has been pending `pendings + 1` times.
    fn read(body: &mut ReplayBody, pendings: usize) -> Read {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Read::default();
        let mut left = pendings;
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending if left == 0 => return out,
                Poll::Pending => left -= 1,
                Poll::Ready(None) => {
                    out.ended = true;
                    return out;
                }
                Poll::Ready(Some(Err(e))) => {
                    out.error = Some(e.to_string());
                    return out;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => out.data.extend_from_slice(&data),
                    Err(frame) => out.trailers = frame.into_trailers().ok(),
                },
            }
        }
    }

    fn full(data: &str, trailers_expected: bool) -> Read {
        Read {
            data: data.as_bytes().to_vec(),
            trailers: trailers_expected.then(trailers),
            error: None,
            ended: true,
        }
    }

    #[test]
    fn small_body_is_replayed_whole_with_trailers() {
        let mut first = ReplayBody::new(
            script(vec![Step::Data("hello "), Step::Pending, Step::Data("world"), Step::Trailers]),
            1024,
        );
        let mut spare = first.try_clone().unwrap();
        assert_eq!(read(&mut first, 1), full("hello world", true));
        assert!(first.is_end_stream());
        assert!(!first.is_capped());

        assert_eq!(spare.size_hint().exact(), Some(11));
        assert!(!spare.is_end_stream());
        let mut third = spare.try_clone().unwrap();
        assert_eq!(read(&mut spare, 0), full("hello world", true));
        assert!(spare.is_end_stream());
        assert_eq!(spare.size_hint().exact(), Some(0));
        // And again, from a clone of a clone.
        assert_eq!(read(&mut third, 0), full("hello world", true));
    }

    #[test]
    fn full_body_replays() {
        let mut first = ReplayBody::new(Body::full("payload"), 64);
        assert_eq!(first.size_hint().exact(), Some(7));
        let mut second = first.try_clone().unwrap();
        assert_eq!(read(&mut first, 0), full("payload", false));
        assert_eq!(second.size_hint().exact(), Some(7));
        assert_eq!(read(&mut second, 0), full("payload", false));
    }

    #[test]
    fn streams_each_frame_as_it_arrives() {
        let mut body = ReplayBody::new(
            script(vec![Step::Data("a"), Step::Pending, Step::Data("b"), Step::Pending]),
            1024,
        );
        let got = read(&mut body, 0);
        assert_eq!(got.data, b"a");
        assert!(!got.ended);
        let got = read(&mut body, 0);
        assert_eq!(got.data, b"b");
        assert!(read(&mut body, 0).ended);
    }

    #[test]
    fn second_try_continues_after_a_partial_first_try() {
        let mut first = ReplayBody::new(
            script(vec![
                Step::Data("one,"),
                Step::Data("two,"),
                Step::Pending,
                Step::Data("three"),
                Step::Trailers,
            ]),
            1024,
        );
        let mut second = first.try_clone().unwrap();
        // The first try reads part of the body, then fails (its connection broke).
        let partial = read(&mut first, 0);
        assert_eq!(partial.data, b"one,two,");
        assert!(!partial.ended);
        drop(first);
        assert!(!second.is_end_stream());
        // The second replays what was read and goes on with the rest.
        assert_eq!(read(&mut second, 0), full("one,two,three", true));
    }

    #[test]
    fn interleaved_clones_each_see_the_whole_body() {
        let mut a = ReplayBody::new(script(vec![Step::Data("1"), Step::Data("2"), Step::Data("3")]), 1024);
        let mut b = a.try_clone().unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let mut next = |body: &mut ReplayBody| match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        };
        // An abandoned try still being polled next to the retry: both get every byte in order.
        assert_eq!(next(&mut a).as_deref(), Some(&b"1"[..]));
        assert_eq!(next(&mut b).as_deref(), Some(&b"1"[..]));
        assert_eq!(next(&mut b).as_deref(), Some(&b"2"[..]));
        assert_eq!(next(&mut b).as_deref(), Some(&b"3"[..]));
        assert_eq!(next(&mut a).as_deref(), Some(&b"2"[..]));
        assert_eq!(next(&mut a).as_deref(), Some(&b"3"[..]));
        assert!(read(&mut a, 0).ended);
        assert!(read(&mut b, 0).ended);
    }

    #[test]
    fn the_clone_that_reads_wakes_the_others() {
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (wa, wb) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let (waker_a, waker_b) = (Waker::from(Arc::clone(&wa)), Waker::from(Arc::clone(&wb)));
        let mut a = ReplayBody::new(script(vec![Step::Pending, Step::Pending, Step::Data("x")]), 64);
        let mut b = a.try_clone().unwrap();
        // Both wait on the inner body, which only remembers the last waker (b's).
        assert!(Pin::new(&mut a).poll_frame(&mut Context::from_waker(&waker_a)).is_pending());
        assert!(Pin::new(&mut b).poll_frame(&mut Context::from_waker(&waker_b)).is_pending());
        let frame = Pin::new(&mut b).poll_frame(&mut Context::from_waker(&waker_b));
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        // b read the frame and woke a, which replays it; b did not wake itself.
        assert_eq!(wa.0.load(Ordering::SeqCst), 1);
        assert_eq!(wb.0.load(Ordering::SeqCst), 0);
        assert_eq!(read(&mut a, 0), full("x", false));
        assert_eq!(wb.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn body_over_the_limit_is_not_replayable() {
        let mut first =
            ReplayBody::new(script(vec![Step::Data("0123456789"), Step::Data("abcdef"), Step::Trailers]), 12);
        let mut spare = first.try_clone().unwrap();
        // The first try still gets the whole body.
        assert_eq!(read(&mut first, 0), full("0123456789abcdef", true));
        assert!(first.is_capped());
        assert!(spare.is_capped());
        assert!(first.try_clone().is_none());
        assert!(spare.try_clone().is_none());
        // A clone made earlier fails loudly instead of sending a short body.
        assert!(!spare.is_end_stream());
        let got = read(&mut spare, 0);
        assert!(got.data.is_empty());
        assert!(got.error.unwrap().contains("replay buffer"));
        assert!(spare.is_end_stream());
        // The buffer was freed.
        let state = first.shared.state.lock().unwrap();
        assert!(state.buf.is_empty() && state.trailers.is_none());
    }

    #[test]
    fn exactly_the_limit_is_replayable() {
        let mut first = ReplayBody::new(Body::full("0123456789"), 10);
        let mut second = first.try_clone().unwrap();
        assert_eq!(read(&mut first, 0), full("0123456789", false));
        assert!(!first.is_capped());
        assert_eq!(read(&mut second, 0), full("0123456789", false));
    }

    #[test]
    fn known_large_body_is_capped_at_first_read_without_buffering() {
        let body = Script { steps: vec![Step::Data("ab"), Step::Data("cd")].into(), hint: Some(100) };
        let mut first = ReplayBody::new(Body::boxed(body), 10);
        let spare = first.try_clone();
        assert!(spare.is_some(), "unpolled: still replayable");
        assert!(!first.is_capped());
        let got = read(&mut first, 0);
        assert_eq!(got.data, b"abcd");
        assert!(first.is_capped());
        assert!(first.try_clone().is_none());
    }

    #[test]
    fn unpolled_body_is_retryable() {
        let first = ReplayBody::new(script(vec![Step::Data("0123456789abcdef")]), 4);
        // The first try failed to connect and never polled its body.
        let second = first.try_clone().unwrap();
        drop(first);
        let mut third = second.try_clone().unwrap();
        drop(second);
        // Over the limit, but this try is the one reading it: it gets everything.
        assert_eq!(read(&mut third, 0), full("0123456789abcdef", false));
        assert!(third.is_capped());
    }

    #[test]
    fn inner_error_ends_replaying() {
        let mut first = ReplayBody::new(script(vec![Step::Data("abc"), Step::Fail, Step::Data("x")]), 1024);
        let mut spare = first.try_clone().unwrap();
        let got = read(&mut first, 0);
        assert_eq!(got.data, b"abc");
        assert_eq!(got.error.as_deref(), Some("client went away"));
        assert!(first.is_capped());
        assert!(first.try_clone().is_none());
        let got = read(&mut spare, 0);
        assert!(got.error.unwrap().contains("earlier try"));
    }

    #[test]
    fn empty_body_ends_at_once() {
        let mut first = ReplayBody::new(Body::empty(), 0);
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        let mut second = first.try_clone().unwrap();
        assert_eq!(read(&mut first, 0), full("", false));
        assert!(second.is_end_stream());
        assert_eq!(read(&mut second, 0), full("", false));
        // A zero limit still replays a body without data (trailers only).
        let mut first = ReplayBody::new(script(vec![Step::Trailers]), 0);
        let mut second = first.try_clone().unwrap();
        assert_eq!(read(&mut first, 0), full("", true));
        assert_eq!(read(&mut second, 0), full("", true));
    }

    #[test]
    fn survives_a_panicking_inner_body() {
        struct Panics;
        impl http_body::Body for Panics {
            type Data = Bytes;
            type Error = BodyError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
                panic!("inner body bug")
            }
        }
        let mut first = ReplayBody::new(Body::boxed(Panics), 64);
        let mut second = first.try_clone().unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&mut first, 0)));
        assert!(caught.is_err());
        // The poisoned state is reported, not propagated as another panic.
        assert!(second.is_capped());
        assert!(second.try_clone().is_none());
        assert!(!second.is_end_stream());
        assert_eq!((second.size_hint().lower(), second.size_hint().upper()), (0, None));
        assert!(read(&mut second, 0).error.unwrap().contains("poisoned"));
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ReplayBody>();
        // And it can be boxed back into the one body type.
        let _ = Body::boxed(ReplayBody::new(Body::empty(), 0));
    }
}
