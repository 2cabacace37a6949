//! Verification keys: PEM and JWKS files read at build, and a JWKS URL fetched in the
//! background.
//!
//! The remote set is fetched by one task per policy, so concurrent requests never fetch
//! twice (single flight by construction). The set is cached for its `Cache-Control: max-age`
//! clamped to [`jwks_min_ttl`, `jwks_max_ttl`] and refreshed at 90% of that; a failed fetch
//! keeps the last good set (logged, `sumun_auth_jwks_refresh_total{result="error"}`,
//! `sumun_auth_jwks_stale` = 1) and is retried with a backoff capped at `jwks_min_refresh`.
//! A request whose `kid` is unknown asks for a refetch at most once per `jwks_min_refresh`
//! and waits for it at most `jwks_timeout`; so does a request arriving before any set was
//! obtained.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::AlgorithmFamily;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use metrics::{Counter, Gauge};
use sha2::Digest;
use sumun_config::JwtAuth;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Key files and JWKS documents larger than this are refused.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// The most keys kept from one file or document.
const MAX_KEYS: usize = 64;
/// First retry delay after a failed fetch (then doubled up to `jwks_min_refresh`).
const FIRST_RETRY: Duration = Duration::from_secs(1);

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

/// Reads a key file, bounded.
pub(super) fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    if meta.len() > MAX_DOCUMENT as u64 {
        return Err(format!("key file {} is larger than {MAX_DOCUMENT} bytes", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))
}

/// One verification key.
pub(super) struct VerifyKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// The one algorithm this key may verify, when the key says (JWK `alg`, EC curve).
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family && self.alg.is_none_or(|a| a == alg)
    }
}

/// A set of public verification keys. HMAC keys never come from files or JWKS: the only
/// HMAC key is the policy's `secret`.
#[derive(Default)]
pub(super) struct KeySet {
    pub keys: Vec<VerifyKey>,
    /// For a fetched set: a number that changes whenever a fetch brings a different document
    /// (0 for key files). The verified-token cache trusts an entry only while the set it was
    /// verified against is still the current one.
    pub generation: u64,
    /// SHA-256 of the fetched JWKS document (None for key files).
    digest: Option<[u8; 32]>,
}

impl KeySet {
    /// Parses a key file: a JWKS (or single JWK) document, or PEM blocks (public keys or
    /// certificates; RSA, EC P-256/P-384, Ed25519).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<KeySet, String> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text (PEM or JWKS expected)".to_owned())?;
        if text.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            let (set, _) = if v.get("keys").is_some() {
                KeySet::from_jwks_value(&v)?
            } else {
                KeySet::from_jwks_value(&serde_json::json!({ "keys": [v] }))?
            };
            if set.keys.is_empty() {
                return Err("no usable signature verification key in the JWKS".into());
            }
            return Ok(set);
        }
        let blocks = pem::parse_many(bytes).map_err(|e| format!("invalid PEM: {e}"))?;
        let mut set = KeySet::default();
        for block in blocks.iter().take(MAX_KEYS) {
            if block.tag().contains("PRIVATE") {
                return Err("a private key is not accepted here; give the public key".into());
            }
            let pem = pem::encode(block);
            let pem = pem.as_bytes();
            let key = DecodingKey::from_rsa_pem(pem)
                .or_else(|_| DecodingKey::from_ec_pem(pem))
                .or_else(|_| DecodingKey::from_ed_pem(pem))
                .map_err(|_| {
                    format!("PEM block `{}` is not an RSA, EC or Ed25519 public key", block.tag())
                })?;
            set.keys.push(VerifyKey { kid: None, family: key.family(), alg: None, key });
        }
        if set.keys.is_empty() {
            return Err("no PEM block found".into());
        }
        Ok(set)
    }

    /// The usable keys of a JWKS document and how many were skipped (encryption keys,
    /// symmetric keys, unsupported curves or algorithms).
    pub fn from_jwks_value(doc: &serde_json::Value) -> Result<(KeySet, usize), String> {
        let keys = doc.get("keys").and_then(|k| k.as_array()).ok_or("no `keys` array in the JWKS")?;
        let mut set = KeySet::default();
        let mut skipped = 0;
        for raw in keys {
            if set.keys.len() >= MAX_KEYS {
                skipped += 1;
                continue;
            }
            match serde_json::from_value::<Jwk>(raw.clone()).ok().and_then(|jwk| verify_key(&jwk)) {
                Some(k) => set.keys.push(k),
                None => skipped += 1,
            }
        }
        Ok((set, skipped))
    }

    /// Keys that may verify a token with `alg` and `kid`: those with that `kid`, or, when
    /// none has it, those without a `kid` (PEM files). A token without `kid` is tried
    /// against every key of its algorithm.
    pub fn candidates<'a>(&'a self, alg: Algorithm, kid: Option<&'a str>) -> Vec<&'a VerifyKey> {
        let fit = self.keys.iter().filter(move |k| k.accepts(alg));
        match kid {
            Some(kid) => {
                let exact: Vec<_> = fit.clone().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if exact.is_empty() { fit.filter(|k| k.kid.is_none()).collect() } else { exact }
            }
            None => fit.collect(),
        }
    }

    /// Whether a key has this exact `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// A JWK as a verification key, or None when it is not one we may use.
fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let declared: Option<Algorithm> = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::try_from(a).ok()?),
        None => None,
    };
    let (family, alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, declared),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Some(Algorithm::EdDSA)),
            _ => return None,
        },
        // Symmetric keys are never taken from a key document.
        _ => return None,
    };
    if declared.is_some_and(|d| Some(d) != alg || d.family() != family) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if key.family() != family {
        return None;
    }
    Some(VerifyKey { kid: jwk.common.key_id.clone(), family, alg, key })
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The TLS settings of JWKS fetches: the system's trust store (which `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` may point elsewhere) plus Mozilla's roots.
static TLS: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(native_roots = added, "JWKS client trust store loaded");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("TLS client setup: {e}"))
});

/// Fetch bookkeeping, under one lock.
struct FetchState {
    /// A fetch is running.
    in_flight: bool,
    /// A request asked for a fetch the task has not started yet.
    requested: bool,
    last_start: Option<Instant>,
    /// When the task will fetch next on its own.
    next_attempt: Option<Instant>,
}

/// What [`RemoteJwks::refresh`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refresh {
    /// A fetch ran (or the wait for it timed out); look at the keys again.
    Waited,
    /// A fetch ran less than `jwks_min_refresh` ago: none started.
    RateLimited,
}

struct JwksMetrics {
    ok: Counter,
    error: Counter,
    keys: Gauge,
    stale: Gauge,
}

/// A JWKS URL's key set, kept fresh by a background task (see the module doc).
pub(super) struct RemoteJwks {
    policy: Arc<str>,
    url: Uri,
    client: HttpsClient,
    timeout: Duration,
    min_refresh: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    keys: ArcSwapOption<KeySet>,
    /// The last generation given to a fetched set.
    generations: AtomicU64,
    state: Mutex<FetchState>,
    wake: Notify,
    /// Bumped after every fetch attempt, whatever its outcome.
    done: watch::Sender<u64>,
    metrics: JwksMetrics,
}

