//! One GET/HEAD request through the cache: look up, serve fresh, serve stale (while
//! revalidating, or because the origin failed), revalidate, or fill, with concurrent misses
//! coalesced onto one upstream request.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use sumun_http::{Body, ProxyError};

use crate::coalesce::{FillGuard, FillState, Join};
use crate::fill::{Fill, FillBody, drain};
use crate::freshness::{self, Exchange, RequestDirectives, Storable, Usable};
use crate::key::{self, PrimaryKey, Secondary, Target};
use crate::respond::{self, for_storage, merge_update};
use crate::status::{CacheStatus, Fwd};
use crate::store::{Found, Stored, tags_of};
use crate::{CACHE_NAME, Inner, Origin, RoutePolicy, SURROGATE_CAPABILITY};

static SURROGATE_CAPABILITY_NAME: header::HeaderName =
    header::HeaderName::from_static("surrogate-capability");

/// The request, owned, so it can be re-sent (revalidation) and sent from a task.
struct Req {
    head: Parts,
    directives: RequestDirectives,
    key: PrimaryKey,
    authorized: bool,
}

/// The fast path, tried before the request is prepared for the upstream: a fresh stored
/// response (or one the request's `max-stale` accepts) selected by the client's own headers.
/// None: go through [`serve`].
pub(crate) fn fresh_hit(
    inner: &Inner,
    route: &RoutePolicy,
    target: Target<'_>,
    head: &Parts,
) -> Option<Response<Body>> {
    if head.headers.contains_key(header::RANGE) {
        return None;
    }
    let directives = RequestDirectives::from_headers(&head.headers);
    if directives.no_store {
        return None;
    }
    let key = key::primary(&target, &route.key, &route.ignore_query);
    let authorized = head.headers.contains_key(header::AUTHORIZATION);
    let Found::Hit(entry) = inner.store.lookup(key.hash, &head.headers, authorized) else { return None };
    let now = SystemTime::now();
    let usable = freshness::usable(&entry.freshness, now, &directives);
    if !matches!(usable, Usable::Fresh | Usable::StaleAccepted) {
        return None;
    }
    if usable == Usable::StaleAccepted {
        inner.metrics.stale_accepted.increment(1);
    }
    inner.metrics.hits.increment(1);
    let mut res = respond::from_stored(&entry, &head.method, &head.headers, now);
    mark(&mut res, &CacheStatus::hit(entry.freshness.ttl_secs(now)));
    Some(res)
}

