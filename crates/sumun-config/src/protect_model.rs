//! The validated model of the edge-protection settings: `[auth.NAME]`, `[passport]`,
//! `[rate_limit.NAME]`, `[cors.NAME]`, `[redis]` and the per-route `auth`, `require`,
//! `rate_limit`, `cors`, `compress`, `idempotency`, `ip` and `max_body` keys.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::{Cidr, Secret};

/// Where a credential is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A header, lower-case. For `authorization` the value must be `Bearer <token>`
    /// (scheme case-insensitive); any other header carries the credential as is.
    Header(String),
    /// A cookie by name.
    Cookie(String),
    /// A query parameter by name (percent-decoded).
    Query(String),
}

/// `[auth.NAME]`: a policy accepts a JWT, an API key, or either when both are set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    pub name: String,
    pub jwt: Option<JwtAuth>,
    pub api_keys: Option<ApiKeyAuth>,
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// Claims forwarded to the upstream as plain headers: (lower-case header name, claim
    /// name). The client's own copies of these headers are always removed.
    pub forward_claims: Vec<(String, String)>,
}

/// JWT verification. At least one key source is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuth {
    /// A JWKS document fetched over HTTP(S), cached by its `Cache-Control` (clamped to
    /// [`jwks_min_ttl`, `jwks_max_ttl`]), refetched on an unknown `kid` at most once per
    /// `jwks_min_refresh`; the last good key set is kept while the IdP is down.
    pub jwks_url: Option<String>,
    /// PEM public keys (RSA, EC, Ed25519) or JWKS JSON files, read at load.
    pub key_files: Vec<PathBuf>,
    /// The HMAC secret for HS256/384/512.
    pub secret: Option<Secret>,
    /// Accepted `alg` values, upper-case (`RS256`, `ES256`, `EdDSA`…); never `none`.
    /// Default: every asymmetric algorithm the keys allow, plus HS* when `secret` is set.
    pub algorithms: Vec<String>,
    /// Accepted `iss` values; empty = not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (any one matches); empty = not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Where the token is looked for, in order. Default: `Authorization: Bearer`.
    pub sources: Vec<CredentialSource>,
    /// The claim holding the scopes: a space-separated string or an array. Default `scope`
    /// (also reads `scp` when `scope` is absent).
    pub scope_claim: String,
    pub jwks_min_refresh: Duration,
    pub jwks_min_ttl: Duration,
    pub jwks_max_ttl: Duration,
    /// Timeout of one JWKS fetch.
    pub jwks_timeout: Duration,
}

/// API keys, stored as SHA-256 digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    /// Default: header `x-api-key`.
    pub sources: Vec<CredentialSource>,
    pub keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's name: the identity's `sub` (`apikey:NAME`) and what logs show.
    pub name: String,
    /// SHA-256 of the key as sent by clients.
    pub sha256: [u8; 32],
    pub scopes: Vec<String>,
}

/// A route's `auth = "NAME"` and `require = { scopes, claims }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteAuth {
    pub policy: String,
    /// Every listed scope must be granted (403 `insufficient_scope` otherwise).
    pub scopes: Vec<String>,
    /// Each claim must equal the value, or, for an array claim, contain it.
    pub claims: Vec<(String, String)>,
}

/// `[passport]`: the identity token sumun hands to services after authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct Passport {
    /// Ed25519 private key, PKCS#8 PEM (`sumun passport keygen`). None: a key is generated
    /// at start (and services must fetch the JWKS again after every restart).
    pub signing_key: Option<Secret>,
    /// Lower-case header name; always stripped from client requests.
    pub header: String,
    pub ttl: Duration,
    pub issuer: String,
    /// `aud` of the passport; None = not set.
    pub audience: Option<String>,
    /// true: every request gets its own passport carrying its request id (`rid`) and a
    /// unique `jti` (one signature per request). false: a passport is signed once per
    /// verified credential and reused for up to half its `ttl`, without `rid`.
    pub bind_request: bool,
}

