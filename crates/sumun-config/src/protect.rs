//! `[auth.NAME]`, `[passport]`, `[rate_limit.NAME]`, `[cors.NAME]`, `[redis]`, `[cache]` and a
//! route's protection and cache keys → their validated models.

use std::time::Duration;

use crate::cache_model::*;
use crate::headers::header_name;
use crate::model::*;
use crate::protect_model::*;
use crate::raw::*;
use crate::units::resolve_secret;
use crate::validate::{Ctx, check_name, is_token, one_of};

/// The shared policies, validated.
pub(crate) struct Policies {
    pub auth: Vec<AuthPolicy>,
    pub passport: Passport,
    pub rate_limits: Vec<RateLimitPolicy>,
    pub cors: Vec<CorsPolicy>,
    pub redis: Option<Redis>,
    pub cache: CacheStore,
    pub compression: Compression,
}

const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
    "EdDSA",
];

pub(crate) fn policies(cx: &mut Ctx<'_, '_>, raw: &RawConfig) -> Policies {
    let redis = raw.redis.as_ref().and_then(|r| redis(cx, r));
    let mut auth = Vec::new();
    for (name, a) in raw.auth.iter().flat_map(|t| &t.get_ref().0) {
        check_name(cx, name, "auth policy");
        if let Some(p) = auth_policy(cx, name.get_ref(), a) {
            auth.push(p);
        }
    }
    auth.sort_by(|a: &AuthPolicy, b| a.name.cmp(&b.name));
    let passport = raw.passport.as_ref().map_or_else(Passport::default, |p| passport(cx, p.get_ref()));
    let mut rate_limits = Vec::new();
    for (name, r) in raw.rate_limit.iter().flat_map(|t| &t.get_ref().0) {
        check_name(cx, name, "rate limit");
        if let Some(p) = rate_limit(cx, name.get_ref(), r, redis.is_some()) {
            rate_limits.push(p);
        }
    }
    rate_limits.sort_by(|a: &RateLimitPolicy, b| a.name.cmp(&b.name));
    let mut cors = Vec::new();
    for (name, c) in raw.cors.iter().flat_map(|t| &t.get_ref().0) {
        check_name(cx, name, "cors policy");
        if let Some(p) = cors_policy(cx, name.get_ref(), c) {
            cors.push(p);
        }
    }
    cors.sort_by(|a: &CorsPolicy, b| a.name.cmp(&b.name));
    let cache = raw.cache.as_ref().map_or_else(CacheStore::default, |c| cache_store(cx, c.get_ref()));
    let compression = Compression {
        max_memory: raw
            .compression
            .as_ref()
            .and_then(|c| c.get_ref().max_memory.as_ref())
            .and_then(|m| cx.size(m, "`compression.max_memory`"))
            .unwrap_or(Compression::default().max_memory),
    };
    Policies { auth, passport, rate_limits, cors, redis, cache, compression }
}

/// The strings of an optional list.
fn strings(raw: Option<&S<Vec<S<String>>>>) -> Vec<&S<String>> {
    raw.map(|l| l.get_ref().iter().collect()).unwrap_or_default()
}

fn secret(cx: &mut Ctx<'_, '_>, raw: &S<String>, what: &str) -> Option<Secret> {
    resolve_secret(raw.get_ref()).map_err(|e| cx.error(raw.span(), format!("{what}: {e}"))).ok()
}

fn redis(cx: &mut Ctx<'_, '_>, raw: &S<RawRedis>) -> Option<Redis> {
    let r = raw.get_ref();
    let Some(url) = &r.url else {
        cx.missing("redis.url", raw.span(), "`[redis]` needs `url`, e.g. `url = \"redis://127.0.0.1:6379\"`");
        return None;
    };
    // A URL may hold a password: `env:`/`file:` are accepted, a literal too.
    let value = if url.get_ref().starts_with("env:") || url.get_ref().starts_with("file:") {
        secret(cx, url, "`redis.url`")?
    } else {
        Secret(url.get_ref().clone())
    };
    const SCHEMES: &[&str] = &["redis://", "rediss://", "redis+unix://", "unix://"];
    if !SCHEMES.iter().any(|s| value.0.starts_with(s)) {
        cx.error(
            url.span(),
            "`redis.url` must start with `redis://`, `rediss://`, `redis+unix://` or `unix://`",
        );
        return None;
    }
    let timeout = cx.duration(&r.timeout, Duration::from_millis(250), "`redis.timeout`", true);
    let retry_after = cx.duration(&r.retry_after, Duration::from_secs(1), "`redis.retry_after`", true);
    Some(Redis { url: value, timeout, retry_after })
}

