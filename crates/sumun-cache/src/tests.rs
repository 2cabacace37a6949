//! The cache driven end to end against a scripted origin.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use sumun_http::ErrorKind;
use tokio::sync::mpsc;

use super::*;

type Script = Box<dyn Fn(&http::request::Parts, usize) -> Result<Response<Body>, ProxyError> + Send + Sync>;

struct Mock {
    calls: AtomicUsize,
    delay: Duration,
    script: Script,
    seen: Mutex<Vec<HeaderMap>>,
}

impl Mock {
    fn new(
        delay: Duration,
        script: impl Fn(&http::request::Parts, usize) -> Result<Response<Body>, ProxyError>
        + Send
        + Sync
        + 'static,
    ) -> Arc<Mock> {
        Arc::new(Mock {
            calls: AtomicUsize::new(0),
            delay,
            script: Box::new(script),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Shared(Arc<Mock>);

impl Origin for Shared {
    fn send(&self, head: http::request::Parts) -> OriginFuture {
        let m = self.0.clone();
        Box::pin(async move {
            let n = m.calls.fetch_add(1, Ordering::SeqCst) + 1;
            m.seen.lock().unwrap().push(head.headers.clone());
            if !m.delay.is_zero() {
                tokio::time::sleep(m.delay).await;
            }
            (m.script)(&head, n)
        })
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from(body.to_owned())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (n, v) in headers {
        r.headers_mut()
            .append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    r
}

fn cache() -> Cache {
    Cache::new(&CacheStore { memory: 64 << 20, purge_from: Vec::new() })
}

fn route() -> Arc<RoutePolicy> {
    Arc::new(RoutePolicy::compile(&RouteCache::default()))
}

fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut r = http::Request::new(());
    *r.method_mut() = method.parse().unwrap();
    *r.uri_mut() = path.parse().unwrap();
    for (n, v) in headers {
        r.headers_mut()
            .append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    r.into_parts().0
}

fn target(path: &str) -> Target<'_> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    Target { scheme: "http", host: "example.com", path: p, query: q }
}

async fn get(
    c: &Cache,
    r: &Arc<RoutePolicy>,
    m: &Arc<Mock>,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    send(c, r, m, "GET", path, headers).await
}

async fn send(
    c: &Cache,
    r: &Arc<RoutePolicy>,
    m: &Arc<Mock>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let res =
        c.serve(r, target(path), head(method, path, headers), Arc::new(Shared(m.clone()))).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn cache_status(h: &HeaderMap) -> String {
    h.get_all(&CACHE_STATUS).iter().next_back().map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, n| {
        Ok(response(200, &[("cache-control", "max-age=60")], &format!("v{n}")))
    });
    let (s, h, b) = get(&c, &r, &m, "/a", &[]).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "v1"));
    assert!(
        cache_status(&h).starts_with("sumun; fwd=uri-miss; fwd-status=200; ttl="),
        "{}",
        cache_status(&h)
    );
    assert!(cache_status(&h).ends_with("; stored"));
    let (_, h, b) = get(&c, &r, &m, "/a", &[]).await;
    assert_eq!(b, "v1");
    assert!(cache_status(&h).starts_with("sumun; hit; ttl="));
    assert_eq!(h["age"], "0");
    assert_eq!(m.calls(), 1);
    // The surrogate capability went upstream.
    assert!(m.seen.lock().unwrap()[0].contains_key("surrogate-capability"));
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::from_millis(200), |_, _| {
        Ok(response(200, &[("cache-control", "max-age=60")], "shared"))
    });
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, r, m) = (c.clone(), r.clone(), m.clone());
        tasks.push(tokio::spawn(async move { get(&c, &r, &m, "/hot", &[]).await }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let (s, h, b) = t.await.unwrap();
        assert_eq!((s, b.as_str()), (StatusCode::OK, "shared"));
        collapsed += usize::from(cache_status(&h).contains("collapsed"));
    }
    assert_eq!(m.calls(), 1);
    assert_eq!(collapsed, 99);
}

#[tokio::test]
async fn an_uncacheable_response_releases_waiters_at_once() {
    let c = cache();
    let r = Arc::new(RoutePolicy { coalesce_timeout: Duration::from_secs(30), ..(*route()).clone() });
    let m = Mock::new(Duration::from_millis(100), |_, n| {
        Ok(response(200, &[("cache-control", "no-store")], &format!("{n}")))
    });
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (c, r, m) = (c.clone(), r.clone(), m.clone());
        tasks.push(tokio::spawn(async move { get(&c, &r, &m, "/private", &[]).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(m.calls(), 5);
    assert!(start.elapsed() < Duration::from_secs(5), "waiters were held: {:?}", start.elapsed());
}

#[tokio::test]
async fn waiters_give_up_after_the_coalesce_timeout() {
    let c = cache();
    let r = Arc::new(RoutePolicy { coalesce_timeout: Duration::from_millis(50), ..(*route()).clone() });
    let m = Mock::new(Duration::from_millis(400), |_, _| {
        Ok(response(200, &[("cache-control", "max-age=60")], "x"))
    });
    let first = {
        let (c, r, m) = (c.clone(), r.clone(), m.clone());
        tokio::spawn(async move { get(&c, &r, &m, "/slow", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, h, _) = get(&c, &r, &m, "/slow", &[]).await;
    assert!(cache_status(&h).contains("collapsed"));
    first.await.unwrap();
    assert_eq!(m.calls(), 2);
}

struct ChannelBody(mpsc::Receiver<Result<Bytes, ()>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(Frame::data).map_err(|_| std::io::Error::other("upstream reset"))))
    }
}

fn streaming_origin(rx: Mutex<Option<mpsc::Receiver<Result<Bytes, ()>>>>) -> Arc<Mock> {
    Mock::new(Duration::ZERO, move |_, _| {
        let rx =
            rx.lock().unwrap().take().ok_or_else(|| ProxyError::new(ErrorKind::ConnectFailed, "gone"))?;
        let mut r = Response::new(Body::boxed(ChannelBody(rx)));
        r.headers_mut().insert("cache-control", HeaderValue::from_static("max-age=60"));
        Ok(r)
    })
}

#[tokio::test]
async fn the_first_client_streams_while_the_fill_completes() {
    let (c, r) = (cache(), route());
    let (tx, rx) = mpsc::channel(4);
    let m = streaming_origin(Mutex::new(Some(rx)));
    let res =
        c.serve(&r, target("/big"), head("GET", "/big", &[]), Arc::new(Shared(m.clone()))).await.unwrap();
    let mut body = res.into_body();
    tx.send(Ok(Bytes::from_static(b"first "))).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first ", "bytes arrive before the upstream finished");
    // Not stored yet: a second request is a miss (here the origin is gone, so it errors).
    tx.send(Ok(Bytes::from_static(b"second"))).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    let (_, h, b) = get(&c, &r, &m, "/big", &[]).await;
    assert_eq!(b, "first second");
    assert!(cache_status(&h).contains("hit"));
}

#[tokio::test]
async fn an_aborted_fill_is_never_stored() {
    let (c, r) = (cache(), route());
    let (tx, rx) = mpsc::channel(4);
    let m = streaming_origin(Mutex::new(Some(rx)));
    let res =
        c.serve(&r, target("/cut"), head("GET", "/cut", &[]), Arc::new(Shared(m.clone()))).await.unwrap();
    tx.send(Ok(Bytes::from_static(b"partial"))).await.unwrap();
    tx.send(Err(())).await.unwrap();
    assert!(res.into_body().collect().await.is_err());
    let e = c.serve(&r, target("/cut"), head("GET", "/cut", &[]), Arc::new(Shared(m.clone()))).await;
    assert!(e.is_err(), "the truncated body must not have been stored");
}

#[tokio::test]
async fn objects_over_max_object_stream_through_uncached() {
    let c = cache();
    let r = Arc::new(RoutePolicy { max_object: 8, ..(*route()).clone() });
    let m = Mock::new(Duration::ZERO, |_, n| {
        Ok(response(200, &[("cache-control", "max-age=60")], &format!("0123456789-{n}")))
    });
    assert_eq!(get(&c, &r, &m, "/x", &[]).await.2, "0123456789-1");
    assert_eq!(get(&c, &r, &m, "/x", &[]).await.2, "0123456789-2");
    assert_eq!(m.calls(), 2);
}

#[tokio::test]
async fn a_304_refreshes_the_stored_headers() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |h, n| {
        if n == 1 {
            return Ok(response(
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"v1\""), ("x-version", "1")],
                "body",
            ));
        }
        assert_eq!(h.headers["if-none-match"], "\"v1\"");
        Ok(response(304, &[("cache-control", "max-age=60"), ("etag", "\"v1\""), ("x-version", "2")], ""))
    });
    get(&c, &r, &m, "/v", &[]).await;
    let (s, h, b) = get(&c, &r, &m, "/v", &[]).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "body"));
    assert_eq!(h["x-version"], "2");
    assert!(cache_status(&h).contains("fwd=stale; fwd-status=304"));
    let (_, h, _) = get(&c, &r, &m, "/v", &[]).await;
    assert!(cache_status(&h).contains("hit"));
    assert_eq!(m.calls(), 2);
}

