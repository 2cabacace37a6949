//! RFC 9457 problem details: every error sumun itself produces is `application/problem+json`
//! with a title, a safe detail and the request id — never internals.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

pub static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Builds a problem+json response. `detail` must be safe to show to anyone.
pub fn problem_response(
    status: StatusCode,
    detail: &str,
    request_id: Option<&HeaderValue>,
) -> Response<Body> {
    let mut doc = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        doc["request_id"] = serde_json::Value::from(id);
    }
    let body = serde_json::to_vec(&doc).unwrap_or_default();
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, PROBLEM_JSON.clone());
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn renders_problem() {
        let id = HeaderValue::from_static("abc");
        let res = problem_response(StatusCode::LOOP_DETECTED, "loop", Some(&id));
        assert_eq!(res.status(), 508);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
        let body = futures_lite_block(res.into_body());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 508);
        assert_eq!(v["title"], "Loop Detected");
        assert_eq!(v["request_id"], "abc");
    }

    fn futures_lite_block(body: Body) -> bytes::Bytes {
        // A Full body is ready on first poll; no runtime is needed.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(body.collect());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(c)) => c.to_bytes(),
            _ => panic!("body not ready"),
        }
    }
}
