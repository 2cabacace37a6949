//! CORS at the edge (Fetch standard, §3.2). A route with a `cors` policy has its preflights
//! (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) answered here and never forwarded,
//! and every other response of the route gets its CORS headers here: sumun is the authority,
//! so whatever CORS headers the upstream sent are dropped.
//!
//! The policy is compiled once: exact origins canonicalized (lower-case, default port
//! dropped) into a sorted list, wildcards split into scheme, suffix and port, every constant
//! header value built ahead. Matching a browser's `Origin` (already canonical) allocates
//! nothing; only a non-canonical one (upper case, an explicit default port: never sent by a
//! browser) is canonicalized into a fresh string first.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use metrics::Counter;
use sumun_config::{CorsOrigin, CorsPolicy};
use sumun_http::Body;
use sumun_http::problem::problem_response;

const ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// The CORS response headers an upstream may have set; removed on routes with a policy.
const RESPONSE_CORS_HEADERS: [HeaderName; 7] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK,
];

const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue =
    HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
/// `*` in `Access-Control-Allow-Headers` does not cover `Authorization` (Fetch: "CORS
/// non-wildcard request-header name"): it must be named.
const STAR_AND_AUTHORIZATION: HeaderValue = HeaderValue::from_static("*, authorization");

/// Methods a browser never preflights for by method (CORS-safelisted methods).
const SAFELISTED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// Most entries of `Access-Control-Request-Headers` looked at; a preflight asking for more
/// is refused (browsers list each non-safelisted header once).
const MAX_REQUESTED_HEADERS: usize = 64;

/// One `https://*.example.com` entry.
#[derive(Debug)]
struct WildcardOrigin {
    /// Lower case.
    scheme: Box<str>,
    /// Lower case, without the leading dot: `example.com`.
    suffix: Box<str>,
    /// None: the scheme's default port only.
    port: Option<u16>,
}

#[derive(Debug)]
enum AllowHeaders {
    /// `["*"]`.
    Any,
    /// Lower case, and the joined answer (None when the list is empty).
    List(Vec<Box<str>>, Option<HeaderValue>),
}

#[derive(Debug)]
enum AllowMethods {
    Any,
    /// Exactly as configured (upper case), and the joined answer (None when empty).
    List(Vec<Box<str>>, Option<HeaderValue>),
}

/// How an origin was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// By a `*` policy.
    Any,
    /// By an exact or wildcard entry.
    Listed,
}

/// Why a preflight was refused: the detail of the 403 (safe to show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Origin,
    Method,
    Headers,
}

impl Refusal {
    fn detail(self) -> &'static str {
        match self {
            Refusal::Origin => "CORS preflight refused: origin not allowed",
            Refusal::Method => "CORS preflight refused: method not allowed",
            Refusal::Headers => "CORS preflight refused: request header not allowed",
        }
    }
}

/// One compiled `[cors.NAME]` policy.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    /// Canonical origins (`scheme://host[:port]`, lower case, no default port), sorted.
    exact: Vec<Box<str>>,
    wildcards: Vec<WildcardOrigin>,
    methods: AllowMethods,
    headers: AllowHeaders,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
    preflights_allowed: Counter,
    preflights_rejected: Counter,
}

