//! Rate limiting (`[rate_limit.NAME]`): GCRA with `requests` per `per`, `burst` at once.
//!
//! `store = "local"` counts per instance (`local`: governor, bounded memory). `store = "redis"`
//! counts globally across every instance sharing the Redis (`global`: one script call per
//! request). When Redis is down or slow, `fail_open = true` lets requests through and
//! `fail_open = false` applies the same quota per instance, both logged (at most once per
//! 10 s) and counted in `sumun_rate_limit_redis_fallback_total{policy,mode}`.
//!
//! Answers carry the IETF `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers, structured fields); a refusal is a 429 with
//! `Retry-After` in whole seconds.

mod global;
mod local;

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sumun_config::{RateKey, RateLimitPolicy, RateStore};

use self::global::GlobalStore;
use self::local::{Gcra, LocalStore};
use super::Rejection;
use super::auth::Identity;
use super::redis::Redis;

/// What a limit can key on.
pub struct RateInput<'a> {
    /// The client address (trusted Forwarded/X-Forwarded-For applied).
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
    pub identity: Option<&'a Identity>,
    pub route: &'a str,
}

/// One check's outcome, from either store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now after this one.
    pub remaining: u32,
    /// Refused: how long until one request would pass.
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Fallback warnings: at most one per this long per policy.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A request's key: borrowed from the request, or formatted; a client address (45 bytes at
/// most) is formatted in place, without a heap allocation per request.
pub(crate) enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    Inline([u8; 48], usize),
    Owned(Vec<u8>),
}

impl Deref for KeyBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Inline(buf, len) => &buf[..*len],
            KeyBytes::Owned(v) => v,
        }
    }
}

impl KeyBytes<'_> {
    /// The address as text, as `IpAddr`'s `Display` writes it.
    fn ip(ip: IpAddr) -> Self {
        let mut buf = [0u8; 48];
        let mut rest = &mut buf[..];
        match write!(rest, "{ip}") {
            Ok(()) => {
                let len = 48 - rest.len();
                KeyBytes::Inline(buf, len)
            }
            // Longer than any address text; kept correct all the same.
            Err(_) => KeyBytes::Owned(ip.to_string().into_bytes()),
        }
    }
}

/// How a request's key is read, resolved from `RateKey` once.
enum KeySpec {
    /// The client address; IPv6 ones masked to their leading bits (`ipv6_prefix`).
    ClientIp {
        v6_mask: u128,
    },
    /// None: not a valid header name (refused at load; then every request shares a bucket).
    Header(Option<HeaderName>),
    JwtClaim(String),
    ApiKey,
    Route,
}

pub struct Limiter {
    policy: RateLimitPolicy,
    name: Arc<str>,
    key: KeySpec,
    /// `store = "local"`: the limit. `store = "redis"`: the fallback while Redis is down
    /// (`fail_open = false`). Shared with the previous limiter on reload.
    local: Arc<LocalStore>,
    /// `store = "redis"` with a `[redis]` connection.
    global: Option<GlobalStore>,
    /// `"NAME";q=N;w=SECONDS`.
    policy_header: HeaderValue,
    /// The policy name as a structured-field string, for `RateLimit`.
    sf_name: String,
    checks: metrics::Counter,
    limited: metrics::Counter,
    /// `store = "redis"`: counts requests decided without Redis (mode `open` or `local`).
    fallback: Option<metrics::Counter>,
    epoch: Instant,
    /// Milliseconds since `epoch` (+1) of the last fallback warning; 0 = never.
    last_warn: AtomicU64,
}

impl Limiter {
    /// `previous`: the running limiter of the same name, whose state is kept when the policy
    /// did not change.
    pub fn new(policy: &RateLimitPolicy, redis: Option<Redis>, previous: Option<&Limiter>) -> Self {
        let name: Arc<str> = Arc::from(policy.name.as_str());
        let gcra = Gcra::new(policy.requests, policy.per, policy.burst);
        let local = match previous {
            Some(p) if p.policy.name == policy.name && p.local.gcra() == gcra => p.local.clone(),
            _ => Arc::new(LocalStore::new(&name, gcra)),
        };
        let global = match (policy.store, redis) {
            (RateStore::Redis, Some(r)) => Some(GlobalStore::new(r, &policy.name, gcra)),
            (RateStore::Redis, None) => {
                // Refused by config validation; kept safe anyway: as if Redis were down.
                tracing::error!(policy = %name, "rate limit with store = \"redis\" but no [redis]; using its fallback");
                None
            }
            (RateStore::Local, _) => None,
        };
        let fallback = (policy.store == RateStore::Redis).then(|| {
            let mode = if policy.fail_open { "open" } else { "local" };
            metrics::counter!("sumun_rate_limit_redis_fallback_total", "policy" => policy.name.clone(), "mode" => mode)
        });
        let sf_name = sf_string(&policy.name);
        let (q, w) = advertised_quota(policy.requests, policy.per);
        let policy_header = HeaderValue::try_from(format!("{sf_name};q={q};w={w}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"policy\""));
        Limiter {
            policy: policy.clone(),
            key: match &policy.key {
                RateKey::ClientIp => KeySpec::ClientIp {
                    v6_mask: u128::MAX
                        .checked_shl(128 - u32::from(policy.ipv6_prefix.clamp(1, 128)))
                        .unwrap_or(0),
                },
                RateKey::Header(h) => KeySpec::Header(HeaderName::from_bytes(h.as_bytes()).ok()),
                RateKey::JwtClaim(c) => KeySpec::JwtClaim(c.clone()),
                RateKey::ApiKey => KeySpec::ApiKey,
                RateKey::Route => KeySpec::Route,
            },
            local,
            global,
            policy_header,
            sf_name,
            checks: metrics::counter!("sumun_rate_limit_checks_total", "policy" => policy.name.clone()),
            limited: metrics::counter!("sumun_rate_limited_total", "policy" => policy.name.clone()),
            fallback,
            epoch: Instant::now(),
            last_warn: AtomicU64::new(0),
            name,
        }
    }

