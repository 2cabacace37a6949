//! Authentication offload: an `[auth.NAME]` policy verifies a JWT (HMAC secret, PEM/JWKS
//! files, or a JWKS URL kept fresh in the background, see [`jwks`]) or an API key (SHA-256
//! digests compared in constant time), turns it into an [`Identity`], checks a route's
//! `require` (scopes, claims) and fills the `forward_claims` headers. Refusals follow RFC 6750
//! §3: 401 with a `WWW-Authenticate` challenge, 403 `insufficient_scope`, and 503 with
//! `Retry-After` while a JWKS was never obtained. Every refusal is counted by reason in
//! `sumun_auth_failures_total{policy,reason}`; successes in `sumun_auth_success_total{policy}`.
//!
//! A verified JWT is kept in the policy's [`cache`] until its `exp`, so the signature of a
//! token is verified once, not on every request; `sumun_auth_token_cache_total{policy,result}`
//! counts lookups that found a verdict (`hit`) or led to a verification (`miss`). What a
//! request is given, an [`Authenticated`], is shared by every request of the same credential:
//! the identity, its `forward_claims` values and its reusable passport.

mod api_key;
mod cache;
mod jwks;
mod jwt;

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use metrics::Counter;
use serde_json::{Map, Value};
use sumun_config::{AuthPolicy, CredentialSource, RouteAuth};

use super::Rejection;
use super::passport::PassportSlot;
use api_key::ApiKeys;
use cache::{Lookup, TokenCache};
pub(crate) use jwks::sha256;
use jwt::JwtVerifier;

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

/// An authenticated credential, shared (cheap to clone) by every request that presents it
/// while it is cached: who it is, the values of the policy's `forward_claims` headers, and the
/// passport kept for it (`[passport] bind_request = false`).
#[derive(Clone)]
pub struct Authenticated(Arc<Credential>);

struct Credential {
    identity: Identity,
    /// The `forward_claims` headers that have a value for this identity.
    forward: Vec<(HeaderName, HeaderValue)>,
    passport: PassportSlot,
}

impl Authenticated {
    pub fn identity(&self) -> &Identity {
        &self.0.identity
    }

    /// Where the passport of this credential is kept between requests.
    pub fn passport(&self) -> &PassportSlot {
        &self.0.passport
    }
}

impl Deref for Authenticated {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.0.identity
    }
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.identity.fmt(f)
    }
}

/// Why a request was refused: the `reason` label of `sumun_auth_failures_total` and of the
/// rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    MissingToken,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnknownKey,
    BadApiKey,
    InsufficientScope,
    ClaimMismatch,
    KeysUnavailable,
}

impl Failure {
    const ALL: [Failure; 12] = [
        Failure::MissingToken,
        Failure::Malformed,
        Failure::BadSignature,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::WrongIssuer,
        Failure::WrongAudience,
        Failure::UnknownKey,
        Failure::BadApiKey,
        Failure::InsufficientScope,
        Failure::ClaimMismatch,
        Failure::KeysUnavailable,
    ];

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Failure::MissingToken => "missing_token",
            Failure::Malformed => "malformed",
            Failure::BadSignature => "bad_signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::WrongIssuer => "wrong_issuer",
            Failure::WrongAudience => "wrong_audience",
            Failure::UnknownKey => "unknown_key",
            Failure::BadApiKey => "bad_api_key",
            Failure::InsufficientScope => "insufficient_scope",
            Failure::ClaimMismatch => "claim_mismatch",
            Failure::KeysUnavailable => "keys_unavailable",
        }
    }

    /// Safe to show anyone: the problem+json `detail` and the `error_description`
    /// (RFC 6750 restricts it to printable ASCII without `"` and `\`).
    fn detail(self) -> &'static str {
        match self {
            Failure::MissingToken => "authentication is required",
            Failure::Malformed => "the token is malformed",
            Failure::BadSignature => "the token signature is invalid",
            Failure::Expired => "the token has expired",
            Failure::NotYetValid => "the token is not valid yet",
            Failure::WrongIssuer => "the token issuer is not accepted",
            Failure::WrongAudience => "the token audience is not accepted",
            Failure::UnknownKey => "the token signing key is unknown",
            Failure::BadApiKey => "the API key is invalid",
            Failure::InsufficientScope => "the token lacks a required scope",
            Failure::ClaimMismatch => "the identity does not meet this route's requirements",
            Failure::KeysUnavailable => "the signing keys are not available yet; retry shortly",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Failure::InsufficientScope | Failure::ClaimMismatch => StatusCode::FORBIDDEN,
            Failure::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn index(self) -> usize {
        Failure::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// A failure and, for `keys_unavailable`, when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denial {
    pub kind: Failure,
    pub retry_after: Option<Duration>,
}

impl From<Failure> for Denial {
    fn from(kind: Failure) -> Self {
        Denial { kind, retry_after: None }
    }
}

/// The challenge scheme of `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    ApiKey,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
        }
    }
}

