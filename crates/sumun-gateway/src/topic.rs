//! The topic target (`to = { topic = "orders" }`): the request becomes a durable message
//! and the client gets `202 Accepted` with `{id, topic, partition, offset}` and the
//! `Location` of its status resource on the admin API. A repeated `Idempotency-Key` (or
//! client `ce-id`) within the topic's dedup window answers with the original message and
//! `Idempotency-Replayed: true`. Failures are problem+json: 413 (too large), 400 (a bad
//! CloudEvents attribute), 503 (busy, with `Retry-After`), 507 (disk full, with
//! `Retry-After`).
//!
//! The subscription target (`to = { subscription = "audit" }`, a pull subscription) serves
//! the pull API under the route, behind the route's protection layers: `GET …/messages`,
//! `POST …/ack`, `…/nack`, `…/extend`, as on the admin listener (`sumun_bus::pull_api`).

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use sumun_bus::pull_api;
use sumun_bus::subscription::SubscriptionError;
use sumun_bus::{Bus, PublishError, PublishRequest};
use sumun_http::problem::problem_response;
use sumun_http::{Body, ErrorKind, ProxyError};

use crate::exchange::Exchange;

/// Publishes the request body and head to `topic`.
pub(crate) async fn publish(
    bus: Option<&Bus>,
    topic: &str,
    parts: http::request::Parts,
    body: Body,
    source: &str,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let Some(bus) = bus else {
        return Err(ProxyError::new(ErrorKind::NoHealthyEndpoint, "topics are not available"));
    };
    let Some(t) = bus.topic(topic) else {
        return Ok(refusal(PublishError::UnknownTopic, ex));
    };
    let max = t.settings().max_message_bytes;
    let body = match collect(body, max).await {
        Ok(b) => b,
        Err(Collect::TooLarge) => return Ok(refusal(PublishError::TooLarge { max }, ex)),
        Err(Collect::Broken) => {
            return Err(ProxyError::new(ErrorKind::DownstreamBody, "the request body could not be read"));
        }
        Err(Collect::Limit) => {
            return Err(ProxyError::new(ErrorKind::BodyTooLarge, "the request body is larger than allowed"));
        }
    };
    let req = PublishRequest { headers: &parts.headers, body, default_source: source };
    match bus.publish(topic, req).await {
        Ok(p) => {
            let mut res = Response::new(Body::full(p.to_json().to_string()));
            *res.status_mut() = StatusCode::ACCEPTED;
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(v) = HeaderValue::from_str(&p.location()) {
                h.insert(header::LOCATION, v);
            }
            if p.replayed {
                h.insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            Ok(res)
        }
        Err(e) => Ok(refusal(e, ex)),
    }
}

enum Collect {
    /// Over the topic's `max_message_bytes`.
    TooLarge,
    /// Over the listener's or route's body limit.
    Limit,
    Broken,
}

/// Reads the whole body (a message is stored whole), refusing more than `max` bytes.
async fn collect(mut body: Body, max: u64) -> Result<Bytes, Collect> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if sumun_http::body::is_body_too_large(e.as_ref()) { Collect::Limit } else { Collect::Broken }
        })?;
        if let Some(d) = frame.data_ref() {
            if (buf.len() + d.len()) as u64 > max {
                return Err(Collect::TooLarge);
            }
            buf.extend_from_slice(d);
        }
    }
    Ok(buf.freeze())
}

fn refusal(e: PublishError, ex: &mut Exchange) -> Response<Body> {
    ex.error.get_or_insert(match e {
        PublishError::UnknownTopic => "unknown_topic",
        PublishError::TooLarge { .. } => "message_too_large",
        PublishError::Invalid(_) => "invalid_message",
        PublishError::Busy => "topic_busy",
        PublishError::DiskFull => "disk_full",
        PublishError::Unavailable => "topic_unavailable",
    });
    let mut res = problem_response(e.status(), &e.to_string(), Some(&ex.request_id));
    if let Some(after) = e.retry_after() {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    res
}

/// Serves the pull API of subscription `name` for a request whose (normalized) path ends in
/// `/messages` (GET), `/ack`, `/nack` or `/extend` (POST).
pub(crate) async fn pull(
    bus: Option<&Bus>,
    name: &str,
    parts: http::request::Parts,
    body: Body,
    path: &str,
) -> Result<Response<Body>, ProxyError> {
    let Some(sub) = bus.and_then(|b| b.subscription(name)) else {
        return Err(ProxyError::new(ErrorKind::NoHealthyEndpoint, "the subscription is not running"));
    };
    let call = path.rsplit('/').next().unwrap_or("");
    let answer = match (&parts.method, call) {
        (&http::Method::GET, "messages") => match pull_api::pull_params(parts.uri.query()) {
            Ok((max, wait)) => sub.pull(max, wait).await.map(|m| pull_api::pulled_json(&m)),
            Err(e) => return Ok(json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e }))),
        },
        (&http::Method::POST, "ack" | "nack" | "extend") => {
            let bytes = match collect(body, pull_api::MAX_COMMAND_BYTES as u64).await {
                Ok(b) => b,
                Err(Collect::Broken) => {
                    return Err(ProxyError::new(
                        ErrorKind::DownstreamBody,
                        "the request body could not be read",
                    ));
                }
                Err(_) => {
                    return Err(ProxyError::new(
                        ErrorKind::BodyTooLarge,
                        "the request body is larger than allowed",
                    ));
                }
            };
            match pull_api::settle_command(call, &bytes) {
                Ok((ids, action)) => {
                    sub.settle(&ids, action).await.map(|held| pull_api::settle_json(&ids, &held))
                }
                Err(e) => return Ok(json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e }))),
            }
        }
        (_, "messages" | "ack" | "nack" | "extend") => {
            let mut res = json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "GET …/messages; POST …/ack, …/nack, …/extend" }),
            );
            let allow = if call == "messages" { "GET" } else { "POST" };
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return Ok(res);
        }
        _ => return Err(ProxyError::new(ErrorKind::NoRoute, "no such pull call")),
    };
    match answer {
        Ok(v) => Ok(json(StatusCode::OK, v)),
        Err(SubscriptionError::NotPull) => {
            Ok(json(StatusCode::CONFLICT, serde_json::json!({ "error": "not a pull subscription" })))
        }
        Err(e) => {
            let mut res =
                json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": e.to_string() }));
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(res)
        }
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Body::full(v.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
