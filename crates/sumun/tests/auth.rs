//! Authentication offload through the real binary: JWTs checked against a mock IdP's JWKS
//! (rotation, IdP outage, keys never obtained), API keys, RFC 6750 refusals, and the identity
//! passport the upstream receives, verified independently with PyJWT against the admin
//! listener's `/v1/passport/jwks.json`: one passport per verified token reused across its
//! requests (the default), or one per request naming it (`bind_request = true`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/jwt.rs"]
mod jwt;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use jwt::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const API_KEY: &str = "ci-Zm9vYmFy-key";

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", text])
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

const CONFIG: &str = r#"
[admin]
bind = "127.0.0.1:0"

[listener.web]
bind = "127.0.0.1:0"

[upstream.api]
endpoints = ["@UP@"]

[passport]
issuer = "sumun-test"
audience = "internal"
ttl = "60s"
@SIGNING_KEY@
@BIND@

[auth.users]
realm = "api"
forward_claims = { "x-user-email" = "email", "x-groups" = "groups" }
jwt = { jwks_url = "@IDP@", issuer = "https://idp.example", audience = "api", algorithms = ["RS256", "ES256", "EdDSA"], jwks_min_refresh = "100ms", jwks_min_ttl = "1h", jwks_max_ttl = "2h", jwks_timeout = "2s" }

[auth.machines]
realm = "machines"
api_keys = { from = ["header:x-api-key", "query:api_key"], keys = [ { name = "ci", sha256 = "@CI_SHA@", scopes = ["read", "deploy"] } ] }

[[route]]
name = "api"
match = { path_prefix = "/api" }
to = { upstream = "api" }
auth = "users"
require = { scopes = ["read"] }

[[route]]
name = "admin"
match = { path_prefix = "/admin" }
to = { upstream = "api" }
auth = "users"
require = { scopes = ["admin"] }

[[route]]
name = "ops"
match = { path_prefix = "/ops" }
to = { upstream = "api" }
auth = "users"
require = { claims = { role = "ops" } }

[[route]]
name = "machines"
match = { path_prefix = "/machines" }
to = { upstream = "api" }
auth = "machines"
require = { scopes = ["deploy"] }

[[route]]
name = "other"
match = { path_prefix = "/other" }
to = { echo = true }
"#;

fn config(up: &str, idp: &str, signing_key: Option<&str>) -> String {
    config_bound(up, idp, signing_key, false)
}

