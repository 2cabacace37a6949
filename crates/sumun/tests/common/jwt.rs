//! JWT test helpers: the fixed test keys of the gateway's unit tests, token signing, JWKs, and
//! a mock identity provider serving a JWKS that a test can rotate or take down.
//! Included with `#[path = "common/jwt.rs"] mod jwt;` next to `mod common;`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::Value;

use crate::common::RT;

/// A private test key (PKCS#8 PEM) by name: `rsa_a`, `rsa_b`, `ec256`, `ec384`, `ed25519`.
pub fn private_pem(name: &str) -> &'static str {
    match name {
        "rsa_a" => include_str!("../../../sumun-gateway/src/protect/auth/testdata/rsa_a.pem"),
        "rsa_b" => include_str!("../../../sumun-gateway/src/protect/auth/testdata/rsa_b.pem"),
        "ec256" => include_str!("../../../sumun-gateway/src/protect/auth/testdata/ec256.pem"),
        "ec384" => include_str!("../../../sumun-gateway/src/protect/auth/testdata/ec384.pem"),
        "ed25519" => include_str!("../../../sumun-gateway/src/protect/auth/testdata/ed25519.pem"),
        other => panic!("no test key {other}"),
    }
}

fn encoding_key(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = private_pem(name).as_bytes();
    match alg.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem).unwrap(),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem).unwrap(),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem).unwrap(),
        _ => panic!("HMAC keys are secrets, not test keys"),
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token signed with test key `key`, header `kid`.
pub fn sign(alg: Algorithm, key: &str, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, claims, &encoding_key(key, alg)).unwrap()
}

/// An HMAC token.
pub fn sign_hs(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// The public JWK of test key `key`, with `kid`.
pub fn jwk(key: &str, alg: Algorithm, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(&encoding_key(key, alg), alg).unwrap();
    j.common.key_id = Some(kid.to_owned());
    serde_json::to_value(j).unwrap()
}

pub fn jwks(keys: &[Value]) -> Value {
    serde_json::json!({ "keys": keys })
}

struct IdpState {
    status: u16,
    body: String,
    cache_control: Option<String>,
}

/// A mock identity provider: `GET` anything returns the current JWKS. Every response closes
/// its connection, so [`Idp::stop`] makes it unreachable at once.
pub struct Idp {
    pub url: String,
    state: Arc<Mutex<IdpState>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    pub fn start(doc: &Value) -> Idp {
        let listener = RT.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let state =
            Arc::new(Mutex::new(IdpState { status: 200, body: doc.to_string(), cache_control: None }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (st, h) = (state.clone(), hits.clone());
        let task = RT.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (st, h) = (st.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let (st, h) = (st.clone(), h.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let (status, body, cc) = {
                                let s = st.lock().unwrap();
                                (s.status, s.body.clone(), s.cache_control.clone())
                            };
                            let mut res = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .header("connection", "close");
                            if let Some(cc) = cc {
                                res = res.header("cache-control", cc);
                            }
                            Ok::<_, Infallible>(res.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Idp { url, state, hits, task }
    }

    pub fn set(&self, doc: &Value) {
        self.state.lock().unwrap().body = doc.to_string();
    }

    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        self.state.lock().unwrap().cache_control = value.map(str::to_owned);
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were served.
    pub fn wait_hits(&self, n: usize, timeout: Duration) {
        crate::common::wait_for(timeout, &format!("{n} JWKS fetches"), || (self.hits() >= n).then_some(()));
    }

    /// Closes the listener: the IdP is down.
    pub fn stop(&self) {
        self.task.abort();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.task.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies `token` with PyJWT against the JWKS served at `jwks_url`, checking `issuer` and
/// `audience`; returns the verified claims.
pub fn pyjwt_verify(jwks_url: &str, token: &str, issuer: &str, audience: &str) -> Result<Value, String> {
    const SCRIPT: &str = r#"
import json, sys, urllib.request
import jwt
url, token, issuer, audience = sys.argv[1:5]
doc = json.load(urllib.request.urlopen(url, timeout=10))
kid = jwt.get_unverified_header(token)["kid"]
keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(doc).keys}
claims = jwt.decode(token, keys[kid].key, algorithms=["EdDSA"], issuer=issuer, audience=audience,
                    options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})
print(json.dumps(claims))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, jwks_url, token, issuer, audience])
        .output()
        .expect("run python3 (PyJWT: scripts/test installs it)");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
