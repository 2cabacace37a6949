use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use sumun_config::{Compress, Encoding};
use sumun_http::body::is_body_too_large;
use sumun_http::{Body, BodyError};
use tokio::sync::mpsc;

use super::codec::tests::{compress, decompress, sample};
use super::*;

fn cfg() -> Compress {
    Compress {
        algorithms: vec![Encoding::Zstd, Encoding::Brotli, Encoding::Gzip],
        min_size: 1024,
        content_types: DEFAULT_CONTENT_TYPES.iter().map(|s| s.to_string()).collect(),
        decompress_requests: true,
        max_ratio: 100,
    }
}

fn compressor() -> Compressor {
    Compressor::compile(&cfg(), CompressionBudget::new(0))
}

fn response(content_type: &str, body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
    res
}

fn json_response(len: usize) -> (Vec<u8>, Response<Body>) {
    let data = sample(len);
    let mut res = response("application/json; charset=utf-8", Body::full(data.clone()));
    res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    (data, res)
}

fn header(res: &Response<Body>, name: header::HeaderName) -> Option<&str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

fn varies(res: &Response<Body>) -> Vec<String> {
    res.headers().get_all(header::VARY).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

async fn collect(body: Body) -> (Vec<u8>, Option<http::HeaderMap>) {
    let c = body.collect().await.unwrap();
    let trailers = c.trailers().cloned();
    (c.to_bytes().to_vec(), trailers)
}

fn coding_of(e: Encoding) -> RequestCoding {
    match e {
        Encoding::Gzip => RequestCoding::Gzip,
        Encoding::Brotli => RequestCoding::Brotli,
        Encoding::Zstd => RequestCoding::Zstd,
    }
}

/// A body whose frames a test sends one at a time.
struct ChanBody(mpsc::Receiver<Result<Frame<Bytes>, BodyError>>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().0.poll_recv(cx)
    }
}

fn chan() -> (mpsc::Sender<Result<Frame<Bytes>, BodyError>>, Body) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Body::boxed(ChanBody(rx)))
}

#[tokio::test]
async fn compresses_json_with_the_chosen_encoding() {
    let c = compressor();
    for e in [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip] {
        let (data, mut res) = json_response(100 * 1024);
        res.headers_mut().insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        res.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let res = c.encode_response(Some(e), &Method::GET, res);
        assert_eq!(header(&res, header::CONTENT_ENCODING), Some(codec::coding_name(e)));
        assert_eq!(header(&res, header::CONTENT_LENGTH), None);
        assert_eq!(header(&res, header::ACCEPT_RANGES), None);
        assert_eq!(header(&res, header::ETAG), Some("W/\"v1\""));
        assert_eq!(varies(&res), ["Accept-Encoding"]);
        let (z, _) = collect(res.into_body()).await;
        assert!(z.len() * 4 < data.len(), "{e:?}: {} -> {}", data.len(), z.len());
        assert_eq!(decompress(coding_of(e), &z).unwrap(), data, "{e:?} decodes back");
    }
}

#[tokio::test]
async fn skip_rules() {
    let c = compressor();
    type Edit = Box<dyn Fn(&mut Response<Body>) -> Method>;
    let cases: Vec<(&str, Edit)> = vec![
        ("HEAD", Box::new(|_| Method::HEAD)),
        (
            "204",
            Box::new(|r| {
                *r.status_mut() = StatusCode::NO_CONTENT;
                Method::GET
            }),
        ),
        (
            "304",
            Box::new(|r| {
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                Method::GET
            }),
        ),
        (
            "206",
            Box::new(|r| {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                Method::GET
            }),
        ),
        (
            "content-range",
            Box::new(|r| {
                r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 0-9/100"));
                Method::GET
            }),
        ),
        (
            "already encoded",
            Box::new(|r| {
                r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                Method::GET
            }),
        ),
        (
            "no-transform",
            Box::new(|r| {
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, No-Transform"));
                Method::GET
            }),
        ),
        (
            "small",
            Box::new(|r| {
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("1023"));
                Method::GET
            }),
        ),
    ];
    for (what, edit) in cases {
        let (data, mut res) = json_response(4096);
        let method = edit(&mut res);
        let before = res.headers().clone();
        let res = c.encode_response(Some(Encoding::Gzip), &method, res);
        assert_eq!(
            header(&res, header::CONTENT_ENCODING),
            before.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap()),
            "{what}"
        );
        assert_eq!(res.headers().get(header::CONTENT_LENGTH), before.get(header::CONTENT_LENGTH), "{what}");
        assert_eq!(varies(&res), ["Accept-Encoding"], "{what}: still a compressible type");
        assert_eq!(collect(res.into_body()).await.0, data, "{what}: body untouched");
    }
}