/// Stops the refresh task when the policy is dropped (reload with a changed policy).
pub(super) struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RemoteJwks {
    pub fn new(policy: Arc<str>, url: &str, cfg: &JwtAuth) -> Result<Arc<RemoteJwks>, String> {
        let tls = TLS.as_ref().map_err(Clone::clone)?.as_ref().clone();
        RemoteJwks::with_tls(policy, url, cfg, tls)
    }

    /// Like [`RemoteJwks::new`], trusting what `tls` trusts.
    fn with_tls(
        policy: Arc<str>,
        url: &str,
        cfg: &JwtAuth,
        tls: rustls::ClientConfig,
    ) -> Result<Arc<RemoteJwks>, String> {
        let uri: Uri = url.parse().map_err(|_| format!("jwks_url `{url}` is not a valid URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => return Err(format!("jwks_url `{url}` must be an http:// or https:// URL")),
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.jwks_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1)
            .build(https);
        let p = policy.to_string();
        let metrics = JwksMetrics {
            ok: metrics::counter!("sumun_auth_jwks_refresh_total", "policy" => p.clone(), "result" => "success"),
            error: metrics::counter!("sumun_auth_jwks_refresh_total", "policy" => p.clone(), "result" => "error"),
            keys: metrics::gauge!("sumun_auth_jwks_keys", "policy" => p.clone()),
            stale: metrics::gauge!("sumun_auth_jwks_stale", "policy" => p),
        };
        let min_ttl = cfg.jwks_min_ttl;
        Ok(Arc::new(RemoteJwks {
            policy,
            url: uri,
            client,
            timeout: cfg.jwks_timeout,
            min_refresh: cfg.jwks_min_refresh,
            min_ttl,
            max_ttl: cfg.jwks_max_ttl.max(min_ttl),
            keys: ArcSwapOption::empty(),
            generations: AtomicU64::new(0),
            state: Mutex::new(FetchState {
                in_flight: false,
                requested: false,
                last_start: None,
                next_attempt: None,
            }),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            metrics,
        }))
    }

    /// The last good key set; None until one was obtained.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// The generation of the current key set; 0 until one was obtained.
    pub fn generation(&self) -> u64 {
        self.keys.load().as_ref().map_or(0, |s| s.generation)
    }

    /// Starts the refresh task; None outside a tokio runtime (`sumun check`).
    pub fn spawn(self: &Arc<Self>) -> Option<TaskGuard> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let me = self.clone();
        Some(TaskGuard(handle.spawn(me.run()).abort_handle()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for a fetch now (unless one ran less than `jwks_min_refresh` ago) and waits for
    /// the running or requested one, at most `jwks_timeout`.
    pub async fn refresh(&self) -> Refresh {
        let mut done = self.done.subscribe();
        {
            let mut s = self.lock();
            if !s.in_flight && !s.requested {
                if s.last_start.is_some_and(|t| t.elapsed() < self.min_refresh) {
                    return Refresh::RateLimited;
                }
                s.requested = true;
                self.wake.notify_one();
            }
        }
        let _ = tokio::time::timeout(self.timeout, done.changed()).await;
        Refresh::Waited
    }

    /// How long a client should wait before retrying while no key set is known.
    pub fn retry_after(&self) -> Duration {
        let s = self.lock();
        let now = Instant::now();
        let by_rate =
            s.last_start.map_or(Duration::ZERO, |t| (t + self.min_refresh).saturating_duration_since(now));
        let by_schedule = s.next_attempt.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        by_rate.min(by_schedule).max(Duration::from_secs(1))
    }

    async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            {
                let mut s = self.lock();
                s.in_flight = true;
                s.requested = false;
                s.last_start = Some(Instant::now());
            }
            let delay = match tokio::time::timeout(self.timeout, self.fetch()).await {
                Ok(Ok((mut set, skipped, ttl))) => {
                    failures = 0;
                    // The same document again keeps its generation: cached verifications
                    // made with it stay good.
                    set.generation = match self.keys.load().as_deref() {
                        Some(current) if current.digest.is_some() && current.digest == set.digest => {
                            current.generation
                        }
                        _ => self.generations.fetch_add(1, Ordering::Relaxed) + 1,
                    };
                    self.metrics.ok.increment(1);
                    self.metrics.keys.set(set.keys.len() as f64);
                    self.metrics.stale.set(0.0);
                    tracing::info!(policy = %self.policy, url = %self.url, keys = set.keys.len(), skipped, ttl_s = ttl.as_secs(), "JWKS fetched");
                    self.keys.store(Some(Arc::new(set)));
                    // Refresh before the set expires.
                    (ttl - ttl / 10).max(Duration::from_millis(100))
                }
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    failures = failures.saturating_add(1);
                    self.metrics.error.increment(1);
                    let has_keys = self.keys.load().is_some();
                    self.metrics.stale.set(if has_keys { 1.0 } else { 0.0 });
                    tracing::warn!(policy = %self.policy, url = %self.url, error = %error, failures, keeping_previous_keys = has_keys, "JWKS fetch failed");
                    self.backoff(failures)
                }
            };
            let deadline = Instant::now() + delay;
            {
                let mut s = self.lock();
                s.in_flight = false;
                s.next_attempt = Some(deadline);
            }
            self.done.send_modify(|n| *n = n.wrapping_add(1));
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = self.wake.notified() => {
                        // A permit left over from a request already served is ignored.
                        if self.lock().requested {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// 1 s, 2 s, 4 s… capped at `jwks_min_refresh`, with ±10% jitter so several instances
    /// do not retry in step.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let base = exp.min(self.min_refresh).max(Duration::from_millis(50));
        base.mul_f64(0.9 + fastrand::f64() * 0.2)
    }

    /// One GET of the JWKS: the usable keys, how many were skipped, and the cache lifetime.
    async fn fetch(&self) -> Result<(KeySet, usize, Duration), String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
            .header(http::header::USER_AGENT, concat!("sumun/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let res =
            self.client.request(req).await.map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        if res.status() != http::StatusCode::OK {
            return Err(format!("status {}", res.status().as_u16()));
        }
        let max_age = max_age(res.headers());
        let body = Limited::new(res.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("invalid JSON: {e}"))?;
        let (mut set, skipped) = KeySet::from_jwks_value(&doc)?;
        set.digest = Some(sha256(&body));
        if set.keys.is_empty() {
            // An empty set would lock every client out: keep the previous one.
            return Err(format!("no usable signature verification key ({skipped} skipped)"));
        }
        let ttl = max_age.unwrap_or(self.min_ttl).clamp(self.min_ttl, self.max_ttl);
        Ok((set, skipped, ttl))
    }
}

/// `Cache-Control: max-age` (`no-store`/`no-cache` count as 0).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut found = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if let Some((k, n)) = d.split_once('=')
                && k.trim().eq_ignore_ascii_case("max-age")
                && let Ok(n) = n.trim().trim_matches('"').parse::<u64>()
            {
                found = Some(Duration::from_secs(n));
            }
        }
    }
    found
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn max_age_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("public, max-age=300"));
        assert_eq!(max_age(&h), Some(Duration::from_secs(300)));
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("max-age=300, no-cache"));
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("max-age=abc"));
        assert_eq!(max_age(&h), None);
    }

    /// A JWKS served over HTTPS by a server whose certificate a test CA signed.
    #[tokio::test]
    async fn fetches_over_https() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks.json", listener.local_addr().unwrap());
        let doc = serde_json::json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }] })
        .to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, doc) = (acceptor.clone(), doc.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |_req| {
                        let doc = doc.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                Bytes::from(doc),
                            )))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let cfg = JwtAuth {
            jwks_url: Some(url.clone()),
            key_files: Vec::new(),
            secret: None,
            algorithms: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::ZERO,
            sources: Vec::new(),
            scope_claim: "scope".into(),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_min_ttl: Duration::from_secs(60),
            jwks_max_ttl: Duration::from_secs(3600),
            jwks_timeout: Duration::from_secs(5),
        };
        let remote = RemoteJwks::with_tls(Arc::from("t"), &url, &cfg, client).unwrap();
        let (set, skipped, ttl) = remote.fetch().await.unwrap();
        assert_eq!((set.keys.len(), skipped, ttl), (1, 0, Duration::from_secs(60)));
        assert_eq!(set.keys[0].kid.as_deref(), Some("k1"));

        // The process trust store does not know the test CA: the same server is refused.
        let untrusted = RemoteJwks::new(Arc::from("t"), &url, &cfg).unwrap();
        let err = untrusted.fetch().await.err().unwrap();
        assert!(err.contains("certificate") || err.contains("Certificate"), "{err}");
    }
}
