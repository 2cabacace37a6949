//! Protocols on each side: h2c prior knowledge from clients, h2c upstreams, TLS with ALPN,
//! and trailers end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client::{collect, h1_connect, h2c_connect, read_response};
use common::mock::MockBody;
use common::*;
use http::{Request, Version};
use http_body::Frame;

const T: Duration = Duration::from_secs(10);

fn proxy_config(endpoint: &str, upstream_extra: &str) -> String {
    cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"

[upstream.up]
endpoints = ["@UP@"]
@UEXTRA@

[[route]]
name = "echo"
match = { path_prefix = "/echo" }
to = { echo = true }

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
        &[("UP", endpoint), ("UEXTRA", upstream_extra)],
    )
}

#[test]
fn h2c_prior_knowledge_client_to_http1_upstream() {
    let mock = Mock::start(Behavior::text("hello h1"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), ""));
    let host = s.addr("web").to_string();
    let out = curl(&["--http2-prior-knowledge", "--data-binary", "payload", &s.url("web", "/h2?x=1")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.version, "HTTP/2", "{}", out.status_line);
    assert_eq!(out.status, 200);
    assert_eq!(out.text(), "hello h1");
    let got = mock.only();
    assert_eq!(got.version, Version::HTTP_11, "upstream spoken to in HTTP/1.1");
    assert_eq!(got.method, "POST");
    assert_eq!(got.path_and_query, "/h2?x=1");
    assert_eq!(got.header("host"), Some(host.as_str()), ":authority becomes Host");
    assert_eq!(got.body, b"payload");
    assert_eq!(got.header_all("via"), vec!["2 sumun"]);

    let log = s.access_log(&out.request_id(), T);
    assert_eq!(log["version"], "HTTP/2");

    let echo = curl(&["--http2-prior-knowledge", &s.url("web", "/echo")]);
    assert_eq!(echo.version, "HTTP/2");
    assert_eq!(echo.json()["version"], "HTTP/2.0");
}

#[test]
fn http1_client_to_h2c_upstream() {
    let mock = Mock::h2c(Behavior::text("hello from h2c").header("x-up", "h2"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "protocol = \"h2c\""));
    let out = curl(&["-H", "Host: app.example", "--data-binary", "abc", &s.url("web", "/grpcish?y=2")]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.version, "HTTP/1.1");
    assert_eq!(out.text(), "hello from h2c");
    assert_eq!(out.header("x-up"), Some("h2"));
    let got = mock.only();
    assert_eq!(got.version, Version::HTTP_2, "upstream spoken to in h2c");
    assert_eq!(got.authority.as_deref(), Some("app.example"), "Host becomes :authority");
    assert_eq!(got.path_and_query, "/grpcish?y=2");
    assert_eq!(got.body, b"abc");
    // Several requests share one multiplexed upstream connection.
    for _ in 0..3 {
        assert_eq!(curl(&[&s.url("web", "/again")]).status, 200);
    }
    mock.wait_finished(4, T);
    assert_eq!(mock.connections(), 1, "h2c upstream connection is reused");
}

#[test]
fn tls_listener_negotiates_h2_and_http11_via_alpn() {
    let dir = tempfile::Builder::new().prefix("sumun-tls").tempdir_in("/tmp").unwrap();
    let pki = common::tls::make_pki(dir.path());
    let mock = Mock::start(Behavior::text("secure"));
    let s = Sumun::start_in(
        dir,
        &cfg(
            r#"
[listener.tls]
bind = "127.0.0.1:0"
tls = { cert = "@DIR@/server.pem", key = "@DIR@/server.key" }

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "echo"
match = { path_prefix = "/echo" }
to = { echo = true }

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
            &[("UP", mock.endpoint())],
        ),
    );
    let port = s.addr("tls").port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let ca = pki.ca.to_str().unwrap();
    let url = |p: &str| format!("https://localhost:{port}{p}");

    let h2 = curl(&["--cacert", ca, "--resolve", &resolve, "--http2", &url("/echo")]);
    assert_eq!(h2.code, 0, "curl: {}", h2.stderr);
    assert!(h2.status_line.starts_with("HTTP/2 200"), "{}", h2.status_line);
    assert_eq!(h2.json()["tls"], true);
    assert_eq!(h2.json()["version"], "HTTP/2.0");

    let h1 = curl(&["--cacert", ca, "--resolve", &resolve, "--http1.1", &url("/echo")]);
    assert_eq!(h1.code, 0, "curl: {}", h1.stderr);
    assert!(h1.status_line.starts_with("HTTP/1.1 200"), "{}", h1.status_line);
    assert_eq!(h1.json()["version"], "HTTP/1.1");

    // Through to an upstream: it learns the client used https.
    let up = curl(&["--cacert", ca, "--resolve", &resolve, &url("/x")]);
    assert_eq!(up.status, 200, "{}", up.stderr);
    assert_eq!(up.text(), "secure");
    let got = mock.only();
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    assert!(
        got.header("forwarded").is_some_and(|f| f.ends_with("proto=https")),
        "{:?}",
        got.header("forwarded")
    );

    // The certificate is checked: without our CA curl refuses.
    let untrusted = curl(&["--resolve", &resolve, &url("/echo")]);
    assert_ne!(untrusted.code, 0);
}

