//! Balancers: each a small type behind one trait. A pick sees the endpoints' live state
//! (availability, in-flight requests, slow-start weight) and never locks on the hot path.
//!
//! Availability: a balancer skips endpoints that are unhealthy, ejected or excluded (tried
//! already by this request) unless `PickCtx::panic` is set, in which case only exclusions
//! apply. It returns None when nothing is left.
//!
//! | `balance =` | type | pick cost | use it when |
//! | --- | --- | --- | --- |
//! | `round_robin` | [`RoundRobin`] | O(1) | the default: even, smooth, predictable |
//! | `random` | [`Random`] | O(1) | many gateways share a pool and lock-step must be avoided |
//! | `least_request` | [`LeastRequest`] | O(1) | request cost varies (slow queries, streams) |
//! | `ring_hash` | [`RingHash`] | O(1) | affinity by key, pools of hundreds or more |
//! | `rendezvous` | [`Rendezvous`] | O(N) | affinity by key, exact weights, up to ~200 endpoints |
//!
//! Weights are honoured by all of them. Slow start (a ramping endpoint's effective weight)
//! applies to all of them: the random ones reject a ramping endpoint's draw with probability
//! `1 - effective/weight`; the hashing ones shed a fixed, key-determined subset of its keys
//! to their next choice, so a key does not flap while the endpoint warms up and every shed
//! key comes back once the ramp passes its threshold.
//!
//! # ring_hash or rendezvous
//!
//! Both map a key (header, cookie, client IP, path, query value) to an endpoint so that
//! adding or removing one of N endpoints moves only about 1/N of the keys, and both compute
//! the same mapping in every sumun instance (positions and scores come from xxh3 of the
//! endpoint's address, never from a per-process seed).
//!
//! - `ring_hash` (ketama): each endpoint owns `1024 × weight` points on a ring; a key goes to
//!   the first point clockwise of its hash, walking on past unavailable endpoints. A pick
//!   is a table lookup whatever the pool size (about 12 ns), but the ring takes 9 bytes per
//!   point (0.9 MiB for 100 endpoints of weight 1) and an endpoint's share is only as even
//!   as its points fall: about 3 % off its weight's share (1 σ), so in a pool of 10 one
//!   endpoint is typically 5-6 % above or below. When an endpoint goes, its keys go to the
//!   owners of the next points, spread over the others.
//! - `rendezvous` (highest random weight, CARP): every endpoint scores `hash(key, endpoint)`
//!   and the best score wins (weighted by the logarithmic method). No ring: 24 bytes per
//!   endpoint, shares as even as the hash itself and weights exact; when an endpoint goes
//!   each of its keys moves to that key's own second choice, evenly over the others. The
//!   price is a pick linear in the pool size: about 0.6 ns per endpoint (57 ns for 100,
//!   76 ns when they have four distinct weights).
//!
//! Choose `rendezvous` by default, and whenever weights must be honoured closely; choose
//! `ring_hash` for pools of more than about 200 endpoints, where its constant-time pick
//! matters more than a few percent of imbalance.

use std::sync::Arc;

use sumun_config::{Balance, SlowStart, Upstream};

use crate::endpoint::EndpointState;

mod alias;
mod least_request;
mod random;
mod rendezvous;
mod ring_hash;
mod round_robin;

pub use least_request::LeastRequest;
pub use random::Random;
pub use rendezvous::Rendezvous;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;

/// What a pick may use besides the endpoints.
#[derive(Debug, Clone, Copy)]
pub struct PickCtx<'a> {
    /// The request's hash key (hashing balancers); None when the key is absent.
    pub hash: Option<u64>,
    /// Pool clock (`Clock::now_ms`).
    pub now_ms: u64,
    /// Endpoint indexes this request already tried.
    pub exclude: &'a [usize],
    /// Every endpoint is unavailable and the upstream is in panic mode: ignore availability.
    pub panic: bool,
    pub slow_start: Option<&'a SlowStart>,
}

impl PickCtx<'_> {
    /// Whether `ep` may be picked now.
    pub fn eligible(&self, ep: &EndpointState) -> bool {
        !self.exclude.contains(&ep.index) && (self.panic || ep.is_available(self.now_ms))
    }

    /// The share of its full weight `ep` takes now: below 1.0 only while slow start ramps it.
    pub fn ramp(&self, ep: &EndpointState) -> f64 {
        match self.slow_start {
            None => 1.0,
            Some(ss) => ep.effective_weight(self.now_ms, Some(ss)) / f64::from(ep.weight.max(1)),
        }
    }
}

pub trait Balancer: Send + Sync {
    /// The index (into `endpoints`) of the endpoint to use, or None when none is eligible.
    fn pick(&self, endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize>;
}

/// The balancer an upstream's config asks for. Hashing balancers identify endpoints by their
/// address as written (`EndpointAddr`'s display), so every instance agrees on the mapping.
pub fn build(cfg: &Upstream) -> Box<dyn Balancer> {
    let weights = || cfg.endpoints.iter().map(|e| e.weight).collect::<Vec<u32>>();
    let labeled = || cfg.endpoints.iter().map(|e| (e.address.to_string(), e.weight)).collect::<Vec<_>>();
    match cfg.balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(&weights())),
        Balance::Random => Box::new(Random::new(&weights())),
        Balance::LeastRequest => Box::new(LeastRequest::new(&weights())),
        Balance::RingHash => Box::new(RingHash::new(&labeled())),
        Balance::Rendezvous => Box::new(Rendezvous::new(&labeled())),
    }
}