/// `header:NAME`, `cookie:NAME` or `query:NAME`; `allowed` lists the kinds this place takes.
fn credential_source(
    cx: &mut Ctx<'_, '_>,
    raw: &S<String>,
    what: &str,
    allowed: &[&str],
) -> Option<CredentialSource> {
    let text = raw.get_ref();
    let (kind, name) = text.split_once(':').unwrap_or((text, ""));
    let valid: Vec<String> = allowed.iter().map(|k| format!("{k}:NAME")).collect();
    if !allowed.contains(&kind) || name.is_empty() {
        let message = format!("{what}: `{text}` is not a credential source (valid: {})", valid.join(", "));
        cx.error(raw.span(), message);
        return None;
    }
    if !is_token(name) {
        cx.error(raw.span(), format!("{what}: `{name}` is not a valid {kind} name"));
        return None;
    }
    Some(match kind {
        "header" => CredentialSource::Header(name.to_ascii_lowercase()),
        "cookie" => CredentialSource::Cookie(name.to_owned()),
        _ => CredentialSource::Query(name.to_owned()),
    })
}

fn auth_policy(cx: &mut Ctx<'_, '_>, name: &str, raw: &S<RawAuth>) -> Option<AuthPolicy> {
    let what = format!("auth policy `{name}`");
    let a = raw.get_ref();
    if a.jwt.is_none() && a.api_keys.is_none() {
        cx.error(raw.span(), format!("{what} needs `jwt = {{ … }}`, `api_keys = {{ … }}` or both"));
        return None;
    }
    let jwt = a.jwt.as_ref().and_then(|j| jwt(cx, j, &what));
    let api_keys = a.api_keys.as_ref().and_then(|k| api_keys(cx, k, &what));
    let realm = match &a.realm {
        Some(r) if r.get_ref().contains(['"', '\\']) || r.get_ref().chars().any(char::is_control) => {
            cx.error(
                r.span(),
                format!("{what}: `realm` must not contain quotes, backslashes or control characters"),
            );
            name.to_owned()
        }
        Some(r) => r.get_ref().clone(),
        None => name.to_owned(),
    };
    let mut forward_claims = Vec::new();
    for (header, claim) in a.forward_claims.iter().flat_map(|f| &f.get_ref().0) {
        let Some(h) = header_name(cx, header, &format!("{what}: `forward_claims`")) else { continue };
        if claim.get_ref().is_empty() {
            cx.error(claim.span(), format!("{what}: `forward_claims.{h}` needs a claim name"));
            continue;
        }
        forward_claims.push((h, claim.get_ref().clone()));
    }
    if (a.jwt.is_some() && jwt.is_none()) || (a.api_keys.is_some() && api_keys.is_none()) {
        return None;
    }
    Some(AuthPolicy { name: name.to_owned(), jwt, api_keys, realm, forward_claims })
}

