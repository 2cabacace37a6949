//! The HTTP cache through the real binary: hits with `Age` and `Cache-Status`, coalescing of
//! concurrent misses, streaming fills, aborted and oversized fills, revalidation and client
//! conditionals, HEAD, stale-if-error with the upstream down, stale-while-revalidate,
//! invalidation by unsafe methods, purge (admin API and `PURGE`), keys and `Vary`, the store
//! across a reload, and the metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::{collect, h1_connect};
use common::*;
use http::Request;

const T: Duration = Duration::from_secs(10);

fn config(up: &str, route_cache: &str, extra: &str) -> String {
    cfg(
        r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[upstream.up]
endpoints = ["@UP@"]

@EXTRA@

[[route]]
name = "cached"
to = { upstream = "up" }
cache = @CACHE@
"#,
        &[("UP", up), ("CACHE", route_cache), ("EXTRA", extra)],
    )
}

fn cached(b: Behavior) -> Behavior {
    b.header("cache-control", "max-age=60")
}

fn status(out: &CurlOut) -> String {
    out.header_all("cache-status").last().map(|s| s.to_string()).unwrap_or_default()
}

fn admin(s: &Sumun, path: &str) -> String {
    curl(&[&format!("http://{}{path}", s.admin_addr().unwrap())]).text()
}

fn purge(s: &Sumun, json: &str) -> CurlOut {
    curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        json,
        &format!("http://{}/v1/cache/purge", s.admin_addr().unwrap()),
    ])
}

#[test]
fn a_miss_is_stored_and_then_served_with_age_and_cache_status() {
    let up = Mock::start(cached(Behavior::text("hello")));
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    let first = curl(&[&s.url("web", "/a")]);
    assert_eq!((first.status, first.text().as_str()), (200, "hello"));
    assert!(status(&first).starts_with("sumun; fwd=uri-miss; fwd-status=200"), "{}", status(&first));
    assert!(status(&first).contains("stored"));
    let second = curl(&[&s.url("web", "/a")]);
    assert_eq!(second.text(), "hello");
    assert!(status(&second).starts_with("sumun; hit; ttl="), "{}", status(&second));
    assert!(second.header("age").is_some(), "a stored response carries Age");
    assert_eq!(up.count(), 1);
    // The access log says what the cache did.
    assert_eq!(s.access_log(&first.request_id(), T)["cache"], "miss");
    assert_eq!(s.access_log(&second.request_id(), T)["cache"], "hit");
    // Targeted fields reach the origin: it can aim Surrogate-Control at us.
    assert!(up.requests()[0].header("surrogate-capability").is_some_and(|v| v.starts_with("sumun=")));
}

