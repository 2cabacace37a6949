//! What one rate-limit check costs: a local check (one hot key, and 100k distinct keys) and a
//! Redis check (one at a time, and 64 in flight on the multiplexed connection), as wall time
//! and as this process's CPU time per check. Starts its own `redis-server` on a free port.
//! Not a test: it prints figures.
//!
//! `cargo run --release -p sumun-gateway --example rate_limit_cost`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::HeaderMap;
use sumun_config::{RateKey, RateLimitPolicy, RateStore};
use sumun_gateway::protect::rate_limit::{Limiter, RateInput};
use sumun_gateway::protect::redis::Redis;

/// utime + stime of this process, from /proc (10 ms ticks: runs last seconds).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn policy(store: RateStore, key: RateKey) -> RateLimitPolicy {
    // Far above what the loop can send: every check is an allowed one (the common case).
    RateLimitPolicy {
        name: "bench".into(),
        key,
        requests: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000_000,
        store,
        fail_open: false,
        ipv6_prefix: sumun_config::DEFAULT_IPV6_PREFIX,
    }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn report(what: &str, n: u64, wall: Duration, cpu: Duration) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("{what:<44} {n:>8} checks  wall {:>7.3} µs/check  cpu {:>7.3} µs/check", per(wall), per(cpu));
}

fn local(key: RateKey, keys: u32, n: u32) {
    let label = format!("local, key {key:?}, {keys} distinct");
    let l = Limiter::new(&policy(RateStore::Local, key), None, None);
    let headers = HeaderMap::new();
    let inputs: Vec<RateInput<'_>> = (0..keys)
        .map(|i| RateInput { client_ip: Some(ip(i)), headers: &headers, identity: None, route: "r" })
        .collect();
    // Warm up: every key inserted once.
    for i in &inputs {
        l.check(i).now_or_never().unwrap().unwrap();
    }
    let (t, c) = (Instant::now(), cpu());
    for k in 0..n {
        let i = &inputs[(k % keys) as usize];
        std::hint::black_box(l.check(i).now_or_never().unwrap().unwrap());
    }
    report(&label, u64::from(n), t.elapsed(), cpu() - c);
}

async fn global(redis: &Redis, in_flight: usize, n: usize) {
    let l = Limiter::new(&policy(RateStore::Redis, RateKey::ClientIp), Some(redis.clone()), None);
    let headers = HeaderMap::new();
    let inputs: Vec<RateInput<'_>> = (0..1024)
        .map(|i| RateInput { client_ip: Some(ip(i)), headers: &headers, identity: None, route: "r" })
        .collect();
    // Warm up: connection made, script loaded.
    for i in inputs.iter().take(100) {
        l.check(i).await.unwrap();
    }
    let (t, c) = (Instant::now(), cpu());
    let mut done = 0;
    while done < n {
        let batch = futures_util::future::join_all(
            (0..in_flight).map(|k| l.check(&inputs[(done + k) % inputs.len()])),
        )
        .await;
        for r in batch {
            r.unwrap();
        }
        done += in_flight;
    }
    report(&format!("redis, {in_flight} in flight"), done as u64, t.elapsed(), cpu() - c);
}

/// The floor: governor's keyed check alone, one hot key.
fn governor_alone(n: u32) {
    let q = governor::Quota::per_second(std::num::NonZeroU32::new(1_000_000_000).unwrap());
    let g = governor::RateLimiter::dashmap(q);
    let (t, c) = (Instant::now(), cpu());
    for _ in 0..n {
        std::hint::black_box(g.check_key(&1u128).is_ok());
    }
    report("governor check_key alone (baseline)", u64::from(n), t.elapsed(), cpu() - c);
}

fn main() {
    governor_alone(5_000_000);
    local(RateKey::Route, 1, 5_000_000);
    local(RateKey::ClientIp, 1, 5_000_000);
    local(RateKey::ClientIp, 100_000, 5_000_000);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let redis = Redis::new(&sumun_config::Redis {
            url: sumun_config::Secret(format!("redis://127.0.0.1:{port}")),
            timeout: Duration::from_secs(2),
            retry_after: Duration::from_secs(1),
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.query::<String>(&redis::cmd("PING")).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        global(&redis, 1, 40_000).await;
        global(&redis, 64, 400_000).await;
    });
    let _ = server.kill();
    let _ = server.wait();
}