fn jwt(cx: &mut Ctx<'_, '_>, raw: &S<RawJwt>, what: &str) -> Option<JwtAuth> {
    let j = raw.get_ref();
    let what = format!("{what}: `jwt`");
    let jwks_url = j.jwks_url.as_ref().and_then(|u| {
        let text = u.get_ref();
        let ok = (text.starts_with("http://") || text.starts_with("https://"))
            && text
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !ok {
            cx.error(u.span(), format!("{what}: `jwks_url` must be an http:// or https:// URL"));
            return None;
        }
        Some(text.clone())
    });
    let mut key_files = Vec::new();
    for k in strings(j.keys.as_ref()) {
        let path = cx.resolve(k.get_ref());
        if !path.is_file() {
            cx.error(k.span(), format!("{what}: key file `{}` does not exist", path.display()));
            continue;
        }
        key_files.push(path);
    }
    let secret = j.secret.as_ref().and_then(|s| {
        let value = secret(cx, s, &format!("{what}: `secret`"))?;
        if value.0.len() < 32 {
            cx.warning(
                s.span(),
                format!("{what}: an HMAC secret shorter than 32 bytes is weak; use at least 32 random bytes"),
            );
        }
        Some(value)
    });
    let has_asym = jwks_url.is_some() || !key_files.is_empty() || j.jwks_url.is_some() || j.keys.is_some();
    let has_secret = secret.is_some() || j.secret.is_some();
    if !has_asym && !has_secret {
        cx.error(
            raw.span(),
            format!("{what} needs keys: `jwks_url`, `keys = [\"key.pem\"]` or `secret = \"env:NAME\"`"),
        );
        return None;
    }
    let mut algorithms = Vec::new();
    for a in strings(j.algorithms.as_ref()) {
        let text = a.get_ref();
        let Some(alg) = ALGORITHMS.iter().find(|v| v.eq_ignore_ascii_case(text)) else {
            if text.eq_ignore_ascii_case("none") {
                cx.error(
                    a.span(),
                    format!("{what}: `none` is never accepted: unsigned tokens prove nothing"),
                );
            } else {
                cx.error(a.span(), one_of(&format!("{what}: unknown algorithm"), text, ALGORITHMS));
            }
            continue;
        };
        if alg.starts_with("HS") && !has_secret {
            cx.error(a.span(), format!("{what}: `{alg}` needs `secret`"));
        } else if !alg.starts_with("HS") && !has_asym {
            cx.error(a.span(), format!("{what}: `{alg}` needs public keys (`jwks_url` or `keys`)"));
        }
        if !algorithms.contains(&alg.to_string()) {
            algorithms.push(alg.to_string());
        }
    }
    if j.algorithms.as_ref().is_some_and(|l| l.get_ref().is_empty()) {
        cx.error(raw.span(), format!("{what}: `algorithms` is empty; omit it to accept what the keys allow"));
    }
    if algorithms.is_empty() {
        algorithms = ALGORITHMS
            .iter()
            .filter(|a| if a.starts_with("HS") { has_secret } else { has_asym })
            .map(|a| a.to_string())
            .collect();
    }
    let list = |raw: &Option<S<OneOrMany>>| -> Vec<String> {
        raw.as_ref().map(|v| v.get_ref().0.clone()).unwrap_or_default()
    };
    let issuers = list(&j.issuer);
    let audiences = list(&j.audience);
    let leeway = cx.duration(&j.leeway, Duration::from_secs(30), &format!("{what}: `leeway`"), false);
    let mut sources = Vec::new();
    for s in strings(j.from.as_ref()) {
        if let Some(src) =
            credential_source(cx, s, &format!("{what}: `from`"), &["header", "cookie", "query"])
        {
            sources.push(src);
        }
    }
    if sources.is_empty() {
        sources.push(CredentialSource::Header("authorization".into()));
    }
    let scope_claim = j.scope_claim.as_ref().map_or_else(|| "scope".to_owned(), |s| s.get_ref().clone());
    let jwks_min_refresh = cx.duration(
        &j.jwks_min_refresh,
        Duration::from_secs(30),
        &format!("{what}: `jwks_min_refresh`"),
        false,
    );
    let jwks_min_ttl =
        cx.duration(&j.jwks_min_ttl, Duration::from_secs(60), &format!("{what}: `jwks_min_ttl`"), false);
    let jwks_max_ttl =
        cx.duration(&j.jwks_max_ttl, Duration::from_secs(86_400), &format!("{what}: `jwks_max_ttl`"), true);
    if jwks_min_ttl > jwks_max_ttl {
        cx.error(raw.span(), format!("{what}: `jwks_min_ttl` is larger than `jwks_max_ttl`"));
    }
    let jwks_timeout =
        cx.duration(&j.jwks_timeout, Duration::from_secs(5), &format!("{what}: `jwks_timeout`"), true);
    Some(JwtAuth {
        jwks_url,
        key_files,
        secret,
        algorithms,
        issuers,
        audiences,
        leeway,
        sources,
        scope_claim,
        jwks_min_refresh,
        jwks_min_ttl,
        jwks_max_ttl,
        jwks_timeout,
    })
}

