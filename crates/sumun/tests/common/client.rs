//! Clients: curl (parsed status, headers, body, exit code), a raw HTTP/1 client over
//! `std::net::TcpStream` with a small response parser, and hyper clients (HTTP/1.1, h2c).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What curl got.
#[derive(Debug, Clone)]
pub struct CurlOut {
    /// curl's exit code (0 = complete transfer).
    pub code: i32,
    /// "HTTP/1.1", "HTTP/2", … from the status line of the last response.
    pub version: String,
    pub status: u16,
    pub status_line: String,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlOut {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn request_id(&self) -> String {
        self.header("x-request-id").expect("response without x-request-id").to_owned()
    }
}

/// Runs `curl -sS` with `args` (URL included), a 30 s cap, and parses the last response head.
pub fn curl(args: &[&str]) -> CurlOut {
    curl_with(Command::new("curl"), args)
}

/// Runs `cmd` (a `curl` command the caller prepared, e.g. with its own environment) with
/// `args`, capturing the last response head and the body.
pub fn curl_with(mut cmd: Command, args: &[&str]) -> CurlOut {
    let dir = tempfile::tempdir().expect("temp dir");
    let head = dir.path().join("head");
    let body = dir.path().join("body");
    let out = cmd
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("run curl");
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    let body = std::fs::read(&body).unwrap_or_default();
    // Interim responses (100 Continue, a CONNECT answer through https_proxy) come first; keep
    // the last head.
    let block = head_text.split("\r\n\r\n").filter(|b| b.starts_with("HTTP/")).last().unwrap_or("");
    let mut lines = block.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_owned();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("").to_owned();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    CurlOut {
        code: out.status.code().unwrap_or(-1),
        version,
        status,
        status_line,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A response read off a raw connection.
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    pub status: Option<u16>,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The whole message was framed and read.
    pub complete: bool,
    /// The peer closed the connection (after or instead of a response).
    pub closed: bool,
    /// Everything read, for diagnostics.
    pub raw: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.trailers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Connects, writes `bytes`, and reads one response (or until close / `timeout`).
pub fn raw_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> RawResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    // A server may answer and close before taking the whole request: ignore write errors.
    let _ = s.write_all(bytes);
    read_response(&mut s, timeout)
}

/// Reads one HTTP/1.1 response from `s`: head, then a Content-Length, chunked (with
/// trailers) or read-until-close body. Stops at `timeout` with what it has.
pub fn read_response(s: &mut TcpStream, timeout: Duration) -> RawResponse {
    let deadline = Instant::now() + timeout;
    let mut r = RawResponse::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut fill = |buf: &mut Vec<u8>, r: &mut RawResponse| -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        s.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1)))).ok();
        match s.read(&mut chunk) {
            Ok(0) => {
                r.closed = true;
                false
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                r.raw.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                false
            }
            Err(_) => {
                r.closed = true;
                false
            }
        }
    };
    // Head.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(&mut buf, &mut r) {
            r.head = String::from_utf8_lossy(&buf).into_owned();
            r.status = parse_status(&r.head);
            return r;
        }
    };
    r.head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    r.status = parse_status(&r.head);
    r.headers = r
        .head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest: Vec<u8> = buf[head_end..].to_vec();
    let status = r.status.unwrap_or(0);
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    if no_body {
        r.complete = true;
        return r;
    }
    let chunked = r.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // Decode chunks.
        let mut pos = 0;
        loop {
            let Some(eol) = find(&rest[pos..], b"\r\n") else {
                if !fill(&mut rest, &mut r) {
                    return r;
                }
                continue;
            };
            let line = String::from_utf8_lossy(&rest[pos..pos + eol]).into_owned();
            let size_txt = line.split(';').next().unwrap_or("").trim().to_owned();
            let Ok(size) = usize::from_str_radix(&size_txt, 16) else {
                return r;
            };
            if size == 0 {
                // Trailers until an empty line.
                let tpos = pos + eol + 2;
                loop {
                    if rest.len() >= tpos + 2 && &rest[tpos..tpos + 2] == b"\r\n" {
                        r.complete = true;
                        return r;
                    }
                    if let Some(end) = find(&rest[tpos..], b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&rest[tpos..tpos + end]).into_owned();
                        r.trailers = text
                            .split("\r\n")
                            .filter_map(|l| l.split_once(':'))
                            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        r.complete = true;
                        return r;
                    }
                    if !fill(&mut rest, &mut r) {
                        return r;
                    }
                }
            }
            let start = pos + eol + 2;
            while rest.len() < start + size + 2 {
                if !fill(&mut rest, &mut r) {
                    let end = rest.len().min(start + size);
                    if end > start {
                        r.body.extend_from_slice(&rest[start..end]);
                    }
                    return r;
                }
            }
            r.body.extend_from_slice(&rest[start..start + size]);
            pos = start + size + 2;
        }
    } else if let Some(len) = r.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            if !fill(&mut rest, &mut r) {
                r.body = rest;
                return r;
            }
        }
        r.body = rest[..len].to_vec();
        r.complete = true;
        r
    } else {
        while fill(&mut rest, &mut r) {}
        r.complete = r.closed;
        r.body = rest;
        r
    }
}

fn parse_status(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    if !line.starts_with("HTTP/") {
        return None;
    }
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Waits until the peer closes `s` (read returns 0 or an error) or `timeout`; returns whether
/// it closed. Bytes read meanwhile are returned too.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (false, got);
        }
        s.set_read_timeout(Some(deadline - now)).ok();
        match s.read(&mut b) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (true, got),
        }
    }
}

/// An HTTP/1.1 hyper client connection to `addr` (driven on the shared runtime).
pub async fn h1_connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/2 prior-knowledge (h2c) hyper client connection to `addr`.
pub async fn h2c_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Collects a response: head, body bytes, trailers.
pub async fn collect(res: Response<Incoming>) -> (http::response::Parts, Bytes, Option<HeaderMap>) {
    use http_body_util::BodyExt;
    let (parts, body) = res.into_parts();
    let c = body.collect().await.expect("response body");
    let trailers = c.trailers().cloned();
    (parts, c.to_bytes(), trailers)
}

/// A GET request for hyper clients.
pub fn get(uri: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(uri).body(http_body_util::Empty::new()).expect("request")
}
