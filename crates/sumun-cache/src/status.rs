//! `Cache-Status` (RFC 9211): what this cache did with the request, appended after any
//! member the upstream's own caches added (the last member is the cache nearest the client).

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why the request was forwarded (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Not handled by the cache (method, request `no-store`, range, body).
    Bypass,
    UriMiss,
    VaryMiss,
    /// The request's own directives (`no-cache`, `max-age`, `min-fresh`) required it.
    Request,
    Stale,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
        }
    }
}

/// One `Cache-Status` member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Fwd>,
    pub fwd_status: Option<u16>,
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> Self {
        CacheStatus { hit: true, ttl: Some(ttl), ..Default::default() }
    }

    pub fn fwd(fwd: Fwd) -> Self {
        CacheStatus { fwd: Some(fwd), ..Default::default() }
    }

    pub fn detail(mut self, d: &'static str) -> Self {
        self.detail = Some(d);
        self
    }

    pub fn render(&self, name: &str) -> String {
        let mut s = String::from(name);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(f) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(f.as_str());
        }
        if let Some(st) = self.fwd_status {
            s.push_str(&format!("; fwd-status={st}"));
        }
        if let Some(t) = self.ttl {
            s.push_str(&format!("; ttl={t}"));
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        s
    }

    /// Appends this member to the response's `Cache-Status`.
    pub fn apply(&self, name: &str, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.render(name)) {
            headers.append(CACHE_STATUS.clone(), v);
        }
    }

    /// One word for the access log: `hit`, `stale`, `revalidated`, `miss`, `bypass`.
    pub fn outcome(&self) -> &'static str {
        match (self.hit, self.fwd, self.fwd_status) {
            (true, _, _) if self.ttl.is_some_and(|t| t <= 0) => "stale",
            (true, _, _) => "hit",
            (false, Some(Fwd::Stale | Fwd::Request), Some(304)) => "revalidated",
            (false, _, _) if self.detail == Some("stale-if-error") => "stale",
            (false, Some(Fwd::Bypass), _) => "bypass",
            (false, Some(_), _) => "miss",
            (false, None, _) => "miss",
        }
    }

    /// Sets the header member and the [`Outcome`] extension on a response head.
    pub fn mark(&self, name: &str, headers: &mut HeaderMap, extensions: &mut http::Extensions) {
        self.apply(name, headers);
        extensions.insert(Outcome(self.outcome()));
    }
}

/// The cache's verdict on a response, as a response extension (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        assert_eq!(CacheStatus::hit(42).render("sumun"), "sumun; hit; ttl=42");
        let miss = CacheStatus {
            fwd: Some(Fwd::UriMiss),
            fwd_status: Some(200),
            stored: true,
            ttl: Some(60),
            ..Default::default()
        };
        assert_eq!(miss.render("sumun"), "sumun; fwd=uri-miss; fwd-status=200; ttl=60; stored");
        let stale =
            CacheStatus { fwd: Some(Fwd::Stale), fwd_status: Some(503), ttl: Some(-5), ..Default::default() }
                .detail("stale-if-error");
        assert_eq!(stale.render("sumun"), "sumun; fwd=stale; fwd-status=503; ttl=-5; detail=stale-if-error");
    }
}