fn api_keys(cx: &mut Ctx<'_, '_>, raw: &S<RawApiKeys>, what: &str) -> Option<ApiKeyAuth> {
    let k = raw.get_ref();
    let what = format!("{what}: `api_keys`");
    let mut sources = Vec::new();
    for s in strings(k.from.as_ref()) {
        if let Some(src) = credential_source(cx, s, &format!("{what}: `from`"), &["header", "query"]) {
            sources.push(src);
        }
    }
    if sources.is_empty() {
        sources.push(CredentialSource::Header("x-api-key".into()));
    }
    let mut keys: Vec<ApiKey> = Vec::new();
    let Some(list) = &k.keys else {
        cx.missing(
            "api_keys.keys",
            raw.span(),
            format!("{what} needs `keys = [{{ name = \"ci\", sha256 = \"…\" }}]`"),
        );
        return None;
    };
    for entry in list.get_ref() {
        let e = entry.get_ref();
        let Some(name) = &e.name else {
            cx.error(entry.span(), format!("{what}: every key needs a `name`"));
            continue;
        };
        check_name(cx, name, "API key");
        if keys.iter().any(|k| &k.name == name.get_ref()) {
            cx.error(name.span(), format!("{what}: duplicate key name `{}`", name.get_ref()));
        }
        let Some(digest) = &e.sha256 else {
            cx.error(entry.span(), format!("{what}: key `{}` needs `sha256` (the key's SHA-256 in hex; make it with `printf %s \"$KEY\" | sha256sum`)", name.get_ref()));
            continue;
        };
        let Some(sha256) = hex32(digest.get_ref()) else {
            cx.error(digest.span(), format!("{what}: `sha256` must be 64 hex digits (sumun stores digests, never keys: `printf %s \"$KEY\" | sha256sum`)"));
            continue;
        };
        if keys.iter().any(|k| k.sha256 == sha256) {
            cx.error(
                digest.span(),
                format!("{what}: key `{}` has the same digest as another key", name.get_ref()),
            );
        }
        let scopes = strings(e.scopes.as_ref()).into_iter().map(|s| s.get_ref().clone()).collect();
        keys.push(ApiKey { name: name.get_ref().clone(), sha256, scopes });
    }
    Some(ApiKeyAuth { sources, keys })
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn passport(cx: &mut Ctx<'_, '_>, p: &RawPassport) -> Passport {
    let d = Passport::default();
    let signing_key = p.signing_key.as_ref().and_then(|k| {
        let key = secret(cx, k, "`passport.signing_key`")?;
        if !key.0.contains("-----BEGIN PRIVATE KEY-----") {
            cx.error(k.span(), "`passport.signing_key` must be an Ed25519 private key in PKCS#8 PEM (`sumun passport keygen --out passport.pem`)");
            return None;
        }
        Some(key)
    });
    let header = p.header.as_ref().and_then(|h| header_name(cx, h, "`passport.header`")).unwrap_or(d.header);
    let ttl = cx.duration(&p.ttl, d.ttl, "`passport.ttl`", true);
    let issuer = p.issuer.as_ref().map_or(d.issuer, |i| i.get_ref().clone());
    let audience = p.audience.as_ref().map(|a| a.get_ref().clone());
    let bind_request = p.bind_request.as_ref().is_some_and(|b| *b.get_ref());
    Passport { signing_key, header, ttl, issuer, audience, bind_request }
}

/// `100/s`, `6000/m`, `10/10s`: a count and a window.
pub(crate) fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    let err = || format!("`{text}` is not a rate; write `COUNT/WINDOW`, e.g. `100/s`, `6000/m`, `10/10s`");
    let (count, window) = text.split_once('/').ok_or_else(err)?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n > 0).ok_or_else(err)?;
    let window = window.trim();
    let per = match window {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        w => crate::units::parse_duration(w).map_err(|_| err())?,
    };
    if per.is_zero() || per > Duration::from_secs(86_400) {
        return Err(format!("`{text}`: the window must be between 1ms and 1 day"));
    }
    Ok((count, per))
}

fn rate_limit(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    raw: &S<RawRateLimit>,
    has_redis: bool,
) -> Option<RateLimitPolicy> {
    let what = format!("rate limit `{name}`");
    let r = raw.get_ref();
    let key = match &r.key {
        None => RateKey::ClientIp,
        Some(k) => match k.get_ref().as_str() {
            "client_ip" => RateKey::ClientIp,
            "api_key" => RateKey::ApiKey,
            "route" => RateKey::Route,
            t => match t.split_once(':') {
                Some(("header", h)) if is_token(h) => RateKey::Header(h.to_ascii_lowercase()),
                Some(("jwt", c)) if !c.is_empty() => RateKey::JwtClaim(c.to_owned()),
                _ => {
                    let message = one_of(
                        &format!("{what}: unknown `key`"),
                        t,
                        &["client_ip", "header:NAME", "jwt:CLAIM", "api_key", "route"],
                    );
                    cx.error(k.span(), message);
                    return None;
                }
            },
        },
    };
    let Some(rate) = &r.rate else {
        cx.missing(
            &format!("rate_limit.{name}.rate"),
            raw.span(),
            format!("{what} needs `rate`, e.g. `rate = \"100/s\"`"),
        );
        return None;
    };
    let (requests, per) = match parse_rate(rate.get_ref()) {
        Ok(v) => v,
        Err(e) => {
            cx.error(rate.span(), format!("{what}: {e}"));
            return None;
        }
    };
    let burst = match &r.burst {
        Some(b) => u32::try_from(cx.int(b, 1, 1_000_000_000, &format!("{what}: `burst`"))?).ok()?,
        None => requests,
    };
    let store = match r.store.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("local", _)) => RateStore::Local,
        Some(("redis", span)) => {
            if !has_redis {
                cx.error(
                    span,
                    format!("{what}: `store = \"redis\"` needs a `[redis]` table with the server's `url`"),
                );
            }
            RateStore::Redis
        }
        Some((other, span)) => {
            cx.error(span, one_of(&format!("{what}: unknown `store`"), other, &["local", "redis"]));
            return None;
        }
    };
    let fail_open = r.fail_open.as_ref().is_some_and(|f| *f.get_ref());
    if fail_open && store == RateStore::Local {
        if let Some(f) = &r.fail_open {
            cx.warning(f.span(), format!("{what}: `fail_open` only matters with `store = \"redis\"`"));
        }
    }
    let ipv6_prefix = match &r.ipv6_prefix {
        Some(p) => {
            if key != RateKey::ClientIp {
                cx.warning(
                    p.span(),
                    format!("{what}: `ipv6_prefix` only matters with `key = \"client_ip\"`"),
                );
            }
            u8::try_from(cx.int(p, 1, 128, &format!("{what}: `ipv6_prefix`"))?).ok()?
        }
        None => DEFAULT_IPV6_PREFIX,
    };
    Some(RateLimitPolicy { name: name.to_owned(), key, requests, per, burst, store, fail_open, ipv6_prefix })
}