impl Default for Passport {
    fn default() -> Self {
        Passport {
            signing_key: None,
            header: "x-sumun-passport".into(),
            ttl: Duration::from_secs(60),
            issuer: "sumun".into(),
            audience: None,
            bind_request: false,
        }
    }
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (the Forwarded/X-Forwarded-For client on a trusting listener).
    ClientIp,
    /// A request header, lower-case; requests without it share one bucket.
    Header(String),
    /// A claim of the authenticated identity; requests without it share one bucket.
    JwtClaim(String),
    /// The API key's name (or the JWT subject): the authenticated identity.
    ApiKey,
    /// One bucket for the whole route.
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateStore {
    Local,
    Redis,
}

/// `[rate_limit.NAME]`: GCRA with `rate` requests per `per` and `burst` on top.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    pub name: String,
    pub key: RateKey,
    /// Requests allowed per `per` in the long run.
    pub requests: u32,
    pub per: Duration,
    /// How many requests may arrive at once (the bucket size). Default: `requests`.
    pub burst: u32,
    pub store: RateStore,
    /// With `store = "redis"` when Redis cannot be reached: true = let requests through
    /// (logged and counted); false = fall back to a per-instance local limit.
    pub fail_open: bool,
    /// `key = "client_ip"`: IPv6 clients are counted by this many leading bits of their
    /// address (64 by default: one host or one customer's network, which hands its machines
    /// whole /64s; counting single addresses would let one of them rotate around the limit).
    pub ipv6_prefix: u8,
}

/// The default `ipv6_prefix`.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// `[compression]`: what all compressing routes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// Memory the response encoders of all routes may hold at once; a response that would
    /// need more goes out uncompressed. 0: no limit.
    pub max_memory: u64,
}

impl Default for Compression {
    fn default() -> Self {
        Compression { max_memory: 512 << 20 }
    }
}

/// `[redis]`: the shared Redis/Valkey for global rate limits and idempotency records.
#[derive(Debug, Clone, PartialEq)]
pub struct Redis {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://…` or `redis+unix:///path`.
    pub url: Secret,
    /// One command's deadline; on expiry the caller takes its fallback.
    pub timeout: Duration,
    /// How long to wait before trying a failed connection again.
    pub retry_after: Duration,
}

/// `[cors.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    pub name: String,
    pub origins: Vec<CorsOrigin>,
    /// Upper-case; default GET, HEAD, POST.
    pub methods: Vec<String>,
    /// Lower-case request headers allowed in preflights; `["*"]` = any (not with credentials:
    /// then the requested list is echoed).
    pub headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigin {
    /// `*`: any origin, answered `Access-Control-Allow-Origin: *`. Refused at load next to
    /// `credentials = true`.
    Any,
    /// An exact origin, lower-case scheme and host, e.g. `https://app.example.com`.
    Exact(String),
    /// `https://*.example.com`: scheme, and one or more labels before `.example.com`;
    /// `port` None = the scheme's default port only.
    Wildcard { scheme: String, suffix: String, port: Option<u16> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Brotli,
    Gzip,
}

/// A route's `compress = true | { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Compress {
    /// In server preference order, used to break q-value ties. Default zstd, br, gzip.
    pub algorithms: Vec<Encoding>,
    /// Bodies known to be smaller are sent as they are.
    pub min_size: u64,
    /// Content types compressed: exact `type/subtype` or `type/*`. Default: text/*, JSON,
    /// JavaScript, XML, SVG, wasm and other text-like types.
    pub content_types: Vec<String>,
    /// Decode `Content-Encoding` request bodies for the upstream.
    pub decompress_requests: bool,
    /// Zip-bomb guard for request decoding: decoded bytes / encoded bytes.
    pub max_ratio: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyStore {
    Memory,
    Redis,
}

/// A route's `idempotency = { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    /// Lower-case; default `idempotency-key`.
    pub header: String,
    pub ttl: Duration,
    pub store: IdempotencyStore,
    /// Responses with larger bodies are not stored (the key is released).
    pub max_body: u64,
    /// Upper-case; default POST, PATCH.
    pub methods: Vec<String>,
    /// Memory store: the most keys kept.
    pub max_keys: u64,
}

/// A route's `ip = { allow = [...], deny = [...] }`: deny wins; a non-empty allow list
/// admits only its networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

/// Everything a route adds in front of its target, in the fixed order
/// ip → cors → auth → rate limit → idempotency → cache → compression.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteProtection {
    pub ip: Option<IpFilter>,
    pub cors: Option<String>,
    pub auth: Option<RouteAuth>,
    pub rate_limit: Option<String>,
    pub idempotency: Option<Idempotency>,
    pub compress: Option<Compress>,
    /// Overrides the listener's `max_body_bytes` for this route.
    pub max_body: Option<u64>,
}
