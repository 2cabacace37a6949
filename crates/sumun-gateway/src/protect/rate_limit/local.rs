//! The per-instance GCRA store: governor's keyed limiter on a `DashMap`.
//!
//! Memory is bounded. Keys are stored as 128-bit seeded xxh3 hashes (16 bytes whatever the
//! key's length; the per-store random seed keeps clients from aiming collisions). Every
//! `SWEEP_CHECK_EVERY` checks the store looks at its size and age: every `SWEEP_INTERVAL`, or
//! at once when it holds more than `max_keys`, a blocking task drops the keys whose bucket is
//! full again (`retain_recent`: they are indistinguishable from a new key). If more than
//! `max_keys` are still active after that, the store starts over empty (logged and counted):
//! a flood of distinct keys costs at most `max_keys` entries (about 40 MB for the default
//! million) plus what arrives during one sweep, never unbounded memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::Decision;

type Keyed<C> = RateLimiter<u128, DashMapStateStore<u128>, C, StateInformationMiddleware>;

/// Checks between two looks at the store's size and the sweep clock.
const SWEEP_CHECK_EVERY: u64 = 1024;
/// How often stale keys are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The most keys one store keeps.
pub(super) const MAX_KEYS: usize = 1_000_000;

/// The GCRA parameters: one request costs `interval`; a full bucket holds `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gcra {
    pub interval: Duration,
    pub burst: u32,
}

impl Gcra {
    /// `requests` per `per`, `burst` at once.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Gcra {
        let interval = (per / requests.max(1)).max(Duration::from_nanos(1));
        Gcra { interval, burst: burst.max(1) }
    }

    fn quota(self) -> Quota {
        let burst = std::num::NonZeroU32::new(self.burst).unwrap_or(std::num::NonZeroU32::MIN);
        // `interval` is never zero, so `with_period` always gives a quota.
        Quota::with_period(self.interval).unwrap_or_else(|| Quota::per_second(burst)).allow_burst(burst)
    }
}

pub(super) struct LocalStore<C: Clock = DefaultClock> {
    limiter: ArcSwap<Keyed<C>>,
    clock: C,
    gcra: Gcra,
    seed: u64,
    max_keys: usize,
    policy: Arc<str>,
    resets: metrics::Counter,
    checks: AtomicU64,
    sweeping: AtomicBool,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last sweep.
    last_sweep: AtomicU64,
}

impl LocalStore<DefaultClock> {
    pub fn new(policy: &Arc<str>, gcra: Gcra) -> Self {
        Self::with_clock(policy, gcra, DefaultClock::default(), MAX_KEYS)
    }
}

impl<C> LocalStore<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    pub fn with_clock(policy: &Arc<str>, gcra: Gcra, clock: C, max_keys: usize) -> Self {
        LocalStore {
            limiter: ArcSwap::from_pointee(Self::fresh(gcra, &clock)),
            clock,
            gcra,
            seed: fastrand::u64(..),
            max_keys,
            policy: policy.clone(),
            resets: metrics::counter!("sumun_rate_limit_local_resets_total", "policy" => policy.to_string()),
            checks: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }

    fn fresh(gcra: Gcra, clock: &C) -> Keyed<C> {
        RateLimiter::dashmap_with_clock(gcra.quota(), clock.clone())
            .with_middleware::<StateInformationMiddleware>()
    }

    pub fn gcra(&self) -> Gcra {
        self.gcra
    }

