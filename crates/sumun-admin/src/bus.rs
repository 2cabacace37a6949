//! The topics API on the admin listener: topics and their messages, subscriptions with their
//! lag and counters, pull delivery (long-poll, ack, nack, extend) and the dead-letter queue
//! (list, show, redrive). Every answer is JSON; errors are `{"error": "…"}` with a status.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use sumun_bus::pull_api::{self, param, query};
use sumun_bus::subscription::{SubscriptionError, SubscriptionRuntime};
use sumun_bus::{Bus, DeadFilter, PublishRequest};

use crate::AdminState;

/// Most dead letters one list returns.
const MAX_LIST: usize = 1000;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/topics", get(topics))
        .route("/v1/topics/{topic}", get(topic))
        .route("/v1/topics/{topic}/messages", post(publish))
        .route("/v1/topics/{topic}/partitions/{partition}/messages/{offset}", get(message))
        .route("/v1/subscriptions", get(subscriptions))
        .route("/v1/subscriptions/{name}", get(subscription))
        .route("/v1/subscriptions/{name}/messages", get(pull))
        .route("/v1/subscriptions/{name}/ack", post(ack))
        .route("/v1/subscriptions/{name}/nack", post(nack))
        .route("/v1/subscriptions/{name}/extend", post(extend))
        .route("/v1/subscriptions/{name}/dlq", get(dlq_list))
        .route("/v1/subscriptions/{name}/dlq/redrive", post(dlq_redrive))
        .route("/v1/subscriptions/{name}/dlq/{id}", get(dlq_show))
}

/// An error answer: `{"error": "…"}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

type Answer = Result<Response, ApiError>;

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

fn bus(s: &AdminState) -> Result<&Bus, ApiError> {
    s.bus.as_deref().ok_or_else(|| error(StatusCode::NOT_FOUND, "no topics are configured"))
}

async fn topics(State(s): State<AdminState>) -> Answer {
    Ok(axum::Json(bus(&s)?.topics_snapshot()).into_response())
}

async fn topic(State(s): State<AdminState>, Path(name): Path<String>) -> Answer {
    let t =
        bus(&s)?.topic(&name).ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no topic `{name}`")))?;
    Ok(axum::Json(t.snapshot()).into_response())
}

/// `POST /v1/topics/{topic}/messages`: like a route with `to = { topic }`.
async fn publish(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let b = bus(&s)?;
    let t = b.topic(&name).ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no topic `{name}`")))?;
    let max = t.settings().max_message_bytes;
    let body = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, format!("the message is larger than {max} bytes")))?
        .to_bytes();
    let source = format!("/v1/topics/{name}");
    match b.publish(&name, PublishRequest { headers: &headers, body, default_source: &source }).await {
        Ok(p) => {
            let mut res = (StatusCode::ACCEPTED, axum::Json(p.to_json())).into_response();
            if let Ok(v) = HeaderValue::from_str(&p.location()) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            if p.replayed {
                res.headers_mut().insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            Ok(res)
        }
        Err(e) => {
            let mut res = error(e.status(), e.to_string()).into_response();
            if let Some(after) = e.retry_after() {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
            }
            Ok(res)
        }
    }
}

async fn message(
    State(s): State<AdminState>,
    Path((name, partition, offset)): Path<(String, u32, u64)>,
) -> Answer {
    let v = bus(&s)?
        .message_status(&name, partition, offset)
        .await
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such message (or retention deleted it)"))?;
    Ok(axum::Json(v).into_response())
}

async fn subscriptions(State(s): State<AdminState>) -> Answer {
    Ok(axum::Json(bus(&s)?.subscriptions_snapshot().await).into_response())
}

