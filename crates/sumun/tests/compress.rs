//! Response compression and request decompression through the real binary: curl and the
//! Python clients (requests, httpx) decode what sumun compressed, small and binary bodies
//! and event streams go out as they are, a compressed stream still arrives chunk by chunk,
//! and compressed uploads reach the upstream decoded, with zip bombs refused (413).
//!
//! Needs `curl` (with brotli and zstd) and `python3` with `requests`, `httpx`, `brotli` and
//! `zstandard` (scripts/test installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::client::h1_connect;
use common::*;
use http::Request;
use http_body_util::BodyExt;

const T: Duration = Duration::from_secs(10);

/// A deterministic JSON array of objects, at least `len` bytes long.
fn json_listing(len: usize) -> Vec<u8> {
    let mut doc = b"[".to_vec();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut i = 0u64;
    while doc.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if i > 0 {
            doc.push(b',');
        }
        let item = serde_json::json!({
            "id": i,
            "uuid": format!("{x:016x}"),
            "name": format!("user-{}", x % 100_000),
            "email": format!("u{}@example.com", x % 977),
            "active": x % 3 == 0,
            "score": (x % 10_000) as f64 / 100.0,
            "city": (["Seoul", "Busan", "Paris", "Lima"][(x % 4) as usize]),
        });
        doc.extend_from_slice(&serde_json::to_vec(&item).unwrap());
        i += 1;
    }
    doc.push(b']');
    doc
}

struct Setup {
    up: Mock,
    s: Sumun,
    json: Vec<u8>,
    events: Gate,
    stream: Gate,
}

const FIRST_EVENT: &[u8] = b"data: {\"n\":1}\n\n";
const REST_EVENTS: &[u8] = b"data: {\"n\":2}\n\ndata: {\"n\":3}\n\n";
const FIRST_CHUNK: &[u8] = b"{\"progress\":[{\"step\":1,\"status\":\"started\"}";
const REST_CHUNK: &[u8] = b",{\"step\":2,\"status\":\"done\"}]}";

fn setup() -> Setup {
    let json = json_listing(100 * 1024);
    let events = Gate::new();
    let stream = Gate::new();
    let (j, ev, st) = (Bytes::from(json.clone()), events.clone(), stream.clone());
    let up = Mock::start_opts(MockOpts::default(), move |parts| match parts.uri.path() {
        "/api/json" => Behavior::text("")
            .header("content-type", "application/json")
            .header("etag", "\"listing-v1\"")
            .payload(Payload::Bytes(j.clone())),
        "/api/small" => Behavior::text("{\"ok\":true}").header("content-type", "application/json"),
        "/api/png" => Behavior::text("")
            .header("content-type", "image/png")
            .payload(Payload::Bytes(Bytes::from(vec![0x89; 64 * 1024]))),
        "/api/events" => {
            Behavior::text("").header("content-type", "text/event-stream").payload(Payload::Gated {
                first: Bytes::from_static(FIRST_EVENT),
                gate: ev.clone(),
                rest: Bytes::from_static(REST_EVENTS),
            })
        }
        "/api/stream" => {
            Behavior::text("").header("content-type", "application/json").payload(Payload::Gated {
                first: Bytes::from_static(FIRST_CHUNK),
                gate: st.clone(),
                rest: Bytes::from_static(REST_CHUNK),
            })
        }
        _ => Behavior::text("stored").header("content-type", "text/plain").discard_body(),
    });
    let s = Sumun::start(&cfg(
        r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "api"
match = { path_prefix = "/api" }
to = { upstream = "up" }
compress = { decompress_requests = true, max_ratio = 100 }
max_body = "20MiB"

[[route]]
name = "echo"
match = { path_prefix = "/echo" }
to = { echo = true }
compress = { decompress_requests = true }
max_body = "20MiB"
"#,
        &[("UP", up.endpoint())],
    ));
    Setup { up, s, json, events, stream }
}

