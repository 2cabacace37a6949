//! Hop-by-hop hygiene (RFC 9110 §7.6.1): these fields describe one connection and must not be
//! forwarded. Applied to requests before they go upstream and to responses before they go back.

use http::header::{self, HeaderMap, HeaderName};

static ALWAYS: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// What the stripped fields said that the next hop still needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopInfo {
    /// The sender accepts trailers (`TE: trailers`); we re-add it toward upstreams.
    pub te_trailers: bool,
}

/// Removes `Connection`, every field it names, and the fixed hop-by-hop fields. `Host` is never
/// removed even when named, so a client cannot strip routing information with `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> HopInfo {
    let mut info = HopInfo::default();
    // Most messages carry none of these: one pass over the names (cheap comparisons for
    // standard headers) instead of a hashed removal per field.
    if !headers.keys().any(is_hop_by_hop) {
        return info;
    }
    for te in headers.get_all(header::TE) {
        if let Ok(s) = te.to_str() {
            info.te_trailers |= s
                .split(',')
                .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
        }
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| *n != header::HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &ALWAYS {
        headers.remove(name);
    }
    info
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    ALWAYS.contains(name) || *name == header::PROXY_AUTHENTICATE
}

/// Response side: the request-side set plus `Proxy-Authenticate`, which belongs to one hop.
pub fn strip_hop_by_hop_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::PROXY_AUTHENTICATE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_fixed_and_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret , host"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers;q=1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic eA=="));
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let info = strip_hop_by_hop(&mut h);
        assert!(info.te_trailers);
        let left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(h.contains_key("x-keep") && h.contains_key(header::HOST));
    }

    #[test]
    fn te_without_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        assert!(!strip_hop_by_hop(&mut h).te_trailers);
    }
}
