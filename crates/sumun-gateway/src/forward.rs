//! Sending a prepared request to an upstream pool: choosing the endpoint (sticky cookie, hash
//! key, balancer), asking the breakers, and retrying when — and only when — it is safe: the
//! request never reached the upstream, or the method is idempotent (or the policy opts in) and
//! the body could be replayed from its bounded buffer; within the retry budget, with backoff,
//! on another endpoint when one exists, and inside the request's overall deadline.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use sumun_config::{HashKey, RetryPolicy};
use sumun_http::replay::ReplayBody;
use sumun_http::{Body, ErrorKind, ProxyError};
use sumun_upstream::balance::hash_bytes;
use sumun_upstream::endpoint::Outcome;
use sumun_upstream::retry::{Backoff, Failure, parse_retry_after, retryable};
use sumun_upstream::{Refused, UpstreamPool, outcome_of};

/// What the forwarder needs to know about the request beyond its head.
pub struct Target<'a> {
    pub pool: &'a UpstreamPool,
    /// The normalized request path (before rewrites), for `hash_key = "path"`.
    pub path: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
}

/// The response and the endpoint that produced it.
pub struct Forwarded {
    pub response: Response<Incoming>,
    /// A `Set-Cookie` to send when sticky sessions pinned (or re-pinned) the client.
    pub sticky_cookie: Option<HeaderValue>,
}

pub async fn forward(
    t: Target<'_>,
    parts: Parts,
    body: Body,
    // The endpoint that served the last try, for the access log.
    upstream: &mut Option<std::sync::Arc<str>>,
) -> Result<Forwarded, ProxyError> {
    let pool = t.pool;
    let cfg = pool.config();
    let deadline = Instant::now() + cfg.timeouts.request;
    let hash = cfg.hash_key.as_ref().and_then(|k| request_hash(k, &parts, &t));
    let sticky = cfg
        .sticky
        .as_ref()
        .and_then(|s| cookie(&parts.headers, &s.cookie))
        .and_then(|id| pool.sticky_endpoint(id));

    pool.count_request();
    let Some(policy) = pool.retry_policy() else {
        // The one-try path stays inline; the retry loop is boxed below, so this future (part of
        // every request's, and moved with it) holds one upstream call, not two.
        // One try: no replay buffer, no header copies.
        let i = match sticky {
            Some(i) => i,
            None => pool.pick(hash, &[])?,
        };
        let permit = pool.acquire(i).map_err(breaker_error)?;
        *upstream = pool.endpoint(i).map(|e| e.label.clone());
        let t0 = Instant::now();
        let r = within(deadline, pool.send(&permit, Request::from_parts(parts, body))).await;
        pool.observe(i, t0.elapsed());
        pool.record(permit, outcome_of(&r));
        let response = r?;
        return Ok(Forwarded { sticky_cookie: sticky_cookie(pool, sticky, i), response });
    };
    Box::pin(with_retries(pool, policy, deadline, hash, sticky, parts, body, upstream)).await
}