/// Runs `python3 -c script args…`; panics with its output unless it exits 0. Returns stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env("NO_PROXY", "*")
        .output()
        .expect("run python3 (scripts/test installs it)");
    assert!(
        out.status.success(),
        "python failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Decodes `data` (a file) from `coding` with Python's gzip/brotli/zstandard; writes `out`.
fn py_decode(coding: &str, data: &Path, out: &Path) {
    python(
        r#"
import sys, gzip, brotli, zstandard
coding, src, dst = sys.argv[1:4]
raw = open(src, "rb").read()
if coding == "gzip":
    plain = gzip.decompress(raw)
elif coding == "br":
    plain = brotli.decompress(raw)
else:
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
open(dst, "wb").write(plain)
"#,
        &[coding, data.to_str().unwrap(), out.to_str().unwrap()],
    );
}

/// Encodes the file `src` into `dst` with Python's gzip/brotli/zstandard.
fn py_encode(coding: &str, src: &Path, dst: &Path) {
    python(
        r#"
import sys, gzip, brotli, zstandard
coding, src, dst = sys.argv[1:4]
plain = open(src, "rb").read()
if coding == "gzip":
    raw = gzip.compress(plain, 6)
elif coding == "br":
    raw = brotli.compress(plain, quality=5)
else:
    raw = zstandard.ZstdCompressor(level=3).compress(plain)
open(dst, "wb").write(raw)
"#,
        &[coding, src.to_str().unwrap(), dst.to_str().unwrap()],
    );
}

#[test]
fn curl_gets_each_encoding_and_decodes_it() {
    let t = setup();
    let url = t.s.url("web", "/api/json");
    let dir = tempfile::tempdir().unwrap();
    for coding in ["gzip", "br", "zstd"] {
        // The bytes on the wire.
        let raw = curl(&["-H", &format!("accept-encoding: {coding}"), &url]);
        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("content-encoding"), Some(coding));
        assert_eq!(raw.header("content-length"), None, "{coding}: the length changed");
        assert_eq!(raw.header("vary"), Some("Accept-Encoding"));
        assert_eq!(raw.header("etag"), Some("W/\"listing-v1\""), "{coding}: a weak validator");
        assert!(
            raw.body.len() * 4 < t.json.len(),
            "{coding}: {} bytes for a {} byte JSON",
            raw.body.len(),
            t.json.len()
        );
        // Python's own decoders agree.
        let (z, plain) = (dir.path().join(format!("z.{coding}")), dir.path().join(format!("p.{coding}")));
        std::fs::write(&z, &raw.body).unwrap();
        py_decode(coding, &z, &plain);
        assert_eq!(std::fs::read(&plain).unwrap(), t.json, "{coding}: python decodes it back");
        // curl decodes it itself.
        let dec = curl(&["--compressed", "-H", &format!("accept-encoding: {coding}"), &url]);
        assert_eq!(dec.header("content-encoding"), Some(coding));
        assert_eq!(dec.body, t.json, "{coding}: curl --compressed decodes it back");
    }
    // curl's own offer (deflate, gzip, br, zstd): the route's first choice.
    let out = curl(&["--compressed", &url]);
    assert_eq!(out.header("content-encoding"), Some("zstd"));
    assert_eq!(out.body, t.json);
    // Without Accept-Encoding: identity, still with Vary.
    let plain = curl(&[&url]);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("content-length"), Some(t.json.len().to_string().as_str()));
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_eq!(plain.header("etag"), Some("\"listing-v1\""));
    assert_eq!(plain.body, t.json);
    // HEAD: the same Vary, nothing encoded.
    let head = curl(&["-I", "-H", "accept-encoding: gzip", &url]);
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(head.header("vary"), Some("Accept-Encoding"));
    // Counted by encoding.
    let admin = t.s.admin_addr().expect("admin listener");
    let metrics = curl(&[&format!("http://{admin}/metrics")]).text();
    for coding in ["gzip", "br", "zstd"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("sumun_compressed_responses_total{{encoding=\"{coding}\"}}"))),
            "{coding} in:\n{metrics}"
        );
    }
    assert!(metrics.contains("sumun_compression_bytes_in_total{encoding=\"zstd\"}"), "{metrics}");
}

