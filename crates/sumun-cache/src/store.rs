//! The in-memory tier: a `moka` cache (W-TinyLFU admission, weighted by bytes, per-entry
//! expiry) of slots, one per primary key, each holding the stored variants of that URL
//! (newest first). Beside it, the purge index: URL → keys and tag → keys, kept in step with
//! evictions by a generation number so a late eviction never unindexes a newer entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName};
use moka::notification::RemovalCause;

use crate::freshness::Freshness;
use crate::key::Secondary;
use crate::metrics::CacheMetrics;

/// Variants kept per URL; the oldest goes first.
const MAX_VARIANTS: usize = 16;
/// Per-object bookkeeping counted in the weight besides headers and body.
const OVERHEAD: u64 = 256;

/// A stored response.
#[derive(Debug)]
pub struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as the chunks it arrived in (small bodies joined into one): a hit clones
    /// `Bytes` handles, never the data.
    pub body: Vec<Bytes>,
    pub body_len: u64,
    pub secondary: Secondary,
    pub freshness: Freshness,
    /// Purge tags from `Surrogate-Key` / `Cache-Tag`.
    pub tags: Vec<String>,
}

impl Stored {
    pub fn weight(&self) -> u64 {
        let headers: u64 = self.headers.iter().map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64).sum();
        headers + self.body_len + OVERHEAD
    }

    /// A copy with new headers and freshness sharing the same body (a 304 or HEAD update).
    pub fn with_headers(&self, headers: HeaderMap, freshness: Freshness) -> Stored {
        Stored {
            status: self.status,
            tags: tags_of(&headers),
            headers,
            body: self.body.clone(),
            body_len: self.body_len,
            secondary: self.secondary.clone(),
            freshness,
        }
    }
}

static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Tags named by `Surrogate-Key` (space separated) and `Cache-Tag` (comma separated).
pub fn tags_of(headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let mut add = |t: &str| {
        if !t.is_empty() && t.len() <= 256 && !tags.iter().any(|x| x == t) && tags.len() < 64 {
            tags.push(t.to_owned());
        }
    };
    for v in headers.get_all(&SURROGATE_KEY).iter().filter_map(|v| v.to_str().ok()) {
        v.split_ascii_whitespace().for_each(&mut add);
    }
    for v in headers.get_all(&CACHE_TAG).iter().filter_map(|v| v.to_str().ok()) {
        v.split(',').map(str::trim).for_each(&mut add);
    }
    tags
}

/// All stored variants of one primary key.
#[derive(Debug)]
pub struct Slot {
    pub url: Arc<str>,
    pub variants: Vec<Arc<Stored>>,
    generation: u64,
    weight: u64,
}

/// What a lookup found.
pub enum Found {
    Hit(Arc<Stored>),
    /// The URL is stored, but no variant matches this request.
    VaryMiss,
    Miss,
}

#[derive(Default)]
struct Index {
    /// `path?query` → origin → key → generation.
    urls: BTreeMap<String, HashMap<u128, (Arc<str>, u64)>>,
    tags: HashMap<String, HashMap<u128, u64>>,
}

/// Splits a canonical URL into (`scheme://host`, `path?query`).
fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, "/"),
    }
}

impl Index {
    fn add(&mut self, key: u128, url: &Arc<str>, tags: &[String], generation: u64) {
        let (_, pq) = split_url(url);
        self.urls.entry(pq.to_owned()).or_default().insert(key, (url.clone(), generation));
        for t in tags {
            self.tags.entry(t.clone()).or_default().insert(key, generation);
        }
    }

    fn remove(&mut self, key: u128, url: &str, tags: &[String], generation: u64) {
        let (_, pq) = split_url(url);
        if let Some(m) = self.urls.get_mut(pq) {
            if m.get(&key).is_some_and(|(_, g)| *g == generation) {
                m.remove(&key);
            }
            if m.is_empty() {
                self.urls.remove(pq);
            }
        }
        for t in tags {
            if let Some(m) = self.tags.get_mut(t) {
                if m.get(&key) == Some(&generation) {
                    m.remove(&key);
                }
                if m.is_empty() {
                    self.tags.remove(t);
                }
            }
        }
    }
}

fn slot_tags(variants: &[Arc<Stored>]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for v in variants {
        for t in &v.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
    }
    tags
}

struct SlotExpiry;

impl moka::Expiry<u128, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _k: &u128, v: &Arc<Slot>, _at: std::time::Instant) -> Option<Duration> {
        Some(keep_for(v))
    }

    fn expire_after_update(
        &self,
        _k: &u128,
        v: &Arc<Slot>,
        _at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(keep_for(v))
    }
}

fn keep_for(slot: &Slot) -> Duration {
    let now = SystemTime::now();
    slot.variants.iter().map(|v| v.freshness.keep_for(now)).max().unwrap_or_default()
}

pub struct Store {
    cache: moka::sync::Cache<u128, Arc<Slot>>,
    index: Arc<Mutex<Index>>,
    generation: AtomicU64,
    metrics: Arc<CacheMetrics>,
    capacity: u64,
}

