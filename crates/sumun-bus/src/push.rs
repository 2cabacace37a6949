//! One push delivery attempt: an HTTP POST of the message in CloudEvents binary mode (the
//! stored `ce-*`, `content-type` and kept headers) with the Standard Webhooks headers
//! (`webhook-id` = the message id, stable across retries and redrives; `webhook-timestamp`;
//! `webhook-signature` = `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` when a signing
//! secret is set). The target is an upstream pool of the gateway (its balancer, health and
//! breakers apply) or a URL through a pooled HTTP(S) client. A 2xx acknowledges; anything
//! else, a timeout or a connect failure is a failed attempt.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sumun_http::Body;
use sumun_upstream::retry::parse_retry_after;
use sumun_upstream::{UpstreamPool, outcome_of};

use crate::envelope::unix_ms;
use crate::log::Record;

/// Finds the gateway's current pool for an upstream name (pools are rebuilt on reload).
pub type PoolResolver = Arc<dyn Fn(&str) -> Option<Arc<UpstreamPool>> + Send + Sync>;

/// Response bodies are read (to reuse the connection) up to this much, then dropped.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

type UrlClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where a subscription's deliveries go.
pub enum PushTarget {
    Pool { upstream: String, path: String, resolver: PoolResolver },
    Url { uri: Uri, client: Box<UrlClient> },
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub latency: Duration,
    /// None for a success (2xx).
    pub error: Option<String>,
    /// The receiver's `Retry-After`, a floor for the next backoff.
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// A signing key decoded from `whsec_…` / base64.
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl SigningKey {
    pub fn from_secret(secret: &str) -> Option<SigningKey> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret).trim();
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        Some(SigningKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw)))
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref()))
    }
}

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

impl PushTarget {
    /// A URL target with its own keep-alive client (HTTP/1.1, TLS with the webpki roots).
    pub fn url(uri: Uri, timeout: Duration) -> Result<PushTarget, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        http.set_nodelay(true);
        let roots = tls_config()?;
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(roots)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(tls);
        Ok(PushTarget::Url { uri, client: Box::new(client) })
    }

    /// POSTs `record` once, within `timeout`.
    pub async fn deliver(
        &self,
        id: &str,
        record: &Record,
        key: Option<&SigningKey>,
        timeout: Duration,
    ) -> AttemptResult {
        let started = Instant::now();
        let head = match build_head(id, record, key) {
            Ok(h) => h,
            Err(e) => return failure(started, None, e),
        };
        match self {
            PushTarget::Pool { upstream, path, resolver } => {
                let Some(pool) = resolver(upstream) else {
                    return failure(started, None, format!("upstream `{upstream}` is not configured"));
                };
                deliver_pool(&pool, path, head, record.value.clone(), timeout, started).await
            }
            PushTarget::Url { uri, client } => {
                let mut req = Request::new(Full::new(record.value.clone()));
                *req.method_mut() = Method::POST;
                *req.uri_mut() = uri.clone();
                *req.headers_mut() = head;
                let res = tokio::time::timeout(timeout, client.request(req)).await;
                match res {
                    Err(_) => failure(started, None, "timed out waiting for the response".into()),
                    Ok(Err(e)) => failure(started, None, client_error(&e)),
                    Ok(Ok(res)) => finish(res, started, timeout).await,
                }
            }
        }
    }
}

fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS client setup: {e}"))
}

fn client_error(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() { "connect failed".into() } else { "connection failed before a response".into() }
}

fn failure(started: Instant, status: Option<u16>, error: String) -> AttemptResult {
    AttemptResult { status, latency: started.elapsed(), error: Some(error), retry_after: None }
}

