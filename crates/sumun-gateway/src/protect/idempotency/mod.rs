//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header) for a route's unsafe methods.
//!
//! The first request with a key runs, and its response (status, end-to-end headers, body up to
//! `max_body`, trailers) becomes the key's record for `ttl`. A repeat with the same key and
//! the same request fingerprint gets the record back with `idempotency-replayed: true`; the
//! same key with another request is refused with 422; a repeat while the first still runs is
//! refused with 409 and `Retry-After: 1`.
//!
//! Keys are scoped by route and authenticated subject, so two users' keys never meet. The
//! fingerprint is SHA-256 over the method, path and query, content type and body, so the
//! request body is buffered (bounded by the route's body limit) before it goes on.
//!
//! A key is claimed with an in-flight marker (an atomic insert-if-absent in the store) that
//! only its claim can complete or release. Anything that ends without a storable response —
//! an error before the target answered, a 5xx, a body over `max_body`, a body that failed —
//! releases the marker, and the marker has its own expiry (`IN_FLIGHT_LIFETIME`) in case the
//! process dies holding it in a shared store. While the request runs, a task started with the
//! claim renews the marker every third of that lifetime, so a response that streams for longer
//! keeps its key; only a dead process's marker ever expires. A 5xx is not stored: the draft leaves it to the
//! server, and a retry of a failed request should get another chance. A client that goes
//! away mid-response does not release the key: the upstream did the work, so the rest of the
//! body is read without the client (bounded in size and time) and the record is written.
//!
//! What a replay carries: every end-to-end header of the original, `Set-Cookie` and `Date`
//! included — a client that lost the first answer must get the same answer (the session it
//! created, the time it was made), and the subject scoping keeps it with the same client.
//! Hop-by-hop fields (already removed by the proxy) and `x-request-id` (the replay gets the
//! id of its own exchange) are not kept.
//!
//! With `store = "redis"`, Redis being unavailable refuses keyed requests with 503 and
//! `Retry-After` rather than running them unprotected: the route's owner asked that these
//! requests never run twice, and a client that sent a key is prepared to retry.
//!
//! `sumun_idempotency_total{route,result}`: `stored`, `replayed`, `conflict` (409),
//! `mismatch` (422), `skipped` (a covered method without a key, or a response not kept: 5xx,
//! over `max_body`, failed, or its marker lost to expiry or eviction).

mod body;
mod memory;
mod record;
mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use sumun_config::IdempotencyStore;
use sumun_http::Body;
use sumun_http::body::is_body_too_large;

use self::body::{Capture, Recording, Write};
use self::memory::{Claimed, Key, MemoryStore};
use self::record::{Fingerprint, Record, Slot};
use self::redis_store::RedisStore;
use super::Rejection;
use super::auth::Identity;
use super::redis::Redis;

/// How long an in-flight marker outlives a crashed owner. The owner itself always completes
/// or releases its marker, and renews it while the request runs; this only bounds how long a
/// dead process blocks a key.
const IN_FLIGHT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest pause between two pieces of a request body being buffered.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The request body is buffered to fingerprint it: never more than this, whatever the
/// route's body limit.
const MAX_REQUEST_BUFFER: usize = 64 << 20;
const MAX_KEY_LEN: usize = 255;

pub static IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

pub struct Idempotency {
    shared: Arc<Shared>,
    header: HeaderName,
    methods: Vec<Method>,
}

/// What to do with a request.
pub enum Begin {
    /// Not subject to idempotency (method not covered, no key): go on with the body.
    Skip(Body),
    /// First time for this key: run it, then hand the response to `Pending::finish`.
    Proceed(Body, Pending),
    /// A completed earlier request with the same key and fingerprint: its response.
    Replay(Response<Body>),
}

/// A claimed key, waiting for the response.
pub struct Pending {
    claim: Claim,
}

struct Shared {
    route: Arc<str>,
    store: Store,
    /// `IN_FLIGHT_LIFETIME` (shorter in tests).
    in_flight: Duration,
    ttl: Duration,
    max_body: usize,
    metrics: Metrics,
}

enum Store {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
    /// `store = "redis"` without a `[redis]` section (refused by validation): every keyed
    /// request is refused rather than run unprotected.
    Missing,
}

struct Metrics {
    stored: metrics::Counter,
    replayed: metrics::Counter,
    conflict: metrics::Counter,
    mismatch: metrics::Counter,
    skipped: metrics::Counter,
}

impl Metrics {
    fn new(route: &str) -> Self {
        let c = |result: &'static str| metrics::counter!("sumun_idempotency_total", "route" => route.to_owned(), "result" => result);
        Metrics {
            stored: c("stored"),
            replayed: c("replayed"),
            conflict: c("conflict"),
            mismatch: c("mismatch"),
            skipped: c("skipped"),
        }
    }
}

