//! Load generator for bench/topics.sh. Prints one JSON object per run on stdout.
//!
//!   topics-load publish URL CONNS SECONDS SIZE
//!       closed loop: CONNS HTTP/1.1 keep-alive connections each POST a SIZE-byte body to URL
//!       and wait for the 202 before the next; reports messages/s and publish latency.
//!   topics-load latency URL RATE SECONDS SIZE LISTEN
//!       open loop: RATE publishes per second (each on its own schedule slot, whatever the
//!       previous one is doing) while serving the push worker on LISTEN; the body carries the
//!       send time, the worker records receive − send: publish→push latency percentiles.
//!   topics-load nats ADDR CONNS SECONDS SIZE
//!       CONNS tasks publish SIZE-byte messages to a JetStream stream (created here: file
//!       storage) and wait for each ack before the next; reports messages/s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.get(1).map(String::as_str) {
        Some("publish") if args.len() == 6 => {
            rt.block_on(publish(args[2].clone(), args[3].parse()?, args[4].parse()?, args[5].parse()?))
        }
        Some("latency") if args.len() == 7 => rt.block_on(latency(
            args[2].clone(),
            args[3].parse()?,
            args[4].parse()?,
            args[5].parse()?,
            args[6].parse()?,
        )),
        Some("nats") if args.len() == 6 => {
            rt.block_on(nats(args[2].clone(), args[3].parse()?, args[4].parse()?, args[5].parse()?))
        }
        _ => Err("usage: topics-load publish URL CONNS SECONDS SIZE | latency URL RATE SECONDS SIZE LISTEN | nats ADDR CONNS SECONDS SIZE".into()),
    }
}

fn percentiles(mut us: Vec<u64>) -> serde_json::Value {
    us.sort_unstable();
    let at = |q: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        us[i] as f64 / 1000.0
    };
    serde_json::json!({ "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": at(1.0), "samples": us.len() })
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, Error> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    Ok(Target { addr: host.parse()?, host: host.to_owned(), path })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(t: &Target) -> Result<Sender, Error> {
    let s = tokio::net::TcpStream::connect(t.addr).await?;
    s.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One POST; Ok(true) for a 202.
async fn post(sender: &mut Sender, t: &Target, body: Bytes) -> Result<bool, Error> {
    sender.ready().await?;
    let req = hyper::Request::post(&t.path)
        .header("host", &t.host)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))?;
    let res = sender.send_request(req).await?;
    let ok = res.status() == 202;
    res.into_body().collect().await?;
    Ok(ok)
}

async fn publish(url: String, conns: usize, seconds: u64, size: usize) -> Result<(), Error> {
    let t = Arc::new(parse_url(&url)?);
    let body = Bytes::from(vec![b'x'; size]);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (t, body, stop, errors, lat) = (t.clone(), body.clone(), stop.clone(), errors.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut sender = match connect(&t).await {
                Ok(s) => s,
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return 0u64;
                }
            };
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match post(&mut sender, &t, body.clone()).await {
                    Ok(true) => {
                        n += 1;
                        mine.push(t0.elapsed().as_micros() as u64);
                    }
                    Ok(false) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        match connect(&t).await {
                            Ok(s) => sender = s,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            lat.lock().await.extend(mine);
            n
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().await);
    println!(
        "{}",
        serde_json::json!({
            "mode": "publish", "conns": conns, "size": size, "seconds": elapsed,
            "messages": total, "msg_per_s": total as f64 / elapsed,
            "errors": errors.load(Ordering::Relaxed), "publish_latency_ms": percentiles(lat),
        })
    );
    Ok(())
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

async fn latency(url: String, rate: u64, seconds: u64, size: usize, listen: SocketAddr) -> Result<(), Error> {
    // The push worker: records receive − send for every delivery.
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let rec = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { continue };
            let _ = s.set_nodelay(true);
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let now = now_ns();
                        if let Some(sent) = std::str::from_utf8(&body[..body.len().min(20)])
                            .ok()
                            .and_then(|s| s.trim_end_matches('x').parse::<u64>().ok())
                        {
                            rec.lock().await.push(now.saturating_sub(sent) / 1000);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    let t = Arc::new(parse_url(&url)?);
    // A pool of connections big enough that the open loop never waits for one.
    let pool = Arc::new(Mutex::new(Vec::<Sender>::new()));
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = rate * seconds;
    let errors = Arc::new(AtomicU64::new(0));
    let publish_lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (t, pool, errors, publish_lat) = (t.clone(), pool.clone(), errors.clone(), publish_lat.clone());
        handles.push(tokio::spawn(async move {
            let mut sender = match pool.lock().await.pop() {
                Some(s) => s,
                None => match connect(&t).await {
                    Ok(s) => s,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                },
            };
            let sent = now_ns();
            let mut body = format!("{sent:<20}").replace(' ', "x").into_bytes();
            body.resize(size, b'x');
            let t0 = Instant::now();
            match post(&mut sender, &t, Bytes::from(body)).await {
                Ok(true) => {
                    publish_lat.lock().await.push(t0.elapsed().as_micros() as u64);
                    pool.lock().await.push(sender);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    // Let the last deliveries land.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (received.lock().await.len() as u64) < total - errors.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = std::mem::take(&mut *received.lock().await);
    let publish_lat = std::mem::take(&mut *publish_lat.lock().await);
    println!(
        "{}",
        serde_json::json!({
            "mode": "latency", "rate": rate, "seconds": seconds, "size": size, "published": total,
            "delivered": rec.len(), "errors": errors.load(Ordering::Relaxed),
            "publish_to_push_ms": percentiles(rec), "publish_latency_ms": percentiles(publish_lat),
        })
    );
    Ok(())
}

async fn nats(addr: String, conns: usize, seconds: u64, size: usize) -> Result<(), Error> {
    let client = async_nats::connect(addr.as_str()).await?;
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream("BENCH").await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (js, payload, stop, errors, lat) = (js.clone(), payload.clone(), stop.clone(), errors.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let subject = format!("bench.{i}");
            let mut mine = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let acked = match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if acked {
                    n += 1;
                    mine.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat.lock().await.extend(mine);
            n
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = js.delete_stream("BENCH").await;
    let lat = std::mem::take(&mut *lat.lock().await);
    println!(
        "{}",
        serde_json::json!({
            "mode": "nats", "conns": conns, "size": size, "seconds": elapsed,
            "messages": total, "msg_per_s": total as f64 / elapsed,
            "errors": errors.load(Ordering::Relaxed), "publish_latency_ms": percentiles(lat),
        })
    );
    Ok(())
}
