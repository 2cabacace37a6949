//! `balance = "rendezvous"`: highest random weight (CARP-style) hashing. Every endpoint
//! scores `hash(key, endpoint)` and the best eligible score wins; weights use the
//! logarithmic method (`-ln(u) / weight`, smallest wins), which gives each endpoint exactly
//! its weight's share. Choose it for affinity by key (`hash_key`) in pools of up to a few
//! hundred endpoints: shares are as even as the hash, memory is three words per endpoint,
//! and when an endpoint goes each of its keys moves to that key's own second choice. The
//! pick is O(N), about 0.6 ns per endpoint; for very large pools `ring_hash`
//! is O(1).
//!
//! Cost: a score is one 64-bit multiply, `(key ^ a) × b` with `a` and odd `b` precomputed
//! from xxh3 of the endpoint's address; its top bits rank (multiply-shift hashing; the key
//! is mixed first, so its bits are random). Endpoints are grouped by weight: within a group
//! the highest raw score wins (the log is monotonic), so at most one comparison per
//! distinct weight needs a log, and none when weights are equal. Availability is checked
//! for the winner only; when it is unavailable, excluded (a retry) or sheds the key while
//! ramping up, the next in rank order is found by a pass over a quarter of its weight
//! group (the lane it came from), and after four an exact pass checks availability as it
//! goes.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Balancer, PickCtx, mix64, unit};
use crate::endpoint::EndpointState;

/// Low bits of a score replaced by the endpoint's index, so "best score" is a plain max.
const TAG_BITS: u32 = 20;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Ramping endpoints that may decline one key before the best of them takes it anyway.
const MAX_DECLINES: usize = 8;

/// Endpoints tried in rank order by the fast path before the exact pass.
const FAST_TRIES: usize = 4;

/// Distinct weights the fast path handles (one cached best score each).
const FAST_GROUPS: usize = 8;

/// Highest random weight hashing over up to 2^20 endpoints (any beyond are never picked).
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Endpoints' seeds, ordered by weight group.
    members: Vec<Member>,
    groups: Vec<Group>,
    /// Per endpoint index, for slow start's key-determined shedding.
    ramp_seeds: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    a: u64,
    b: u64,
    /// The endpoint's index.
    tag: u64,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    inv_weight: f64,
}