impl Idempotency {
    pub fn new(cfg: &sumun_config::Idempotency, route: &str, redis: Option<Redis>) -> Self {
        let store = match (cfg.store, redis) {
            (IdempotencyStore::Memory, _) => Store::Memory(MemoryStore::shared(route, cfg.max_keys)),
            (IdempotencyStore::Redis, Some(r)) => Store::Redis(RedisStore::new(r)),
            (IdempotencyStore::Redis, None) => {
                tracing::error!(route, "idempotency store is redis but no [redis] is configured");
                Store::Missing
            }
        };
        // An invalid header name is refused by validation; the draft's name stands in.
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("idempotency-key"));
        let methods = cfg.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect();
        Idempotency {
            shared: Arc::new(Shared {
                route: route.into(),
                store,
                in_flight: IN_FLIGHT_LIFETIME,
                ttl: cfg.ttl,
                max_body: usize::try_from(cfg.max_body).unwrap_or(usize::MAX),
                metrics: Metrics::new(route),
            }),
            header,
            methods,
        }
    }

    /// A shorter in-flight lifetime, for tests of its renewal.
    #[cfg(test)]
    fn with_in_flight_lifetime(mut self, d: Duration) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.in_flight = d;
        }
        self
    }

    pub async fn begin(
        &self,
        parts: &Parts,
        body: Body,
        identity: Option<&Identity>,
    ) -> Result<Begin, Rejection> {
        if !self.methods.contains(&parts.method) {
            return Ok(Begin::Skip(body));
        }
        let mut values = parts.headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            self.shared.metrics.skipped.increment(1);
            return Ok(Begin::Skip(body));
        };
        if values.next().is_some() {
            return Err(bad_key("the request has more than one idempotency key"));
        }
        if !valid_key(value.as_bytes()) {
            return Err(bad_key("an idempotency key is 1 to 255 visible ASCII characters"));
        }
        let bytes = read_body(body).await?;
        let fingerprint = fingerprint(parts, &bytes);
        let key = scope_key(&self.shared.route, identity, value.as_bytes());
        let token = Bytes::copy_from_slice(crate::request_id::generate().as_bytes());
        let claimed = match &self.shared.store {
            Store::Memory(m) => Ok(m.claim(key, &token, fingerprint, self.shared.in_flight)),
            Store::Redis(r) => r.claim(&key, &token, fingerprint, self.shared.in_flight).await,
            Store::Missing => Err(()),
        };
        let m = &self.shared.metrics;
        match claimed {
            Ok(Claimed::Won) => {
                let (renewing, claim_ended) = tokio::sync::oneshot::channel();
                tokio::spawn(renew_while_claimed(
                    self.shared.clone(),
                    key,
                    token.clone(),
                    fingerprint,
                    claim_ended,
                ));
                let claim = Claim {
                    shared: self.shared.clone(),
                    key,
                    token,
                    fingerprint,
                    done: false,
                    _renewing: renewing,
                };
                Ok(Begin::Proceed(Body::full(bytes), Pending { claim }))
            }
            Ok(Claimed::Taken(slot)) if *slot.fingerprint() != fingerprint => {
                m.mismatch.increment(1);
                Err(Rejection::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this idempotency key was used for a different request",
                ))
            }
            Ok(Claimed::Taken(Slot::InFlight { .. })) => {
                m.conflict.increment(1);
                Err(Rejection::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_flight",
                    "a request with this idempotency key is still being processed",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")))
            }
            Ok(Claimed::Taken(Slot::Done(record))) => {
                m.replayed.increment(1);
                let mut res = Response::new(body::replay_body(&record));
                *res.status_mut() = record.status;
                *res.headers_mut() = record.headers.clone();
                res.headers_mut().insert(IDEMPOTENCY_REPLAYED.clone(), HeaderValue::from_static("true"));
                Ok(Begin::Replay(res))
            }
            Err(()) => Err(Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "idempotency_unavailable",
                "idempotency records are unavailable; retry later",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))),
        }
    }
}

impl Pending {
    /// Records the response as it streams to the client; dropping `Pending` without calling
    /// this releases the key.
    pub fn finish(self, res: Response<Body>) -> Response<Body> {
        let status = res.status();
        if status.is_server_error() || status.is_informational() {
            self.claim.shared.metrics.skipped.increment(1);
            return res; // dropping the claim releases the key
        }
        let (parts, body) = res.into_parts();
        let mut headers = parts.headers.clone();
        headers.remove(&crate::proxy::X_REQUEST_ID);
        sumun_http::hop::strip_hop_by_hop_response(&mut headers);
        let hint = body.size_hint().lower();
        let capacity = usize::try_from(hint).unwrap_or(usize::MAX).min(self.claim.shared.max_body);
        let capture = Capture {
            claim: self.claim,
            status,
            headers,
            buf: BytesMut::with_capacity(capacity),
            trailers: None,
        };
        Response::from_parts(parts, Body::boxed(Recording::new(body, capture)))
    }
}

