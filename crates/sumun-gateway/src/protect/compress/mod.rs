//! Response compression and request decompression for a route with `compress`.
//!
//! Responses: the encoding is negotiated from `Accept-Encoding` before the request is
//! consumed ([`negotiate`]); the response is compressed as its frames arrive when it
//! qualifies (not HEAD, has a body, not already encoded, not a range, no `no-transform`, a
//! compressible type, not known to be smaller than `min_size`). Every response of a
//! compressible type gets `Vary: Accept-Encoding`, compressed or not, so caches key on it.
//!
//! Flushing: a response without `Content-Length` is treated as a stream: the compressor is
//! flushed whenever the upstream has nothing more ready, so each event or chunk reaches the
//! client when the upstream sends it. A response with a length is bulk: the codec fills
//! its blocks and flushes only at the end. Flushing after every 16 KiB frame costs 0.3–1 %
//! of size; after every 4 KiB frame 3–8 %, which is what a chatty bulk upstream would pay
//! for nothing.
//!
//! Requests (`decompress_requests`): a `Content-Encoding` body (gzip, br, zstd, deflate) is
//! decoded for the upstream as it streams. The decoded size is bounded by the route's body
//! limit and by `max_ratio` × the compressed size (past the first 64 KiB); crossing either
//! fails the body with `BodyTooLarge` mid-stream, which the transport maps to 413.
//! Malformed data fails it as a client body error (400); an unknown coding is refused
//! before anything is sent (415).

mod body;
mod budget;
mod codec;
mod negotiate;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use sumun_config::{Compress, Encoding};
use sumun_http::Body;

use self::body::{DecodeBody, DecodeCounters, DecodeLimits, EncodeBody, EncodeCounters};
pub use self::body::{DecompressionBomb, MalformedEncoding};
pub use self::budget::CompressionBudget;
use self::budget::encoder_cost;
use self::codec::{Encoder, RequestCoding, coding_name};
use super::Rejection;

/// Content types compressed when a route lists none.
pub const DEFAULT_CONTENT_TYPES: [&str; 8] = [
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
];

const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");

/// One entry of the compressible list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    /// `*/*`
    Any,
    /// `type/subtype`
    Exact { ty: Box<str>, subtype: Box<str> },
    /// `type/*`
    AnySubtype { ty: Box<str> },
    /// `type/*+suffix`: `application/*+json` covers `application/problem+json`.
    Suffix { ty: Box<str>, suffix: Box<str> },
}

impl TypePattern {
    fn parse(s: &str) -> Option<TypePattern> {
        let s = s.trim().to_ascii_lowercase();
        let (ty, subtype) = s.split_once('/')?;
        if ty.is_empty() || subtype.is_empty() {
            return None;
        }
        Some(match (ty, subtype) {
            ("*", "*") => TypePattern::Any,
            ("*", _) => return None,
            (ty, "*") => TypePattern::AnySubtype { ty: ty.into() },
            (ty, sub) => match sub.strip_prefix("*+") {
                Some(suffix) if !suffix.is_empty() => {
                    TypePattern::Suffix { ty: ty.into(), suffix: suffix.into() }
                }
                _ => TypePattern::Exact { ty: ty.into(), subtype: sub.into() },
            },
        })
    }