#[tokio::test]
async fn client_conditionals_are_answered_from_the_cache() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |h, _| {
        assert!(!h.headers.contains_key("if-none-match"), "client conditionals are not forwarded on a fill");
        Ok(response(200, &[("cache-control", "max-age=60"), ("etag", "\"e\"")], "body"))
    });
    let (s, _, _) = get(&c, &r, &m, "/c", &[("if-none-match", "\"e\"")]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let (s, h, _) = get(&c, &r, &m, "/c", &[("if-none-match", "\"e\"")]).await;
    assert_eq!((s, &h["etag"]), (StatusCode::NOT_MODIFIED, &HeaderValue::from_static("\"e\"")));
    let (s, _, b) = get(&c, &r, &m, "/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "body"));
    assert_eq!(m.calls(), 1);
}

#[tokio::test]
async fn head_is_served_from_a_stored_get() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, _| {
        Ok(response(200, &[("cache-control", "max-age=60"), ("content-length", "4")], "body"))
    });
    get(&c, &r, &m, "/h", &[]).await;
    let (s, h, b) = send(&c, &r, &m, "HEAD", "/h", &[]).await;
    assert_eq!((s, b.as_str(), &h["content-length"]), (StatusCode::OK, "", &HeaderValue::from_static("4")));
    assert_eq!(m.calls(), 1);
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, n| match n {
        1 => {
            Ok(response(200, &[("cache-control", "max-age=0, stale-if-error=60"), ("etag", "\"1\"")], "old"))
        }
        2 => Err(ProxyError::new(ErrorKind::ConnectFailed, "down")),
        _ => Ok(response(503, &[], "busy")),
    });
    get(&c, &r, &m, "/s", &[]).await;
    let (s, h, b) = get(&c, &r, &m, "/s", &[]).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "old"));
    assert!(cache_status(&h).contains("detail=stale-if-error"), "{}", cache_status(&h));
    let (s, _, b) = get(&c, &r, &m, "/s", &[]).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "old"));
}