/// `https://app.example.com`, `https://*.example.com`, `http://localhost:3000`, `*`, `null`.
pub(crate) fn cors_origin(text: &str) -> Result<CorsOrigin, String> {
    if text == "*" {
        return Ok(CorsOrigin::Any);
    }
    if text == "null" {
        return Ok(CorsOrigin::Exact("null".into()));
    }
    let err = |why: &str| {
        format!(
            "`{text}` is not an origin ({why}); write `https://app.example.com` or `https://*.example.com`"
        )
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(|| err("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(err("bad scheme"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(err("an origin has no path, query or user"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
            let port: u16 = p.parse().map_err(|_| err("bad port"))?;
            (h, Some(port))
        }
        _ => (rest, None),
    };
    let default_port = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let port = port.filter(|p| Some(*p) != default_port);
    let host = host.to_ascii_lowercase();
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') || !crate::validate::is_dns_name(suffix) {
            return Err(err("a wildcard is only allowed as the whole first label"));
        }
        return Ok(CorsOrigin::Wildcard { scheme, suffix: format!(".{suffix}"), port });
    }
    let host_ok = crate::validate::is_dns_name(&host)
        || (host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok());
    if !host_ok || host.contains('*') {
        return Err(err("bad host"));
    }
    Ok(CorsOrigin::Exact(match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    }))
}

fn cors_policy(cx: &mut Ctx<'_, '_>, name: &str, raw: &S<RawCors>) -> Option<CorsPolicy> {
    let what = format!("cors policy `{name}`");
    let c = raw.get_ref();
    let mut origins = Vec::new();
    let Some(list) = &c.allow_origins else {
        cx.missing(
            &format!("cors.{name}.allow_origins"),
            raw.span(),
            format!("{what} needs `allow_origins`, e.g. `[\"https://app.example.com\"]`"),
        );
        return None;
    };
    if list.get_ref().is_empty() {
        cx.error(list.span(), format!("{what}: `allow_origins` is empty"));
    }
    for o in list.get_ref() {
        match cors_origin(o.get_ref()) {
            Ok(origin) => origins.push(origin),
            Err(e) => cx.error(o.span(), format!("{what}: {e}")),
        }
    }
    let credentials = c.allow_credentials.as_ref().is_some_and(|b| *b.get_ref());
    if credentials && origins.contains(&CorsOrigin::Any) {
        cx.error(list.span(), format!("{what}: `allow_origins = [\"*\"]` cannot be combined with `allow_credentials = true` (browsers refuse it); list the origins"));
    }
    let mut methods = Vec::new();
    for m in strings(c.allow_methods.as_ref()) {
        if is_token(m.get_ref()) {
            methods.push(m.get_ref().to_ascii_uppercase());
        } else {
            cx.error(m.span(), format!("{what}: `{}` is not a method", m.get_ref()));
        }
    }
    if c.allow_methods.is_none() {
        methods = vec!["GET".into(), "HEAD".into(), "POST".into()];
    }
    let header_list = |cx: &mut Ctx<'_, '_>, raw: Option<&S<Vec<S<String>>>>, key: &str| -> Vec<String> {
        let mut out = Vec::new();
        for h in strings(raw) {
            if h.get_ref() == "*" || is_token(h.get_ref()) {
                out.push(h.get_ref().to_ascii_lowercase());
            } else {
                cx.error(h.span(), format!("{what}: `{key}`: `{}` is not a header name", h.get_ref()));
            }
        }
        out
    };
    let headers = header_list(cx, c.allow_headers.as_ref(), "allow_headers");
    let expose_headers = header_list(cx, c.expose_headers.as_ref(), "expose_headers");
    let max_age = cx.duration(&c.max_age, Duration::from_secs(600), &format!("{what}: `max_age`"), false);
    if max_age > Duration::from_secs(7200) {
        if let Some(m) = &c.max_age {
            cx.warning(m.span(), format!("{what}: browsers cap `max_age` (Chromium at 2h, Firefox at 24h)"));
        }
    }
    Some(CorsPolicy {
        name: name.to_owned(),
        origins,
        methods,
        headers,
        expose_headers,
        credentials,
        max_age,
    })
}

