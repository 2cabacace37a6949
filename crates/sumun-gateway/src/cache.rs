//! The gateway side of the HTTP cache (`sumun-cache`): a caching route's GET and HEAD go
//! through the shared store with the upstream call as the cache's [`Origin`]; other methods
//! go upstream and then invalidate (RFC 9111 §4.4); `PURGE` from `[cache] purge_from`
//! networks removes the URL. Runs where the route's target runs, so protection layers and
//! idempotency come before it and compression after it.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use sumun_cache::status::Outcome;
use sumun_cache::{Cache, Origin, OriginFuture, Purge, RoutePolicy, Target};
use sumun_http::problem::problem_response;
use sumun_http::{Body, ProxyError};

use crate::exchange::Exchange;
use crate::proxy::UpstreamCall;
use crate::runtime::Runtime;
use crate::server::ConnCtx;

/// The URL parts the cache key is made of, taken before the request is prepared for the
/// upstream (rewrites and header edits must not change the key).
pub(crate) struct KeyParts {
    scheme: &'static str,
    host: String,
    path: String,
    query: Option<String>,
}

impl KeyParts {
    pub fn of(parts: &Parts, normalized: &str, tls: bool) -> KeyParts {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or("")
            .to_ascii_lowercase();
        KeyParts {
            scheme: if tls { "https" } else { "http" },
            host,
            path: normalized.to_owned(),
            query: parts.uri.query().map(str::to_owned),
        }
    }

    fn target(&self) -> Target<'_> {
        Target { scheme: self.scheme, host: &self.host, path: &self.path, query: self.query.as_deref() }
    }
}

/// The endpoint that answered, carried on the response to the access log.
#[derive(Clone)]
struct UpstreamLabel(Arc<str>);

/// A sticky-session `Set-Cookie`, added to the client's response only (never stored).
#[derive(Clone)]
struct StickyCookie(HeaderValue);

struct UpstreamOrigin(UpstreamCall);

impl Origin for UpstreamOrigin {
    fn send(&self, head: Parts) -> OriginFuture {
        let call = self.0.clone();
        Box::pin(async move {
            let mut label = None;
            let (mut res, sticky) = call.send(head, Body::empty(), &mut label).await?;
            if let Some(l) = label {
                res.extensions_mut().insert(UpstreamLabel(l));
            }
            if let Some(c) = sticky {
                res.extensions_mut().insert(StickyCookie(c));
            }
            Ok(res)
        })
    }
}

/// The hit path: a GET or HEAD answered from a fresh stored response, before the request is
/// prepared for the upstream.
pub(crate) fn fresh_hit(
    cache: &Cache,
    policy: &RoutePolicy,
    key: &KeyParts,
    parts: &Parts,
    ex: &mut Exchange,
) -> Option<Response<Body>> {
    if !Cache::handles(&parts.method, &parts.headers) {
        return None;
    }
    let res = cache.fresh_hit(policy, key.target(), parts)?;
    ex.cache = res.extensions().get::<Outcome>().map(|o| o.0);
    Some(res)
}

/// A caching route's upstream target.
pub(crate) async fn run(
    cache: &Cache,
    policy: &Arc<RoutePolicy>,
    call: UpstreamCall,
    key: KeyParts,
    parts: Parts,
    body: Body,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    if Cache::handles(&parts.method, &parts.headers) {
        drop(body);
        let origin: Arc<dyn Origin> = Arc::new(UpstreamOrigin(call));
        let mut res = cache.serve(policy, key.target(), parts, origin).await?;
        if let Some(UpstreamLabel(l)) = res.extensions_mut().remove::<UpstreamLabel>() {
            ex.upstream = Some(l);
        }
        if let Some(StickyCookie(c)) = res.extensions_mut().remove::<StickyCookie>() {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
        ex.cache = res.extensions().get::<Outcome>().map(|o| o.0);
        return Ok(res);
    }
    let method = parts.method.clone();
    let (mut res, sticky) = call.send(parts, body, &mut ex.upstream).await?;
    cache.invalidate_after(policy, key.target(), &method, res.status(), res.headers());
    if let Some(c) = sticky {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    ex.cache = Some("bypass");
    Ok(res)
}

/// `PURGE` on a caching route: allowed from `[cache] purge_from` networks (the connection's
/// peer address, never a forwarding header), removes every stored variant of the URL.
pub(crate) fn purge_request(
    cache: &Cache,
    policy: &RoutePolicy,
    parts: &Parts,
    normalized: &str,
    ctx: &ConnCtx,
    runtime: &Runtime,
    ex: &mut Exchange,
) -> Response<Body> {
    let allowed = &runtime.config.cache.purge_from;
    if allowed.is_empty() {
        ex.error = Some("purge_not_accepted");
        let mut res = problem_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "PURGE is not accepted here",
            Some(&ex.request_id),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        return res;
    }
    let peer = ctx.peer.map(|p| p.ip());
    if !peer.is_some_and(|ip| allowed.iter().any(|c| c.contains(ip))) {
        ex.error = Some("purge_denied");
        return problem_response(
            StatusCode::FORBIDDEN,
            "PURGE is not allowed from this address",
            Some(&ex.request_id),
        );
    }
    let key = KeyParts::of(parts, normalized, ctx.tls);
    let url = sumun_cache::key::canonical_url(&key.target(), &policy.ignore_query);
    let removed = cache.purge(&Purge::Url(url));
    ex.cache = Some("purge");
    let body = serde_json::json!({ "purged": removed }).to_string();
    let mut res = Response::new(Body::full(body));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl Runtime {
    /// `GET /v1/cache`: the store's figures.
    pub fn cache_snapshot(&self) -> serde_json::Value {
        match &self.cache {
            None => serde_json::json!({ "enabled": false }),
            Some(c) => {
                let s = c.snapshot();
                serde_json::json!({
                    "enabled": true,
                    "capacity_bytes": s.capacity_bytes,
                    "stored_bytes": s.stored_bytes,
                    "objects": s.objects,
                    "urls": s.urls,
                    "fills_in_progress": s.fills_in_progress,
                    "working_set_estimate_bytes": s.working_set_estimate_bytes,
                })
            }
        }
    }

    /// `POST /v1/cache/purge`: `kind` is `url`, `prefix` or `tag`; None when no route caches.
    pub fn purge_cache(&self, kind: &str, value: &str) -> Option<u64> {
        let cache = self.cache.as_ref()?;
        let what = match kind {
            "url" => Purge::Url(value.to_owned()),
            "prefix" => Purge::Prefix(value.to_owned()),
            _ => Purge::Tag(value.to_owned()),
        };
        Some(cache.purge(&what) as u64)
    }
}
