//! `balance = "ring_hash"`: consistent hashing on a ketama-style ring. Each endpoint owns
//! `VNODES_PER_WEIGHT × weight` (1024 × weight) points placed by xxh3 of its address and the point's number;
//! a key goes to the first point clockwise of its hash, walking on past unavailable and
//! excluded endpoints. Choose it for affinity by key (`hash_key`) in large pools: the pick
//! is O(1) whatever the pool size. For small and medium pools, or when weights must be
//! honoured closely, `rendezvous` is the better choice (see the module doc of `balance`).
//!
//! Consistency: an endpoint's points depend only on its own address and weight, so adding
//! or removing one moves only the keys of the arcs it gains or loses, and every instance
//! builds the same ring from the same config (a pool whose total weight passes 1024 is
//! scaled down by powers of two, see `MAX_POINTS`).

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Balancer, PickCtx, mix64, unit};
use crate::endpoint::EndpointState;

/// Points per unit of weight. An endpoint's share deviates from its weight's by about
/// `1/sqrt(points)` (1 σ): 3 % at weight 1, against 8 % with ketama's 160; each point costs
/// 8 bytes, so 100 endpoints of weight 1 take 0.8 MiB.
pub const VNODES_PER_WEIGHT: u32 = 1024;

/// Past this many points (8 MiB) every endpoint's count is halved until the ring fits.
/// Halving keeps each endpoint's first points, and happens only when the pool's total
/// weight crosses a power of two, so consistency suffers only then.
const MAX_POINTS: u64 = 1 << 20;

/// Points walked before checking whether any endpoint will take the key at all.
const WALK_BEFORE_CHECK: usize = 64;

#[derive(Debug, Clone)]
pub struct RingHash {
    /// Sorted point positions (the high 32 bits of a 64-bit hash).
    points: Vec<u32>,
    /// The endpoint owning each point.
    owners: Vec<u32>,
    /// `buckets[b]` = first point at or above `b << shift`: a lookup searches one bucket.
    buckets: Vec<u32>,
    shift: u32,
    /// Per endpoint, for slow start's key-determined shedding.
    seeds: Vec<u64>,
}

impl RingHash {
    /// `(label, weight)` per endpoint, in endpoint order. The label is the endpoint's
    /// address as written (`EndpointState::label`); weight 0 counts as 1.
    pub fn new<S: AsRef<str>>(endpoints: &[(S, u32)]) -> Self {
        let wanted: Vec<u64> =
            endpoints.iter().map(|(_, w)| u64::from((*w).max(1)) * u64::from(VNODES_PER_WEIGHT)).collect();
        let points_at = |halvings: u32| wanted.iter().map(|w| (w >> halvings).max(1)).sum::<u64>();
        let mut halvings = 0;
        while halvings < 63 && points_at(halvings) > MAX_POINTS {
            halvings += 1;
        }
        let mut ring: Vec<(u32, u64, u32)> = Vec::with_capacity(points_at(halvings) as usize);
        let mut seeds = Vec::with_capacity(endpoints.len());
        for (i, ((label, _), w)) in endpoints.iter().zip(&wanted).enumerate() {
            let label = label.as_ref().as_bytes();
            let seed = xxh3_64_with_seed(label, 0);
            seeds.push(mix64(seed));
            for replica in 0..(w >> halvings).max(1) {
                let pos = (xxh3_64_with_seed(label, replica + 1) >> 32) as u32;
                ring.push((pos, seed, i as u32));
            }
        }
        // Ties (same position) are ordered by the label's hash, not config order, so every
        // instance agrees.
        ring.sort_unstable();
        let points: Vec<u32> = ring.iter().map(|p| p.0).collect();
        let owners: Vec<u32> = ring.iter().map(|p| p.2).collect();
        // About four points per bucket: a lookup reads one or two cache lines of points.
        let bits = (usize::BITS - (points.len() / 4).max(2).leading_zeros()).clamp(1, 22);
        let shift = 32 - bits;
        let buckets = (0..=(1u64 << bits))
            .map(|b| points.partition_point(|&p| u64::from(p) < (b << shift)) as u32)
            .collect();
        RingHash { points, owners, buckets, shift, seeds }
    }

