//! Passive HTTP/1 request-framing guard for the client side of a connection.
//!
//! When a request carries both `Content-Length` and `Transfer-Encoding`, hyper follows
//! RFC 9112 §6.3: it drops the length, reads the body as chunked, and the handler never
//! learns that both were sent. Our policy (like Envoy's) treats such a request as a
//! smuggling attempt. [`H1Guard`] sits *below* hyper on the cleartext byte stream and feeds
//! every byte hyper is about to read through a tracker that frames requests exactly as
//! hyper does (head, fixed-length body, chunked body with extensions and trailers,
//! pipelining, any read boundary). The first framing violation is published through a
//! shared [`GuardVerdict`], which the request handler checks before anything else: by
//! the time hyper hands it a request, the tracker has seen that request's head. The guard
//! never alters or delays the stream, copies bytes only while a request head is split
//! across reads, and stops tracking (pure pass-through) wherever hyper itself would
//! reject the stream or leave HTTP/1, so it never raises a violation on traffic hyper
//! frames cleanly.
//!
//! Wiring: wrap the cleartext tokio stream, then hand it to hyper through `TokioIo`:
//! `let (io, verdict) = H1Guard::new(stream, max_head);` then
//! `serve_connection(TokioIo::new(io), service)`, where `stream` is the `TcpStream`,
//! `UnixStream` or the rustls `TlsStream` (TLS below the guard, so it reads plaintext).
//! With the `auto` builder, an HTTP/2 connection fails the head parse on its preface and
//! the guard turns into a pass-through. `max_head` must be at least the head limit hyper
//! enforces (its http1 `max_buf_size`, or `max_header_size` if set and smaller): a head
//! split across reads and larger than `max_head` is not tracked, which is only safe
//! because hyper answers 431 for it.
//!
//! What counts as a violation (only ambiguities hyper would otherwise accept; requests
//! hyper rejects by itself — `Transfer-Encoding` on HTTP/1.0, a final coding other than
//! chunked, conflicting or malformed `Content-Length`, malformed chunks — are left to it):
//! - [`Violation::ContentLengthWithTransferEncoding`]: both fields present, any order,
//!   any case, any values.
//! - [`Violation::ChunkedMoreThanOnce`]: `chunked` listed more than once across all
//!   `Transfer-Encoding` field lines (RFC 9112 §6.1: a sender MUST NOT apply chunked
//!   more than once; hyper would decode one layer). Several field lines that combine to
//!   a list ending in a single `chunked` (`gzip` then `chunked`) are fine, as the RFC says.
//!
//! Duplicate identical `Content-Length` values are not a violation (RFC 9110 §8.6 lets a
//! recipient accept them, and hyper reads the body exactly once either way).
//!
//! `CONNECT` and `Upgrade` requests stay tracked: hyper keeps speaking HTTP/1 on the
//! connection unless the handler answers 101 (or 2xx to `CONNECT`), so pausing there
//! would let a pipelined request slip by. After a real upgrade, tunnel bytes (TLS
//! records, WebSocket frames) fail to parse as a request head on their first bytes and
//! the tracker stops; no request handler consults the verdict after an upgrade anyway.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header slots on the stack; a head with more fields is re-parsed with heap slots so a
/// raised hyper `max_headers` cannot open a gap.
const INLINE_HEADERS: usize = 128;

/// Heads larger than this keep their accumulation buffer only while they are split;
/// afterwards the buffer is released so one large head does not pin memory.
const RETAINED_HEAD_CAPACITY: usize = 8 * 1024;

/// A request framing that hyper would accept but our policy rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The head carries both `Content-Length` and `Transfer-Encoding`.
    ContentLengthWithTransferEncoding,
    /// `chunked` is listed more than once in `Transfer-Encoding`.
    ChunkedMoreThanOnce,
}

