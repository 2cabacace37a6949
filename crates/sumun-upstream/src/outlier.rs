//! Passive outlier ejection: the results of real requests (connect failures, resets,
//! timeouts, 5xx) take an endpoint out of rotation for a while, without active checks.
//!
//! How it counts (per endpoint, in the atomics of [`EndpointState`]):
//! - `ConnectFailure`, `Reset`, `Timeout` add one to `consecutive_failures`;
//! - `Status5xx` adds one to both `consecutive_5xx` and `consecutive_failures` (a 5xx is a
//!   failure too, so `consecutive_failures` alone covers "any failure");
//! - a non-5xx failure leaves `consecutive_5xx` as it is: that counter means "5xx answers
//!   without a success in between";
//! - `Success` resets both.
//!
//! A threshold of 0 disables that kind. Reaching a threshold ejects the endpoint for
//! `base_ejection × times ejected` (Envoy's rule), capped at `max(max_ejection, base_ejection)`,
//! and resets both counters. Outcomes of tries that end while the endpoint is already ejected
//! (requests in flight when it was ejected, or panic-mode routing) do not count toward the next
//! ejection; a success still resets the counters.
//!
//! `max_ejected_percent` is never exceeded: an ejection happens only if the endpoints ejected
//! at that moment plus this one stay within the share of the pool. So a one-endpoint pool is
//! ejected only with `max_ejected_percent = 100`, and `0` means nothing is ever ejected. A
//! refused ejection is counted (`sumun_upstream_ejections_overflow_total{upstream}`) and the
//! counters keep running, so the next failure ejects once room is made.
//!
//! Decay: after an ejection ends, each full `base_ejection` without a new ejection lowers the
//! endpoint's ejection count by one, so an endpoint that failed once long ago starts again from
//! `base_ejection`.
//!
//! Un-ejection is time-based ([`EndpointState::is_ejected`] compares with the deadline), so
//! balancers see it at once. What is lazy is only its report (log line, the
//! `sumun_upstream_endpoint_ejected` gauge back to 0) and the decay: both happen in
//! [`OutlierDetector::sweep`], which [`OutlierDetector::record`] runs when something is due
//! (one atomic load otherwise). A pool with no traffic can call `sweep` from a timer; the
//! gauge of an endpoint appears at its first ejection.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sumun_config::OutlierDetection;

use crate::endpoint::{EndpointState, Outcome};

/// Passive outlier detection for one upstream pool.
pub struct OutlierDetector {
    upstream: Arc<str>,
    cfg: OutlierDetection,
    /// Earliest pool-clock time at which `sweep` has work; `u64::MAX` when none.
    next_due: AtomicU64,
    /// Endpoints ejected now or whose ejection count still has to decay. Only touched on
    /// ejection and in `sweep`, never on an ordinary `record`.
    tracked: Mutex<Vec<Tracked>>,
}

struct Tracked {
    ep: Arc<EndpointState>,
    /// The ejection deadline, while the ejection is still reported as on.
    ejected_until: Option<u64>,
    /// When the ejection count is next lowered (meaningful once the ejection ended).
    decay_at: u64,
    gauge: metrics::Gauge,
}

impl Tracked {
    fn due(&self) -> u64 {
        self.ejected_until.unwrap_or(self.decay_at)
    }
}

impl OutlierDetector {
    pub fn new(upstream: &str, cfg: OutlierDetection) -> Self {
        OutlierDetector {
            upstream: Arc::from(upstream),
            cfg,
            next_due: AtomicU64::new(u64::MAX),
            tracked: Mutex::new(Vec::new()),
        }
    }