impl Store {
    pub fn new(capacity: u64, metrics: Arc<CacheMetrics>) -> Store {
        let index: Arc<Mutex<Index>> = Arc::default();
        let (idx, m) = (index.clone(), metrics.clone());
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &u128, v: &Arc<Slot>| u32::try_from(v.weight).unwrap_or(u32::MAX))
            .expire_after(SlotExpiry)
            .eviction_listener(move |k: Arc<u128>, v: Arc<Slot>, cause: RemovalCause| {
                m.held(-(v.weight as i64), -(v.variants.len() as i64));
                match cause {
                    RemovalCause::Size => m.evictions.increment(1),
                    RemovalCause::Expired => m.expirations.increment(1),
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                }
                if let Ok(mut i) = idx.lock() {
                    i.remove(*k, &v.url, &slot_tags(&v.variants), v.generation);
                }
            })
            .build();
        Store { cache, index, generation: AtomicU64::new(1), metrics, capacity }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The most recent variant of `key` that `request` selects; with `authorized`, only one
    /// that may answer requests carrying `Authorization` (§3.5).
    pub fn lookup(&self, key: u128, request: &HeaderMap, authorized: bool) -> Found {
        let Some(slot) = self.cache.get(&key) else { return Found::Miss };
        match slot.variants.iter().find(|v| v.secondary.matches(request)) {
            Some(v) if authorized && !v.freshness.shareable_with_auth => Found::Miss,
            Some(v) => Found::Hit(v.clone()),
            None => Found::VaryMiss,
        }
    }

    /// Stores `entry` for `key`, replacing the variant with the same selecting values.
    pub fn insert(&self, key: u128, url: &str, entry: Arc<Stored>) {
        if entry.weight() > self.capacity {
            return;
        }
        let old = self.cache.get(&key);
        let mut variants = Vec::with_capacity(old.as_ref().map_or(1, |o| o.variants.len() + 1));
        if let Some(o) = &old {
            variants.extend(
                o.variants.iter().filter(|v| v.secondary != entry.secondary).take(MAX_VARIANTS - 1).cloned(),
            );
        }
        variants.insert(0, entry);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let url: Arc<str> = match &old {
            Some(o) if &*o.url == url => o.url.clone(),
            _ => Arc::from(url),
        };
        let weight = variants.iter().map(|v| v.weight()).sum();
        let (new_weight, retention) =
            (variants[0].weight(), variants[0].freshness.keep_for(SystemTime::now()));
        let objects = variants.len() as i64;
        let slot = Arc::new(Slot { url: url.clone(), variants, generation, weight });
        if let Ok(mut i) = self.index.lock() {
            if let Some(o) = &old {
                i.remove(key, &o.url, &slot_tags(&o.variants), o.generation);
            }
            i.add(key, &url, &slot_tags(&slot.variants), generation);
        }
        self.metrics.stored_object(new_weight, retention);
        self.metrics.held(weight as i64, objects);
        self.cache.insert(key, slot);
    }

    pub fn remove(&self, key: u128) -> bool {
        self.cache.remove(&key).is_some()
    }

    fn remove_all(&self, keys: impl IntoIterator<Item = u128>) -> usize {
        let n = keys.into_iter().filter(|k| self.remove(*k)).count();
        self.metrics.purged.increment(n as u64);
        n
    }

    /// Removes every entry stored for this canonical URL (any route's key layout).
    pub fn purge_url(&self, url: &str) -> usize {
        let (origin, pq) = split_url(url);
        let keys: Vec<u128> = match self.index.lock() {
            Ok(i) => i
                .urls
                .get(pq)
                .map(|m| m.iter().filter(|(_, (u, _))| split_url(u).0 == origin).map(|(k, _)| *k).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        self.remove_all(keys)
    }

    /// Removes every entry whose URL starts with `prefix`: a path prefix (`/static/`) on any
    /// host, or a full URL prefix (`https://example.com/static/`).
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let (origin, path_prefix) = if prefix.starts_with('/') { ("", prefix) } else { split_url(prefix) };
        let keys: Vec<u128> = match self.index.lock() {
            Ok(i) => i
                .urls
                .range(path_prefix.to_owned()..)
                .take_while(|(pq, _)| pq.starts_with(path_prefix))
                .flat_map(|(_, m)| m.iter())
                .filter(|(_, (u, _))| origin.is_empty() || split_url(u).0 == origin)
                .map(|(k, _)| *k)
                .collect(),
            Err(_) => Vec::new(),
        };
        self.remove_all(keys)
    }

    pub fn purge_tag(&self, tag: &str) -> usize {
        let keys: Vec<u128> = match self.index.lock() {
            Ok(i) => i.tags.get(tag).map(|m| m.keys().copied().collect()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        self.remove_all(keys)
    }

    /// Runs moka's pending maintenance (tests and metrics snapshots).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}