fn cidrs(cx: &mut Ctx<'_, '_>, raw: Option<&S<Vec<S<String>>>>, what: &str) -> Vec<Cidr> {
    let mut out = Vec::new();
    for c in strings(raw) {
        match crate::forward_proxy::ip_network(c.get_ref(), c.get_ref()) {
            Ok(net) => out.push(net),
            Err(e) => cx.error(c.span(), format!("{what}: {e}")),
        }
    }
    out
}

fn cache_store(cx: &mut Ctx<'_, '_>, c: &RawCacheStore) -> CacheStore {
    let d = CacheStore::default();
    let memory = match &c.memory {
        Some(m) => match cx.size(m, "`cache.memory`") {
            Some(n) if n < 1 << 20 => {
                cx.error(m.span(), "`cache.memory` must be at least 1MiB");
                d.memory
            }
            Some(n) => n,
            None => d.memory,
        },
        None => d.memory,
    };
    let purge_from = cidrs(cx, c.purge_from.as_ref(), "`cache.purge_from`");
    CacheStore { memory, purge_from }
}

/// Names and facts a route's protection keys refer to.
pub(crate) struct PolicyNames<'a> {
    pub auth: &'a [AuthPolicy],
    pub rate_limits: &'a [RateLimitPolicy],
    pub cors: &'a [CorsPolicy],
    pub redis: bool,
}

fn reference<'a>(
    cx: &mut Ctx<'_, '_>,
    raw: &S<String>,
    what: &str,
    kind: &str,
    known: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let known: Vec<String> = known.map(str::to_owned).collect();
    if known.iter().any(|k| k == raw.get_ref()) {
        Some(raw.get_ref().clone())
    } else {
        cx.error(raw.span(), crate::route::unknown_reference(what, kind, raw.get_ref(), &known));
        None
    }
}

/// A route's protection keys and cache settings.
pub(crate) fn route_protection(
    cx: &mut Ctx<'_, '_>,
    r: &RawRoute,
    what: &str,
    names: &PolicyNames<'_>,
) -> (RouteProtection, Option<RouteCache>) {
    let mut p = RouteProtection::default();
    if let Some(ip) = &r.ip {
        let allow = cidrs(cx, ip.get_ref().allow.as_ref(), &format!("{what}: `ip.allow`"));
        let deny = cidrs(cx, ip.get_ref().deny.as_ref(), &format!("{what}: `ip.deny`"));
        p.ip = Some(IpFilter { allow, deny });
    }
    if let Some(c) = &r.cors {
        p.cors = reference(cx, c, what, "cors policy", names.cors.iter().map(|c| c.name.as_str()));
    }
    let auth = r
        .auth
        .as_ref()
        .and_then(|a| reference(cx, a, what, "auth policy", names.auth.iter().map(|a| a.name.as_str())));
    match (&r.require, &auth) {
        (Some(req), None) if r.auth.is_none() => {
            cx.error(req.span(), format!("{what}: `require` needs `auth = \"POLICY\"`"));
        }
        _ => {}
    }
    if let Some(policy) = auth {
        let mut scopes = Vec::new();
        let mut claims = Vec::new();
        if let Some(req) = &r.require {
            scopes =
                strings(req.get_ref().scopes.as_ref()).into_iter().map(|s| s.get_ref().clone()).collect();
            for (claim, value) in req.get_ref().claims.iter().flat_map(|c| &c.get_ref().0) {
                claims.push((claim.get_ref().clone(), value.get_ref().clone()));
            }
        }
        p.auth = Some(RouteAuth { policy, scopes, claims });
    }
    if let Some(rl) = &r.rate_limit {
        p.rate_limit =
            reference(cx, rl, what, "rate limit", names.rate_limits.iter().map(|r| r.name.as_str()));
        let policy = names.rate_limits.iter().find(|x| Some(&x.name) == p.rate_limit.as_ref());
        if let Some(policy) = policy.filter(|x| matches!(x.key, RateKey::JwtClaim(_) | RateKey::ApiKey)) {
            if p.auth.is_none() && r.auth.is_none() {
                cx.error(
                    rl.span(),
                    format!(
                        "{what}: rate limit `{}` keys on the caller's identity, so the route needs `auth`",
                        policy.name
                    ),
                );
            }
        }
    }
    if let Some(c) = &r.compress {
        p.compress = match c.get_ref() {
            RawOnOr::On(false) => None,
            RawOnOr::On(true) => Some(compress_settings(cx, None, what)),
            RawOnOr::Table(t) => Some(compress_settings(cx, Some(t), what)),
        };
    }
    if let Some(i) = &r.idempotency {
        p.idempotency = match i.get_ref() {
            RawOnOr::On(false) => None,
            RawOnOr::On(true) => idempotency(cx, None, what, names.redis),
            RawOnOr::Table(t) => idempotency(cx, Some(t), what, names.redis),
        };
    }
    if let Some(m) = &r.max_body {
        p.max_body = cx.size(m, &format!("{what}: `max_body`"));
    }
    let cache = r.cache.as_ref().and_then(|c| match c.get_ref() {
        RawOnOr::On(false) => None,
        RawOnOr::On(true) => Some(RouteCache::default()),
        RawOnOr::Table(t) => Some(route_cache(cx, t, what)),
    });
    (p, cache)
}

