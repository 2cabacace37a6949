//! The Runtime: an immutable, compiled snapshot of the configuration. A request loads it once
//! and keeps it to the end; a reload builds a whole new one (TLS files and all) before it is
//! swapped in, so a bad config never replaces a running one.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use metrics::{Counter, Histogram};
use sumun_config::{Config, HeaderOps, Limits, Rewrite, Target};
use sumun_http::forwarded::ViaEntries;
use sumun_upstream::UpstreamPool;
use tokio_rustls::TlsAcceptor;

use crate::router::{Matcher, RequestView};
use crate::tls::{self, TlsError};

/// Per-listener settings read at each accepted connection.
pub struct ListenerRuntime {
    pub limits: Limits,
    pub tls: Option<TlsAcceptor>,
    pub trust_forwarded: bool,
    /// Absolute-form requests and CONNECT go to the forward proxy.
    pub forward_proxy: bool,
}

/// What a matched route does. `Topic` publishes to the topic of that name on
/// `Runtime::bus`; `Subscription` serves that pull subscription's API.
pub enum Action {
    Upstream(Arc<UpstreamPool>),
    Respond { status: StatusCode, body: Bytes, headers: Vec<(HeaderName, HeaderValue)> },
    Redirect { status: StatusCode, location: HeaderValue },
    Echo,
    Topic(Arc<str>),
    Subscription(Arc<str>),
}

