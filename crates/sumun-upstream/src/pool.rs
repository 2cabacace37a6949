//! An upstream pool: its endpoints' live state, the balancer that picks one, the transport,
//! and the resilience around them — active health checks, passive outlier ejection, slow
//! start, circuit breakers and the retry budget. The retry loop itself is the gateway's (it
//! owns the request); the pool answers "which endpoint", "may I", and "what happened".

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use sumun_config::{AllUnavailable, RetryPolicy, Upstream};
use sumun_http::{Body, ErrorKind, ProxyError};

use crate::balance::{self, Balancer, PickCtx};
use crate::breaker::{Breaker, BreakerPermit, BreakerScope};
use crate::endpoint::{Clock, EndpointState, Outcome};
use crate::health::{HealthChecker, HealthHandle};
use crate::outlier::OutlierDetector;
use crate::retry::RetryBudget;
use crate::transport::{EndpointConn, Transport};

/// A named set of endpoints with a balancer, connection pools and resilience state.
pub struct UpstreamPool {
    pub name: Arc<str>,
    cfg: Upstream,
    clock: Clock,
    endpoints: Vec<Arc<EndpointState>>,
    conns: Vec<Option<EndpointConn>>,
    balancer: Box<dyn Balancer>,
    transport: Transport,
    outlier: Option<Arc<OutlierDetector>>,
    breaker: Option<Arc<Breaker>>,
    endpoint_breakers: Vec<Arc<Breaker>>,
    budget: Option<RetryBudget>,
    /// Started by the gateway once the pool serves (not while merely checking a config).
    health: OnceLock<Option<HealthHandle>>,
    /// Sticky-cookie value of each endpoint.
    sticky_ids: Vec<String>,
    endpoint_metrics: Vec<EndpointMetrics>,
    /// Time to response head, resolved once per pool.
    latency: metrics::Histogram,
}

/// Per-endpoint metric handles, resolved when the pool is built.
struct EndpointMetrics {
    in_flight: metrics::Gauge,
    latency: metrics::Histogram,
}

/// Permission to send one try: holds the breaker permits and the in-flight count.
pub struct TryPermit {
    pub endpoint: usize,
    upstream: Option<BreakerPermit>,
    endpoint_permit: Option<BreakerPermit>,
    in_flight_gauge: Option<metrics::Gauge>,
    _in_flight: crate::endpoint::InFlight,
}

impl Drop for TryPermit {
    fn drop(&mut self) {
        if let Some(g) = &self.in_flight_gauge {
            g.decrement(1.0);
        }
    }
}