impl Cors {
    pub fn compile(policy: &CorsPolicy) -> Self {
        let mut any_origin = false;
        let mut exact = Vec::new();
        let mut wildcards = Vec::new();
        for o in &policy.origins {
            match o {
                CorsOrigin::Any => any_origin = true,
                CorsOrigin::Exact(s) => exact.push(canonical_origin(s).into_boxed_str()),
                CorsOrigin::Wildcard { scheme, suffix, port } => {
                    let scheme = scheme.to_ascii_lowercase();
                    let port = port.filter(|p| Some(*p) != default_port(&scheme));
                    wildcards.push(WildcardOrigin {
                        suffix: suffix.trim_start_matches('.').to_ascii_lowercase().into_boxed_str(),
                        scheme: scheme.into_boxed_str(),
                        port,
                    });
                }
            }
        }
        exact.sort_unstable();
        exact.dedup();

        // Validation refuses `*` with credentials; should it ever get through, fail closed:
        // no credentials rather than any site reading credentialed responses.
        let credentials = policy.credentials && !any_origin;
        if policy.credentials && any_origin {
            tracing::warn!(policy = %policy.name, "cors: allow_origins = [\"*\"] with credentials; credentials not allowed");
        }

        let methods = if policy.methods.iter().any(|m| m == "*") {
            AllowMethods::Any
        } else {
            let list: Vec<Box<str>> = policy.methods.iter().map(|m| m.as_str().into()).collect();
            let joined = join_value(&list);
            AllowMethods::List(list, joined)
        };
        let headers = if policy.headers.iter().any(|h| h == "*") {
            AllowHeaders::Any
        } else {
            let list: Vec<Box<str>> = policy.headers.iter().map(|h| h.to_ascii_lowercase().into()).collect();
            let joined = join_value(&list);
            AllowHeaders::List(list, joined)
        };
        let expose_list: Vec<Box<str>> = policy.expose_headers.iter().map(|h| h.as_str().into()).collect();
        let max_age = HeaderValue::from(policy.max_age.as_secs());
        let name = policy.name.clone();
        Cors {
            any_origin,
            exact,
            wildcards,
            methods,
            headers,
            expose: join_value(&expose_list),
            credentials,
            max_age,
            preflights_allowed: metrics::counter!("sumun_cors_preflights_total", "policy" => name.clone(), "result" => "allowed"),
            preflights_rejected: metrics::counter!("sumun_cors_preflights_total", "policy" => name, "result" => "rejected"),
        }
    }