const DEFAULT_COMPRESSIBLE: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
];

fn compress_settings(cx: &mut Ctx<'_, '_>, t: Option<&RawCompress>, what: &str) -> Compress {
    let what = format!("{what}: `compress`");
    let mut algorithms = Vec::new();
    for a in t.map(|t| strings(t.algorithms.as_ref())).unwrap_or_default() {
        let enc = match a.get_ref().to_ascii_lowercase().as_str() {
            "zstd" => Encoding::Zstd,
            "br" | "brotli" => Encoding::Brotli,
            "gzip" => Encoding::Gzip,
            other => {
                cx.error(
                    a.span(),
                    one_of(&format!("{what}: unknown algorithm"), other, &["zstd", "br", "gzip"]),
                );
                continue;
            }
        };
        if !algorithms.contains(&enc) {
            algorithms.push(enc);
        }
    }
    if algorithms.is_empty() {
        algorithms = vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];
    }
    let min_size = t
        .and_then(|t| t.min_size.as_ref())
        .and_then(|m| cx.size(m, &format!("{what}: `min_size`")))
        .unwrap_or(1024);
    let mut content_types = Vec::new();
    for c in t.map(|t| strings(t.content_types.as_ref())).unwrap_or_default() {
        let text = c.get_ref().to_ascii_lowercase();
        let ok = text.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a != "*"
                && is_token(a)
                && b.bytes()
                    .all(|x| x == b'*' || x == b'+' || is_token(std::str::from_utf8(&[x]).unwrap_or(" ")))
        });
        if ok {
            content_types.push(text);
        } else {
            cx.error(
                c.span(),
                format!("{what}: `{}` is not a media type like `text/*` or `application/json`", c.get_ref()),
            );
        }
    }
    if content_types.is_empty() {
        content_types = DEFAULT_COMPRESSIBLE.iter().map(|s| s.to_string()).collect();
    }
    let decompress_requests = t.and_then(|t| t.decompress_requests.as_ref()).is_some_and(|d| *d.get_ref());
    let max_ratio = t
        .and_then(|t| t.max_ratio.as_ref())
        .and_then(|m| cx.int(m, 1, 100_000, &format!("{what}: `max_ratio`")))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(100);
    Compress { algorithms, min_size, content_types, decompress_requests, max_ratio }
}

fn idempotency(
    cx: &mut Ctx<'_, '_>,
    t: Option<&RawIdempotency>,
    what: &str,
    has_redis: bool,
) -> Option<Idempotency> {
    let what = format!("{what}: `idempotency`");
    let header = t
        .and_then(|t| t.header.as_ref())
        .and_then(|h| header_name(cx, h, &what))
        .unwrap_or_else(|| "idempotency-key".into());
    let none = None;
    let ttl = cx.duration(
        t.map_or(&none, |t| &t.ttl),
        Duration::from_secs(86_400),
        &format!("{what}: `ttl`"),
        true,
    );
    let store = match t.and_then(|t| t.store.as_ref()).map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("memory", _)) => IdempotencyStore::Memory,
        Some(("redis", span)) => {
            if !has_redis {
                cx.error(
                    span,
                    format!("{what}: `store = \"redis\"` needs a `[redis]` table with the server's `url`"),
                );
            }
            IdempotencyStore::Redis
        }
        Some((other, span)) => {
            cx.error(span, one_of(&format!("{what}: unknown `store`"), other, &["memory", "redis"]));
            return None;
        }
    };
    let max_body = t
        .and_then(|t| t.max_body.as_ref())
        .and_then(|m| cx.size(m, &format!("{what}: `max_body`")))
        .unwrap_or(1 << 20);
    let mut methods = Vec::new();
    for m in t.map(|t| strings(t.methods.as_ref())).unwrap_or_default() {
        let up = m.get_ref().to_ascii_uppercase();
        if matches!(up.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE") {
            cx.error(m.span(), format!("{what}: `{up}` is already safe to repeat; idempotency keys are for POST, PATCH and other unsafe methods"));
        } else if is_token(&up) {
            methods.push(up);
        } else {
            cx.error(m.span(), format!("{what}: `{}` is not a method", m.get_ref()));
        }
    }
    if methods.is_empty() {
        methods = vec!["POST".into(), "PATCH".into()];
    }
    let max_keys = t
        .and_then(|t| t.max_keys.as_ref())
        .and_then(|m| cx.int(m, 1, 1 << 32, &format!("{what}: `max_keys`")))
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100_000);
    Some(Idempotency { header, ttl, store, max_body, methods, max_keys })
}

