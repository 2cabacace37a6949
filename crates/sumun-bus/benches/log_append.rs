//! Append throughput of the embedded log: 1 KiB records, N concurrent appenders, one record
//! per append (each appender waits for its ack before the next, as an HTTP publisher does).
//! Reports appends/s, fsyncs/s, appends per fsync and append latency, per durability level.
//!
//! `cargo bench -p sumun-bus --bench log_append` (env: `LOG_BENCH_SECS` (5),
//! `LOG_BENCH_APPENDERS` (64), `LOG_BENCH_DIR` (a temporary directory on the default disk),
//! `LOG_BENCH_LEVELS` (fsync,interval,none)).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sumun_bus::log::{Durability, LogConfig, PartitionLog, Record};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) runs short.
    let secs: f64 = if std::env::args().any(|a| a == "--bench") { env("LOG_BENCH_SECS", 5.0) } else { 0.2 };
    let appenders: usize = env("LOG_BENCH_APPENDERS", 64);
    let levels = std::env::var("LOG_BENCH_LEVELS").unwrap_or_else(|_| "fsync,interval,none".to_owned());
    let root = match std::env::var("LOG_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d),
        Err(_) => tempfile::tempdir(),
    }
    .unwrap_or_else(|e| panic!("bench directory: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    println!(
        "log append: 1 KiB records, {appenders} concurrent appenders, {secs} s per level, dir {}",
        root.path().display()
    );
    println!(
        "{:<13} {:>12} {:>10} {:>14} {:>9} {:>9} {:>9}",
        "durability", "appends/s", "fsyncs/s", "appends/fsync", "MiB/s", "p50 µs", "p99 µs"
    );
    for level in levels.split(',') {
        let durability = match level.trim() {
            "fsync" => Durability::Fsync,
            "interval" => Durability::Interval(Duration::from_millis(10)),
            "none" => Durability::None,
            other => panic!("unknown level {other}"),
        };
        let mut cfg = LogConfig::new(root.path());
        cfg.durability = durability;
        let r = rt.block_on(run(cfg, level.trim(), appenders, Duration::from_secs_f64(secs)));
        println!(
            "{:<13} {:>12.0} {:>10.0} {:>14.1} {:>9.1} {:>9} {:>9}",
            level.trim(),
            r.appends_per_s,
            r.fsyncs_per_s,
            r.per_fsync,
            r.mib_per_s,
            r.p50_us,
            r.p99_us
        );
    }
}

struct Report {
    appends_per_s: f64,
    fsyncs_per_s: f64,
    per_fsync: f64,
    mib_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn run(cfg: LogConfig, topic: &str, appenders: usize, length: Duration) -> Report {
    let log = PartitionLog::open(&cfg, topic, 0).await.unwrap_or_else(|e| panic!("open: {e}"));
    let value = Bytes::from(vec![0x5a; 1024]);
    let stop = Arc::new(AtomicBool::new(false));
    let before = log.stats();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(appenders);
    for _ in 0..appenders {
        let (log, stop, value) = (Arc::clone(&log), Arc::clone(&stop), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let record = Record { value: value.clone(), ..Record::default() };
                log.append(vec![record]).await.unwrap_or_else(|e| panic!("append: {e}"));
                latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            latencies
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_else(|e| panic!("appender: {e}")));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = log.stats();
    log.close().await.unwrap_or_else(|e| panic!("close: {e}"));
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let appends = (after.appends - before.appends) as f64;
    let fsyncs = (after.fsyncs - before.fsyncs) as f64;
    Report {
        appends_per_s: appends / elapsed,
        fsyncs_per_s: fsyncs / elapsed,
        per_fsync: if fsyncs > 0.0 { appends / fsyncs } else { f64::INFINITY },
        mib_per_s: (after.bytes - before.bytes) as f64 / elapsed / (1024.0 * 1024.0),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}
