//! The admin listener: liveness (`/healthz`), readiness (`/readyz`, true once every listener
//! is bound), Prometheus metrics (`/metrics`), the read-only state of upstream pools
//! (`GET /v1/upstreams`), the identity passport's public keys
//! (`GET /v1/passport/jwks.json`), and the HTTP cache (`GET /v1/cache`,
//! `POST /v1/cache/purge`), and the topics API (`/v1/topics…`, `/v1/subscriptions…`: publish,
//! lag, pull delivery, the DLQ). It serves operators, never client traffic, and binds to
//! loopback by default.

#![forbid(unsafe_code)]

mod bus;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// A JSON view produced on demand (the gateway's live state, read when asked).
pub type Snapshot = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A document produced on demand (the running passport's JWKS, read when asked so a reload
/// is seen at once); None = not available.
pub type Document = Arc<dyn Fn() -> Option<axum::body::Bytes> + Send + Sync>;

/// Purges the HTTP cache: (`url` | `prefix` | `tag`, value) → stored URLs removed; None when
/// no route caches.
pub type CachePurge = Arc<dyn Fn(&str, &str) -> Option<u64> + Send + Sync>;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub ready: Arc<AtomicBool>,
    pub prometheus: PrometheusHandle,
    /// `GET /v1/upstreams`.
    pub upstreams: Snapshot,
    /// `GET /v1/passport/jwks.json`.
    pub passport_jwks: Document,
    /// `GET /v1/cache`.
    pub cache: Snapshot,
    /// `POST /v1/cache/purge`.
    pub cache_purge: CachePurge,
    /// Topics, subscriptions, pull delivery and the DLQ (`/v1/topics…`, `/v1/subscriptions…`);
    /// None when the process runs no bus.
    pub bus: Option<Arc<sumun_bus::Bus>>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/upstreams", get(upstreams))
        .route("/v1/passport/jwks.json", get(passport_jwks))
        .route("/v1/cache", get(cache))
        .route("/v1/cache/purge", axum::routing::post(cache_purge))
        .merge(bus::routes())
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn upstreams(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json((s.upstreams)())
}

async fn passport_jwks(State(s): State<AdminState>) -> axum::response::Response {
    match (s.passport_jwks)() {
        Some(doc) => (
            [
                (header::CONTENT_TYPE, "application/jwk-set+json"),
                (header::CACHE_CONTROL, "public, max-age=60"),
            ],
            doc,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no passport\n").into_response(),
    }
}

async fn cache(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json((s.cache)())
}

/// `{"url": "https://host/path?q"}`, `{"prefix": "/static/"}` or `{"tag": "product-42"}`:
/// exactly one. Removal is immediate for later requests.
async fn cache_purge(State(s): State<AdminState>, body: axum::body::Bytes) -> axum::response::Response {
    let bad = |detail: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": detail }))).into_response()
    };
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return bad("expected a JSON object with one of url, prefix, tag");
    };
    let mut given = doc.iter().filter(|(k, _)| matches!(k.as_str(), "url" | "prefix" | "tag"));
    let (Some((kind, value)), None) = (given.next(), given.next()) else {
        return bad("give exactly one of url, prefix, tag");
    };
    if doc.len() != 1 {
        return bad("unknown field; give exactly one of url, prefix, tag");
    }
    let Some(value) = value.as_str().filter(|v| !v.is_empty()) else {
        return bad("the value must be a non-empty string");
    };
    match (s.cache_purge)(kind, value) {
        Some(n) => axum::Json(serde_json::json!({ "purged": n })).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": "no route caches" })))
            .into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.prometheus.render())
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Same on a unix socket.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