    fn matches(&self, ty: &str, subtype: &str) -> bool {
        match self {
            TypePattern::Any => true,
            TypePattern::Exact { ty: t, subtype: s } => {
                t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(subtype)
            }
            TypePattern::AnySubtype { ty: t } => t.eq_ignore_ascii_case(ty),
            TypePattern::Suffix { ty: t, suffix } => {
                t.eq_ignore_ascii_case(ty)
                    && subtype.len() > suffix.len() + 1
                    && subtype.as_bytes()[subtype.len() - suffix.len() - 1] == b'+'
                    && subtype[subtype.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// A route's compiled compression settings and metric handles.
pub struct Compressor {
    algorithms: Vec<Encoding>,
    min_size: u64,
    types: Vec<TypePattern>,
    decompress_requests: bool,
    max_ratio: u32,
    /// Indexed by [`slot`].
    encode: [EncodeCounters; 3],
    decoded_requests: [metrics::Counter; 4],
    decode: DecodeCounters,
    unsupported: metrics::Counter,
    budget: Arc<CompressionBudget>,
    /// Responses sent uncompressed because the budget was spent.
    over_budget: metrics::Counter,
}

fn slot(e: Encoding) -> usize {
    match e {
        Encoding::Zstd => 0,
        Encoding::Brotli => 1,
        Encoding::Gzip => 2,
    }
}

fn request_slot(c: RequestCoding) -> usize {
    match c {
        RequestCoding::Gzip => 0,
        RequestCoding::Deflate => 1,
        RequestCoding::Brotli => 2,
        RequestCoding::Zstd => 3,
    }
}

impl Compressor {
    pub fn compile(cfg: &Compress, budget: Arc<CompressionBudget>) -> Self {
        let mut types: Vec<TypePattern> =
            cfg.content_types.iter().filter_map(|t| TypePattern::parse(t)).collect();
        if cfg.content_types.is_empty() {
            types = DEFAULT_CONTENT_TYPES.iter().filter_map(|t| TypePattern::parse(t)).collect();
        }
        let encode = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip].map(|e| {
            let name = coding_name(e);
            EncodeCounters {
                responses: metrics::counter!("sumun_compressed_responses_total", "encoding" => name),
                bytes_in: metrics::counter!("sumun_compression_bytes_in_total", "encoding" => name),
                bytes_out: metrics::counter!("sumun_compression_bytes_out_total", "encoding" => name),
            }
        });
        let decoded_requests =
            [RequestCoding::Gzip, RequestCoding::Deflate, RequestCoding::Brotli, RequestCoding::Zstd]
                .map(|c| metrics::counter!("sumun_decompressed_requests_total", "encoding" => c.name()));
        let rejected = |reason: &'static str| metrics::counter!("sumun_decompression_rejected_total", "reason" => reason);
        Compressor {
            algorithms: cfg.algorithms.clone(),
            min_size: cfg.min_size,
            types,
            decompress_requests: cfg.decompress_requests,
            max_ratio: cfg.max_ratio,
            encode,
            decoded_requests,
            decode: DecodeCounters { too_large: rejected("too_large"), malformed: rejected("malformed") },
            unsupported: rejected("unsupported_encoding"),
            budget,
            over_budget: metrics::counter!("sumun_compression_skipped_total", "reason" => "memory"),
        }
    }

    /// The response encoding the client prefers among ours (from `Accept-Encoding`), decided
    /// before the request is consumed.
    pub fn negotiate(&self, request_headers: &HeaderMap) -> Option<Encoding> {
        negotiate::choose(request_headers, &self.algorithms)
    }

    /// Decodes a `Content-Encoding` request body when `decompress_requests` is on, with the
    /// ratio guard; otherwise returns the body untouched.
    pub fn decode_request(&self, parts: &mut Parts, body: Body, max_body: u64) -> Result<Body, Rejection> {
        if !self.decompress_requests || !parts.headers.contains_key(header::CONTENT_ENCODING) {
            return Ok(body);
        }
        // `no-transform` binds intermediaries on requests too (RFC 9111 §5.2.1.6).
        if has_no_transform(&parts.headers) {
            return Ok(body);
        }
        let mut coding: Option<RequestCoding> = None;
        let mut count = 0;
        for value in parts.headers.get_all(header::CONTENT_ENCODING) {
            let Ok(text) = value.to_str() else {
                return Err(self.unsupported());
            };
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name.eq_ignore_ascii_case("identity") {
                    continue;
                }
                count += 1;
                coding = Some(RequestCoding::parse(name).ok_or_else(|| self.unsupported())?);
            }
        }
        // Stacked codings (`gzip, br`) are legal but nobody sends them: refused rather than
        // decoded twice.
        if count > 1 {
            return Err(self.unsupported());
        }
        let headers = &mut parts.headers;
        headers.remove(header::CONTENT_ENCODING);
        let Some(coding) = coding else {
            return Ok(body);
        };
        headers.remove(header::CONTENT_LENGTH);
        // Digests of the encoded content no longer match what the upstream receives.
        headers.remove(CONTENT_DIGEST);
        headers.remove(REPR_DIGEST);
        self.decoded_requests[request_slot(coding)].increment(1);
        let limits = DecodeLimits { max_ratio: self.max_ratio, max_body };
        Ok(Body::boxed(DecodeBody::new(body, coding, limits, self.decode.clone())))
    }

    fn unsupported(&self) -> Rejection {
        self.unsupported.increment(1);
        Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            "the request body's Content-Encoding is not supported",
        )
        .with_header(header::ACCEPT_ENCODING, HeaderValue::from_static(RequestCoding::ACCEPTED))
    }

    /// Compresses the response when it qualifies; always adds `Vary: Accept-Encoding` to
    /// responses that could have been compressed.
    pub fn encode_response(
        &self,
        chosen: Option<Encoding>,
        method: &http::Method,
        res: Response<Body>,
    ) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        if !self.compressible_type(&parts.headers) {
            return Response::from_parts(parts, body);
        }
        add_vary(&mut parts.headers);
        let Some(encoding) = chosen else {
            return Response::from_parts(parts, body);
        };
        let status = parts.status;
        let headers = &parts.headers;
        let declared = content_length(headers);
        let known_len = declared.or_else(|| http_body::Body::size_hint(&body).exact());
        let skip = *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
            || http_body::Body::is_end_stream(&body)
            || known_len == Some(0)
            || known_len.is_some_and(|n| n < self.min_size)
            || headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
            || has_no_transform(headers);
        if skip {
            return Response::from_parts(parts, body);
        }
        let Some(reservation) = self.budget.reserve(encoder_cost(encoding)) else {
            self.over_budget.increment(1);
            tracing::debug!(
                in_use = self.budget.in_use(),
                "compression memory budget spent; response sent uncompressed"
            );
            return Response::from_parts(parts, body);
        };
        let headers = &mut parts.headers;
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        headers.remove(CONTENT_DIGEST);
        headers.remove(REPR_DIGEST);
        weaken_etag(headers);
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding_name(encoding)));
        let counters = self.encode[slot(encoding)].clone();
        counters.responses.increment(1);
        let encoder = Encoder::new(encoding, known_len);
        let body = EncodeBody::new(body, encoder, declared.is_none(), counters, reservation);
        Response::from_parts(parts, Body::boxed(body))
    }

    /// `Content-Type` is in the list (and is not `text/event-stream`, which must reach the
    /// client event by event and is never compressed).
    fn compressible_type(&self, headers: &HeaderMap) -> bool {
        let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some((ty, subtype)) = essence.split_once('/') else {
            return false;
        };
        let (ty, subtype) = (ty.trim(), subtype.trim());
        if ty.eq_ignore_ascii_case("text") && subtype.eq_ignore_ascii_case("event-stream") {
            return false;
        }
        self.types.iter().any(|p| p.matches(ty, subtype))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Whether a comma-separated header lists `token` (case-insensitive, parameters ignored).
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| item.split('=').next().unwrap_or("").trim().eq_ignore_ascii_case(token))
    })
}

fn has_no_transform(headers: &HeaderMap) -> bool {
    lists(headers, header::CACHE_CONTROL, "no-transform")
}

/// Appends `Accept-Encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary(headers: &mut HeaderMap) {
    if lists(headers, header::VARY, "accept-encoding") || lists(headers, header::VARY, "*") {
        return;
    }
    headers.append(header::VARY, VARY_ACCEPT_ENCODING);
}

/// The compressed bytes differ from the uncompressed ones, so a strong validator would lie
/// (RFC 9110 §8.8.1): `"x"` becomes `W/"x"`.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(tag) = headers.get(header::ETAG) else {
        return;
    };
    if !tag.as_bytes().starts_with(b"\"") {
        return;
    }
    let mut weak = Vec::with_capacity(tag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(tag.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&weak) {
        headers.insert(header::ETAG, v);
    }
}

#[cfg(test)]
mod tests;
