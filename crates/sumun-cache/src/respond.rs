//! Building responses from stored ones: `Age`, HEAD, the client's own conditionals answered
//! with a 304 (RFC 9111 §4.3.2), and the header update rules for a 304 or HEAD response
//! (§3.2, §4.3.4).

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use sumun_http::Body;

use crate::fill::StoredBody;
use crate::store::Stored;

/// Never stored: they describe one connection or one hop (RFC 9110 §7.6.1, RFC 9111 §3.1).
static NOT_STORED: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-authentication-info"),
    header::AGE,
];

/// Kept from the stored response when a 304 or HEAD response updates it: they describe the
/// stored body, which the update does not replace.
static BODY_FIELDS: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    HeaderName::from_static("content-md5"),
    header::ETAG,
    header::TRANSFER_ENCODING,
];

/// The headers as they are stored: hop-by-hop fields (and those `Connection` names) removed,
/// `Age` removed (it is regenerated on every use).
pub fn for_storage(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(NOT_STORED.iter()) {
        headers.remove(n);
    }
    headers
}

/// §4.3.4: the stored headers, each field the update carries replacing the stored one,
/// except the fields that describe the stored body.
pub fn merge_update(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let update = for_storage(update.clone());
    let mut merged = stored.clone();
    for name in update.keys() {
        if BODY_FIELDS.contains(name) {
            continue;
        }
        merged.remove(name);
        for v in update.get_all(name) {
            merged.append(name.clone(), v.clone());
        }
    }
    merged
}

fn etag_opaque(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

/// Whether the client's `If-None-Match` / `If-Modified-Since` (RFC 9110 §13.1.2, §13.1.3)
/// is satisfied by a response with these headers, so a 304 answers it.
pub fn not_modified(method: &Method, request: &HeaderMap, status: StatusCode, headers: &HeaderMap) -> bool {
    if status != StatusCode::OK || !(method == Method::GET || method == Method::HEAD) {
        return false;
    }
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return request
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.trim() == "*");
        };
        let ours = etag_opaque(etag);
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || etag_opaque(t) == ours);
    }
    let Some(since) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    let modified = headers
        .get(header::LAST_MODIFIED)
        .or_else(|| headers.get(header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
    modified.is_some_and(|m| m <= since)
}

/// Client conditionals are answered by the cache, never forwarded on a fill: the stored
/// response must be a full one.
pub fn take_conditionals(headers: &mut HeaderMap) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for n in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        for v in headers.get_all(&n) {
            taken.append(n.clone(), v.clone());
        }
        headers.remove(&n);
    }
    headers.remove(header::IF_RANGE);
    taken
}

/// A 304 made from a full response's headers (RFC 9110 §15.4.5 lists what it must carry;
/// we keep everything but the body framing).
pub fn not_modified_response(headers: &HeaderMap) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    let h = res.headers_mut();
    for (n, v) in headers {
        if n != header::CONTENT_LENGTH && n != header::CONTENT_RANGE && n != header::TRANSFER_ENCODING {
            h.append(n.clone(), v.clone());
        }
    }
    res
}

/// The response for a request served from `entry`.
pub fn from_stored(
    entry: &Arc<Stored>,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
) -> Response<Body> {
    let mut res = if not_modified(method, request, entry.status, &entry.headers) {
        not_modified_response(&entry.headers)
    } else {
        let body = if *method == Method::HEAD { Body::empty() } else { StoredBody::for_entry(entry) };
        let mut res = Response::new(body);
        *res.status_mut() = entry.status;
        *res.headers_mut() = entry.headers.clone();
        res
    };
    let age = entry.freshness.age(now).as_secs();
    res.headers_mut().insert(header::AGE, HeaderValue::from(age));
    res
}

/// A single byte range of `len` bytes (RFC 9110 §14.1.2): `a-b`, `a-` or `-n`. None when
/// the header is not one satisfiable range (several ranges, other units, garbage): the
/// request then goes to the origin.
pub fn single_range(range: &HeaderValue, len: u64) -> Option<(u64, u64)> {
    let spec = range.to_str().ok()?.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (first, last) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let first: u64 = a.parse().ok()?;
        let last = if b.is_empty() { len - 1 } else { b.parse::<u64>().ok()?.min(len - 1) };
        (first, last)
    };
    (first <= last && first < len).then_some((first, last))
}

