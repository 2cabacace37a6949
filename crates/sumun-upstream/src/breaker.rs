//! Circuit breaker for an upstream (or one endpoint of it): closed → open when the failure
//! ratio over a sliding window exceeds the threshold with enough requests; open rejects fast
//! with the time left (for `Retry-After`); after `open_for` it half-opens and lets a few probes
//! through; all of them succeeding closes it, any failing re-opens it.
//!
//! Hot path: in the closed state `try_acquire` is one atomic load and `record` one CAS on the
//! current time bucket. Only a state change takes the transition mutex; probe counters are CAS
//! updates on the same word as the state, tagged with a generation, so a result that belongs
//! to an earlier phase can never count in the current one.
//!
//! A permit dropped without [`BreakerPermit::record`] is a cancelled request (the client went
//! away, or the try was abandoned): it says nothing about the upstream's health, so it counts as
//! neither success nor failure; a cancelled probe gives its slot back so another request can
//! probe. A try that ran out of time must be recorded as [`Outcome::Timeout`], not dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sumun_config::CircuitBreaker;

use crate::endpoint::Outcome;

/// How long a caller rejected because every half-open probe slot is taken is told to wait.
const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Time buckets in a breaker's sliding window.
const WINDOW_BUCKETS: usize = 10;

// ---------------------------------------------------------------------------------------------
// Sliding window of two counters, shared with the retry budget.

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_SHIFT: u32 = 2 * COUNT_BITS;
const TAG_MASK: u64 = (1 << (64 - TAG_SHIFT)) - 1;

/// Two counters (`a`, `b`) over a sliding window made of a ring of time buckets.
///
/// Each bucket is one `AtomicU64`: a 24-bit tag of the bucket's time index and two 20-bit
/// counters. Packing the tag with the counts makes "this bucket is stale, start it over" and
/// "count one more" a single CAS, so no update is ever lost to a concurrent reset. Counters
/// saturate at 2^20 − 1 per bucket (a million events in one tenth of a window). A bucket left
/// untouched for exactly a multiple of 2^24 bucket widths would be mistaken for a live one; with
/// the shortest sensible buckets (100 ms) that is a 19-day coincidence, and it only revives old
/// counts for one bucket.
///
/// The window covers the current bucket and the `n − 1` before it, so its real span slides
/// between `(n − 1)` and `n` bucket widths.
#[derive(Debug)]
pub(crate) struct Window {
    buckets: Box<[AtomicU64]>,
    bucket_ms: u64,
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (word >> TAG_SHIFT, (word >> COUNT_BITS) & COUNT_MAX, word & COUNT_MAX)
}

fn pack(tag: u64, a: u64, b: u64) -> u64 {
    ((tag & TAG_MASK) << TAG_SHIFT) | (a.min(COUNT_MAX) << COUNT_BITS) | b.min(COUNT_MAX)
}

impl Window {
    /// A window of `span` split into `buckets` buckets (each at least 1 ms wide).
    pub(crate) fn new(span: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        let bucket_ms = (span_ms / buckets as u64).max(1);
        Window { buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(), bucket_ms }
    }

    fn slot(&self, index: u64) -> &AtomicU64 {
        // `len` is at least 1 and the remainder is below it, so this never goes out of bounds.
        &self.buckets[(index % self.buckets.len() as u64) as usize]
    }

    /// Counts (a, b) of the live buckets, skipping the current one when `skip_current`.
    fn sum(&self, now_ms: u64, skip_current: bool) -> (u64, u64) {
        let current = now_ms / self.bucket_ms;
        let (mut a, mut b) = (0, 0);
        for back in u64::from(skip_current)..self.buckets.len() as u64 {
            let Some(index) = current.checked_sub(back) else { break };
            let (tag, x, y) = unpack(self.slot(index).load(Ordering::Acquire));
            if tag == index & TAG_MASK {
                a += x;
                b += y;
            }
        }
        (a, b)
    }

    /// Totals of both counters over the window ending at `now_ms`.
    pub(crate) fn totals(&self, now_ms: u64) -> (u64, u64) {
        self.sum(now_ms, false)
    }

    /// Adds to the current bucket.
    pub(crate) fn add(&self, now_ms: u64, a: u64, b: u64) {
        self.add_if(now_ms, a, b, |_, _| true);
    }