fn config_bound(up: &str, idp: &str, signing_key: Option<&str>, bind_request: bool) -> String {
    let key = signing_key.map(|k| format!("signing_key = \"file:{k}\"")).unwrap_or_default();
    let bind = if bind_request { "bind_request = true" } else { "" };
    cfg(
        CONFIG,
        &[("UP", up), ("IDP", idp), ("CI_SHA", &sha256_hex(API_KEY)), ("SIGNING_KEY", &key), ("BIND", bind)],
    )
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "alice", "iss": "https://idp.example", "aud": "api", "iat": now(), "exp": now() + 300,
        "jti": "idp-token-1", "scope": "read write", "email": "alice@example.com", "groups": ["eng", "ops"],
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn get(s: &Sumun, path: &str, headers: &[&str]) -> CurlOut {
    let mut args: Vec<&str> = Vec::new();
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    let url = s.url("web", path);
    args.push(&url);
    curl(&args)
}

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

fn admin(s: &Sumun, path: &str) -> CurlOut {
    curl(&[&format!("http://{}{path}", s.admin_addr().expect("admin address"))])
}

fn metric(s: &Sumun, line_start: &str) -> f64 {
    let text = admin(s, "/metrics").text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn valid_token_gets_a_passport_verified_by_pyjwt_and_forged_headers_are_dropped() {
    let up = Mock::start(Behavior::text("ok"));
    let idp = Idp::start(&jwks(&[jwk("rsa_a", Algorithm::RS256, "a")]));
    let s = Sumun::start(&config(up.endpoint(), &idp.url, None));
    let token = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({})));

    let out = get(
        &s,
        "/api/orders",
        &[
            &bearer(&token),
            "x-sumun-passport: forged.passport.token",
            "x-user-email: mallory@example.com",
            "x-groups: admins",
        ],
    );
    assert_eq!(out.status, 200, "{}", out.text());
    let r = up.only();
    assert_eq!(r.header_all("x-user-email"), ["alice@example.com"]);
    assert_eq!(r.header_all("x-groups"), ["eng,ops"]);
    let passports = r.header_all("x-sumun-passport");
    assert_eq!(passports.len(), 1, "exactly one passport");
    let passport = &passports[0];
    assert_ne!(passport, "forged.passport.token");

    // An independent implementation verifies it with the JWKS the admin listener serves.
    let jwks_url = format!("http://{}/v1/passport/jwks.json", s.admin_addr().unwrap());
    let c =
        pyjwt_verify(&jwks_url, passport, "sumun-test", "internal").unwrap_or_else(|e| panic!("PyJWT: {e}"));
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["scope"], "read write");
    assert_eq!(c["auth"], "users");
    assert_eq!(c["orig_iss"], "https://idp.example");
    assert_eq!(c["orig_jti"], "idp-token-1");
    assert!(c.get("rid").is_none(), "a reused passport names no request: {c}");
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 60);
    assert!(iat.abs_diff(now()) < 60);
    // A wrong audience or issuer is refused by PyJWT too: the claims are really checked.
    assert!(pyjwt_verify(&jwks_url, passport, "sumun-test", "someone-else").is_err());
    assert!(pyjwt_verify(&jwks_url, passport, "not-sumun", "internal").is_err());

    let doc = admin(&s, "/v1/passport/jwks.json");
    assert_eq!(doc.header("content-type"), Some("application/jwk-set+json"));
    let k = &doc.json()["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str(), k["use"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("sig"))
    );
    assert!(k.get("d").is_none());

    // A route without auth forwards no passport and no claim headers, forged or not.
    let echo = get(&s, "/other", &["x-sumun-passport: forged", "x-user-email: mallory@example.com"]);
    let seen = echo.json();
    assert!(seen["headers"].get("x-sumun-passport").is_none(), "{seen}");

    let success = metric(&s, "sumun_auth_success_total{policy=\"users\"}");
    assert!(success >= 1.0, "success counter: {success}");

    // The same token again: answered from the verified-token cache, with the same passport.
    let again = get(&s, "/api/orders", &[&bearer(&token)]);
    assert_eq!(again.status, 200);
    assert_ne!(again.request_id(), out.request_id());
    let reqs = up.wait_finished(2, T);
    assert_eq!(reqs[1].header_all("x-sumun-passport"), [passport.as_str()], "the passport is reused");
    assert_eq!(reqs[1].header_all("x-user-email"), ["alice@example.com"]);
    assert!(metric(&s, "sumun_auth_token_cache_total{policy=\"users\",result=\"hit\"}") >= 1.0);
    // Another token of the same user gets its own passport.
    let other = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({ "jti": "idp-token-2" })));
    assert_eq!(get(&s, "/api/orders", &[&bearer(&other)]).status, 200);
    let reqs = up.wait_finished(3, T);
    let third = reqs[2].header("x-sumun-passport").unwrap();
    assert_ne!(third, passport);
    let c3 = pyjwt_verify(&jwks_url, third, "sumun-test", "internal").unwrap();
    assert_eq!((c3["sub"].as_str(), c3["orig_jti"].as_str()), (Some("alice"), Some("idp-token-2")));
    assert_ne!(c3["jti"], c["jti"]);
}

