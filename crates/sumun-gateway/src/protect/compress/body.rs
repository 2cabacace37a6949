//! The streaming bodies: [`EncodeBody`] compresses a response frame by frame, [`DecodeBody`]
//! decodes a request frame by frame under the zip-bomb guard. Neither holds more than one
//! upstream frame plus the codec's own state; trailers pass through after the last data.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use metrics::Counter;
use sumun_http::body::BodyTooLarge;
use sumun_http::{Body, BodyError};

use super::budget::Reservation;
use super::codec::{Decoder, Encoder, RequestCoding, SCRATCH};

/// Input an encoder takes in one poll without emitting anything before it yields to the
/// runtime (very compressible input can go a long way without output).
const MAX_INPUT_PER_POLL: u64 = 4 * 1024 * 1024;

/// Counters of one response encoding.
#[derive(Clone)]
pub(super) struct EncodeCounters {
    pub responses: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

/// Adds what a body moved to its counters once, when it is dropped (finished or not).
struct Tally {
    counters: EncodeCounters,
    bytes_in: u64,
    bytes_out: u64,
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.counters.bytes_in.increment(self.bytes_in);
        self.counters.bytes_out.increment(self.bytes_out);
    }
}

#[derive(Debug)]
enum EncState {
    Streaming,
    /// The encoder finished: then these trailers (if any), then the end.
    Ending(Option<HeaderMap>),
    Done,
}

pin_project_lite::pin_project! {
    /// A compressed response body.
    pub(super) struct EncodeBody {
        #[pin]
        inner: Body,
        encoder: Encoder,
        scratch: Vec<u8>,
        out: BytesMut,
        state: EncState,
        // Input went in since the last flush.
        unflushed: bool,
        // Flush whenever the upstream body has nothing more ready, so a streamed response
        // (events, long polls, progress) is never held back in the compressor.
        flush_on_idle: bool,
        tally: Tally,
        // The encoder's charge on the compression budget, returned with the body.
        reservation: Reservation,
    }
}

impl EncodeBody {
    pub(super) fn new(
        inner: Body,
        encoder: Encoder,
        flush_on_idle: bool,
        counters: EncodeCounters,
        reservation: Reservation,
    ) -> Self {
        EncodeBody {
            inner,
            encoder,
            scratch: vec![0; SCRATCH],
            out: BytesMut::new(),
            state: EncState::Streaming,
            unflushed: false,
            flush_on_idle,
            tally: Tally { counters, bytes_in: 0, bytes_out: 0 },
            reservation,
        }
    }
}

fn codec_error(e: io::Error) -> BodyError {
    Box::new(e)
}