#[tokio::test]
async fn bodies_known_small_or_empty_are_left_alone() {
    let c = compressor();
    // A fixed body under min_size without a Content-Length header.
    let res = response("text/html", Body::full("<p>hi</p>"));
    let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, res);
    assert_eq!(header(&res, header::CONTENT_ENCODING), None);
    assert_eq!(collect(res.into_body()).await.0, b"<p>hi</p>");
    let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, response("text/html", Body::empty()));
    assert_eq!(header(&res, header::CONTENT_ENCODING), None);
    // min_size = 0 still never encodes an empty body.
    let c = Compressor::compile(&Compress { min_size: 0, ..cfg() }, CompressionBudget::new(0));
    let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, response("text/html", Body::empty()));
    assert_eq!(header(&res, header::CONTENT_ENCODING), None);
}

#[test]
fn content_types() {
    let c = compressor();
    let yes = [
        "text/html",
        "text/plain; charset=utf-8",
        "TEXT/CSS",
        "application/json",
        "application/problem+json",
        "application/ld+json",
        "application/javascript",
        "application/xml",
        "application/atom+xml",
        "image/svg+xml",
        "application/wasm",
    ];
    let no = [
        "text/event-stream",
        "text/event-stream; charset=utf-8",
        "image/png",
        "application/octet-stream",
        "application/zip",
        "video/mp4",
        "application/+json",
        "json",
        "",
    ];
    for t in yes {
        let res = response(t, Body::empty());
        assert!(c.compressible_type(res.headers()), "{t}");
    }
    for t in no {
        let res = response(t, Body::empty());
        assert!(!c.compressible_type(res.headers()), "{t}");
    }
    assert!(!c.compressible_type(&http::HeaderMap::new()), "no Content-Type");
    // A route's own list.
    let c = Compressor::compile(
        &Compress { content_types: vec!["application/x-ndjson".into()], ..cfg() },
        CompressionBudget::new(0),
    );
    assert!(c.compressible_type(response("application/x-ndjson", Body::empty()).headers()));
    assert!(!c.compressible_type(response("text/html", Body::empty()).headers()));
}

#[tokio::test]
async fn images_and_events_get_no_vary_and_no_encoding() {
    let c = compressor();
    for t in ["image/png", "text/event-stream"] {
        let res = response(t, Body::full(vec![b'a'; 8192]));
        let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, res);
        assert_eq!(header(&res, header::CONTENT_ENCODING), None, "{t}");
        assert!(varies(&res).is_empty(), "{t}");
    }
}

#[tokio::test]
async fn vary_is_appended_once() {
    let c = compressor();
    for (existing, want) in [
        (vec!["Origin"], vec!["Origin", "Accept-Encoding"]),
        (vec!["origin, accept-encoding"], vec!["origin, accept-encoding"]),
        (vec!["Origin", "Accept-Encoding"], vec!["Origin", "Accept-Encoding"]),
        (vec!["*"], vec!["*"]),
    ] {
        for chosen in [None, Some(Encoding::Brotli)] {
            let (_, mut res) = json_response(4096);
            for v in &existing {
                res.headers_mut().append(header::VARY, HeaderValue::from_str(v).unwrap());
            }
            let res = c.encode_response(chosen, &Method::GET, res);
            assert_eq!(varies(&res), want, "{existing:?} {chosen:?}");
        }
    }
}