/// A 206 for `range` of a stored complete 200, sharing the stored chunks. None when the
/// range is not one we serve, or `If-Range` does not match the stored validator.
pub fn range_from_stored(
    entry: &Arc<Stored>,
    request: &HeaderMap,
    now: SystemTime,
) -> Option<Response<Body>> {
    if entry.status != StatusCode::OK {
        return None;
    }
    if let Some(if_range) = request.get(header::IF_RANGE) {
        // Only a strong entity tag can match (RFC 9110 §13.1.5); anything else: full fetch.
        let etag = entry.headers.get(header::ETAG)?;
        if etag.as_bytes().starts_with(b"W/") || if_range != etag {
            return None;
        }
    }
    let (first, last) = single_range(request.get(header::RANGE)?, entry.body_len)?;
    let mut parts: Vec<bytes::Bytes> = Vec::new();
    let mut offset = 0u64;
    for chunk in &entry.body {
        let (start, end) = (offset, offset + chunk.len() as u64);
        offset = end;
        if end <= first || start > last {
            continue;
        }
        let from = first.saturating_sub(start) as usize;
        let to = ((last + 1).min(end) - start) as usize;
        parts.push(chunk.slice(from..to));
    }
    let body = match parts.len() {
        0 => Body::empty(),
        1 => Body::full(parts.remove(0)),
        _ => Body::boxed(crate::fill::ChunksBody::new(parts)),
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::PARTIAL_CONTENT;
    *res.headers_mut() = entry.headers.clone();
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{}", entry.body_len)) {
        h.insert(header::CONTENT_RANGE, v);
    }
    h.insert(header::AGE, HeaderValue::from(entry.freshness.age(now).as_secs()));
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn storage_drops_hop_by_hop_and_connection_named_fields() {
        let s = for_storage(h(&[
            ("connection", "x-a"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("keep-alive", "5"),
            ("age", "3"),
            ("set-cookie", "a=1"),
        ]));
        assert!(s.get("x-a").is_none() && s.get("keep-alive").is_none() && s.get("age").is_none());
        assert!(s.get("x-b").is_some() && s.get("set-cookie").is_some());
    }

    #[test]
    fn a_304_updates_all_but_body_fields() {
        let stored = h(&[
            ("etag", "\"a\""),
            ("content-length", "10"),
            ("x-test", "old"),
            ("cache-control", "max-age=1"),
            ("content-type", "text/plain"),
        ]);
        let update = h(&[
            ("etag", "\"b\""),
            ("content-length", "0"),
            ("x-test", "new"),
            ("cache-control", "max-age=60"),
            ("content-type", "text/html"),
            ("content-md5", "zz"),
        ]);
        let m = merge_update(&stored, &update);
        assert_eq!(m["etag"], "\"a\"");
        assert_eq!(m["content-length"], "10");
        assert_eq!(m["x-test"], "new");
        assert_eq!(m["cache-control"], "max-age=60");
        assert_eq!(m["content-type"], "text/html");
        assert!(m.get("content-md5").is_none());
    }

    #[test]
    fn byte_ranges() {
        let r = |s: &'static str| single_range(&HeaderValue::from_static(s), 10);
        assert_eq!(r("bytes=0-1"), Some((0, 1)));
        assert_eq!(r("bytes=5-"), Some((5, 9)));
        assert_eq!(r("bytes=-3"), Some((7, 9)));
        assert_eq!(r("bytes=-30"), Some((0, 9)));
        assert_eq!(r("bytes=8-100"), Some((8, 9)));
        for bad in ["bytes=10-", "bytes=3-2", "bytes=0-1,3-4", "items=0-1", "bytes=-0", "bytes=a-b"] {
            assert_eq!(r(bad), None, "{bad}");
        }
    }

    #[test]
    fn client_conditionals() {
        let res = h(&[("etag", "W/\"v1\""), ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")]);
        let ok = |req: &[(&str, &str)]| not_modified(&Method::GET, &h(req), StatusCode::OK, &res);
        assert!(ok(&[("if-none-match", "\"x\", \"v1\"")]));
        assert!(ok(&[("if-none-match", "*")]));
        assert!(!ok(&[("if-none-match", "\"x\"")]));
        // If-None-Match takes precedence over If-Modified-Since.
        assert!(!ok(&[("if-none-match", "\"x\""), ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")]));
        assert!(ok(&[("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")]));
        assert!(ok(&[("if-modified-since", "Tuesday, 14-Nov-23 22:13:20 GMT")]));
        assert!(!ok(&[("if-modified-since", "Tue, 14 Nov 2023 22:13:19 GMT")]));
        assert!(!not_modified(&Method::POST, &h(&[("if-none-match", "*")]), StatusCode::OK, &res));
    }
}