impl Rendezvous {
    /// `(label, weight)` per endpoint, in endpoint order. The label is the endpoint's
    /// address as written (`EndpointState::label`); weight 0 counts as 1.
    pub fn new<S: AsRef<str>>(endpoints: &[(S, u32)]) -> Self {
        let mut members: Vec<(u32, Member)> = endpoints
            .iter()
            .enumerate()
            .take(1 << TAG_BITS)
            .map(|(i, (label, weight))| {
                let label = label.as_ref().as_bytes();
                // An odd multiplier is a bijection: no key collapses to the same score.
                let a = xxh3_64_with_seed(label, 1);
                let b = xxh3_64_with_seed(label, 2) | 1;
                ((*weight).max(1), Member { a, b, tag: i as u64 })
            })
            .collect();
        members.sort_by_key(|(w, m)| (*w, m.tag));
        let mut groups: Vec<Group> = Vec::new();
        for (j, (w, _)) in members.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if g.inv_weight == 1.0 / f64::from(*w) => g.end = j + 1,
                _ => groups.push(Group { start: j, end: j + 1, inv_weight: 1.0 / f64::from(*w) }),
            }
        }
        let ramp_seeds =
            endpoints.iter().map(|(label, _)| xxh3_64_with_seed(label.as_ref().as_bytes(), 3)).collect();
        Rendezvous { members: members.into_iter().map(|(_, m)| m).collect(), groups, ramp_seeds }
    }

    /// Best tagged score of a group in each of four lanes, ignoring availability: four
    /// independent maxima so the multiplies pipeline, and no branch. Member `p` of the group
    /// is in lane `p % 4`, except the tail past the last full four, which is in lane 0.
    #[inline]
    fn group_lanes(&self, g: &Group, k: u64) -> [u64; 4] {
        let members = &self.members[g.start..g.end];
        let mut acc = [0u64; 4];
        let mut chunks = members.chunks_exact(4);
        for c in &mut chunks {
            for j in 0..4 {
                acc[j] = acc[j].max(tagged(k, &c[j]));
            }
        }
        for m in chunks.remainder() {
            acc[0] = acc[0].max(tagged(k, m));
        }
        acc
    }

    /// Best tagged score below `limit` in one lane of a group (0 when none): the next in
    /// rank order after the lane's best was turned down, a quarter of a group's pass.
    fn lane_below(&self, g: &Group, lane: usize, k: u64, limit: u64) -> u64 {
        let below = |t: u64| if t < limit { t } else { 0 };
        let mut chunks = self.members[g.start..g.end].chunks_exact(4);
        let mut best = 0;
        for c in &mut chunks {
            best = best.max(below(tagged(k, &c[lane & 3])));
        }
        if lane == 0 {
            for m in chunks.remainder() {
                best = best.max(below(tagged(k, m)));
            }
        }
        best
    }

    /// Which group holds the winner, given each group's best tagged score. Groups go from
    /// the heaviest down; a lighter group whose best raw score is below a heavier group's
    /// best cannot win (its `-ln(u) / weight` is larger on both counts), so only the few
    /// groups that set a new best raw score are compared, mostly without a log.
    #[inline]
    fn winning_group(&self, tops: &[u64]) -> usize {
        let mut best = tops.len().saturating_sub(1);
        let mut top = tops.last().copied().unwrap_or(0);
        for (g, &t) in tops.iter().enumerate().rev().skip(1) {
            if t <= top {
                continue;
            }
            top = t;
            if beats(t, self.groups[g].inv_weight, tops[best], self.groups[best].inv_weight) {
                best = g;
            }
        }
        best
    }

    /// The winner among endpoints for which `ok(index)` holds: the same ranking as
    /// `winning_group`, checking `ok` only for scores that would lead their group.
    fn best_where(&self, k: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(u64, f64)> = None;
        let mut top = 0;
        for g in self.groups.iter().rev() {
            let mut group_best: Option<u64> = None;
            for m in &self.members[g.start..g.end] {
                let t = tagged(k, m);
                if group_best.is_none_or(|b| t > b) && ok(m.tag as usize) {
                    group_best = Some(t);
                }
            }
            let Some(t) = group_best else { continue };
            match best {
                None => best = Some((t, g.inv_weight)),
                Some(_) if t <= top => continue,
                Some((b, inv_b)) => {
                    if beats(t, g.inv_weight, b, inv_b) {
                        best = Some((t, g.inv_weight));
                    }
                }
            }
            top = top.max(t);
        }
        best.map(|(t, _)| (t & TAG_MASK) as usize)
    }

    /// Whether endpoint `i`, ramping at `ramp`, takes key `k`: a fixed subset of its keys,
    /// growing with the ramp, so a key does not flap between endpoints while it warms up.
    #[inline]
    fn ramp_takes(&self, i: usize, k: u64, ramp: f64) -> bool {
        ramp >= 1.0 || self.ramp_seeds.get(i).is_none_or(|&s| unit(mix64(k ^ s)) < ramp)
    }
}

/// The endpoint's score for key `k`, its low bits replaced by the endpoint's index. A plain
/// 64-bit multiply: it pipelines twice as well as a 128-bit one, which set the pick's cost.
#[inline(always)]
fn tagged(k: u64, m: &Member) -> u64 {
    ((k ^ m.a).wrapping_mul(m.b) & !TAG_MASK) | m.tag
}

/// The score's uniform `u` in (0, 1) and `1 - u`, both exact.
#[inline]
fn unit_of(t: u64) -> (f64, f64) {
    const SCALE: f64 = 1.0 / (1u64 << (64 - TAG_BITS)) as f64;
    let x = (t >> TAG_BITS) as f64;
    ((x + 0.5) * SCALE, ((1u64 << (64 - TAG_BITS)) as f64 - 0.5 - x) * SCALE)
}

/// Whether score `a` of weight `1/inv_a` beats `b`: `-ln(u_a) / w_a < -ln(u_b) / w_b`.
/// `1 - u <= -ln(u) <= (1 - u) / u` settles most comparisons without a log; the scores
/// that win are close to 1, where those bounds are tight.
#[inline]
fn beats(a: u64, inv_a: f64, b: u64, inv_b: f64) -> bool {
    let ((ua, qa), (ub, qb)) = (unit_of(a), unit_of(b));
    // upper(a) < lower(b), multiplied through by u_a > 0.
    if qa * inv_a < qb * inv_b * ua {
        return true;
    }
    if qb * inv_b < qa * inv_a * ub {
        return false;
    }
    -ua.ln() * inv_a < -ub.ln() * inv_b
}