/// The request head of a delivery: the stored headers, then the webhook headers.
fn build_head(id: &str, record: &Record, key: Option<&SigningKey>) -> Result<http::HeaderMap, String> {
    let mut h = http::HeaderMap::with_capacity(record.headers.len() + 4);
    for (name, value) in &record.headers {
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) else {
            // Stored by us from valid request headers; skip rather than fail on a surprise.
            continue;
        };
        h.append(n, v);
    }
    let ts = unix_ms(SystemTime::now()) / 1000;
    let id_value =
        HeaderValue::from_str(id).map_err(|_| "the message id is not a valid header value".to_owned())?;
    h.insert(WEBHOOK_ID.clone(), id_value);
    h.insert(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(ts));
    if let Some(k) = key
        && let Ok(v) = HeaderValue::from_str(&k.sign(id, ts, &record.value))
    {
        h.insert(WEBHOOK_SIGNATURE.clone(), v);
    }
    h.insert(header::USER_AGENT, HeaderValue::from_static("sumun-bus"));
    Ok(h)
}

async fn deliver_pool(
    pool: &UpstreamPool,
    path: &str,
    mut head: http::HeaderMap,
    body: Bytes,
    timeout: Duration,
    started: Instant,
) -> AttemptResult {
    let i = match pool.pick(None, &[]) {
        Ok(i) => i,
        Err(_) => return failure(started, None, "no upstream endpoint is available".into()),
    };
    let permit = match pool.acquire(i) {
        Ok(p) => p,
        Err(open) => {
            let mut r = failure(started, None, "the upstream's circuit breaker is open".into());
            r.retry_after = Some(open.retry_after);
            return r;
        }
    };
    if let Some(ep) = pool.endpoint(i)
        && let Ok(v) = HeaderValue::from_str(&ep.label)
        && !ep.label.starts_with("unix:")
    {
        head.insert(header::HOST, v);
    } else {
        head.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    let mut req = Request::new(Body::full(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    *req.headers_mut() = head;
    let t0 = Instant::now();
    let r = match tokio::time::timeout(timeout, pool.send(&permit, req)).await {
        Ok(r) => r,
        Err(_) => Err(sumun_http::ProxyError::new(
            sumun_http::ErrorKind::UpstreamTimeout,
            "the upstream did not answer in time",
        )),
    };
    pool.observe(i, t0.elapsed());
    pool.record(permit, outcome_of(&r));
    match r {
        Ok(res) => finish(res, started, timeout.saturating_sub(started.elapsed())).await,
        Err(e) => failure(started, None, e.detail.to_string()),
    }
}

/// Reads (a bounded part of) the response body so the connection can be reused, and turns
/// the status into the attempt's result.
async fn finish<B>(res: http::Response<B>, started: Instant, time_left: Duration) -> AttemptResult
where
    B: http_body::Body,
{
    let status = res.status();
    let retry_after =
        res.headers().get(header::RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = std::pin::pin!(res.into_body());
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                read += bytes::Buf::remaining(d);
                if read > MAX_RESPONSE_BODY {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(time_left.min(Duration::from_secs(5)), drain).await;
    let latency = started.elapsed();
    if status.is_success() {
        AttemptResult { status: Some(status.as_u16()), latency, error: None, retry_after: None }
    } else {
        AttemptResult {
            status: Some(status.as_u16()),
            latency,
            error: Some(format!("HTTP {}", status.as_u16())),
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature() {
        // The example of the Standard Webhooks specification.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(SigningKey::from_secret("not base64!").is_none());
    }

    #[test]
    fn delivery_head_carries_envelope_and_webhook_headers() {
        let record = Record {
            key: None,
            timestamp_ms: 0,
            headers: vec![
                ("ce-id".into(), Bytes::from_static(b"msg_1")),
                ("content-type".into(), Bytes::from_static(b"text/plain")),
                ("bad\nname".into(), Bytes::from_static(b"x")),
            ],
            value: Bytes::from_static(b"hi"),
        };
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = build_head("msg_1", &record, Some(&key)).unwrap();
        assert_eq!(h["ce-id"], "msg_1");
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["webhook-id"], "msg_1");
        let ts: u64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert_eq!(h["webhook-signature"].to_str().unwrap(), key.sign("msg_1", ts, b"hi"));
        assert_eq!(h.len(), 6);
    }
}
