//! The identity passport. PLACEHOLDER: owned by the auth helper, replaced wholesale.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use super::auth::Identity;

pub struct Passport {
    header: HeaderName,
}

impl Passport {
    /// `previous`: the running passport, whose generated key is kept when no key is configured.
    pub fn new(cfg: &sumun_config::Passport, _previous: Option<&Passport>) -> Result<Self, String> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Passport { header })
    }

    /// The header that carries the passport; stripped from every client request.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// A signed passport for this identity.
    pub fn issue(&self, _id: &Identity, _request_id: &HeaderValue) -> Option<HeaderValue> {
        None
    }

    /// The public keys as a JWKS document (`GET /v1/passport/jwks.json`).
    pub fn jwks(&self) -> Bytes {
        Bytes::from_static(b"{\"keys\":[]}")
    }
}
