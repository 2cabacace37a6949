//! Edge protection: the layers a route puts in front of its target, in the fixed order
//! ip filter → CORS → authentication (+ passport) → rate limit → idempotency → (cache) →
//! compression. `Policies` holds what routes share (named auth, rate-limit and CORS policies,
//! the passport signer, the Redis connection), built once per Runtime and carried over on
//! reload when unchanged so JWKS caches and rate-limit state survive; `RouteProtect` is one
//! route's compiled stack.

pub mod auth;
pub mod compress;
pub mod cors;
pub mod idempotency;
pub mod ip;
pub mod passport;
pub mod rate_limit;
pub mod redis;

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use sumun_http::Body;
use sumun_http::problem::problem_response;

/// A refusal by a protection layer: its status, a detail safe to show anyone, and the
/// headers the standard asks for (`WWW-Authenticate`, `Retry-After`, `RateLimit`…).
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub detail: Cow<'static, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Short reason for the access log and metrics (`invalid_token`, `rate_limited`…).
    pub reason: &'static str,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Rejection { status, detail: detail.into(), headers: Vec::new(), reason }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The problem+json response.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<Body> {
        let mut res = problem_response(self.status, &self.detail, Some(request_id));
        for (n, v) in self.headers {
            res.headers_mut().append(n, v);
        }
        res
    }
}
