//! Authentication. PLACEHOLDER: owned by the auth helper, replaced wholesale.

use http::header::{HeaderMap, HeaderName};
use http::request::Parts;
use sumun_config::{AuthPolicy, RouteAuth};

use super::Rejection;

/// Who the request is, after authentication.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `[auth.NAME]` policy that authenticated the request.
    pub policy: std::sync::Arc<str>,
    /// JWT `sub`, or `apikey:NAME` for an API key.
    pub subject: String,
    pub scopes: Vec<String>,
    /// The verified JWT claims (empty for an API key).
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub issuer: Option<String>,
    pub jti: Option<String>,
    /// The API key's name when an API key authenticated the request.
    pub api_key: Option<String>,
}

pub struct Authenticator {
    #[allow(dead_code)]
    policy: AuthPolicy,
}

impl Authenticator {
    pub fn new(policy: &AuthPolicy) -> Result<Self, String> {
        Ok(Authenticator { policy: policy.clone() })
    }

    /// Whether this authenticator was built from exactly this policy (reload keeps it, and
    /// its JWKS cache, when nothing changed).
    pub fn same_policy(&self, _policy: &AuthPolicy) -> bool {
        false
    }

    pub async fn authenticate(&self, _parts: &Parts) -> Result<Identity, Rejection> {
        Err(Rejection::new(http::StatusCode::UNAUTHORIZED, "missing_token", "authentication is required"))
    }

    /// The route's `require`: scopes and claims.
    pub fn authorize(&self, _id: &Identity, _require: &RouteAuth) -> Result<(), Rejection> {
        Ok(())
    }

    /// Headers this policy fills from claims (`forward_claims`); removed from every request
    /// before authentication so a client cannot forge them.
    pub fn claim_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// Sets the `forward_claims` headers from the identity.
    pub fn forward_claims(&self, _id: &Identity, _headers: &mut HeaderMap) {}
}