    /// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) gets its whole
    /// answer here and is never forwarded. None: not a preflight.
    ///
    /// Allowed: 204 with the CORS headers. Refused (origin, method or a header): 403
    /// problem+json without any CORS header, which fails the preflight in every browser and
    /// says why to a person looking at the network panel.
    pub fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
        request_id: Option<&HeaderValue>,
    ) -> Option<Response<Body>> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let requested_method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        match self.check_preflight(origin, requested_method, headers) {
            Ok(res) => {
                self.preflights_allowed.increment(1);
                Some(res)
            }
            Err(refusal) => {
                self.preflights_rejected.increment(1);
                tracing::debug!(reason = ?refusal, "cors preflight refused");
                let mut res = problem_response(StatusCode::FORBIDDEN, refusal.detail(), request_id);
                res.headers_mut().insert(header::VARY, VARY_PREFLIGHT);
                Some(res)
            }
        }
    }

    fn check_preflight(
        &self,
        origin: &HeaderValue,
        requested_method: &HeaderValue,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, Refusal> {
        let admit = self.admit(origin).ok_or(Refusal::Origin)?;
        let allow_methods = self.allow_methods(requested_method).ok_or(Refusal::Method)?;
        let allow_headers = self.allow_headers(headers).ok_or(Refusal::Headers)?;

        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(admit, origin));
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(v) = allow_methods {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        // Private Network Access: a public page reaching this (private) address. Granted
        // only to origins the policy names, never through `*`.
        if admit == Admit::Listed
            && headers
                .get(ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            h.insert(ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK, TRUE);
        }
        h.insert(header::VARY, VARY_PREFLIGHT);
        Ok(res)
    }

    /// Adds the CORS headers of an actual (non-preflight) request's response; `origin` is
    /// the request's `Origin`.
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        // sumun is the authority on this route's CORS: an upstream's own answer (possibly
        // `*` with credentials, or an origin sumun refuses) never reaches the browser.
        for name in &RESPONSE_CORS_HEADERS {
            headers.remove(name);
        }
        // The answer depends on Origin even when it is `*` for some and nothing for others.
        if !vary_has_origin(headers) {
            headers.append(header::VARY, VARY_ORIGIN);
        }
        let Some(origin) = origin else { return };
        let Some(admit) = self.admit(origin) else { return };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(admit, origin));
        if self.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(v) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    /// `*` for a `*` policy (never with credentials: `compile` turns them off there), else
    /// the origin itself.
    fn allow_origin_value(&self, admit: Admit, origin: &HeaderValue) -> HeaderValue {
        if admit == Admit::Any && !self.credentials { STAR } else { origin.clone() }
    }

    /// Whether `origin` may read responses, and how.
    fn admit(&self, origin: &HeaderValue) -> Option<Admit> {
        if self.any_origin {
            // `*` answers every origin alike, opaque ones (`null`) included: the answer is
            // the same public `*` whoever asks.
            return Some(Admit::Any);
        }
        let s = origin.to_str().ok()?;
        if s == "null" {
            // An opaque origin (sandboxed frame, file:, redirect chain) matches only a
            // literal `null` entry.
            return self.exact_contains("null").then_some(Admit::Listed);
        }
        let o = OriginParts::parse(s)?;
        let listed =
            if o.canonical { self.exact_contains(s) } else { self.exact_contains(&o.to_canonical()) };
        if listed || self.wildcards.iter().any(|w| w.matches(&o)) { Some(Admit::Listed) } else { None }
    }

    fn exact_contains(&self, canonical: &str) -> bool {
        self.exact.binary_search_by(|e| (**e).cmp(canonical)).is_ok()
    }

    /// The `Access-Control-Allow-Methods` answer to a preflight asking for `requested`
    /// (Some(None): allowed, nothing to list), or None: refused.
    fn allow_methods(&self, requested: &HeaderValue) -> Option<Option<HeaderValue>> {
        let m = requested.to_str().ok().filter(|m| is_token(m))?;
        match &self.methods {
            // `*` is literal in a credentialed answer: name the method instead.
            AllowMethods::Any => Some(Some(if self.credentials { requested.clone() } else { STAR })),
            AllowMethods::List(list, joined) => {
                // Fetch compares methods byte for byte (browsers upper-case only the
                // standard ones); safelisted methods pass whatever the list says.
                let allowed = SAFELISTED_METHODS.contains(&m) || list.iter().any(|l| **l == *m);
                allowed.then(|| joined.clone())
            }
        }
    }

    /// The `Access-Control-Allow-Headers` answer (Some(None): nothing to send), or None when a
    /// requested header is not allowed.
    fn allow_headers(&self, headers: &HeaderMap) -> Option<Option<HeaderValue>> {
        let mut count = 0usize;
        let mut authorization = false;
        for v in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let s = v.to_str().ok()?;
            for name in s.split(',').map(|n| n.trim_matches([' ', '\t'])).filter(|n| !n.is_empty()) {
                count += 1;
                if count > MAX_REQUESTED_HEADERS || !is_token(name) {
                    return None;
                }
                match &self.headers {
                    AllowHeaders::Any => authorization |= name.eq_ignore_ascii_case("authorization"),
                    AllowHeaders::List(list, _) => {
                        if !list.iter().any(|l| l.eq_ignore_ascii_case(name)) {
                            return None;
                        }
                    }
                }
            }
        }
        match &self.headers {
            AllowHeaders::List(_, joined) => Some(joined.clone()),
            AllowHeaders::Any if count == 0 => Some(None),
            // `*` is literal in a credentialed answer: echo what was asked.
            AllowHeaders::Any if self.credentials => Some(Some(requested_headers_value(headers)?)),
            AllowHeaders::Any if authorization => Some(Some(STAR_AND_AUTHORIZATION)),
            AllowHeaders::Any => Some(Some(STAR)),
        }
    }
}

/// The request's `Access-Control-Request-Headers` as one value (its lines joined).
fn requested_headers_value(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut it = headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS).iter();
    let first = it.next()?;
    let Some(second) = it.next() else { return Some(first.clone()) };
    let mut joined = Vec::with_capacity(first.len() + second.len() + 2);
    for v in [first, second].into_iter().chain(it) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Whether some `Vary` line already names `Origin` (or is `*`).
