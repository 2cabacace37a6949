//! Cache metrics: handles resolved once, plus the working-set estimate (stored objects per
//! second × mean stored size × mean retention), recomputed once per window from what was
//! actually stored.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};

const WINDOW: Duration = Duration::from_secs(30);

pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub stale_revalidating: Counter,
    pub stale_on_error: Counter,
    pub stale_accepted: Counter,
    pub revalidated: Counter,
    pub coalesced: Counter,
    pub stored: Counter,
    pub evictions: Counter,
    pub expirations: Counter,
    pub purged: Counter,
    pub bypass: Counter,
    bytes_gauge: Gauge,
    objects_gauge: Gauge,
    working_set_gauge: Gauge,
    /// Exact bytes and objects held, maintained on insert and removal.
    bytes: AtomicI64,
    objects: AtomicI64,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    count: u64,
    bytes: u64,
    retention_secs: u64,
    estimate: u64,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        let stale =
            |reason: &'static str| metrics::counter!("sumun_cache_stale_served_total", "reason" => reason);
        CacheMetrics {
            hits: metrics::counter!("sumun_cache_hits_total"),
            misses: metrics::counter!("sumun_cache_misses_total"),
            stale_revalidating: stale("stale_while_revalidate"),
            stale_on_error: stale("stale_if_error"),
            stale_accepted: stale("max_stale"),
            revalidated: metrics::counter!("sumun_cache_revalidations_total"),
            coalesced: metrics::counter!("sumun_cache_coalesced_waiters_total"),
            stored: metrics::counter!("sumun_cache_stored_total"),
            evictions: metrics::counter!("sumun_cache_evictions_total"),
            expirations: metrics::counter!("sumun_cache_expirations_total"),
            purged: metrics::counter!("sumun_cache_purged_total"),
            bypass: metrics::counter!("sumun_cache_bypass_total"),
            bytes_gauge: metrics::gauge!("sumun_cache_bytes"),
            objects_gauge: metrics::gauge!("sumun_cache_objects"),
            working_set_gauge: metrics::gauge!("sumun_cache_working_set_estimate_bytes"),
            bytes: AtomicI64::new(0),
            objects: AtomicI64::new(0),
            window: Mutex::new(Window {
                started: Instant::now(),
                count: 0,
                bytes: 0,
                retention_secs: 0,
                estimate: 0,
            }),
        }
    }
}

impl CacheMetrics {
    /// A new object of `weight` bytes was stored, to be kept for `retention`.
    pub fn stored_object(&self, weight: u64, retention: Duration) {
        self.stored.increment(1);
        let Ok(mut w) = self.window.lock() else { return };
        w.count += 1;
        w.bytes += weight;
        w.retention_secs += retention.as_secs();
        let elapsed = w.started.elapsed();
        if elapsed >= WINDOW {
            let rate = w.count as f64 / elapsed.as_secs_f64();
            let mean_size = w.bytes as f64 / w.count as f64;
            let mean_retention = w.retention_secs as f64 / w.count as f64;
            let estimate = (rate * mean_size * mean_retention) as u64;
            self.working_set_gauge.set(estimate as f64);
            *w = Window { started: Instant::now(), count: 0, bytes: 0, retention_secs: 0, estimate };
        }
    }

    /// The store now holds `bytes` more bytes and `objects` more objects (negative: fewer).
    pub fn held(&self, bytes: i64, objects: i64) {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let o = self.objects.fetch_add(objects, Ordering::Relaxed) + objects;
        self.bytes_gauge.set(b.max(0) as f64);
        self.objects_gauge.set(o.max(0) as f64);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed).max(0) as u64
    }

    /// The last working-set estimate, in bytes (0 until a first window completes).
    pub fn working_set_estimate(&self) -> u64 {
        self.window.lock().map(|w| w.estimate).unwrap_or(0)
    }
}
