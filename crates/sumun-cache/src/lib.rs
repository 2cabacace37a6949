//! sumun's shared HTTP cache (RFC 9111): the policy (what may be stored, for how long, and
//! when a stored response may answer a request), cache keys with `Vary` variants, the
//! in-memory tier on `moka`, request coalescing, streaming fills, stale serving
//! (`stale-while-revalidate`, `stale-if-error`), invalidation and purge, `Cache-Status` and
//! metrics. It does not own the upstream call: the gateway hands it an [`Origin`] that sends
//! a request head upstream, so the cache can call it more than once per request
//! (revalidation) and without a client (background refresh).

#![forbid(unsafe_code)]

pub mod coalesce;
pub mod directives;
pub mod fill;
pub mod freshness;
pub mod key;
pub mod metrics;
pub mod respond;
mod serve;
pub mod status;
pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use sumun_config::{CacheKeyPart, CacheStore, RouteCache};
use sumun_http::{Body, ProxyError};

pub use key::Target;
pub use status::{CACHE_STATUS, CacheStatus, Fwd};

/// The name this cache uses in `Cache-Status` and for `Surrogate-Control` targeting.
pub const CACHE_NAME: &str = "sumun";
/// Sent upstream on caching routes so origins can target `Surrogate-Control` at us.
pub const SURROGATE_CAPABILITY: HeaderValue = HeaderValue::from_static("sumun=\"Surrogate/1.0\"");

pub type OriginFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// Sends a request head (no body) to the route's upstream and returns its response with
/// hop-by-hop fields already removed. Must be callable without a client (`'static`).
pub trait Origin: Send + Sync + 'static {
    fn send(&self, head: http::request::Parts) -> OriginFuture;
}

/// A route's `cache = …`, compiled.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub key: Vec<CacheKeyPart>,
    pub ignore_query: Vec<String>,
    pub vary_cookies: Vec<String>,
    pub defaults: freshness::Defaults,
    pub max_object: u64,
    pub coalesce_timeout: Duration,
}

impl RoutePolicy {
    pub fn compile(cfg: &RouteCache) -> RoutePolicy {
        RoutePolicy {
            key: cfg.key.clone(),
            ignore_query: cfg.ignore_query.clone(),
            vary_cookies: cfg.vary_cookies.clone(),
            defaults: freshness::Defaults {
                default_ttl: cfg.default_ttl,
                stale_while_revalidate: cfg.stale_while_revalidate,
                stale_if_error: cfg.stale_if_error,
            },
            max_object: cfg.max_object,
            coalesce_timeout: cfg.coalesce_timeout,
        }
    }
}

pub(crate) struct Inner {
    pub store: Arc<store::Store>,
    pub inflight: Arc<coalesce::Inflight>,
    pub metrics: Arc<metrics::CacheMetrics>,
}

/// The shared cache: one per process, used by every caching route, kept across reloads.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// What a purge matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    Url(String),
    Prefix(String),
    Tag(String),
}

impl Cache {
    pub fn new(cfg: &CacheStore) -> Cache {
        let metrics = Arc::new(metrics::CacheMetrics::default());
        Cache {
            inner: Arc::new(Inner {
                store: Arc::new(store::Store::new(cfg.memory, metrics.clone())),
                inflight: Arc::default(),
                metrics,
            }),
        }
    }

    /// The configured memory size this cache was built with (a reload that changes it
    /// builds a new, empty cache).
    pub fn capacity(&self) -> u64 {
        self.inner.store.capacity()
    }