fn vary_has_origin(headers: &HeaderMap) -> bool {
    headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t.eq_ignore_ascii_case(b"origin")
        })
    })
}

/// `a, b, c` as a header value; None for an empty list (or, impossibly after validation, a
/// value that is not a valid header).
fn join_value(list: &[Box<str>]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(", ")).ok()
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// An origin's canonical text; a configured value that is not an origin is kept lower-cased
/// (it then matches only itself).
fn canonical_origin(s: &str) -> String {
    match OriginParts::parse(s) {
        Some(o) => o.to_canonical(),
        None => s.to_ascii_lowercase(),
    }
}

/// A serialized origin `scheme://host[:port]`, borrowed from the header.
#[derive(Debug)]
struct OriginParts<'a> {
    scheme: &'a str,
    host: &'a str,
    /// None: the scheme's default port.
    port: Option<u16>,
    /// Already lower case with no explicit default port: the text is its own canonical form.
    canonical: bool,
}

impl<'a> OriginParts<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        let (scheme, rest) = s.split_once("://")?;
        let mut sb = scheme.bytes();
        if !sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            || !sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        let (host, port_text) = if rest.starts_with('[') {
            let end = rest.find(']')?;
            let host = &rest[..=end];
            if !host[1..end].bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
                return None;
            }
            match &rest[end + 1..] {
                "" => (host, None),
                after => (host, Some(after.strip_prefix(':')?)),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty()
            || !host.starts_with('[')
                && !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        let mut canonical = !scheme.bytes().chain(host.bytes()).any(|b| b.is_ascii_uppercase());
        let port = match port_text {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u16 = p.parse().ok()?;
                if Some(n) == default_port(scheme) || p.starts_with('0') {
                    canonical = false;
                }
                Some(n).filter(|n| Some(*n) != default_port(scheme))
            }
        };
        Some(OriginParts { scheme, host, port, canonical })
    }

    fn to_canonical(&self) -> String {
        let mut s = String::with_capacity(self.scheme.len() + self.host.len() + 9);
        s.push_str(self.scheme);
        s.push_str("://");
        s.push_str(self.host);
        s.make_ascii_lowercase();
        if let Some(p) = self.port {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }
}