impl Violation {
    /// A short, stable description for logs and error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::ContentLengthWithTransferEncoding => "both Content-Length and Transfer-Encoding",
            Violation::ChunkedMoreThanOnce => "chunked transfer coding applied more than once",
        }
    }

    fn code(self) -> u8 {
        match self {
            Violation::ContentLengthWithTransferEncoding => 1,
            Violation::ChunkedMoreThanOnce => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Violation::ContentLengthWithTransferEncoding),
            2 => Some(Violation::ChunkedMoreThanOnce),
            _ => None,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Shared, cheap-to-clone view of a connection's framing verdict.
///
/// The verdict is per connection and sticky: once set it never clears. Because the guard
/// reads ahead of hyper, a violation in a pipelined request can become visible while an
/// earlier request on the same connection is still being handled; treat it as "this
/// connection is compromised" and answer 400 with `Connection: close`.
#[derive(Clone, Debug, Default)]
pub struct GuardVerdict {
    code: Arc<AtomicU8>,
}

impl GuardVerdict {
    /// The first violation seen on this connection, if any.
    pub fn violation(&self) -> Option<Violation> {
        Violation::from_code(self.code.load(Ordering::Acquire))
    }

    fn record(&self, violation: Violation) {
        // Release pairs with the Acquire in `violation()`: the handler may run on another
        // worker thread than the read that found the violation.
        self.code.store(violation.code(), Ordering::Release);
    }
}

pin_project! {
    /// Transparent tokio IO wrapper that observes the request framing of everything read
    /// through it. Writes are delegated untouched.
    ///
    /// Wrap the cleartext stream and then put it in `hyper_util::rt::TokioIo`.
    pub struct H1Guard<T> {
        #[pin]
        io: T,
        tracker: Tracker,
        verdict: GuardVerdict,
    }
}

impl<T> H1Guard<T> {
    /// Wraps `io`; returns the guard and the verdict handle to give the request handler.
    ///
    /// `max_head` bounds the bytes kept for a request head split across reads; use
    /// hyper's `max_buf_size` for the connection.
    pub fn new(io: T, max_head: usize) -> (Self, GuardVerdict) {
        let verdict = GuardVerdict::default();
        let guard = H1Guard { io, tracker: Tracker::new(max_head), verdict: verdict.clone() };
        (guard, verdict)
    }
}

impl<T: fmt::Debug> fmt::Debug for H1Guard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H1Guard")
            .field("io", &self.io)
            .field("state", &self.tracker.state)
            .field("verdict", &self.verdict.violation())
            .finish()
    }
}

impl<T: AsyncRead> AsyncRead for H1Guard<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        // Only bytes from a successful read reach hyper (TokioIo drops the rest).
        if matches!(polled, Poll::Ready(Ok(()))) && this.tracker.state != State::Off {
            let fresh = buf.filled().get(before..).unwrap_or_default();
            if let Some(violation) = this.tracker.feed(fresh) {
                this.verdict.record(violation);
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for H1Guard<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Where the tracker is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests: httparse skips empty lines (CRLF or LF) before a request line.
    Idle,
    /// Idle, and a read ended on a CR that must be followed by LF.
    IdleCr,
    /// Inside a request head; split heads are accumulated in `Tracker::head`.
    Head,
    /// Fixed-length body with this many bytes left (never 0).
    Fixed(u64),
    /// Chunked body.
    Chunked(Chunk),
    /// Not tracking: violation recorded, or framing hyper rejects or cannot frame.
    Off,
}

/// Chunked body decoder states, mirroring hyper's `ChunkedState` byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    Start,
    /// Inside the hex size.
    Size(u64),
    /// Whitespace after the size; no more digits allowed.
    SizeLws(u64),
    /// Chunk extension, ignored up to CR (a bare LF is an error in hyper).
    Ext(u64),
    /// Expecting the LF that ends the chunk-size line.
    SizeLf(u64),
    /// Chunk data with this many bytes left (never 0).
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk: CR ends the message, anything else starts a trailer field.
    EndCr,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// Expecting the LF that ends a trailer field line.
    TrailerLf,
    /// Expecting the final LF of the message.
    EndLf,
}

