//! The memory all response encoders may hold at once (`[compression] max_memory`), as
//! HAProxy's `maxzlibmem`: each encoder is charged what its codec allocates, and a response
//! that would go over the budget is sent uncompressed instead. Without it, many slow clients
//! each receiving a compressed response could make the encoders' state (up to 2.5 MiB a
//! brotli stream) exhaust memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sumun_config::Encoding;

/// What one encoder holds, measured with the levels and windows `codec.rs` uses (RSS of a
/// hundred encoders that compressed 200 KB each): gzip ~310 KiB, zstd ~1.2 MiB, brotli
/// ~1.7–2.5 MiB; rounded up.
pub(super) fn encoder_cost(e: Encoding) -> u64 {
    match e {
        Encoding::Gzip => 320 << 10,
        Encoding::Zstd => 5 << 18,
        Encoding::Brotli => 5 << 19,
    }
}

/// Shared by every route of a runtime and carried over reloads (the encoders of responses in
/// flight stay charged).
#[derive(Debug, Default)]
pub struct CompressionBudget {
    limit: AtomicU64,
    in_use: AtomicU64,
}

impl CompressionBudget {
    /// 0: no limit.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(CompressionBudget { limit: AtomicU64::new(limit), in_use: AtomicU64::new(0) })
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Charges `bytes`, or None when that would go over the limit.
    pub(super) fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.in_use.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes)?;
            if limit != 0 && next > limit {
                return None;
            }
            match self.in_use.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Reservation { budget: self.clone(), bytes }),
                Err(now) => cur = now,
            }
        }
    }
}

/// A charge on the budget, returned when dropped (with the encoder's body).
#[derive(Debug)]
pub(super) struct Reservation {
    budget: Arc<CompressionBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_limit_and_returns_on_drop() {
        let b = CompressionBudget::new(10);
        let r1 = b.reserve(6).unwrap();
        assert!(b.reserve(5).is_none(), "over the limit");
        let r2 = b.reserve(4).unwrap();
        assert_eq!(b.in_use(), 10);
        drop(r1);
        assert_eq!(b.in_use(), 4);
        assert!(b.reserve(6).is_some());
        drop(r2);
        let unlimited = CompressionBudget::new(0);
        let _big = unlimited.reserve(u64::MAX / 2).unwrap();
        assert!(unlimited.reserve(u64::MAX).is_none(), "no overflow");
        b.set_limit(3);
        assert!(b.reserve(4).is_none());
    }
}
