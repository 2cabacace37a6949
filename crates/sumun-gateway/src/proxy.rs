//! The request handler: validate, identify, route, then run the route's target (forward to an
//! upstream, respond, redirect or echo). Every refusal is a problem+json response; nothing here
//! panics on client input.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use sumun_http::forwarded::{ClientHop, append_via, apply_forwarded, via_contains};
use sumun_http::hop::{strip_hop_by_hop, strip_hop_by_hop_response};
use sumun_http::problem::problem_response;
use sumun_http::{Body, ErrorKind, ProxyError};

use crate::exchange::{Exchange, ResponseBody};
use crate::path;
use crate::protect::{Inbound, Outbound, RequestFacts};
use crate::router::{RequestView, prefix_matches};
use crate::runtime::{Action, CompiledRoute, Runtime};
use crate::server::ConnCtx;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// hyper's entry point for every request on a connection.
pub async fn handle(req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let runtime = ctx.shared.runtime.load_full();
    ctx.state.request_started(req.version() == Version::HTTP_2);
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if crate::request_id::acceptable(v) => v.clone(),
        _ => crate::request_id::generate(),
    };
    let mut ex = Box::new(Exchange {
        runtime: runtime.clone(),
        conn: ctx.state.clone(),
        access_log: ctx.shared.access_log.clone(),
        listener: ctx.listener.clone(),
        peer: ctx.peer,
        start,
        method: req.method().clone(),
        // Only the access log needs its own copy of the path.
        path: if ctx.shared.access_log.is_some() { req.uri().path().to_owned() } else { String::new() },
        version: req.version(),
        request_id: request_id.clone(),
        route: None,
        upstream: None,
        bytes_in: 0,
        error: None,
        rule: None,
        egress: None,
        deferred_log: false,
        bytes_in_counter: None,
        subject: None,
        cache: None,
    });
    let close = ctx.guard_violation().is_some();
    let result = match ctx.guard_violation() {
        Some(reason) => Err(ProxyError::new(ErrorKind::BadRequest, reason)),
        // Boxed: hyper moves the handler's future into its connection state for every
        // request, so the future it gets should be small; the routing state lives on the heap.
        None => Box::pin(dispatch(req, &ctx, &runtime, &mut ex)).await,
    };
    let mut res = result.unwrap_or_else(|e| error_response(e, &mut ex));
    if close {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    let status = res.status();
    let (parts, body) = res.into_parts();
    Ok(Response::from_parts(parts, ResponseBody::new(body, status, ex)))
}

/// Splits a `Host`/authority value into host and port, refusing anything that is not a
/// plain reg-name, IPv4 or bracketed IPv6 literal (no userinfo, no path characters).
fn parse_host(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        if !h[1..h.len() - 1].bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return None;
        }
        (h, rest.strip_prefix(':').or(if rest.is_empty() { Some("") } else { None })?)
    } else {
        let (h, p) = s.rsplit_once(':').unwrap_or((s, ""));
        if h.is_empty() || !h.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')) {
            return None;
        }
        (h, p)
    };
    let port = if port.is_empty() { None } else { Some(port.parse::<u16>().ok()?) };
    Some((host, port))
}