#[test]
fn bind_request_gives_each_request_its_own_passport() {
    let up = Mock::start(Behavior::text("ok"));
    let idp = Idp::start(&jwks(&[jwk("rsa_a", Algorithm::RS256, "a")]));
    let s = Sumun::start(&config_bound(up.endpoint(), &idp.url, None, true));
    let token = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({})));
    let outs: Vec<CurlOut> = (0..2).map(|_| get(&s, "/api/orders", &[&bearer(&token)])).collect();
    let reqs = up.wait_finished(2, T);
    let jwks_url = format!("http://{}/v1/passport/jwks.json", s.admin_addr().unwrap());
    let mut jtis = Vec::new();
    for (out, r) in outs.iter().zip(&reqs) {
        assert_eq!(out.status, 200, "{}", out.text());
        let c = pyjwt_verify(&jwks_url, r.header("x-sumun-passport").unwrap(), "sumun-test", "internal")
            .unwrap_or_else(|e| panic!("PyJWT: {e}"));
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["rid"], out.request_id(), "the passport names its request");
        assert_eq!(r.header("x-request-id"), Some(out.request_id().as_str()));
        jtis.push(c["jti"].clone());
    }
    assert_ne!(jtis[0], jtis[1], "a unique jti per request");
}

#[test]
fn refusals_follow_rfc6750() {
    let up = Mock::start(Behavior::text("ok"));
    let idp = Idp::start(&jwks(&[jwk("rsa_a", Algorithm::RS256, "a")]));
    let s = Sumun::start(&config(up.endpoint(), &idp.url, None));

    let none = get(&s, "/api/x", &[]);
    assert_problem(&none, 401);
    assert_eq!(none.header_all("www-authenticate"), ["Bearer realm=\"api\""]);

    // Past exp and the default 30 s leeway.
    let expired = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({ "exp": now() - 120 })));
    let out = get(&s, "/api/x", &[&bearer(&expired)]);
    let p = assert_problem(&out, 401);
    assert_eq!(p["detail"], "the token has expired");
    assert_eq!(
        out.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\"")
    );
    assert_eq!(s.access_log(&out.request_id(), T)["error"], "expired");

    let wrong_aud = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({ "aud": "other" })));
    let out = get(&s, "/api/x", &[&bearer(&wrong_aud)]);
    assert_problem(&out, 401);
    assert!(out.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));

    // The HS256 confusion: the IdP's public key is not a secret.
    let rsa_pub = jwk("rsa_a", Algorithm::RS256, "a").to_string();
    let confused = sign_hs(rsa_pub.as_bytes(), &claims(json!({})));
    assert_problem(&get(&s, "/api/x", &[&bearer(&confused)]), 401);

    let token = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({})));
    let out = get(&s, "/admin/x", &[&bearer(&token)]);
    assert_problem(&out, 403);
    assert_eq!(
        out.header("www-authenticate"),
        Some(
            "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"admin\""
        )
    );
    let out = get(&s, "/ops/x", &[&bearer(&token)]);
    assert_problem(&out, 403);
    assert_eq!(s.access_log(&out.request_id(), T)["error"], "claim_mismatch");
    let ops = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({ "role": "ops" })));
    assert_eq!(get(&s, "/ops/x", &[&bearer(&ops)]).status, 200);

    assert_eq!(up.count(), 1, "no refused request reached the upstream");
    for reason in [
        "missing_token",
        "expired",
        "wrong_audience",
        "bad_signature",
        "insufficient_scope",
        "claim_mismatch",
    ] {
        let v = metric(&s, &format!("sumun_auth_failures_total{{policy=\"users\",reason=\"{reason}\"}}"));
        assert!(v >= 1.0, "{reason}: {v}");
    }
}