pub(crate) async fn serve(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    target: Target<'_>,
    mut head: Parts,
    origin: Arc<dyn Origin>,
) -> Result<Response<Body>, ProxyError> {
    head.headers.append(SURROGATE_CAPABILITY_NAME.clone(), SURROGATE_CAPABILITY);
    let directives = RequestDirectives::from_headers(&head.headers);
    let key = key::primary(&target, &route.key, &route.ignore_query);
    let authorized = head.headers.contains_key(header::AUTHORIZATION);
    let req = Req { head, directives, key, authorized };

    if req.head.headers.contains_key(header::RANGE) && !req.directives.no_store {
        // A range of a fresh stored complete response is cut from it; anything else about
        // ranges goes to the origin, and partial responses are not stored.
        let now = SystemTime::now();
        if let Found::Hit(entry) = inner.store.lookup(req.key.hash, &req.head.headers, req.authorized)
            && freshness::usable(&entry.freshness, now, &req.directives) == Usable::Fresh
            && let Some(mut res) = respond::range_from_stored(&entry, &req.head.headers, now)
        {
            inner.metrics.hits.increment(1);
            mark(&mut res, &CacheStatus::hit(entry.freshness.ttl_secs(now)));
            return Ok(res);
        }
    }
    if req.directives.no_store || req.head.headers.contains_key(header::RANGE) {
        inner.metrics.bypass.increment(1);
        return pass(&origin, req.head, CacheStatus::fwd(Fwd::Bypass)).await;
    }
    let is_head = req.head.method == Method::HEAD;
    // Requests that demand the origin's word, or that carry credentials, don't share fills.
    let coalescable = !req.authorized
        && !is_head
        && !req.directives.no_cache
        && req.directives.max_age.is_none()
        && req.directives.min_fresh.is_none();
    let mut collapsed = false;
    loop {
        let now = SystemTime::now();
        let found = inner.store.lookup(req.key.hash, &req.head.headers, req.authorized);
        let entry = match found {
            Found::Hit(e) => e,
            miss => {
                if req.directives.only_if_cached {
                    return Ok(gateway_timeout());
                }
                let fwd = if matches!(miss, Found::VaryMiss) { Fwd::VaryMiss } else { Fwd::UriMiss };
                inner.metrics.misses.increment(1);
                if is_head {
                    return pass(&origin, req.head, CacheStatus::fwd(fwd)).await;
                }
                let guard = if coalescable && !collapsed {
                    match inner.inflight.join(req.key.hash) {
                        Join::Leader(g) => Some(g),
                        Join::Waiter(w) => {
                            inner.metrics.coalesced.increment(1);
                            collapsed = true;
                            if w.wait(route.coalesce_timeout).await == Some(FillState::Stored) {
                                continue;
                            }
                            None
                        }
                    }
                } else {
                    None
                };
                let mut status = CacheStatus::fwd(fwd);
                status.collapsed = collapsed;
                return fetch(inner, route, req, origin, guard, status).await;
            }
        };
        let usable = freshness::usable(&entry.freshness, now, &req.directives);
        let ttl = entry.freshness.ttl_secs(now);
        match usable {
            Usable::Fresh | Usable::StaleAccepted => {
                if usable == Usable::StaleAccepted {
                    inner.metrics.stale_accepted.increment(1);
                }
                inner.metrics.hits.increment(1);
                let mut status = CacheStatus::hit(ttl);
                status.collapsed = collapsed;
                return Ok(hit(&entry, &req, now, &status));
            }
            Usable::StaleWhileRevalidate => {
                inner.metrics.stale_revalidating.increment(1);
                inner.metrics.hits.increment(1);
                if let Some(guard) = inner.inflight.try_lead(req.key.hash) {
                    refresh_in_background(inner, route, &req, &entry, origin, guard);
                }
                let status = CacheStatus::hit(ttl).detail("stale-while-revalidate");
                return Ok(hit(&entry, &req, now, &status));
            }
            Usable::Revalidate => {
                if req.directives.only_if_cached {
                    return Ok(gateway_timeout());
                }
                let guard = if coalescable && !collapsed {
                    match inner.inflight.join(req.key.hash) {
                        Join::Leader(g) => Some(g),
                        Join::Waiter(w) => {
                            inner.metrics.coalesced.increment(1);
                            collapsed = true;
                            if w.wait(route.coalesce_timeout).await == Some(FillState::Stored) {
                                continue;
                            }
                            None
                        }
                    }
                } else {
                    None
                };
                if is_head {
                    return head_update(inner, route, req, entry, origin).await;
                }
                let fwd = if req.directives.no_cache
                    || req.directives.max_age.is_some()
                    || req.directives.min_fresh.is_some()
                {
                    Fwd::Request
                } else {
                    Fwd::Stale
                };
                return revalidate(inner, route, req, entry, origin, guard, fwd).await;
            }
        }
    }
}

fn mark(res: &mut Response<Body>, status: &CacheStatus) {
    status.apply(CACHE_NAME, res.headers_mut());
    res.extensions_mut().insert(crate::status::Outcome(status.outcome()));
}

fn gateway_timeout() -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    mark(&mut res, &CacheStatus::default().detail("only-if-cached"));
    res
}

fn hit(entry: &Arc<Stored>, req: &Req, now: SystemTime, status: &CacheStatus) -> Response<Body> {
    let mut res = respond::from_stored(entry, &req.head.method, &req.head.headers, now);
    mark(&mut res, status);
    res
}