/// `forward` when the upstream retries: each try gets a copy of the head and a replayable body.
#[allow(clippy::too_many_arguments)]
async fn with_retries(
    pool: &UpstreamPool,
    policy: &RetryPolicy,
    deadline: Instant,
    hash: Option<u64>,
    sticky: Option<usize>,
    parts: Parts,
    body: Body,
    upstream: &mut Option<std::sync::Arc<str>>,
) -> Result<Forwarded, ProxyError> {
    let mut body = ReplayBody::new(body, policy.replay_buffer);
    let backoff = Backoff::from_policy(policy);
    let mut tried: Vec<usize> = Vec::with_capacity(policy.attempts as usize);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= policy.attempts;
        let i = match (attempt, sticky) {
            (1, Some(i)) => i,
            _ => pool.pick(hash, &tried)?,
        };
        tried.push(i);
        let permit = match pool.acquire(i) {
            Ok(p) => p,
            // This endpoint's own breaker is open: another endpoint may do.
            Err(open) if open.endpoint && !last => continue,
            Err(open) => return Err(breaker_error(open)),
        };
        *upstream = pool.endpoint(i).map(|e| e.label.clone());
        let spare = body.try_clone();
        let req = request(&parts, body);
        let try_deadline = match policy.per_try_timeout {
            Some(d) => deadline.min(Instant::now() + d),
            None => deadline,
        };
        let t0 = Instant::now();
        let r = within(try_deadline, pool.send(&permit, req)).await;
        pool.observe(i, t0.elapsed());
        let outcome = outcome_of(&r);
        pool.record(permit, outcome);

        let sent = !matches!(outcome, Some(Outcome::ConnectFailure));
        let replayable = spare.as_ref().is_some_and(|b| !b.is_capped());
        let failure = outcome.and_then(Failure::from_outcome);
        let safe = failure.is_some_and(|f| retryable(policy, f, &parts.method, replayable, sent));
        let Some(next) = spare.filter(|_| safe && !last && Instant::now() < deadline) else {
            return finish(r, pool, sticky, i);
        };
        if !pool.try_retry() {
            metrics::counter!("sumun_upstream_retries_denied_total", "upstream" => pool.name.to_string())
                .increment(1);
            return finish(r, pool, sticky, i);
        }
        let server_hint = r
            .as_ref()
            .ok()
            .and_then(|res| res.headers().get(header::RETRY_AFTER))
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        // None: the server asked us to wait longer than we hold a client; pass its answer on.
        let Some(wait) = backoff.delay(attempt, server_hint) else {
            return finish(r, pool, sticky, i);
        };
        if Instant::now() + wait >= deadline {
            return finish(r, pool, sticky, i);
        }
        // The failed response (if any) is dropped here; its connection is not reused.
        drop(r);
        metrics::counter!("sumun_upstream_retries_total", "upstream" => pool.name.to_string()).increment(1);
        tracing::debug!(upstream = %pool.name, attempt, wait_ms = wait.as_millis() as u64, "retrying");
        tokio::time::sleep(wait).await;
        body = next;
    }
}

fn finish(
    r: Result<Response<Incoming>, ProxyError>,
    pool: &UpstreamPool,
    sticky: Option<usize>,
    i: usize,
) -> Result<Forwarded, ProxyError> {
    let response = r?;
    Ok(Forwarded { sticky_cookie: sticky_cookie(pool, sticky, i), response })
}

/// A fresh request for one try, from the prepared head.
fn request(parts: &Parts, body: ReplayBody) -> Request<Body> {
    let mut req = Request::new(Body::boxed(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// `f` with the request's deadline. A mapped `Timeout`, not an `async fn`: an async fn would
/// hold `f` twice (as its argument and inside the timeout), and this future is part of every
/// request's.
fn within<F>(
    deadline: Instant,
    f: F,
) -> impl std::future::Future<Output = Result<Response<Incoming>, ProxyError>>
where
    F: std::future::Future<Output = Result<Response<Incoming>, ProxyError>>,
{
    tokio::time::timeout_at(deadline.into(), f).map(|r| match r {
        Ok(r) => r,
        Err(_) => Err(ProxyError::new(ErrorKind::UpstreamTimeout, "the upstream did not answer in time")),
    })
}

fn breaker_error(open: Refused) -> ProxyError {
    ProxyError::new(
        ErrorKind::NoHealthyEndpoint,
        "the upstream is failing; requests are paused (circuit open)",
    )
    .with_retry_after(open.retry_after.max(Duration::from_secs(1)))
}

/// `Set-Cookie` pinning the client to endpoint `i`, when sticky sessions are on and the client
/// was not already pinned there.
fn sticky_cookie(pool: &UpstreamPool, pinned: Option<usize>, i: usize) -> Option<HeaderValue> {
    let s = pool.config().sticky.as_ref()?;
    if pinned == Some(i) {
        return None;
    }
    let id = pool.sticky_id(i)?;
    HeaderValue::from_str(&format!(
        "{}={}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
        s.cookie,
        id,
        s.ttl.as_secs()
    ))
    .ok()
}

/// The request's hash key for the hashing balancers; None when the request lacks it.
fn request_hash(key: &HashKey, parts: &Parts, t: &Target<'_>) -> Option<u64> {
    match key {
        HashKey::Header(name) => parts.headers.get(name.as_str()).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => cookie(&parts.headers, name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::ClientIp => t.client_ip.map(|ip| match ip {
            std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
        HashKey::Path => Some(hash_bytes(t.path.as_bytes())),
        HashKey::Query(name) => parts.uri.query().and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| hash_bytes(v.as_bytes()))
            })
        }),
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sumun_sticky=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(cookie(&h, "sumun_sticky"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