    /// Adds to the current bucket only if `allow(total_a, total_b)` holds for the window as it
    /// is just before the add; returns whether it added. The check and the add are one CAS on
    /// the current bucket, so concurrent callers cannot all squeeze past the same last slot.
    pub(crate) fn add_if(&self, now_ms: u64, a: u64, b: u64, allow: impl Fn(u64, u64) -> bool) -> bool {
        let index = now_ms / self.bucket_ms;
        let (past_a, past_b) = self.sum(now_ms, true);
        let slot = self.slot(index);
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let (tag, x, y) = unpack(word);
            let (x, y) = if tag == index & TAG_MASK { (x, y) } else { (0, 0) };
            if !allow(past_a + x, past_b + y) {
                return false;
            }
            let next = pack(index, x.saturating_add(a), y.saturating_add(b));
            match slot.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Forgets everything counted so far.
    pub(crate) fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Release);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Breaker state: one word holding state, generation and the half-open probe counters.

const STATE_SHIFT: u32 = 62;
const GEN_SHIFT: u32 = 32;
const GEN_MASK: u64 = (1 << 30) - 1;
const ADMITTED_SHIFT: u32 = 16;
const PROBE_MASK: u64 = 0xFFFF;

/// Where a breaker stands. The discriminant is the value of the exported gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn from_bits(bits: u64) -> Self {
        match bits {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Decoded state word.
#[derive(Debug, Clone, Copy)]
struct Phase {
    state: BreakerState,
    /// Bumped by every transition; permits carry it so stale results are ignored.
    generation: u64,
    /// Half-open: probe slots taken (a cancelled probe gives its slot back).
    admitted: u64,
    /// Half-open: probes that succeeded.
    succeeded: u64,
}

impl Phase {
    fn decode(word: u64) -> Self {
        Phase {
            state: BreakerState::from_bits(word >> STATE_SHIFT),
            generation: (word >> GEN_SHIFT) & GEN_MASK,
            admitted: (word >> ADMITTED_SHIFT) & PROBE_MASK,
            succeeded: word & PROBE_MASK,
        }
    }

    fn encode(self) -> u64 {
        ((self.state as u64) << STATE_SHIFT)
            | ((self.generation & GEN_MASK) << GEN_SHIFT)
            | ((self.admitted & PROBE_MASK) << ADMITTED_SHIFT)
            | (self.succeeded & PROBE_MASK)
    }
}

/// What a breaker guards, for logs and the `scope` metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerScope {
    /// The whole upstream; labelled `scope="upstream"`.
    Upstream,
    /// One endpoint; labelled with the endpoint's label (`127.0.0.1:3000`, `unix:/run/a.sock`).
    Endpoint(Arc<str>),
}

impl BreakerScope {
    pub fn label(&self) -> &str {
        match self {
            BreakerScope::Upstream => "upstream",
            BreakerScope::Endpoint(label) => label,
        }
    }
}

/// The breaker refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open; retry after {}ms", retry_after.as_millis())]
pub struct BreakerOpen {
    /// Time until the breaker lets probes through (for `Retry-After`, rounded up to seconds).
    pub retry_after: Duration,
}

/// A circuit breaker. Cheap to share: hold it in an `Arc`; permits keep a clone.
#[derive(Debug)]
pub struct Breaker {
    upstream: Arc<str>,
    scope: BreakerScope,
    failure_ratio: f64,
    min_requests: u64,
    open_for_ms: u64,
    probes: u64,
    window: Window,
    phase: AtomicU64,
    /// Pool-clock ms until which an open breaker rejects. Written before the state word.
    open_until: AtomicU64,
    /// Serialises transitions (and their log line and gauge update); never taken otherwise.
    transition: Mutex<()>,
    gauge: metrics::Gauge,
}

impl Breaker {
    /// A closed breaker for `upstream` (or one of its endpoints, per `scope`).
    ///
    /// `failure_ratio` ≥ 1 means "open only when every request in the window failed";
    /// `half_open_probes` is clamped to 1..=65535.
    pub fn new(upstream: impl Into<Arc<str>>, scope: BreakerScope, cfg: &CircuitBreaker) -> Self {
        let upstream = upstream.into();
        let gauge = metrics::gauge!(
            "sumun_upstream_breaker_state",
            "upstream" => upstream.to_string(),
            "scope" => scope.label().to_owned()
        );
        gauge.set(BreakerState::Closed as u8 as f64);
        Breaker {
            upstream,
            scope,
            failure_ratio: cfg.failure_ratio,
            min_requests: u64::from(cfg.min_requests),
            open_for_ms: u64::try_from(cfg.open_for.as_millis()).unwrap_or(u64::MAX),
            probes: u64::from(cfg.half_open_probes).clamp(1, PROBE_MASK),
            window: Window::new(cfg.window, WINDOW_BUCKETS),
            phase: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            transition: Mutex::new(()),
            gauge,
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn scope(&self) -> &BreakerScope {
        &self.scope
    }

    /// The stored state. An open breaker whose time is up reads as open until the next
    /// `try_acquire` half-opens it.
    pub fn state(&self) -> BreakerState {
        Phase::decode(self.phase.load(Ordering::Acquire)).state
    }

    /// Requests and failures counted in the window ending at `now_ms` (closed state only).
    pub fn window_counts(&self, now_ms: u64) -> (u64, u64) {
        self.window.totals(now_ms)
    }

    /// Lets a request through (closed, or as a half-open probe) or rejects it fast.
    pub fn try_acquire(self: &Arc<Self>, now_ms: u64) -> Result<BreakerPermit, BreakerOpen> {
        let mut word = self.phase.load(Ordering::Acquire);
        loop {
            let phase = Phase::decode(word);
            match phase.state {
                BreakerState::Closed => return Ok(self.permit(phase.generation, false)),
                BreakerState::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    if now_ms < until {
                        return Err(BreakerOpen { retry_after: Duration::from_millis(until - now_ms) });
                    }
                    self.change(phase, BreakerState::HalfOpen, now_ms);
                    word = self.phase.load(Ordering::Acquire);
                }
                BreakerState::HalfOpen => {
                    if phase.admitted >= self.probes {
                        return Err(BreakerOpen { retry_after: HALF_OPEN_RETRY_AFTER });
                    }
                    let next = Phase { admitted: phase.admitted + 1, ..phase }.encode();
                    match self.phase.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return Ok(self.permit(phase.generation, true)),
                        Err(actual) => word = actual,
                    }
                }
            }
        }
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool) -> BreakerPermit {
        BreakerPermit { breaker: Arc::clone(self), generation, probe, settled: false }
    }