/// Passive HTTP/1 request framing state machine.
#[derive(Debug)]
struct Tracker {
    state: State,
    /// Bytes of a request head split across reads; empty in the common case.
    head: Vec<u8>,
    /// Where to resume searching `head` for the end of the header section.
    scan_from: usize,
    max_head: usize,
}

impl Tracker {
    fn new(max_head: usize) -> Self {
        Tracker { state: State::Idle, head: Vec::new(), scan_from: 0, max_head }
    }

    /// Advances over `data`; returns a violation the first time one is found.
    fn feed(&mut self, mut data: &[u8]) -> Option<Violation> {
        while !data.is_empty() {
            let before = self.state;
            let used = match before {
                State::Off => return None,
                State::Idle => self.idle(data),
                State::IdleCr => {
                    // httparse rejects a CR not followed by LF, and so does hyper.
                    self.state = if data.first() == Some(&b'\n') { State::Idle } else { State::Off };
                    1
                }
                State::Head => match self.head(data) {
                    Ok(used) => used,
                    Err(violation) => {
                        self.stop();
                        return Some(violation);
                    }
                },
                State::Fixed(left) => {
                    let len = data.len() as u64;
                    if len < left {
                        self.state = State::Fixed(left - len);
                        data.len()
                    } else {
                        self.state = State::Idle;
                        // left <= len, so it fits in usize.
                        usize::try_from(left).unwrap_or(data.len())
                    }
                }
                State::Chunked(chunk) => self.chunked(chunk, data),
            };
            if used == 0 && self.state == before {
                // No progress would loop forever; cannot happen, but never hang on input.
                self.stop();
                return None;
            }
            data = data.get(used..).unwrap_or_default();
        }
        None
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
        self.scan_from = 0;
    }

    /// Skips empty lines before a request line, as httparse does.
    fn idle(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while let Some(&byte) = data.get(i) {
            match byte {
                b'\n' => i += 1,
                b'\r' => match data.get(i + 1) {
                    Some(b'\n') => i += 2,
                    Some(_) => {
                        self.stop();
                        return data.len();
                    }
                    None => {
                        self.state = State::IdleCr;
                        return i + 1;
                    }
                },
                _ => {
                    self.state = State::Head;
                    return i;
                }
            }
        }
        i
    }

    /// Consumes head bytes; on a complete head decides the body framing.
    fn head(&mut self, data: &[u8]) -> Result<usize, Violation> {
        if self.head.is_empty() {
            // Common case: the whole head is in this read. httparse finds its end itself,
            // so parse in place without a separate search or copy.
            return match judge(data) {
                Judged::Complete { len, next } => {
                    self.state = next?;
                    Ok(len)
                }
                // This parse doubles as a cheap probe: garbage (TLS, WebSocket frames
                // after an upgrade) fails on its first bytes and is never buffered.
                Judged::Invalid => {
                    self.stop();
                    Ok(data.len())
                }
                Judged::Partial if data.len() >= self.max_head => {
                    self.stop();
                    Ok(data.len())
                }
                Judged::Partial => {
                    self.head.extend_from_slice(data);
                    // No terminator lies wholly inside `data`; one may start in its last bytes.
                    self.scan_from = data.len().saturating_sub(3);
                    Ok(data.len())
                }
            };
        }

        // Split head: search only the new bytes (plus a 3-byte overlap) for the end, so a
        // head dribbled in byte by byte costs linear time, then parse it once.
        let old = self.head.len();
        let take = data.len().min(self.max_head.saturating_sub(old));
        self.head.extend_from_slice(data.get(..take).unwrap_or_default());
        match find_head_end(&self.head, self.scan_from) {
            Ok(end) => {
                let next = match judge(self.head.get(..end).unwrap_or_default()) {
                    Judged::Complete { len, next } if len == end => next,
                    // The search and httparse disagree on the end: cannot frame, step aside.
                    _ => Ok(State::Off),
                };
                self.head.clear();
                if self.head.capacity() > RETAINED_HEAD_CAPACITY {
                    self.head = Vec::new();
                }
                self.scan_from = 0;
                self.state = next?;
                // The end was not inside the old bytes, or the last search would have found it.
                Ok(end.saturating_sub(old))
            }
            Err(resume) => {
                if self.head.len() >= self.max_head {
                    // hyper answers 431 for this head (given max_head >= its limit).
                    self.stop();
                } else {
                    self.scan_from = resume;
                }
                Ok(take)
            }
        }
    }