impl http_body::Body for EncodeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        let mut taken: u64 = 0;
        loop {
            if !this.out.is_empty() {
                let data = this.out.split().freeze();
                this.tally.bytes_out += data.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match this.state {
                EncState::Done => return Poll::Ready(None),
                EncState::Ending(trailers) => {
                    let trailers = trailers.take();
                    *this.state = EncState::Done;
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                EncState::Streaming => {}
            }
            if taken > MAX_INPUT_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        taken += data.len() as u64;
                        this.tally.bytes_in += data.len() as u64;
                        this.encoder.encode(&data, this.scratch, this.out).map_err(codec_error)?;
                        *this.unflushed = true;
                    }
                    Err(frame) => {
                        // Trailers end the body; other frame kinds carry nothing for us.
                        if let Ok(trailers) = frame.into_trailers() {
                            this.encoder.finish(this.scratch, this.out).map_err(codec_error)?;
                            *this.state = EncState::Ending(Some(trailers));
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    *this.state = EncState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.encoder.finish(this.scratch, this.out).map_err(codec_error)?;
                    *this.state = EncState::Ending(None);
                }
                Poll::Pending => {
                    if *this.unflushed && *this.flush_on_idle {
                        *this.unflushed = false;
                        this.encoder.flush(this.scratch, this.out).map_err(codec_error)?;
                    }
                    if this.out.is_empty() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, EncState::Done) && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() { SizeHint::with_exact(0) } else { SizeHint::default() }
    }
}

/// A request body grew past `max_ratio` × its compressed size (plus the allowance).
#[derive(Debug, thiserror::Error)]
#[error("the {coding} request body decodes to more than {ratio} times its compressed size")]
pub struct DecompressionBomb {
    pub coding: &'static str,
    pub ratio: u32,
    /// So that `sumun_http::body::is_body_too_large` (and the transport's error mapping)
    /// answer 413.
    #[source]
    pub limit: BodyTooLarge,
}

/// The compressed request body is not valid in its declared coding (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("the {coding} request body is malformed: {source}")]
pub struct MalformedEncoding {
    pub coding: &'static str,
    #[source]
    pub source: io::Error,
}

/// Bytes a request may decode to before the ratio applies: small bodies compress far
/// better than `max_ratio` without being bombs (a 1 KiB gzip of 60 KiB of spaces).
pub(super) const RATIO_ALLOWANCE: u64 = 64 * 1024;

/// The limits on a decoded request body.
#[derive(Debug, Clone, Copy)]
pub(super) struct DecodeLimits {
    pub max_ratio: u32,
    /// The route's body limit, applied to the decoded size too.
    pub max_body: u64,
}

/// Counters of request decoding.
#[derive(Clone)]
pub(super) struct DecodeCounters {
    pub too_large: Counter,
    pub malformed: Counter,
}

pin_project_lite::pin_project! {
    /// A decompressed request body.
    pub(super) struct DecodeBody {
        #[pin]
        inner: Body,
        coding: RequestCoding,
        decoder: Decoder,
        limits: DecodeLimits,
        counters: DecodeCounters,
        scratch: Vec<u8>,
        // The rest of the current compressed frame.
        input: Bytes,
        encoded: u64,
        decoded: u64,
        // The current member ended; more input needs a new one.
        member_done: bool,
        // The last decode filled the scratch: the codec may hold more output.
        maybe_more: bool,
        // The compressed body ended (its trailers, if any, are kept here).
        eof: bool,
        trailers: Option<HeaderMap>,
        finished: bool,
    }
}

impl DecodeBody {
    pub(super) fn new(
        inner: Body,
        coding: RequestCoding,
        limits: DecodeLimits,
        counters: DecodeCounters,
    ) -> Self {
        DecodeBody {
            inner,
            coding,
            decoder: Decoder::new(coding),
            limits,
            counters,
            scratch: vec![0; SCRATCH],
            input: Bytes::new(),
            encoded: 0,
            decoded: 0,
            member_done: false,
            maybe_more: false,
            eof: false,
            trailers: None,
            finished: false,
        }
    }
}

impl http_body::Body for DecodeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let coding = this.coding.name();
        let malformed = |finished: &mut bool, counters: &DecodeCounters, source: io::Error| {
            *finished = true;
            counters.malformed.increment(1);
            let err: BodyError = Box::new(MalformedEncoding { coding, source });
            Poll::Ready(Some(Err(err)))
        };
        loop {
            let step = if !this.input.is_empty() {
                if *this.member_done {
                    if !this.decoder.multi_member() {
                        let e =
                            io::Error::new(io::ErrorKind::InvalidData, "data after the end of the stream");
                        return malformed(this.finished, this.counters, e);
                    }
                    if let Err(e) = this.decoder.reinit() {
                        return malformed(this.finished, this.counters, e);
                    }
                    *this.member_done = false;
                }
                match this.decoder.decode(this.input, this.scratch) {
                    Ok(s) => {
                        if s.consumed == 0 && s.produced == 0 && !s.done {
                            return malformed(
                                this.finished,
                                this.counters,
                                io::Error::other("decoder stalled"),
                            );
                        }
                        let _ = this.input.split_to(s.consumed);
                        s
                    }
                    Err(e) => return malformed(this.finished, this.counters, e),
                }
            } else if *this.maybe_more {
                match this.decoder.drain(this.scratch) {
                    Ok(s) => s,
                    Err(e) => return malformed(this.finished, this.counters, e),
                }
            } else if *this.eof {
                // Nothing at all was sent: an empty body stays empty.
                if *this.member_done || *this.encoded == 0 {
                    *this.finished = true;
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                match this.decoder.finish(this.scratch) {
                    Ok(s) if s.done || s.produced > 0 => s,
                    Ok(_) => {
                        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the stream is truncated");
                        return malformed(this.finished, this.counters, e);
                    }
                    Err(e) => return malformed(this.finished, this.counters, e),
                }
            } else {
                match this.inner.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            *this.encoded += data.len() as u64;
                            *this.input = data;
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                *this.trailers = Some(t);
                                *this.eof = true;
                            }
                        }
                    },
                    Poll::Ready(Some(Err(e))) => {
                        *this.finished = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => *this.eof = true,
                }
                continue;
            };
            *this.member_done |= step.done;
            *this.maybe_more = step.produced == this.scratch.len();
            if step.produced == 0 {
                continue;
            }
            *this.decoded += step.produced as u64;
            let limits = *this.limits;
            if *this.decoded > limits.max_body {
                *this.finished = true;
                this.counters.too_large.increment(1);
                let err: BodyError = Box::new(BodyTooLarge { limit: limits.max_body });
                return Poll::Ready(Some(Err(err)));
            }
            let allowed =
                RATIO_ALLOWANCE.saturating_add(this.encoded.saturating_mul(u64::from(limits.max_ratio)));
            if *this.decoded > allowed {
                *this.finished = true;
                this.counters.too_large.increment(1);
                let err: BodyError = Box::new(DecompressionBomb {
                    coding,
                    ratio: limits.max_ratio,
                    limit: BodyTooLarge { limit: allowed.min(limits.max_body) },
                });
                return Poll::Ready(Some(Err(err)));
            }
            let data = Bytes::copy_from_slice(&this.scratch[..step.produced]);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished { SizeHint::with_exact(0) } else { SizeHint::default() }
    }
}