/// Header edits with names and values parsed once.
#[derive(Default)]
pub struct CompiledHeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledHeaderOps {
    fn compile(ops: &HeaderOps) -> Self {
        CompiledHeaderOps {
            remove: ops.remove.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
            set: pairs(&ops.set),
            add: pairs(&ops.add),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

fn pairs(list: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    list.iter()
        .filter_map(|(n, v)| {
            Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
        })
        .collect()
}

/// Metric handles resolved at compile time, so the request path only touches atomics.
pub struct RouteMetrics {
    pub duration: Histogram,
    statuses: Box<[OnceLock<Counter>]>,
    route: Arc<str>,
}

impl RouteMetrics {
    fn new(route: &Arc<str>) -> Self {
        RouteMetrics {
            duration: metrics::histogram!("sumun_request_duration_seconds", "route" => route.to_string()),
            statuses: (100..600).map(|_| OnceLock::new()).collect(),
            route: route.clone(),
        }
    }

    pub fn count(&self, status: StatusCode) {
        let i = usize::from(status.as_u16()).saturating_sub(100);
        if let Some(slot) = self.statuses.get(i) {
            slot.get_or_init(|| {
                metrics::counter!("sumun_requests_total", "route" => self.route.to_string(), "status" => status.as_str().to_owned())
            })
            .increment(1);
        }
    }
}

pub struct CompiledRoute {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub action: Action,
    pub rewrite: Rewrite,
    pub request_headers: CompiledHeaderOps,
    pub response_headers: CompiledHeaderOps,
    pub metrics: RouteMetrics,
    /// The route's protection layers (and the passport-header strip every route does).
    pub protect: crate::protect::RouteProtect,
    /// `cache = …`: the route's cache policy (the store is `Runtime::cache`).
    pub cache: Option<Arc<sumun_cache::RoutePolicy>>,
}

pub struct Runtime {
    pub config: Arc<Config>,
    pub via: ViaEntries,
    pub routes: Vec<CompiledRoute>,
    pub pools: Vec<Arc<UpstreamPool>>,
    /// By name; a handful at most, so a linear scan beats hashing.
    pub listeners: Vec<(String, ListenerRuntime)>,
    /// Requests that match no route are counted here.
    pub unrouted: RouteMetrics,
    /// Built when a listener has `forward_proxy = true`.
    pub forward: Option<crate::forward_proxy::ForwardRuntime>,
    /// Named auth/rate-limit/CORS policies, the passport signer and the Redis connection.
    pub policies: crate::protect::Policies,
    /// The shared HTTP cache, when a route caches; carried over by reloads (a new, empty one
    /// only when `[cache] memory` changed).
    pub cache: Option<sumun_cache::Cache>,
    /// The message bus (topics, subscriptions). Built once per process and carried over by
    /// every reload; None while only checking a config.
    pub bus: Option<Arc<sumun_bus::Bus>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("via pseudonym `{0}` cannot be used in a header")]
    Via(String),
    #[error("forward proxy: {0}")]
    Forward(String),
    #[error("{0}")]
    Protect(String),
    #[error("listener `{listener}`: {source}")]
    Tls { listener: String, source: TlsError },
}

impl Runtime {
    /// Compiles `config`. Upstream pools whose settings did not change are taken over from
    /// `previous`, so a reload keeps their warm connections.
    pub fn build(config: Config, previous: Option<&Runtime>) -> Result<Runtime, BuildError> {
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => Some(
                    tls::acceptor(t)
                        .map_err(|source| BuildError::Tls { listener: l.name.clone(), source })?,
                ),
                None => None,
            };
            listeners.push((
                l.name.clone(),
                ListenerRuntime {
                    limits: l.limits.clone(),
                    tls,
                    trust_forwarded: l.trust_forwarded,
                    forward_proxy: l.forward_proxy,
                },
            ));
        }
        let pools: Vec<Arc<UpstreamPool>> = config
            .upstreams
            .iter()
            .map(|u| {
                let prev = previous.and_then(|p| {
                    p.config.upstreams.iter().position(|old| old.name == u.name).and_then(|i| p.pools.get(i))
                });
                match prev {
                    // Unchanged: keep the pool with its warm connections and live state.
                    Some(pool) if pool.config() == u => pool.clone(),
                    // Changed: a new pool that carries over what it can of the old state.
                    Some(pool) => Arc::new(UpstreamPool::new(u, Some(pool))),
                    None => Arc::new(UpstreamPool::new(u, None)),
                }
            })
            .collect();
        let config = Arc::new(config);
        let policies = crate::protect::Policies::build(&config, previous.map(|p| &p.policies))
            .map_err(BuildError::Protect)?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let name: Arc<str> = Arc::from(r.name.as_str());
                let action = match &r.target {
                    Target::Upstream { index, .. } => match pools.get(*index) {
                        Some(p) => Action::Upstream(p.clone()),
                        None => Action::Respond {
                            status: StatusCode::SERVICE_UNAVAILABLE,
                            body: Bytes::new(),
                            headers: Vec::new(),
                        },
                    },
                    Target::Respond(resp) => Action::Respond {
                        status: StatusCode::from_u16(resp.status).unwrap_or(StatusCode::OK),
                        body: Bytes::from(resp.body.clone()),
                        headers: pairs(&resp.headers),
                    },
                    Target::Redirect { location, status } => Action::Redirect {
                        status: StatusCode::from_u16(*status).unwrap_or(StatusCode::PERMANENT_REDIRECT),
                        location: HeaderValue::from_str(location)
                            .unwrap_or_else(|_| HeaderValue::from_static("/")),
                    },
                    Target::Echo => Action::Echo,
                    Target::Topic { name, .. } => Action::Topic(Arc::from(name.as_str())),
                    Target::Subscription { name } => Action::Subscription(Arc::from(name.as_str())),
                };
                CompiledRoute {
                    matcher: Matcher::compile(&r.listeners, &r.matcher),
                    action,
                    rewrite: r.rewrite.clone(),
                    request_headers: CompiledHeaderOps::compile(&r.headers.request),
                    response_headers: CompiledHeaderOps::compile(&r.headers.response),
                    metrics: RouteMetrics::new(&name),
                    protect: policies.route(r),
                    cache: r.cache.as_ref().map(|c| Arc::new(sumun_cache::RoutePolicy::compile(c))),
                    name,
                }
            })
            .collect();
        let forward = if config.listeners.iter().any(|l| l.forward_proxy) {
            Some(
                crate::forward_proxy::ForwardRuntime::new(&config.forward_proxy)
                    .map_err(BuildError::Forward)?,
            )
        } else {
            None
        };
        let cache = config.routes.iter().any(|r| r.cache.is_some()).then(|| {
            match previous.and_then(|p| p.cache.as_ref()) {
                Some(c) if c.capacity() == config.cache.memory => c.clone(),
                _ => sumun_cache::Cache::new(&config.cache),
            }
        });
        let unrouted_name: Arc<str> = Arc::from("");
        Ok(Runtime {
            via: ViaEntries::new(&config.via).ok_or_else(|| BuildError::Via(config.via.clone()))?,
            config,
            routes,
            pools,
            listeners,
            unrouted: RouteMetrics::new(&unrouted_name),
            forward,
            policies,
            cache,
            bus: previous.and_then(|p| p.bus.clone()),
        })
    }

    /// Attaches the process's message bus (reloads carry it over from the previous runtime).
    pub fn with_bus(mut self, bus: Option<Arc<sumun_bus::Bus>>) -> Self {
        self.bus = bus;
        self
    }

    /// Every upstream pool's live state, for `GET /v1/upstreams`.
    pub fn upstreams_snapshot(&self) -> serde_json::Value {
        serde_json::json!({ "upstreams": self.pools.iter().map(|p| p.snapshot()).collect::<Vec<_>>() })
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerRuntime> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }

    /// The first route that matches, in file order.
    pub fn route(&self, view: &RequestView<'_>) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.matcher.matches(view))
    }
}