#[tokio::test]
async fn must_revalidate_forbids_stale_on_error() {
    let c = cache();
    let cfg = RouteCache { stale_if_error: Duration::from_secs(600), ..Default::default() };
    let r = Arc::new(RoutePolicy::compile(&cfg));
    let m = Mock::new(Duration::ZERO, |_, n| match n {
        1 => Ok(response(200, &[("cache-control", "max-age=0, must-revalidate"), ("etag", "\"1\"")], "old")),
        _ => Err(ProxyError::new(ErrorKind::ConnectFailed, "down")),
    });
    get(&c, &r, &m, "/mr", &[]).await;
    let e = c.serve(&r, target("/mr"), head("GET", "/mr", &[]), Arc::new(Shared(m.clone()))).await;
    assert!(e.is_err());
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_once_in_the_background() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::from_millis(50), |_, n| {
        Ok(response(
            200,
            &[("cache-control", "max-age=0, stale-while-revalidate=60"), ("etag", &format!("\"{n}\""))],
            &format!("v{n}"),
        ))
    });
    get(&c, &r, &m, "/swr", &[]).await;
    for _ in 0..5 {
        let (_, h, b) = get(&c, &r, &m, "/swr", &[]).await;
        assert_eq!(b, "v1");
        assert!(cache_status(&h).contains("stale-while-revalidate"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, b) = get(&c, &r, &m, "/swr", &[]).await;
        if b == "v2" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the background refresh never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(m.calls() <= 3, "one refresh at a time, got {}", m.calls());
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |h, _| {
        let lang =
            h.headers.get("accept-language").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        Ok(response(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Language")], &lang))
    });
    assert_eq!(get(&c, &r, &m, "/v", &[("accept-language", "en")]).await.2, "en");
    assert_eq!(get(&c, &r, &m, "/v", &[("accept-language", "fr")]).await.2, "fr");
    let (_, h, b) = get(&c, &r, &m, "/v", &[("accept-language", "EN")]).await;
    assert_eq!(b, "en");
    assert!(cache_status(&h).contains("hit"));
    assert_eq!(get(&c, &r, &m, "/v", &[]).await.2, "");
    assert_eq!(m.calls(), 3);
}

#[tokio::test]
async fn authorization_needs_an_explicit_permission() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, n| {
        Ok(response(200, &[("cache-control", "max-age=60")], &n.to_string()))
    });
    get(&c, &r, &m, "/auth", &[("authorization", "Bearer a")]).await;
    get(&c, &r, &m, "/auth", &[("authorization", "Bearer a")]).await;
    assert_eq!(m.calls(), 2);
    // A stored public response is not served to authorized requests unless it allows it.
    let m2 = Mock::new(Duration::ZERO, |_, n| {
        Ok(response(200, &[("cache-control", "max-age=60")], &n.to_string()))
    });
    get(&c, &r, &m2, "/pub", &[]).await;
    get(&c, &r, &m2, "/pub", &[("authorization", "Bearer a")]).await;
    assert_eq!(m2.calls(), 2);
}

