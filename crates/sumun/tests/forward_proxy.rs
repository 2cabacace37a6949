//! The forward proxy end to end, with the clients people actually point at a proxy: curl with
//! `http_proxy` / `https_proxy`, Python `httpx` and `requests`, and `pip download` from a
//! package index served over HTTPS through a CONNECT tunnel. Origins run in the test on
//! loopback (plain HTTP mocks, an HTTPS origin with a throwaway CA, raw TCP echo servers), so
//! every config allows `127.0.0.0/8` explicitly: `block_private` stays on, as by default.
//!
//! Checked: absolute-form GET/POST with hop-by-hop hygiene, `Via` and the URI winning over
//! `Host`; TLS end to end through `CONNECT` (the client verifies the origin's certificate);
//! half-close and the idle timeout of tunnels; the 407 flow; refusals by glob, port, CIDR,
//! `block_private` on resolved addresses and the metadata address, each a 403 naming the rule
//! and audited in the access log; the self-loop 508; origin-form requests still routed.
//!
//! Needs `curl` and `python3` with `httpx` and `requests` (scripts/test installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::wait_closed;
use common::tls::{TestPki, make_pki};
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// `alice` / `secret`, bcrypt with cost 4 (fast to verify), made with
/// `htpasswd -nbBC 4 alice secret`.
const ALICE_HASH: &str = "$2y$04$IF8YIw5b9y0mFY.kHaqn1OY6OvVrl/hI1LuPrFH8gQNqtwJufC3wu";

/// A listener `proxy` with `forward_proxy = true`, a respond route for origin-form requests,
/// and `policy` as the body of `[forward_proxy]` (empty: no table at all, every default).
fn proxy_config(policy: &str) -> String {
    let table = if policy.is_empty() { String::new() } else { format!("[forward_proxy]\n{policy}\n") };
    cfg(
        r#"
[listener.proxy]
bind = "127.0.0.1:0"
forward_proxy = true

[[route]]
name = "local"
match = { path = "/local" }
to = { respond = { status = 200, body = "served by the router", headers = { "content-type" = "text/plain" } } }

@TABLE@
"#,
        &[("TABLE", &table)],
    )
}

/// Loopback allowed explicitly (block_private stays on).
const ALLOW_LOOPBACK: &str = r#"allow = ["127.0.0.0/8"]"#;

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Every proxy variable a client could pick up from the test's own environment: the child
/// gets exactly the ones the test sets. `no_proxy` in particular often lists localhost.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

fn scrub_proxy_env(cmd: &mut Command) -> &mut Command {
    for k in PROXY_VARS {
        cmd.env_remove(k);
    }
    cmd
}

/// Like `common::curl`, with these environment variables (and no inherited proxy settings).
fn curl_env(env: &[(&str, &str)], args: &[&str]) -> CurlOut {
    let mut cmd = Command::new("curl");
    scrub_proxy_env(&mut cmd);
    cmd.envs(env.iter().copied());
    common::client::curl_with(cmd, args)
}

/// `http://127.0.0.1:PORT` of the proxy listener.
fn proxy_url(s: &Sumun) -> String {
    format!("http://{}", s.addr("proxy"))
}