    /// One request for `key` (None: the shared bucket of requests without a key).
    pub fn check(self: &Arc<Self>, key: Option<&[u8]>) -> Decision {
        // Bit 0 tells a real key (1) from the keyless bucket (0).
        let k = key.map_or(0, |b| xxhash_rust::xxh3::xxh3_128_with_seed(b, self.seed) | 1);
        let d = match self.limiter.load().check_key(&k) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    remaining,
                    retry_after: Duration::ZERO,
                    // Until the bucket is full again, to within one interval.
                    reset: self.gcra.interval.saturating_mul(self.gcra.burst.saturating_sub(remaining)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after: wait,
                    reset: wait.saturating_add(self.gcra.interval.saturating_mul(self.gcra.burst - 1)),
                }
            }
        };
        self.maybe_sweep();
        d
    }

    /// Keys held (an estimate under concurrent use).
    pub fn len(&self) -> usize {
        self.limiter.load().len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn maybe_sweep(self: &Arc<Self>) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_CHECK_EVERY != SWEEP_CHECK_EVERY - 1 {
            return;
        }
        let due = self.now_ms().saturating_sub(self.last_sweep.load(Ordering::Relaxed))
            >= u64::try_from(SWEEP_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if !due && self.len() <= self.max_keys {
            return;
        }
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        // A sweep walks every key: keep it off the runtime's worker threads.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                let me = self.clone();
                drop(h.spawn_blocking(move || me.sweep()));
            }
            Err(_) => self.sweep(),
        }
    }

    /// Drops keys whose bucket is full again; starts over when still above `max_keys`.
    pub fn sweep(&self) {
        let lim = self.limiter.load_full();
        let before = lim.len();
        lim.retain_recent();
        let after = lim.len();
        if after > self.max_keys {
            self.limiter.store(Arc::new(Self::fresh(self.gcra, &self.clock)));
            self.resets.increment(1);
            tracing::warn!(
                policy = %self.policy,
                keys = after,
                max_keys = self.max_keys,
                "rate limit: too many active keys; local state starts over"
            );
        } else if after < before / 2 {
            lim.shrink_to_fit();
        }
        self.last_sweep.store(self.now_ms(), Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn store(
        requests: u32,
        per_ms: u64,
        burst: u32,
        max_keys: usize,
    ) -> (Arc<LocalStore<FakeRelativeClock>>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let gcra = Gcra::new(requests, Duration::from_millis(per_ms), burst);
        (Arc::new(LocalStore::with_clock(&Arc::from("t"), gcra, clock.clone(), max_keys)), clock)
    }

    #[test]
    fn burst_then_one_per_interval() {
        // 10/s = one per 100 ms; 5 at once.
        let (s, clock) = store(10, 1000, 5, 100);
        for i in 0..5 {
            let d = s.check(Some(b"a"));
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.remaining, 4 - i, "remaining after request {i}");
            assert_eq!(d.reset, Duration::from_millis(100 * (5 - d.remaining as u64)));
        }
        let d = s.check(Some(b"a"));
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert_eq!(d.reset, Duration::from_millis(500), "the whole bucket refills in 5 intervals");
        clock.advance(Duration::from_millis(60));
        let d = s.check(Some(b"a"));
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(40));
        clock.advance(Duration::from_millis(40));
        assert!(s.check(Some(b"a")).allowed, "one interval later one more passes");
        assert!(!s.check(Some(b"a")).allowed);
        // Long idle: the bucket is full again, not more than full.
        clock.advance(Duration::from_secs(60));
        let passed = (0..20).filter(|_| s.check(Some(b"a")).allowed).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn keys_have_separate_buckets_and_no_key_shares_one() {
        let (s, _clock) = store(1, 1000, 2, 100);
        assert!(s.check(Some(b"a")).allowed);
        assert!(s.check(Some(b"a")).allowed);
        assert!(!s.check(Some(b"a")).allowed);
        assert!(s.check(Some(b"b")).allowed, "another key has its own bucket");
        assert!(s.check(None).allowed);
        assert!(s.check(None).allowed);
        assert!(!s.check(None).allowed, "requests without a key share one bucket");
        assert!(s.check(Some(b"")).allowed, "an empty key is not the missing key");
    }

    #[test]
    fn sweep_drops_full_buckets_and_caps_keys() {
        let (s, clock) = store(10, 1000, 5, 50);
        for i in 0..40u32 {
            assert!(s.check(Some(&i.to_be_bytes())).allowed);
        }
        assert_eq!(s.len(), 40);
        s.sweep();
        assert_eq!(s.len(), 40, "buckets not yet refilled stay");
        clock.advance(Duration::from_secs(1));
        s.sweep();
        assert_eq!(s.len(), 0, "refilled buckets are dropped");
        // Above the cap with every bucket active: starts over.
        for i in 0..60u32 {
            s.check(Some(&i.to_be_bytes()));
        }
        s.sweep();
        assert_eq!(s.len(), 0, "over max_keys the store starts over");
        assert!(s.check(Some(&1u32.to_be_bytes())).allowed);
    }

    /// The size check runs on the request path every SWEEP_CHECK_EVERY checks.
    #[test]
    fn growth_past_the_cap_triggers_a_sweep() {
        let (s, _clock) = store(1, 1000, 1, 100);
        for i in 0..(SWEEP_CHECK_EVERY as u32) {
            s.check(Some(&i.to_be_bytes()));
        }
        assert!(s.len() <= 100, "len {} after a forced sweep", s.len());
    }
}
