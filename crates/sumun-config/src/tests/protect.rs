//! `[auth]`, `[passport]`, `[rate_limit]`, `[cors]`, `[redis]`, `[cache]` and the route keys
//! that use them.

use std::time::Duration;

use super::*;
use crate::*;

const UPSTREAM: &str = "[upstream.api]\nendpoints = [\"127.0.0.1:9000\"]\n";

fn with(extra: &str) -> String {
    format!("{LISTENER}{UPSTREAM}{extra}")
}

const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn a_fully_protected_route() {
    let secret = std::env::temp_dir().join(format!("sumun-protect-secret-{}", std::process::id()));
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let secret = secret.display();
    let text = with(&format!(
        r#"
[redis]
url = "redis://127.0.0.1:6379/2"
timeout = "100ms"

[auth.users]
realm = "orders"
forward_claims = {{ "X-User-Email" = "email" }}
jwt = {{ jwks_url = "https://idp.example/jwks.json", secret = "file:{secret}", issuer = "https://idp.example", audience = ["api", "web"], from = ["header:authorization", "cookie:session"], leeway = "10s" }}
api_keys = {{ from = ["header:x-api-key", "query:key"], keys = [{{ name = "ci", sha256 = "{DIGEST}", scopes = ["read"] }}] }}

[rate_limit.per-user]
key = "jwt:sub"
rate = "600/m"
burst = 20
store = "redis"
fail_open = true

[cors.app]
allow_origins = ["https://app.example.com", "https://*.example.com", "http://localhost:3000"]
allow_methods = ["get", "PUT"]
allow_headers = ["Content-Type", "authorization"]
allow_credentials = true
max_age = "1h"

[cache]
memory = "64MiB"
purge_from = ["127.0.0.1", "10.0.0.0/8"]

[[route]]
name = "orders"
match = {{ path_prefix = "/orders" }}
to = {{ upstream = "api" }}
auth = "users"
require = {{ scopes = ["orders:write"], claims = {{ role = "admin" }} }}
rate_limit = "per-user"
cors = "app"
compress = {{ algorithms = ["gzip", "br"], min_size = "256B" }}
idempotency = {{ store = "redis", ttl = "1h" }}
ip = {{ allow = ["10.0.0.0/8"], deny = ["10.1.0.0/16"] }}
max_body = "1MiB"
cache = {{ ignore_query = ["utm_source"], stale_if_error = "5m" }}
"#
    ));
    let c = ok(&text).config;
    let redis = c.redis.as_ref().unwrap();
    assert_eq!(
        (redis.url.0.as_str(), redis.timeout),
        ("redis://127.0.0.1:6379/2", Duration::from_millis(100))
    );
    let auth = &c.auth[0];
    assert_eq!((auth.name.as_str(), auth.realm.as_str()), ("users", "orders"));
    assert_eq!(auth.forward_claims, [("x-user-email".to_string(), "email".to_string())]);
    let jwt = auth.jwt.as_ref().unwrap();
    assert_eq!(jwt.audiences, ["api", "web"]);
    assert_eq!(jwt.issuers, ["https://idp.example"]);
    assert_eq!(
        jwt.sources,
        [CredentialSource::Header("authorization".into()), CredentialSource::Cookie("session".into())]
    );
    assert_eq!(jwt.leeway, Duration::from_secs(10));
    // Both key kinds are present, so every algorithm is accepted by default; never `none`.
    assert_eq!(jwt.algorithms.len(), 12);
    let keys = auth.api_keys.as_ref().unwrap();
    assert_eq!(keys.keys[0].sha256[31], 0x08);
    assert_eq!(keys.sources[1], CredentialSource::Query("key".into()));
    let rl = &c.rate_limits[0];
    assert_eq!((rl.requests, rl.per, rl.burst), (600, Duration::from_secs(60), 20));
    assert_eq!(
        (rl.key.clone(), rl.store, rl.fail_open, rl.ipv6_prefix),
        (RateKey::JwtClaim("sub".into()), RateStore::Redis, true, 64)
    );
    let cors = &c.cors[0];
    assert_eq!(cors.methods, ["GET", "PUT"]);
    assert_eq!(cors.headers, ["content-type", "authorization"]);
    assert_eq!(cors.origins[2], CorsOrigin::Exact("http://localhost:3000".into()));
    assert_eq!(c.cache.memory, 64 << 20);
    assert_eq!(c.cache.purge_from.len(), 2);
    let p = &c.routes[0].protect;
    let a = p.auth.as_ref().unwrap();
    assert_eq!((a.policy.as_str(), a.scopes.clone()), ("users", vec!["orders:write".to_string()]));
    assert_eq!(a.claims, [("role".to_string(), "admin".to_string())]);
    assert_eq!((p.rate_limit.as_deref(), p.cors.as_deref()), (Some("per-user"), Some("app")));
    let z = p.compress.as_ref().unwrap();
    assert_eq!((z.algorithms.clone(), z.min_size), (vec![Encoding::Gzip, Encoding::Brotli], 256));
    assert!(z.content_types.iter().any(|t| t == "application/json"));
    let i = p.idempotency.as_ref().unwrap();
    assert_eq!(
        (i.header.as_str(), i.store, i.ttl),
        ("idempotency-key", IdempotencyStore::Redis, Duration::from_secs(3600))
    );
    assert_eq!(i.methods, ["POST", "PATCH"]);
    assert_eq!(p.ip.as_ref().unwrap().deny.len(), 1);
    assert_eq!(p.max_body, Some(1 << 20));
    let cache = c.routes[0].cache.as_ref().unwrap();
    assert_eq!(
        (cache.ignore_query.clone(), cache.stale_if_error),
        (vec!["utm_source".to_string()], Duration::from_secs(300))
    );
}

