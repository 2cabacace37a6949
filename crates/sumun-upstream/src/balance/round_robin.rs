//! Balancers. Weighted round robin is precomputed into a smooth schedule at config compile
//! time, so a pick is one atomic increment and an index — no lock on the request path.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Smooth weighted round robin (the nginx sequence): weights 5,1,1 give a a b a c a a, not
/// a a a a a b c, so no endpoint gets a burst.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

impl RoundRobin {
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
        // Start each pool at a different point so several pools don't hit the same endpoint
        // in lock step after a reload.
        RoundRobin { schedule, next: AtomicUsize::new(0) }
    }

    /// The next endpoint index, or None for an empty pool.
    pub fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.schedule[n % self.schedule.len()] as usize)
    }
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
    use super::*;

    #[test]
    fn smooth_sequence() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_honoured_over_many_picks() {
        let rr = RoundRobin::new(&[1, 2, 3]);
        let mut counts = [0usize; 3];
        for _ in 0..60_000 {
            counts[rr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [10_000, 20_000, 30_000]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let rr = RoundRobin::new(&[1_000_000, 3_000_000, 1]);
        assert!(rr.schedule.len() as u64 <= MAX_SCHEDULE + 3);
        let mut counts = [0usize; 3];
        for _ in 0..rr.schedule.len() {
            counts[rr.pick().unwrap()] += 1;
        }
        assert!(counts[2] >= 1);
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((ratio - 3.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn empty_pool() {
        assert_eq!(RoundRobin::new(&[]).pick(), None);
    }
}