async fn dispatch(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    runtime: &Runtime,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let listener = runtime.listener(&ctx.listener);
    let max_body = listener.map_or(u64::MAX, |l| l.limits.max_body_bytes);
    if let Some(fwd) = runtime.forward.as_ref().filter(|_| listener.is_some_and(|l| l.forward_proxy))
        && crate::forward_proxy::is_forward_request(&req)
    {
        if via_contains(req.headers(), &runtime.via.pseudonym) {
            return Err(ProxyError::new(
                ErrorKind::Loop,
                "the request has already passed through this proxy",
            ));
        }
        let declared = content_length(req.headers())?;
        if declared.is_some_and(|n| n > max_body) {
            return Err(ProxyError::new(ErrorKind::BodyTooLarge, "the request body is larger than allowed"));
        }
        ex.bytes_in = declared.unwrap_or(0);
        // Boxed, as the other targets but the plain upstream one: the handler's future is
        // moved whole at every level per request, so rarer paths must not make it larger.
        return Box::pin(crate::forward_proxy::handle(req, ctx, fwd, &runtime.via, max_body, ex)).await;
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::new(ErrorKind::BadRequest, "CONNECT is not accepted on this listener"));
    }
    // Cheap reference-counted copies, so the borrowed views below outlive `req`.
    let uri = req.uri().clone();
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_field = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::new(ErrorKind::BadRequest, "the request has more than one Host field"));
    }
    // The absolute-form/`:authority` value wins over `Host` (RFC 9112 §3.2.2).
    let host_text = match (uri.authority(), &host_field) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(h)) => Some(h.to_str().map_err(|_| bad_host())?),
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                "an HTTP/1.1 request must carry a Host field",
            ));
        }
        (None, None) => None,
    };
    let host = match host_text {
        Some(t) => Some(parse_host(t).ok_or_else(bad_host)?),
        None => None,
    };
    let normalized =
        path::normalize(uri.path()).map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.detail()))?;
    if via_contains(req.headers(), &runtime.via.pseudonym) {
        return Err(ProxyError::new(ErrorKind::Loop, "the request has already passed through this proxy"));
    }
    let view = RequestView {
        listener: &ctx.listener,
        host: host.map(|(h, _)| h),
        port: host.and_then(|(_, p)| p),
        path: &normalized,
        method: req.method(),
        headers: req.headers(),
    };
    let Some((index, route)) = runtime.routes.iter().enumerate().find(|(_, r)| r.matcher.matches(&view))
    else {
        return Err(ProxyError::new(ErrorKind::NoRoute, "no route matches this request"));
    };
    ex.route = Some(index);

    let max_body = route.protect.max_body.unwrap_or(max_body);
    let declared = content_length(req.headers())?;
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::new(ErrorKind::BodyTooLarge, "the request body is larger than allowed"));
    }
    ex.bytes_in = declared.unwrap_or(0);

    let trust = listener.is_some_and(|l| l.trust_forwarded);
    let (mut parts, incoming) = req.into_parts();
    route.protect.strip(&mut parts.headers);
    let body = ex.request_body(incoming, max_body, declared);
    let mut out = Outbound::default();
    let facts = RequestFacts {
        client_ip: client_ip(ctx, &parts.headers, trust),
        request_id: &ex.request_id.clone(),
        max_body,
    };
    let method = parts.method.clone();
    // Boxed when there is anything to do: the layers' future (JWKS waits, Redis calls, body
    // buffering) is large, and this one is moved whole per request.
    let inbound = if route.protect.is_passthrough() {
        Inbound::Proceed(body)
    } else {
        Box::pin(route.protect.inbound(&mut parts, body, &facts, &mut out)).await
    };
    let res = match inbound {
        Inbound::Respond(res) => res,
        Inbound::Proceed(body) => {
            let target =
                TargetRequest { parts, body, normalized: &normalized, host_known: host.is_some(), trust };
            let mut res = match run_target(target, route, ctx, runtime, ex).await {
                Ok(res) => res,
                Err(e) => error_response(e, ex),
            };
            route.response_headers.apply(res.headers_mut());
            res
        }
    };
    ex.subject = out.subject.take();
    if let Some(reason) = out.refused {
        ex.error.get_or_insert(reason);
    }
    Ok(route.protect.outbound(&method, out, res))
}

