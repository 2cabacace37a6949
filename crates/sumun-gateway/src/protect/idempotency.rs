//! Idempotency keys. PLACEHOLDER: owned by the idempotency helper, replaced wholesale.

use http::Response;
use http::request::Parts;
use sumun_http::Body;

use super::Rejection;
use super::auth::Identity;
use super::redis::Redis;

pub struct Idempotency {}

/// What to do with a request.
pub enum Begin {
    /// Not subject to idempotency (method not covered, no key): go on with the body.
    Skip(Body),
    /// First time for this key: run it, then hand the response to `Pending::finish`.
    Proceed(Body, Pending),
    /// A completed earlier request with the same key and fingerprint: its response.
    Replay(Response<Body>),
}

pub struct Pending {}

impl Idempotency {
    pub fn new(_cfg: &sumun_config::Idempotency, _route: &str, _redis: Option<Redis>) -> Self {
        Idempotency {}
    }

    pub async fn begin(
        &self,
        _parts: &Parts,
        body: Body,
        _identity: Option<&Identity>,
    ) -> Result<Begin, Rejection> {
        Ok(Begin::Skip(body))
    }
}

impl Pending {
    /// Records the response as it streams to the client; dropping `Pending` without calling
    /// this releases the key.
    pub fn finish(self, res: Response<Body>) -> Response<Body> {
        res
    }
}