#[tokio::test]
async fn etags() {
    let c = compressor();
    for (etag, want) in [("\"abc\"", "W/\"abc\""), ("W/\"abc\"", "W/\"abc\"")] {
        let (_, mut res) = json_response(4096);
        res.headers_mut().insert(header::ETAG, HeaderValue::from_static(etag));
        let res = c.encode_response(Some(Encoding::Zstd), &Method::GET, res);
        assert_eq!(header(&res, header::ETAG), Some(want));
    }
    // Not compressed: the strong validator stays.
    let (_, mut res) = json_response(4096);
    res.headers_mut().insert(header::ETAG, HeaderValue::from_static("\"abc\""));
    let res = c.encode_response(None, &Method::GET, res);
    assert_eq!(header(&res, header::ETAG), Some("\"abc\""));
}

#[tokio::test]
async fn several_frames_compress_and_decode_back_with_trailers() {
    let c = compressor();
    for e in [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip] {
        let data = sample(300 * 1024);
        let (tx, body) = chan();
        let res = c.encode_response(Some(e), &Method::GET, response("application/json", body));
        let chunks: Vec<Bytes> = data.chunks(10_000).map(Bytes::copy_from_slice).collect();
        tokio::spawn(async move {
            for ch in chunks {
                tx.send(Ok(Frame::data(ch))).await.unwrap();
            }
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            tx.send(Ok(Frame::trailers(t))).await.unwrap();
        });
        let (z, trailers) = collect(res.into_body()).await;
        assert_eq!(decompress(coding_of(e), &z).unwrap(), data, "{e:?}");
        assert_eq!(trailers.unwrap()["grpc-status"], "0", "{e:?}: trailers pass through");
    }
}

#[tokio::test]
async fn a_slow_stream_yields_output_before_its_end() {
    let c = compressor();
    for e in [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip] {
        let (tx, body) = chan();
        // No Content-Length: a stream.
        let res = c.encode_response(Some(e), &Method::GET, response("text/plain", body));
        assert_eq!(header(&res, header::CONTENT_ENCODING), Some(codec::coding_name(e)));
        let mut body = res.into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first event\n")))).await.unwrap();
        // The upstream now waits: what was sent must come out, decodable, before the end.
        let mut got = Vec::new();
        let mut dec = codec::Decoder::new(coding_of(e));
        let mut buf = vec![0; codec::SCRATCH];
        let mut plain = Vec::new();
        while plain.len() < b"first event\n".len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("compressed output before the end of the body")
                .unwrap()
                .unwrap();
            let d = frame.into_data().unwrap();
            got.extend_from_slice(&d);
            let s = dec.decode(&d, &mut buf).unwrap();
            plain.extend_from_slice(&buf[..s.produced]);
        }
        assert_eq!(plain, b"first event\n", "{e:?}");
        tx.send(Ok(Frame::data(Bytes::from_static(b"second event\n")))).await.unwrap();
        drop(tx);
        while let Some(f) = body.frame().await {
            got.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(decompress(coding_of(e), &got).unwrap(), b"first event\nsecond event\n", "{e:?}");
    }
}

#[tokio::test]
async fn a_body_with_a_length_is_not_flushed_per_frame() {
    // Many small frames of a response with a Content-Length: with no flush in between, the
    // output is as small as one-shot compression of the same bytes.
    let c = compressor();
    let data = sample(64 * 1024);
    let (tx, body) = chan();
    let mut res = response("application/json", body);
    res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, res);
    let chunks: Vec<Bytes> = data.chunks(512).map(Bytes::copy_from_slice).collect();
    tokio::spawn(async move {
        for ch in chunks {
            // Yield between frames so the compressor sees the upstream idle.
            tokio::task::yield_now().await;
            if tx.send(Ok(Frame::data(ch))).await.is_err() {
                return;
            }
        }
    });
    let (z, _) = collect(res.into_body()).await;
    let one_shot = compress(Encoding::Gzip, &data, data.len(), false);
    assert_eq!(decompress(RequestCoding::Gzip, &z).unwrap(), data);
    assert!(z.len() <= one_shot.len() + 64, "{} vs one-shot {}", z.len(), one_shot.len());
}

#[tokio::test]
async fn an_upstream_error_mid_body_reaches_the_client() {
    let c = compressor();
    let (tx, body) = chan();
    let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, response("text/plain", body));
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 4096])))).await.unwrap();
    tx.send(Err("upstream reset".into())).await.unwrap();
    assert!(res.into_body().collect().await.is_err());
}

