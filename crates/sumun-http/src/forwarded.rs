//! Telling the upstream who asked: RFC 7239 `Forwarded`, the de-facto `X-Forwarded-*` fields,
//! and `Via` (RFC 9110 §7.6.3), which also lets us see our own requests come back (a loop).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's address in the two syntaxes, computed once per connection.
#[derive(Debug, Clone)]
pub struct ClientNode {
    /// `for=` parameter value of RFC 7239: `192.0.2.1`, `"[2001:db8::1]"` or `unknown`.
    pub forwarded_for: String,
    /// The bare address for `X-Forwarded-For`; None for unix-socket clients.
    pub xff: Option<HeaderValue>,
}

impl ClientNode {
    pub fn new(ip: Option<IpAddr>) -> Self {
        let forwarded_for = match ip {
            Some(IpAddr::V4(ip)) => ip.to_string(),
            Some(IpAddr::V6(ip)) => format!("\"[{ip}]\""),
            None => "unknown".to_owned(),
        };
        let xff = ip.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok());
        ClientNode { forwarded_for, xff }
    }
}

/// What we know about the hop the request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientHop<'a> {
    pub node: &'a ClientNode,
    /// "http" or "https".
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
}

/// Sets the forwarding fields. When `trust_inbound` is false the client's own fields are
/// replaced, so a client cannot forge its address; when true we append to them.
pub fn apply_forwarded(headers: &mut HeaderMap, hop: ClientHop<'_>, trust_inbound: bool) {
    let mut element = String::with_capacity(48);
    element.push_str("for=");
    element.push_str(&hop.node.forwarded_for);
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
    element.push_str(";proto=");
    element.push_str(hop.proto);
    let proto = HeaderValue::from_static(hop.proto);

    if trust_inbound {
        append_list(headers, header::FORWARDED, &element);
        if let Some(xff) = &hop.node.xff {
            append_list(headers, X_FORWARDED_FOR.clone(), xff.to_str().unwrap_or(""));
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = hop.host
        {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        return;
    }
    // `insert` replaces every inbound value of the field.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(element)) {
        headers.insert(header::FORWARDED, v);
    }
    match &hop.node.xff {
        Some(xff) => headers.insert(X_FORWARDED_FOR.clone(), xff.clone()),
        None => headers.remove(&X_FORWARDED_FOR),
    };
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    match hop.host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
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

/// Our `Via` entries for each protocol version, built once per configuration.
#[derive(Debug, Clone)]
pub struct ViaEntries {
    pub pseudonym: String,
    h10: HeaderValue,
    h11: HeaderValue,
    h2: HeaderValue,
}

impl ViaEntries {
    /// None when the pseudonym cannot be a header value (config validation prevents it).
    pub fn new(pseudonym: &str) -> Option<Self> {
        let v = |p: &str| HeaderValue::from_str(&format!("{p} {pseudonym}")).ok();
        Some(ViaEntries { pseudonym: pseudonym.to_owned(), h10: v("1.0")?, h11: v("1.1")?, h2: v("2")? })
    }

    pub fn for_version(&self, version: http::Version) -> &HeaderValue {
        match version {
            http::Version::HTTP_2 => &self.h2,
            http::Version::HTTP_10 | http::Version::HTTP_09 => &self.h10,
            _ => &self.h11,
        }
    }
}

/// Appends our `Via` entry (`1.1 sumun`) for a message received as `version`.
pub fn append_via(headers: &mut HeaderMap, version: http::Version, via: &ViaEntries) {
    let entry = via.for_version(version);
    if !headers.contains_key(header::VIA) {
        headers.insert(header::VIA, entry.clone());
    } else {
        append_list(headers, header::VIA, entry.to_str().unwrap_or(""));
    }
}

/// True when any `Via` entry was received by `pseudonym`: the request already passed us.
pub fn via_contains(headers: &HeaderMap, pseudonym: &str) -> bool {
    headers.get_all(header::VIA).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |entry| {
            let mut parts = entry.split_whitespace();
            parts.next();
            parts.next().is_some_and(|by| by.eq_ignore_ascii_case(pseudonym))
        },
    )
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
        let node = ClientNode::new(Some("::1".parse().unwrap()));
        let hop = ClientHop { node: &node, proto: "https", host: Some(&host) };
        apply_forwarded(&mut h, hop, false);
        assert_eq!(h[header::FORWARDED], "for=\"[::1]\";host=\"a.example:8080\";proto=https");
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "a.example:8080");
    }

    #[test]
    fn trusted_appends() {
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("10.0.0.1"));
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("10.0.0.2"));
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        let node = ClientNode::new(Some("127.0.0.1".parse().unwrap()));
        let hop = ClientHop { node: &node, proto: "http", host: None };
        apply_forwarded(&mut h, hop, true);
        assert_eq!(h[header::FORWARDED], "for=10.0.0.1, for=127.0.0.1;proto=http");
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn via_loop_detection() {
        let mut h = HeaderMap::new();
        assert!(!via_contains(&h, "sumun"));
        h.insert(header::VIA, HeaderValue::from_static("1.0 fred, 1.1 p.example (Apache/1.1)"));
        assert!(!via_contains(&h, "sumun"));
        let via = ViaEntries::new("sumun").unwrap();
        append_via(&mut h, http::Version::HTTP_11, &via);
        assert_eq!(h[header::VIA], "1.0 fred, 1.1 p.example (Apache/1.1), 1.1 sumun");
        assert!(via_contains(&h, "SUMUN"));
    }
}