#[tokio::test]
async fn only_if_cached_answers_504_on_a_miss() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, _| Ok(response(200, &[("cache-control", "max-age=60")], "x")));
    let (s, _, _) = get(&c, &r, &m, "/o", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(m.calls(), 0);
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_uri_and_same_origin_locations() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, n| {
        Ok(response(200, &[("cache-control", "max-age=60")], &n.to_string()))
    });
    for p in ["/a", "/b", "/dir/c"] {
        get(&c, &r, &m, p, &[]).await;
    }
    let mut h = HeaderMap::new();
    h.insert("location", HeaderValue::from_static("/b"));
    h.insert("content-location", HeaderValue::from_static("c"));
    c.invalidate_after(&r, target("/dir/x"), &Method::POST, StatusCode::CREATED, &h);
    c.invalidate_after(
        &r,
        target("/a"),
        &Method::DELETE,
        StatusCode::INTERNAL_SERVER_ERROR,
        &HeaderMap::new(),
    );
    let before = m.calls();
    get(&c, &r, &m, "/a", &[]).await;
    assert_eq!(m.calls(), before, "a failed DELETE invalidates nothing");
    get(&c, &r, &m, "/b", &[]).await;
    get(&c, &r, &m, "/dir/c", &[]).await;
    assert_eq!(m.calls(), before + 2);
    // Another origin's URL is never touched.
    let mut other = HeaderMap::new();
    other.insert("location", HeaderValue::from_static("http://elsewhere.example/a"));
    c.invalidate_after(&r, target("/z"), &Method::PUT, StatusCode::OK, &other);
    get(&c, &r, &m, "/a", &[]).await;
    assert_eq!(m.calls(), before + 2);
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |h, n| {
        let tag = if h.uri.path().starts_with("/t/") { "group-a" } else { "none" };
        Ok(response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-key", &format!("{tag} all")),
                ("cache-tag", "x, y"),
            ],
            &n.to_string(),
        ))
    });
    for p in ["/t/1", "/t/2", "/s/1?b=2&a=1", "/u"] {
        get(&c, &r, &m, p, &[]).await;
    }
    assert_eq!(c.purge(&Purge::Tag("group-a".into())), 2);
    assert_eq!(c.purge(&Purge::Url("http://example.com/s/1?a=1&b=2".into())), 1);
    assert_eq!(c.purge(&Purge::Prefix("/u".into())), 1);
    assert_eq!(c.purge(&Purge::Tag("all".into())), 0);
    let before = m.calls();
    for p in ["/t/1", "/t/2", "/s/1?a=1&b=2", "/u"] {
        get(&c, &r, &m, p, &[]).await;
    }
    assert_eq!(m.calls(), before + 4);
    assert_eq!(c.purge(&Purge::Prefix("http://example.com/t/".into())), 2);
}

#[tokio::test]
async fn query_parameters_are_sorted_and_ignored_ones_dropped() {
    let c = cache();
    let cfg = RouteCache { ignore_query: vec!["utm_source".into()], ..Default::default() };
    let r = Arc::new(RoutePolicy::compile(&cfg));
    let m = Mock::new(Duration::ZERO, |_, n| {
        Ok(response(200, &[("cache-control", "max-age=60")], &n.to_string()))
    });
    get(&c, &r, &m, "/q?b=1&a=2", &[]).await;
    assert_eq!(get(&c, &r, &m, "/q?a=2&b=1&utm_source=mail", &[]).await.2, "1");
    assert_eq!(get(&c, &r, &m, "/q?a=3&b=1", &[]).await.2, "2");
}