/// Metric handles, resolved once per policy.
struct AuthMetrics {
    success: Counter,
    failures: [Counter; 12],
    cache_hit: Counter,
    cache_miss: Counter,
}

impl AuthMetrics {
    fn new(policy: &str) -> Self {
        let policy = policy.to_owned();
        AuthMetrics {
            success: metrics::counter!("sumun_auth_success_total", "policy" => policy.clone()),
            cache_hit: metrics::counter!("sumun_auth_token_cache_total", "policy" => policy.clone(), "result" => "hit"),
            cache_miss: metrics::counter!("sumun_auth_token_cache_total", "policy" => policy.clone(), "result" => "miss"),
            failures: Failure::ALL.map(|f| {
                metrics::counter!("sumun_auth_failures_total", "policy" => policy.clone(), "reason" => f.reason())
            }),
        }
    }

    fn fail(&self, f: Failure) {
        self.failures[f.index()].increment(1);
    }
}

/// The longest credential looked at; anything longer is refused unread.
const MAX_CREDENTIAL_LEN: usize = 16 * 1024;
/// The longest claim value forwarded as a header.
const MAX_FORWARD_VALUE_LEN: usize = 4096;

pub struct Authenticator {
    policy: AuthPolicy,
    name: Arc<str>,
    jwt: Option<JwtVerifier>,
    /// Verified and refused JWTs (with `jwt`).
    tokens: TokenCache,
    api_keys: Option<ApiKeys>,
    /// One credential per API key, in the order of `api_keys`.
    api_key_credentials: Vec<Authenticated>,
    /// `forward_claims`: (header, claim).
    forward: Vec<(HeaderName, String)>,
    claim_headers: Vec<HeaderName>,
    /// The realm as a quoted-string body (escaped).
    realm: String,
    /// SHA-256 of each key file's content at build: a reload that keeps the policy text but
    /// changes a key file builds a new authenticator.
    key_files: Vec<[u8; 32]>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("policy", &self.policy.name).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the policy: reads key files, checks algorithms and the JWKS URL, and (inside a
    /// tokio runtime) starts fetching the JWKS in the background. Errors name what is wrong.
    pub fn new(policy: &AuthPolicy) -> Result<Self, String> {
        let name: Arc<str> = Arc::from(policy.name.as_str());
        if policy.jwt.is_none() && policy.api_keys.is_none() {
            return Err("accepts neither a JWT nor an API key".into());
        }
        let jwt = match &policy.jwt {
            Some(cfg) => Some(JwtVerifier::new(cfg, &name)?),
            None => None,
        };
        let api_keys = policy.api_keys.as_ref().map(ApiKeys::new);
        let mut forward = Vec::with_capacity(policy.forward_claims.len());
        for (h, claim) in &policy.forward_claims {
            let header = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("`{h}` is not a valid header name"))?;
            forward.push((header, claim.clone()));
        }
        let claim_headers = forward.iter().map(|(h, _)| h.clone()).collect();
        let api_key_identities: Vec<Identity> = api_keys
            .as_ref()
            .map(|keys: &ApiKeys| {
                keys.keys()
                    .iter()
                    .map(|k| Identity {
                        policy: name.clone(),
                        subject: format!("apikey:{}", k.name),
                        scopes: k.scopes.clone(),
                        claims: Map::new(),
                        issuer: None,
                        jti: None,
                        api_key: Some(k.name.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let api_key_credentials = api_key_identities.into_iter().map(|id| credential(&forward, id)).collect();
        let key_files = match &policy.jwt {
            Some(cfg) => cfg
                .key_files
                .iter()
                .map(|p| jwks::read_key_file(p).map(|b| jwks::sha256(&b)))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(Authenticator {
            metrics: AuthMetrics::new(&policy.name),
            realm: quote_escape(&policy.realm),
            policy: policy.clone(),
            name,
            jwt,
            tokens: TokenCache::new(),
            api_keys,
            api_key_credentials,
            forward,
            claim_headers,
            key_files,
        })
    }

    /// Whether this authenticator was built from exactly this policy (reload keeps it, and
    /// its JWKS cache, when nothing changed): the same settings and the same key file
    /// contents.
    pub fn same_policy(&self, policy: &AuthPolicy) -> bool {
        if self.policy != *policy {
            return false;
        }
        let files = policy.jwt.as_ref().map(|j| j.key_files.as_slice()).unwrap_or_default();
        files.len() == self.key_files.len()
            && files.iter().zip(&self.key_files).all(|(p, digest)| {
                jwks::read_key_file(p).map(|b| jwks::sha256(&b) == *digest).unwrap_or(false)
            })
    }

    /// Finds and verifies the request's credential: a JWT from the `jwt.from` sources first,
    /// then an API key from the `api_keys.from` sources.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Authenticated, Rejection> {
        match self.identify(parts).await {
            Ok(id) => {
                self.metrics.success.increment(1);
                Ok(id)
            }
            Err((denial, scheme)) => {
                self.metrics.fail(denial.kind);
                Err(self.reject(denial, scheme, None))
            }
        }
    }

    async fn identify(&self, parts: &Parts) -> Result<Authenticated, (Denial, Option<Scheme>)> {
        if let Some(jwt) = &self.jwt
            && let Some(token) = find_credential(jwt.sources(), parts)
        {
            // With both kinds accepted, a bearer value that is not JWT-shaped may be an API key.
            if self.api_keys.is_none() || looks_like_jwt(&token) {
                return self.verify_jwt(jwt, &token).await.map_err(|d| (d, Some(Scheme::Bearer)));
            }
        }
        if let Some(keys) = &self.api_keys
            && let Some(key) = find_credential(keys.sources(), parts)
        {
            return match keys.verify(key.as_bytes()).and_then(|i| self.api_key_credentials.get(i)) {
                Some(c) => Ok(c.clone()),
                None => Err((Failure::BadApiKey.into(), Some(Scheme::ApiKey))),
            };
        }
        Err((Failure::MissingToken.into(), None))
    }

    /// The token's verdict from the cache, or from a verification (then cached).
    async fn verify_jwt(&self, jwt: &JwtVerifier, token: &str) -> Result<Authenticated, Denial> {
        // Read before verifying: never newer than the key set the verification uses.
        let keys = jwt.key_generation();
        match self.tokens.get(token, keys, unix_now()) {
            Lookup::Accepted(c) => {
                self.metrics.cache_hit.increment(1);
                return Ok(c);
            }
            Lookup::Refused(f) => {
                self.metrics.cache_hit.increment(1);
                return Err(f.into());
            }
            Lookup::Unknown => self.metrics.cache_miss.increment(1),
        }
        match jwt.verify(token).await {
            Ok(claims) => {
                let c = credential(&self.forward, self.jwt_identity(jwt, claims));
                self.tokens.accept(token, &c, keys, unix_now());
                Ok(c)
            }
            Err(d) => {
                self.tokens.refuse(token, d.kind, keys);
                Err(d)
            }
        }
    }

    fn jwt_identity(&self, jwt: &JwtVerifier, claims: Map<String, Value>) -> Identity {
        let text = |name: &str| match claims.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Identity {
            policy: self.name.clone(),
            subject: text("sub").unwrap_or_default(),
            scopes: scopes_of(&claims, jwt.scope_claim()),
            issuer: text("iss"),
            jti: text("jti"),
            api_key: None,
            claims,
        }
    }

    /// The route's `require`: scopes and claims.
    pub fn authorize(&self, id: &Identity, require: &RouteAuth) -> Result<(), Rejection> {
        let scheme = if id.api_key.is_some() { Scheme::ApiKey } else { Scheme::Bearer };
        if !require.scopes.iter().all(|s| id.scopes.iter().any(|g| g == s)) {
            self.metrics.fail(Failure::InsufficientScope);
            let scope = require.scopes.join(" ");
            return Err(self.reject(Failure::InsufficientScope.into(), Some(scheme), Some(&scope)));
        }
        if !require.claims.iter().all(|(name, want)| claim_matches(id, name, want)) {
            self.metrics.fail(Failure::ClaimMismatch);
            return Err(self.reject(Failure::ClaimMismatch.into(), Some(scheme), None));
        }
        Ok(())
    }

    /// Headers this policy fills from claims (`forward_claims`); removed from every request
    /// before authentication so a client cannot forge them.
    pub fn claim_headers(&self) -> &[HeaderName] {
        &self.claim_headers
    }

    /// Sets the `forward_claims` headers of a credential this policy authenticated. A claim
    /// that is absent, an object, or holds control characters is not forwarded (and any copy
    /// is removed); arrays of scalars are joined with `,`.
    pub fn forward_claims(&self, c: &Authenticated, headers: &mut HeaderMap) {
        for (header, _) in &self.forward {
            headers.remove(header);
        }
        for (header, value) in &c.0.forward {
            headers.insert(header.clone(), value.clone());
        }
    }

    /// The rejection: problem detail, challenge and `Retry-After`.
    fn reject(&self, d: Denial, scheme: Option<Scheme>, scope: Option<&str>) -> Rejection {
        let f = d.kind;
        let mut r = Rejection::new(f.status(), f.reason(), f.detail());
        match f {
            Failure::MissingToken => {
                // RFC 6750 §3.1: no error code when the request carried no credentials.
                for s in self.schemes() {
                    if let Ok(v) = HeaderValue::from_str(&format!("{} realm=\"{}\"", s.name(), self.realm)) {
                        r = r.with_header(header::WWW_AUTHENTICATE, v);
                    }
                }
            }
            Failure::KeysUnavailable => {
                let secs = d.retry_after.map_or(1, |t| t.as_secs_f64().ceil().max(1.0) as u64);
                r = r.with_header(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Failure::ClaimMismatch => {}
            Failure::InsufficientScope => {
                let s = scheme.unwrap_or(Scheme::Bearer);
                let mut v = format!(
                    "{} realm=\"{}\", error=\"insufficient_scope\", error_description=\"{}\"",
                    s.name(),
                    self.realm,
                    f.detail()
                );
                if let Some(scope) = scope {
                    v.push_str(&format!(", scope=\"{}\"", quote_escape(scope)));
                }
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r = r.with_header(header::WWW_AUTHENTICATE, v);
                }
            }
            _ => {
                let s = scheme.unwrap_or(Scheme::Bearer);
                let v = format!(
                    "{} realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                    s.name(),
                    self.realm,
                    f.detail()
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r = r.with_header(header::WWW_AUTHENTICATE, v);
                }
            }
        }
        r
    }

    fn schemes(&self) -> impl Iterator<Item = Scheme> {
        self.jwt
            .as_ref()
            .map(|_| Scheme::Bearer)
            .into_iter()
            .chain(self.api_keys.as_ref().map(|_| Scheme::ApiKey))
    }
}

/// A credential for `identity`, its `forward_claims` values computed once.
fn credential(forward: &[(HeaderName, String)], identity: Identity) -> Authenticated {
    let forward = forward
        .iter()
        .filter_map(|(header, claim)| Some((header.clone(), forward_value(&identity, claim)?)))
        .collect();
    Authenticated(Arc::new(Credential { identity, forward, passport: PassportSlot::default() }))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Three base64url segments: the shape of a JWS compact serialization.
fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// Escapes a value for a quoted-string (RFC 9110 §5.6.4); control characters are dropped.
fn quote_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The first non-empty credential found in `sources`, in order.
fn find_credential<'a>(sources: &[CredentialSource], parts: &'a Parts) -> Option<Cow<'a, str>> {
    sources.iter().find_map(|s| match s {
        CredentialSource::Header(name) => from_header(parts, name).map(Cow::Borrowed),
        CredentialSource::Cookie(name) => from_cookie(parts, name).map(Cow::Borrowed),
        CredentialSource::Query(name) => from_query(parts, name),
    })
}

fn from_header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    let raw = parts.headers.get(name)?.to_str().ok()?.trim();
    let value = if name.eq_ignore_ascii_case("authorization") {
        // `Bearer <token>`; any other scheme is not ours to read.
        let (scheme, rest) = raw.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        rest.trim()
    } else {
        raw
    };
    (!value.is_empty() && value.len() <= MAX_CREDENTIAL_LEN).then_some(value)
}

fn from_cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            if k.trim() != name {
                return None;
            }
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            (!v.is_empty() && v.len() <= MAX_CREDENTIAL_LEN).then_some(v)
        })
    })
}