/// The stable 64-bit hash (xxh3) of a request's key: header value, cookie, client IP
/// octets, path or query value. Feed it to `PickCtx::hash`.
pub fn hash_bytes(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// A short id naming an endpoint in a sticky-session cookie: 16 hex digits of xxh3 of its
/// label, the same in every instance and across reloads. It does not spell out the address
/// but is no secret either: private address ranges are small enough to enumerate.
pub fn sticky_id(label: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64_with_seed(label.as_bytes(), STICKY_SEED))
}

const STICKY_SEED: u64 = 0x5354_4943_4b59; // "STICKY"

/// Finalizer of MurmurHash3: spreads any input (even small integers) over all 64 bits.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A uniform float in [0, 1) from the top 53 bits.
#[inline]
pub(crate) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Weighted choice among all eligible endpoints by their effective weight, in one pass.
/// The slow path of the random-draw balancers, when draws keep hitting unavailable ones.
pub(crate) fn weighted_scan(endpoints: &[Arc<EndpointState>], ctx: &PickCtx<'_>) -> Option<usize> {
    let mut total = 0.0;
    let mut chosen = None;
    let mut first = None;
    for (i, ep) in endpoints.iter().enumerate() {
        if !ctx.eligible(ep) {
            continue;
        }
        first.get_or_insert(i);
        let w = ep.effective_weight(ctx.now_ms, ctx.slow_start);
        total += w;
        // Reservoir sampling: keeps i with probability w / total-so-far.
        if w > 0.0 && fastrand::f64() * total < w {
            chosen = Some(i);
        }
    }
    chosen.or(first)
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Endpoints and counting helpers shared by the balancers' tests.

    use std::sync::Arc;

    use sumun_config::{EndpointAddr, SlowStart};

    use super::{Balancer, PickCtx};
    use crate::endpoint::EndpointState;

    pub fn label(i: usize) -> String {
        format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
    }

    pub fn endpoints(weights: &[u32]) -> Vec<Arc<EndpointState>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let host = format!("10.0.{}.{}", i / 250, i % 250 + 1);
                let ep = EndpointState::new(i, EndpointAddr::Tcp { host, port: 8080 }, w);
                assert_eq!(&*ep.label, label(i));
                Arc::new(ep)
            })
            .collect()
    }

    pub fn labeled(weights: &[u32]) -> Vec<(String, u32)> {
        weights.iter().enumerate().map(|(i, &w)| (label(i), w)).collect()
    }

    pub fn ctx<'a>(hash: Option<u64>, exclude: &'a [usize]) -> PickCtx<'a> {
        PickCtx { hash, now_ms: 10, exclude, panic: false, slow_start: None }
    }

    /// Picks `n` times (hash = the pick's number when `hashed`) and counts per endpoint.
    pub fn counts(b: &dyn Balancer, eps: &[Arc<EndpointState>], n: u64, hashed: bool) -> Vec<u64> {
        let mut c = vec![0u64; eps.len()];
        for k in 0..n {
            let i = b.pick(eps, &ctx(hashed.then_some(k), &[])).expect("an eligible endpoint");
            c[i] += 1;
        }
        c
    }

    /// Asserts each endpoint's share of `counts` is within `tol_relative` of its weight's
    /// share (0.03: a 25 % share may be 24.25 % to 25.75 %).
    pub fn assert_shares(counts: &[u64], weights: &[f64], tol_relative: f64) {
        let total: u64 = counts.iter().sum();
        let wsum: f64 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let got = c as f64 / total as f64;
            let want = w / wsum;
            assert!(
                (got - want).abs() <= want * tol_relative,
                "endpoint {i}: share {got:.4}, want {want:.4} ± {tol_relative} relative; counts {counts:?}"
            );
        }
    }

    pub fn slow_start() -> SlowStart {
        SlowStart { window: std::time::Duration::from_millis(1000), aggression: 1.0, min_weight: 0.1 }
    }

    /// Hashing balancers under slow start: endpoint `ramping` keeps a share of its keys that
    /// grows with the ramp, keys of warm endpoints never move, and a key taken back never
    /// leaves again.
    pub fn hashed_slow_start_contract(b: &dyn Balancer, weights: &[u32], ramping: usize) {
        let ss = slow_start();
        let eps = endpoints(weights);
        let keys: Vec<u64> = (0..100_000u64).map(|k| super::hash_bytes(&k.to_le_bytes())).collect();
        let warm: Vec<usize> = keys.iter().map(|&k| b.pick(&eps, &ctx(Some(k), &[])).unwrap()).collect();
        let own = warm.iter().filter(|&&i| i == ramping).count() as f64;
        eps[ramping].mark_new(1000);
        let mut kept_before = vec![false; keys.len()];
        for (at, ramp) in [(1000, 0.1), (1250, 0.25), (1500, 0.5), (1750, 0.75), (2000, 1.0)] {
            let c = PickCtx { hash: None, now_ms: at, exclude: &[], panic: false, slow_start: Some(&ss) };
            let mut kept = 0.0;
            for (j, &k) in keys.iter().enumerate() {
                let i = b.pick(&eps, &PickCtx { hash: Some(k), ..c }).unwrap();
                if warm[j] != ramping {
                    assert_eq!(i, warm[j], "keys of warm endpoints never move");
                } else if i == ramping {
                    kept += 1.0;
                    kept_before[j] = true;
                } else {
                    assert!(!kept_before[j], "a key the ramping endpoint took back does not leave again");
                }
            }
            assert!(
                (kept / own - ramp).abs() < 0.02,
                "at {at}: kept {} of its keys, want {ramp}",
                kept / own
            );
        }
    }

    /// Every balancer's common contract: exclusion, ineligibility, None, panic.
    pub fn contract(b: &dyn Balancer, hashed: bool) {
        let eps = endpoints(&[1, 2, 3, 4]);
        let h = |k: u64| hashed.then_some(k);
        for k in 0..2000u64 {
            // Retries go elsewhere.
            let first = b.pick(&eps, &ctx(h(k), &[])).expect("pick");
            let second = b.pick(&eps, &ctx(h(k), &[first])).expect("retry");
            assert_ne!(first, second);
            let third = b.pick(&eps, &ctx(h(k), &[first, second])).expect("third");
            assert!(third != first && third != second);
            assert_eq!(b.pick(&eps, &ctx(h(k), &[0, 1, 2, 3])), None);
        }
        // Ineligible endpoints are skipped; only one left → always it.
        eps[0].set_healthy(false, 5);
        eps[2].eject(1_000_000);
        eps[3].set_healthy(false, 5);
        for k in 0..2000u64 {
            assert_eq!(b.pick(&eps, &ctx(h(k), &[])), Some(1));
            assert_eq!(b.pick(&eps, &ctx(h(k), &[1])), None);
        }
        eps[1].set_healthy(false, 5);
        assert_eq!(b.pick(&eps, &ctx(h(1), &[])), None);
        // Panic mode ignores availability but keeps exclusions.
        let panic = |k, ex| PickCtx { panic: true, ..ctx(h(k), ex) };
        let mut seen = [false; 4];
        for k in 0..2000u64 {
            let i = b.pick(&eps, &panic(k, &[])).expect("panic pick");
            seen[i] = true;
            let j = b.pick(&eps, &panic(k, &[2])).expect("panic pick");
            assert_ne!(j, 2);
            seen[j] = true;
        }
        assert_eq!(seen, [true; 4], "panic mode spreads over every endpoint");
        assert_eq!(b.pick(&eps, &panic(1, &[0, 1, 2, 3])), None);
        // An empty pool has nothing to give.
        assert_eq!(b.pick(&[], &ctx(h(1), &[])), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_bytes_is_stable() {
        // xxh3 is specified: the same key maps the same way in every instance and release.
        assert_eq!(hash_bytes(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_bytes(b"user-42"), hash_bytes(b"user-42"));
        assert_ne!(hash_bytes(b"user-42"), hash_bytes(b"user-43"));
    }

    #[test]
    fn sticky_ids_are_short_stable_and_distinct() {
        let a = sticky_id("10.0.0.1:8080");
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, sticky_id("10.0.0.1:8080"));
        assert_ne!(a, sticky_id("10.0.0.2:8080"));
    }

    #[test]
    fn build_follows_the_config() {
        let source = "[listener.web]\nbind = \"127.0.0.1:8080\"\n\n[upstream.u]\nendpoints = [\"10.0.0.1:8080\", \"10.0.0.2:8080\"]\n\n[[route]]\nto = { upstream = \"u\" }\n";
        let loaded =
            sumun_config::parse_str(source, std::path::Path::new("/tmp/sumun.toml")).expect("config");
        let mut cfg = loaded.config.upstreams[0].clone();
        let eps = testkit::endpoints(&[1, 1]);
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequest,
            Balance::RingHash,
            Balance::Rendezvous,
        ] {
            cfg.balance = balance;
            let b = build(&cfg);
            let i = b.pick(&eps, &testkit::ctx(Some(7), &[])).expect("pick");
            assert_eq!(b.pick(&eps, &testkit::ctx(Some(7), &[i])), Some(1 - i), "{balance:?}");
        }
        // The hashing balancers name endpoints by address, like the pool's endpoint states.
        cfg.balance = Balance::Rendezvous;
        let direct = Rendezvous::new(&testkit::labeled(&[1, 1]));
        let built = build(&cfg);
        for k in 0..1000 {
            let c = testkit::ctx(Some(k), &[]);
            assert_eq!(built.pick(&eps, &c), direct.pick(&eps, &c));
        }
    }
}
