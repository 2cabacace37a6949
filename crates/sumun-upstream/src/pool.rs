//! An upstream pool: its endpoints, the balancer and the transport that carries requests to
//! them. HTTP/1.1 goes through hyper-util's pooling client (one keep-alive pool per
//! endpoint); h2c keeps one multiplexed connection per endpoint, reopened when it closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sumun_config::{EndpointAddr, Upstream, UpstreamProtocol};
use sumun_http::body::BodyTooLarge;
use sumun_http::{Body, ErrorKind, ProxyError};

use crate::balance::RoundRobin;
use crate::connector::{ConnectFailed, ConnectTimedOut, Connector};

/// One endpoint of a pool.
pub struct EndpointHandle {
    pub addr: EndpointAddr,
    /// How logs and metrics name it (`127.0.0.1:3000`, `unix:/run/api.sock`).
    pub label: Arc<str>,
    /// The authority our connector maps back to this endpoint.
    authority: Authority,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
}

enum Transport {
    Http1(Box<Client<Connector, Body>>),
    H2c,
}

/// A named set of endpoints with a balancer and connection pools.
pub struct UpstreamPool {
    pub name: Arc<str>,
    endpoints: Vec<EndpointHandle>,
    balancer: RoundRobin,
    transport: Transport,
    connector: Connector,
    request_timeout: Duration,
    /// Time to response head, resolved once per pool.
    pub latency: metrics::Histogram,
}

impl UpstreamPool {
    pub fn new(cfg: &Upstream) -> Self {
        let mut unix = HashMap::new();
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            let authority = match &ep.address {
                EndpointAddr::Tcp { .. } => Authority::try_from(ep.address.to_string().as_str()),
                EndpointAddr::Unix(path) => {
                    // A name no DNS will ever answer, unique per endpoint of this pool.
                    let host = format!("ep{i}.unix.invalid");
                    unix.insert(host.clone(), path.clone());
                    Authority::try_from(host.as_str())
                }
            };
            let Ok(authority) = authority else {
                tracing::error!(upstream = %cfg.name, endpoint = %ep.address, "endpoint address is not a valid URI authority; skipped");
                continue;
            };
            endpoints.push(EndpointHandle {
                addr: ep.address.clone(),
                label: Arc::from(ep.address.to_string()),
                authority,
                h2: tokio::sync::Mutex::new(None),
            });
        }
        let weights: Vec<u32> = cfg.endpoints.iter().map(|e| e.weight).collect();
        let connector = Connector::new(unix, cfg.timeouts.connect, Some(Duration::from_secs(60)));
        let transport = match cfg.protocol {
            UpstreamProtocol::Http1 => {
                let client = Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(cfg.pool.idle_timeout)
                    .pool_max_idle_per_host(cfg.pool.max_idle_per_endpoint)
                    .set_host(false)
                    .build(connector.clone());
                Transport::Http1(Box::new(client))
            }
            UpstreamProtocol::H2c => Transport::H2c,
        };
        UpstreamPool {
            name: Arc::from(cfg.name.as_str()),
            balancer: RoundRobin::new(&weights[..endpoints.len().min(weights.len())]),
            endpoints,
            transport,
            connector,
            request_timeout: cfg.timeouts.request,
            latency: metrics::histogram!("sumun_upstream_request_duration_seconds", "upstream" => cfg.name.clone()),
        }
    }

    pub fn endpoints(&self) -> &[EndpointHandle] {
        &self.endpoints
    }

    /// Picks the endpoint for the next request.
    pub fn pick(&self) -> Result<&EndpointHandle, ProxyError> {
        self.balancer
            .pick()
            .and_then(|i| self.endpoints.get(i))
            .ok_or_else(|| ProxyError::new(ErrorKind::NoHealthyEndpoint, "no upstream endpoint is available"))
    }

    /// Sends `req` (origin-form URI, hop-by-hop fields already stripped) to `ep` and waits for
    /// the response head within the request timeout.
    pub async fn send(
        &self,
        ep: &EndpointHandle,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let pq = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let fut = async {
            match &self.transport {
                Transport::Http1(client) => {
                    *req.uri_mut() = absolute(ep.authority.clone(), pq)?;
                    client.request(req).await.map_err(|e| classify(&e))
                }
                Transport::H2c => {
                    // :authority carries the client's host; Host itself is not sent on h2.
                    let authority = req
                        .headers_mut()
                        .remove(header::HOST)
                        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                        .unwrap_or_else(|| ep.authority.clone());
                    *req.uri_mut() = absolute(authority, pq)?;
                    *req.version_mut() = http::Version::HTTP_2;
                    let mut sender = self.h2_sender(ep).await?;
                    sender.send_request(req).await.map_err(|e| classify(&e))
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::new(ErrorKind::UpstreamTimeout, "the upstream did not answer in time")),
        }
    }

    async fn h2_sender(&self, ep: &EndpointHandle) -> Result<http2::SendRequest<Body>, ProxyError> {
        let mut slot = ep.h2.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let uri = absolute(ep.authority.clone(), PathAndQuery::from_static("/"))?;
        let stream = self.connector.connect(uri).await.map_err(|e| classify(e.as_ref()))?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(stream)
            .await
            .map_err(|e| {
                ProxyError::new(ErrorKind::ConnectFailed, "the upstream refused HTTP/2").with_source(e)
            })?;
        let label = ep.label.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %label, error = %e, "h2 upstream connection closed");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

fn absolute(authority: Authority, pq: PathAndQuery) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::new(ErrorKind::Internal, "could not build the upstream URI").with_source(e))
}

/// Maps a transport error to what happened, by walking its source chain.
fn classify(err: &(dyn std::error::Error + Send + Sync + 'static)) -> ProxyError {
    let mut connect = false;
    let mut user = false;
    let mut parse = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<ConnectTimedOut>() {
            return ProxyError::new(ErrorKind::ConnectTimeout, "connecting to the upstream timed out");
        }
        if e.is::<BodyTooLarge>() {
            return ProxyError::new(ErrorKind::BodyTooLarge, "the request body is larger than allowed");
        }
        if let Some(le) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connect |= le.is_connect();
        }
        if let Some(he) = e.downcast_ref::<hyper::Error>() {
            user |= he.is_user();
            parse |= he.is_parse();
        }
        connect |= e.is::<ConnectFailed>();
        cur = e.source();
    }
    let detail_err = format!("{err}");
    let kind = if connect {
        ErrorKind::ConnectFailed
    } else if user {
        ErrorKind::DownstreamBody
    } else if parse {
        ErrorKind::UpstreamProtocol
    } else {
        ErrorKind::UpstreamReset
    };
    let detail = match kind {
        ErrorKind::ConnectFailed => "could not connect to the upstream",
        ErrorKind::DownstreamBody => "the request body could not be read",
        ErrorKind::UpstreamProtocol => "the upstream sent an invalid response",
        _ => "the upstream connection failed",
    };
    ProxyError::new(kind, detail).with_source(detail_err)
}