impl Balancer for Rendezvous {
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        // Without a key (the request lacks it) a random one: a weighted random pick.
        let k = mix64(ctx.hash.unwrap_or_else(|| fastrand::u64(..)));

        // Fast path: endpoints in rank order until one is eligible (and, ramping, takes the
        // key). Most picks stop at the first; a retry or a dead winner costs one more pass
        // over the lane it came from.
        let mut declined = [usize::MAX; MAX_DECLINES];
        let mut n_declined = 0;
        let groups = self.groups.len();
        if groups <= FAST_GROUPS {
            let mut lanes = [[0u64; 4]; FAST_GROUPS];
            let mut tops = [0u64; FAST_GROUPS];
            for (g, (l, top)) in self.groups.iter().zip(lanes.iter_mut().zip(&mut tops)) {
                *l = self.group_lanes(g, k);
                *top = l.iter().copied().fold(0, u64::max);
            }
            for _ in 0..FAST_TRIES {
                let g = self.winning_group(&tops[..groups]);
                let t = tops[g];
                // 0: that group is exhausted (or, once in 2^44, a real score of 0): exact pass.
                if t == 0 {
                    break;
                }
                let i = (t & TAG_MASK) as usize;
                if let Some(ep) = endpoints.get(i)
                    && ctx.eligible(ep)
                {
                    if ctx.slow_start.is_none() || self.ramp_takes(i, k, ctx.ramp(ep)) {
                        return Some(i);
                    }
                    if n_declined < MAX_DECLINES {
                        declined[n_declined] = i;
                        n_declined += 1;
                    }
                }
                // Turned down: its lane's next best takes its place.
                let l = &mut lanes[g];
                if let Some(lane) = l.iter().position(|&x| x == t) {
                    l[lane] = self.lane_below(&self.groups[g], lane, k, t);
                }
                tops[g] = l.iter().copied().fold(0, u64::max);
            }
        }

        // Exact pass: the best eligible endpoint that has not declined the key.
        loop {
            let ok = |i: usize| {
                !declined[..n_declined].contains(&i) && endpoints.get(i).is_some_and(|ep| ctx.eligible(ep))
            };
            let Some(i) = self.best_where(k, ok) else {
                // Everything eligible is ramping and declined: the best of them.
                return (n_declined > 0).then_some(declined[0]);
            };
            let ep = endpoints.get(i)?;
            if ctx.slow_start.is_none() || n_declined == MAX_DECLINES || self.ramp_takes(i, k, ctx.ramp(ep)) {
                return Some(i);
            }
            declined[n_declined] = i;
            n_declined += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn hrw(weights: &[u32]) -> Rendezvous {
        Rendezvous::new(&labeled(weights))
    }

    fn keys(n: u64) -> Vec<u64> {
        (0..n).map(|k| super::super::hash_bytes(&k.to_le_bytes())).collect()
    }

    /// Key → endpoint label.
    fn map(weights: &[u32], keys: &[u64]) -> Vec<String> {
        let b = hrw(weights);
        let eps = endpoints(weights);
        keys.iter().map(|&k| eps[b.pick(&eps, &ctx(Some(k), &[])).unwrap()].label.to_string()).collect()
    }

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
        let keys = keys(100_000);
        for n in [5usize, 10] {
            let w = vec![1u32; n];
            let base = map(&w, &keys);
            let f = moved(&base, &map(&vec![1; n - 1], &keys), &label(n - 1));
            assert!((f - 1.0 / n as f64).abs() <= 0.02, "remove 1 of {n}: moved {f}");
            let f = moved(&base, &map(&vec![1; n + 1], &keys), &label(n));
            assert!((f - 1.0 / (n + 1) as f64).abs() <= 0.02, "add 1 to {n}: moved {f}");
        }
        // Weighted pools too: removing a weight-2 endpoint of 1,2,1,2,1 moves 2/7.
        let w = [1u32, 2, 1, 2, 1];
        let f = moved(&map(&w, &keys), &map(&w[..4], &keys), &label(4));
        assert!((f - 1.0 / 7.0).abs() <= 0.02, "weighted remove: moved {f}");
    }

