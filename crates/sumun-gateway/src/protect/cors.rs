//! CORS at the edge. PLACEHOLDER: owned by the CORS helper, replaced wholesale.

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response};
use sumun_config::CorsPolicy;
use sumun_http::Body;

pub struct Cors {
    #[allow(dead_code)]
    policy: CorsPolicy,
}

impl Cors {
    pub fn compile(policy: &CorsPolicy) -> Self {
        Cors { policy: policy.clone() }
    }

    /// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) gets its whole
    /// answer here and is never forwarded. None: not a preflight.
    pub fn preflight(&self, _method: &Method, _headers: &HeaderMap) -> Option<Response<Body>> {
        None
    }

    /// Adds the CORS headers of an actual (non-preflight) request's response; `origin` is
    /// the request's `Origin`.
    pub fn apply(&self, _origin: Option<&HeaderValue>, _headers: &mut HeaderMap) {}
}