#[test]
fn trailers_h2c_client_to_h2c_upstream() {
    let mock = Mock::h2c(
        Behavior::text("\0\0\0\0\x05hello")
            .header("content-type", "application/grpc")
            .trailer("grpc-status", "0")
            .trailer("grpc-message", "all good"),
    );
    let s = Sumun::start(&proxy_config(mock.endpoint(), "protocol = \"h2c\""));
    let addr = s.addr("web");
    let (parts, body, trailers) = block_on(async move {
        let mut send = h2c_connect::<http_body_util::Full<Bytes>>(addr).await;
        let req = Request::post(format!("http://{addr}/pkg.Greeter/SayHello"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
            .unwrap();
        let res = send.send_request(req).await.expect("response");
        collect(res).await
    });
    assert_eq!(parts.status, 200);
    assert_eq!(parts.version, Version::HTTP_2);
    assert_eq!(&body[..], b"\0\0\0\0\x05hello");
    let trailers = trailers.expect("the client got no trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "all good");
    let got = mock.only();
    assert_eq!(got.header("te"), Some("trailers"), "TE: trailers reaches the upstream");
    assert_eq!(got.body, b"\0\0\0\0\x02hi");
}

#[test]
fn request_trailers_h2c_client_to_h2c_upstream() {
    let mock = Mock::h2c(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), "protocol = \"h2c\""));
    let addr = s.addr("web");
    let status = block_on(async move {
        let mut send = h2c_connect::<MockBody>(addr).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let req = Request::post(format!("http://{addr}/upload"))
            .header("te", "trailers")
            .body(MockBody::Chan(rx))
            .unwrap();
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"part")))).await.ok();
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", "c0ffee".parse().unwrap());
            tx.send(Ok(Frame::trailers(t))).await.ok();
        });
        let res = send.send_request(req).await.expect("response");
        collect(res).await.0.status
    });
    assert_eq!(status, 200);
    let got = mock.only();
    assert_eq!(got.body, b"part");
    let t = got.trailers.expect("request trailers reach the upstream");
    assert_eq!(t.get("x-checksum").unwrap(), "c0ffee");
}

#[test]
fn trailers_http1_chunked_with_te_trailers() {
    let mock = Mock::start(
        Behavior::text("chunked body").header("trailer", "x-checksum").trailer("x-checksum", "abc123"),
    );
    let s = Sumun::start(&proxy_config(mock.endpoint(), ""));
    let req = b"GET /t HTTP/1.1\r\nHost: t.example\r\nTE: trailers\r\nConnection: close\r\n\r\n";
    let r = raw_request(s.addr("web"), req, T);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(r.complete, "incomplete response: {}", r.text());
    assert_eq!(r.body, b"chunked body");
    let got = mock.only();
    assert_eq!(got.header("te"), Some("trailers"), "TE: trailers reaches the upstream");
    assert_eq!(r.trailer("x-checksum"), Some("abc123"), "trailer lost; raw response:\n{}", r.text());
}

#[test]
fn trailers_are_not_sent_to_http1_clients_that_did_not_ask() {
    let mock = Mock::start(
        Behavior::text("chunked body").header("trailer", "x-checksum").trailer("x-checksum", "abc123"),
    );
    let s = Sumun::start(&proxy_config(mock.endpoint(), ""));
    let req = b"GET /t HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n";
    let r = raw_request(s.addr("web"), req, T);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(r.complete, "{}", r.text());
    assert_eq!(r.body, b"chunked body");
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
}

#[test]
fn http1_keep_alive_reuses_client_connection() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint(), ""));
    let addr = s.addr("web");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    for i in 0..3 {
        use std::io::Write;
        write!(c, "GET /k{i} HTTP/1.1\r\nHost: k\r\n\r\n").unwrap();
        let r = read_response(&mut c, T);
        assert_eq!(r.status, Some(200), "{}", r.text());
        assert!(r.complete && !r.closed);
    }
    let reqs = mock.wait_finished(3, T);
    assert_eq!(reqs[2].path, "/k2");
    // And the hyper client on the same runtime.
    let status = block_on(async move {
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get("/z").header("host", "z").body(http_body_util::Empty::new()).unwrap();
        send.send_request(req).await.unwrap().status()
    });
    assert_eq!(status, 200);
}
