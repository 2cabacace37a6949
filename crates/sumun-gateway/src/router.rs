//! Routing: the compiled matchers of every route, tried in file order; the first match wins.

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sumun_config::{HeaderValueMatch, HostMatch, PathMatch, RouteMatch};

/// What a request offers to the matchers. `path` is already normalized.
pub struct RequestView<'a> {
    pub listener: &'a str,
    /// Host without port, as sent (compared case-insensitively).
    pub host: Option<&'a str>,
    pub port: Option<u16>,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// One route's matchers, compiled.
pub struct Matcher {
    listeners: Vec<String>,
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    version: Option<Version>,
}

struct Version {
    /// "v2"
    segment: String,
    /// ".v2+json"
    media_suffix: String,
    raw: String,
}

static X_API_VERSION: HeaderName = HeaderName::from_static("x-api-version");

impl Matcher {
    /// Compiles a validated match. Names and values were validated by the config loader, so a
    /// conversion failure here can only come from a bug; such a constraint never matches.
    pub fn compile(listeners: &[String], m: &RouteMatch) -> Matcher {
        Matcher {
            listeners: listeners.to_vec(),
            host: m.host.clone(),
            path: m.path.clone(),
            methods: m.methods.iter().filter_map(|s| Method::from_bytes(s.as_bytes()).ok()).collect(),
            headers: m
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
                    let value = match v {
                        HeaderValueMatch::Present => None,
                        HeaderValueMatch::Exact(s) => Some(HeaderValue::from_str(s).ok()?),
                    };
                    Some((name, value))
                })
                .collect(),
            version: m.version.as_ref().map(|v| Version {
                segment: format!("v{v}"),
                media_suffix: format!(".v{v}+json"),
                raw: v.clone(),
            }),
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.listeners.is_empty() && !self.listeners.iter().any(|l| l == req.listener) {
            return false;
        }
        if let Some(h) = &self.host
            && !host_matches(h, req.host, req.port)
        {
            return false;
        }
        if let Some(p) = &self.path
            && !path_matches(p, req.path)
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        for (name, want) in &self.headers {
            let ok = match want {
                None => req.headers.contains_key(name),
                Some(v) => req.headers.get_all(name).iter().any(|got| got == v),
            };
            if !ok {
                return false;
            }
        }
        if let Some(v) = &self.version
            && !version_matches(v, req)
        {
            return false;
        }
        true
    }
}

fn host_matches(m: &HostMatch, host: Option<&str>, port: Option<u16>) -> bool {
    let Some(host) = host else { return false };
    let (ok, want_port) = match m {
        HostMatch::Exact { host: h, port } => (host.eq_ignore_ascii_case(h), *port),
        HostMatch::Wildcard { suffix, port } => {
            let ok = host.len() > suffix.len()
                && host.get(host.len() - suffix.len()..).is_some_and(|s| s.eq_ignore_ascii_case(suffix));
            (ok, *port)
        }
    };
    ok && want_port.is_none_or(|p| Some(p) == port)
}

/// Segment-aware prefix: "/api" matches "/api", "/api/" and "/api/x", never "/apix".
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::Regex(r) => r.is_match(path),
    }
}

fn version_matches(v: &Version, req: &RequestView<'_>) -> bool {
    if req.path.split('/').any(|s| s == v.segment) {
        return true;
    }
    if let Some(x) = req.headers.get(&X_API_VERSION).and_then(|h| h.to_str().ok())
        && x.trim() == v.raw
    {
        return true;
    }
    req.headers.get_all(header::ACCEPT).iter().filter_map(|h| h.to_str().ok()).any(|accept| {
        accept.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or("").trim();
            media.len() > "application/vnd.".len()
                && media.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/vnd."))
                && media.ends_with(&v.media_suffix)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(path: &'a str, headers: &'a HeaderMap, method: &'a Method) -> RequestView<'a> {
        RequestView {
            listener: "web",
            host: Some("API.example.com"),
            port: Some(8080),
            path,
            method,
            headers,
        }
    }

    #[test]
    fn hosts() {
        let exact = HostMatch::Exact { host: "api.example.com".into(), port: None };
        assert!(host_matches(&exact, Some("API.example.COM"), Some(1)));
        let with_port = HostMatch::Exact { host: "api.example.com".into(), port: Some(80) };
        assert!(!host_matches(&with_port, Some("api.example.com"), Some(8080)));
        assert!(!host_matches(&with_port, Some("api.example.com"), None));
        let wild = HostMatch::Wildcard { suffix: ".example.com".into(), port: None };
        assert!(host_matches(&wild, Some("a.b.example.com"), None));
        assert!(!host_matches(&wild, Some("example.com"), None));
        assert!(!host_matches(&wild, Some("badexample.com"), None));
        assert!(!host_matches(&wild, None, None));
    }

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn versions_three_ways() {
        let m = RouteMatch { version: Some("2".into()), ..Default::default() };
        let matcher = Matcher::compile(&[], &m);
        let get = Method::GET;
        let empty = HeaderMap::new();
        assert!(matcher.matches(&view("/api/v2/users", &empty, &get)));
        assert!(!matcher.matches(&view("/api/v20/users", &empty, &get)));
        assert!(!matcher.matches(&view("/api/users", &empty, &get)));
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html, application/vnd.acme.v2+json; q=0.9"));
        assert!(matcher.matches(&view("/api/users", &h, &get)));
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/vnd.acme.v3+json"));
        assert!(!matcher.matches(&view("/api/users", &h, &get)));
        let mut h = HeaderMap::new();
        h.insert("x-api-version", HeaderValue::from_static(" 2 "));
        assert!(matcher.matches(&view("/api/users", &h, &get)));
    }

    #[test]
    fn methods_headers_listeners() {
        let m = RouteMatch {
            methods: vec!["POST".into()],
            headers: vec![
                ("x-canary".into(), HeaderValueMatch::Exact("true".into())),
                ("x-debug".into(), HeaderValueMatch::Present),
            ],
            ..Default::default()
        };
        let matcher = Matcher::compile(&["web".into()], &m);
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("true"));
        h.insert("x-debug", HeaderValue::from_static(""));
        assert!(matcher.matches(&view("/", &h, &Method::POST)));
        assert!(!matcher.matches(&view("/", &h, &Method::GET)));
        let mut other = view("/", &h, &Method::POST);
        other.listener = "admin";
        assert!(!matcher.matches(&other));
        h.insert("x-canary", HeaderValue::from_static("false"));
        assert!(!matcher.matches(&view("/", &h, &Method::POST)));
    }
}