/// Runs a Python script with `args`, these environment variables and no inherited proxy
/// settings; panics with its output unless it exits 0.
fn python(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("script.py");
    std::fs::write(&path, script).expect("write script");
    let mut cmd = Command::new("python3");
    scrub_proxy_env(&mut cmd);
    let out = cmd
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run python3 (scripts/test installs it)");
    assert!(
        out.status.success(),
        "python script failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `CONNECT target` (plus `extra` header lines, each ending in CRLF) and reads the
/// answer's head only, byte by byte, so no tunnel byte is consumed. Returns the stream, the
/// status and the head.
fn open_tunnel(proxy: SocketAddr, target: &str, extra: &str) -> (TcpStream, u16, String) {
    let mut s = TcpStream::connect(proxy).expect("connect to the proxy");
    s.set_nodelay(true).ok();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").expect("send CONNECT");
    s.set_read_timeout(Some(T)).ok();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    s.set_read_timeout(None).ok();
    (s, status, head)
}

/// A header of a raw head (`Name: value` lines), case-insensitive.
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

// ---------------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------------

/// An HTTPS origin on 127.0.0.1 (HTTP/1.1 over tokio-rustls) with the test PKI's server
/// certificate, serving fixed files by path and recording the paths asked for.
struct TlsOrigin {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsOrigin {
    /// `files`: (path, content type, body).
    fn start(pki: &TestPki, files: Vec<(String, &'static str, Vec<u8>)>) -> TlsOrigin {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(&pki.key).expect("read key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let files: Arc<HashMap<String, (&'static str, Bytes)>> =
            Arc::new(files.into_iter().map(|(p, ct, b)| (p, (ct, Bytes::from(b)))).collect());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS origin");
        std_l.set_nonblocking(true).expect("nonblocking");
        let addr = std_l.local_addr().expect("addr");
        let listener = {
            let _g = RT.enter();
            tokio::net::TcpListener::from_std(std_l).expect("tokio listener")
        };
        let h = hits.clone();
        let task = RT.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, files, hits) = (acceptor.clone(), files.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (files, hits) = (files.clone(), hits.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            hits.lock().unwrap().push(path.clone());
                            let res = match files.get(&path) {
                                Some((ct, body)) => http::Response::builder()
                                    .header("content-type", *ct)
                                    .body(Full::new(body.clone())),
                                None => http::Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::from_static(b"not found"))),
                            };
                            Ok::<_, Infallible>(res.expect("response"))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin { addr, hits, task }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an echo origin saw: when its peer ended the sending direction (EOF), and when the
/// connection was over on its side.
#[derive(Default)]
struct EchoSeen {
    eof: AtomicBool,
    /// The connection is over on the echo's side (EOF or error).
    done: AtomicBool,
    received: AtomicUsize,
}

/// A TCP echo server: echoes every byte; at EOF it records it, sends `tail: N\n` (N = bytes
/// received) and closes. A half-closed client thus still gets data after its FIN.
fn echo_origin() -> (RawMock, Arc<EchoSeen>) {
    let seen = Arc::new(EchoSeen::default());
    let st = seen.clone();
    let mock = RawMock::start(move |mut s| {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0usize;
        let eof = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    total += n;
                    st.received.store(total, Ordering::SeqCst);
                    if s.write_all(&buf[..n]).is_err() {
                        break false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if eof {
            st.eof.store(true, Ordering::SeqCst);
            let _ = s.write_all(format!("tail: {total}\n").as_bytes());
            let _ = s.shutdown(Shutdown::Both);
        }
        st.done.store(true, Ordering::SeqCst);
    });
    (mock, seen)
}

/// The access-log line of a tunnel (written when it closes): by the request id of the
/// CONNECT answer when it has one, else the CONNECT line for `target`.
fn tunnel_log(s: &Sumun, connect_head: &str, target: &str) -> Value {
    match head_header(connect_head, "x-request-id") {
        Some(rid) => log_of(s, rid),
        None => s
            .stdout
            .wait_json(T, |v| v["method"] == "CONNECT" && v["upstream"] == target)
            .unwrap_or_else(|| panic!("no CONNECT access-log line for {target}:\n{:?}", s.stdout.all())),
    }
}

/// The access-log line of a response (by its `x-request-id`).
fn log_of(s: &Sumun, request_id: &str) -> Value {
    s.access_log(request_id, T)
}

/// A 403 problem+json that names `rule`, audited with `rule`, `error: egress_denied` and the
/// destination as `upstream`.
fn assert_refused(s: &Sumun, out: &CurlOut, rule: &str, upstream: &str) {
    assert_eq!(out.code, 0, "curl failed: {}", out.stderr);
    let v = assert_problem(out, 403);
    let detail = v["detail"].as_str().unwrap_or("");
    assert!(detail.contains(rule), "the 403 detail names the rule `{rule}`: {v}");
    let log = log_of(s, &out.request_id());
    assert_eq!(log["status"], 403, "access log: {log}");
    assert_eq!(log["rule"], rule, "access log rule: {log}");
    assert_eq!(log["error"], "egress_denied", "access log error: {log}");
    assert_eq!(log["upstream"], upstream, "access log upstream: {log}");
    assert_eq!(log["kind"], "forward", "{log}");
    assert_eq!(log["decision"], "denied", "{log}");
    let (host, port) = upstream.rsplit_once(':').unwrap();
    assert_eq!(log["target_host"], host, "{log}");
    assert_eq!(log["target_port"], port.parse::<u16>().unwrap(), "{log}");
}

/// A raw `CONNECT target` refused with a 403 problem+json naming `rule`, audited likewise.
fn assert_connect_refused(s: &Sumun, target: &str, rule: &str) {
    let started = Instant::now();
    let res = raw_request(
        s.addr("proxy"),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        T,
    );
    assert_eq!(res.status, Some(403), "CONNECT {target}: {}", res.text());
    assert!(started.elapsed() < Duration::from_secs(3), "the refusal took {:?}", started.elapsed());
    assert_eq!(res.header("content-type"), Some("application/problem+json"), "{}", res.text());
    let v: Value = serde_json::from_slice(&res.body).unwrap_or_else(|e| panic!("{e}: {}", res.text()));
    assert_eq!(v["status"], 403, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains(rule), "the 403 detail names `{rule}`: {v}");
    let rid = res.header("x-request-id").expect("x-request-id on a 403");
    let log = log_of(s, rid);
    assert_eq!(log["method"], "CONNECT", "{log}");
    assert_eq!(log["rule"], rule, "access log rule: {log}");
    assert_eq!(log["error"], "egress_denied", "access log error: {log}");
    assert_eq!(log["upstream"], target, "access log upstream: {log}");
    assert_eq!(log["kind"], "tunnel", "{log}");
    assert_eq!(log["decision"], "denied", "{log}");
    assert!(log["target_addr"].is_null(), "nothing was connected to: {log}");
}

// ---------------------------------------------------------------------------------------------
// Absolute-form requests
// ---------------------------------------------------------------------------------------------

#[test]
fn absolute_form_get_and_post_reach_the_origin_with_hop_by_hop_stripped() {
    let mock = Mock::start(Behavior::text("from the origin").header("x-origin", "yes"));
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let proxy = proxy_url(&s);
    let env = [("http_proxy", proxy.as_str())];
    let origin = mock.endpoint().to_owned();

    let get = curl_env(
        &env,
        &[
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "-H",
            "Connection: x-foo",
            "-H",
            "X-Foo: must not pass",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "X-Kept: end-to-end",
            &format!("http://{origin}/get/path?q=1&r=two"),
        ],
    );
    assert_eq!(get.code, 0, "curl: {}", get.stderr);
    assert_eq!(get.status, 200, "GET through the proxy: {}", get.text());
    assert_eq!(get.text(), "from the origin");
    assert_eq!(get.header("x-origin"), Some("yes"));
    assert!(
        get.header_all("via").iter().any(|v| v.contains("1.1 sumun")),
        "the response carries sumun's Via: {:?}",
        get.headers
    );

    let r = mock.wait_finished(1, T).remove(0);
    assert_eq!(r.method, "GET");
    assert_eq!(r.path_and_query, "/get/path?q=1&r=two", "origin-form toward the origin");
    assert_eq!(r.header("host"), Some(origin.as_str()), "Host is the URI authority");
    assert_eq!(r.header("x-kept"), Some("end-to-end"));
    for h in ["proxy-connection", "proxy-authorization", "x-foo", "keep-alive"] {
        assert!(!r.has(h), "hop-by-hop `{h}` reached the origin: {:?}", r.headers);
    }
    assert!(
        r.header_all("connection").iter().all(|v| !v.to_ascii_lowercase().contains("x-foo")),
        "Connection naming x-foo reached the origin: {:?}",
        r.headers
    );
    assert!(
        r.header_all("via").iter().any(|v| v.contains("1.1 sumun")),
        "the request carries sumun's Via: {:?}",
        r.headers
    );
    let log = log_of(&s, &get.request_id());
    assert_eq!(log["upstream"], origin, "access log upstream is host:port: {log}");
    assert_eq!(log["status"], 200, "{log}");
    assert!(log.get("error").is_none_or(Value::is_null), "no error on a proxied 200: {log}");
    assert_eq!(log["kind"], "forward", "{log}");
    assert_eq!(log["decision"], "allowed", "{log}");
    assert_eq!(log["target_host"], "127.0.0.1", "{log}");
    assert_eq!(log["bytes_down"], "from the origin".len(), "{log}");

    let body = "a=1&payload=".to_owned() + &"x".repeat(64 * 1024);
    let post = curl_env(
        &env,
        &[
            "-X",
            "POST",
            "--data-binary",
            &body,
            "-H",
            "Content-Type: text/plain",
            &format!("http://{origin}/post"),
        ],
    );
    assert_eq!(post.code, 0, "curl: {}", post.stderr);
    assert_eq!(post.status, 200, "POST through the proxy: {}", post.text());
    let r = mock.wait_finished(2, T).remove(1);
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/post");
    assert!(r.complete, "the body arrived whole");
    assert_eq!(r.body.len(), body.len(), "request body length");
    assert!(r.body == body.as_bytes(), "request body bytes");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("host"), Some(origin.as_str()));
    let log = log_of(&s, &post.request_id());
    assert_eq!(log["method"], "POST", "{log}");
    assert_eq!(log["bytes_up"], body.len(), "request body bytes sent to the origin: {log}");
}

#[test]
fn absolute_form_uri_wins_over_a_conflicting_host() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let origin = mock.endpoint().to_owned();
    let res = raw_request(
        s.addr("proxy"),
        format!(
            "GET http://{origin}/which-host HTTP/1.1\r\nHost: evil.example:8080\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        T,
    );
    assert_eq!(res.status, Some(200), "{}", res.text());
    assert_eq!(res.body, b"ok");
    let r = mock.only();
    assert_eq!(r.path, "/which-host");
    assert_eq!(r.header_all("host"), vec![origin.clone()], "Host rewritten to the URI authority");
    let log = log_of(&s, res.header("x-request-id").expect("x-request-id"));
    assert_eq!(log["upstream"], origin, "the URI's authority is the destination: {log}");
}

// ---------------------------------------------------------------------------------------------
// CONNECT tunnels
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_tunnel_carries_tls_end_to_end_for_curl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let origin = TlsOrigin::start(
        &pki,
        vec![("/secret".into(), "text/plain", b"only the client can read this".to_vec())],
    );
    // `localhost` resolves to 127.0.0.1 (and maybe ::1): private, so allowed by CIDR.
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let proxy = proxy_url(&s);
    let env = [("https_proxy", proxy.as_str())];
    let url = format!("https://localhost:{}/secret", origin.port());
    let ca = pki.ca.to_str().unwrap();

    // No -k: curl verifies the origin's certificate against the test CA.
    let out = curl_env(&env, &["--cacert", ca, &url]);
    assert_eq!(out.code, 0, "curl through the tunnel: {}", out.stderr);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.text(), "only the client can read this");
    assert_eq!(origin.hits(), vec!["/secret".to_owned()], "the origin served it");

    // The client really verified the origin: without the test CA, the same request fails
    // certificate verification (curl exit 60) — TLS is between curl and the origin.
    let unverified = curl_env(&env, &[&url]);
    assert_eq!(unverified.code, 60, "curl must reject the certificate without the CA: {}", unverified.stderr);

    let target = format!("localhost:{}", origin.port());
    let log = s
        .stdout
        .wait_json(T, |v| v["method"] == "CONNECT" && v["upstream"] == target.as_str())
        .unwrap_or_else(|| panic!("no CONNECT access-log line for {target}:\n{:?}", s.stdout.all()));
    assert_eq!(log["status"], 200, "{log}");
    assert_eq!(log["kind"], "tunnel", "{log}");
    assert_eq!(log["target_host"], "localhost", "{log}");
    assert_eq!(log["target_addr"], "127.0.0.1", "the CIDR-allowed address: {log}");
    assert!(log["bytes_up"].as_u64().is_some_and(|n| n > 0), "TLS bytes went up: {log}");
    assert!(log["bytes_down"].as_u64().is_some_and(|n| n > 0), "TLS bytes came down: {log}");
}

#[test]
fn connect_tunnel_streams_both_ways_and_passes_on_half_close() {
    let (echo, seen) = echo_origin();
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let (mut tunnel, status, head) = open_tunnel(s.addr("proxy"), &echo.endpoint(), "");
    assert_eq!(status, 200, "CONNECT answer: {head}");
    assert!(
        head_header(&head, "content-length").is_none_or(|v| v == "0"),
        "no body on a 2xx CONNECT: {head}"
    );
    assert!(head_header(&head, "transfer-encoding").is_none(), "no body on a 2xx CONNECT: {head}");

    // 256 KiB up on one thread while this one reads the echo: neither direction waits on the
    // other. Then the writer ends its sending direction only (FIN).
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut writer = tunnel.try_clone().expect("clone");
    let up = payload.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&up).expect("write through the tunnel");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut echoed = vec![0u8; payload.len()];
    tunnel.set_read_timeout(Some(T)).ok();
    tunnel.read_exact(&mut echoed).expect("read the echo");
    assert!(echoed == payload, "the echo came back byte for byte");
    w.join().expect("writer");

    // The origin sees our FIN through the tunnel, still sends its tail, then closes; the
    // client reads the tail and then EOF.
    let (closed, rest) = wait_closed(&mut tunnel, T);
    assert!(seen.eof.load(Ordering::SeqCst), "the origin saw EOF after the client's half-close");
    assert_eq!(
        String::from_utf8_lossy(&rest),
        format!("tail: {}\n", payload.len()),
        "data sent after the half-close reached the client"
    );
    assert!(closed, "the tunnel closed once both directions ended");
    assert_eq!(seen.received.load(Ordering::SeqCst), payload.len());

    // One access-log line for the tunnel, written when it closed, with the bytes each way.
    let log = tunnel_log(&s, &head, &echo.endpoint());
    assert_eq!(log["status"], 200, "{log}");
    assert_eq!(log["kind"], "tunnel", "{log}");
    assert_eq!(log["decision"], "allowed", "{log}");
    assert_eq!(log["target_addr"], "127.0.0.1", "{log}");
    assert_eq!(log["bytes_up"], payload.len(), "client → origin bytes: {log}");
    assert_eq!(log["bytes_down"], payload.len() + rest.len(), "origin → client bytes: {log}");
    assert!(log.get("error").is_none_or(Value::is_null), "a clean close: {log}");
}

#[test]
fn tunnel_idle_timeout_closes_a_quiet_tunnel() {
    let (echo, seen) = echo_origin();
    let s = Sumun::start(&proxy_config(&format!("{ALLOW_LOOPBACK}\ntunnel_idle_timeout = \"1s\"")));
    let (mut tunnel, status, head) = open_tunnel(s.addr("proxy"), &echo.endpoint(), "");
    assert_eq!(status, 200, "CONNECT answer: {head}");
    tunnel.set_read_timeout(Some(T)).ok();

    // Traffic keeps it open past the idle timeout: a byte every 300 ms for 1.5 s (the pause
    // paces the traffic; no state is waited for).
    let busy = Instant::now();
    let mut last_write = busy;
    while busy.elapsed() < Duration::from_millis(1500) {
        last_write = Instant::now();
        tunnel.write_all(b"k").expect("tunnel still open while busy");
        let mut b = [0u8; 1];
        tunnel.read_exact(&mut b).expect("echo while busy (closed despite traffic?)");
        assert_eq!(&b, b"k");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Then silence: sumun closes both sides within a few seconds.
    let (closed, got) = wait_closed(&mut tunnel, Duration::from_secs(6));
    // sumun read our last byte after `last_write`: the close came at least the idle timeout
    // (less a little rounding) after it.
    let silence = last_write.elapsed();
    assert!(closed, "a quiet tunnel was not closed within 6 s (tunnel_idle_timeout = 1s)");
    assert!(got.is_empty(), "unexpected bytes: {got:?}");
    assert!(silence >= Duration::from_millis(950), "closed after only {silence:?} of silence");
    wait_for(T, "the origin side of the idle tunnel to be closed", || {
        seen.done.load(Ordering::SeqCst).then_some(())
    });
    let log = tunnel_log(&s, &head, &echo.endpoint());
    assert_eq!(log["error"], "idle_timeout", "{log}");
    assert_eq!(log["bytes_up"], log["bytes_down"], "every byte was echoed: {log}");
}

// ---------------------------------------------------------------------------------------------
// Python clients
// ---------------------------------------------------------------------------------------------

/// A plain HTTP mock and an HTTPS origin (serving `/tls`) for the Python clients.
fn python_origins(dir: &Path) -> (Mock, TlsOrigin, TestPki) {
    let pki = make_pki(dir);
    let mock = Mock::start(Behavior::text("plain hello"));
    let origin = TlsOrigin::start(&pki, vec![("/tls".into(), "text/plain", b"tls hello".to_vec())]);
    (mock, origin, pki)
}

fn check_python_result(s: &Sumun, out: &Output, mock: &Mock, origin: &TlsOrigin) {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("script output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    assert_eq!(v["http"]["status"], 200, "{v}");
    assert_eq!(v["http"]["body"], "plain hello", "{v}");
    assert!(
        v["http"]["via"].as_str().is_some_and(|via| via.contains("sumun")),
        "http went through sumun: {v}"
    );
    assert_eq!(v["https"]["status"], 200, "{v}");
    assert_eq!(v["https"]["body"], "tls hello", "{v}");
    let r = mock.only();
    assert!(r.header("via").is_some_and(|via| via.contains("sumun")), "{:?}", r.headers);
    assert_eq!(r.header("host"), Some(mock.endpoint()));
    assert_eq!(origin.hits(), vec!["/tls".to_owned()]);
    let target = format!("localhost:{}", origin.port());
    s.stdout
        .wait_json(T, |l| l["method"] == "CONNECT" && l["upstream"] == target.as_str() && l["status"] == 200)
        .unwrap_or_else(|| panic!("no CONNECT access-log line for {target}:\n{:?}", s.stdout.all()));
}

#[test]
fn python_httpx_through_the_proxy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mock, origin, pki) = python_origins(dir.path());
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let proxy = proxy_url(&s);
    // httpx reads HTTP_PROXY / HTTPS_PROXY from the environment (trust_env, the default).
    let script = r#"
import json, ssl, sys
import httpx
http_url, https_url, ca = sys.argv[1:4]
out = {}
with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=20) as c:
    r = c.get(http_url)
    out["http"] = {"status": r.status_code, "body": r.text, "via": r.headers.get("via")}
    r = c.get(https_url)
    out["https"] = {"status": r.status_code, "body": r.text}
print(json.dumps(out))
"#;
    let out = python(
        script,
        &[
            &format!("http://{}/plain", mock.endpoint()),
            &format!("https://localhost:{}/tls", origin.port()),
            pki.ca.to_str().unwrap(),
        ],
        &[("HTTP_PROXY", &proxy), ("HTTPS_PROXY", &proxy)],
    );
    check_python_result(&s, &out, &mock, &origin);
}