#[test]
fn idp_key_rotation_then_outage() {
    let up = Mock::start(Behavior::text("ok"));
    let idp = Idp::start(&jwks(&[jwk("rsa_a", Algorithm::RS256, "a")]));
    let s = Sumun::start(&config(up.endpoint(), &idp.url, None));
    let token_a = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({})));
    assert_eq!(get(&s, "/api/x", &[&bearer(&token_a)]).status, 200);
    let fetches = idp.hits();
    assert_eq!(fetches, 1, "fetched once at start, then from cache");

    // The IdP rotates: a new key with a new kid (another algorithm, too).
    idp.set(&jwks(&[jwk("rsa_a", Algorithm::RS256, "a"), jwk("ec256", Algorithm::ES256, "b")]));
    let token_b = sign(Algorithm::ES256, "ec256", "b", &claims(json!({ "sub": "bob" })));
    // The first request with kid b triggers the refetch (at most one per jwks_min_refresh).
    let out = wait_for(T, "the new kid accepted", || {
        let out = get(&s, "/api/x", &[&bearer(&token_b)]);
        (out.status == 200).then_some(out)
    });
    assert_eq!(out.status, 200);
    assert!(idp.hits() > fetches);
    assert_eq!(up.requests().last().unwrap().header("x-user-email"), Some("alice@example.com"));

    // The IdP goes down: the cached keys keep working; an unknown kid is refused as such.
    idp.stop();
    let before_errors = metric(&s, "sumun_auth_jwks_refresh_total{policy=\"users\",result=\"error\"}");
    for t in [&token_a, &token_b] {
        assert_eq!(get(&s, "/api/x", &[&bearer(t)]).status, 200);
    }
    let token_c = sign(Algorithm::EdDSA, "ed25519", "c", &claims(json!({})));
    let out = wait_for(T, "an unknown kid refused after a failed refetch", || {
        let out = get(&s, "/api/x", &[&bearer(&token_c)]);
        let errors = metric(&s, "sumun_auth_jwks_refresh_total{policy=\"users\",result=\"error\"}");
        (out.status == 401 && errors > before_errors).then_some(out)
    });
    assert!(out.header("www-authenticate").unwrap().contains("the token signing key is unknown"));
    assert_eq!(metric(&s, "sumun_auth_jwks_stale{policy=\"users\"}"), 1.0);
    assert_eq!(get(&s, "/api/x", &[&bearer(&token_a)]).status, 200, "still served from the last good set");
    s.stderr
        .wait_line(T, |l| l.contains("JWKS fetch failed") && l.contains("keeping_previous_keys"))
        .expect("the failed fetch is logged");
}

#[test]
fn keys_never_obtained_answer_503_with_retry_after() {
    let up = Mock::start(Behavior::text("ok"));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let s = Sumun::start(&config(up.endpoint(), &dead, None));
    let token = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({})));
    let out = get(&s, "/api/x", &[&bearer(&token)]);
    assert_problem(&out, 503);
    let retry: u64 = out.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(s.access_log(&out.request_id(), T)["error"], "keys_unavailable");
    // A request without a token is still told to authenticate.
    assert_problem(&get(&s, "/api/x", &[]), 401);
    assert_eq!(up.count(), 0);
}

#[test]
fn api_keys_by_header_and_query() {
    let up = Mock::start(Behavior::text("ok"));
    let idp = Idp::start(&jwks(&[]));
    let s = Sumun::start(&config(up.endpoint(), &idp.url, None));

    let out = get(&s, "/machines/deploy", &[&format!("x-api-key: {API_KEY}")]);
    assert_eq!(out.status, 200, "{}", out.text());
    let out = get(&s, &format!("/machines/deploy?api_key={API_KEY}"), &[]);
    assert_eq!(out.status, 200, "{}", out.text());
    let reqs = up.wait_finished(2, T);
    let jwks_url = format!("http://{}/v1/passport/jwks.json", s.admin_addr().unwrap());
    for r in &reqs {
        let c =
            pyjwt_verify(&jwks_url, r.header("x-sumun-passport").unwrap(), "sumun-test", "internal").unwrap();
        assert_eq!(c["sub"], "apikey:ci");
        assert_eq!(c["scope"], "read deploy");
        assert_eq!(c["auth"], "machines");
        assert!(c.get("orig_iss").is_none());
    }
    assert_eq!(
        reqs[0].header("x-sumun-passport"),
        reqs[1].header("x-sumun-passport"),
        "one passport per API key, reused"
    );

    let bad = get(&s, "/machines/deploy", &["x-api-key: ci-Zm9vYmFy-kez"]);
    assert_problem(&bad, 401);
    assert!(
        bad.header("www-authenticate")
            .unwrap()
            .starts_with("ApiKey realm=\"machines\", error=\"invalid_token\"")
    );
    let none = get(&s, "/machines/deploy", &[]);
    assert_eq!(none.header_all("www-authenticate"), ["ApiKey realm=\"machines\""]);
    assert_eq!(up.count(), 2);
    assert!(metric(&s, "sumun_auth_failures_total{policy=\"machines\",reason=\"bad_api_key\"}") >= 1.0);
}