    /// Advances a chunked body; returns bytes used (all of `data` unless the message ends).
    fn chunked(&mut self, mut chunk: Chunk, data: &[u8]) -> usize {
        let mut i = 0;
        while let Some(rest) = data.get(i..).filter(|rest| !rest.is_empty()) {
            // Bulk states skip many bytes at once; the rest take exactly one byte.
            match chunk {
                Chunk::Data(left) => {
                    let len = rest.len() as u64;
                    if len < left {
                        self.state = State::Chunked(Chunk::Data(left - len));
                        return data.len();
                    }
                    // left <= len, so it fits in usize.
                    i += usize::try_from(left).unwrap_or(rest.len());
                    chunk = Chunk::DataCr;
                    continue;
                }
                Chunk::Ext(size) => match memchr::memchr2(b'\r', b'\n', rest) {
                    None => return self.park(chunk, data),
                    Some(at) if rest.get(at) == Some(&b'\r') => {
                        i += at + 1;
                        chunk = Chunk::SizeLf(size);
                        continue;
                    }
                    // hyper rejects LF inside a chunk extension.
                    Some(_) => return self.fail(data),
                },
                Chunk::Trailer => match memchr::memchr(b'\r', rest) {
                    None => return self.park(chunk, data),
                    Some(at) => {
                        i += at + 1;
                        chunk = Chunk::TrailerLf;
                        continue;
                    }
                },
                _ => {}
            }
            let Some(&byte) = rest.first() else { break };
            i += 1;
            chunk = match (chunk, byte) {
                (Chunk::Start, _) => match hex_digit(byte) {
                    Some(digit) => Chunk::Size(digit),
                    None => return self.fail(data),
                },
                (Chunk::Size(size), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let grown = size
                        .checked_mul(16)
                        .zip(hex_digit(byte))
                        .and_then(|(size, digit)| size.checked_add(digit));
                    match grown {
                        Some(size) => Chunk::Size(size),
                        None => return self.fail(data),
                    }
                }
                (Chunk::Size(size) | Chunk::SizeLws(size), b'\t' | b' ') => Chunk::SizeLws(size),
                (Chunk::Size(size) | Chunk::SizeLws(size), b';') => Chunk::Ext(size),
                (Chunk::Size(size) | Chunk::SizeLws(size), b'\r') => Chunk::SizeLf(size),
                (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
                (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Start,
                (Chunk::EndCr, b'\r') => Chunk::EndLf,
                // Any other byte starts a trailer field line (hyper buffers it as such).
                (Chunk::EndCr, _) => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
                (Chunk::EndLf, b'\n') => {
                    self.state = State::Idle;
                    return i;
                }
                _ => return self.fail(data),
            };
        }
        self.park(chunk, data)
    }

    /// Remembers `chunk` and reports all of `data` used.
    fn park(&mut self, chunk: Chunk, data: &[u8]) -> usize {
        self.state = State::Chunked(chunk);
        data.len()
    }

    /// Malformed chunked framing: hyper fails the body and closes the connection.
    fn fail(&mut self, data: &[u8]) -> usize {
        self.stop();
        data.len()
    }
}

/// Finds the end of a header section (the first empty line, CRLF or bare LF, as httparse
/// accepts both) in `buf`, searching from `from`, which must not be past the LF that
/// starts the terminator.
///
/// `Ok(end)` is the length of the head including its terminator; `Err(resume)` is where a
/// later search over more bytes must restart (a trailing LF still needs its lookahead).
fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut pos = from;
    while let Some(offset) = memchr::memchr(b'\n', buf.get(pos..).unwrap_or_default()) {
        let lf = pos + offset;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Ok(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(lf + 3),
            (None, _) | (Some(b'\r'), None) => return Err(lf),
            _ => pos = lf + 1,
        }
    }
    Err(buf.len())
}

/// Outcome of parsing bytes that start at a request line.
enum Judged {
    /// A whole head of `len` bytes; `next` is the state for what follows, or a violation.
    Complete { len: usize, next: Result<State, Violation> },
    /// A valid prefix of a head.
    Partial,
    /// Not a head hyper accepts: it answers 400 and closes the connection.
    Invalid,
}

/// Parses a head the way hyper may be configured to. The lenient options
/// (`allow_multiple_spaces_in_request_line_delimiters`, `ignore_invalid_headers`) only
/// change the outcome for heads the strict parser rejects, so trying strict first and
/// lenient on failure agrees with hyper under either configuration, and keeps the
/// common case on the faster strict parser.
fn judge(buf: &[u8]) -> Judged {
    match judge_with(&httparse::ParserConfig::default(), buf) {
        Judged::Invalid => {
            let mut lenient = httparse::ParserConfig::default();
            lenient
                .allow_multiple_spaces_in_request_line_delimiters(true)
                .ignore_invalid_headers_in_requests(true);
            judge_with(&lenient, buf)
        }
        judged => judged,
    }
}

fn judge_with(config: &httparse::ParserConfig, buf: &[u8]) -> Judged {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match config.parse_request_with_uninit_headers(&mut req, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => Judged::Complete { len, next: body_framing(&req) },
        Ok(httparse::Status::Partial) => Judged::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            // Rare: more fields than stack slots. A field line takes at least 3 bytes, so
            // this many slots always suffice.
            let mut slots = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); buf.len() / 3 + 1];
            let mut req = httparse::Request::new(&mut []);
            match config.parse_request_with_uninit_headers(&mut req, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => Judged::Complete { len, next: body_framing(&req) },
                Ok(httparse::Status::Partial) => Judged::Partial,
                Err(_) => Judged::Invalid,
            }
        }
        Err(_) => Judged::Invalid,
    }
}