    #[test]
    fn a_removed_endpoints_keys_spread_evenly_over_the_rest() {
        // Scores must be independent across endpoints: each survivor takes 1/(N-1) of them.
        let keys = keys(100_000);
        let w = vec![1u32; 5];
        let b = hrw(&w);
        let eps = endpoints(&w);
        let mut to = [0u32; 5];
        for &k in &keys {
            if b.pick(&eps, &ctx(Some(k), &[])) == Some(2) {
                to[b.pick(&eps, &ctx(Some(k), &[2])).unwrap()] += 1;
            }
        }
        let total: u32 = to.iter().sum();
        for (i, &c) in to.iter().enumerate() {
            if i != 2 {
                let share = f64::from(c) / f64::from(total);
                assert!((share - 0.25).abs() < 0.02, "{to:?}");
            }
        }
    }

    #[test]
    fn weights_honoured_within_5_percent() {
        for w in [vec![1u32, 2], vec![1, 2, 1, 2, 1, 2], vec![1, 2, 3, 4, 5]] {
            let eps = endpoints(&w);
            let c = counts(&hrw(&w), &eps, 100_000, true);
            let wf: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
            assert_shares(&c, &wf, 0.05);
        }
    }

    #[test]
    fn equal_weights_even_within_3_percent() {
        let w = vec![1u32; 10];
        let eps = endpoints(&w);
        let c = counts(&hrw(&w), &eps, 100_000, true);
        assert_shares(&c, &[1.0; 10], 0.03);
    }

    #[test]
    fn same_key_same_endpoint_whatever_the_config_order() {
        let w = [1u32, 3, 1, 2, 1];
        let forward = labeled(&w);
        let mut reversed = forward.clone();
        reversed.reverse();
        let (a, b) = (Rendezvous::new(&forward), Rendezvous::new(&reversed));
        let eps = endpoints(&w);
        let rev_eps: Vec<_> = (0..5).map(|i| eps[4 - i].clone()).collect();
        for k in 0..10_000u64 {
            assert_eq!(
                a.pick(&eps, &ctx(Some(k), &[])).unwrap(),
                4 - b.pick(&rev_eps, &ctx(Some(k), &[])).unwrap()
            );
        }
    }

    #[test]
    fn rank_order_fast_path_agrees_with_the_exact_pass() {
        fastrand::seed(23);
        // Uneven group sizes exercise the lanes' tails; 9 weights exceed the fast path's 8.
        for w in [(0..43).map(|i| 1 + i % 6).collect::<Vec<u32>>(), vec![1; 23], (1..=9).collect()] {
            let n = w.len();
            let b = hrw(&w);
            let eps = endpoints(&w);
            for round in 0..2_000u64 {
                // Random outages and retries.
                for ep in &eps {
                    ep.set_healthy(fastrand::u8(..) > 60, 1);
                }
                let exclude: Vec<usize> = (0..fastrand::usize(..4)).map(|_| fastrand::usize(..n)).collect();
                let c = ctx(Some(round), &exclude);
                let exact = b.best_where(mix64(round), |i| c.eligible(&eps[i]));
                assert_eq!(b.pick(&eps, &c), exact, "{w:?} round {round}");
            }
        }
    }

    #[test]
    fn contract() {
        fastrand::seed(21);
        super::super::testkit::contract(&hrw(&[1, 2, 3, 4]), true);
        super::super::testkit::contract(&hrw(&[1, 2, 3, 4]), false);
        super::super::testkit::contract(&hrw(&[1, 1, 1, 1]), true);
    }

    #[test]
    fn unavailable_winner_gives_way_to_the_second_choice() {
        let w = vec![1u32; 6];
        let b = hrw(&w);
        let eps = endpoints(&w);
        for k in keys(2_000) {
            let first = b.pick(&eps, &ctx(Some(k), &[])).unwrap();
            let second = b.pick(&eps, &ctx(Some(k), &[first])).unwrap();
            eps[first].set_healthy(false, 1);
            assert_eq!(b.pick(&eps, &ctx(Some(k), &[])), Some(second));
            eps[first].set_healthy(true, 1);
        }
    }

    #[test]
    fn slow_start_sheds_a_stable_growing_subset_of_keys() {
        hashed_slow_start_contract(&hrw(&[1, 2, 1, 1]), &[1, 2, 1, 1], 1);
    }

    #[test]
    fn no_key_picks_by_weight() {
        fastrand::seed(22);
        let w = [1, 3];
        let eps = endpoints(&w);
        let c = counts(&hrw(&w), &eps, 100_000, false);
        assert_shares(&c, &[1.0, 3.0], 0.05);
    }
}
