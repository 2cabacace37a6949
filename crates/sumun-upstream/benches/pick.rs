//! Balancer pick cost: every balancer over 100 endpoints, all eligible, one hash key per
//! iteration. Target: under 100 ns per pick. `cargo bench -p sumun-upstream --bench pick`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sumun_config::EndpointAddr;
use sumun_upstream::balance::{
    Balancer, LeastRequest, PickCtx, Random, Rendezvous, RingHash, RoundRobin, hash_bytes,
};
use sumun_upstream::endpoint::EndpointState;

const N: usize = 100;

fn endpoints(weights: &[u32]) -> Vec<Arc<EndpointState>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let host = format!("10.0.{}.{}", i / 250, i % 250 + 1);
            Arc::new(EndpointState::new(i, EndpointAddr::Tcp { host, port: 8080 }, w))
        })
        .collect()
}

fn bench_set(c: &mut Criterion, group: &str, weights: &[u32]) {
    let eps = endpoints(weights);
    let labeled: Vec<(String, u32)> = eps.iter().map(|e| (e.label.to_string(), e.weight)).collect();
    let balancers: Vec<(&str, Box<dyn Balancer>)> = vec![
        ("round_robin", Box::new(RoundRobin::new(weights))),
        ("random", Box::new(Random::new(weights))),
        ("least_request", Box::new(LeastRequest::new(weights))),
        ("ring_hash", Box::new(RingHash::new(&labeled))),
        ("rendezvous", Box::new(Rendezvous::new(&labeled))),
    ];
    // A different key each iteration, from a table larger than any cache line pattern.
    let keys: Vec<u64> = (0..4096u64).map(|k| hash_bytes(&k.to_le_bytes())).collect();
    let mut g = c.benchmark_group(group);
    for (name, b) in &balancers {
        let mut k = 0usize;
        g.bench_function(*name, |bench| {
            bench.iter(|| {
                k = (k + 1) & 4095;
                let ctx =
                    PickCtx { hash: Some(keys[k]), now_ms: 10, exclude: &[], panic: false, slow_start: None };
                black_box(b.pick(black_box(&eps), &ctx))
            })
        });
    }
    g.finish();
}

/// A retry: the endpoint the first try went to is excluded, so every balancer walks on
/// (the hashing ones to the key's second choice).
fn bench_retry(c: &mut Criterion) {
    let weights = [1u32; N];
    let eps = endpoints(&weights);
    let labeled: Vec<(String, u32)> = eps.iter().map(|e| (e.label.to_string(), e.weight)).collect();
    let balancers: Vec<(&str, Box<dyn Balancer>)> = vec![
        ("round_robin", Box::new(RoundRobin::new(&weights))),
        ("random", Box::new(Random::new(&weights))),
        ("least_request", Box::new(LeastRequest::new(&weights))),
        ("ring_hash", Box::new(RingHash::new(&labeled))),
        ("rendezvous", Box::new(Rendezvous::new(&labeled))),
    ];
    let keys: Vec<u64> = (0..4096u64).map(|k| hash_bytes(&k.to_le_bytes())).collect();
    let mut g = c.benchmark_group("pick_100_retry");
    for (name, b) in &balancers {
        let first: Vec<[usize; 1]> = keys
            .iter()
            .map(|&k| {
                let ctx = PickCtx { hash: Some(k), now_ms: 10, exclude: &[], panic: false, slow_start: None };
                [b.pick(&eps, &ctx).unwrap_or(0)]
            })
            .collect();
        let mut k = 0usize;
        g.bench_function(*name, |bench| {
            bench.iter(|| {
                k = (k + 1) & 4095;
                let ctx = PickCtx {
                    hash: Some(keys[k]),
                    now_ms: 10,
                    exclude: &first[k],
                    panic: false,
                    slow_start: None,
                };
                black_box(b.pick(black_box(&eps), &ctx))
            })
        });
    }
    g.finish();
}

fn picks(c: &mut Criterion) {
    bench_set(c, "pick_100_equal", &[1; N]);
    let mixed: Vec<u32> = (0..N as u32).map(|i| 1 + i % 4).collect();
    bench_set(c, "pick_100_weights_1to4", &mixed);
    bench_retry(c);
    c.bench_function("hash_bytes_16B", |b| b.iter(|| hash_bytes(black_box(b"0123456789abcdef"))));
}

criterion_group!(benches, picks);
criterion_main!(benches);
