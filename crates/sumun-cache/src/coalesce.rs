//! Request coalescing: one fill (or revalidation) per primary key at a time. The first
//! request leads; later ones wait on a watch channel for the outcome, bounded by the route's
//! `coalesce_timeout`. A leader that drops its guard without storing (error, uncacheable
//! response, client gone before the fill could continue) releases the waiters at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    Pending,
    /// The response was stored: look again.
    Stored,
    /// Nothing was stored: go upstream yourself.
    Released,
}

#[derive(Default)]
pub struct Inflight {
    map: Mutex<HashMap<u128, watch::Receiver<FillState>>>,
}

pub enum Join {
    Leader(FillGuard),
    Waiter(Waiter),
}

pub struct Waiter {
    rx: watch::Receiver<FillState>,
}

impl Waiter {
    /// Waits for the leader's outcome; None when `timeout` passed first.
    pub async fn wait(mut self, timeout: Duration) -> Option<FillState> {
        match tokio::time::timeout(timeout, self.rx.wait_for(|s| *s != FillState::Pending)).await {
            Ok(Ok(s)) => Some(*s),
            // The sender went away without a word: treat as released.
            Ok(Err(_)) => Some(FillState::Released),
            Err(_) => None,
        }
    }
}

impl Inflight {
    /// Leads the fill for `key`, or waits for the one in progress.
    pub fn join(self: &Arc<Self>, key: u128) -> Join {
        let Ok(mut map) = self.map.lock() else {
            // A poisoned lock: don't coalesce, but don't fail the request either.
            let (tx, _) = watch::channel(FillState::Pending);
            return Join::Leader(FillGuard { key, tx, inflight: None });
        };
        if let Some(rx) = map.get(&key)
            && *rx.borrow() == FillState::Pending
        {
            return Join::Waiter(Waiter { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        map.insert(key, rx);
        Join::Leader(FillGuard { key, tx, inflight: Some(self.clone()) })
    }

    /// Leads only if nobody else is filling `key` (background refresh).
    pub fn try_lead(self: &Arc<Self>, key: u128) -> Option<FillGuard> {
        match self.join(key) {
            Join::Leader(g) => Some(g),
            Join::Waiter(_) => None,
        }
    }

    pub fn in_progress(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The leader's handle: say `stored()` after the store has the response; dropping it
/// otherwise releases the waiters.
pub struct FillGuard {
    key: u128,
    tx: watch::Sender<FillState>,
    inflight: Option<Arc<Inflight>>,
}

impl FillGuard {
    pub fn stored(self) {
        self.finish(FillState::Stored);
    }

    pub fn release(self) {
        self.finish(FillState::Released);
    }

    fn finish(&self, state: FillState) {
        if *self.tx.borrow() != FillState::Pending {
            return;
        }
        if let Some(inflight) = &self.inflight
            && let Ok(mut map) = inflight.map.lock()
            && map.get(&self.key).is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
        self.tx.send_replace(state);
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.finish(FillState::Released);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_many_waiters() {
        let inflight = Arc::new(Inflight::default());
        let Join::Leader(guard) = inflight.join(7) else { panic!("first must lead") };
        let waiters: Vec<Waiter> = (0..10)
            .map(|_| match inflight.join(7) {
                Join::Waiter(w) => w,
                Join::Leader(_) => panic!("second must wait"),
            })
            .collect();
        assert!(matches!(inflight.join(8), Join::Leader(_)), "other keys are independent");
        guard.stored();
        for w in waiters {
            assert_eq!(w.wait(Duration::from_secs(1)).await, Some(FillState::Stored));
        }
        assert!(matches!(inflight.join(7), Join::Leader(_)), "a finished fill leaves the map");
    }

    #[tokio::test]
    async fn dropping_the_guard_releases_and_waiting_is_bounded() {
        let inflight = Arc::new(Inflight::default());
        let Join::Leader(guard) = inflight.join(1) else { panic!() };
        let Join::Waiter(w) = inflight.join(1) else { panic!() };
        let Join::Waiter(slow) = inflight.join(1) else { panic!() };
        assert_eq!(slow.wait(Duration::from_millis(10)).await, None);
        drop(guard);
        assert_eq!(w.wait(Duration::from_secs(1)).await, Some(FillState::Released));
        assert_eq!(inflight.in_progress(), 0);
    }
}