/// The client address rate limits and IP filters see: on a listener that trusts forwarding
/// fields, the address the trusted proxy in front of us saw (the last `X-Forwarded-For`
/// entry, which that proxy wrote); otherwise the connection's peer.
fn client_ip(ctx: &ConnCtx, headers: &HeaderMap, trust: bool) -> Option<std::net::IpAddr> {
    let peer = ctx.peer.map(|p| p.ip());
    if !trust {
        return peer;
    }
    let last = headers.get_all(&X_FORWARDED_FOR).iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    entry
        .parse()
        .ok()
        .or_else(|| {
            // `[v6]:port` or `v4:port`
            let e = entry.strip_prefix('[').and_then(|r| r.split_once(']')).map_or(entry, |(a, _)| a);
            e.parse().ok().or_else(|| e.rsplit_once(':').and_then(|(a, _)| a.parse().ok()))
        })
        .or(peer)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A refusal or failure as the client sees it: problem+json with the status its kind maps to.
pub(crate) fn error_response(e: ProxyError, ex: &mut Exchange) -> Response<Body> {
    ex.error.get_or_insert(e.kind_name());
    if let Some(src) = &e.source {
        tracing::debug!(error = %src, kind = e.kind_name(), "request failed");
    }
    let mut res = problem_response(e.status(), e.detail, Some(&ex.request_id));
    if let Some(after) = e.retry_after {
        // Whole seconds, rounded up: "0" would invite an immediate retry.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    res
}

/// The request as the target receives it, after the protection layers.
pub(crate) struct TargetRequest<'a> {
    pub parts: http::request::Parts,
    pub body: Body,
    /// The normalized path (before rewrites).
    pub normalized: &'a std::borrow::Cow<'a, str>,
    /// Whether the client named a host (Host field or URI authority).
    pub host_known: bool,
    /// Whether the listener trusts inbound forwarding fields.
    pub trust: bool,
}

/// Runs the route's target: upstream, respond, redirect or echo.
async fn run_target(
    t: TargetRequest<'_>,
    route: &CompiledRoute,
    ctx: &ConnCtx,
    runtime: &Runtime,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let TargetRequest { mut parts, body, normalized, host_known, trust } = t;
    Ok(match &route.action {
        Action::Respond { status, body, headers } => {
            let mut res = Response::new(Body::full(body.clone()));
            *res.status_mut() = *status;
            for (n, v) in headers {
                res.headers_mut().insert(n.clone(), v.clone());
            }
            res
        }
        Action::Redirect { status, location } => {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = *status;
            res.headers_mut().insert(header::LOCATION, location.clone());
            res
        }
        Action::Echo => Box::pin(echo(parts, body, normalized, ctx)).await?,
        Action::Topic(topic) => {
            Box::pin(crate::topic::publish(runtime.bus.as_deref(), topic, parts, body, normalized, ex))
                .await?
        }
        Action::Subscription(name) => {
            Box::pin(crate::topic::pull(runtime.bus.as_deref(), name, parts, body, normalized)).await?
        }
        Action::Upstream(pool) => {
            // The cache keys on the URL as the client addressed it, before any rewrite.
            let cached = match (&route.cache, &runtime.cache) {
                (Some(policy), Some(cache)) => {
                    if parts.method.as_str() == "PURGE" {
                        return Ok(crate::cache::purge_request(
                            cache, policy, &parts, normalized, ctx, runtime, ex,
                        ));
                    }
                    let key = crate::cache::KeyParts::of(&parts, normalized, ctx.tls);
                    // A fresh hit is answered before anything is prepared for the upstream.
                    if let Some(res) = crate::cache::fresh_hit(cache, policy, &key, &parts, ex) {
                        return Ok(res);
                    }
                    Some((cache, policy, key))
                }
                _ => None,
            };
            let changed = matches!(normalized, std::borrow::Cow::Owned(_));
            let forwarding = Forwarding { ctx, via: &runtime.via, trust, has_host: host_known };
            prepare_upstream_request(&mut parts, normalized, changed, route, &forwarding);
            // After hop-by-hop stripping: a client cannot drop it by naming it in Connection.
            parts.headers.insert(X_REQUEST_ID.clone(), ex.request_id.clone());
            if let Some((cache, policy, key)) = cached {
                let call = UpstreamCall {
                    runtime: ex.runtime.clone(),
                    pool: pool.clone(),
                    path: Arc::from(&**normalized),
                    client_ip: ctx.peer.map(|p| p.ip()),
                };
                return Box::pin(crate::cache::run(cache, policy, call, key, parts, body, ex)).await;
            }
            let target =
                crate::forward::Target { pool, path: normalized, client_ip: ctx.peer.map(|p| p.ip()) };
            let fwd = crate::forward::forward(target, parts, body, &mut ex.upstream).await?;
            let (mut res, sticky) = upstream_response(fwd, &runtime.via);
            if let Some(c) = sticky {
                res.headers_mut().append(header::SET_COOKIE, c);
            }
            res
        }
    })
}

/// The upstream's response as the client gets it: hop-by-hop fields out, our Via in, HTTP/1.1
/// framing; and the sticky-session cookie to add (kept apart so a cache never stores it).
fn upstream_response(
    fwd: crate::forward::Forwarded,
    via: &sumun_http::forwarded::ViaEntries,
) -> (Response<Body>, Option<HeaderValue>) {
    let (mut rparts, rbody) = fwd.response.into_parts();
    strip_hop_by_hop_response(&mut rparts.headers);
    append_via(&mut rparts.headers, rparts.version, via);
    rparts.version = Version::HTTP_11;
    (Response::from_parts(rparts, Body::incoming(rbody)), fwd.sticky_cookie)
}

/// One upstream call that owns what it needs, so it outlives the client request: the cache
/// calls it again to revalidate, and from a background task to refresh.
#[derive(Clone)]
pub(crate) struct UpstreamCall {
    pub runtime: Arc<Runtime>,
    pub pool: Arc<sumun_upstream::UpstreamPool>,
    /// The normalized request path (before rewrites), for `hash_key = "path"`.
    pub path: Arc<str>,
    pub client_ip: Option<std::net::IpAddr>,
}

impl UpstreamCall {
    /// Sends a prepared request; `upstream` receives the endpoint that answered.
    pub async fn send(
        &self,
        parts: http::request::Parts,
        body: Body,
        upstream: &mut Option<Arc<str>>,
    ) -> Result<(Response<Body>, Option<HeaderValue>), ProxyError> {
        let target = crate::forward::Target { pool: &self.pool, path: &self.path, client_ip: self.client_ip };
        let fwd = crate::forward::forward(target, parts, body, upstream).await?;
        Ok(upstream_response(fwd, &self.runtime.via))
    }
}

fn bad_host() -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, "the Host field is malformed")
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => {
            v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).map(Some).ok_or_else(|| {
                ProxyError::new(ErrorKind::BadRequest, "the Content-Length field is malformed")
            })
        }
    }
}

