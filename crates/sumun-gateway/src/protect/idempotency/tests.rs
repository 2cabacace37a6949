use std::time::Instant;

use http::{HeaderMap, Request};
use http_body::Frame;
use sumun_http::body::{BodyError, BodyTooLarge};

use super::*;

fn cfg(ttl: Duration, max_body: u64) -> sumun_config::Idempotency {
    sumun_config::Idempotency {
        header: "idempotency-key".into(),
        ttl,
        store: IdempotencyStore::Memory,
        max_body,
        methods: vec!["POST".into(), "PATCH".into()],
        max_keys: 1000,
    }
}

/// Each test has its own route name: memory stores are shared by route name.
fn idem(route: &str) -> Idempotency {
    Idempotency::new(&cfg(Duration::from_secs(60), 1024), route, None)
}

fn parts(method: &str, uri: &str, key: Option<&str>) -> Parts {
    let mut b = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(()).map(|r| r.into_parts().0).unwrap()
}

fn identity(subject: &str) -> Identity {
    Identity {
        policy: "users".into(),
        subject: subject.into(),
        scopes: Vec::new(),
        claims: serde_json::Map::new(),
        issuer: None,
        jti: None,
        api_key: None,
    }
}

fn response(status: u16, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    res.headers_mut().insert("content-type", HeaderValue::from_static("text/plain"));
    res
}

async fn begin(i: &Idempotency, p: &Parts, body: &'static str) -> Result<Begin, Rejection> {
    i.begin(p, Body::full(body), None).await
}

async fn proceed(i: &Idempotency, p: &Parts, body: &'static str) -> Pending {
    match begin(i, p, body).await {
        Ok(Begin::Proceed(b, pending)) => {
            assert_eq!(b.collect().await.unwrap().to_bytes(), Bytes::from_static(body.as_bytes()));
            pending
        }
        Ok(Begin::Skip(_)) => panic!("skipped"),
        Ok(Begin::Replay(_)) => panic!("replayed"),
        Err(r) => panic!("rejected: {r:?}"),
    }
}

async fn replay(
    i: &Idempotency,
    p: &Parts,
    body: &'static str,
) -> (http::response::Parts, Bytes, Option<HeaderMap>) {
    match begin(i, p, body).await {
        Ok(Begin::Replay(res)) => {
            let (parts, body) = res.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            (parts, collected.to_bytes(), trailers)
        }
        Ok(Begin::Proceed(..)) => panic!("ran again"),
        Ok(Begin::Skip(_)) => panic!("skipped"),
        Err(r) => panic!("rejected: {r:?}"),
    }
}

async fn rejected(i: &Idempotency, p: &Parts, body: &'static str) -> Rejection {
    match begin(i, p, body).await {
        Err(r) => r,
        Ok(_) => panic!("not rejected"),
    }
}

