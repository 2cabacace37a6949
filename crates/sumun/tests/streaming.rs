//! Bodies stream through sumun without being buffered: large transfers keep its memory flat,
//! and a chunk reaches the other side before the sender has finished.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::h1_connect;
use common::mock::MockBody;
use common::*;
use http::Request;
use http_body::Frame;
use http_body_util::BodyExt;

const T: Duration = Duration::from_secs(10);
/// Size of the large transfers.
const BIG: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;
/// sumun's resident memory must stay under this during a large transfer.
const RSS_LIMIT_KIB: u64 = 100 * 1024;

fn proxy_config(endpoint: &str) -> String {
    cfg(
        r#"
[listener.web]
bind = "127.0.0.1:0"
limits = { max_body_bytes = "2GiB" }

[upstream.up]
endpoints = ["@UP@"]

[[route]]
name = "to-up"
match = { path_prefix = "/" }
to = { upstream = "up" }
"#,
        &[("UP", endpoint)],
    )
}

/// Samples sumun's VmRSS every 20 ms until dropped; reports the peak and the sample count.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let (st, pk, sm) = (stop.clone(), peak.clone(), samples.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if let Some(kib) = common::sumun::rss_kib(pid) {
                    pk.fetch_max(kib, Ordering::SeqCst);
                    sm.fetch_add(1, Ordering::SeqCst);
                }
                // A sampling period, not a wait for a state.
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch { stop, peak, samples }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        (self.peak.load(Ordering::SeqCst), self.samples.load(Ordering::SeqCst))
    }
}

#[test]
fn large_download_streams_with_flat_memory() {
    let mock = Mock::start(Behavior::text("").stream(BIG, CHUNK));
    let s = Sumun::start(&proxy_config(mock.endpoint()));
    let addr = s.addr("web");
    let watch = RssWatch::start(s.pid());
    let started = Instant::now();
    let (status, received, frames) = block_on(async move {
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get("/big").header("host", "big").body(http_body_util::Empty::new()).unwrap();
        let res = send.send_request(req).await.expect("response head");
        let status = res.status();
        let mut body = res.into_body();
        let (mut n, mut frames) = (0u64, 0u64);
        while let Some(f) = body.frame().await {
            let f = f.expect("body frame");
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
                frames += 1;
            }
        }
        (status, n, frames)
    });
    let elapsed = started.elapsed();
    let (peak, samples) = watch.finish();
    eprintln!(
        "download: {} MiB in {elapsed:?}, {frames} frames, sumun peak RSS {} MiB over {samples} samples",
        received >> 20,
        peak / 1024
    );
    assert_eq!(status, 200);
    assert_eq!(received, BIG, "every byte arrives");
    assert!(samples >= 3, "RSS was sampled during the transfer ({samples})");
    assert!(peak < RSS_LIMIT_KIB, "sumun buffered the download: peak RSS {peak} KiB");
}

#[test]
fn large_upload_streams_with_flat_memory() {
    let mock = Mock::start(Behavior::text("stored").discard_body());
    let s = Sumun::start(&proxy_config(mock.endpoint()));
    let addr = s.addr("web");
    let watch = RssWatch::start(s.pid());
    let status = block_on(async move {
        let mut send = h1_connect::<MockBody>(addr).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let block = Bytes::from(vec![b'u'; CHUNK]);
            let mut left = BIG;
            while left > 0 {
                let n = left.min(CHUNK as u64);
                if tx.send(Ok(Frame::data(block.slice(..n as usize)))).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
        let req = Request::post("/upload").header("host", "up").body(MockBody::Chan(rx)).unwrap();
        let res = send.send_request(req).await.expect("response");
        res.status()
    });
    let (peak, samples) = watch.finish();
    eprintln!("upload: sumun peak RSS {} MiB over {samples} samples", peak / 1024);
    assert_eq!(status, 200);
    let got = mock.only();
    assert!(got.complete, "{:?}", got.body_error);
    assert_eq!(got.body_len, BIG, "every byte arrives");
    assert!(samples >= 3, "RSS was sampled during the transfer ({samples})");
    assert!(peak < RSS_LIMIT_KIB, "sumun buffered the upload: peak RSS {peak} KiB");
}

#[test]
fn response_chunk_arrives_before_upstream_finishes() {
    let gate = Gate::new();
    let mock = Mock::start(Behavior::text("").payload(Payload::Gated {
        first: Bytes::from_static(b"first-chunk;"),
        gate: gate.clone(),
        rest: Bytes::from_static(b"the-rest"),
    }));
    let s = Sumun::start(&proxy_config(mock.endpoint()));
    let addr = s.addr("web");
    let body = block_on(async move {
        let mut send = h1_connect::<http_body_util::Empty<Bytes>>(addr).await;
        let req = Request::get("/gated").header("host", "g").body(http_body_util::Empty::new()).unwrap();
        let res = tokio::time::timeout(T, send.send_request(req))
            .await
            .expect("the response head did not arrive while the upstream was still sending")
            .expect("response");
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let mut got = Vec::new();
        // The upstream is blocked on the gate: the first chunk must get here anyway.
        while got.len() < b"first-chunk;".len() {
            let f = tokio::time::timeout(T, body.frame())
                .await
                .expect("first chunk held back until the upstream finished")
                .expect("body ended early")
                .expect("body error");
            if let Some(d) = f.data_ref() {
                got.extend_from_slice(d);
            }
        }
        assert_eq!(got, b"first-chunk;");
        gate.open();
        while let Some(f) = tokio::time::timeout(T, body.frame()).await.expect("rest of body") {
            if let Some(d) = f.expect("body error").data_ref() {
                got.extend_from_slice(d);
            }
        }
        got
    });
    assert_eq!(body, b"first-chunk;the-rest");
}

#[test]
fn request_chunk_arrives_before_client_finishes() {
    let mock = Mock::start(Behavior::text("ok"));
    let s = Sumun::start(&proxy_config(mock.endpoint()));
    let addr = s.addr("web");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let response = RT.spawn(async move {
        let mut send = h1_connect::<MockBody>(addr).await;
        let req = Request::post("/stream-up").header("host", "s").body(MockBody::Chan(rx)).unwrap();
        send.send_request(req).await.map(|r| r.status())
    });
    block_on(tx.send(Ok(Frame::data(Bytes::from_static(b"early-bytes;"))))).expect("send first chunk");
    // The client has not finished its body; the upstream must already see the first bytes.
    mock.wait(T, "the first request chunk at the upstream", |r| {
        r.first().is_some_and(|r| r.body_len >= b"early-bytes;".len() as u64)
    });
    assert!(!mock.requests()[0].finished);
    block_on(tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))).expect("send last chunk");
    drop(tx);
    let status = block_on(response).unwrap().expect("response");
    assert_eq!(status, 200);
    let got = mock.only();
    assert_eq!(got.body, b"early-bytes;late");
}
