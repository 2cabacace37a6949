//! `balance = "random"`: a weighted random draw (alias table, O(1)). Choose it when many
//! gateways or workers share a pool and should not move through it in lock step, as round
//! robin instances restarted together can; over many picks it matches the weights, over a
//! few it is lumpier than round robin.

use std::sync::Arc;

use super::alias::AliasTable;
use super::{Balancer, PickCtx};
use crate::endpoint::EndpointState;

#[derive(Debug, Clone)]
pub struct Random {
    table: AliasTable,
}

impl Random {
    /// One weight per endpoint, in endpoint order (0 counts as 1).
    pub fn new(weights: &[u32]) -> Self {
        Random { table: AliasTable::new(weights) }
    }
}

impl Balancer for Random {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize> {
        self.table.draw(endpoints, ctx, None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn weights_within_3_percent_over_100k_picks() {
        fastrand::seed(7);
        let weights = [1, 2, 3, 4];
        let eps = endpoints(&weights);
        let c = counts(&Random::new(&weights), &eps, 100_000, false);
        assert_shares(&c, &[1.0, 2.0, 3.0, 4.0], 0.03);
    }

    #[test]
    fn contract() {
        fastrand::seed(8);
        super::super::testkit::contract(&Random::new(&[1, 2, 3, 4]), false);
    }

    #[test]
    fn unavailable_share_goes_to_the_rest_by_weight() {
        fastrand::seed(9);
        let weights = [1, 2, 3, 4];
        let eps = endpoints(&weights);
        eps[3].set_healthy(false, 1);
        let c = counts(&Random::new(&weights), &eps, 100_000, false);
        assert_eq!(c[3], 0);
        assert_shares(&c[..3], &[1.0, 2.0, 3.0], 0.03);
    }

    #[test]
    fn slow_start_share_follows_the_ramp() {
        fastrand::seed(10);
        let ss = slow_start();
        let eps = endpoints(&[1, 1, 1, 1]);
        let b = Random::new(&[1, 1, 1, 1]);
        eps[0].mark_new(1000);
        for (at, ramp) in [(1000, 0.1), (1250, 0.25), (1500, 0.5), (1750, 0.75), (2000, 1.0)] {
            let ctx = PickCtx { hash: None, now_ms: at, exclude: &[], panic: false, slow_start: Some(&ss) };
            let n = 100_000;
            let hits = (0..n).filter(|_| b.pick(&eps, &ctx) == Some(0)).count();
            let want = ramp / (3.0 + ramp);
            let got = hits as f64 / f64::from(n);
            assert!((got - want).abs() < 0.01, "at {at}: share {got}, want {want}");
        }
    }
}
