//! Edge protection: the layers a route puts in front of its target, in the fixed order
//! ip filter → CORS → authentication (+ passport) → rate limit → idempotency → (cache) →
//! compression. `Policies` holds what routes share (named auth, rate-limit and CORS policies,
//! the passport signer, the Redis connection), built once per Runtime and carried over on
//! reload when unchanged so JWKS caches and rate-limit state survive; `RouteProtect` is one
//! route's compiled stack.

pub mod auth;
pub mod compress;
pub mod cors;
pub mod idempotency;
pub mod ip;
pub mod passport;
pub mod rate_limit;
pub mod redis;

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use sumun_http::Body;
use sumun_http::problem::problem_response;

/// A refusal by a protection layer: its status, a detail safe to show anyone, and the
/// headers the standard asks for (`WWW-Authenticate`, `Retry-After`, `RateLimit`…).
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub detail: Cow<'static, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Short reason for the access log and metrics (`invalid_token`, `rate_limited`…).
    pub reason: &'static str,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Rejection { status, detail: detail.into(), headers: Vec::new(), reason }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The problem+json response.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<Body> {
        let mut res = problem_response(self.status, &self.detail, Some(request_id));
        for (n, v) in self.headers {
            res.headers_mut().append(n, v);
        }
        res
    }
}

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::request::Parts;
use sumun_config::{Config, Encoding, IpFilter, RouteAuth};

use self::auth::{Authenticated, Authenticator};
use self::compress::Compressor;
use self::cors::Cors;
use self::idempotency::{Begin, Idempotency, Pending};
use self::passport::Passport;
use self::rate_limit::{Limiter, RateInput};
use self::redis::Redis;

/// What routes share: built once per Runtime from the top-level tables.
pub struct Policies {
    config: Arc<Config>,
    pub auth: Vec<(String, Arc<Authenticator>)>,
    pub rate_limits: Vec<(String, Arc<Limiter>)>,
    pub cors: Vec<(String, Arc<Cors>)>,
    pub passport: Arc<Passport>,
    pub redis: Option<Redis>,
    /// `[compression] max_memory`, shared by every compressing route.
    pub compression: Arc<compress::CompressionBudget>,
}

fn find<'a, T>(list: &'a [(String, T)], name: &str) -> Option<&'a T> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

impl Policies {
    /// Compiles the shared policies; what did not change is taken over from `previous` (JWKS
    /// caches, rate-limit state, the Redis connection, a generated passport key).
    pub fn build(config: &Arc<Config>, previous: Option<&Policies>) -> Result<Self, String> {
        let redis = match (&config.redis, previous) {
            (Some(cfg), Some(p)) if p.config.redis.as_ref() == Some(cfg) && p.redis.is_some() => {
                p.redis.clone()
            }
            (Some(cfg), _) => Some(Redis::new(cfg).map_err(|e| format!("redis: {e}"))?),
            (None, _) => None,
        };
        let mut auth = Vec::new();
        for a in &config.auth {
            let prev = previous.and_then(|p| find(&p.auth, &a.name)).filter(|x| x.same_policy(a));
            let built = match prev {
                Some(x) => x.clone(),
                None => {
                    Arc::new(Authenticator::new(a).map_err(|e| format!("auth policy `{}`: {e}", a.name))?)
                }
            };
            auth.push((a.name.clone(), built));
        }
        let mut rate_limits = Vec::new();
        for r in &config.rate_limits {
            let prev = previous
                .filter(|p| p.config.rate_limits.iter().any(|old| old == r))
                .and_then(|p| find(&p.rate_limits, &r.name));
            let limiter = Limiter::new(r, redis.clone(), prev.map(|l| &**l));
            rate_limits.push((r.name.clone(), Arc::new(limiter)));
        }
        let cors = config.cors.iter().map(|c| (c.name.clone(), Arc::new(Cors::compile(c)))).collect();
        let passport = Arc::new(
            Passport::new(&config.passport, previous.map(|p| &*p.passport))
                .map_err(|e| format!("passport: {e}"))?,
        );
        // One budget for the process's life: responses in flight across a reload stay charged.
        let compression = match previous {
            Some(p) => {
                p.compression.set_limit(config.compression.max_memory);
                p.compression.clone()
            }
            None => compress::CompressionBudget::new(config.compression.max_memory),
        };
        Ok(Policies { config: config.clone(), auth, rate_limits, cors, passport, redis, compression })
    }

    /// One route's stack.
    pub fn route(&self, route: &sumun_config::Route) -> RouteProtect {
        let p = &route.protect;
        let auth = p.auth.as_ref().and_then(|a| Some((find(&self.auth, &a.policy)?.clone(), a.clone())));
        let mut strip = vec![self.passport.header().clone()];
        if let Some((a, _)) = &auth {
            strip.extend(a.claim_headers().iter().cloned());
        }
        RouteProtect {
            name: Arc::from(route.name.as_str()),
            strip,
            ip: p.ip.clone(),
            cors: p.cors.as_deref().and_then(|n| find(&self.cors, n).cloned()),
            auth,
            passport: self.passport.clone(),
            rate: p.rate_limit.as_deref().and_then(|n| find(&self.rate_limits, n).cloned()),
            idempotency: p.idempotency.as_ref().map(|i| Idempotency::new(i, &route.name, self.redis.clone())),
            compress: p.compress.as_ref().map(|c| Compressor::compile(c, self.compression.clone())),
            max_body: p.max_body,
        }
    }
}