/// Who the request came from, for the forwarding fields.
#[derive(Clone, Copy)]
struct Forwarding<'a> {
    ctx: &'a ConnCtx,
    via: &'a sumun_http::forwarded::ViaEntries,
    trust: bool,
    has_host: bool,
}

/// Turns the client's request head into the upstream's: hop-by-hop fields out, forwarding
/// fields and our Via in, path rewritten, route header edits applied last so operators can
/// override anything.
fn prepare_upstream_request(
    parts: &mut http::request::Parts,
    normalized: &str,
    normalized_changed: bool,
    route: &CompiledRoute,
    fwd: &Forwarding<'_>,
) {
    let Forwarding { ctx, via, trust, has_host } = *fwd;
    let hop = strip_hop_by_hop(&mut parts.headers);
    // An h2 client or an absolute-form request names the host in the URI; HTTP/1.1 upstreams
    // need it in Host.
    if let Some(auth) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    } else if !has_host {
        parts.headers.remove(header::HOST);
    }
    let proto = if ctx.tls { "https" } else { "http" };
    let host_value = parts.headers.get(header::HOST).cloned();
    apply_forwarded(
        &mut parts.headers,
        ClientHop { node: &ctx.node, proto, host: host_value.as_ref() },
        trust,
    );
    append_via(&mut parts.headers, parts.version, via);
    if hop.te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }

    let rewritten = rewrite_path(route, normalized);
    let unchanged = rewritten.is_none() && !normalized_changed;
    parts.uri = match (unchanged, parts.uri.path_and_query()) {
        // The common case: the client's path and query go up as they came, no copy.
        (true, Some(pq)) => http::Uri::from(pq.clone()),
        _ => {
            let path = rewritten.as_deref().unwrap_or(normalized);
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            PathAndQuery::try_from(pq).map(http::Uri::from).unwrap_or_else(|_| http::Uri::from_static("/"))
        }
    };
    parts.version = Version::HTTP_11;
    route.request_headers.apply(&mut parts.headers);
}

/// The path the route rewrites to, or None when it leaves the path alone.
fn rewrite_path(route: &CompiledRoute, normalized: &str) -> Option<String> {
    if let Some(p) = &route.rewrite.path {
        return Some(p.clone());
    }
    let prefix = route.rewrite.strip_prefix.as_deref()?;
    if !prefix_matches(prefix, normalized) {
        return None;
    }
    let rest = normalized.get(prefix.len()..).unwrap_or("");
    Some(if rest.is_empty() { "/".to_owned() } else { rest.to_owned() })
}

/// The echo target: the request as sumun received it (after normalization), as JSON.
async fn echo(
    parts: http::request::Parts,
    mut body: Body,
    normalized: &str,
    ctx: &ConnCtx,
) -> Result<Response<Body>, ProxyError> {
    use http_body_util::BodyExt;
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), serde_json::Value::String(v));
            }
        }
    }
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if sumun_http::body::is_body_too_large(e.as_ref()) {
                ProxyError::new(ErrorKind::BodyTooLarge, "the request body is larger than allowed")
            } else {
                ProxyError::new(ErrorKind::DownstreamBody, "the request body could not be read")
            }
        })?;
        if let Some(d) = frame.data_ref() {
            length += d.len() as u64;
        }
    }
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "path": normalized,
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_length": length,
        "client": ctx.peer.map(|p| p.ip().to_string()),
        "listener": &*ctx.listener,
        "tls": ctx.tls,
    });
    let mut res = Response::new(Body::full(serde_json::to_vec_pretty(&doc).unwrap_or_default()));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

#[cfg(test)]
mod future_size {
    /// The size of the future `f` returns, without calling it.
    fn future_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: Fn(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// hyper keeps each connection's handler future in a box allocated with the connection
    /// (idle ones too) and moves a new one in per request; every await level moves its callee's
    /// future too. These sizes were 9.7 KiB (handler) and 5.5 KiB (upstream call) before the
    /// rarer paths were boxed: keep them small.
    #[test]
    fn the_request_futures_stay_small() {
        fn handler_size<F, A, B, R>(_: F) -> usize
        where
            F: Fn(A, B) -> R,
        {
            std::mem::size_of::<R>()
        }
        let handler = handler_size(super::handle);
        let forward = future_size(crate::forward::forward);
        assert!(handler <= 1024, "the handler future is {handler} bytes");
        assert!(forward <= 2048, "the upstream call future is {forward} bytes");
    }
}