impl UpstreamPool {
    /// Builds the pool. Endpoints that also existed in `previous` keep their health and
    /// ejection state; endpoints a reload added start slow start.
    pub fn new(cfg: &Upstream, previous: Option<&UpstreamPool>) -> Self {
        let clock = previous.map_or_else(Clock::new, |p| p.clock);
        let now = clock.now_ms();
        let endpoints: Vec<Arc<EndpointState>> = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let ep = EndpointState::new(i, e.address.clone(), e.weight);
                match previous.and_then(|p| p.endpoints.iter().find(|o| o.address == e.address)) {
                    Some(old) => {
                        ep.set_healthy(old.is_healthy(), now);
                        if old.is_ejected(now) {
                            ep.eject(old.ejected_until());
                        }
                    }
                    None if previous.is_some() => ep.mark_new(now),
                    None => {}
                }
                Arc::new(ep)
            })
            .collect();
        let (transport, conns) = Transport::new(cfg);
        let name = cfg.name.as_str();
        let endpoint_breakers = match &cfg.breaker {
            Some(b) if b.per_endpoint => endpoints
                .iter()
                .map(|e| Arc::new(Breaker::new(name, BreakerScope::Endpoint(e.label.clone()), b)))
                .collect(),
            _ => Vec::new(),
        };
        UpstreamPool {
            name: Arc::from(name),
            clock,
            balancer: balance::build(cfg),
            transport,
            conns,
            outlier: cfg.outlier.clone().map(|o| Arc::new(OutlierDetector::new(name, o))),
            breaker: cfg.breaker.as_ref().map(|b| Arc::new(Breaker::new(name, BreakerScope::Upstream, b))),
            endpoint_breakers,
            budget: cfg.retry.as_ref().map(RetryBudget::from_policy),
            health: OnceLock::new(),
            sticky_ids: endpoints.iter().map(|e| balance::sticky_id(&e.label)).collect(),
            endpoint_metrics: endpoints
                .iter()
                .map(|e| {
                    let labels = [("upstream", cfg.name.clone()), ("endpoint", e.label.to_string())];
                    EndpointMetrics {
                        in_flight: metrics::gauge!("sumun_upstream_endpoint_in_flight", &labels),
                        latency: metrics::histogram!(
                            "sumun_upstream_endpoint_request_duration_seconds",
                            &labels
                        ),
                    }
                })
                .collect(),
            endpoints,
            latency: metrics::histogram!("sumun_upstream_request_duration_seconds", "upstream" => cfg.name.clone()),
            cfg: cfg.clone(),
        }
    }

    /// Starts background work: active health checks, and a sweep that reports ended
    /// ejections on a quiet pool. Idempotent; needs a tokio runtime.
    pub fn start(&self) {
        self.health.get_or_init(|| {
            if let Some(o) = &self.outlier {
                // Ends with the pool: the task holds only a weak reference.
                let weak = Arc::downgrade(o);
                let clock = self.clock;
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        let Some(o) = weak.upgrade() else { return };
                        o.sweep(clock.now_ms());
                    }
                });
            }
            self.cfg
                .health
                .as_ref()
                .map(|h| HealthChecker::spawn(&self.name, h, self.endpoints.clone(), self.clock))
        });
    }

    pub fn config(&self) -> &Upstream {
        &self.cfg
    }

    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.cfg.retry.as_ref()
    }

    pub fn endpoint(&self, i: usize) -> Option<&Arc<EndpointState>> {
        self.endpoints.get(i)
    }

    /// The endpoint a sticky cookie names, if it is still available.
    pub fn sticky_endpoint(&self, id: &str) -> Option<usize> {
        let now = self.clock.now_ms();
        let i = self.sticky_ids.iter().position(|s| s == id)?;
        self.endpoints[i].is_available(now).then_some(i)
    }

    pub fn sticky_id(&self, i: usize) -> Option<&str> {
        self.sticky_ids.get(i).map(String::as_str)
    }

    /// Picks an endpoint, avoiding `exclude` when another one is eligible. When nothing is
    /// available at all, panic mode routes as if every endpoint were healthy.
    pub fn pick(&self, hash: Option<u64>, exclude: &[usize]) -> Result<usize, ProxyError> {
        let now = self.clock.now_ms();
        let ctx =
            PickCtx { hash, now_ms: now, exclude, panic: false, slow_start: self.cfg.slow_start.as_ref() };
        if let Some(i) = self.balancer.pick(&self.endpoints, &ctx) {
            return Ok(i);
        }
        // Everything else was tried: the same endpoint again beats no retry at all.
        if !exclude.is_empty()
            && let Some(i) = self.balancer.pick(&self.endpoints, &PickCtx { exclude: &[], ..ctx })
        {
            return Ok(i);
        }
        let none_available = !self.endpoints.iter().any(|e| e.is_available(now));
        if none_available && self.cfg.all_unavailable == AllUnavailable::Panic {
            metrics::counter!("sumun_upstream_panic_picks_total", "upstream" => self.name.to_string())
                .increment(1);
            if let Some(i) =
                self.balancer.pick(&self.endpoints, &PickCtx { panic: true, exclude: &[], ..ctx })
            {
                return Ok(i);
            }
        }
        Err(ProxyError::new(ErrorKind::NoHealthyEndpoint, "no upstream endpoint is available"))
    }

    /// Asks the breakers for permission to try endpoint `i`. An open breaker answers with how
    /// long until it lets probes through.
    pub fn acquire(&self, i: usize) -> Result<TryPermit, Refused> {
        let now = self.clock.now_ms();
        let upstream = match &self.breaker {
            Some(b) => Some(
                b.try_acquire(now).map_err(|o| Refused { retry_after: o.retry_after, endpoint: false })?,
            ),
            None => None,
        };
        let endpoint_permit = match self.endpoint_breakers.get(i) {
            Some(b) => {
                Some(b.try_acquire(now).map_err(|o| Refused { retry_after: o.retry_after, endpoint: true })?)
            }
            None => None,
        };
        let ep = self.endpoints.get(i).ok_or(Refused { retry_after: Duration::ZERO, endpoint: true })?;
        let in_flight_gauge = self.endpoint_metrics.get(i).map(|m| m.in_flight.clone());
        if let Some(g) = &in_flight_gauge {
            g.increment(1.0);
        }
        Ok(TryPermit { endpoint: i, upstream, endpoint_permit, in_flight_gauge, _in_flight: ep.begin() })
    }

    /// Counts a request (not a retry) toward the retry budget.
    pub fn count_request(&self) {
        if let Some(b) = &self.budget {
            b.record_request(self.clock.now_ms());
        }
    }

    /// Whether the retry budget allows one more retry (consumes it).
    pub fn try_retry(&self) -> bool {
        self.budget.as_ref().is_none_or(|b| b.try_retry(self.clock.now_ms()))
    }

    /// Sends one try to the endpoint the permit is for. (A plain fn returning the transport's
    /// small future: see [`Transport::send`].)
    pub fn send(
        &self,
        permit: &TryPermit,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + '_ {
        match self.conns.get(permit.endpoint).and_then(Option::as_ref) {
            Some(conn) => Either::Left(self.transport.send(conn, req)),
            None => Either::Right(std::future::ready(Err(ProxyError::new(
                ErrorKind::NoHealthyEndpoint,
                "no upstream endpoint is available",
            )))),
        }
    }

    /// Records how long a try took to its response head, for the upstream and the endpoint.
    pub fn observe(&self, i: usize, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.latency.record(secs);
        if let Some(m) = self.endpoint_metrics.get(i) {
            m.latency.record(secs);
        }
    }

    /// Reports how a try ended, to outlier detection and the breakers.
    pub fn record(&self, mut permit: TryPermit, outcome: Option<Outcome>) {
        let Some(outcome) = outcome else { return };
        let now = self.clock.now_ms();
        if let (Some(o), Some(ep)) = (&self.outlier, self.endpoints.get(permit.endpoint)) {
            o.record(ep, outcome, &self.endpoints, now);
        }
        if let Some(p) = permit.upstream.take() {
            p.record(outcome, now);
        }
        if let Some(p) = permit.endpoint_permit.take() {
            p.record(outcome, now);
        }
    }

    /// The pool's live state, for `GET /v1/upstreams`.
    pub fn snapshot(&self) -> serde_json::Value {
        let now = self.clock.now_ms();
        let ss = self.cfg.slow_start.as_ref();
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .map(|e| {
                let until = e.ejected_until();
                serde_json::json!({
                    "address": &*e.label,
                    "weight": e.weight,
                    "effective_weight": e.effective_weight(now, ss),
                    "healthy": e.is_healthy(),
                    "ejected": e.is_ejected(now),
                    "ejected_for_ms": if e.is_ejected(now) { until - now } else { 0 },
                    "ejections": e.ejections.load(std::sync::atomic::Ordering::Relaxed),
                    "in_flight": e.in_flight(),
                    "breaker": self.endpoint_breakers.get(e.index).map(|b| b.state().as_str()),
                })
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "balance": format!("{:?}", self.cfg.balance),
            "breaker": self.breaker.as_ref().map(|b| b.state().as_str()),
            "endpoints": endpoints,
        })
    }
}

/// A breaker refused the try.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub retry_after: Duration,
    /// The endpoint's own breaker (another endpoint may still be tried) rather than the
    /// upstream's.
    pub endpoint: bool,
}

/// The outcome of a try for outlier detection and breakers; None when the failure was the
/// client's (its body broke or was too large), which says nothing about the endpoint.
pub fn outcome_of(result: &Result<Response<Incoming>, ProxyError>) -> Option<Outcome> {
    match result {
        Ok(r) if r.status().is_server_error() => Some(Outcome::Status5xx(r.status().as_u16())),
        Ok(_) => Some(Outcome::Success),
        Err(e) => match e.kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => Some(Outcome::ConnectFailure),
            ErrorKind::UpstreamTimeout => Some(Outcome::Timeout),
            ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => Some(Outcome::Reset),
            _ => None,
        },
    }
}