    /// Records the outcome of one try against `ep`, a member of `all` (the whole pool), and
    /// ejects it when a threshold is reached. `now_ms` is on the pool clock.
    pub fn record(&self, ep: &EndpointState, outcome: Outcome, all: &[Arc<EndpointState>], now_ms: u64) {
        if now_ms >= self.next_due.load(Ordering::Relaxed) {
            self.sweep(now_ms);
        }
        let failure_kind = match outcome {
            Outcome::Success => {
                reset(&ep.consecutive_failures);
                reset(&ep.consecutive_5xx);
                return;
            }
            _ if ep.is_ejected(now_ms) => return,
            Outcome::Status5xx(status) => {
                let n = bump(&ep.consecutive_5xx, self.cfg.consecutive_5xx);
                if n.is_some_and(|n| n >= self.cfg.consecutive_5xx) {
                    // Keep the failure count in step even though the 5xx threshold ejects.
                    bump(&ep.consecutive_failures, self.cfg.consecutive_failures);
                    let reason = format!("{} consecutive 5xx (last {status})", self.cfg.consecutive_5xx);
                    self.try_eject(ep, all, now_ms, &reason);
                    return;
                }
                "5xx"
            }
            Outcome::ConnectFailure => "connect failure",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
        };
        let n = bump(&ep.consecutive_failures, self.cfg.consecutive_failures);
        if n.is_some_and(|n| n >= self.cfg.consecutive_failures) {
            let reason =
                format!("{} consecutive failures (last: {failure_kind})", self.cfg.consecutive_failures);
            self.try_eject(ep, all, now_ms, &reason);
        }
    }

