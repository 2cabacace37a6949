//! The live state of one endpoint, shared by the balancer (every pick), active health checks,
//! passive outlier detection, slow start and the breaker. Plain atomics: a pick reads a few of
//! them and never locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sumun_config::{EndpointAddr, SlowStart};

/// Milliseconds on the pool's clock. Cheaper to store and compare than `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { epoch: Instant::now() }
    }

    /// Never 0, so 0 can mean "unset" in the atomics below.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(1))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What one try against an endpoint came to, as seen by outlier detection and breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived (any status below 500, or 5xx counted separately below).
    Success,
    /// A 5xx response head arrived.
    Status5xx(u16),
    ConnectFailure,
    /// The connection broke after the request may have been sent.
    Reset,
    Timeout,
}

impl Outcome {
    /// A failure for breakers: anything but a non-5xx response.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Success)
    }
}

pub struct EndpointState {
    pub index: usize,
    pub address: EndpointAddr,
    /// `127.0.0.1:3000` or `unix:/run/api.sock`, for logs and metrics.
    pub label: Arc<str>,
    /// Configured weight (≥ 1).
    pub weight: u32,
    in_flight: AtomicU32,
    /// Active health: true when no checks are configured.
    healthy: AtomicBool,
    /// Outlier ejection deadline on the pool clock; 0 = not ejected.
    ejected_until: AtomicU64,
    /// How many times outlier detection ejected it (grows the next ejection).
    pub ejections: AtomicU32,
    /// Consecutive failures / 5xx seen by outlier detection.
    pub consecutive_failures: AtomicU32,
    pub consecutive_5xx: AtomicU32,
    /// When it (re)joined the rotation, for slow start; 0 = warm (no ramp).
    available_since: AtomicU64,
}

impl EndpointState {
    pub fn new(index: usize, address: EndpointAddr, weight: u32) -> Self {
        EndpointState {
            index,
            label: Arc::from(address.to_string()),
            address,
            weight: weight.max(1),
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            available_since: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets active health; returns true when it changed. A recovery starts slow start.
    pub fn set_healthy(&self, healthy: bool, now_ms: u64) -> bool {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            self.available_since.store(now_ms, Ordering::Relaxed);
        }
        was != healthy
    }

    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// Ejects until `until_ms`; slow start begins when the ejection ends.
    pub fn eject(&self, until_ms: u64) {
        self.ejected_until.store(until_ms, Ordering::Relaxed);
        self.available_since.store(until_ms, Ordering::Relaxed);
    }

    /// Ends an ejection early (not used by time-based expiry, which is implicit).
    pub fn uneject(&self, now_ms: u64) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.available_since.store(now_ms, Ordering::Relaxed);
    }

    /// Healthy and not ejected.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now_ms)
    }

    /// Marks it as newly added (a reload added it): slow start applies from now.
    pub fn mark_new(&self, now_ms: u64) {
        self.available_since.store(now_ms, Ordering::Relaxed);
    }

    /// Weight after slow start: ramps from `min_weight × weight` to `weight` over the window.
    pub fn effective_weight(&self, now_ms: u64, slow_start: Option<&SlowStart>) -> f64 {
        let full = f64::from(self.weight);
        let Some(ss) = slow_start else { return full };
        let since = self.available_since.load(Ordering::Relaxed);
        if since == 0 || now_ms < since {
            return if since == 0 { full } else { full * ss.min_weight };
        }
        let window = ss.window.as_millis() as f64;
        let elapsed = (now_ms - since) as f64;
        if window <= 0.0 || elapsed >= window {
            return full;
        }
        let t = (elapsed / window).powf(1.0 / ss.aggression.max(0.01));
        full * t.max(ss.min_weight)
    }
}

/// Decrements the endpoint's in-flight count when dropped.
pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> EndpointState {
        EndpointState::new(0, EndpointAddr::Tcp { host: "127.0.0.1".into(), port: 1 }, 10)
    }

    #[test]
    fn slow_start_ramps_linearly() {
        let e = ep();
        let ss = SlowStart { window: Duration::from_millis(1000), aggression: 1.0, min_weight: 0.1 };
        assert_eq!(e.effective_weight(5, Some(&ss)), 10.0);
        e.mark_new(1000);
        assert!((e.effective_weight(1000, Some(&ss)) - 1.0).abs() < 1e-9);
        assert!((e.effective_weight(1500, Some(&ss)) - 5.0).abs() < 1e-9);
        assert_eq!(e.effective_weight(2000, Some(&ss)), 10.0);
    }

    #[test]
    fn ejection_and_health() {
        let e = Arc::new(ep());
        assert!(e.is_available(10));
        e.eject(100);
        assert!(!e.is_available(50));
        assert!(e.is_available(100));
        assert!(e.set_healthy(false, 5));
        assert!(!e.is_available(200));
        let g = e.begin();
        assert_eq!(e.in_flight(), 1);
        drop(g);
        assert_eq!(e.in_flight(), 0);
    }
}