    /// Ok: the headers to add to the response (`RateLimit`, `RateLimit-Policy`); Err: 429.
    pub async fn check(&self, input: &RateInput<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        self.checks.increment(1);
        let key = self.key_of(input);
        let key = key.as_deref();
        let decision = match (self.policy.store, &self.global) {
            (RateStore::Local, _) => Some(self.local.check(key)),
            (RateStore::Redis, Some(g)) => match g.check(key).await {
                Ok(d) => Some(d),
                Err(e) => self.fallback(key, Some(&e)),
            },
            (RateStore::Redis, None) => self.fallback(key, None),
        };
        match decision {
            // Failing open: nothing is known about the budget, so no headers either.
            None => Ok(Vec::new()),
            Some(d) => self.answer(d),
        }
    }

    /// The decision without Redis: None = let through (`fail_open`), or the local limit.
    fn fallback(&self, key: Option<&[u8]>, err: Option<&super::redis::RedisError>) -> Option<Decision> {
        if let Some(c) = &self.fallback {
            c.increment(1);
        }
        self.warn_fallback(err);
        if self.policy.fail_open { None } else { Some(self.local.check(key)) }
    }

    fn warn_fallback(&self, err: Option<&super::redis::RedisError>) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1);
        let last = self.last_warn.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        if self.last_warn.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let mode = if self.policy.fail_open { "open" } else { "local" };
        match err {
            Some(e) => {
                tracing::warn!(policy = %self.name, mode, error = %e, "rate limit: Redis unavailable, using the fallback")
            }
            None => tracing::warn!(policy = %self.name, mode, "rate limit: no Redis, using the fallback"),
        }
    }

    fn answer(&self, d: Decision) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let mut headers = Vec::with_capacity(2);
        headers.push((RATELIMIT_POLICY.clone(), self.policy_header.clone()));
        let state = format!("{};r={};t={}", self.sf_name, d.remaining, ceil_secs(d.reset));
        if let Ok(v) = HeaderValue::try_from(state) {
            headers.push((RATELIMIT.clone(), v));
        }
        if d.allowed {
            return Ok(headers);
        }
        self.limited.increment(1);
        let retry = ceil_secs(d.retry_after).max(1);
        let mut r = Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("rate limit exceeded; retry in {retry} s"),
        )
        .with_header(RETRY_AFTER, HeaderValue::from(retry));
        for (n, v) in headers {
            r = r.with_header(n, v);
        }
        Err(r)
    }

    /// The request's key; None = the request has none (one shared bucket).
    fn key_of<'a>(&self, input: &'a RateInput<'a>) -> Option<KeyBytes<'a>> {
        match &self.key {
            KeySpec::ClientIp { v6_mask } => input.client_ip.map(|ip| {
                KeyBytes::ip(match ip.to_canonical() {
                    IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & v6_mask)),
                    v4 => v4,
                })
            }),
            KeySpec::Header(h) => {
                h.as_ref().and_then(|h| input.headers.get(h)).map(|v| KeyBytes::Borrowed(v.as_bytes()))
            }
            KeySpec::JwtClaim(c) => match input.identity?.claims.get(c)? {
                serde_json::Value::String(s) => Some(KeyBytes::Borrowed(s.as_bytes())),
                serde_json::Value::Number(n) => Some(KeyBytes::Owned(n.to_string().into_bytes())),
                _ => None,
            },
            KeySpec::ApiKey => {
                let id = input.identity?;
                Some(KeyBytes::Borrowed(id.api_key.as_deref().unwrap_or(&id.subject).as_bytes()))
            }
            KeySpec::Route => Some(KeyBytes::Borrowed(input.route.as_bytes())),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `q` and `w` of `RateLimit-Policy`: the window in whole seconds (at least 1), and the
/// quota scaled to it when `per` is not a whole number of seconds (`10/100ms` → q=100, w=1).
fn advertised_quota(requests: u32, per: Duration) -> (u64, u64) {
    let w = ceil_secs(per).max(1);
    if per == Duration::from_secs(w) {
        return (u64::from(requests), w);
    }
    let q = u128::from(requests) * u128::from(w) * 1_000_000_000 / per.as_nanos().max(1);
    (u64::try_from(q).unwrap_or(u64::MAX), w)
}

/// An RFC 8941 string: printable ASCII, `"` and `\` escaped; anything else becomes `?`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