    /// Reports ejections that ended by `now_ms` (log line, gauge to 0) and applies decay.
    /// Cheap when nothing is due; `record` calls it by itself.
    pub fn sweep(&self, now_ms: u64) {
        let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        let base = self.base_ms();
        tracked.retain_mut(|t| {
            if let Some(until) = t.ejected_until {
                if now_ms < until {
                    return true;
                }
                t.ejected_until = None;
                t.decay_at = until.saturating_add(base);
                t.gauge.set(0.0);
                tracing::info!(
                    upstream = %self.upstream,
                    endpoint = %t.ep.label,
                    "outlier ejection ended; endpoint back in rotation (slow start applies)"
                );
            }
            if now_ms < t.decay_at {
                return true;
            }
            let steps = (now_ms - t.decay_at) / base + 1;
            let steps = u32::try_from(steps).unwrap_or(u32::MAX);
            let before =
                t.ep.ejections
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(steps)))
                    .unwrap_or_else(|n| n);
            t.decay_at = t.decay_at.saturating_add(u64::from(steps).saturating_mul(base));
            before > steps
        });
        self.next_due.store(tracked.iter().map(Tracked::due).min().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn base_ms(&self) -> u64 {
        millis(self.cfg.base_ejection).max(1)
    }

    fn try_eject(&self, ep: &EndpointState, all: &[Arc<EndpointState>], now_ms: u64, reason: &str) {
        // Under the lock so two endpoints ejected at once cannot both pass the percentage check.
        let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        if ep.is_ejected(now_ms) {
            return;
        }
        let Some(shared) = all.iter().find(|a| std::ptr::eq(a.as_ref(), ep)) else {
            tracing::warn!(upstream = %self.upstream, endpoint = %ep.label, "outlier detection saw an endpoint outside its pool; not ejected");
            return;
        };
        let ejected = all.iter().filter(|a| a.is_ejected(now_ms)).count();
        let allowed = usize::from(self.cfg.max_ejected_percent.min(100)) * all.len();
        if (ejected + 1) * 100 > allowed {
            metrics::counter!("sumun_upstream_ejections_overflow_total", "upstream" => self.upstream.clone())
                .increment(1);
            tracing::debug!(
                upstream = %self.upstream,
                endpoint = %ep.label,
                reason,
                ejected,
                max_ejected_percent = self.cfg.max_ejected_percent,
                "outlier not ejected: too much of the pool is ejected already"
            );
            return;
        }

        let times = ep
            .ejections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(1)))
            .unwrap_or_else(|n| n)
            .saturating_add(1);
        let duration = self
            .cfg
            .base_ejection
            .saturating_mul(times)
            .min(self.cfg.max_ejection.max(self.cfg.base_ejection));
        let until = now_ms.saturating_add(millis(duration).max(1));
        ep.eject(until);
        ep.consecutive_failures.store(0, Ordering::Relaxed);
        ep.consecutive_5xx.store(0, Ordering::Relaxed);

        let upstream = self.upstream.clone();
        let endpoint = ep.label.clone();
        metrics::counter!("sumun_upstream_ejections_total", "upstream" => upstream.clone(), "endpoint" => endpoint.clone())
            .increment(1);
        tracing::warn!(
            upstream = %upstream,
            endpoint = %endpoint,
            reason,
            ejection = times,
            duration_ms = millis(duration),
            "outlier ejected"
        );
        match tracked.iter_mut().find(|t| Arc::ptr_eq(&t.ep, shared)) {
            Some(t) => {
                t.ejected_until = Some(until);
                t.gauge.set(1.0);
            }
            None => {
                let gauge = metrics::gauge!("sumun_upstream_endpoint_ejected", "upstream" => upstream, "endpoint" => endpoint);
                gauge.set(1.0);
                tracked.push(Tracked {
                    ep: shared.clone(),
                    ejected_until: Some(until),
                    decay_at: u64::MAX,
                    gauge,
                });
            }
        }
        self.next_due.store(tracked.iter().map(Tracked::due).min().unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Adds one when the kind is enabled (`threshold > 0`); returns the new count.
fn bump(counter: &AtomicU32, threshold: u32) -> Option<u32> {
    (threshold > 0).then(|| counter.fetch_add(1, Ordering::Relaxed).saturating_add(1))
}

/// Zeroes the counter without dirtying its cache line when it is zero already (the common case).
fn reset(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A recorder that keeps every counter and gauge in memory, for tests of this crate.
#[cfg(test)]
pub(crate) mod test_recorder {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    #[derive(Default)]
    pub(crate) struct TestRecorder {
        values: Mutex<HashMap<String, Arc<AtomicU64>>>,
    }

    impl TestRecorder {
        fn slot(&self, key: &Key) -> Arc<AtomicU64> {
            let mut labels: Vec<String> =
                key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            self.values.lock().unwrap_or_else(PoisonError::into_inner).entry(name).or_default().clone()
        }

        /// `name{k=v,...}` with labels sorted by key; None when never registered.
        pub(crate) fn counter(&self, name: &str) -> Option<u64> {
            let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
            values.get(name).map(|v| v.load(Ordering::Relaxed))
        }

        pub(crate) fn gauge(&self, name: &str) -> Option<f64> {
            self.counter(name).map(f64::from_bits)
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.slot(key))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.slot(key))
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_recorder::TestRecorder;
    use super::*;
    use sumun_config::EndpointAddr;

    const BASE: u64 = 1_000;

    fn cfg(failures: u32, fivexx: u32, max_pct: u8) -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: failures,
            consecutive_5xx: fivexx,
            base_ejection: Duration::from_millis(BASE),
            max_ejection: Duration::from_millis(3 * BASE),
            max_ejected_percent: max_pct,
        }
    }

    fn pool(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| {
                let port = 3000 + u16::try_from(i).unwrap_or(0);
                Arc::new(EndpointState::new(i, EndpointAddr::Tcp { host: "127.0.0.1".into(), port }, 1))
            })
            .collect()
    }

    fn fail(
        d: &OutlierDetector,
        all: &[Arc<EndpointState>],
        i: usize,
        times: u32,
        outcome: Outcome,
        now: u64,
    ) {
        for _ in 0..times {
            d.record(&all[i], outcome, all, now);
        }
    }

    #[test]
    fn ejects_at_the_threshold_and_not_before() {
        let all = pool(4);
        let d = OutlierDetector::new("api", cfg(3, 0, 100));
        fail(&d, &all, 0, 2, Outcome::ConnectFailure, 10);
        assert!(!all[0].is_ejected(10));
        assert_eq!(all[0].consecutive_failures.load(Ordering::Relaxed), 2);
        d.record(&all[0], Outcome::Timeout, &all, 10);
        assert!(all[0].is_ejected(10));
        assert_eq!(all[0].ejected_until(), 10 + BASE);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 1);
        assert_eq!(all[0].consecutive_failures.load(Ordering::Relaxed), 0, "counters reset on ejection");
        assert!(all[0].is_ejected(10 + BASE - 1));
        assert!(!all[0].is_ejected(10 + BASE));
        assert!(!all[1].is_ejected(10));
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let all = pool(2);
        let d = OutlierDetector::new("api", cfg(1, 0, 100));
        let mut now = 100;
        let mut durations = Vec::new();
        for _ in 0..5 {
            d.record(&all[0], Outcome::Reset, &all, now);
            let until = all[0].ejected_until();
            durations.push(until - now);
            // Fail again right when it comes back: no decay has happened in between.
            now = until;
        }
        assert_eq!(durations, vec![BASE, 2 * BASE, 3 * BASE, 3 * BASE, 3 * BASE]);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn max_ejected_percent_is_never_exceeded() {
        let all = pool(4);
        let d = OutlierDetector::new("api", cfg(1, 0, 50));
        d.record(&all[0], Outcome::ConnectFailure, &all, 10);
        d.record(&all[1], Outcome::ConnectFailure, &all, 20);
        d.record(&all[2], Outcome::ConnectFailure, &all, 30);
        assert!(all[0].is_ejected(30) && all[1].is_ejected(30));
        assert!(!all[2].is_ejected(30), "a third ejection would be 75% > 50%");
        assert_eq!(all[2].consecutive_failures.load(Ordering::Relaxed), 1, "the count keeps running");
        // Once the first ejection ends there is room again; the next failure ejects.
        let later = 10 + BASE;
        d.record(&all[2], Outcome::ConnectFailure, &all, later);
        assert!(all[2].is_ejected(later));
        assert!(!all[0].is_ejected(later));
        assert_eq!(all.iter().filter(|e| e.is_ejected(later)).count(), 2);
    }

    #[test]
    fn single_endpoint_pool_is_ejected_only_at_100_percent() {
        let all = pool(1);
        let d = OutlierDetector::new("api", cfg(1, 0, 99));
        fail(&d, &all, 0, 10, Outcome::ConnectFailure, 10);
        assert!(!all[0].is_ejected(10));
        let d = OutlierDetector::new("api", cfg(1, 0, 100));
        d.record(&all[0], Outcome::ConnectFailure, &all, 10);
        assert!(all[0].is_ejected(10));
        let all = pool(3);
        let d = OutlierDetector::new("api", cfg(1, 0, 0));
        fail(&d, &all, 0, 10, Outcome::ConnectFailure, 10);
        assert!(!all[0].is_ejected(10), "0% ejects nothing");
    }

    #[test]
    fn success_resets_both_counters() {
        let all = pool(2);
        let d = OutlierDetector::new("api", cfg(3, 3, 100));
        fail(&d, &all, 0, 2, Outcome::Status5xx(502), 10);
        assert_eq!(all[0].consecutive_5xx.load(Ordering::Relaxed), 2);
        assert_eq!(all[0].consecutive_failures.load(Ordering::Relaxed), 2);
        d.record(&all[0], Outcome::Success, &all, 10);
        assert_eq!(all[0].consecutive_5xx.load(Ordering::Relaxed), 0);
        assert_eq!(all[0].consecutive_failures.load(Ordering::Relaxed), 0);
        fail(&d, &all, 0, 2, Outcome::Status5xx(502), 10);
        d.record(&all[0], Outcome::Success, &all, 10);
        fail(&d, &all, 0, 2, Outcome::Timeout, 10);
        d.record(&all[0], Outcome::Success, &all, 10);
        fail(&d, &all, 0, 2, Outcome::ConnectFailure, 10);
        assert!(!all[0].is_ejected(10), "never three in a row");
        d.record(&all[0], Outcome::Reset, &all, 10);
        assert!(all[0].is_ejected(10));
    }

    #[test]
    fn disabled_thresholds_never_eject() {
        let all = pool(2);
        let d = OutlierDetector::new("api", cfg(0, 0, 100));
        fail(&d, &all, 0, 50, Outcome::ConnectFailure, 10);
        fail(&d, &all, 0, 50, Outcome::Status5xx(500), 10);
        assert!(!all[0].is_ejected(10));
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 0);

        // Only the 5xx kind enabled: connect failures don't eject, 5xx do.
        let d = OutlierDetector::new("api", cfg(0, 3, 100));
        fail(&d, &all, 1, 50, Outcome::ConnectFailure, 10);
        assert!(!all[1].is_ejected(10));
        fail(&d, &all, 1, 3, Outcome::Status5xx(503), 10);
        assert!(all[1].is_ejected(10));
    }

    #[test]
    fn a_5xx_counts_as_a_failure_and_other_failures_do_not_break_a_5xx_run() {
        let all = pool(2);
        let d = OutlierDetector::new("api", cfg(3, 0, 100));
        fail(&d, &all, 0, 3, Outcome::Status5xx(500), 10);
        assert!(all[0].is_ejected(10), "three 5xx are three consecutive failures");

        let d = OutlierDetector::new("api", cfg(0, 3, 100));
        d.record(&all[1], Outcome::Status5xx(503), &all, 10);
        d.record(&all[1], Outcome::Timeout, &all, 10);
        d.record(&all[1], Outcome::Status5xx(503), &all, 10);
        assert!(!all[1].is_ejected(10));
        d.record(&all[1], Outcome::Status5xx(503), &all, 10);
        assert!(all[1].is_ejected(10));
    }

    #[test]
    fn failures_while_ejected_do_not_count() {
        let all = pool(2);
        let d = OutlierDetector::new("api", cfg(2, 0, 100));
        fail(&d, &all, 0, 2, Outcome::ConnectFailure, 10);
        let until = all[0].ejected_until();
        fail(&d, &all, 0, 5, Outcome::ConnectFailure, 20);
        assert_eq!(all[0].ejected_until(), until, "not extended");
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 1);
        d.record(&all[0], Outcome::ConnectFailure, &all, until);
        assert!(!all[0].is_ejected(until), "one failure after return is below the threshold");
    }

    #[test]
    fn ejection_count_decays_after_clean_intervals() {
        let all = pool(2);
        let d = OutlierDetector::new("api", cfg(1, 0, 100));
        d.record(&all[0], Outcome::Reset, &all, 0);
        d.record(&all[0], Outcome::Reset, &all, BASE);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 2);
        let back = all[0].ejected_until();
        assert_eq!(back, 3 * BASE);
        // One clean base interval after the return lowers the count by one.
        d.sweep(back + BASE - 1);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 2);
        d.sweep(back + BASE);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 1);
        d.record(&all[0], Outcome::Reset, &all, back + BASE + 10);
        assert_eq!(all[0].ejected_until() - (back + BASE + 10), 2 * BASE, "1 left + this one");

        // A long quiet time decays it all the way, in one lazy sweep.
        let back = all[0].ejected_until();
        d.record(&all[0], Outcome::Success, &all, back + 10 * BASE);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 0);
        assert!(d.tracked.lock().map(|t| t.is_empty()).unwrap_or(false));
        assert_eq!(d.next_due.load(Ordering::Relaxed), u64::MAX);
        d.record(&all[0], Outcome::Reset, &all, back + 11 * BASE);
        assert_eq!(all[0].ejected_until() - (back + 11 * BASE), BASE);
    }

    #[test]
    fn ejections_are_counted_and_the_gauge_follows_lazily() {
        let rec = TestRecorder::default();
        let all = pool(2);
        metrics::with_local_recorder(&rec, || {
            let d = OutlierDetector::new("api", cfg(1, 0, 50));
            d.record(&all[0], Outcome::ConnectFailure, &all, 10);
            assert_eq!(
                rec.counter("sumun_upstream_ejections_total{endpoint=127.0.0.1:3000,upstream=api}"),
                Some(1)
            );
            assert_eq!(
                rec.gauge("sumun_upstream_endpoint_ejected{endpoint=127.0.0.1:3000,upstream=api}"),
                Some(1.0)
            );
            d.record(&all[1], Outcome::ConnectFailure, &all, 20);
            assert_eq!(rec.counter("sumun_upstream_ejections_overflow_total{upstream=api}"), Some(1));
            assert_eq!(
                rec.counter("sumun_upstream_ejections_total{endpoint=127.0.0.1:3001,upstream=api}"),
                None
            );
            // The ejection ends at 10 + BASE; the next record reports it.
            d.record(&all[1], Outcome::Success, &all, 10 + BASE);
            assert_eq!(
                rec.gauge("sumun_upstream_endpoint_ejected{endpoint=127.0.0.1:3000,upstream=api}"),
                Some(0.0)
            );
        });
    }
}