fn from_query<'a>(parts: &'a Parts, name: &str) -> Option<Cow<'a, str>> {
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name || v.is_empty() || v.len() > MAX_CREDENTIAL_LEN * 3 {
            return None;
        }
        let v = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
        (!v.is_empty() && v.len() <= MAX_CREDENTIAL_LEN).then_some(v)
    })
}

/// Scopes from `claim` (a space-separated string or an array of strings); with the default
/// `scope` claim absent, `scp` is read too.
fn scopes_of(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    let v = claims.get(claim).or_else(|| if claim == "scope" { claims.get("scp") } else { None });
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A claim's value for `require.claims`, `forward_claims` and rate-limit keys: the verified
/// claim, or for an API key its subject (`sub`) and scopes (`scope`).
fn claim_of<'a>(id: &'a Identity, name: &str) -> Option<Cow<'a, Value>> {
    if let Some(v) = id.claims.get(name) {
        return Some(Cow::Borrowed(v));
    }
    if id.api_key.is_some() {
        return match name {
            "sub" => Some(Cow::Owned(Value::String(id.subject.clone()))),
            "scope" => Some(Cow::Owned(Value::String(id.scopes.join(" ")))),
            _ => None,
        };
    }
    None
}

/// A scalar as text: strings as they are, numbers and booleans printed.
fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// The claim equals `want`, or, for an array claim, contains it.
fn claim_matches(id: &Identity, name: &str, want: &str) -> bool {
    match claim_of(id, name).as_deref() {
        Some(Value::Array(items)) => items.iter().any(|v| scalar_text(v).is_some_and(|t| t == want)),
        Some(v) => scalar_text(v).is_some_and(|t| t == want),
        None => false,
    }
}

/// The header value for a forwarded claim, or None when it cannot be represented safely.
fn forward_value(id: &Identity, claim: &str) -> Option<HeaderValue> {
    let text: Cow<'_, str> = match claim_of(id, claim)?.as_ref() {
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for v in items {
                parts.push(scalar_text(v)?.into_owned());
            }
            Cow::Owned(parts.join(","))
        }
        v => Cow::Owned(scalar_text(v)?.into_owned()),
    };
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_FORWARD_VALUE_LEN || text.chars().any(char::is_control) {
        return None;
    }
    HeaderValue::from_str(text).ok()
}

#[cfg(test)]
mod tests;
