//! `balance = "least_request"`: power of two choices over in-flight requests. Two candidates
//! are drawn by weight and the one with fewer requests in flight per unit of (effective)
//! weight wins; a tie goes to the first, so with equal latency the shares follow the weights
//! exactly. Choose it when request cost varies (slow queries, long streams, mixed
//! endpoints): load follows what endpoints are actually busy with, in O(1) and without the
//! herd effect of always taking the global minimum.

use std::sync::Arc;

use super::alias::AliasTable;
use super::{Balancer, PickCtx};
use crate::endpoint::EndpointState;

#[derive(Debug, Clone)]
pub struct LeastRequest {
    table: AliasTable,
}

impl LeastRequest {
    /// One weight per endpoint, in endpoint order (0 counts as 1).
    pub fn new(weights: &[u32]) -> Self {
        LeastRequest { table: AliasTable::new(weights) }
    }
}

impl Balancer for LeastRequest {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize> {
        let a = self.table.draw(endpoints, ctx, None)?;
        let Some(b) = self.table.draw(endpoints, ctx, Some(a)) else { return Some(a) };
        let (Some(ea), Some(eb)) = (endpoints.get(a), endpoints.get(b)) else { return Some(a) };
        let (fa, fb) = (ea.in_flight(), eb.in_flight());
        if fa == 0 {
            return Some(a);
        }
        // fa / wa <= fb / wb, cross-multiplied; the weights are effective ones while ramping.
        let a_wins = if ctx.slow_start.is_some() {
            let wa = ea.effective_weight(ctx.now_ms, ctx.slow_start);
            let wb = eb.effective_weight(ctx.now_ms, ctx.slow_start);
            f64::from(fa) * wb <= f64::from(fb) * wa
        } else {
            u64::from(fa) * u64::from(eb.weight) <= u64::from(fb) * u64::from(ea.weight)
        };
        Some(if a_wins { a } else { b })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn weights_within_3_percent_over_100k_picks_at_equal_latency() {
        fastrand::seed(11);
        let weights = [1, 2, 3, 4];
        let eps = endpoints(&weights);
        // Equal (zero) latency: nothing stays in flight between picks.
        let c = counts(&LeastRequest::new(&weights), &eps, 100_000, false);
        assert_shares(&c, &[1.0, 2.0, 3.0, 4.0], 0.03);
    }

    #[test]
    fn contract() {
        fastrand::seed(12);
        super::super::testkit::contract(&LeastRequest::new(&[1, 2, 3, 4]), false);
    }

    #[test]
    fn busy_endpoints_get_less() {
        fastrand::seed(13);
        let eps = endpoints(&[1, 1, 1, 1]);
        let b = LeastRequest::new(&[1, 1, 1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| eps[0].begin()).collect();
        let c = counts(&b, &eps, 40_000, false);
        // Endpoint 0 wins only when drawn against itself, which draws never do: never.
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn in_flight_is_compared_per_unit_of_weight() {
        fastrand::seed(14);
        let eps = endpoints(&[1, 4]);
        let b = LeastRequest::new(&[1, 4]);
        // 2 in flight on weight 1 (2 per unit) against 4 on weight 4 (1 per unit): 1 wins
        // whenever both are candidates.
        let _g: Vec<_> = (0..2).map(|_| eps[0].begin()).chain((0..4).map(|_| eps[1].begin())).collect();
        let c = counts(&b, &eps, 10_000, false);
        assert_eq!(c, vec![0, 10_000]);
    }

    #[test]
    fn load_converges_to_weights_under_sustained_in_flight() {
        // A closed loop: each pick stays in flight for a while, so the in-flight counts, not
        // the draws, decide; they settle proportional to the weights.
        fastrand::seed(15);
        let weights = [1, 3];
        let eps = endpoints(&weights);
        let b = LeastRequest::new(&weights);
        let mut live = std::collections::VecDeque::new();
        let mut c = [0u64; 2];
        for _ in 0..100_000 {
            let i = b.pick(&eps, &ctx(None, &[])).expect("pick");
            c[i] += 1;
            live.push_back(eps[i].begin());
            if live.len() > 40 {
                live.pop_front();
            }
        }
        let share = c[1] as f64 / 100_000.0;
        assert!((share - 0.75).abs() < 0.03, "{c:?}");
    }

    #[test]
    fn slow_start_share_follows_the_ramp() {
        fastrand::seed(16);
        let ss = slow_start();
        let eps = endpoints(&[1, 1, 1, 1]);
        let b = LeastRequest::new(&[1, 1, 1, 1]);
        eps[0].mark_new(1000);
        for (at, ramp) in [(1000, 0.1), (1250, 0.25), (1500, 0.5), (2000, 1.0)] {
            let ctx = PickCtx { hash: None, now_ms: at, exclude: &[], panic: false, slow_start: Some(&ss) };
            let n = 100_000;
            let hits = (0..n).filter(|_| b.pick(&eps, &ctx) == Some(0)).count();
            let want = ramp / (3.0 + ramp);
            let got = hits as f64 / f64::from(n);
            assert!((got - want).abs() < 0.01, "at {at}: share {got}, want {want}");
        }
    }
}