#[test]
fn requests_and_httpx_decode_what_they_asked_for() {
    let t = setup();
    let url = t.s.url("web", "/api/json");
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.json");
    std::fs::write(&expected, &t.json).unwrap();
    let out = python(
        r#"
import sys, requests, httpx
url, expected = sys.argv[1], open(sys.argv[2], "rb").read()
seen = []
def check(client, r, want):
    enc = r.headers.get("content-encoding")
    assert r.status_code == 200, (client, r.status_code)
    assert enc == want, (client, enc, want)
    assert r.content == expected, (client, want, len(r.content))
    seen.append(f"{client}:{enc}")
s = requests.Session()
s.trust_env = False
# requests offers gzip, deflate, br (with brotli installed): br is our first among those.
check("requests", s.get(url), "br")
check("requests", s.get(url, headers={"Accept-Encoding": "gzip"}), "gzip")
with httpx.Client(trust_env=False) as c:
    # httpx offers gzip, deflate, br, zstd (with zstandard installed).
    check("httpx", c.get(url), "zstd")
    check("httpx", c.get(url, headers={"Accept-Encoding": "br"}), "br")
    check("httpx", c.get(url, headers={"Accept-Encoding": "gzip;q=1, br;q=0.5"}), "gzip")
print(" ".join(seen))
"#,
        &[&url, expected.to_str().unwrap()],
    );
    assert_eq!(out, "requests:br requests:gzip httpx:zstd httpx:br httpx:gzip");
}

#[test]
fn small_and_binary_bodies_go_out_as_they_are() {
    let t = setup();
    let small = curl(&["-H", "accept-encoding: gzip, br, zstd", &t.s.url("web", "/api/small")]);
    assert_eq!(small.status, 200);
    assert_eq!(small.header("content-encoding"), None, "under min_size (1 KiB)");
    assert_eq!(small.header("content-length"), Some("11"));
    assert_eq!(small.header("vary"), Some("Accept-Encoding"), "a compressible type varies anyway");
    assert_eq!(small.text(), "{\"ok\":true}");
    let png = curl(&["-H", "accept-encoding: gzip, br, zstd", &t.s.url("web", "/api/png")]);
    assert_eq!(png.status, 200);
    assert_eq!(png.header("content-encoding"), None, "images are not compressed");
    assert_eq!(png.header("vary"), None);
    assert_eq!(png.header("content-length"), Some("65536"));
    assert_eq!(png.body.len(), 64 * 1024);
}

/// GETs `path` with `accept-encoding`, reads until `first` decoded bytes are in (the
/// upstream still holds the rest behind `gate`), opens the gate and reads the rest. Returns
/// the response head and the body bytes on the wire before and after the gate opened.
fn gated_get(
    s: &Sumun,
    path: &'static str,
    accept: &'static str,
    gate: Gate,
    first_ready: impl Fn(&[u8]) -> bool + Send + 'static,
) -> (http::response::Parts, Vec<u8>, Vec<u8>) {
    let addr = s.addr("web");
    block_on(async move {
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get(path)
            .header("host", "c")
            .header("accept-encoding", accept)
            .body(http_body_util::Empty::new())
            .unwrap();
        let res =
            tokio::time::timeout(T, send.send_request(req)).await.expect("response head").expect("response");
        let (parts, mut body) = res.into_parts();
        let mut before = Vec::new();
        while !first_ready(&before) {
            let f = tokio::time::timeout(T, body.frame())
                .await
                .expect("the first part was held back until the upstream finished")
                .expect("body ended early")
                .expect("body error");
            if let Some(d) = f.data_ref() {
                before.extend_from_slice(d);
            }
        }
        gate.open();
        let mut after = Vec::new();
        while let Some(f) = tokio::time::timeout(T, body.frame()).await.expect("rest of the body") {
            if let Some(d) = f.expect("body error").data_ref() {
                after.extend_from_slice(d);
            }
        }
        (parts, before, after)
    })
}