// ---- requests ----

fn request(coding: Option<&str>, body: Vec<u8>) -> (http::request::Parts, Body) {
    let mut b = Request::post("/upload").header(header::CONTENT_LENGTH, body.len());
    if let Some(c) = coding {
        b = b.header(header::CONTENT_ENCODING, c);
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    (parts, Body::full(body))
}

/// Reads a body to the end: the bytes, or the error and how many bytes came before it.
async fn drain(mut body: Body) -> Result<Vec<u8>, (BodyError, usize)> {
    let mut got = Vec::new();
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
            }
            Err(e) => return Err((e, got.len())),
        }
    }
    Ok(got)
}

#[tokio::test]
async fn decodes_request_bodies_for_the_upstream() {
    let c = compressor();
    let data = sample(200 * 1024);
    for (name, e) in [("gzip", Encoding::Gzip), ("br", Encoding::Brotli), ("zstd", Encoding::Zstd)] {
        let (mut parts, body) = request(Some(name), compress(e, &data, 5000, false));
        parts.headers.insert("content-digest", HeaderValue::from_static("sha-256=:x:"));
        let body = c.decode_request(&mut parts, body, 10 << 20).unwrap();
        assert!(!parts.headers.contains_key(header::CONTENT_ENCODING), "{name}");
        assert!(!parts.headers.contains_key(header::CONTENT_LENGTH), "{name}");
        assert!(!parts.headers.contains_key("content-digest"), "{name}");
        assert_eq!(drain(body).await.unwrap(), data, "{name}");
    }
    // Two gzip members are one body.
    let mut two = compress(Encoding::Gzip, b"hello ", 100, false);
    two.extend(compress(Encoding::Gzip, b"world", 100, false));
    let (mut parts, body) = request(Some("GZIP"), two);
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert_eq!(drain(body).await.unwrap(), b"hello world");
}

#[tokio::test]
async fn request_decoding_passes_through_when_not_asked() {
    let plain = b"plain".to_vec();
    // Off on the route.
    let c = Compressor::compile(&Compress { decompress_requests: false, ..cfg() }, CompressionBudget::new(0));
    let (mut parts, body) = request(Some("gzip"), plain.clone());
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert_eq!(parts.headers[header::CONTENT_ENCODING], "gzip");
    assert_eq!(drain(body).await.unwrap(), plain);
    let c = compressor();
    // No Content-Encoding.
    let (mut parts, body) = request(None, plain.clone());
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert_eq!(parts.headers[header::CONTENT_LENGTH], "5");
    assert_eq!(drain(body).await.unwrap(), plain);
    // identity: nothing to decode, the header goes.
    let (mut parts, body) = request(Some("identity"), plain.clone());
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert!(!parts.headers.contains_key(header::CONTENT_ENCODING));
    assert_eq!(parts.headers[header::CONTENT_LENGTH], "5");
    assert_eq!(drain(body).await.unwrap(), plain);
    // no-transform binds us.
    let (mut parts, body) = request(Some("gzip"), plain.clone());
    parts.headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-transform"));
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert_eq!(parts.headers[header::CONTENT_ENCODING], "gzip");
    assert_eq!(drain(body).await.unwrap(), plain);
}

#[test]
fn unknown_or_stacked_codings_are_415() {
    let c = compressor();
    for coding in ["compress", "snappy", "gzip, br", "gzip, compress"] {
        let (mut parts, body) = request(Some(coding), b"x".to_vec());
        let Err(r) = c.decode_request(&mut parts, body, 1 << 20) else {
            panic!("{coding} accepted");
        };
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{coding}");
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == header::ACCEPT_ENCODING && v.to_str().unwrap().contains("zstd"))
        );
    }
}