/// One route's compiled protection stack.
pub struct RouteProtect {
    name: Arc<str>,
    /// Removed from every request: the passport header and forwarded-claim headers.
    strip: Vec<HeaderName>,
    ip: Option<IpFilter>,
    cors: Option<Arc<Cors>>,
    auth: Option<(Arc<Authenticator>, RouteAuth)>,
    passport: Arc<Passport>,
    rate: Option<Arc<Limiter>>,
    idempotency: Option<Idempotency>,
    compress: Option<Compressor>,
    /// Overrides the listener's body limit.
    pub max_body: Option<u64>,
}

/// What the request brings to the protection layers besides its head.
pub struct RequestFacts<'a> {
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a HeaderValue,
    pub max_body: u64,
}

/// What the layers decided on the way in, applied on the way out.
#[derive(Default)]
pub struct Outbound {
    origin: Option<HeaderValue>,
    rate_headers: Vec<(HeaderName, HeaderValue)>,
    pending: Option<Pending>,
    encoding: Option<Encoding>,
    /// Who the request is, for the access log.
    pub subject: Option<String>,
    /// Why a layer refused the request, for the access log.
    pub refused: Option<&'static str>,
    /// A CORS preflight answered whole by the CORS layer.
    preflight: bool,
}

/// The outcome of the way in.
pub enum Inbound {
    /// Run the target with this body.
    Proceed(Body),
    /// Answer with this response (a preflight, a refusal, an idempotent replay).
    Respond(Response<Body>),
}

impl RouteProtect {
    /// Whether the route does anything beyond stripping the passport header.
    pub fn is_passthrough(&self) -> bool {
        self.ip.is_none()
            && self.cors.is_none()
            && self.auth.is_none()
            && self.rate.is_none()
            && self.idempotency.is_none()
            && self.compress.is_none()
    }

    /// Removes what a client must never send: the passport header and the headers sumun fills
    /// from claims.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for h in &self.strip {
            headers.remove(h);
        }
    }

    /// The way in: ip filter → CORS → auth (+ passport) → rate limit → idempotency →
    /// request decoding.
    pub async fn inbound(
        &self,
        parts: &mut Parts,
        body: Body,
        facts: &RequestFacts<'_>,
        out: &mut Outbound,
    ) -> Inbound {
        let reject = |out: &mut Outbound, r: Rejection| {
            out.refused = Some(r.reason);
            Inbound::Respond(r.into_response(facts.request_id))
        };
        if let Some(f) = &self.ip
            && let Err(r) = ip::check(f, facts.client_ip)
        {
            return reject(out, r);
        }
        if let Some(c) = &self.cors {
            if let Some(res) = c.preflight(&parts.method, &parts.headers, Some(facts.request_id)) {
                out.preflight = true;
                return Inbound::Respond(res);
            }
            out.origin = parts.headers.get(header::ORIGIN).cloned();
        }
        if let Some(c) = &self.compress {
            out.encoding = c.negotiate(&parts.headers);
        }
        let mut identity: Option<Authenticated> = None;
        if let Some((a, require)) = &self.auth {
            let id = match a.authenticate(parts).await {
                Ok(id) => id,
                Err(r) => return reject(out, r),
            };
            out.subject = Some(id.subject.clone());
            if let Err(r) = a.authorize(&id, require) {
                return reject(out, r);
            }
            if let Some(v) = self.passport.issue(&id, id.passport(), facts.request_id) {
                parts.headers.insert(self.passport.header().clone(), v);
            }
            a.forward_claims(&id, &mut parts.headers);
            identity = Some(id);
        }
        let identity = identity.as_ref().map(Authenticated::identity);
        if let Some(l) = &self.rate {
            let input = RateInput {
                client_ip: facts.client_ip,
                headers: &parts.headers,
                identity,
                route: &self.name,
            };
            match l.check(&input).await {
                Ok(h) => out.rate_headers = h,
                Err(r) => return reject(out, r),
            }
        }
        let body = match &self.idempotency {
            None => body,
            Some(i) => match i.begin(parts, body, identity).await {
                Ok(Begin::Skip(b)) => b,
                Ok(Begin::Proceed(b, pending)) => {
                    out.pending = Some(pending);
                    b
                }
                Ok(Begin::Replay(res)) => return Inbound::Respond(res),
                Err(r) => return reject(out, r),
            },
        };
        match &self.compress {
            Some(c) => match c.decode_request(parts, body, facts.max_body) {
                Ok(b) => Inbound::Proceed(b),
                Err(r) => reject(out, r),
            },
            None => Inbound::Proceed(body),
        }
    }

    /// The way out, for every response of the route after the ip filter (refusals included):
    /// idempotency record → compression → rate-limit and CORS headers.
    pub fn outbound(&self, method: &http::Method, out: Outbound, mut res: Response<Body>) -> Response<Body> {
        if out.preflight {
            return res;
        }
        if let Some(p) = out.pending {
            res = p.finish(res);
        }
        if let Some(c) = &self.compress {
            res = c.encode_response(out.encoding, method, res);
        }
        let headers = res.headers_mut();
        for (n, v) in out.rate_headers {
            headers.append(n, v);
        }
        if let Some(c) = &self.cors {
            c.apply(out.origin.as_ref(), headers);
        }
        res
    }
}