    /// Index of the first point at or clockwise of `pos`.
    #[inline]
    fn first_at(&self, pos: u32) -> usize {
        let b = (pos >> self.shift) as usize;
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        let i = lo + self.points[lo..hi].partition_point(|&p| p < pos);
        if i == self.points.len() { 0 } else { i }
    }

    /// Whether endpoint `i`, ramping at `ramp`, takes key `k`: a fixed subset of its keys,
    /// growing with the ramp, so a key does not flap between endpoints while it warms up.
    #[inline]
    fn ramp_takes(&self, i: usize, k: u64, ramp: f64) -> bool {
        ramp >= 1.0 || unit(mix64(k ^ self.seeds[i])) < ramp
    }
}

impl Balancer for RingHash {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        // Without a key (the request lacks it) any point will do: a random one, by weight.
        let k = mix64(ctx.hash.unwrap_or_else(|| fastrand::u64(..)));
        let mut at = self.first_at((k >> 32) as u32);
        let mut declined = None;
        let mut last = u32::MAX;
        for walked in 0..len {
            let owner = self.owners[at];
            // Neighbouring points of one owner: judged once.
            if owner != last {
                last = owner;
                let i = owner as usize;
                if let Some(ep) = endpoints.get(i)
                    && ctx.eligible(ep)
                {
                    if ctx.slow_start.is_none() || self.ramp_takes(i, k, ctx.ramp(ep)) {
                        return Some(i);
                    }
                    declined.get_or_insert(i);
                }
            }
            // A long walk: is anyone going to take this key at all? (Nothing eligible, or
            // every eligible endpoint ramping and declining it, would walk the whole ring.)
            if walked == WALK_BEFORE_CHECK {
                let takes = |(i, ep): (usize, &Arc<EndpointState>)| {
                    ctx.eligible(ep) && (ctx.slow_start.is_none() || self.ramp_takes(i, k, ctx.ramp(ep)))
                };
                if !endpoints.iter().take(self.seeds.len()).enumerate().any(takes) {
                    return declined;
                }
            }
            at += 1;
            if at == len {
                at = 0;
            }
        }
        // Every eligible endpoint is ramping and declined this key: better one of them.
        declined
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn ring(weights: &[u32]) -> RingHash {
        RingHash::new(&labeled(weights))
    }

    /// Key → endpoint label for `n` keys.
    fn map(b: &dyn Balancer, weights: &[u32], n: u64) -> Vec<String> {
        let eps = endpoints(weights);
        (0..n)
            .map(|k| {
                let i =
                    b.pick(&eps, &ctx(Some(super::super::hash_bytes(&k.to_le_bytes())), &[])).expect("pick");
                eps[i].label.to_string()
            })
            .collect()
    }

    /// Share of keys that changed endpoint, asserting that keys did not move between two
    /// endpoints present in both maps.
    fn moved(before: &[String], after: &[String], changed: &str) -> f64 {
        let mut moved = 0;
        for (a, b) in before.iter().zip(after) {
            if a != b {
                assert!(
                    a == changed || b == changed,
                    "a key moved from {a} to {b}: only {changed} may gain or lose"
                );
                moved += 1;
            }
        }
        moved as f64 / before.len() as f64
    }

    #[test]
    fn adding_or_removing_one_of_n_moves_about_1_over_n() {
        for n in [5usize, 10] {
            let w = vec![1u32; n];
            let base = map(&ring(&w), &w, 100_000);
            // Removing the last endpoint (n-1 remain).
            let fewer = vec![1u32; n - 1];
            let f = moved(&base, &map(&ring(&fewer), &fewer, 100_000), &label(n - 1));
            assert!((f - 1.0 / n as f64).abs() <= 0.02, "remove 1 of {n}: moved {f}");
            // Adding one (n+1).
            let more = vec![1u32; n + 1];
            let f = moved(&base, &map(&ring(&more), &more, 100_000), &label(n));
            assert!((f - 1.0 / (n + 1) as f64).abs() <= 0.02, "add 1 to {n}: moved {f}");
        }
    }