/// Checks the framing fields and picks the body framing exactly as hyper's server does.
fn body_framing(req: &httparse::Request<'_, '_>) -> Result<State, Violation> {
    let mut has_cl = false;
    let mut cl: Option<u64> = None;
    let mut cl_invalid = false;
    let mut has_te = false;
    let mut te_ends_chunked = false;
    let mut chunked_count = 0usize;

    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        if name.len() == 14 && name.eq_ignore_ascii_case(b"content-length") {
            has_cl = true;
            match content_length(field.value) {
                Some(len) if cl.is_none_or(|prev| prev == len) => cl = Some(len),
                _ => cl_invalid = true,
            }
        } else if name.len() == 17 && name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            // Like hyper, only the last field line decides whether the body is chunked.
            te_ends_chunked = ends_in_chunked(field.value);
            chunked_count += field
                .value
                .split(|&b| b == b',')
                .filter(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                .count();
        }
    }

    if has_cl && has_te {
        return Err(Violation::ContentLengthWithTransferEncoding);
    }
    if has_te {
        // hyper answers 400 to Transfer-Encoding on HTTP/1.0 or not ending in chunked.
        if req.version != Some(1) || !te_ends_chunked {
            return Ok(State::Off);
        }
        if chunked_count > 1 {
            return Err(Violation::ChunkedMoreThanOnce);
        }
        return Ok(State::Chunked(Chunk::Start));
    }
    if has_cl {
        // hyper rejects invalid or conflicting lengths, and lengths above u64::MAX - 2.
        return Ok(match cl {
            Some(0) => State::Idle,
            Some(len) if !cl_invalid && len <= u64::MAX - 2 => State::Fixed(len),
            _ => State::Off,
        });
    }
    Ok(State::Idle)
}

