//! What authentication and the passport cost per request: a JWT verified from scratch (RS256,
//! ES256) against the same token answered by the verified-token cache, an API key, and the
//! passport signed per request (`bind_request = true`) against reused (the default), as wall
//! time and this process's CPU time per call. Not a test: it prints figures.
//!
//! `cargo run --release -p sumun-gateway --example auth_cost`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use http::HeaderValue;
use http::request::Parts;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sumun_config::{ApiKey, ApiKeyAuth, AuthPolicy, JwtAuth};
use sumun_gateway::protect::auth::{Authenticated, Authenticator};
use sumun_gateway::protect::passport::{Passport, PassportSlot};

/// utime + stime of this process, from /proc (10 ms ticks: runs last seconds).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/protect/auth/testdata")).join(name)
}

fn jwt_cfg(key: &str) -> JwtAuth {
    JwtAuth {
        jwks_url: None,
        key_files: vec![testdata(key)],
        secret: None,
        algorithms: Vec::new(),
        issuers: vec!["https://idp.bench".into()],
        audiences: vec!["api".into()],
        leeway: Duration::ZERO,
        sources: Vec::new(),
        scope_claim: "scope".into(),
        jwks_min_refresh: Duration::from_secs(30),
        jwks_min_ttl: Duration::from_secs(60),
        jwks_max_ttl: Duration::from_secs(3600),
        jwks_timeout: Duration::from_secs(2),
    }
}

fn policy(jwt: Option<JwtAuth>, api_keys: Option<ApiKeyAuth>) -> AuthPolicy {
    AuthPolicy { name: "bench".into(), jwt, api_keys, realm: "api".into(), forward_claims: Vec::new() }
}

/// A token like an IdP's access token (about 800 bytes with RS256).
fn token(alg: Algorithm, key: &EncodingKey, n: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.bench", "aud": "api", "sub": format!("user-{n}"), "scope": "read write",
        "iat": now, "exp": now + 3600, "jti": format!("bench-{n}"),
        "email": "someone@example.com", "azp": "bench-client",
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn bearer(token: &str) -> Parts {
    http::Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn authenticate(a: &Authenticator, p: &Parts) -> Authenticated {
    a.authenticate(p).now_or_never().expect("no await without a JWKS URL").unwrap()
}

fn report(what: &str, n: usize, wall: Duration, cpu: Duration) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("{what:<52} {n:>8} calls  wall {:>8.3} µs/call  cpu {:>8.3} µs/call", per(wall), per(cpu));
}

fn measure(what: &str, n: usize, mut f: impl FnMut(usize)) {
    let (w, c) = (Instant::now(), cpu());
    for i in 0..n {
        f(i);
    }
    report(what, n, w.elapsed(), cpu() - c);
}

fn jwt(alg: Algorithm, private: &str, public: &str, distinct: usize) {
    let pem = std::fs::read(testdata(private)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let tokens: Vec<Parts> = (0..distinct as u64).map(|n| bearer(&token(alg, &key, n))).collect();
    let len = tokens[0].headers["authorization"].len() - "Bearer ".len();
    let a = Authenticator::new(&policy(Some(jwt_cfg(public)), None)).unwrap();
    measure(&format!("{alg:?} ({len} B token), verified (cache miss)"), distinct, |i| {
        authenticate(&a, &tokens[i]);
    });
    let hot = &tokens[0];
    measure(&format!("{alg:?}, same token again (cache hit)"), 2_000_000, |_| {
        authenticate(&a, hot);
    });
    measure(&format!("{alg:?}, {distinct} cached tokens in turn (hits)"), 2_000_000, |i| {
        authenticate(&a, &tokens[i % distinct]);
    });
}

fn main() {
    jwt(Algorithm::RS256, "rsa_a.pem", "rsa_a.pub.pem", 2_000);
    jwt(Algorithm::ES256, "ec256.pem", "ec256.pub.pem", 2_000);

    let keys = ApiKeyAuth {
        sources: Vec::new(),
        keys: (0..10)
            .map(|i| ApiKey {
                name: format!("k{i}"),
                sha256: sha256(format!("secret-{i}").as_bytes()),
                scopes: vec!["read".into()],
            })
            .collect(),
    };
    let a = Authenticator::new(&policy(None, Some(keys))).unwrap();
    let p = http::Request::get("/").header("x-api-key", "secret-7").body(()).unwrap().into_parts().0;
    measure("API key (10 stored)", 2_000_000, |_| {
        authenticate(&a, &p);
    });

    let rid = HeaderValue::from_static("0192f1e4-5b6c-7d8e-9f00-112233445566");
    let id = authenticate(&a, &p);
    for bind_request in [true, false] {
        let cfg = sumun_config::Passport {
            audience: Some("internal".into()),
            bind_request,
            ..sumun_config::Passport::default()
        };
        let passport = Passport::new(&cfg, None).unwrap();
        let slot = PassportSlot::default();
        let n = if bind_request { 50_000 } else { 2_000_000 };
        measure(&format!("passport, bind_request = {bind_request}"), n, |_| {
            passport.issue(&id, &slot, &rid).unwrap();
        });
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