#[test]
fn keygen_key_signs_passports_and_reload_keeps_keys_and_jwks_cache() {
    let dir = tempfile::Builder::new().prefix("sumun-e2e").tempdir_in("/tmp").unwrap();
    let key_path = dir.path().join("passport.pem");
    let keygen = |path: &std::path::Path| {
        std::process::Command::new(common::sumun::binary())
            .args(["passport", "keygen", "--out"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = keygen(&key_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let kid = printed.trim().rsplit_once("(kid ").unwrap().1.trim_end_matches(')').to_owned();
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let original = std::fs::read(&key_path).unwrap();
    let again = keygen(&key_path);
    assert!(!again.status.success(), "keygen must refuse to overwrite");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&key_path).unwrap(), original, "the key is untouched");
    // OpenSSL reads it as an Ed25519 key.
    let text = std::process::Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(&key_path)
        .output();
    if let Ok(text) = text {
        assert!(String::from_utf8_lossy(&text.stdout).contains("ED25519"), "{text:?}");
    }

    let up = Mock::start(Behavior::text("ok"));
    let idp = Idp::start(&jwks(&[jwk("rsa_a", Algorithm::RS256, "a")]));
    let key = key_path.display().to_string();
    let s = Sumun::start_in(dir, &config(up.endpoint(), &idp.url, Some(&key)));
    let doc = admin(&s, "/v1/passport/jwks.json").json();
    assert_eq!(doc["keys"][0]["kid"], kid.as_str(), "kid = the RFC 7638 thumbprint keygen printed");
    let token = sign(Algorithm::RS256, "rsa_a", "a", &claims(json!({})));
    assert_eq!(get(&s, "/api/x", &[&bearer(&token)]).status, 200);
    let jwks_url = format!("http://{}/v1/passport/jwks.json", s.admin_addr().unwrap());
    let passport = up.only().header("x-sumun-passport").unwrap().to_owned();
    assert_eq!(pyjwt_verify(&jwks_url, &passport, "sumun-test", "internal").unwrap()["sub"], "alice");
    let hits = idp.hits();

    // A reload that leaves the auth policy alone keeps its JWKS cache (no refetch), and the
    // passport key.
    let changed =
        config(up.endpoint(), &idp.url, Some(&key)).replace("name = \"other\"", "name = \"other2\"");
    reload(&s, &changed);
    assert_eq!(get(&s, "/api/x", &[&bearer(&token)]).status, 200);
    assert_eq!(idp.hits(), hits, "the unchanged policy kept its key set");
    assert_eq!(admin(&s, "/v1/passport/jwks.json").json()["keys"][0]["kid"], kid.as_str());
    // Rotating to a generated key (no signing_key): the old key stays published while its
    // passports may be alive.
    let generated = config(up.endpoint(), &idp.url, None).replace("name = \"other\"", "name = \"other3\"");
    reload(&s, &generated);
    let keys = admin(&s, "/v1/passport/jwks.json").json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_ne!(keys[0]["kid"], kid.as_str());
    assert_eq!(keys[1]["kid"], kid.as_str());
    assert_eq!(pyjwt_verify(&jwks_url, &passport, "sumun-test", "internal").unwrap()["sub"], "alice");
}

/// Rewrites the config file and sends SIGHUP; waits for the reload to succeed.
fn reload(s: &Sumun, config: &str) {
    let before = s.stderr.all().len();
    std::fs::write(s.config_path(), config).unwrap();
    s.signal(Signal::SIGHUP);
    wait_for(T, "configuration reloaded", || {
        let lines = s.stderr.all();
        lines[before.min(lines.len())..].iter().any(|l| l.contains("configuration reloaded")).then_some(())
    });
}