    /// Whether the cache handles this request at all: GET or HEAD without a body. Anything
    /// else goes to the origin directly and then to [`Cache::invalidate_after`].
    pub fn handles(method: &Method, headers: &HeaderMap) -> bool {
        (method == Method::GET || method == Method::HEAD)
            && !headers.contains_key(http::header::TRANSFER_ENCODING)
            && headers.get(http::header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0")
    }

    /// Answers a GET or HEAD request: from the store, after revalidation, or by filling
    /// from `origin`. `target` is the URL as the client addressed it; `head` is the request
    /// head prepared for the upstream (forwarding fields, rewrites).
    pub async fn serve(
        &self,
        route: &Arc<RoutePolicy>,
        target: Target<'_>,
        head: http::request::Parts,
        origin: Arc<dyn Origin>,
    ) -> Result<Response<Body>, ProxyError> {
        serve::serve(&self.inner, route, target, head, origin).await
    }

    /// Answers a GET or HEAD from a fresh stored response selected by the client's own
    /// request head, before anything is prepared for the upstream (the hit path). None: call
    /// [`Cache::serve`].
    pub fn fresh_hit(
        &self,
        route: &RoutePolicy,
        target: Target<'_>,
        head: &http::request::Parts,
    ) -> Option<Response<Body>> {
        serve::fresh_hit(&self.inner, route, target, head)
    }

    /// §4.4: after an unsafe request got a non-error response, the target URI and the
    /// same-origin `Location` / `Content-Location` URIs are invalidated.
    pub fn invalidate_after(
        &self,
        route: &RoutePolicy,
        target: Target<'_>,
        method: &Method,
        status: StatusCode,
        response: &HeaderMap,
    ) {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) {
            return;
        }
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        let own = key::canonical_url(&target, &route.ignore_query);
        self.inner.store.purge_url(&own);
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            for v in response.get_all(&name).iter().filter_map(|v| v.to_str().ok()) {
                if let Some(url) = resolve_same_origin(&target, v, &route.ignore_query) {
                    self.inner.store.purge_url(&url);
                }
            }
        }
    }

    /// Removes matching entries at once; returns how many stored URLs were removed.
    pub fn purge(&self, what: &Purge) -> usize {
        match what {
            Purge::Url(u) => match canonical_absolute(u) {
                Some(url) => self.inner.store.purge_url(&url),
                None => 0,
            },
            Purge::Prefix(p) => self.inner.store.purge_prefix(p),
            Purge::Tag(t) => self.inner.store.purge_tag(t),
        }
    }

    /// Live figures for the admin API.
    pub fn snapshot(&self) -> serde_like::Snapshot {
        self.inner.store.sync();
        serde_like::Snapshot {
            capacity_bytes: self.inner.store.capacity(),
            stored_bytes: self.inner.metrics.bytes(),
            objects: self.inner.metrics.objects(),
            urls: self.inner.store.entry_count(),
            fills_in_progress: self.inner.inflight.in_progress() as u64,
            working_set_estimate_bytes: self.inner.metrics.working_set_estimate(),
        }
    }
}

/// Plain figures, no serde dependency: the admin crate renders them.
pub mod serde_like {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Snapshot {
        pub capacity_bytes: u64,
        pub stored_bytes: u64,
        pub objects: u64,
        pub urls: u64,
        pub fills_in_progress: u64,
        pub working_set_estimate_bytes: u64,
    }
}

/// `scheme://host/path?query` from an absolute URL given to the purge API.
fn canonical_absolute(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let host = uri.authority()?.as_str();
    let t = Target { scheme, host, path: uri.path(), query: uri.query() };
    Some(key::canonical_url(&t, &[]))
}

/// A `Location`-style reference resolved against the request URL; None when it points to
/// another origin (§4.4 forbids invalidating those) or cannot be parsed.
fn resolve_same_origin(base: &Target<'_>, reference: &str, ignore: &[String]) -> Option<String> {
    let reference = reference.trim();
    if reference.starts_with("//") {
        return None;
    }
    if reference.starts_with('/') {
        let uri: http::uri::PathAndQuery = reference.parse().ok()?;
        let t = Target { path: uri.path(), query: uri.query(), ..*base };
        return Some(key::canonical_url(&t, ignore));
    }
    if let Ok(uri) = reference.parse::<http::Uri>()
        && let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority())
    {
        if !scheme.eq_ignore_ascii_case(base.scheme) || !auth.as_str().eq_ignore_ascii_case(base.host) {
            return None;
        }
        let t = Target { path: uri.path(), query: uri.query(), ..*base };
        return Some(key::canonical_url(&t, ignore));
    }
    // A relative path: resolve against the request path's directory.
    let dir = base.path.rsplit_once('/').map_or("", |(d, _)| d);
    let joined = format!("{dir}/{reference}");
    let uri: http::uri::PathAndQuery = joined.parse().ok()?;
    let t = Target { path: uri.path(), query: uri.query(), ..*base };
    Some(key::canonical_url(&t, ignore))
}

#[cfg(test)]
mod tests;