    #[test]
    fn removing_any_one_endpoint_moves_only_its_keys() {
        // Unavailability walks on: the same property without rebuilding the ring.
        let n = 5;
        let w = vec![1u32; n];
        let b = ring(&w);
        let eps = endpoints(&w);
        let keys: Vec<u64> = (0..100_000u64).map(|k| super::super::hash_bytes(&k.to_le_bytes())).collect();
        let before: Vec<usize> = keys.iter().map(|&k| b.pick(&eps, &ctx(Some(k), &[])).unwrap()).collect();
        for down in 0..n {
            eps[down].set_healthy(false, 1);
            let mut moved = 0;
            for (&k, &was) in keys.iter().zip(&before) {
                let now = b.pick(&eps, &ctx(Some(k), &[])).unwrap();
                if now != was {
                    assert_eq!(was, down);
                    moved += 1;
                }
            }
            let f = moved as f64 / keys.len() as f64;
            assert!((f - 0.2).abs() <= 0.02, "{down} down: moved {f}");
            eps[down].set_healthy(true, 1);
        }
    }

    #[test]
    fn weights_honoured_within_5_percent() {
        let w = [1, 2];
        let eps = endpoints(&w);
        let c = counts(&ring(&w), &eps, 100_000, true);
        assert_shares(&c, &[1.0, 2.0], 0.05);
        // With more endpoints each share also carries the ring's own spread, about
        // 1/sqrt(points) = 3 % (1 σ) at weight 1: allow 2σ.
        let w = [1, 2, 1, 2, 1, 2];
        let eps = endpoints(&w);
        let c = counts(&ring(&w), &eps, 100_000, true);
        assert_shares(&c, &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0], 0.07);
    }

    #[test]
    fn same_key_same_endpoint_whatever_the_config_order() {
        let w = [1u32, 1, 1, 1, 1];
        let forward = labeled(&w);
        let mut reversed = forward.clone();
        reversed.reverse();
        let (a, b) = (RingHash::new(&forward), RingHash::new(&reversed));
        let eps = endpoints(&w);
        // Endpoint states in reversed order: index i holds label 4-i.
        let rev_eps: Vec<_> = {
            let e = endpoints(&w);
            (0..5).map(|i| e[4 - i].clone()).collect()
        };
        for k in 0..10_000u64 {
            let x = a.pick(&eps, &ctx(Some(k), &[])).unwrap();
            let y = b.pick(&rev_eps, &ctx(Some(k), &[])).unwrap();
            assert_eq!(x, 4 - y);
        }
    }

    #[test]
    fn huge_weights_are_scaled_by_halving() {
        let r = ring(&[1_000_000, 1, 3000]);
        assert!(r.points.len() as u64 <= MAX_POINTS, "{}", r.points.len());
        // Halving keeps every endpoint on the ring and the ratio of the large weights.
        let count = |i: u32| r.owners.iter().filter(|&&o| o == i).count();
        assert_eq!((count(0), count(1), count(2)), (1_000_000, 1, 3000));
        let r = ring(&[u32::MAX, 1]);
        assert!(r.points.len() as u64 <= MAX_POINTS, "{}", r.points.len());
        // Weight 1000 each: just under the cap, no halving.
        assert_eq!(ring(&[1, 1023]).points.len(), 1024 * 1024);
    }

    #[test]
    fn contract() {
        fastrand::seed(5);
        super::super::testkit::contract(&ring(&[1, 2, 3, 4]), true);
        super::super::testkit::contract(&ring(&[1, 2, 3, 4]), false);
    }

    #[test]
    fn every_endpoint_ramping_still_picks_deterministically() {
        let ss = slow_start();
        let w = [1u32; 4];
        let eps = endpoints(&w);
        let b = ring(&w);
        for ep in &eps {
            ep.mark_new(1000);
        }
        let c = PickCtx { hash: None, now_ms: 1000, exclude: &[], panic: false, slow_start: Some(&ss) };
        let mut seen = [0u32; 4];
        for k in 0..20_000u64 {
            let i = b.pick(&eps, &PickCtx { hash: Some(k), ..c }).expect("pick");
            assert_eq!(b.pick(&eps, &PickCtx { hash: Some(k), ..c }), Some(i));
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&x| x > 3_000), "{seen:?}");
    }

    #[test]
    fn no_key_picks_by_weight() {
        fastrand::seed(6);
        let w = [1, 3];
        let eps = endpoints(&w);
        let c = counts(&ring(&w), &eps, 100_000, false);
        assert_shares(&c, &[1.0, 3.0], 0.05);
    }

    #[test]
    fn slow_start_sheds_a_stable_growing_subset_of_keys() {
        hashed_slow_start_contract(&ring(&[1; 4]), &[1; 4], 0);
    }
}