#[test]
fn python_requests_through_the_proxy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mock, origin, pki) = python_origins(dir.path());
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let proxy = proxy_url(&s);
    let script = r#"
import json, sys
import requests
proxy, http_url, https_url, ca = sys.argv[1:5]
proxies = {"http": proxy, "https": proxy}
out = {}
r = requests.get(http_url, proxies=proxies, timeout=20)
out["http"] = {"status": r.status_code, "body": r.text, "via": r.headers.get("via")}
r = requests.get(https_url, proxies=proxies, verify=ca, timeout=20)
out["https"] = {"status": r.status_code, "body": r.text}
print(json.dumps(out))
"#;
    let out = python(
        script,
        &[
            &proxy,
            &format!("http://{}/plain", mock.endpoint()),
            &format!("https://localhost:{}/tls", origin.port()),
            pki.ca.to_str().unwrap(),
        ],
        &[],
    );
    check_python_result(&s, &out, &mock, &origin);
}

/// Writes a minimal pure-Python wheel (METADATA, WHEEL, RECORD) and returns its sha256.
const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
path = sys.argv[1]
info = "sumun_probe-0.1.dist-info"
files = {
    "sumun_probe/__init__.py": b"VALUE = 42\n",
    info + "/METADATA": b"Metadata-Version: 2.1\nName: sumun-probe\nVersion: 0.1\nSummary: e2e test package\n",
    info + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: sumun-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append(info + "/RECORD,,")
files[info + "/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        z.writestr(name, data)
print(hashlib.sha256(open(path, "rb").read()).hexdigest())
"#;

#[test]
fn pip_download_through_the_tunnel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = make_pki(dir.path());
    let wheel_name = "sumun_probe-0.1-py3-none-any.whl";
    let wheel_path = dir.path().join(wheel_name);
    let made = python(MAKE_WHEEL, &[wheel_path.to_str().unwrap()], &[]);
    let sha = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let wheel = std::fs::read(&wheel_path).expect("wheel");
    let index = format!(
        "<!DOCTYPE html>\n<html><body>\n<a href=\"/files/{wheel_name}#sha256={sha}\">{wheel_name}</a>\n</body></html>\n"
    );
    let origin = TlsOrigin::start(
        &pki,
        vec![
            ("/simple/sumun-probe/".into(), "text/html", index.clone().into_bytes()),
            ("/simple/sumun-probe".into(), "text/html", index.into_bytes()),
            (format!("/files/{wheel_name}"), "application/octet-stream", wheel.clone()),
        ],
    );
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let proxy = proxy_url(&s);
    let dest = dir.path().join("downloads");
    let index_url = format!("https://localhost:{}/simple/", origin.port());

    let mut cmd = Command::new("python3");
    scrub_proxy_env(&mut cmd);
    // requests (inside pip) lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override `--cert`.
    for k in [
        "PIP_FIND_LINKS",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_CERT",
        "PIP_NO_INDEX",
        "PIP_PROXY",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        cmd.env_remove(k);
    }
    let out = cmd
        .env("HTTPS_PROXY", &proxy)
        // No pip.conf: nothing but the command line decides where pip looks.
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--retries", "0", "--timeout", "20"])
        .args(["--index-url", &index_url, "--cert", pki.ca.to_str().unwrap(), "-d"])
        .arg(&dest)
        .arg("sumun-probe")
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip download failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(dest.join(wheel_name)).expect("the wheel was downloaded");
    assert!(got == wheel, "the downloaded wheel is byte for byte the served one");
    let hits = origin.hits();
    assert!(hits.iter().any(|p| p.starts_with("/simple/sumun-probe")), "pip read the index: {hits:?}");
    assert!(hits.contains(&format!("/files/{wheel_name}")), "pip fetched the wheel: {hits:?}");
    let target = format!("localhost:{}", origin.port());
    s.stdout
        .wait_json(T, |l| l["method"] == "CONNECT" && l["upstream"] == target.as_str() && l["status"] == 200)
        .unwrap_or_else(|| panic!("pip did not tunnel through sumun to {target}:\n{:?}", s.stdout.all()));
}

// ---------------------------------------------------------------------------------------------
// Proxy authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn proxy_auth_407_then_200_with_the_right_password() {
    let mock = Mock::start(Behavior::text("authenticated"));
    let (echo, _seen) = echo_origin();
    let s = Sumun::start(&proxy_config(&format!(
        "{ALLOW_LOOPBACK}\n\n[forward_proxy.users.alice]\npassword_hash = '{ALICE_HASH}'\n"
    )));
    let proxy = proxy_url(&s);
    let env = [("http_proxy", proxy.as_str())];
    let url = format!("http://{}/private", mock.endpoint());

    let none = curl_env(&env, &[&url]);
    assert_eq!(none.code, 0, "curl: {}", none.stderr);
    assert_problem(&none, 407);
    let log = log_of(&s, &none.request_id());
    assert_eq!(log["error"], "proxy_auth_required", "{log}");
    assert_eq!(log["decision"], "auth_required", "{log}");
    let challenge = none.header("proxy-authenticate").expect("Proxy-Authenticate on a 407");
    assert!(challenge.starts_with("Basic "), "a Basic challenge: {challenge}");
    assert!(challenge.contains("realm="), "with a realm: {challenge}");

    let wrong = curl_env(&env, &["-U", "alice:wrong", &url]);
    assert_problem(&wrong, 407);
    assert!(wrong.header("proxy-authenticate").is_some_and(|c| c.starts_with("Basic ")));
    let unknown = curl_env(&env, &["-U", "mallory:secret", &url]);
    assert_problem(&unknown, 407);
    assert_eq!(mock.count(), 0, "nothing reached the origin without valid credentials");

    let right = curl_env(&env, &["-U", "alice:secret", &url]);
    assert_eq!(right.code, 0, "curl: {}", right.stderr);
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(right.text(), "authenticated");
    let r = mock.only();
    assert!(!r.has("proxy-authorization"), "credentials were forwarded to the origin: {:?}", r.headers);
    let log = log_of(&s, &right.request_id());
    assert_eq!(log["user"], "alice", "the authenticated user is audited: {log}");

    // CONNECT too: 407 without credentials, a tunnel with them.
    let (_t, status, head) = open_tunnel(s.addr("proxy"), &echo.endpoint(), "");
    assert_eq!(status, 407, "CONNECT without credentials: {head}");
    assert!(head_header(&head, "proxy-authenticate").is_some_and(|c| c.starts_with("Basic ")), "{head}");
    // base64("alice:secret")
    let (mut t, status, head) =
        open_tunnel(s.addr("proxy"), &echo.endpoint(), "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n");
    assert_eq!(status, 200, "CONNECT with credentials: {head}");
    t.write_all(b"hi").expect("write");
    let mut b = [0u8; 2];
    t.set_read_timeout(Some(T)).ok();
    t.read_exact(&mut b).expect("echo");
    assert_eq!(&b, b"hi");
}

