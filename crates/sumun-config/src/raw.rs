//! The file as written: a serde model that keeps the span of every value validated later.
//! Every table denies unknown keys; every key is optional here so that missing keys are
//! reported by validation, with context, rather than by serde.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawConfig {
    pub data_dir: Option<S<String>>,
    pub via: Option<S<String>>,
    pub shutdown_grace: Option<S<String>>,
    pub access_log: Option<S<String>>,
    pub admin: Option<S<RawAdmin>>,
    pub listener: Option<S<Entries<S<RawListener>>>>,
    pub upstream: Option<S<Entries<S<RawUpstream>>>>,
    pub route: Option<Vec<S<RawRoute>>>,
    pub forward_proxy: Option<S<RawForwardProxy>>,
    pub auth: Option<S<Entries<S<RawAuth>>>>,
    pub passport: Option<S<RawPassport>>,
    pub rate_limit: Option<S<Entries<S<RawRateLimit>>>>,
    pub cors: Option<S<Entries<S<RawCors>>>>,
    pub redis: Option<S<RawRedis>>,
    pub cache: Option<S<RawCacheStore>>,
    pub compression: Option<S<RawCompression>>,
    pub topic: Option<S<Entries<S<crate::bus::RawTopic>>>>,
    pub subscription: Option<S<Entries<S<crate::bus::RawSubscription>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAdmin {
    pub bind: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawListener {
    pub bind: Option<S<String>>,
    pub tls: Option<S<RawTls>>,
    pub trust_forwarded: Option<S<bool>>,
    pub forward_proxy: Option<S<bool>>,
    pub limits: Option<S<RawLimits>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawTls {
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawLimits {
    pub max_connections: Option<S<i64>>,
    pub header_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<RawSize>>,
    pub max_body_bytes: Option<S<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawUpstream {
    pub endpoints: Option<S<Vec<S<RawEndpoint>>>>,
    pub balance: Option<S<String>>,
    pub hash_key: Option<S<String>>,
    pub sticky: Option<S<RawSticky>>,
    pub slow_start: Option<S<RawSlowStart>>,
    pub health: Option<S<RawHealth>>,
    pub all_unavailable: Option<S<String>>,
    pub outlier: Option<S<RawOutlier>>,
    pub retry: Option<S<RawRetry>>,
    pub breaker: Option<S<RawBreaker>>,
    pub protocol: Option<S<String>>,
    pub timeouts: Option<S<RawUpstreamTimeouts>>,
    pub pool: Option<S<RawPool>>,
    pub tcp_keepalive: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSticky {
    pub cookie: Option<S<String>>,
    pub ttl: Option<S<String>>,
}

/// `"30s"` or `{ window = "30s", aggression = 1.0, min_weight = 0.1 }`.
pub(crate) enum RawSlowStart {
    Short(String),
    Full(RawSlowStartTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSlowStartTable {
    pub window: Option<S<String>>,
    pub aggression: Option<S<f64>>,
    pub min_weight: Option<S<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHealth {
    pub path: Option<S<String>>,
    pub tcp: Option<S<bool>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub healthy: Option<S<i64>>,
    pub unhealthy: Option<S<i64>>,
    pub expected: Option<S<Vec<S<StringOrInt>>>>,
    pub host: Option<S<String>>,
    pub jitter: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<S<i64>>,
    pub consecutive_5xx: Option<S<i64>>,
    pub base_ejection: Option<S<String>>,
    pub max_ejection: Option<S<String>>,
    pub max_ejected_percent: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRetry {
    pub attempts: Option<S<i64>>,
    pub per_try_timeout: Option<S<String>>,
    pub on: Option<S<Vec<S<StringOrInt>>>>,
    pub budget_percent: Option<S<i64>>,
    pub min_retries_per_second: Option<S<i64>>,
    pub replay_buffer: Option<S<RawSize>>,
    pub backoff: Option<S<RawBackoff>>,
    pub non_idempotent: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawBackoff {
    pub initial: Option<S<String>>,
    pub max: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawBreaker {
    pub failure_ratio: Option<S<f64>>,
    pub window: Option<S<String>>,
    pub min_requests: Option<S<i64>>,
    pub open_for: Option<S<String>>,
    pub half_open_probes: Option<S<i64>>,
    pub per_endpoint: Option<S<bool>>,
}

/// `"host:port"` or `{ address = "host:port", weight = 2 }`.
pub(crate) enum RawEndpoint {
    Short(String),
    Full(RawEndpointTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawEndpointTable {
    pub address: Option<S<String>>,
    pub weight: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawUpstreamTimeouts {
    pub connect: Option<S<String>>,
    pub request: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawPool {
    pub idle_timeout: Option<S<String>>,
    pub max_idle_per_endpoint: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRoute {
    pub name: Option<S<String>>,
    pub listeners: Option<S<Vec<S<String>>>>,
    #[serde(rename = "match")]
    pub matcher: Option<S<RawMatch>>,
    pub to: Option<S<RawTarget>>,
    pub rewrite: Option<S<RawRewrite>>,
    pub headers: Option<S<RawHeaderRules>>,
    pub auth: Option<S<String>>,
    pub require: Option<S<RawRequire>>,
    pub rate_limit: Option<S<String>>,
    pub cors: Option<S<String>>,
    pub compress: Option<S<RawOnOr<RawCompress>>>,
    pub idempotency: Option<S<RawOnOr<RawIdempotency>>>,
    pub ip: Option<S<RawIp>>,
    pub max_body: Option<S<RawSize>>,
    pub cache: Option<S<RawOnOr<RawRouteCache>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawMatch {
    pub host: Option<S<String>>,
    pub path: Option<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub path_regex: Option<S<String>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub headers: Option<S<Entries<S<RawHeaderValue>>>>,
    pub version: Option<S<StringOrInt>>,
}

/// A header matcher's value: a string (exact value) or a boolean (`true` = present).
pub(crate) enum RawHeaderValue {
    Exact(String),
    Present(bool),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawTarget {
    pub upstream: Option<S<String>>,
    pub respond: Option<S<RawRespond>>,
    pub redirect: Option<S<RawRedirect>>,
    pub echo: Option<S<bool>>,
    pub topic: Option<S<String>>,
    pub subscription: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRespond {
    pub status: Option<S<i64>>,
    pub body: Option<S<String>>,
    pub headers: Option<S<Entries<S<String>>>>,
}

/// `"https://…"` or `{ location = "https://…", status = 301 }`.
pub(crate) enum RawRedirect {
    Short(String),
    Full(RawRedirectTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRedirectTable {
    pub location: Option<S<String>>,
    pub status: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRewrite {
    pub strip_prefix: Option<S<String>>,
    pub path: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHeaderRules {
    pub request: Option<S<RawHeaderOps>>,
    pub response: Option<S<RawHeaderOps>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHeaderOps {
    pub set: Option<S<Entries<S<String>>>>,
    pub add: Option<S<Entries<S<String>>>>,
    pub remove: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawForwardProxy {
    pub allow: Option<S<Vec<S<String>>>>,
    pub deny: Option<S<Vec<S<String>>>>,
    pub block_private: Option<S<bool>>,
    pub connect_timeout: Option<S<String>>,
    pub tunnel_idle_timeout: Option<S<String>>,
    pub dns: Option<S<RawDns>>,
    pub users: Option<S<Entries<S<RawProxyUser>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDns {
    pub timeout: Option<S<String>>,
    pub min_ttl: Option<S<String>>,
    pub max_ttl: Option<S<String>>,
    pub cache_size: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawProxyUser {
    pub password_hash: Option<S<String>>,
    pub allow: Option<S<Vec<S<String>>>>,
}

/// A size: a plain integer of bytes or a string with a unit.
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// A value users naturally write either way, e.g. `version = 2` or `version = "2.1"`.
pub(crate) enum StringOrInt {
    Str(String),
    Int(i64),
}

/// A table with user-chosen keys, in file order, each key with its span.
pub(crate) struct Entries<V>(pub Vec<(S<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(S<String>, V)> = Vec::new();
                while let Some(key) = map.next_key::<S<String>>()? {
                    let value = map.next_value::<V>()?;
                    entries.push((key, value));
                }
                // toml hands tables over in key order; diagnostics and header edits want the
                // order of the file.
                entries.sort_by_key(|(k, _)| k.span().start);
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// Implements `Deserialize` for a value written in one of a few shapes: each listed visitor
/// method builds it, and `table:` (if given) deserializes the table shape.
macro_rules! either_shape {
    (
        $ty:ident, $expecting:literal, $(table: $table:ident => $variant:path,)?
        { $($method:ident($v:ident: $arg:ty) => $build:expr;)* }
    ) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ShapeVisitor;
                impl<'de> Visitor<'de> for ShapeVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    $(
                        fn $method<E: de::Error>(self, $v: $arg) -> Result<Self::Value, E> {
                            Ok($build)
                        }
                    )*
                    $(
                        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                            $table::deserialize(de::value::MapAccessDeserializer::new(map)).map($variant)
                        }
                    )?
                }
                d.deserialize_any(ShapeVisitor)
            }
        }
    };
}

either_shape!(
    RawEndpoint,
    "an address string or a table like { address = \"host:port\", weight = 2 }",
    table: RawEndpointTable => RawEndpoint::Full,
    { visit_str(v: &str) => RawEndpoint::Short(v.to_string()); }
);

either_shape!(
    RawRedirect,
    "a URL string or a table like { location = \"https://…\", status = 301 }",
    table: RawRedirectTable => RawRedirect::Full,
    { visit_str(v: &str) => RawRedirect::Short(v.to_string()); }
);

either_shape!(
    RawSlowStart,
    "a duration like \"30s\" or a table like { window = \"30s\", aggression = 1.0, min_weight = 0.1 }",
    table: RawSlowStartTable => RawSlowStart::Full,
    { visit_str(v: &str) => RawSlowStart::Short(v.to_string()); }
);

either_shape!(RawHeaderValue, "a string (exact value) or `true` (header present)", {
    visit_str(v: &str) => RawHeaderValue::Exact(v.to_string());
    visit_bool(v: bool) => RawHeaderValue::Present(v);
});

either_shape!(RawSize, "a size like \"64KiB\" or an integer number of bytes", {
    visit_str(v: &str) => RawSize::Text(v.to_string());
    visit_i64(v: i64) => RawSize::Bytes(v);
});

either_shape!(StringOrInt, "a string or an integer", {
    visit_str(v: &str) => StringOrInt::Str(v.to_string());
    visit_i64(v: i64) => StringOrInt::Int(v);
});

/// `true`/`false` or a table of settings.
pub(crate) enum RawOnOr<T> {
    On(bool),
    Table(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for RawOnOr<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnOrVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnOrVisitor<T> {
            type Value = RawOnOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true`, `false` or a table")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawOnOr::On(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawOnOr::Table)
            }
        }
        d.deserialize_any(OnOrVisitor(PhantomData))
    }
}

/// A string or a list of strings (`audience = "api"` or `audience = ["a", "b"]`).
pub(crate) struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAuth {
    pub realm: Option<S<String>>,
    pub forward_claims: Option<S<Entries<S<String>>>>,
    pub jwt: Option<S<RawJwt>>,
    pub api_keys: Option<S<RawApiKeys>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawJwt {
    pub jwks_url: Option<S<String>>,
    pub keys: Option<S<Vec<S<String>>>>,
    pub secret: Option<S<String>>,
    pub algorithms: Option<S<Vec<S<String>>>>,
    pub issuer: Option<S<OneOrMany>>,
    pub audience: Option<S<OneOrMany>>,
    pub leeway: Option<S<String>>,
    pub from: Option<S<Vec<S<String>>>>,
    pub scope_claim: Option<S<String>>,
    pub jwks_min_refresh: Option<S<String>>,
    pub jwks_min_ttl: Option<S<String>>,
    pub jwks_max_ttl: Option<S<String>>,
    pub jwks_timeout: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawApiKeys {
    pub from: Option<S<Vec<S<String>>>>,
    pub keys: Option<S<Vec<S<RawApiKey>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawApiKey {
    pub name: Option<S<String>>,
    pub sha256: Option<S<String>>,
    pub scopes: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawPassport {
    pub signing_key: Option<S<String>>,
    pub header: Option<S<String>>,
    pub ttl: Option<S<String>>,
    pub issuer: Option<S<String>>,
    pub audience: Option<S<String>>,
    pub bind_request: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRateLimit {
    pub key: Option<S<String>>,
    pub rate: Option<S<String>>,
    pub burst: Option<S<i64>>,
    pub store: Option<S<String>>,
    pub fail_open: Option<S<bool>>,
    pub ipv6_prefix: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCors {
    pub allow_origins: Option<S<Vec<S<String>>>>,
    pub allow_methods: Option<S<Vec<S<String>>>>,
    pub allow_headers: Option<S<Vec<S<String>>>>,
    pub expose_headers: Option<S<Vec<S<String>>>>,
    pub allow_credentials: Option<S<bool>>,
    pub max_age: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRedis {
    pub url: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub retry_after: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCompression {
    pub max_memory: Option<S<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCacheStore {
    pub memory: Option<S<RawSize>>,
    pub purge_from: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRequire {
    pub scopes: Option<S<Vec<S<String>>>>,
    pub claims: Option<S<Entries<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawCompress {
    pub algorithms: Option<S<Vec<S<String>>>>,
    pub min_size: Option<S<RawSize>>,
    pub content_types: Option<S<Vec<S<String>>>>,
    pub decompress_requests: Option<S<bool>>,
    pub max_ratio: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawIdempotency {
    pub header: Option<S<String>>,
    pub ttl: Option<S<String>>,
    pub store: Option<S<String>>,
    pub max_body: Option<S<RawSize>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub max_keys: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawIp {
    pub allow: Option<S<Vec<S<String>>>>,
    pub deny: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawRouteCache {
    pub key: Option<S<Vec<S<String>>>>,
    pub ignore_query: Option<S<Vec<S<String>>>>,
    pub vary_cookies: Option<S<Vec<S<String>>>>,
    pub default_ttl: Option<S<String>>,
    pub max_object: Option<S<RawSize>>,
    pub stale_while_revalidate: Option<S<String>>,
    pub stale_if_error: Option<S<String>>,
    pub coalesce_timeout: Option<S<String>>,
}