#[test]
fn one_hundred_concurrent_misses_make_exactly_one_upstream_request() {
    let up = Mock::start(cached(Behavior::text("shared")).delay(Duration::from_millis(500)));
    let s = Sumun::start(&config(up.endpoint(), "{ coalesce_timeout = \"10s\" }", ""));
    let addr = s.addr("web");
    let results = block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            tasks.push(tokio::spawn(async move {
                let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
                let req =
                    Request::get("/hot").header("host", "h").body(http_body_util::Empty::new()).unwrap();
                let res =
                    tokio::time::timeout(T, send.send_request(req)).await.expect("response").expect("ok");
                let (parts, body, _) = collect(res).await;
                (parts.status.as_u16(), body)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(results.iter().all(|(st, b)| *st == 200 && b == "shared"), "every client got the fill");
    assert_eq!(up.count(), 1, "100 concurrent misses, one upstream request");
    // Requests that arrived after the fill was stored are plain hits; the others waited on it.
    let m = admin(&s, "/metrics");
    let waited: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("sumun_cache_coalesced_waiters_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(waited >= 1, "{m}");
}

#[test]
fn an_uncacheable_response_releases_the_waiters_at_once() {
    let up = Mock::start(
        Behavior::text("private").header("cache-control", "no-store").delay(Duration::from_millis(300)),
    );
    let s = Sumun::start(&config(up.endpoint(), "{ coalesce_timeout = \"30s\" }", ""));
    let addr = s.addr("web");
    let started = Instant::now();
    block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            tasks.push(tokio::spawn(async move {
                let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
                let req =
                    Request::get("/nostore").header("host", "h").body(http_body_util::Empty::new()).unwrap();
                let res =
                    tokio::time::timeout(T, send.send_request(req)).await.expect("response").expect("ok");
                assert_eq!(res.status(), 200);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(up.count(), 10, "each waiter went upstream itself");
    assert!(started.elapsed() < Duration::from_secs(5), "waiters were held back: {:?}", started.elapsed());
}

#[test]
fn the_first_client_streams_the_fill_before_the_upstream_finishes() {
    let gate = Gate::new();
    let up = Mock::start(cached(Behavior::text("")).payload(Payload::Gated {
        first: Bytes::from_static(b"first-chunk;"),
        gate: gate.clone(),
        rest: Bytes::from_static(b"the-rest"),
    }));
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    let addr = s.addr("web");
    let first = block_on(async move {
        use http_body_util::BodyExt;
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get("/stream").header("host", "g").body(http_body_util::Empty::new()).unwrap();
        let res = tokio::time::timeout(T, send.send_request(req))
            .await
            .expect("head before the upstream finished")
            .unwrap();
        let mut body = res.into_body();
        let frame =
            tokio::time::timeout(T, body.frame()).await.expect("first bytes before the upstream finished");
        let first = frame.unwrap().unwrap().into_data().unwrap();
        gate.open();
        let rest = body.collect().await.unwrap().to_bytes();
        [first, rest].concat()
    });
    assert_eq!(first, b"first-chunk;the-rest");
    // The copy is stored once the upstream body has ended (just after the client saw it end).
    wait_for(T, "the fill to be stored", || admin(&s, "/v1/cache").contains("\"objects\":1").then_some(()));
    let hit = curl(&["-H", "host: g", &s.url("web", "/stream")]);
    assert_eq!(hit.text(), "first-chunk;the-rest");
    assert!(status(&hit).contains("hit"), "{}", status(&hit));
    assert_eq!(up.count(), 1);
}

#[test]
fn a_fill_aborted_by_the_upstream_is_never_stored() {
    let up =
        Mock::start(cached(Behavior::text("")).payload(Payload::AbortAfter(Bytes::from_static(b"partial"))));
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    let out = curl(&[&s.url("web", "/cut")]);
    assert_ne!(out.code, 0, "curl must see the abort");
    curl(&[&s.url("web", "/cut")]);
    assert_eq!(up.count(), 2, "the truncated body was not stored");
}

#[test]
fn objects_over_max_object_stream_through_uncached() {
    let up = Mock::start(cached(Behavior::text(&"x".repeat(4096))));
    let s = Sumun::start(&config(up.endpoint(), "{ max_object = \"1KiB\" }", ""));
    for _ in 0..2 {
        let out = curl(&[&s.url("web", "/big")]);
        assert_eq!(out.body.len(), 4096);
        assert!(!status(&out).contains("stored"), "{}", status(&out));
    }
    assert_eq!(up.count(), 2);
    // A chunked body that grows past the limit mid-stream is not stored either.
    let chunked = Mock::start(cached(Behavior::text("")).stream(8192, 1000));
    let s = Sumun::start(&config(chunked.endpoint(), "{ max_object = \"4KiB\" }", ""));
    for _ in 0..2 {
        assert_eq!(curl(&[&s.url("web", "/chunked")]).body.len(), 8192);
    }
    assert_eq!(chunked.count(), 2);
}

#[test]
fn revalidation_updates_stored_headers_and_client_validators_get_304() {
    let version = Arc::new(AtomicUsize::new(0));
    let v = version.clone();
    let up = Mock::start_opts(MockOpts::default(), move |req| {
        let n = v.fetch_add(1, Ordering::SeqCst) + 1;
        if req.headers.get("if-none-match").is_some_and(|e| e == "\"v1\"") {
            return Behavior::text("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60")
                .header("x-seen", &n.to_string());
        }
        Behavior::text("body-v1")
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0")
            .header("x-seen", &n.to_string())
    });
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    let first = curl(&[&s.url("web", "/doc")]);
    assert_eq!(first.header("x-seen"), Some("1"));
    let second = curl(&[&s.url("web", "/doc")]);
    assert_eq!(second.text(), "body-v1");
    assert_eq!(second.header("x-seen"), Some("2"), "the 304's fields replace the stored ones");
    assert!(status(&second).contains("fwd=stale; fwd-status=304"), "{}", status(&second));
    assert_eq!(up.requests()[1].header("if-none-match"), Some("\"v1\""));
    // Now fresh: a client validator is answered from the cache.
    let conditional = curl(&["-H", "if-none-match: \"v1\"", &s.url("web", "/doc")]);
    assert_eq!(conditional.status, 304);
    assert_eq!(conditional.header("etag"), Some("\"v1\""));
    let head = curl(&["-I", &s.url("web", "/doc")]);
    assert_eq!((head.status, head.header("x-seen")), (200, Some("2")), "HEAD from the stored GET");
    assert_eq!(up.count(), 2);
}

#[test]
fn stale_if_error_serves_the_stored_response_while_the_upstream_is_down() {
    let up = Mock::start(Behavior::text("kept").header("cache-control", "max-age=1"));
    let s = Sumun::start(&config(up.endpoint(), "{ stale_if_error = \"5m\" }", ""));
    assert_eq!(curl(&[&s.url("web", "/sie")]).text(), "kept");
    drop(up);
    let out = wait_for(T, "a stale answer after expiry", || {
        let out = curl(&[&s.url("web", "/sie")]);
        status(&out).contains("stale-if-error").then_some(out)
    });
    assert_eq!((out.status, out.text().as_str()), (200, "kept"));
    assert_eq!(s.access_log(&out.request_id(), T)["cache"], "stale");
    // must-revalidate forbids it, whatever the route default says.
    let strict = Mock::start(Behavior::text("strict").header("cache-control", "max-age=1, must-revalidate"));
    let s2 = Sumun::start(&config(strict.endpoint(), "{ stale_if_error = \"5m\" }", ""));
    assert_eq!(curl(&[&s2.url("web", "/mr")]).text(), "strict");
    drop(strict);
    wait_for(T, "an error once stale", || (curl(&[&s2.url("web", "/mr")]).status == 502).then_some(()));
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let up = Mock::start_opts(MockOpts::default(), move |_| {
        let i = c.fetch_add(1, Ordering::SeqCst) + 1;
        Behavior::text(&format!("v{i}"))
            .header("cache-control", "max-age=1")
            .delay(Duration::from_millis(200))
    });
    let s = Sumun::start(&config(up.endpoint(), "{ stale_while_revalidate = \"1m\" }", ""));
    assert_eq!(curl(&[&s.url("web", "/swr")]).text(), "v1");
    let stale = wait_for(T, "a stale-while-revalidate answer", || {
        let out = curl(&[&s.url("web", "/swr")]);
        status(&out).contains("stale-while-revalidate").then_some(out)
    });
    assert_eq!(stale.text(), "v1", "served stale at once");
    wait_for(T, "the background refresh", || (curl(&[&s.url("web", "/swr")]).text() == "v2").then_some(()));
    assert_eq!(up.count(), 2, "one refresh");
}

#[test]
fn unsafe_methods_invalidate_the_uri_and_its_location() {
    let up = Mock::start_opts(MockOpts::default(), |req| {
        if req.method == http::Method::POST {
            return Behavior::text("created").status(201).header("location", "/items/7");
        }
        cached(Behavior::text(req.uri.path()))
    });
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    for p in ["/items", "/items/7", "/other"] {
        curl(&[&s.url("web", p)]);
    }
    assert_eq!(up.count(), 3);
    let post = curl(&["-X", "POST", "-d", "x", &s.url("web", "/items")]);
    assert_eq!(post.status, 201);
    for p in ["/items", "/items/7", "/other"] {
        curl(&[&s.url("web", p)]);
    }
    assert_eq!(up.count(), 6, "POST, then /items and /items/7 refetched, /other still stored");
}

#[test]
fn purge_by_tag_url_and_prefix_through_the_admin_api() {
    let up = Mock::start_opts(MockOpts::default(), |req| {
        let tag = if req.uri.path().starts_with("/p/") { "product" } else { "page" };
        cached(Behavior::text(req.uri.path())).header("surrogate-key", &format!("{tag} all"))
    });
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    let paths = ["/p/1", "/p/2", "/static/a.css", "/home?b=2&a=1"];
    for p in paths {
        curl(&[&s.url("web", p)]);
    }
    let out = purge(&s, r#"{"tag": "product"}"#);
    assert_eq!(out.json()["purged"], 2, "{}", out.text());
    let host = s.addr("web").to_string();
    assert_eq!(purge(&s, &format!(r#"{{"url": "http://{host}/home?a=1&b=2"}}"#)).json()["purged"], 1);
    assert_eq!(purge(&s, r#"{"prefix": "/static/"}"#).json()["purged"], 1);
    assert_eq!(purge(&s, r#"{"tag": "all"}"#).json()["purged"], 0, "everything is gone already");
    assert_eq!(purge(&s, r#"{"tag": "a", "url": "b"}"#).status, 400);
    let before = up.count();
    for p in paths {
        let out = curl(&[&s.url("web", p)]);
        assert!(status(&out).contains("fwd=uri-miss"), "purged at once: {p}");
    }
    assert_eq!(up.count(), before + 4);
    let snap: serde_json::Value = serde_json::from_str(&admin(&s, "/v1/cache")).unwrap();
    assert_eq!(snap["objects"], 4, "{snap}");
}

#[test]
fn purge_method_only_from_configured_networks() {
    let up = Mock::start(cached(Behavior::text("x")));
    let s = Sumun::start(&config(up.endpoint(), "true", "[cache]\npurge_from = [\"127.0.0.1/32\"]"));
    curl(&[&s.url("web", "/x")]);
    let out = curl(&["-X", "PURGE", &s.url("web", "/x")]);
    assert_eq!((out.status, out.json()["purged"].as_u64()), (200, Some(1)));
    curl(&[&s.url("web", "/x")]);
    assert_eq!(up.count(), 2);
    let s = Sumun::start(&config(up.endpoint(), "true", "[cache]\npurge_from = [\"10.0.0.0/8\"]"));
    assert_problem(&curl(&["-X", "PURGE", &s.url("web", "/x")]), 403);
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    assert_problem(&curl(&["-X", "PURGE", &s.url("web", "/x")]), 405);
}

#[test]
fn keys_sort_the_query_drop_ignored_parameters_and_follow_vary() {
    let up = Mock::start_opts(MockOpts::default(), |req| {
        let lang = req.headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        cached(Behavior::text(&format!("{}|{lang}", req.uri))).header("vary", "Accept-Language")
    });
    let s = Sumun::start(&config(
        up.endpoint(),
        "{ ignore_query = [\"utm_source\"], vary_cookies = [\"tier\"] }",
        "",
    ));
    let a = curl(&["-H", "accept-language: en", &s.url("web", "/k?b=2&a=1")]).text();
    assert_eq!(curl(&["-H", "accept-language: EN", &s.url("web", "/k?a=1&b=2&utm_source=x")]).text(), a);
    assert_eq!(up.count(), 1);
    curl(&["-H", "accept-language: fr", &s.url("web", "/k?a=1&b=2")]);
    assert_eq!(up.count(), 2, "another language is another variant");
    curl(&["-H", "accept-language: en", "-H", "cookie: tier=gold", &s.url("web", "/k?a=1&b=2")]);
    assert_eq!(up.count(), 3, "a vary_cookies cookie selects a variant");
    curl(&["-H", "accept-language: en", "-H", "cookie: session=abc", &s.url("web", "/k?a=1&b=2")]);
    assert_eq!(up.count(), 3, "other cookies do not");
}

#[test]
fn authorization_and_request_directives() {
    let up = Mock::start(cached(Behavior::text("x")));
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    let miss = curl(&["-H", "cache-control: only-if-cached", &s.url("web", "/o")]);
    assert_eq!(miss.status, 504);
    assert_eq!(up.count(), 0);
    curl(&[&s.url("web", "/o")]);
    curl(&["-H", "authorization: Bearer t", &s.url("web", "/o")]);
    assert_eq!(
        up.count(),
        2,
        "a response without public/s-maxage/must-revalidate is not shared with credentials"
    );
    let forced = curl(&["-H", "cache-control: no-cache", &s.url("web", "/o")]);
    assert!(status(&forced).contains("fwd=request"), "{}", status(&forced));
    assert_eq!(up.count(), 3);
}

#[test]
fn the_store_survives_a_reload() {
    let up = Mock::start(cached(Behavior::text("kept")));
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    curl(&[&s.url("web", "/r")]);
    let before = s.stderr.all().len();
    let next = config(up.endpoint(), "true", "").replace("name = \"cached\"", "name = \"renamed\"");
    std::fs::write(s.config_path(), next).unwrap();
    s.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(T, "reload", || {
        let lines = s.stderr.all();
        lines[before.min(lines.len())..].iter().any(|l| l.contains("configuration reloaded")).then_some(())
    });
    let out = curl(&[&s.url("web", "/r")]);
    assert!(status(&out).contains("hit"), "{}", status(&out));
    assert_eq!(up.count(), 1);
}

#[test]
fn metrics_count_hits_misses_and_stored_bytes() {
    let up = Mock::start(cached(Behavior::text("0123456789")));
    let s = Sumun::start(&config(up.endpoint(), "true", ""));
    curl(&[&s.url("web", "/m")]);
    curl(&[&s.url("web", "/m")]);
    let m = admin(&s, "/metrics");
    for want in [
        "sumun_cache_hits_total 1",
        "sumun_cache_misses_total 1",
        "sumun_cache_stored_total 1",
        "sumun_cache_objects 1",
    ] {
        assert!(m.contains(want), "{want}: {m}");
    }
    assert!(m.lines().any(|l| l.starts_with("sumun_cache_bytes ") && !l.ends_with(" 0")), "{m}");
}