#[test]
fn event_streams_are_never_compressed_and_arrive_event_by_event() {
    let t = setup();
    let (parts, before, after) =
        gated_get(&t.s, "/api/events", "gzip, br, zstd", t.events.clone(), |b| b.len() >= FIRST_EVENT.len());
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers.get("content-encoding"), None);
    assert_eq!(parts.headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(before, FIRST_EVENT, "the first event arrived while the upstream held the rest");
    assert_eq!(after, REST_EVENTS);
}

#[test]
fn a_compressed_stream_is_flushed_while_the_upstream_waits() {
    let t = setup();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix.gz");
    let decoded = dir.path().join("decoded");
    let probe = (prefix.clone(), decoded.clone());
    // Read until what arrived so far decodes (without an end of stream) to the first chunk.
    let (parts, before, after) = gated_get(&t.s, "/api/stream", "gzip", t.stream.clone(), move |b| {
        if b.len() < 10 {
            return false;
        }
        std::fs::write(&probe.0, b).unwrap();
        python(
            "import sys, zlib; d = zlib.decompressobj(31); \
             open(sys.argv[2], 'wb').write(d.decompress(open(sys.argv[1], 'rb').read()))",
            &[probe.0.to_str().unwrap(), probe.1.to_str().unwrap()],
        );
        std::fs::read(&probe.1).unwrap() == FIRST_CHUNK
    });
    assert_eq!(parts.headers.get("content-encoding").unwrap(), "gzip");
    assert_eq!(parts.headers.get("content-length"), None);
    let whole = dir.path().join("whole.gz");
    std::fs::write(&whole, [before, after].concat()).unwrap();
    py_decode("gzip", &whole, &decoded);
    assert_eq!(std::fs::read(&decoded).unwrap(), [FIRST_CHUNK, REST_CHUNK].concat());
}

#[test]
fn compressed_uploads_reach_the_upstream_decoded() {
    let t = setup();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, &t.json).unwrap();
    for (i, coding) in ["gzip", "br", "zstd"].into_iter().enumerate() {
        let z = dir.path().join(format!("body.{coding}"));
        py_encode(coding, &plain, &z);
        let data = format!("@{}", z.display());
        let hdr = format!("content-encoding: {coding}");
        let out = curl(&[
            "--data-binary",
            &data,
            "-H",
            &hdr,
            "-H",
            "content-type: application/json",
            &t.s.url("web", "/api/upload"),
        ]);
        assert_eq!(out.status, 200, "{coding}: {}", out.text());
        let r = &t.up.wait_finished(i + 1, T)[i];
        assert!(r.complete, "{coding}: {:?}", r.body_error);
        assert_eq!(r.body_len, t.json.len() as u64, "{coding}: the upstream got the decoded body");
        assert_eq!(r.header("content-encoding"), None, "{coding}");
        assert_ne!(
            r.header("content-length"),
            Some(std::fs::metadata(&z).unwrap().len().to_string().as_str())
        );
        // The echo target shows the decoded length too.
        let echo = curl(&["--data-binary", &data, "-H", &hdr, &t.s.url("web", "/echo")]);
        assert_eq!(echo.status, 200, "{coding}: {}", echo.text());
        let doc = serde_json::from_slice::<serde_json::Value>(&echo.body).unwrap_or_else(|_| {
            // The echo answer is JSON and itself compressible; curl asked for no encoding.
            panic!("echo body: {}", echo.text())
        });
        assert_eq!(doc["body_length"], t.json.len(), "{coding}");
        assert!(doc["headers"].get("content-encoding").is_none(), "{coding}: {doc}");
    }
}