impl WildcardOrigin {
    /// `https://*.example.com` admits `https://a.example.com` and `https://a.b.example.com`
    /// (same scheme and port), never `https://example.com` or `https://evilexample.com`.
    fn matches(&self, o: &OriginParts<'_>) -> bool {
        if !o.scheme.eq_ignore_ascii_case(&self.scheme) || o.port != self.port || o.host.starts_with('[') {
            return false;
        }
        let host = o.host.as_bytes();
        let suffix = self.suffix.as_bytes();
        let Some(label_end) = host.len().checked_sub(suffix.len() + 1) else { return false };
        if host[label_end] != b'.' || !host[label_end + 1..].eq_ignore_ascii_case(suffix) {
            return false;
        }
        // One or more non-empty labels before the suffix.
        let labels = &host[..label_end];
        !labels.is_empty() && labels.split(|b| *b == b'.').all(|l| !l.is_empty())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        let origins = origins
            .iter()
            .map(|o| {
                if *o == "*" {
                    CorsOrigin::Any
                } else if let Some((scheme, rest)) = o.split_once("://*.") {
                    let (suffix, port) = match rest.split_once(':') {
                        Some((s, p)) => (s.to_owned(), Some(p.parse().unwrap())),
                        None => (rest.to_owned(), None),
                    };
                    CorsOrigin::Wildcard { scheme: scheme.to_owned(), suffix, port }
                } else {
                    CorsOrigin::Exact((*o).to_owned())
                }
            })
            .collect();
        CorsPolicy {
            name: "app".into(),
            origins,
            methods: vec!["GET".into(), "POST".into(), "PUT".into()],
            headers: vec!["content-type".into(), "x-custom".into()],
            expose_headers: vec!["x-request-id".into(), "x-total".into()],
            credentials,
            max_age: Duration::from_secs(600),
        }
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn preflight_headers(origin: &str, method: &str, req_headers: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, hv(origin));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv(method));
        if let Some(r) = req_headers {
            h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, hv(r));
        }
        h
    }

    fn get<'a>(res: &'a Response<Body>, name: &str) -> Option<&'a str> {
        res.headers().get(name).map(|v| v.to_str().unwrap())
    }

    fn has_cors_headers(h: &HeaderMap) -> bool {
        h.keys().any(|k| k.as_str().starts_with("access-control-"))
    }

    #[test]
    fn parses_and_canonicalizes_origins() {
        let o = OriginParts::parse("https://app.example.com").unwrap();
        assert!(o.canonical);
        assert_eq!(o.port, None);
        let o = OriginParts::parse("HTTPS://App.Example.com:443").unwrap();
        assert!(!o.canonical);
        assert_eq!(o.to_canonical(), "https://app.example.com");
        let o = OriginParts::parse("http://x:443").unwrap();
        assert!(o.canonical);
        assert_eq!(o.to_canonical(), "http://x:443");
        assert_eq!(OriginParts::parse("http://x:80").unwrap().to_canonical(), "http://x");
        assert_eq!(OriginParts::parse("http://x:08080").unwrap().to_canonical(), "http://x:8080");
        assert_eq!(OriginParts::parse("http://[::1]:8080").unwrap().to_canonical(), "http://[::1]:8080");
        for bad in [
            "",
            "null",
            "example.com",
            "https://",
            "https://x/",
            "https://x/path",
            "https://u@x",
            "https://x:",
            "https://x:99999",
            "https://x:1:2",
            "1http://x",
            "https://x?q",
            "https://[::1",
            "https://[::1]x",
            "https://x y",
        ] {
            assert!(OriginParts::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn exact_origins_match_case_insensitively_with_default_ports() {
        let c = Cors::compile(&policy(&["https://App.Example.com:443", "http://localhost:8080"], false));
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "http://localhost:8080",
            "http://LOCALHOST:8080",
        ] {
            assert_eq!(c.admit(&hv(ok)), Some(Admit::Listed), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evil.com",
            "http://localhost",
            "http://localhost:8081",
            "null",
            "garbage",
        ] {
            assert_eq!(c.admit(&hv(no)), None, "{no}");
        }
    }

    #[test]
    fn wildcard_origins_need_a_label_and_the_same_scheme_and_port() {
        let c = Cors::compile(&policy(&["https://*.example.com", "http://*.dev.test:3000"], false));
        for ok in [
            "https://a.example.com",
            "https://a.b.example.com",
            "https://A.Example.COM",
            "https://a.example.com:443",
            "http://x.dev.test:3000",
        ] {
            assert_eq!(c.admit(&hv(ok)), Some(Admit::Listed), "{ok}");
        }
        for no in [
            "https://example.com",
            "https://.example.com",
            "https://a..example.com",
            "https://evilexample.com",
            "https://a.example.com.evil.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "http://x.dev.test",
            "http://x.dev.test:3001",
            "https://[::1]",
        ] {
            assert_eq!(c.admit(&hv(no)), None, "{no}");
        }
    }

    #[test]
    fn null_origin_only_when_listed() {
        let c = Cors::compile(&policy(&["https://*.example.com", "https://a.test"], false));
        assert_eq!(c.admit(&hv("null")), None);
        let c = Cors::compile(&policy(&["null"], false));
        assert_eq!(c.admit(&hv("null")), Some(Admit::Listed));
        assert_eq!(c.admit(&hv("https://a.test")), None);
    }

    #[test]
    fn preflight_allowed_answers_everything() {
        let c = Cors::compile(&policy(&["https://app.example.com"], true));
        let h = preflight_headers("https://app.example.com", "PUT", Some("content-type,x-custom"));
        let res = c.preflight(&Method::OPTIONS, &h, None).expect("a preflight");
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(get(&res, "access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(get(&res, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&res, "access-control-allow-methods"), Some("GET, POST, PUT"));
        assert_eq!(get(&res, "access-control-allow-headers"), Some("content-type, x-custom"));
        assert_eq!(get(&res, "access-control-max-age"), Some("600"));
        assert_eq!(
            get(&res, "vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert_eq!(get(&res, "access-control-expose-headers"), None, "expose is for actual responses");
        assert_eq!(get(&res, "access-control-allow-private-network"), None);
    }

    #[test]
    fn not_a_preflight() {
        let c = Cors::compile(&policy(&["https://app.example.com"], false));
        let h = preflight_headers("https://app.example.com", "PUT", None);
        assert!(c.preflight(&Method::GET, &h, None).is_none());
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, hv("https://app.example.com"));
        assert!(c.preflight(&Method::OPTIONS, &h, None).is_none(), "no Access-Control-Request-Method");
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, hv("PUT"));
        assert!(c.preflight(&Method::OPTIONS, &h, None).is_none(), "no Origin");
    }

    #[test]
    fn preflight_refusals_carry_no_cors_headers() {
        let c = Cors::compile(&policy(&["https://app.example.com"], true));
        for (origin, method, hdrs) in [
            ("https://evil.example.com", "PUT", None),
            ("null", "PUT", None),
            ("https://app.example.com", "DELETE", None),
            ("https://app.example.com", "put", None),
            ("https://app.example.com", "PU T", None),
            ("https://app.example.com", "PUT", Some("content-type, x-other")),
            ("https://app.example.com", "PUT", Some("bad header")),
        ] {
            let res = c.preflight(&Method::OPTIONS, &preflight_headers(origin, method, hdrs), None).unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin} {method} {hdrs:?}");
            assert!(!has_cors_headers(res.headers()), "{origin} {method} {hdrs:?}: {:?}", res.headers());
            assert_eq!(get(&res, "content-type"), Some("application/problem+json"));
        }
    }

    #[test]
    fn safelisted_methods_always_pass() {
        let mut p = policy(&["https://app.example.com"], false);
        p.methods = vec!["PUT".into()];
        let c = Cors::compile(&p);
        for m in ["GET", "HEAD", "POST", "PUT"] {
            let res = c
                .preflight(&Method::OPTIONS, &preflight_headers("https://app.example.com", m, None), None)
                .unwrap();
            assert_eq!(res.status(), StatusCode::NO_CONTENT, "{m}");
            assert_eq!(get(&res, "access-control-allow-methods"), Some("PUT"));
        }
    }

    #[test]
    fn requested_headers_across_lines_and_case() {
        let c = Cors::compile(&policy(&["https://app.example.com"], false));
        let mut h = preflight_headers("https://app.example.com", "PUT", Some("Content-Type"));
        h.append(header::ACCESS_CONTROL_REQUEST_HEADERS, hv(" x-custom ,"));
        let res = c.preflight(&Method::OPTIONS, &h, None).unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        h.append(header::ACCESS_CONTROL_REQUEST_HEADERS, hv("x-nope"));
        assert_eq!(c.preflight(&Method::OPTIONS, &h, None).unwrap().status(), StatusCode::FORBIDDEN);
        let many = vec!["x-custom"; MAX_REQUESTED_HEADERS + 1].join(",");
        let h = preflight_headers("https://app.example.com", "PUT", Some(&many));
        assert_eq!(c.preflight(&Method::OPTIONS, &h, None).unwrap().status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn star_policy_without_credentials() {
        let mut p = policy(&["*"], false);
        p.headers = vec!["*".into()];
        let c = Cors::compile(&p);
        let res = c
            .preflight(&Method::OPTIONS, &preflight_headers("https://any.test", "PUT", Some("x-a,x-b")), None)
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(get(&res, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&res, "access-control-allow-headers"), Some("*"));
        assert_eq!(get(&res, "access-control-allow-credentials"), None);
        let res = c
            .preflight(&Method::OPTIONS, &preflight_headers("null", "PUT", Some("authorization")), None)
            .unwrap();
        assert_eq!(get(&res, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&res, "access-control-allow-headers"), Some("*, authorization"));
        assert_eq!(get(&res, "access-control-allow-private-network"), None);
        let res =
            c.preflight(&Method::OPTIONS, &preflight_headers("https://any.test", "PUT", None), None).unwrap();
        assert_eq!(get(&res, "access-control-allow-headers"), None, "nothing asked");

        let mut h = HeaderMap::new();
        c.apply(Some(&hv("https://any.test")), &mut h);
        assert_eq!(h.get("access-control-allow-origin").unwrap(), "*");
        assert_eq!(h.get("vary").unwrap(), "Origin");
    }

    #[test]
    fn star_headers_with_credentials_echo_the_request() {
        let mut p = policy(&["https://app.example.com"], true);
        p.headers = vec!["*".into()];
        p.methods = vec!["*".into()];
        let c = Cors::compile(&p);
        let mut h = preflight_headers("https://app.example.com", "PATCH", Some("x-a, authorization"));
        h.append(header::ACCESS_CONTROL_REQUEST_HEADERS, hv("x-b"));
        let res = c.preflight(&Method::OPTIONS, &h, None).unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(get(&res, "access-control-allow-headers"), Some("x-a, authorization, x-b"));
        assert_eq!(get(&res, "access-control-allow-methods"), Some("PATCH"));
        assert_eq!(get(&res, "access-control-allow-origin"), Some("https://app.example.com"));
    }

    #[test]
    fn star_with_credentials_never_emits_star_with_credentials() {
        // Validation refuses this; compile still fails closed.
        let c = Cors::compile(&policy(&["*"], true));
        let res =
            c.preflight(&Method::OPTIONS, &preflight_headers("https://any.test", "PUT", None), None).unwrap();
        assert_eq!(get(&res, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&res, "access-control-allow-credentials"), None);
        let mut h = HeaderMap::new();
        c.apply(Some(&hv("https://any.test")), &mut h);
        assert_eq!(h.get("access-control-allow-origin").unwrap(), "*");
        assert!(h.get("access-control-allow-credentials").is_none());
    }

    #[test]
    fn private_network_only_for_listed_origins() {
        let c = Cors::compile(&policy(&["https://app.example.com"], false));
        let mut h = preflight_headers("https://app.example.com", "GET", None);
        h.insert(ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK, hv("true"));
        let res = c.preflight(&Method::OPTIONS, &h, None).unwrap();
        assert_eq!(get(&res, "access-control-allow-private-network"), Some("true"));
    }

    #[test]
    fn apply_allowed_origin() {
        let c = Cors::compile(&policy(&["https://app.example.com"], true));
        let mut h = HeaderMap::new();
        h.insert("content-type", hv("application/json"));
        c.apply(Some(&hv("https://app.example.com")), &mut h);
        assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://app.example.com");
        assert_eq!(h.get("access-control-allow-credentials").unwrap(), "true");
        assert_eq!(h.get("access-control-expose-headers").unwrap(), "x-request-id, x-total");
        assert_eq!(h.get_all("vary").iter().collect::<Vec<_>>(), ["Origin"]);
        assert!(h.get("access-control-allow-methods").is_none(), "preflight-only header");
    }

    #[test]
    fn apply_disallowed_or_absent_origin_strips_upstream_cors() {
        let c = Cors::compile(&policy(&["https://app.example.com"], true));
        for origin in [Some(hv("https://evil.test")), Some(hv("null")), Some(hv("x")), None] {
            let mut h = HeaderMap::new();
            h.insert("access-control-allow-origin", hv("*"));
            h.insert("access-control-allow-credentials", hv("true"));
            h.insert("access-control-expose-headers", hv("x-secret"));
            h.insert("access-control-allow-methods", hv("*"));
            h.insert("content-type", hv("text/plain"));
            c.apply(origin.as_ref(), &mut h);
            assert!(!has_cors_headers(&h), "{origin:?}: {h:?}");
            assert_eq!(h.get("vary").unwrap(), "Origin");
            assert_eq!(h.get("content-type").unwrap(), "text/plain");
        }
    }

    #[test]
    fn apply_overrides_upstream_origin_answer() {
        let c = Cors::compile(&policy(&["https://app.example.com"], false));
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", hv("https://other.test"));
        h.append("access-control-allow-origin", hv("*"));
        c.apply(Some(&hv("https://app.example.com")), &mut h);
        assert_eq!(
            h.get_all("access-control-allow-origin").iter().collect::<Vec<_>>(),
            ["https://app.example.com"]
        );
        assert!(h.get("access-control-allow-credentials").is_none());
    }

    #[test]
    fn vary_is_appended_once() {
        let c = Cors::compile(&policy(&["https://app.example.com"], false));
        let mut h = HeaderMap::new();
        h.insert("vary", hv("Accept-Encoding"));
        c.apply(Some(&hv("https://app.example.com")), &mut h);
        assert_eq!(h.get_all("vary").iter().collect::<Vec<_>>(), ["Accept-Encoding", "Origin"]);
        c.apply(Some(&hv("https://app.example.com")), &mut h);
        assert_eq!(h.get_all("vary").iter().collect::<Vec<_>>(), ["Accept-Encoding", "Origin"]);

        for present in ["accept-encoding, ORIGIN", "*"] {
            let mut h = HeaderMap::new();
            h.insert("vary", hv(present));
            c.apply(None, &mut h);
            assert_eq!(h.get_all("vary").iter().collect::<Vec<_>>(), [present]);
        }
    }

    #[test]
    fn empty_lists_send_nothing() {
        let mut p = policy(&["https://app.example.com"], false);
        p.methods.clear();
        p.headers.clear();
        p.expose_headers.clear();
        let c = Cors::compile(&p);
        let res = c
            .preflight(&Method::OPTIONS, &preflight_headers("https://app.example.com", "GET", None), None)
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(get(&res, "access-control-allow-methods"), None);
        assert_eq!(get(&res, "access-control-allow-headers"), None);
        let res = c
            .preflight(
                &Method::OPTIONS,
                &preflight_headers("https://app.example.com", "GET", Some("x-custom")),
                None,
            )
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let mut h = HeaderMap::new();
        c.apply(Some(&hv("https://app.example.com")), &mut h);
        assert!(h.get("access-control-expose-headers").is_none());
    }

    /// Counters by `name{k=v,...}`.
    #[derive(Default)]
    struct CountingRecorder(std::sync::Mutex<Vec<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)>>);

    impl CountingRecorder {
        fn get(&self, name: &str) -> Option<u64> {
            let v = self.0.lock().unwrap();
            v.iter().find(|(n, _)| n == name).map(|(_, c)| c.load(std::sync::atomic::Ordering::Relaxed))
        }
    }

    impl metrics::Recorder for CountingRecorder {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Counter {
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let slot = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            self.0.lock().unwrap().push((name, slot.clone()));
            Counter::from_arc(slot)
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn counts_preflights_with_handles_resolved_at_compile() {
        let rec = CountingRecorder::default();
        let c = metrics::with_local_recorder(&rec, || Cors::compile(&policy(&["https://a.test"], false)));
        // Outside the recorder's scope: the handles were resolved by `compile`.
        c.preflight(&Method::OPTIONS, &preflight_headers("https://a.test", "PUT", None), None);
        c.preflight(&Method::OPTIONS, &preflight_headers("https://a.test", "PUT", None), None);
        c.preflight(&Method::OPTIONS, &preflight_headers("https://b.test", "PUT", None), None);
        c.preflight(&Method::GET, &preflight_headers("https://b.test", "PUT", None), None);
        assert_eq!(rec.get("sumun_cors_preflights_total{policy=app,result=allowed}"), Some(2));
        assert_eq!(rec.get("sumun_cors_preflights_total{policy=app,result=rejected}"), Some(1));
    }
}