// ---------------------------------------------------------------------------------------------
// Egress policy
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_denies_by_glob_port_and_cidr_naming_the_rule() {
    let mock = Mock::start(Behavior::text("allowed"));
    // `*.blocked.test` is in both lists: deny wins. Denied names are refused before any DNS
    // query, so they need not resolve.
    let s = Sumun::start(&proxy_config(
        r#"allow = ["127.0.0.0/8", "*.blocked.test"]
deny = ["*.blocked.test", "*:22", "127.0.0.2/32"]"#,
    ));
    let proxy = proxy_url(&s);
    let env = [("http_proxy", proxy.as_str())];
    let port = mock.endpoint().rsplit_once(':').unwrap().1.to_owned();

    let out = curl_env(&env, &["http://www.blocked.test/x"]);
    assert_refused(&s, &out, "deny[0]", "www.blocked.test:80");
    assert_connect_refused(&s, "api.blocked.test:443", "deny[0]");

    let out = curl_env(&env, &["http://127.0.0.1:22/"]);
    assert_refused(&s, &out, "deny[1]", "127.0.0.1:22");
    assert_connect_refused(&s, "127.0.0.1:22", "deny[1]");

    let out = curl_env(&env, &[&format!("http://127.0.0.2:{port}/")]);
    assert_refused(&s, &out, "deny[2]", &format!("127.0.0.2:{port}"));
    assert_connect_refused(&s, &format!("127.0.0.2:{port}"), "deny[2]");

    assert_eq!(mock.count(), 0, "no refused request reached the origin");
    // The rest of 127.0.0.0/8 is allowed.
    let ok = curl_env(&env, &[&format!("http://127.0.0.1:{port}/fine")]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), "allowed");
}