/// Straight to the origin and back, nothing stored.
async fn pass(
    origin: &Arc<dyn Origin>,
    head: Parts,
    mut status: CacheStatus,
) -> Result<Response<Body>, ProxyError> {
    let mut res = origin.send(head).await?;
    status.fwd_status = Some(res.status().as_u16());
    mark(&mut res, &status);
    Ok(res)
}

/// A copy of a request head (extensions are not carried: nothing upstream reads them).
fn clone_head(h: &Parts) -> Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = h.method.clone();
    *req.uri_mut() = h.uri.clone();
    *req.version_mut() = h.version;
    *req.headers_mut() = h.headers.clone();
    req.into_parts().0
}

/// The head for a conditional request validating `entry` (§4.3.1): the client's own
/// conditionals replaced by the stored validators.
fn conditional_head(head: &Parts, entry: &Stored) -> Parts {
    let mut h = clone_head(head);
    respond::take_conditionals(&mut h.headers);
    h.method = Method::GET;
    if let Some(etag) = entry.headers.get(header::ETAG) {
        h.headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = entry.headers.get(header::LAST_MODIFIED) {
        h.headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    h
}

/// The freshness decision for a response to `head`.
fn evaluate(
    route: &RoutePolicy,
    head: &Parts,
    status: StatusCode,
    headers: &HeaderMap,
    times: (SystemTime, SystemTime),
) -> Storable {
    freshness::evaluate(
        &Exchange {
            method: &Method::GET,
            request_headers: &head.headers,
            status,
            headers,
            request_time: times.0,
            response_time: times.1,
        },
        &route.defaults,
        CACHE_NAME,
    )
}

#[allow(clippy::too_many_arguments)]
async fn revalidate(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    req: Req,
    entry: Arc<Stored>,
    origin: Arc<dyn Origin>,
    guard: Option<FillGuard>,
    fwd: Fwd,
) -> Result<Response<Body>, ProxyError> {
    if !entry.freshness.has_validators {
        let status = CacheStatus::fwd(fwd);
        return fetch_with_fallback(inner, route, req, origin, guard, status, Some(entry)).await;
    }
    let request_time = SystemTime::now();
    let up = conditional_head(&req.head, &entry);
    let result = origin.send(up).await;
    let now = SystemTime::now();
    let stale_ok = entry.freshness.stale_if_error_ok(now, &req.directives);
    let res = match result {
        Err(e) if stale_ok => return Ok(serve_stale_on_error(inner, &entry, &req, now, e.status().as_u16())),
        Err(e) => return Err(e),
        Ok(res) if res.status().is_server_error() && stale_ok => {
            let code = res.status().as_u16();
            return Ok(serve_stale_on_error(inner, &entry, &req, now, code));
        }
        Ok(res) => res,
    };
    inner.metrics.revalidated.increment(1);
    if res.status() == StatusCode::NOT_MODIFIED {
        let (parts, _) = res.into_parts();
        let merged = merge_update(&entry.headers, &parts.headers);
        let decision = evaluate(route, &req.head, entry.status, &merged, (request_time, now));
        let updated = Arc::new(match decision {
            Storable::Yes(f) => entry.with_headers(merged, f),
            Storable::No(_) => entry.with_headers(merged, entry.freshness),
        });
        let mut status = CacheStatus::fwd(fwd);
        status.fwd_status = Some(304);
        if matches!(decision, Storable::Yes(_)) {
            inner.store.insert(req.key.hash, &req.key.url, updated.clone());
            status.ttl = Some(updated.freshness.ttl_secs(now));
            status.stored = true;
            if let Some(g) = guard {
                g.stored();
            }
        } else {
            inner.store.remove(req.key.hash);
        }
        let mut response = respond::from_stored(&updated, &req.head.method, &req.head.headers, now);
        mark(&mut response, &status);
        return Ok(response);
    }
    let status = CacheStatus::fwd(fwd);
    admit(inner, route, req, res, guard, status, (request_time, now), true)
}

/// §4.3.5: a HEAD for a stored response that needs validation goes upstream as HEAD; when
/// its validators match the stored response, its fields update the stored one (like a 304);
/// when they differ, the stored response is outdated and removed.
async fn head_update(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    req: Req,
    entry: Arc<Stored>,
    origin: Arc<dyn Origin>,
) -> Result<Response<Body>, ProxyError> {
    let request_time = SystemTime::now();
    let mut up = clone_head(&req.head);
    respond::take_conditionals(&mut up.headers);
    let result = origin.send(up).await;
    let now = SystemTime::now();
    let mut res = match result {
        Err(e) if entry.freshness.stale_if_error_ok(now, &req.directives) => {
            return Ok(serve_stale_on_error(inner, &entry, &req, now, e.status().as_u16()));
        }
        r => r?,
    };
    let mut status = CacheStatus::fwd(Fwd::Stale);
    status.fwd_status = Some(res.status().as_u16());
    if res.status() == StatusCode::OK && entry.status == StatusCode::OK {
        if same_validators(&entry.headers, res.headers()) {
            let merged = merge_update(&entry.headers, res.headers());
            if let Storable::Yes(f) = evaluate(route, &req.head, entry.status, &merged, (request_time, now)) {
                inner.store.insert(req.key.hash, &req.key.url, Arc::new(entry.with_headers(merged, f)));
                status.stored = true;
                status.ttl = Some(f.ttl_secs(now));
            }
        } else if !req.authorized {
            inner.store.remove(req.key.hash);
        }
    }
    mark(&mut res, &status);
    Ok(res)
}

/// Whether a response describes the same representation as a stored one (§4.3.5): equal
/// strong-or-weak `ETag`, else equal `Last-Modified`, else neither has a validator and the
/// `Content-Length`s agree.
fn same_validators(stored: &HeaderMap, fresh: &HeaderMap) -> bool {
    let get = |h: &HeaderMap, n: header::HeaderName| h.get(n).map(|v| v.as_bytes().to_vec());
    match (get(stored, header::ETAG), get(fresh, header::ETAG)) {
        (Some(a), Some(b)) => return a == b,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (get(stored, header::LAST_MODIFIED), get(fresh, header::LAST_MODIFIED)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => get(stored, header::CONTENT_LENGTH) == get(fresh, header::CONTENT_LENGTH),
        _ => false,
    }
}

fn serve_stale_on_error(
    inner: &Inner,
    entry: &Arc<Stored>,
    req: &Req,
    now: SystemTime,
    code: u16,
) -> Response<Body> {
    inner.metrics.stale_on_error.increment(1);
    let mut status = CacheStatus::fwd(Fwd::Stale).detail("stale-if-error");
    status.fwd_status = Some(code);
    status.ttl = Some(entry.freshness.ttl_secs(now));
    hit(entry, req, now, &status)
}

/// A full (unconditional) fetch; an entry that could not be revalidated is still served
/// stale if the origin fails and its `stale-if-error` allows.
async fn fetch_with_fallback(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    req: Req,
    origin: Arc<dyn Origin>,
    guard: Option<FillGuard>,
    status: CacheStatus,
    fallback: Option<Arc<Stored>>,
) -> Result<Response<Body>, ProxyError> {
    let request_time = SystemTime::now();
    let mut up = clone_head(&req.head);
    respond::take_conditionals(&mut up.headers);
    // A HEAD that must refetch asks for the whole response, so what is stored has its body
    // (the client still gets only the head).
    up.method = Method::GET;
    let result = origin.send(up).await;
    let now = SystemTime::now();
    if let Some(entry) = &fallback
        && entry.freshness.stale_if_error_ok(now, &req.directives)
    {
        match &result {
            Err(e) => return Ok(serve_stale_on_error(inner, entry, &req, now, e.status().as_u16())),
            Ok(res) if res.status().is_server_error() => {
                return Ok(serve_stale_on_error(inner, entry, &req, now, res.status().as_u16()));
            }
            Ok(_) => {}
        }
    }
    let replaces = fallback.is_some();
    admit(inner, route, req, result?, guard, status, (request_time, now), replaces)
}

async fn fetch(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    req: Req,
    origin: Arc<dyn Origin>,
    guard: Option<FillGuard>,
    status: CacheStatus,
) -> Result<Response<Body>, ProxyError> {
    fetch_with_fallback(inner, route, req, origin, guard, status, None).await
}

/// A full response from the origin: stored while it streams to the client when the policy
/// allows, passed through otherwise. `replaces`: it answers the revalidation of a stored one.
#[allow(clippy::too_many_arguments)]
fn admit(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    req: Req,
    res: Response<Body>,
    guard: Option<FillGuard>,
    mut status: CacheStatus,
    times: (SystemTime, SystemTime),
    replaces: bool,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = res.into_parts();
    status.fwd_status = Some(parts.status.as_u16());
    let too_big = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > route.max_object);
    let decision = if too_big {
        Storable::No("too big")
    } else {
        evaluate(route, &req.head, parts.status, &parts.headers, times)
    };
    let Storable::Yes(freshness) = decision else {
        // A stored response this one was revalidating is outdated by it.
        if replaces && !req.authorized && parts.status.as_u16() < 500 {
            inner.store.remove(req.key.hash);
        }
        drop(guard);
        status.mark(CACHE_NAME, &mut parts.headers, &mut parts.extensions);
        return Ok(Response::from_parts(parts, body));
    };
    let stored_headers = for_storage(parts.headers.clone());
    let proto = Stored {
        status: parts.status,
        secondary: Secondary::capture(&parts.headers, &req.head.headers, &route.vary_cookies),
        tags: tags_of(&stored_headers),
        headers: stored_headers,
        body: Vec::new(),
        body_len: 0,
        freshness,
    };
    let fill =
        Fill::new(inner.store.clone(), req.key.hash, req.key.url.clone(), proto, route.max_object, guard);
    status.stored = true;
    status.ttl = Some(freshness.ttl_secs(times.1));
    if respond::not_modified(&req.head.method, &req.head.headers, parts.status, &parts.headers) {
        // The client's own validator matches: it gets a 304 while the fill completes.
        drain(body, fill);
        let mut res = respond::not_modified_response(&parts.headers);
        mark(&mut res, &status);
        return Ok(res);
    }
    status.mark(CACHE_NAME, &mut parts.headers, &mut parts.extensions);
    Ok(Response::from_parts(parts, Body::boxed(FillBody::new(body, fill))))
}

/// `stale-while-revalidate`: one refresh per key, off the request path.
fn refresh_in_background(
    inner: &Arc<Inner>,
    route: &Arc<RoutePolicy>,
    req: &Req,
    entry: &Arc<Stored>,
    origin: Arc<dyn Origin>,
    guard: FillGuard,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    let inner = inner.clone();
    let route = route.clone();
    let entry = entry.clone();
    let mut head = clone_head(&req.head);
    head.method = Method::GET;
    let req = Req {
        head,
        directives: RequestDirectives::default(),
        key: req.key.clone(),
        authorized: req.authorized,
    };
    handle.spawn(async move {
        let result = if entry.freshness.has_validators {
            revalidate(&inner, &route, req, entry, origin, Some(guard), Fwd::Stale).await
        } else {
            fetch(&inner, &route, req, origin, Some(guard), CacheStatus::fwd(Fwd::Stale)).await
        };
        match result {
            // A new full response: read it to the end so the fill completes.
            Ok(res) => {
                let body = res.into_body();
                drop_after_reading(body).await;
            }
            Err(e) => tracing::debug!(error = e.detail, "background revalidation failed"),
        }
    });
}

async fn drop_after_reading(mut body: Body) {
    use http_body::Body as _;
    let read = async {
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            if frame.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), read).await;
}