/// A claimed key. Dropped without `complete`, it releases the key.
struct Claim {
    shared: Arc<Shared>,
    key: Key,
    token: Bytes,
    fingerprint: Fingerprint,
    done: bool,
    /// Dropped with the claim: stops its renewal task.
    _renewing: tokio::sync::oneshot::Sender<()>,
}

/// Renews a claim's marker every third of its lifetime until the claim ends (its sender is
/// dropped) or the marker is no longer ours.
async fn renew_while_claimed(
    shared: Arc<Shared>,
    key: Key,
    token: Bytes,
    fingerprint: Fingerprint,
    mut claim_ended: tokio::sync::oneshot::Receiver<()>,
) {
    let every = shared.in_flight / 3;
    loop {
        tokio::select! {
            _ = &mut claim_ended => return,
            () = tokio::time::sleep(every) => {}
        }
        let ours = match &shared.store {
            Store::Memory(m) => Some(m.renew(key, &token)),
            // None: Redis did not answer; the next round tries again.
            Store::Redis(r) => r.renew(&key, &token, fingerprint, shared.in_flight).await,
            Store::Missing => return,
        };
        if ours == Some(false) {
            return;
        }
    }
}

impl Claim {
    /// Turns the marker into the record; a shared store's write is returned to be awaited.
    fn complete(mut self, record: Record) -> Option<Write> {
        self.done = true;
        let record = Arc::new(record);
        let shared = self.shared.clone();
        match &self.shared.store {
            Store::Memory(m) => {
                // Not ours any more: the marker expired or was evicted meanwhile.
                let m = if m.complete(self.key, &self.token, record, self.shared.ttl) {
                    &self.shared.metrics.stored
                } else {
                    &self.shared.metrics.skipped
                };
                m.increment(1);
                None
            }
            Store::Redis(r) => {
                let (r, key, token) = (r.clone(), self.key, self.token.clone());
                Some(Box::pin(async move {
                    let m = if r.complete(&key, &token, &record, shared.ttl).await {
                        &shared.metrics.stored
                    } else {
                        &shared.metrics.skipped
                    };
                    m.increment(1);
                }))
            }
            Store::Missing => None,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &self.shared.store {
            Store::Memory(m) => m.release(self.key, &self.token),
            Store::Redis(r) => {
                let (r, key, token, fp) = (r.clone(), self.key, self.token.clone(), self.fingerprint);
                body::spawn(Box::pin(async move { r.release(&key, &token, fp).await }));
            }
            Store::Missing => {}
        }
    }
}

fn bad_key(detail: &'static str) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", detail)
}

/// 1 to 255 visible ASCII characters (a structured-field string's quotes included as sent).
fn valid_key(key: &[u8]) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// Buffers the request body (it must be read whole to be fingerprinted).
async fn read_body(mut body: Body) -> Result<Bytes, Rejection> {
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body was not received in time",
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) if is_body_too_large(&*e) => return Err(too_large()),
            Ok(Some(Err(_))) => {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "body_error",
                    "the request body could not be read",
                ));
            }
        };
        // Request trailers are not forwarded by a buffered request.
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_REQUEST_BUFFER {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
}

fn too_large() -> Rejection {
    Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is larger than allowed")
}

/// Each field is length-prefixed so no two different requests hash the same bytes.
fn fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(parts.method.as_str().as_bytes());
    field(parts.uri.path_and_query().map_or(parts.uri.path(), |pq| pq.as_str()).as_bytes());
    let types = parts.headers.get_all(header::CONTENT_TYPE);
    field(&(types.iter().count() as u64).to_be_bytes());
    for ct in &types {
        field(ct.as_bytes());
    }
    field(body);
    h.finalize().into()
}

/// The store key: route, the authenticating policy and subject (none for anonymous
/// requests), and the client's key, length-prefixed and hashed.
fn scope_key(route: &str, identity: Option<&Identity>, key: &[u8]) -> Key {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(route.as_bytes());
    match identity {
        Some(id) => {
            field(b"subject");
            field(id.policy.as_bytes());
            field(id.subject.as_bytes());
        }
        None => field(b"anonymous"),
    }
    field(key);
    h.finalize().into()
}

#[cfg(test)]
mod tests;
