//! `balance = "round_robin"` (the default): smooth weighted round robin, the nginx sequence.
//! Choose it when endpoints are alike and requests cost about the same: the shares are exact
//! over every cycle, with no bursts. The schedule is precomputed when the config is
//! compiled, so a pick is one atomic increment and an index — no lock on the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickCtx, weighted_scan};
use crate::endpoint::EndpointState;

/// Smooth weighted round robin (the nginx sequence): weights 5,1,1 give a a b a c a a, not
/// a a a a a b c, so no endpoint gets a burst.
///
/// Unavailable endpoints' slots, and the slots a ramping endpoint declines, are skipped by
/// probing forward; the skipped slots are consumed from the shared cursor, so the remaining
/// endpoints keep their proportions instead of the next one in the schedule inheriting the
/// whole share.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// Slots probed before falling back to a weighted scan of the whole pool.
const MAX_PROBES: usize = 64;

impl RoundRobin {
    /// One weight per endpoint, in endpoint order (0 counts as 1).
    pub fn new(weights: &[u32]) -> Self {
        let weights = reduce(weights);
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        // Start each pool at a different point so that several gateways, or pools rebuilt
        // by one reload, don't hit the same endpoint in lock step.
        let start = if schedule.is_empty() { 0 } else { fastrand::usize(..schedule.len()) };
        RoundRobin { schedule, next: AtomicUsize::new(start) }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let mut slot = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let probes = len.min(MAX_PROBES);
        for k in 0..probes {
            let i = self.schedule[slot] as usize;
            if let Some(ep) = endpoints.get(i)
                && ctx.eligible(ep)
                && (ctx.slow_start.is_none() || accepts(ctx.ramp(ep)))
            {
                if k > 0 {
                    self.next.fetch_add(k, Ordering::Relaxed);
                }
                return Some(i);
            }
            slot += 1;
            if slot == len {
                slot = 0;
            }
        }
        self.next.fetch_add(probes - 1, Ordering::Relaxed);
        // Most of the pool is down (or ramping): a weighted scan still honours the weights.
        weighted_scan(endpoints, ctx)
    }
}

/// A ramping endpoint takes a slot with probability `ramp`.
#[inline]
fn accepts(ramp: f64) -> bool {
    ramp >= 1.0 || fastrand::f64() < ramp
}

/// Divides by the gcd and scales huge sums down to at most `MAX_SCHEDULE` slots (each
/// endpoint keeps at least one).
fn reduce(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|&w| w > 0).fold(0u32, gcd).max(1);
    let mut w: Vec<u32> = weights.iter().map(|&w| (w / g).max(1)).collect();
    let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = ((u64::from(*x) * MAX_SCHEDULE / total) as u32).max(1);
        }
    }
    w
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn from_start(weights: &[u32]) -> RoundRobin {
        let rr = RoundRobin::new(weights);
        rr.next.store(0, Ordering::Relaxed);
        rr
    }

    #[test]
    fn smooth_sequence() {
        let rr = from_start(&[5, 1, 1]);
        let eps = endpoints(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| rr.pick(&eps, &ctx(None, &[])).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_exact_over_100k_picks() {
        let weights = [1, 2, 3, 4];
        let eps = endpoints(&weights);
        let c = counts(&RoundRobin::new(&weights), &eps, 100_000, false);
        assert_eq!(c, vec![10_000, 20_000, 30_000, 40_000]);
    }

    #[test]
    fn unavailable_slots_are_shared_by_weight_not_inherited() {
        // Schedule for 1,1,1 is a b c: a down must not give b (the next slot) two thirds.
        let eps = endpoints(&[1, 1, 1]);
        eps[0].set_healthy(false, 1);
        let c = counts(&from_start(&[1, 1, 1]), &eps, 30_000, false);
        assert_eq!(c, vec![0, 15_000, 15_000]);
        let weights = [1, 2, 3, 4];
        let eps = endpoints(&weights);
        eps[2].eject(u64::MAX);
        let c = counts(&RoundRobin::new(&weights), &eps, 70_000, false);
        assert_eq!(c, vec![10_000, 20_000, 0, 40_000]);
    }

    #[test]
    fn contract() {
        fastrand::seed(1);
        super::super::testkit::contract(&RoundRobin::new(&[1, 2, 3, 4]), false);
    }

    #[test]
    fn most_of_a_large_pool_down_still_finds_the_rest() {
        // 200 endpoints, heavy ones down: the 64 probes can miss, the scan cannot.
        fastrand::seed(2);
        let mut weights = vec![100u32; 200];
        weights[17] = 1;
        weights[150] = 1;
        let eps = endpoints(&weights);
        for (i, ep) in eps.iter().enumerate() {
            if i != 17 && i != 150 {
                ep.set_healthy(false, 1);
            }
        }
        let c = counts(&RoundRobin::new(&weights), &eps, 10_000, false);
        assert_eq!(c[17] + c[150], 10_000);
        assert!(c[17] > 4_000 && c[150] > 4_000, "{} {}", c[17], c[150]);
    }

    #[test]
    fn slow_start_share_at_several_points_of_the_window() {
        fastrand::seed(3);
        let ss = slow_start();
        let eps = endpoints(&[1, 1, 1, 1]);
        let rr = RoundRobin::new(&[1, 1, 1, 1]);
        eps[0].mark_new(1000);
        // Effective weight 0.1 (the floor), 0.25, 0.5, 0.75 and 1 of the full weight: the
        // share is effective / sum of effective weights, e.g. 0.25 / 3.25 = 7.7 % where a
        // warm endpoint gets 25 %.
        for (at, ramp) in [(1000, 0.1), (1250, 0.25), (1500, 0.5), (1750, 0.75), (2000, 1.0), (9000, 1.0)] {
            let ctx = PickCtx { hash: None, now_ms: at, exclude: &[], panic: false, slow_start: Some(&ss) };
            let n = 100_000;
            let hits = (0..n).filter(|_| rr.pick(&eps, &ctx) == Some(0)).count();
            let want = ramp / (3.0 + ramp);
            let got = hits as f64 / f64::from(n);
            assert!((got - want).abs() < 0.01, "at {at}: share {got}, want {want}");
        }
    }

    #[test]
    fn slow_start_everything_ramping_still_picks() {
        fastrand::seed(4);
        let ss = slow_start();
        let eps = endpoints(&[1, 1, 1]);
        let rr = RoundRobin::new(&[1, 1, 1]);
        for ep in &eps {
            ep.mark_new(1000);
        }
        let ctx = PickCtx { hash: None, now_ms: 1000, exclude: &[], panic: false, slow_start: Some(&ss) };
        let mut c = [0u32; 3];
        for _ in 0..30_000 {
            c[rr.pick(&eps, &ctx).expect("pick")] += 1;
        }
        assert!(c.iter().all(|&x| x > 9_000), "{c:?}");
    }

    #[test]
    fn huge_weights_are_scaled() {
        let rr = from_start(&[1_000_000, 3_000_000, 1]);
        assert!(rr.schedule.len() as u64 <= MAX_SCHEDULE + 3);
        let eps = endpoints(&[1_000_000, 3_000_000, 1]);
        let mut counts = [0usize; 3];
        for _ in 0..rr.schedule.len() {
            counts[rr.pick(&eps, &ctx(None, &[])).unwrap()] += 1;
        }
        assert!(counts[2] >= 1);
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((ratio - 3.0).abs() < 0.01, "{ratio}");
    }
}