    fn on_closed_result(&self, generation: u64, failure: bool, now_ms: u64) {
        let phase = Phase::decode(self.phase.load(Ordering::Acquire));
        if phase.state != BreakerState::Closed || phase.generation != generation {
            // Admitted before the breaker last changed state: says nothing about now.
            return;
        }
        self.window.add(now_ms, 1, u64::from(failure));
        if !failure {
            return;
        }
        let (requests, failures) = self.window.totals(now_ms);
        if requests == 0 || requests < self.min_requests {
            return;
        }
        let ratio = failures as f64 / requests as f64;
        let trips = if self.failure_ratio >= 1.0 { failures >= requests } else { ratio > self.failure_ratio };
        if trips {
            self.change(phase, BreakerState::Open, now_ms);
        }
    }

    fn on_probe_result(&self, generation: u64, failure: bool, now_ms: u64) {
        let mut word = self.phase.load(Ordering::Acquire);
        loop {
            let phase = Phase::decode(word);
            if phase.state != BreakerState::HalfOpen || phase.generation != generation {
                return;
            }
            if failure {
                self.change(phase, BreakerState::Open, now_ms);
                return;
            }
            let next = Phase { succeeded: phase.succeeded + 1, ..phase };
            match self.phase.compare_exchange_weak(word, next.encode(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if next.succeeded >= self.probes {
                        self.change(next, BreakerState::Closed, now_ms);
                    }
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// A probe was cancelled: free its slot if its half-open phase is still current.
    fn release_probe(&self, generation: u64) {
        let mut word = self.phase.load(Ordering::Acquire);
        loop {
            let phase = Phase::decode(word);
            if phase.state != BreakerState::HalfOpen || phase.generation != generation || phase.admitted == 0
            {
                return;
            }
            let next = Phase { admitted: phase.admitted - 1, ..phase }.encode();
            match self.phase.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Moves from `from` (state and generation as the caller saw them) to `to`. Exactly one
    /// caller wins a given transition; the others find the generation moved on and do nothing.
    fn change(&self, from: Phase, to: BreakerState, now_ms: u64) -> bool {
        let _guard = self.transition.lock().unwrap_or_else(PoisonError::into_inner);
        let mut word = self.phase.load(Ordering::Acquire);
        loop {
            let current = Phase::decode(word);
            if current.state != from.state || current.generation != from.generation {
                return false;
            }
            // Side data first, so whoever sees the new state also sees it.
            match to {
                BreakerState::Open => {
                    self.open_until.store(now_ms.saturating_add(self.open_for_ms), Ordering::Release)
                }
                BreakerState::Closed => self.window.reset(),
                BreakerState::HalfOpen => {}
            }
            let next = Phase {
                state: to,
                generation: (current.generation + 1) & GEN_MASK,
                admitted: 0,
                succeeded: 0,
            };
            match self.phase.compare_exchange(word, next.encode(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                // Only probe counters can have moved under the lock; check again.
                Err(actual) => word = actual,
            }
        }
        self.gauge.set(to as u8 as f64);
        let (upstream, scope) = (&*self.upstream, self.scope.label());
        match to {
            BreakerState::Open => tracing::warn!(
                upstream,
                scope,
                from = from.state.as_str(),
                open_for_ms = self.open_for_ms,
                "circuit breaker opened"
            ),
            BreakerState::HalfOpen => tracing::info!(
                upstream,
                scope,
                probes = self.probes,
                "circuit breaker half-open: letting probes through"
            ),
            BreakerState::Closed => tracing::info!(upstream, scope, "circuit breaker closed"),
        }
        true
    }
}

/// Leave to send one request through a breaker. Report how it went with
/// [`record`](Self::record); dropping it unrecorded means "cancelled" (see the module docs).
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl BreakerPermit {
    /// True when this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the outcome of the request at `now_ms` (pool clock).
    pub fn record(mut self, outcome: Outcome, now_ms: u64) {
        self.settled = true;
        let failure = outcome.is_failure();
        if self.probe {
            self.breaker.on_probe_result(self.generation, failure, now_ms);
        } else {
            self.breaker.on_closed_result(self.generation, failure, now_ms);
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CircuitBreaker {
        CircuitBreaker {
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(30),
            half_open_probes: 2,
            per_endpoint: false,
        }
    }

    fn breaker(cfg: &CircuitBreaker) -> Arc<Breaker> {
        Arc::new(Breaker::new("api", BreakerScope::Upstream, cfg))
    }

    fn run(b: &Arc<Breaker>, now: u64, outcome: Outcome) -> Result<(), BreakerOpen> {
        b.try_acquire(now).map(|p| p.record(outcome, now))
    }

    /// Opens `b` at `now` with `min_requests` failures.
    fn trip(b: &Arc<Breaker>, now: u64) {
        for _ in 0..10 {
            let _ = run(b, now, Outcome::ConnectFailure);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn window_slides_and_packs() {
        let w = Window::new(Duration::from_secs(10), 10);
        w.add(0, 1, 1);
        w.add(500, 2, 0);
        w.add(5_000, 1, 0);
        assert_eq!(w.totals(5_000), (4, 1));
        // 10_000 is the 11th bucket: bucket 0 has left the window.
        assert_eq!(w.totals(10_000), (1, 0));
        assert_eq!(w.totals(15_000), (0, 0));
        // The slot bucket 0 used is reused for bucket 10 without counting the old values.
        w.add(10_000, 1, 1);
        assert_eq!(w.totals(10_000), (2, 1));
        assert!(!w.add_if(10_000, 0, 1, |_, b| b < 1));
        assert!(w.add_if(10_000, 0, 1, |_, b| b < 2));
        w.reset();
        assert_eq!(w.totals(10_000), (0, 0));
        // Saturates instead of overflowing into the tag.
        w.add(20_000, COUNT_MAX + 5, 3);
        assert_eq!(w.totals(20_000), (COUNT_MAX, 3));
    }

    #[test]
    fn opens_on_ratio_with_min_requests() {
        let b = breaker(&cfg());
        // 5 successes and 5 failures: ratio 0.5 does not exceed 0.5.
        for i in 0..10 {
            let outcome = if i % 2 == 0 { Outcome::Success } else { Outcome::Status5xx(502) };
            run(&b, 1_000, outcome).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.window_counts(1_000), (10, 5));
        run(&b, 1_000, Outcome::Timeout).unwrap();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(run(&b, 1_001, Outcome::Success).is_err());
    }

    #[test]
    fn stays_closed_below_min_requests() {
        let b = breaker(&cfg());
        for _ in 0..9 {
            run(&b, 1_000, Outcome::Reset).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // Old failures leave the window: nine more later still do not make ten.
        for _ in 0..9 {
            run(&b, 12_000, Outcome::Reset).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.window_counts(12_000), (9, 9));
    }

    #[test]
    fn rejects_while_open_with_retry_after() {
        let b = breaker(&cfg());
        trip(&b, 1_000);
        let err = b.try_acquire(1_000).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(30));
        let err = b.try_acquire(21_000).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(10));
        let err = b.try_acquire(30_999).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_millis(1));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_opens_after_open_for_and_closes_after_probes() {
        let b = breaker(&cfg());
        trip(&b, 1_000);
        let p1 = b.try_acquire(31_000).unwrap();
        assert!(p1.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_acquire(31_000).unwrap();
        p1.record(Outcome::Success, 31_100);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p2.record(Outcome::Success, 31_200);
        assert_eq!(b.state(), BreakerState::Closed);
        // The window starts over: the failures that opened it are forgotten.
        assert_eq!(b.window_counts(31_200), (0, 0));
        let p = b.try_acquire(31_300).unwrap();
        assert!(!p.is_probe());
    }

    #[test]
    fn probe_failure_reopens() {
        let b = breaker(&cfg());
        trip(&b, 1_000);
        let p1 = b.try_acquire(31_000).unwrap();
        let p2 = b.try_acquire(31_000).unwrap();
        p1.record(Outcome::Success, 31_010);
        p2.record(Outcome::Status5xx(503), 31_020);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.try_acquire(31_020).unwrap_err().retry_after, Duration::from_secs(30));
        // And it half-opens again after another open_for.
        assert!(b.try_acquire(61_020).unwrap().is_probe());
    }

    #[test]
    fn limits_concurrent_probes_and_cancelled_probe_frees_its_slot() {
        let b = breaker(&cfg());
        trip(&b, 1_000);
        let p1 = b.try_acquire(31_000).unwrap();
        let p2 = b.try_acquire(31_000).unwrap();
        let err = b.try_acquire(31_000).unwrap_err();
        assert_eq!(err.retry_after, HALF_OPEN_RETRY_AFTER);
        // A cancelled probe is neither success nor failure, and lets another probe in.
        drop(p1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p3 = b.try_acquire(31_050).unwrap();
        assert!(b.try_acquire(31_050).is_err());
        p2.record(Outcome::Success, 31_100);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p3.record(Outcome::Success, 31_200);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn concurrent_callers_get_at_most_the_probe_count() {
        let b = breaker(&CircuitBreaker { half_open_probes: 3, ..cfg() });
        trip(&b, 1_000);
        let admitted: Vec<BreakerPermit> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..100).filter_map(|_| b.try_acquire(31_000).ok()).collect::<Vec<_>>()))
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(admitted.len(), 3);
        assert!(admitted.iter().all(BreakerPermit::is_probe));
        for permit in admitted {
            permit.record(Outcome::Success, 31_500);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn stale_results_do_not_count() {
        let b = breaker(&cfg());
        let early = b.try_acquire(500).unwrap();
        trip(&b, 1_000);
        let p1 = b.try_acquire(31_000).unwrap();
        let p2 = b.try_acquire(31_000).unwrap();
        // A request admitted while closed finishes during half-open: not a probe result.
        early.record(Outcome::Status5xx(500), 31_001);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p1.record(Outcome::Reset, 31_002);
        assert_eq!(b.state(), BreakerState::Open);
        // The other probe of that phase reports after the breaker re-opened: ignored.
        p2.record(Outcome::Success, 31_003);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire(31_004).is_err());
    }

    #[test]
    fn cancelled_closed_request_counts_as_nothing() {
        let b = breaker(&cfg());
        for _ in 0..20 {
            drop(b.try_acquire(1_000).unwrap());
        }
        assert_eq!(b.window_counts(1_000), (0, 0));
    }

    #[test]
    fn ratio_of_one_opens_only_when_all_fail() {
        let b = breaker(&CircuitBreaker { failure_ratio: 1.0, ..cfg() });
        run(&b, 0, Outcome::Success).unwrap();
        for _ in 0..20 {
            run(&b, 0, Outcome::Reset).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let b = breaker(&CircuitBreaker { failure_ratio: 1.0, ..cfg() });
        trip(&b, 0);
    }

    #[test]
    fn concurrent_failures_transition_once() {
        let b = breaker(&CircuitBreaker { min_requests: 100, ..cfg() });
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let _ = run(&b, 1_000, Outcome::Reset);
                    }
                });
            }
        });
        assert_eq!(b.state(), BreakerState::Open);
        // Exactly one transition happened: Closed(0) → Open(1).
        assert_eq!(Phase::decode(b.phase.load(Ordering::Acquire)).generation, 1);
    }
}
