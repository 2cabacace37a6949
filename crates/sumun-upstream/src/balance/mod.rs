//! Balancers: each a small type behind one trait. A pick sees the endpoints' live state
//! (availability, in-flight requests, slow-start weight) and never locks on the hot path.
//!
//! Availability: a balancer skips endpoints that are unhealthy, ejected or excluded (tried
//! already by this request) unless `PickCtx::panic` is set, in which case only exclusions
//! apply. It returns None when nothing is left.

use std::sync::Arc;

use sumun_config::SlowStart;

use crate::endpoint::EndpointState;

/// What a pick may use besides the endpoints.
#[derive(Debug, Clone, Copy)]
pub struct PickCtx<'a> {
    /// The request's hash key (hashing balancers); None when the key is absent.
    pub hash: Option<u64>,
    /// Pool clock (`Clock::now_ms`).
    pub now_ms: u64,
    /// Endpoint indexes this request already tried.
    pub exclude: &'a [usize],
    /// Every endpoint is unavailable and the upstream is in panic mode: ignore availability.
    pub panic: bool,
    pub slow_start: Option<&'a SlowStart>,
}

impl PickCtx<'_> {
    /// Whether `ep` may be picked now.
    pub fn eligible(&self, ep: &EndpointState) -> bool {
        !self.exclude.contains(&ep.index) && (self.panic || ep.is_available(self.now_ms))
    }
}

pub trait Balancer: Send + Sync {
    /// The index (into `endpoints`) of the endpoint to use, or None when none is eligible.
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize>;
}

mod round_robin;

pub use round_robin::RoundRobin;