fn sub(s: &AdminState, name: &str) -> Result<Arc<SubscriptionRuntime>, ApiError> {
    bus(s)?
        .subscription(name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no subscription `{name}`")))
}

async fn subscription(State(s): State<AdminState>, Path(name): Path<String>) -> Answer {
    Ok(axum::Json(sub(&s, &name)?.snapshot().await).into_response())
}

fn sub_error(e: SubscriptionError) -> ApiError {
    match e {
        SubscriptionError::NotPull => {
            error(StatusCode::CONFLICT, "this subscription is delivered by push; it cannot be pulled")
        }
        e => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /v1/subscriptions/{name}/messages?max=N&wait=30s`.
async fn pull(State(s): State<AdminState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> Answer {
    let rt = sub(&s, &name)?;
    let (max, wait) = pull_api::pull_params(raw.as_deref()).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let msgs = rt.pull(max, wait).await.map_err(sub_error)?;
    Ok(axum::Json(pull_api::pulled_json(&msgs)).into_response())
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    Ok(http_body_util::Limited::new(body, pull_api::MAX_COMMAND_BYTES)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"))?
        .to_bytes())
}

async fn read_json<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, ApiError> {
    let bytes = http_body_util::Limited::new(body, pull_api::MAX_COMMAND_BYTES)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

async fn settle(s: AdminState, name: String, body: Body, kind: &str) -> Answer {
    let rt = sub(&s, &name)?;
    let bytes = read_body(body).await?;
    let (ids, action) =
        pull_api::settle_command(kind, &bytes).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let held = rt.settle(&ids, action).await.map_err(sub_error)?;
    Ok(axum::Json(pull_api::settle_json(&ids, &held)).into_response())
}

async fn ack(State(s): State<AdminState>, Path(name): Path<String>, body: Body) -> Answer {
    settle(s, name, body, "ack").await
}

async fn nack(State(s): State<AdminState>, Path(name): Path<String>, body: Body) -> Answer {
    settle(s, name, body, "nack").await
}

async fn extend(State(s): State<AdminState>, Path(name): Path<String>, body: Body) -> Answer {
    settle(s, name, body, "extend").await
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn dead_json(d: &sumun_bus::meta::DeadEntry) -> Value {
    let last = d.attempts.last();
    json!({
        "id": d.id,
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "dead_letter": { "topic": d.dead_letter_topic, "partition": d.dead_letter_partition, "offset": d.dead_letter_offset },
        "dead_at": rfc3339(d.dead_at_ms),
        "published_at": rfc3339(d.published_ms),
        "attempts": d.attempts.len(),
        "last_status": last.and_then(|a| a.status),
        "last_error": last.and_then(|a| a.error.clone()),
    })
}

/// `GET /v1/subscriptions/{name}/dlq?limit=100&after=ID`.
async fn dlq_list(State(s): State<AdminState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> Answer {
    sub(&s, &name)?;
    let q = query(raw.as_deref());
    let limit = match param(&q, "limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => n,
        Some(_) => {
            return Err(error(StatusCode::BAD_REQUEST, format!("`limit` must be between 1 and {MAX_LIST}")));
        }
    };
    let after = param(&q, "after").map(str::to_owned);
    let list = bus(&s)?
        .dead_list(&name, after, limit)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let next = (list.len() == limit).then(|| list.last().map(|d| d.id.clone())).flatten();
    let items: Vec<Value> = list.iter().map(dead_json).collect();
    Ok(axum::Json(json!({ "dead_letters": items, "next_after": next })).into_response())
}

/// `GET /v1/subscriptions/{name}/dlq/{id}`: the dead letter with its attempt history and
/// the original message.
async fn dlq_show(State(s): State<AdminState>, Path((name, id)): Path<(String, String)>) -> Answer {
    let rt = sub(&s, &name)?;
    let d = bus(&s)?
        .dead_get(&name, &id)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no dead letter `{id}`")))?;
    let mut v = dead_json(&d);
    let history: Vec<Value> = d
        .attempts
        .iter()
        .map(|a| json!({ "at": rfc3339(a.at_ms), "status": a.status, "latency_ms": a.latency_ms, "error": a.error }))
        .collect();
    v["history"] = json!(history);
    v["event"] = match rt.dead_message(&d).await {
        Ok(r) => sumun_bus::envelope::to_json(&r),
        Err(reason) => json!({ "unavailable": reason }),
    };
    Ok(axum::Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Redrive {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<RedriveFilter>,
    #[serde(default)]
    all: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RedriveFilter {
    status: Option<u16>,
    error_contains: Option<String>,
    /// RFC 3339 times.
    since: Option<String>,
    until: Option<String>,
}

fn rfc3339_ms(text: &str) -> Result<u64, ApiError> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|_| error(StatusCode::BAD_REQUEST, format!("`{text}` is not an RFC 3339 time")))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// `POST /v1/subscriptions/{name}/dlq/redrive` with `{"ids": [...]}`, `{"filter": {...}}`
/// or `{"all": true}`.
async fn dlq_redrive(State(s): State<AdminState>, Path(name): Path<String>, body: Body) -> Answer {
    let b = bus(&s)?;
    let cmd: Redrive = read_json(body).await?;
    let chosen = [cmd.ids.is_some(), cmd.filter.is_some(), cmd.all].iter().filter(|x| **x).count();
    if chosen != 1 {
        return Err(error(StatusCode::BAD_REQUEST, "give exactly one of `ids`, `filter` or `all: true`"));
    }
    let filter = match cmd.filter {
        Some(f) => Some(DeadFilter {
            status: f.status,
            error_contains: f.error_contains,
            since_ms: f.since.as_deref().map(rfc3339_ms).transpose()?,
            until_ms: f.until.as_deref().map(rfc3339_ms).transpose()?,
        }),
        None => None,
    };
    match b.redrive(&name, cmd.ids, filter).await {
        Ok(n) => Ok(axum::Json(json!({ "redriven": n })).into_response()),
        Err(sumun_bus::BusError::Subscription(_, why)) => {
            Err(error(StatusCode::NOT_FOUND, format!("subscription `{name}`: {why}")))
        }
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}