/// Streams the finished response to its end, as the client connection would.
async fn deliver(res: Response<Body>) -> Bytes {
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn first_runs_repeat_replays() {
    let i = idem("t-replay");
    let p = parts("POST", "/orders?x=1", Some("k-1"));
    let pending = proceed(&i, &p, "{\"n\":1}").await;
    let mut res = response(201, "created");
    res.headers_mut().append("set-cookie", HeaderValue::from_static("s=1"));
    res.headers_mut().insert("x-request-id", HeaderValue::from_static("first"));
    res.headers_mut().insert("connection", HeaderValue::from_static("close"));
    assert_eq!(deliver(pending.finish(res)).await, Bytes::from_static(b"created"));

    let (parts, body, _) = replay(&i, &p, "{\"n\":1}").await;
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(body, Bytes::from_static(b"created"));
    assert_eq!(parts.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(parts.headers.get("content-type").unwrap(), "text/plain");
    assert_eq!(parts.headers.get("set-cookie").unwrap(), "s=1");
    assert!(parts.headers.get("x-request-id").is_none());
    assert!(parts.headers.get("connection").is_none());
    // And again: a record answers every repeat until it expires.
    let (parts, _, _) = replay(&i, &p, "{\"n\":1}").await;
    assert_eq!(parts.status, StatusCode::CREATED);
}

#[tokio::test]
async fn same_key_other_request_is_422() {
    let i = idem("t-mismatch");
    let p = parts("POST", "/orders", Some("k-2"));
    let pending = proceed(&i, &p, "a").await;
    deliver(pending.finish(response(200, "ok"))).await;
    let r = rejected(&i, &p, "b").await;
    assert_eq!((r.status, r.reason), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    // Another path with the same key is another request too.
    let r = rejected(&i, &parts("POST", "/orders/2", Some("k-2")), "a").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Also while the first is still in flight.
    let p3 = parts("POST", "/orders", Some("k-3"));
    let _held = proceed(&i, &p3, "a").await;
    let r = rejected(&i, &p3, "b").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn repeat_in_flight_is_409_and_released_on_drop() {
    let i = idem("t-inflight");
    let p = parts("PATCH", "/orders/1", Some("k-4"));
    let pending = proceed(&i, &p, "x").await;
    let r = rejected(&i, &p, "x").await;
    assert_eq!((r.status, r.reason), (StatusCode::CONFLICT, "idempotency_in_flight"));
    assert!(r.headers.iter().any(|(n, v)| n == header::RETRY_AFTER && v == "1"));
    // The target failed before answering: the key is free again.
    drop(pending);
    let _again = proceed(&i, &p, "x").await;
}

#[tokio::test]
async fn server_errors_are_not_stored() {
    let i = idem("t-5xx");
    let p = parts("POST", "/orders", Some("k-5"));
    let pending = proceed(&i, &p, "x").await;
    assert_eq!(deliver(pending.finish(response(503, "down"))).await, Bytes::from_static(b"down"));
    let pending = proceed(&i, &p, "x").await;
    deliver(pending.finish(response(409, "client error stored"))).await;
    let (parts, body, _) = replay(&i, &p, "x").await;
    assert_eq!((parts.status, &body[..]), (StatusCode::CONFLICT, &b"client error stored"[..]));
}

#[tokio::test]
async fn too_large_responses_are_streamed_but_not_stored() {
    let i = Idempotency::new(&cfg(Duration::from_secs(60), 4), "t-large", None);
    let p = parts("POST", "/orders", Some("k-6"));
    let pending = proceed(&i, &p, "x").await;
    assert_eq!(deliver(pending.finish(response(200, "0123456789"))).await, Bytes::from_static(b"0123456789"));
    let pending = proceed(&i, &p, "x").await;
    assert_eq!(deliver(pending.finish(response(200, "0123"))).await, Bytes::from_static(b"0123"));
    let (_, body, _) = replay(&i, &p, "x").await;
    assert_eq!(body, Bytes::from_static(b"0123"));
}

fn channel_body() -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BodyError>>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(8);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, Body::boxed(http_body_util::StreamBody::new(stream)))
}

#[tokio::test]
async fn failed_body_releases_the_key() {
    let i = idem("t-body-error");
    let p = parts("POST", "/orders", Some("k-7"));
    let pending = proceed(&i, &p, "x").await;
    let (tx, body) = channel_body();
    let mut res = pending.finish(Response::new(body)).into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"part")))).await.unwrap();
    assert!(res.frame().await.unwrap().is_ok());
    tx.send(Err("upstream reset".into())).await.unwrap();
    assert!(res.frame().await.unwrap().is_err());
    drop(res);
    let _again = proceed(&i, &p, "x").await;
}

#[tokio::test]
async fn client_gone_mid_body_still_records() {
    let i = idem("t-client-gone");
    let p = parts("POST", "/orders", Some("k-8"));
    let pending = proceed(&i, &p, "x").await;
    let (tx, body) = channel_body();
    let mut res = pending.finish(Response::new(body)).into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first ")))).await.unwrap();
    assert!(res.frame().await.unwrap().is_ok());
    drop(res); // the client disconnected
    tx.send(Ok(Frame::data(Bytes::from_static(b"second")))).await.unwrap();
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match begin(&i, &p, "x").await {
            Ok(Begin::Replay(res)) => {
                assert_eq!(deliver(res).await, Bytes::from_static(b"first second"));
                break;
            }
            Err(r) if r.status == StatusCode::CONFLICT && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => panic!("the drained response was not recorded"),
        }
    }
}

