//! Rate limiting. PLACEHOLDER: owned by the rate-limit helper, replaced wholesale.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use sumun_config::RateLimitPolicy;

use super::Rejection;
use super::auth::Identity;
use super::redis::Redis;

/// What a limit can key on.
pub struct RateInput<'a> {
    /// The client address (trusted Forwarded/X-Forwarded-For applied).
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
    pub identity: Option<&'a Identity>,
    pub route: &'a str,
}

pub struct Limiter {
    #[allow(dead_code)]
    policy: RateLimitPolicy,
}

impl Limiter {
    /// `previous`: the running limiter of the same name, whose state is kept when the policy
    /// did not change.
    pub fn new(policy: &RateLimitPolicy, _redis: Option<Redis>, _previous: Option<&Limiter>) -> Self {
        Limiter { policy: policy.clone() }
    }

    /// Ok: the headers to add to the response (`RateLimit`, `RateLimit-Policy`); Err: 429.
    pub async fn check(&self, _input: &RateInput<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        Ok(Vec::new())
    }
}