fn route_cache(cx: &mut Ctx<'_, '_>, t: &RawRouteCache, what: &str) -> RouteCache {
    let what = format!("{what}: `cache`");
    let d = RouteCache::default();
    let mut key = Vec::new();
    for k in strings(t.key.as_ref()) {
        let part = match k.get_ref().as_str() {
            "method" => CacheKeyPart::Method,
            "host" => CacheKeyPart::Host,
            "path" => CacheKeyPart::Path,
            "query" => CacheKeyPart::Query,
            other => {
                cx.error(
                    k.span(),
                    one_of(&format!("{what}: unknown key part"), other, &["method", "host", "path", "query"]),
                );
                continue;
            }
        };
        if !key.contains(&part) {
            key.push(part);
        }
    }
    if t.key.is_some() && !key.contains(&CacheKeyPart::Path) {
        if let Some(k) = &t.key {
            cx.error(
                k.span(),
                format!("{what}: `key` must include `path`, or every URL would share one entry"),
            );
        }
    }
    if key.is_empty() {
        key = d.key;
    }
    let ignore_query = strings(t.ignore_query.as_ref()).into_iter().map(|s| s.get_ref().clone()).collect();
    let mut vary_cookies = Vec::new();
    for c in strings(t.vary_cookies.as_ref()) {
        if is_token(c.get_ref()) {
            vary_cookies.push(c.get_ref().clone());
        } else {
            cx.error(c.span(), format!("{what}: `{}` is not a cookie name", c.get_ref()));
        }
    }
    let default_ttl = t
        .default_ttl
        .as_ref()
        .map(|_| cx.duration(&t.default_ttl, Duration::ZERO, &format!("{what}: `default_ttl`"), false));
    let max_object = t
        .max_object
        .as_ref()
        .and_then(|m| cx.size(m, &format!("{what}: `max_object`")))
        .unwrap_or(d.max_object);
    let stale_while_revalidate = cx.duration(
        &t.stale_while_revalidate,
        d.stale_while_revalidate,
        &format!("{what}: `stale_while_revalidate`"),
        false,
    );
    let stale_if_error =
        cx.duration(&t.stale_if_error, d.stale_if_error, &format!("{what}: `stale_if_error`"), false);
    let coalesce_timeout =
        cx.duration(&t.coalesce_timeout, d.coalesce_timeout, &format!("{what}: `coalesce_timeout`"), false);
    RouteCache {
        key,
        ignore_query,
        vary_cookies,
        default_ttl,
        max_object,
        stale_while_revalidate,
        stale_if_error,
        coalesce_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(parse_rate("6000/m").unwrap(), (6000, Duration::from_secs(60)));
        assert_eq!(parse_rate("10/10s").unwrap(), (10, Duration::from_secs(10)));
        assert_eq!(parse_rate("5/h").unwrap(), (5, Duration::from_secs(3600)));
        for bad in ["0/s", "x/s", "100", "100/", "100/fortnight", "-1/s", "10/0s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(cors_origin("*").unwrap(), CorsOrigin::Any);
        assert_eq!(
            cors_origin("HTTPS://App.Example.com:443").unwrap(),
            CorsOrigin::Exact("https://app.example.com".into())
        );
        assert_eq!(
            cors_origin("http://localhost:3000").unwrap(),
            CorsOrigin::Exact("http://localhost:3000".into())
        );
        assert_eq!(
            cors_origin("https://*.example.com").unwrap(),
            CorsOrigin::Wildcard { scheme: "https".into(), suffix: ".example.com".into(), port: None }
        );
        assert_eq!(cors_origin("http://[::1]:8080").unwrap(), CorsOrigin::Exact("http://[::1]:8080".into()));
        for bad in [
            "app.example.com",
            "https://a.com/path",
            "https://*",
            "https://a.*.com",
            "https://u@a.com",
            "https://a.com:99999",
        ] {
            assert!(cors_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_digests() {
        let d = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(hex32(d).unwrap()[0], 0x9f);
        assert!(hex32(&d[1..]).is_none());
        assert!(hex32(&d.replace('9', "g")).is_none());
    }
}