#[test]
fn shorthands_and_defaults() {
    let text = with(
        r#"
[[route]]
to = { upstream = "api" }
compress = true
idempotency = true
cache = true
"#,
    );
    let c = ok(&text).config;
    let r = &c.routes[0];
    assert_eq!(
        r.protect.compress.as_ref().unwrap().algorithms,
        [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip]
    );
    assert_eq!(r.protect.idempotency.as_ref().unwrap().ttl, Duration::from_secs(86_400));
    assert_eq!(r.cache.as_ref().unwrap().max_object, 8 << 20);
    assert_eq!(c.passport.header, "x-sumun-passport");
    let off = with("[[route]]\nto = { upstream = \"api\" }\ncompress = false\ncache = false\n");
    let c = ok(&off).config;
    assert!(c.routes[0].protect.compress.is_none() && c.routes[0].cache.is_none());
}

#[test]
fn mistakes_are_located_and_explained() {
    let text = with(
        r#"
[auth.a]
jwt = { algorithms = ["none"], secret = "plain" }

[auth.b]
realm = "x"

[rate_limit.r]
rate = "100 per second"

[rate_limit.s]
rate = "100/s"
store = "redis"

[rate_limit.t]
rate = "1/s"
ipv6_prefix = 129

[cors.c]
allow_origins = ["*", "app.example.com"]
allow_credentials = true

[[route]]
to = { upstream = "api" }
auth = "usres"
rate_limit = "r"
ip = { allow = ["10.0.0.1/8"] }
idempotency = { methods = ["GET"] }
cache = { key = ["host", "query"] }
"#,
    );
    let lines = error_lines(&text).join("\n");
    for want in [
        "`secret`: a secret must be written as `env:NAME` or `file:PATH`",
        "`none` is never accepted",
        "auth policy `b` needs `jwt = { … }`, `api_keys = { … }` or both",
        "`100 per second` is not a rate",
        "`store = \"redis\"` needs a `[redis]` table",
        "`ipv6_prefix`",
        "`app.example.com` is not an origin",
        "cannot be combined with `allow_credentials = true`",
        "unknown auth policy `usres`",
        "has host bits set; did you mean `10.0.0.0/8`?",
        "`GET` is already safe to repeat",
        "`key` must include `path`",
    ] {
        assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
    }
}

#[test]
fn identity_keyed_limits_need_auth_and_api_keys_need_digests() {
    let text = with(
        r#"
[auth.k]
api_keys = { keys = [{ name = "ci", sha256 = "secret-key" }] }

[rate_limit.per-user]
key = "api_key"
rate = "10/s"

[[route]]
to = { upstream = "api" }
rate_limit = "per-user"
require = { scopes = ["x"] }
"#,
    );
    let lines = error_lines(&text).join("\n");
    assert!(lines.contains("`sha256` must be 64 hex digits"), "{lines}");
    assert!(lines.contains("keys on the caller's identity, so the route needs `auth`"), "{lines}");
    assert!(lines.contains("`require` needs `auth = \"POLICY\"`"), "{lines}");
}

#[test]
fn unknown_keys_get_suggestions() {
    let text = with("[cors.c]\nallow_origin = [\"https://a.example\"]\n");
    let lines = error_lines(&text).join("\n");
    assert!(lines.contains("did you mean `allow_origins`?"), "{lines}");
}

#[test]
fn ipv6_clients_are_counted_by_a_prefix() {
    let text = with("[rate_limit.r]\nrate = \"10/s\"\nipv6_prefix = 56\n");
    let c = ok(&text).config;
    assert_eq!((c.rate_limits[0].key.clone(), c.rate_limits[0].ipv6_prefix), (RateKey::ClientIp, 56));
}

#[test]
fn compression_memory_budget() {
    assert_eq!(ok(&with("")).config.compression.max_memory, 512 << 20, "the default");
    let c = ok(&with("[compression]\nmax_memory = \"64MiB\"\n")).config;
    assert_eq!(c.compression.max_memory, 64 << 20);
    assert_eq!(ok(&with("[compression]\nmax_memory = \"0\"\n")).config.compression.max_memory, 0);
    let lines = error_lines(&with("[compression]\nmax_memory = \"lots\"\n")).join("\n");
    assert!(lines.contains("`compression.max_memory`"), "{lines}");
}