#[tokio::test]
async fn a_zip_bomb_is_stopped_as_too_large() {
    let c = compressor();
    let bomb = compress(Encoding::Gzip, &vec![0; 10 << 20], 1 << 20, false);
    assert!(bomb.len() < 20 * 1024, "10 MiB of zeros gzip to {} bytes", bomb.len());
    let (mut parts, body) = request(Some("gzip"), bomb.clone());
    let body = c.decode_request(&mut parts, body, 100 << 20).unwrap();
    let (err, before) = drain(body).await.unwrap_err();
    assert!(is_body_too_large(err.as_ref()), "413 material: {err}");
    assert!(err.downcast_ref::<DecompressionBomb>().is_some(), "{err}");
    let allowed = body::RATIO_ALLOWANCE as usize + 100 * bomb.len();
    assert!(before <= allowed, "{before} bytes passed, allowed {allowed}");
    // Zeros fed through several small frames are stopped as early.
    let (tx, body) = chan();
    let (mut parts, _) = request(Some("gzip"), Vec::new());
    let body = c.decode_request(&mut parts, body, 100 << 20).unwrap();
    tokio::spawn(async move {
        for ch in bomb.chunks(100) {
            if tx.send(Ok(Frame::data(Bytes::copy_from_slice(ch)))).await.is_err() {
                return;
            }
        }
    });
    let (err, _) = drain(body).await.unwrap_err();
    assert!(is_body_too_large(err.as_ref()), "{err}");
}

#[tokio::test]
async fn the_decoded_size_is_held_to_the_body_limit() {
    // Compresses 8x (under the ratio) but decodes past max_body.
    let c = compressor();
    let data = sample(300 * 1024);
    let (mut parts, body) = request(Some("zstd"), compress(Encoding::Zstd, &data, 8192, false));
    let body = c.decode_request(&mut parts, body, 256 * 1024).unwrap();
    let (err, before) = drain(body).await.unwrap_err();
    assert!(is_body_too_large(err.as_ref()), "{err}");
    assert!(before <= 256 * 1024);
    // A ratio above 100 but under the allowance is fine: 60 KiB of spaces.
    let (mut parts, body) = request(Some("br"), compress(Encoding::Brotli, &[b' '; 60 * 1024], 4096, false));
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert_eq!(drain(body).await.unwrap().len(), 60 * 1024);
}

#[tokio::test]
async fn malformed_bodies_fail_as_client_errors() {
    let c = compressor();
    let good = compress(Encoding::Gzip, &sample(50_000), 4096, false);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip", b"definitely not gzip".to_vec()),
        ("gzip", good[..good.len() - 4].to_vec()),
        ("gzip", [&good[..], b"trailing junk"].concat()),
        ("br", b"\xff\xff\xff\xff not brotli".to_vec()),
        ("br", [&compress(Encoding::Brotli, b"one", 10, false)[..], b"x"].concat()),
        ("zstd", b"\x28\xb5\x2f\xfd\x00 junk".to_vec()),
        ("deflate", b"\x78\x9c\xff\xff".to_vec()),
    ];
    for (coding, bytes) in cases {
        let (mut parts, body) = request(Some(coding), bytes);
        let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
        let (err, _) = drain(body).await.unwrap_err();
        assert!(!is_body_too_large(err.as_ref()), "{coding}: {err}");
        assert!(err.downcast_ref::<MalformedEncoding>().is_some(), "{coding}: {err}");
    }
    // An empty body stays empty.
    let (mut parts, body) = request(Some("gzip"), Vec::new());
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    assert_eq!(drain(body).await.unwrap(), b"");
}

#[tokio::test]
async fn request_trailers_pass_through_decoding() {
    let c = compressor();
    let (tx, body) = chan();
    let (mut parts, _) = request(Some("gzip"), Vec::new());
    let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
    let z = compress(Encoding::Gzip, b"payload", 100, false);
    tokio::spawn(async move {
        tx.send(Ok(Frame::data(Bytes::from(z)))).await.unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("1"));
        tx.send(Ok(Frame::trailers(t))).await.unwrap();
    });
    let (data, trailers) = collect(body).await;
    assert_eq!(data, b"payload");
    assert_eq!(trailers.unwrap()["x-checksum"], "1");
}

/// Compresses `input` with an encoder built for the test (a given window).
fn encode_with(mut enc: codec::Encoder, input: &[u8]) -> Vec<u8> {
    let mut scratch = vec![0u8; 64 * 1024];
    let mut out = bytes::BytesMut::new();
    enc.encode(input, &mut scratch, &mut out).unwrap();
    enc.finish(&mut scratch, &mut out).unwrap();
    out.to_vec()
}