#[tokio::test]
async fn trailers_are_replayed() {
    let i = idem("t-trailers");
    let p = parts("POST", "/svc.Echo/Call", Some("k-9"));
    let pending = proceed(&i, &p, "x").await;
    let (tx, body) = channel_body();
    let res = pending.finish(Response::new(body));
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    tx.send(Ok(Frame::data(Bytes::from_static(b"msg")))).await.unwrap();
    tx.send(Ok(Frame::trailers(t))).await.unwrap();
    drop(tx);
    deliver(res).await;
    let (_, body, trailers) = replay(&i, &p, "x").await;
    assert_eq!(body, Bytes::from_static(b"msg"));
    assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
}

#[tokio::test]
async fn empty_response_body_is_recorded_at_finish() {
    let i = idem("t-empty");
    let p = parts("POST", "/orders", Some("k-10"));
    let pending = proceed(&i, &p, "x").await;
    // hyper does not poll a body that is already at its end: finish must record it anyway.
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    drop(pending.finish(res));
    let (parts, body, _) = replay(&i, &p, "x").await;
    assert_eq!((parts.status, body.len()), (StatusCode::NO_CONTENT, 0));
}

#[tokio::test]
async fn records_expire() {
    let i = Idempotency::new(&cfg(Duration::from_millis(50), 1024), "t-expire", None);
    let p = parts("POST", "/orders", Some("k-11"));
    let pending = proceed(&i, &p, "x").await;
    deliver(pending.finish(response(201, "made"))).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match begin(&i, &p, "x").await {
            Ok(Begin::Proceed(..)) => break,
            Ok(Begin::Replay(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            _ => panic!("the record did not expire"),
        }
    }
}

#[tokio::test]
async fn keys_are_scoped_by_subject() {
    let i = idem("t-subjects");
    let p = parts("POST", "/orders", Some("shared-key"));
    let alice = identity("alice");
    let bob = identity("bob");
    let Ok(Begin::Proceed(_, pending)) = i.begin(&p, Body::full("x"), Some(&alice)).await else { panic!() };
    deliver(pending.finish(response(201, "alice's"))).await;
    // Bob's identical request with the same key is his own.
    let Ok(Begin::Proceed(_, pending)) = i.begin(&p, Body::full("x"), Some(&bob)).await else { panic!() };
    deliver(pending.finish(response(201, "bob's"))).await;
    // Neither is an anonymous request's.
    assert!(matches!(begin(&i, &p, "x").await, Ok(Begin::Proceed(..))));
    let Ok(Begin::Replay(res)) = i.begin(&p, Body::full("x"), Some(&alice)).await else { panic!() };
    assert_eq!(deliver(res).await, Bytes::from_static(b"alice's"));
}

#[tokio::test]
async fn uncovered_methods_and_keyless_requests_pass() {
    let i = idem("t-skip");
    assert!(matches!(begin(&i, &parts("GET", "/orders", Some("k")), "").await, Ok(Begin::Skip(_))));
    assert!(matches!(begin(&i, &parts("PUT", "/orders", Some("k")), "").await, Ok(Begin::Skip(_))));
    for _ in 0..2 {
        let Ok(Begin::Skip(b)) = begin(&i, &parts("POST", "/orders", None), "body").await else { panic!() };
        // The body is untouched.
        assert_eq!(b.collect().await.unwrap().to_bytes(), Bytes::from_static(b"body"));
    }
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let i = idem("t-bad-key");
    let long = "k".repeat(256);
    for bad in ["", "has space", long.as_str(), "tab\there"] {
        let mut p = parts("POST", "/orders", None);
        p.headers.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
        let r = rejected(&i, &p, "x").await;
        assert_eq!((r.status, r.reason), (StatusCode::BAD_REQUEST, "invalid_idempotency_key"), "{bad:?}");
    }
    let mut p = parts("POST", "/orders", Some("a"));
    p.headers.append("idempotency-key", HeaderValue::from_static("b"));
    assert_eq!(rejected(&i, &p, "x").await.status, StatusCode::BAD_REQUEST);
    let ok = "k".repeat(255);
    let _ = proceed(&i, &parts("POST", "/orders", Some(&ok)), "x").await;
    let _ = proceed(&i, &parts("POST", "/orders", Some("\"8e03978e-40d5-43e8\"")), "x").await;
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let i = idem("t-413");
    let p = parts("POST", "/orders", Some("k-12"));
    let frames = [
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Err::<Frame<Bytes>, BodyError>(Box::new(BodyTooLarge { limit: 2 })),
    ];
    let body = Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
    let Err(r) = i.begin(&p, body, None).await else { panic!("not rejected") };
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing was claimed.
    let _ = proceed(&i, &p, "x").await;
}

#[tokio::test]
async fn missing_redis_refuses_keyed_requests() {
    let mut c = cfg(Duration::from_secs(60), 1024);
    c.store = IdempotencyStore::Redis;
    let i = Idempotency::new(&c, "t-no-redis", None);
    let r = rejected(&i, &parts("POST", "/orders", Some("k")), "x").await;
    assert_eq!((r.status, r.reason), (StatusCode::SERVICE_UNAVAILABLE, "idempotency_unavailable"));
    assert!(matches!(begin(&i, &parts("POST", "/orders", None), "x").await, Ok(Begin::Skip(_))));
}

#[test]
fn fingerprint_covers_method_target_type_and_body() {
    let base = parts("POST", "/a?q=1", None);
    let fp = fingerprint(&base, b"body");
    assert_eq!(fp, fingerprint(&parts("POST", "/a?q=1", Some("ignored")), b"body"));
    assert_ne!(fp, fingerprint(&parts("PATCH", "/a?q=1", None), b"body"));
    assert_ne!(fp, fingerprint(&parts("POST", "/a?q=2", None), b"body"));
    assert_ne!(fp, fingerprint(&parts("POST", "/a", None), b"body"));
    assert_ne!(fp, fingerprint(&base, b"body2"));
    let mut other_type = parts("POST", "/a?q=1", None);
    other_type.headers.insert("content-type", HeaderValue::from_static("text/plain"));
    assert_ne!(fp, fingerprint(&other_type, b"body"));
}

#[test]
fn scope_keys_separate_routes_subjects_and_policies() {
    let k = scope_key("r", None, b"key");
    assert_eq!(k, scope_key("r", None, b"key"));
    assert_ne!(k, scope_key("r2", None, b"key"));
    assert_ne!(k, scope_key("r", Some(&identity("alice")), b"key"));
    assert_ne!(
        scope_key("r", Some(&identity("alice")), b"key"),
        scope_key("r", Some(&identity("bob")), b"key")
    );
    let mut other_policy = identity("alice");
    other_policy.policy = "partners".into();
    assert_ne!(scope_key("r", Some(&identity("alice")), b"key"), scope_key("r", Some(&other_policy), b"key"));
}

/// Holds a claim for four marker lifetimes: the key must stay in flight all along (the marker
/// is renewed while the request runs), and be free once the claim is dropped.
async fn a_long_request_keeps_its_key(i: Idempotency, key: &str) {
    let lifetime = Duration::from_millis(150);
    let i = i.with_in_flight_lifetime(lifetime);
    let p = parts("POST", "/orders", Some(key));
    let pending = proceed(&i, &p, "x").await;
    let until = Instant::now() + lifetime * 4;
    while Instant::now() < until {
        // Time itself is what is tested here: the marker must outlive its own lifetime.
        tokio::time::sleep(lifetime / 2).await;
        let r = rejected(&i, &p, "x").await;
        assert_eq!(r.reason, "idempotency_in_flight", "the key was freed while its request ran");
    }
    drop(pending);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match begin(&i, &p, "x").await {
            Ok(Begin::Proceed(..)) => break,
            _ => assert!(Instant::now() < deadline, "the key was not released"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_long_request_keeps_its_key_in_memory() {
    a_long_request_keeps_its_key(idem("t-renew"), "k-renew").await;
}

#[tokio::test]
async fn a_long_request_keeps_its_key_in_redis() {
    let server = crate::protect::redis::testing::RedisServer::start();
    let redis = Redis::new(&sumun_config::Redis {
        url: sumun_config::Secret(server.url()),
        timeout: Duration::from_secs(1),
        retry_after: Duration::from_millis(100),
    })
    .unwrap();
    let mut c = cfg(Duration::from_secs(60), 1024);
    c.store = IdempotencyStore::Redis;
    a_long_request_keeps_its_key(Idempotency::new(&c, "t-renew-redis", Some(redis)), "k-renew").await;
}
