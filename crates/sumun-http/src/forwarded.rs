//! Telling the upstream who asked: RFC 7239 `Forwarded`, the de-facto `X-Forwarded-*` fields,
//! and `Via` (RFC 9110 §7.6.3), which also lets us see our own requests come back (a loop).

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What we know about the hop the request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientHop<'a> {
    /// None for unix-socket clients: they are written as `for=unknown` / omitted from XFF.
    pub client_ip: Option<IpAddr>,
    pub proto: &'a str,
    pub host: Option<&'a HeaderValue>,
}

/// Sets the forwarding fields. When `trust_inbound` is false the client's own fields are
/// discarded first, so a client cannot forge its address; when true we append to them.
pub fn apply_forwarded(headers: &mut HeaderMap, hop: ClientHop<'_>, trust_inbound: bool) {
    if !trust_inbound {
        headers.remove(header::FORWARDED);
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }

    let mut element = String::with_capacity(64);
    match hop.client_ip {
        Some(IpAddr::V4(ip)) => {
            let _ = write!(element, "for={ip}");
        }
        Some(IpAddr::V6(ip)) => {
            let _ = write!(element, "for=\"[{ip}]\"");
        }
        None => element.push_str("for=unknown"),
    }
    if let Some(host) = hop.host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=\"");
        for c in host.chars() {
            if c == '"' || c == '\\' {
                element.push('\\');
            }
            element.push(c);
        }
        element.push('"');
    }
    let _ = write!(element, ";proto={}", hop.proto);
    append_list(headers, header::FORWARDED, &element);

    if let Some(ip) = hop.client_ip {
        append_list(headers, X_FORWARDED_FOR.clone(), &ip.to_string());
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(proto_static(hop.proto)),
        );
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = hop.host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

fn proto_static(proto: &str) -> &'static str {
    if proto == "https" { "https" } else { "http" }
}

/// Appends `item` to a comma-separated list field, folding existing lines into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut joined = String::new();
    for v in headers.get_all(&name) {
        if let Ok(s) = v.to_str() {
            joined.push_str(s);
            joined.push_str(", ");
        }
    }
    joined.push_str(item);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// The `Via` protocol token for a request version.
pub fn via_protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Appends our `Via` entry (`1.1 sumun`).
pub fn append_via(headers: &mut HeaderMap, version: http::Version, pseudonym: &str) {
    let entry = format!("{} {}", via_protocol(version), pseudonym);
    append_list(headers, header::VIA, &entry);
}

/// True when any `Via` entry was received by `pseudonym`: the request already passed us.
pub fn via_contains(headers: &HeaderMap, pseudonym: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            let mut parts = entry.split_whitespace();
            parts.next();
            parts
                .next()
                .is_some_and(|by| by.eq_ignore_ascii_case(pseudonym))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_replaces_and_quotes() {
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("6.6.6.6"));
        let host = HeaderValue::from_static("a.example:8080");
        let hop = ClientHop {
            client_ip: Some("::1".parse().unwrap()),
            proto: "https",
            host: Some(&host),
        };
        apply_forwarded(&mut h, hop, false);
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[::1]\";host=\"a.example:8080\";proto=https"
        );
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "a.example:8080");
    }

    #[test]
    fn trusted_appends() {
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.2"),
        );
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        let hop = ClientHop {
            client_ip: Some("127.0.0.1".parse().unwrap()),
            proto: "http",
            host: None,
        };
        apply_forwarded(&mut h, hop, true);
        assert_eq!(
            h[header::FORWARDED],
            "for=10.0.0.1, for=127.0.0.1;proto=http"
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn via_loop_detection() {
        let mut h = HeaderMap::new();
        assert!(!via_contains(&h, "sumun"));
        h.insert(
            header::VIA,
            HeaderValue::from_static("1.0 fred, 1.1 p.example (Apache/1.1)"),
        );
        assert!(!via_contains(&h, "sumun"));
        append_via(&mut h, http::Version::HTTP_11, "sumun");
        assert_eq!(
            h[header::VIA],
            "1.0 fred, 1.1 p.example (Apache/1.1), 1.1 sumun"
        );
        assert!(via_contains(&h, "SUMUN"));
    }
}
