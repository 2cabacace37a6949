//! Carrying one request to one endpoint: HTTP/1.1 over a keep-alive pool per endpoint
//! (`h1pool`), h2c over one multiplexed connection per endpoint, reopened when it closes.
//! Transport errors are classified into `ProxyError` kinds here.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryFutureExt;
use futures_util::future::Either;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sumun_config::{EndpointAddr, Upstream, UpstreamProtocol};
use sumun_http::body::BodyTooLarge;
use sumun_http::{Body, ErrorKind, ProxyError};

use crate::connector::{ConnectFailed, ConnectTimedOut, Connector};
use crate::h1pool::H1Pool;

/// How requests reach one endpoint.
pub(crate) struct EndpointConn {
    /// The authority our connector maps back to this endpoint.
    authority: Authority,
    /// `http://authority/`, what the connector connects to.
    connect_uri: Uri,
    h1: Arc<H1Pool>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    /// `sumun_upstream_connections_opened_total{upstream,endpoint}`.
    opened: metrics::Counter,
}

enum Kind {
    Http1,
    H2c,
}

pub(crate) struct Transport {
    kind: Kind,
    connector: Connector,
}

impl Transport {
    /// Builds the transport and one connection slot per endpoint (None for an endpoint whose
    /// address cannot be an authority; config validation prevents that).
    pub(crate) fn new(cfg: &Upstream) -> (Transport, Vec<Option<EndpointConn>>) {
        let mut unix = HashMap::new();
        let conns = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let authority = match &ep.address {
                    EndpointAddr::Tcp { .. } => Authority::try_from(ep.address.to_string().as_str()).ok(),
                    EndpointAddr::Unix(path) => {
                        // A name no DNS will ever answer, unique per endpoint of this pool.
                        let host = format!("ep{i}.unix.invalid");
                        unix.insert(host.clone(), path.clone());
                        Authority::try_from(host.as_str()).ok()
                    }
                };
                let authority = authority?;
                let connect_uri = absolute(authority.clone(), PathAndQuery::from_static("/")).ok()?;
                let labels = [("upstream", cfg.name.clone()), ("endpoint", ep.address.to_string())];
                let opened = metrics::counter!("sumun_upstream_connections_opened_total", &labels);
                Some(EndpointConn {
                    authority,
                    connect_uri,
                    h1: H1Pool::new(cfg.pool.max_idle_per_endpoint, cfg.pool.idle_timeout, opened.clone()),
                    h2: tokio::sync::Mutex::new(None),
                    opened,
                })
            })
            .collect();
        let connector = Connector::new(unix, cfg.timeouts.connect, cfg.tcp_keepalive);
        let kind = match cfg.protocol {
            UpstreamProtocol::Http1 => Kind::Http1,
            UpstreamProtocol::H2c => Kind::H2c,
        };
        (Transport { kind, connector }, conns)
    }

    /// Sends `req` (origin-form URI, hop-by-hop fields already stripped) and waits for the
    /// response head. Timeouts are the caller's.
    ///
    /// Not an `async fn`: this future is part of every request's future, which is moved whole
    /// at each level per request; the h2 path, with its connect and handshake, is boxed.
    pub(crate) fn send<'a>(
        &'a self,
        ep: &'a EndpointConn,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + 'a {
        match &self.kind {
            Kind::Http1 => Either::Left(
                ep.h1.send(&self.connector, &ep.connect_uri, req).map_err(|e| e.into_proxy_error(classify)),
            ),
            Kind::H2c => {
                let pq =
                    req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
                let h2: Pin<Box<dyn Future<Output = _> + Send + 'a>> = Box::pin(self.send_h2(ep, req, pq));
                Either::Right(h2)
            }
        }
    }

    async fn send_h2(
        &self,
        ep: &EndpointConn,
        mut req: Request<Body>,
        pq: PathAndQuery,
    ) -> Result<Response<Incoming>, ProxyError> {
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

    async fn h2_sender(&self, ep: &EndpointConn) -> Result<http2::SendRequest<Body>, ProxyError> {
        let mut slot = ep.h2.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let uri = absolute(ep.authority.clone(), PathAndQuery::from_static("/"))?;
        let stream = self.connector.connect(uri).await.map_err(|e| classify(e.as_ref()))?;
        ep.opened.increment(1);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(stream)
            .await
            .map_err(|e| {
                ProxyError::new(ErrorKind::ConnectFailed, "the upstream refused HTTP/2").with_source(e)
            })?;
        let authority = ep.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %authority, error = %e, "h2 upstream connection closed");
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