#[test]
fn a_zip_bomb_is_refused_with_413() {
    let t = setup();
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros");
    std::fs::write(&zeros, vec![0u8; 10 << 20]).unwrap();
    let bomb = dir.path().join("bomb.gz");
    py_encode("gzip", &zeros, &bomb);
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 20 * 1024, "10 MiB of zeros gzip to {size} bytes");
    let data = format!("@{}", bomb.display());
    for path in ["/api/upload", "/echo"] {
        let out = curl(&["--data-binary", &data, "-H", "content-encoding: gzip", &t.s.url("web", path)]);
        assert_problem(&out, 413);
        let line = t.s.access_log(&out.request_id(), T);
        assert_eq!(line["status"], 413, "{path}: {line}");
    }
    // The upstream saw a body that failed, never 10 MiB.
    let r = t.up.wait_finished(1, T).remove(0);
    assert!(!r.complete, "the upstream must not see the bomb's body end cleanly");
    assert!(r.body_len <= 64 * 1024 + 100 * size, "{} bytes reached the upstream", r.body_len);
}

#[test]
fn broken_or_unknown_request_encodings_are_refused() {
    let t = setup();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, &t.json).unwrap();
    let z = dir.path().join("body.gz");
    py_encode("gzip", &plain, &z);
    let mut broken = std::fs::read(&z).unwrap();
    let n = broken.len();
    broken[n / 2..n / 2 + 64].fill(0xAA);
    let broken_path = dir.path().join("broken.gz");
    std::fs::write(&broken_path, &broken).unwrap();
    let data = format!("@{}", broken_path.display());
    for path in ["/api/upload", "/echo"] {
        let out = curl(&["--data-binary", &data, "-H", "content-encoding: gzip", &t.s.url("web", path)]);
        assert_problem(&out, 400);
    }
    let out =
        curl(&["--data-binary", "abc", "-H", "content-encoding: compress", &t.s.url("web", "/api/upload")]);
    assert_problem(&out, 415);
    assert_eq!(out.header("accept-encoding"), Some("gzip, br, zstd, deflate"));
    assert_eq!(t.s.access_log(&out.request_id(), T)["error"], "unsupported_content_encoding");
    // Neither reached the upstream whole.
    assert!(t.up.requests().iter().all(|r| !r.complete), "{:?}", t.up.requests().len());
}

/// `[compression] max_memory` below what one zstd encoder holds (1.25 MiB) but above a gzip
/// one (320 KiB): zstd responses go out uncompressed and are counted, gzip ones compress.
#[test]
fn the_encoders_memory_budget_is_honoured() {
    let body = json_listing(4 * 1024);
    let text = String::from_utf8(body.clone()).unwrap().replace('\\', "\\\\").replace('"', "\\\"");
    let s = Sumun::start(&format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[compression]
max_memory = "1MiB"

[listener.web]
bind = "127.0.0.1:0"

[[route]]
to = {{ respond = {{ status = 200, body = "{text}", headers = {{ "content-type" = "application/json" }} }} }}
compress = true
"#
    ));
    let zstd = curl(&["-H", "accept-encoding: zstd", &s.url("web", "/")]);
    assert_eq!(zstd.status, 200);
    assert_eq!(zstd.header("content-encoding"), None, "over the budget: sent as is");
    assert_eq!(zstd.body, body);
    let gzip = curl(&["--compressed", "-H", "accept-encoding: gzip", &s.url("web", "/")]);
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip.body, body, "curl decoded it");
    let metrics = curl(&[&format!("http://{}/metrics", s.admin_addr().unwrap())]).text();
    assert!(
        metrics.lines().any(|l| l.starts_with("sumun_compression_skipped_total{reason=\"memory\"} 1")),
        "{metrics}"
    );
}
