//! The validated model of the HTTP cache settings: the top-level `[cache]` table and a route's
//! `cache = true | { … }`.

use std::time::Duration;

use crate::model::Cidr;

/// `[cache]`: the shared store every caching route uses.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStore {
    /// In-memory tier size in bytes (bodies + headers), W-TinyLFU eviction.
    pub memory: u64,
    /// Clients allowed to send `PURGE` requests to caching routes; empty = `PURGE` is not
    /// accepted (the admin API always is).
    pub purge_from: Vec<Cidr>,
}

impl Default for CacheStore {
    fn default() -> Self {
        CacheStore { memory: 512 << 20, purge_from: Vec::new() }
    }
}

/// What a cache key is made of, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKeyPart {
    Method,
    /// Scheme, host and port, lower-case.
    Host,
    Path,
    /// The query with its parameters sorted (and `ignore_query` ones dropped).
    Query,
}

/// A route's `cache = true | { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub key: Vec<CacheKeyPart>,
    /// Query parameters left out of the key (tracking parameters, cache busters).
    pub ignore_query: Vec<String>,
    /// Cookies whose values become part of the key (as if the response said `Vary` on them);
    /// a request carrying any other cookie is still served from the cache.
    pub vary_cookies: Vec<String>,
    /// Freshness for responses that carry no explicit freshness but are cacheable by
    /// default (used instead of the heuristic); None = RFC 9111 heuristics.
    pub default_ttl: Option<Duration>,
    /// Larger responses stream through without being stored.
    pub max_object: u64,
    /// Used when the origin sends no `stale-while-revalidate`.
    pub stale_while_revalidate: Duration,
    /// Used when the origin sends no `stale-if-error`.
    pub stale_if_error: Duration,
    /// How long a request waits for another request's fill of the same key before going
    /// upstream itself.
    pub coalesce_timeout: Duration,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            key: vec![CacheKeyPart::Method, CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query],
            ignore_query: Vec::new(),
            vary_cookies: Vec::new(),
            default_ttl: None,
            max_object: 8 << 20,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            coalesce_timeout: Duration::from_secs(5),
        }
    }
}