#[tokio::test]
async fn stored_bytes_and_objects_are_tracked() {
    let (c, r) = (cache(), route());
    let m =
        Mock::new(Duration::ZERO, |_, _| Ok(response(200, &[("cache-control", "max-age=60")], "0123456789")));
    get(&c, &r, &m, "/m1", &[]).await;
    get(&c, &r, &m, "/m2", &[]).await;
    let snap = c.snapshot();
    assert_eq!(snap.objects, 2);
    assert!(snap.stored_bytes >= 20);
    c.purge(&Purge::Prefix("/m".into()));
    let snap = c.snapshot();
    assert_eq!((snap.objects, snap.stored_bytes), (0, 0));
}

#[tokio::test]
async fn ranges_are_cut_from_a_stored_complete_response() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, _| {
        Ok(response(200, &[("cache-control", "max-age=60"), ("etag", "\"r\"")], "0123456789"))
    });
    get(&c, &r, &m, "/r", &[]).await;
    let (s, h, b) = get(&c, &r, &m, "/r", &[("range", "bytes=2-4")]).await;
    assert_eq!(
        (s, b.as_str(), &h["content-range"]),
        (StatusCode::PARTIAL_CONTENT, "234", &HeaderValue::from_static("bytes 2-4/10"))
    );
    let (s, _, b) = get(&c, &r, &m, "/r", &[("range", "bytes=-2"), ("if-range", "\"r\"")]).await;
    assert_eq!((s, b.as_str()), (StatusCode::PARTIAL_CONTENT, "89"));
    assert_eq!(m.calls(), 1);
    // A non-matching If-Range goes to the origin.
    get(&c, &r, &m, "/r", &[("range", "bytes=0-1"), ("if-range", "\"old\"")]).await;
    assert_eq!(m.calls(), 2);
}

#[tokio::test]
async fn a_head_response_updates_the_stored_get() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |h, n| {
        if h.method == Method::HEAD {
            let etag = if n == 2 { "\"a\"" } else { "\"b\"" };
            return Ok(response(
                200,
                &[("cache-control", "max-age=60"), ("etag", etag), ("x-n", &n.to_string())],
                "",
            ));
        }
        Ok(response(
            200,
            &[("cache-control", "max-age=0"), ("etag", "\"a\""), ("x-n", &n.to_string())],
            "body",
        ))
    });
    get(&c, &r, &m, "/head", &[]).await;
    // Stale: the HEAD goes upstream; same ETag, so its fields freshen the stored GET.
    let (s, h, _) = send(&c, &r, &m, "HEAD", "/head", &[]).await;
    assert_eq!((s, &h["x-n"]), (StatusCode::OK, &HeaderValue::from_static("2")));
    let (_, h, b) = get(&c, &r, &m, "/head", &[]).await;
    assert_eq!((b.as_str(), &h["x-n"]), ("body", &HeaderValue::from_static("2")));
    assert!(cache_status(&h).contains("hit"), "{}", cache_status(&h));
    assert_eq!(m.calls(), 2);
    // A HEAD whose validator differs marks the stored response outdated.
    c.purge(&Purge::Url("http://example.com/head".into()));
    get(&c, &r, &m, "/head", &[]).await;
    send(&c, &r, &m, "HEAD", "/head", &[("cache-control", "no-cache")]).await;
    let (_, h, _) = get(&c, &r, &m, "/head", &[]).await;
    assert!(cache_status(&h).contains("fwd=uri-miss"), "{}", cache_status(&h));
}

#[tokio::test]
async fn the_fast_path_answers_only_fresh_hits() {
    let (c, r) = (cache(), route());
    let m = Mock::new(Duration::ZERO, |_, _| {
        Ok(response(200, &[("cache-control", "max-age=60"), ("etag", "\"f\"")], "fast"))
    });
    assert!(c.fresh_hit(&r, target("/f"), &head("GET", "/f", &[])).is_none(), "a miss");
    get(&c, &r, &m, "/f", &[]).await;
    let res = c.fresh_hit(&r, target("/f"), &head("GET", "/f", &[])).expect("a fresh hit");
    assert!(cache_status(res.headers()).starts_with("sumun; hit"));
    let res =
        c.fresh_hit(&r, target("/f"), &head("GET", "/f", &[("if-none-match", "\"f\"")])).expect("a 304");
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    for h in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("range", "bytes=0-1"),
        ("cache-control", "no-store"),
    ] {
        assert!(c.fresh_hit(&r, target("/f"), &head("GET", "/f", &[h])).is_none(), "{h:?}");
    }
    assert_eq!(m.calls(), 1);
}
