//! Walker's alias table (Vose's construction): a weighted draw in O(1) from one random
//! 64-bit number. Shared by `Random` and `LeastRequest`.

use std::sync::Arc;

use super::{PickCtx, weighted_scan};
use crate::endpoint::EndpointState;

/// Draws that hit an unavailable or excluded endpoint are retried this many times before a
/// full weighted scan; with half the pool down a draw fails 16 times in 1 of 65,536 picks.
const DRAWS: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct AliasTable {
    /// Per column: take the column when the low 32 random bits are `<= keep`, else `alias`.
    columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy)]
struct Column {
    keep: u32,
    alias: u32,
}

impl AliasTable {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        if n == 0 {
            return AliasTable { columns: Vec::new() };
        }
        let total: f64 = weights.iter().map(|&w| f64::from(w.max(1))).sum();
        // Each column holds probability mass 1; scaled weights average 1.
        let mut scaled: Vec<f64> = weights.iter().map(|&w| f64::from(w.max(1)) * n as f64 / total).collect();
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is 1 up to rounding: those columns always keep themselves.
        for i in small.into_iter().chain(large) {
            scaled[i] = 1.0;
        }
        let columns = scaled
            .iter()
            .zip(alias)
            .map(|(&p, alias)| {
                let keep = (p * 4_294_967_296.0).round() - 1.0;
                Column { keep: keep.clamp(0.0, f64::from(u32::MAX)) as u32, alias }
            })
            .collect();
        AliasTable { columns }
    }

    /// A weighted index from one uniform random number.
    #[inline]
    pub(crate) fn sample(&self, r: u64) -> usize {
        // Multiply-shift maps the high half onto the columns without a division.
        let col = (((r >> 32) * self.columns.len() as u64) >> 32) as usize;
        let c = self.columns[col];
        if (r as u32) <= c.keep { col } else { c.alias as usize }
    }

    /// A weighted draw among eligible endpoints other than `other`. A ramping endpoint keeps
    /// a draw with probability `ramp`, so its share follows its effective weight. After
    /// `DRAWS` misses, a weighted scan decides (None when nothing is eligible) — unless
    /// `other` is set: then None means "no second candidate found cheaply".
    pub(crate) fn draw(
        &self,
        endpoints: &[Arc<EndpointState>],
        ctx: &PickCtx<'_>,
        other: Option<usize>,
    ) -> Option<usize> {
        if self.columns.is_empty() {
            return None;
        }
        for _ in 0..DRAWS {
            let i = self.sample(fastrand::u64(..));
            if Some(i) == other {
                continue;
            }
            let Some(ep) = endpoints.get(i) else { continue };
            if !ctx.eligible(ep) {
                continue;
            }
            if ctx.slow_start.is_some() {
                let ramp = ctx.ramp(ep);
                if ramp < 1.0 && fastrand::f64() >= ramp {
                    continue;
                }
            }
            return Some(i);
        }
        match other {
            None => weighted_scan(endpoints, ctx),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_over_every_column_and_coin() {
        // Sweeping the random number's two halves evenly reproduces the weights exactly,
        // up to one coin step per column.
        for weights in [vec![1u32], vec![1, 2, 3], vec![5, 1, 1, 9], vec![1000, 1, 7]] {
            let t = AliasTable::new(&weights);
            let n = weights.len() as u64;
            let mut counts = vec![0u64; weights.len()];
            let steps = 1u64 << 12;
            for c in 0..n {
                // A high half that maps to column c.
                let hi = (c << 32).div_ceil(n);
                for k in 0..steps {
                    let lo = k * ((1u64 << 32) / steps);
                    counts[t.sample((hi << 32) | lo)] += 1;
                }
            }
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for (i, &w) in weights.iter().enumerate() {
                let want = u64::from(w) as f64 / total as f64;
                let got = counts[i] as f64 / (n * steps) as f64;
                assert!((got - want).abs() < 1e-3, "{weights:?}: {i} got {got} want {want}");
            }
        }
    }

    #[test]
    fn empty() {
        let t = AliasTable::new(&[]);
        assert!(t.columns.is_empty());
    }
}