fn brotli_with_window(log: i32, input: &[u8]) -> Vec<u8> {
    let params = async_compression::brotli::EncoderParams::default()
        .quality(async_compression::Level::Precise(4))
        .window_size(log);
    encode_with(
        codec::Encoder::Brotli(Box::new(async_compression::codecs::BrotliEncoder::new(params))),
        input,
    )
}

fn zstd_with_window(log: u32, input: &[u8]) -> Vec<u8> {
    let params = [async_compression::zstd::CParameter::window_log(log)];
    encode_with(
        codec::Encoder::Zstd(async_compression::codecs::ZstdEncoder::new_with_params(3, &params)),
        input,
    )
}

/// A stream's header alone could make the decoder hold its whole window: brotli streams over
/// 4 MiB and zstd frames over 8 MiB are refused before that memory is taken; the windows
/// common encoders use pass.
#[tokio::test]
async fn request_streams_declaring_large_windows_are_refused() {
    let c = compressor();
    let data = sample(200_000);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("br", brotli_with_window(16, &data), true),
        ("br", brotli_with_window(19, &data), true),
        ("br", brotli_with_window(22, &data), true),
        ("br", brotli_with_window(23, &data), false),
        ("br", brotli_with_window(24, &data), false),
        ("zstd", zstd_with_window(19, &data), true),
        ("zstd", zstd_with_window(23, &data), true),
        ("zstd", zstd_with_window(24, &data), false),
    ];
    for (coding, bytes, accepted) in cases {
        let (mut parts, body) = request(Some(coding), bytes);
        let body = c.decode_request(&mut parts, body, 1 << 20).unwrap();
        match drain(body).await {
            Ok(got) => assert!(accepted && got == data, "{coding}: decoded a stream it should refuse"),
            Err((err, _)) => {
                assert!(!accepted, "{coding}: {err}");
                assert!(err.downcast_ref::<MalformedEncoding>().is_some(), "{coding}: {err}");
            }
        }
    }
}

#[test]
fn brotli_window_from_the_first_byte() {
    for log in 10..=24 {
        let stream = brotli_with_window(log, b"x");
        assert_eq!(codec::brotli_window_log(stream[0]), Some(log as u32), "lgwin {log}");
    }
    // The large-window extension's marker (RFC 7932 has it reserved): refused.
    assert_eq!(codec::brotli_window_log(0b0001_0001), None);
}

/// With the encoders' memory budget spent, responses go out whole and uncompressed (with
/// their length, and still `Vary`), and compression resumes once an encoder's body ends.
#[tokio::test]
async fn responses_past_the_memory_budget_go_out_uncompressed() {
    let budget = CompressionBudget::new(budget::encoder_cost(Encoding::Zstd));
    let c = Compressor::compile(&cfg(), budget.clone());
    let (_, res) = json_response(10_000);
    let held = c.encode_response(Some(Encoding::Zstd), &Method::GET, res);
    assert_eq!(header(&held, header::CONTENT_ENCODING), Some("zstd"));
    assert_eq!(budget.in_use(), budget::encoder_cost(Encoding::Zstd));

    for e in [Encoding::Zstd, Encoding::Gzip] {
        let (data, res) = json_response(10_000);
        let res = c.encode_response(Some(e), &Method::GET, res);
        assert_eq!(header(&res, header::CONTENT_ENCODING), None, "{e:?} over the budget");
        assert_eq!(header(&res, header::CONTENT_LENGTH), Some("10000"));
        assert_eq!(varies(&res), ["Accept-Encoding"]);
        assert_eq!(collect(res.into_body()).await.0, data);
    }

    collect(held.into_body()).await;
    assert_eq!(budget.in_use(), 0, "an ended body returns its charge");
    let (_, res) = json_response(10_000);
    let res = c.encode_response(Some(Encoding::Gzip), &Method::GET, res);
    assert_eq!(header(&res, header::CONTENT_ENCODING), Some("gzip"));
    drop(res);
    assert_eq!(budget.in_use(), 0, "a dropped body returns its charge");
}