#[test]
fn a_name_allow_does_not_unlock_a_private_address() {
    let mock = Mock::start(Behavior::text("must not be reached"));
    let s = Sumun::start(&proxy_config(r#"allow = ["localhost"]"#));
    let proxy = proxy_url(&s);
    let port = mock.endpoint().rsplit_once(':').unwrap().1.to_owned();
    // `localhost` matches the allow rule by name, but resolves to loopback: block_private.
    let out = curl_env(&[("http_proxy", proxy.as_str())], &[&format!("http://localhost:{port}/")]);
    assert_refused(&s, &out, "block_private", &format!("localhost:{port}"));
    assert_connect_refused(&s, &format!("localhost:{port}"), "block_private");
    assert_eq!(mock.count(), 0);
    assert_eq!(mock.connections(), 0, "no connection to a refused address");
}

#[test]
fn metadata_and_loopback_are_refused_by_default() {
    let mock = Mock::start(Behavior::text("must not be reached"));
    // No [forward_proxy] table: every default, block_private on.
    let s = Sumun::start(&proxy_config(""));
    let proxy = proxy_url(&s);
    let env = [("http_proxy", proxy.as_str())];

    // Refused before any connection: an attempt toward 169.254.169.254 would hang or fail
    // slowly (the default connect_timeout is 10 s) instead of answering 403 at once.
    let started = Instant::now();
    let out = curl_env(&env, &["http://169.254.169.254/latest/meta-data/"]);
    assert!(started.elapsed() < Duration::from_secs(3), "refusal took {:?}", started.elapsed());
    assert_refused(&s, &out, "block_private", "169.254.169.254:80");
    assert_connect_refused(&s, "169.254.169.254:80", "block_private");

    let out = curl_env(&env, &[&format!("http://{}/", mock.endpoint())]);
    assert_refused(&s, &out, "block_private", mock.endpoint());
    assert_eq!(mock.connections(), 0, "loopback is not reachable without an explicit allow");
}

// ---------------------------------------------------------------------------------------------
// Loops and routing
// ---------------------------------------------------------------------------------------------

#[test]
fn a_proxy_pointed_at_itself_answers_508() {
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    let proxy = proxy_url(&s);
    // The target is the proxy's own listener: it forwards to itself, and the second pass
    // sees its own Via entry.
    let out = curl_env(&[("http_proxy", proxy.as_str())], &[&format!("{proxy}/loop")]);
    assert_eq!(out.code, 0, "curl: {}", out.stderr);
    assert_eq!(out.status, 508, "self-loop: {}", out.text());
    assert_eq!(out.header("content-type"), Some("application/problem+json"), "{}", out.text());
    assert_no_leak(&out, &[]);

    // A request that already carries our Via entry is a loop before anything is sent.
    let res = raw_request(
        s.addr("proxy"),
        format!(
            "GET {proxy}/again HTTP/1.1\r\nHost: {}\r\nVia: 1.1 sumun\r\nConnection: close\r\n\r\n",
            s.addr("proxy")
        )
        .as_bytes(),
        T,
    );
    assert_eq!(res.status, Some(508), "{}", res.text());
}

#[test]
fn origin_form_requests_on_the_proxy_listener_are_routed() {
    let mock = Mock::start(Behavior::text("proxied"));
    let s = Sumun::start(&proxy_config(ALLOW_LOOPBACK));
    // No proxy: origin-form to the router.
    let out = curl(&[&s.url("proxy", "/local")]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.text(), "served by the router");
    let log = log_of(&s, &out.request_id());
    assert_eq!(log["route"], "local", "{log}");
    // The same port proxies absolute-form.
    let out = curl_env(&[("http_proxy", &proxy_url(&s))], &[&format!("http://{}/p", mock.endpoint())]);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.text(), "proxied");
    assert_eq!(mock.only().path, "/p");
}

#[test]
fn a_tunnel_keeps_its_connection_slot_until_it_closes() {
    let (origin, _seen) = echo_origin();
    let config = proxy_config(ALLOW_LOOPBACK)
        .replace("forward_proxy = true", "forward_proxy = true\nlimits = { max_connections = 1 }");
    let s = Sumun::start(&config);
    let proxy = s.addr("proxy");
    let (tunnel, status, head) = open_tunnel(proxy, &origin.endpoint(), "");
    assert_eq!(status, 200, "{head}");

    // The only slot is the tunnel's: a second connection waits in the backlog, unanswered.
    let mut second = TcpStream::connect(proxy).unwrap();
    second.write_all(b"GET /local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    second.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    let early = second.read(&mut buf);
    assert!(early.is_err(), "served while the tunnel held the only slot: {early:?}");

    // Closing the tunnel frees the slot; the waiting connection is served.
    drop(tunnel);
    second.set_read_timeout(Some(T)).unwrap();
    let mut out = Vec::new();
    let _ = second.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("served by the router"), "{text}");
}