/// hyper's `Content-Length` value syntax: one or more ASCII digits, nothing else.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |len, &b| {
        if b.is_ascii_digit() { len.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None }
    })
}

/// hyper's test for a chunked field line: visible ASCII, last coding is `chunked`.
fn ends_in_chunked(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn hex_digit(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    /// hyper's default http1 `max_buf_size`.
    pub(super) const DEFAULT_MAX_HEAD: usize = 8192 + 4096 * 100;
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> (Option<Violation>, State) {
        let mut tracker = Tracker::new(DEFAULT_MAX_HEAD);
        let mut found = None;
        for chunk in chunks {
            if let Some(v) = tracker.feed(chunk) {
                assert!(found.is_none(), "violation reported twice");
                found = Some(v);
            }
        }
        (found, tracker.state)
    }

    fn one_read(input: &[u8]) -> (Option<Violation>, State) {
        feed_all(&[input])
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";

    #[test]
    fn cl_and_te_in_either_order_and_any_case_is_a_violation() {
        let inputs: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 5\r\nTRANSFER-encoding: chunked\r\n\r\n",
            // Invalid length and non-chunked coding: still both fields, still rejected.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: x\r\n\r\n",
        ];
        for input in inputs {
            assert_eq!(
                one_read(input),
                (Some(Violation::ContentLengthWithTransferEncoding), State::Off),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn clean_get_is_tracked_to_the_next_request() {
        assert_eq!(one_read(GET), (None, State::Idle));
        assert_eq!(one_read(b"GET / HTTP/1.1\nHost: a\n\n"), (None, State::Idle));
        let mut twice = GET.to_vec();
        twice.extend_from_slice(b"\r\n");
        twice.extend_from_slice(GET);
        assert_eq!(one_read(&twice), (None, State::Idle));
    }

    #[test]
    fn pipelined_violation_after_a_length_framed_body_is_found() {
        let input = b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(one_read(input), (Some(Violation::ContentLengthWithTransferEncoding), State::Off));
    }

    const CHUNKED: &[u8] = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\
        transfer-encoding: Chunked\r\n\r\n\
        5;name=value;q=\"x\"\r\nhello\r\n\
        1A \t ; ext\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        0;last\r\nX-Checksum: 42\r\nX-Other: y\r\n\r\n";

    const BAD: &[u8] =
        b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn chunked_body_with_extensions_and_trailers_is_framed() {
        let mut clean = CHUNKED.to_vec();
        clean.extend_from_slice(GET);
        assert_eq!(one_read(&clean), (None, State::Idle));

        let mut bad = clean.clone();
        bad.extend_from_slice(BAD);
        assert_eq!(one_read(&bad), (Some(Violation::ContentLengthWithTransferEncoding), State::Off));
    }

    /// Requests of every framing, clean and bad, for the split-point test.
    fn corpus() -> Vec<Vec<u8>> {
        let length_body = b"POST /l HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nhello\r\n\r\nbye";
        let mut clean = Vec::new();
        clean.extend_from_slice(CHUNKED);
        clean.extend_from_slice(b"\r\n");
        clean.extend_from_slice(length_body);
        clean.extend_from_slice(GET);
        clean.extend_from_slice(b"\nGET /lf HTTP/1.1\nHost: a\n\n");
        let mut bad = clean.clone();
        bad.extend_from_slice(BAD);
        let mut twice = clean.clone();
        twice.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
        vec![clean, bad, twice]
    }

    #[test]
    fn every_split_point_gives_the_same_verdict_as_one_read() {
        let expected = [
            (None, State::Idle),
            (Some(Violation::ContentLengthWithTransferEncoding), State::Off),
            (Some(Violation::ChunkedMoreThanOnce), State::Off),
        ];
        for (input, expected) in corpus().iter().zip(expected) {
            assert_eq!(one_read(input), expected);
            for split in 0..=input.len() {
                let (a, b) = input.split_at(split);
                assert_eq!(feed_all(&[a, b]), expected, "split at {split}");
            }
            for first in (0..input.len()).step_by(7) {
                for second in first..input.len().min(first + 40) {
                    let got = feed_all(&[&input[..first], &input[first..second], &input[second..]]);
                    assert_eq!(got, expected, "splits at {first} and {second}");
                }
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(feed_all(&bytes), expected, "one byte per read");
        }
    }

    #[test]
    fn header_text_inside_a_length_framed_body_is_not_a_violation() {
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let mut input =
            format!("POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(GET);
        assert_eq!(one_read(&input), (None, State::Idle));

        // Same text inside a chunk.
        let mut input = format!("POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:X}\r\n", body.len())
            .into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        input.extend_from_slice(GET);
        assert_eq!(one_read(&input), (None, State::Idle));
    }

    #[test]
    fn te_lines_combining_to_one_final_chunked_are_fine_but_chunked_twice_is_not() {
        let once =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(one_read(once), (None, State::Idle));
        let twice_lines =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(one_read(twice_lines), (Some(Violation::ChunkedMoreThanOnce), State::Off));
        // hyper rejects these itself: no violation, stop tracking.
        let not_final = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(one_read(not_final), (None, State::Off));
        let http10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(one_read(http10), (None, State::Off));
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(one_read(conflicting), (None, State::Off));
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nokGET";
        assert_eq!(one_read(same), (None, State::Head));
    }

    #[test]
    fn connect_and_upgrade_stay_tracked_until_the_stream_stops_being_http() {
        // Tunnel bytes after CONNECT (a TLS ClientHello) stop the tracker, no violation.
        let mut connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec();
        connect.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
        assert_eq!(one_read(&connect), (None, State::Off));

        // WebSocket frames after an upgrade request, even ones carrying header text.
        let mut upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        upgrade.extend_from_slice(&[0x81, 0xb5, 1, 2, 3, 4]);
        upgrade.extend_from_slice(b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(one_read(&upgrade), (None, State::Off));

        // hyper keeps speaking HTTP/1 unless the handler answers 101, so a pipelined
        // request after an unanswered upgrade must still be checked.
        let mut sneaky = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n".to_vec();
        sneaky.extend_from_slice(BAD);
        assert_eq!(one_read(&sneaky), (Some(Violation::ContentLengthWithTransferEncoding), State::Off));
    }

    #[test]
    fn oversized_head_stops_tracking_without_panicking() {
        let mut tracker = Tracker::new(1024);
        let mut input = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 4096));
        input.extend_from_slice(b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        for chunk in input.chunks(100) {
            assert_eq!(tracker.feed(chunk), None);
        }
        assert_eq!(tracker.state, State::Off);
        assert!(tracker.head.capacity() == 0, "buffer released");

        // Same head in one read: no copy needed, so it is still judged.
        assert_eq!(Tracker::new(1024).feed(&input), Some(Violation::ContentLengthWithTransferEncoding));
    }

    #[test]
    fn many_header_fields_are_parsed_on_the_heap() {
        let mut input = b"POST / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(one_read(&input), (Some(Violation::ContentLengthWithTransferEncoding), State::Off));
    }

    #[test]
    fn garbage_never_panics_or_reports() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"\r\n:;, \t0aFxGET/HTTP1.chunkedContent-LengthTransfer-Encoding\x00\xff";
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 200) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let mut tracker = Tracker::new(64);
            for chunk in input.chunks(1 + (seed % 13) as usize) {
                let _ = tracker.feed(chunk);
            }
        }
        let mut overflow = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        overflow.extend_from_slice(b"fffffffffffffffffffff\r\n");
        assert_eq!(one_read(&overflow), (None, State::Off));
        assert_eq!(one_read(b"\r\r\n"), (None, State::Off));
        assert_eq!(one_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"), (None, State::Off));
        assert_eq!(one_read(&[0u8; 10]), (None, State::Off));
        assert_eq!(
            one_read(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            (None, State::Off)
        );
    }

    #[test]
    fn malformed_chunk_framing_stops_tracking() {
        let cases: [&[u8]; 4] = [
            b"5\nhello\r\n0\r\n\r\n",     // bare LF after size
            b"5;a\nhello\r\n0\r\n\r\n",   // LF in extension
            b"5\r\nhelloX\r\n0\r\n\r\n",  // missing CRLF after data
            b"5 6\r\nhello\r\n0\r\n\r\n", // digit after whitespace
        ];
        for body in cases {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            input.extend_from_slice(BAD);
            assert_eq!(one_read(&input), (None, State::Off), "{body:?}");
        }
    }

    mod through_hyper {
        use std::convert::Infallible;
        use std::future::poll_fn;

        use hyper::body::{Body, Incoming};
        use hyper::service::service_fn;
        use hyper::{Request, Response, StatusCode};
        use hyper_util::rt::TokioIo;
        use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

        use super::super::*;

        async fn handle(
            req: Request<Incoming>,
            verdict: GuardVerdict,
        ) -> Result<Response<String>, Infallible> {
            if let Some(violation) = verdict.violation() {
                let mut resp = Response::new(violation.reason().to_owned());
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                resp.headers_mut().insert(hyper::header::CONNECTION, "close".parse().unwrap());
                return Ok(resp);
            }
            let mut body = req.into_body();
            let mut len = 0;
            while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len();
                }
            }
            Ok(Response::new(format!("{len}")))
        }

        fn serve() -> DuplexStream {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (guard, verdict) = H1Guard::new(server, super::tests::DEFAULT_MAX_HEAD);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, verdict.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(guard), service)
                    .await;
            });
            client
        }

        /// Reads one response (small, `content-length` framed) and returns it as text.
        async fn response(client: &mut DuplexStream) -> String {
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            loop {
                assert_eq!(client.read(&mut byte).await.unwrap(), 1, "early EOF: {got:?}");
                got.push(byte[0]);
                if got.ends_with(b"\r\n\r\n") {
                    break;
                }
            }
            let text = String::from_utf8(got).unwrap();
            let len: usize =
                text.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
            let mut body = vec![0; len];
            client.read_exact(&mut body).await.unwrap();
            text + &String::from_utf8(body).unwrap()
        }

        #[tokio::test]
        async fn hyper_sees_the_verdict_before_the_handler_runs() {
            let mut client = serve();
            client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let first = response(&mut client).await;
            assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");

            // Smuggling-looking text inside a body is just data.
            let body = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
            let head = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len());
            client.write_all(head.as_bytes()).await.unwrap();
            client.write_all(body.as_bytes()).await.unwrap();
            let second = response(&mut client).await;
            assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
            assert!(second.ends_with(&format!("\r\n\r\n{}", body.len())), "{second}");

            // hyper alone would read this as chunked and answer 200.
            client
                .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .await
                .unwrap();
            let third = response(&mut client).await;
            assert!(third.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{third}");
            assert!(third.ends_with("both Content-Length and Transfer-Encoding"), "{third}");
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "connection closed after the 400");
        }

        #[tokio::test]
        async fn a_split_head_is_judged_before_hyper_dispatches_it() {
            let mut client = serve();
            let request: &[u8] =
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
            for piece in request.chunks(9) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            let resp = response(&mut client).await;
            assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
        }
    }
}
