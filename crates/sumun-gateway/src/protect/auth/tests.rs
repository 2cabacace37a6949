#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sumun_config::{ApiKey, ApiKeyAuth, AuthPolicy, CredentialSource, JwtAuth, RouteAuth, Secret};

use super::*;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/protect/auth/testdata")).join(name)
}

fn private(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(testdata(name)).unwrap();
    match alg.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem).unwrap(),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem).unwrap(),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_secret(&pem),
    }
}

use jsonwebtoken::AlgorithmFamily;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn claims() -> Value {
    json!({ "sub": "alice", "iss": "https://idp.example", "aud": "api", "exp": now() + 300, "scope": "read write" })
}

fn jwt_cfg() -> JwtAuth {
    JwtAuth {
        jwks_url: None,
        key_files: Vec::new(),
        secret: None,
        algorithms: Vec::new(),
        issuers: Vec::new(),
        audiences: Vec::new(),
        leeway: Duration::ZERO,
        sources: Vec::new(),
        scope_claim: "scope".into(),
        jwks_min_refresh: Duration::from_secs(30),
        jwks_min_ttl: Duration::from_secs(60),
        jwks_max_ttl: Duration::from_secs(86400),
        jwks_timeout: Duration::from_secs(2),
    }
}

fn policy(jwt: Option<JwtAuth>, api_keys: Option<ApiKeyAuth>) -> AuthPolicy {
    AuthPolicy { name: "users".into(), jwt, api_keys, realm: "api".into(), forward_claims: Vec::new() }
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> http::request::Parts {
    parts("/", &[("authorization", &format!("Bearer {token}"))])
}

async fn reason(
    a: &Authenticator,
    p: &http::request::Parts,
) -> Result<Authenticated, (StatusCode, &'static str, HeaderMap)> {
    a.authenticate(p).await.map_err(|r| {
        let mut h = HeaderMap::new();
        for (n, v) in r.headers {
            h.append(n, v);
        }
        (r.status, r.reason, h)
    })
}

async fn fails(a: &Authenticator, token: &str) -> &'static str {
    match reason(a, &bearer(token)).await {
        Ok(id) => panic!("accepted: {id:?}"),
        Err((_, r, _)) => r,
    }
}

#[tokio::test]
async fn every_algorithm_family_signs_and_verifies() {
    let cases = [
        (Algorithm::RS256, "rsa_a"),
        (Algorithm::RS384, "rsa_a"),
        (Algorithm::RS512, "rsa_a"),
        (Algorithm::PS256, "rsa_a"),
        (Algorithm::PS384, "rsa_a"),
        (Algorithm::PS512, "rsa_a"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
        (Algorithm::EdDSA, "ed25519"),
    ];
    for (alg, name) in cases {
        let cfg = JwtAuth { key_files: vec![testdata(&format!("{name}.pub.pem"))], ..jwt_cfg() };
        let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
        let token = sign(alg, &private(&format!("{name}.pem"), alg), None, claims());
        let id = reason(&a, &bearer(&token)).await.unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(id.subject, "alice", "{alg:?}");
        assert_eq!(id.scopes, ["read", "write"]);
        assert_eq!(id.issuer.as_deref(), Some("https://idp.example"));
        // The same token with another key of the family fails.
        if name == "rsa_a" {
            let other = sign(alg, &private("rsa_b.pem", alg), None, claims());
            assert_eq!(fails(&a, &other).await, "bad_signature", "{alg:?}");
        }
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let cfg = JwtAuth { secret: Some(Secret("s3cret-s3cret-s3cret-s3cret-s3cret".into())), ..jwt_cfg() };
        let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
        let token =
            sign(alg, &EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"), None, claims());
        assert_eq!(reason(&a, &bearer(&token)).await.unwrap().subject, "alice", "{alg:?}");
        let forged = sign(alg, &EncodingKey::from_secret(b"guess"), None, claims());
        assert_eq!(fails(&a, &forged).await, "bad_signature");
    }
}

#[tokio::test]
async fn jwks_file_keys_are_selected_by_kid() {
    let jwk = |name: &str, alg: Algorithm, kid: &str| {
        let mut j = Jwk::from_encoding_key(&private(name, alg), alg).unwrap();
        j.common.key_id = Some(kid.into());
        serde_json::to_value(j).unwrap()
    };
    let dir = tempdir();
    let path = dir.join("jwks.json");
    let doc = json!({ "keys": [
        jwk("rsa_a.pem", Algorithm::RS256, "a"),
        jwk("ec256.pem", Algorithm::ES256, "e"),
        { "kty": "oct", "k": "c2VjcmV0", "kid": "sym" },
        { "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc" },
    ]});
    std::fs::write(&path, doc.to_string()).unwrap();
    let a = Authenticator::new(&policy(Some(JwtAuth { key_files: vec![path], ..jwt_cfg() }), None)).unwrap();
    let ok = sign(Algorithm::RS256, &private("rsa_a.pem", Algorithm::RS256), Some("a"), claims());
    assert!(reason(&a, &bearer(&ok)).await.is_ok());
    let ec = sign(Algorithm::ES256, &private("ec256.pem", Algorithm::ES256), Some("e"), claims());
    assert!(reason(&a, &bearer(&ec)).await.is_ok());
    // The RSA key under the EC key's kid.
    let wrong = sign(Algorithm::RS256, &private("rsa_a.pem", Algorithm::RS256), Some("e"), claims());
    assert_eq!(fails(&a, &wrong).await, "bad_signature");
    let unknown = sign(Algorithm::RS256, &private("rsa_a.pem", Algorithm::RS256), Some("zzz"), claims());
    assert_eq!(fails(&a, &unknown).await, "unknown_key");
    // A symmetric key in a key document is never used as an HMAC secret.
    let hs = sign(Algorithm::HS256, &EncodingKey::from_secret(b"secret"), Some("sym"), claims());
    assert_eq!(fails(&a, &hs).await, "bad_signature");
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sumun-auth-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn time_claims_with_leeway() {
    let rsa = || JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() };
    let key = private("rsa_a.pem", Algorithm::RS256);
    let a = Authenticator::new(&policy(Some(rsa()), None)).unwrap();
    let t = now();
    let expired = sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": t - 10 }));
    assert_eq!(fails(&a, &expired).await, "expired");
    let early = sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": t + 300, "nbf": t + 100 }));
    assert_eq!(fails(&a, &early).await, "not_yet_valid");
    let no_exp = sign(Algorithm::RS256, &key, None, json!({ "sub": "a" }));
    assert_eq!(fails(&a, &no_exp).await, "malformed", "exp is required");
    let bad_exp = sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": "tomorrow" }));
    assert_eq!(fails(&a, &bad_exp).await, "malformed");

    let lenient =
        Authenticator::new(&policy(Some(JwtAuth { leeway: Duration::from_secs(30), ..rsa() }), None))
            .unwrap();
    assert!(reason(&lenient, &bearer(&expired)).await.is_ok(), "10 s past exp is within 30 s leeway");
    let early_short =
        sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": t + 300, "nbf": t + 10 }));
    assert!(reason(&lenient, &bearer(&early_short)).await.is_ok());
    assert_eq!(fails(&lenient, &early).await, "not_yet_valid");
    let long_expired = sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": t - 120 }));
    assert_eq!(fails(&lenient, &long_expired).await, "expired");
}

#[tokio::test]
async fn issuer_and_audience() {
    let cfg = JwtAuth {
        key_files: vec![testdata("rsa_a.pub.pem")],
        issuers: vec!["https://idp.example".into(), "https://idp2.example".into()],
        audiences: vec!["api".into()],
        ..jwt_cfg()
    };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    let key = private("rsa_a.pem", Algorithm::RS256);
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign(Algorithm::RS256, &key, None, c)
    };
    assert!(reason(&a, &bearer(&with(json!({})))).await.is_ok());
    assert!(
        reason(&a, &bearer(&with(json!({ "iss": "https://idp2.example", "aud": ["x", "api"] }))))
            .await
            .is_ok()
    );
    assert_eq!(fails(&a, &with(json!({ "iss": "https://evil.example" }))).await, "wrong_issuer");
    assert_eq!(fails(&a, &with(json!({ "iss": null }))).await, "wrong_issuer");
    assert_eq!(fails(&a, &with(json!({ "aud": "other" }))).await, "wrong_audience");
    assert_eq!(fails(&a, &with(json!({ "aud": ["x", "y"] }))).await, "wrong_audience");
    assert_eq!(fails(&a, &with(json!({ "aud": null }))).await, "wrong_audience");

    // Without configured audiences, any `aud` passes.
    let open = Authenticator::new(&policy(
        Some(JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() }),
        None,
    ))
    .unwrap();
    assert!(reason(&open, &bearer(&with(json!({ "aud": "anything" })))).await.is_ok());
}

#[tokio::test]
async fn algorithm_confusion_and_none_are_refused() {
    let public_pem = std::fs::read(testdata("rsa_a.pub.pem")).unwrap();
    // HS256 signed with the RSA public key as the HMAC secret (the classic confusion).
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), None, claims());
    let rsa_only = Authenticator::new(&policy(
        Some(JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() }),
        None,
    ))
    .unwrap();
    assert_eq!(fails(&rsa_only, &confused).await, "bad_signature");
    // Even with HS256 allowed and a secret configured, the public key is never the secret.
    let both = Authenticator::new(&policy(
        Some(JwtAuth {
            key_files: vec![testdata("rsa_a.pub.pem")],
            secret: Some(Secret("another-secret".into())),
            algorithms: vec!["RS256".into(), "HS256".into()],
            ..jwt_cfg()
        }),
        None,
    ))
    .unwrap();
    assert_eq!(fails(&both, &confused).await, "bad_signature");

    // alg: none, with and without a signature.
    let b64 =
        |v: Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    let none = format!("{}.{}.", b64(json!({ "alg": "none", "typ": "JWT" })), b64(claims()));
    assert_eq!(fails(&rsa_only, &none).await, "malformed");
    let none_sig = format!("{none}c2ln");
    assert_eq!(fails(&rsa_only, &none_sig).await, "malformed");

    // An algorithm outside the allowed list, with the right key.
    let rs_only = Authenticator::new(&policy(
        Some(JwtAuth {
            key_files: vec![testdata("rsa_a.pub.pem")],
            algorithms: vec!["RS256".into()],
            ..jwt_cfg()
        }),
        None,
    ))
    .unwrap();
    let ps = sign(Algorithm::PS256, &private("rsa_a.pem", Algorithm::PS256), None, claims());
    assert_eq!(fails(&rs_only, &ps).await, "bad_signature");
    // An EdDSA token against an RSA key.
    let ed = sign(Algorithm::EdDSA, &private("ed25519.pem", Algorithm::EdDSA), None, claims());
    assert_eq!(fails(&rsa_only, &ed).await, "unknown_key");

    for junk in ["", "abc", "a.b", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.!!!.x"] {
        let r = reason(&rsa_only, &parts("/", &[("authorization", &format!("Bearer {junk}"))]))
            .await
            .unwrap_err();
        assert!(matches!(r.1, "malformed" | "missing_token"), "{junk}: {r:?}");
    }
}

#[test]
fn config_errors() {
    assert!(Authenticator::new(&policy(None, None)).is_err());
    assert!(Authenticator::new(&policy(Some(jwt_cfg()), None)).unwrap_err().contains("jwks_url"));
    let bad_alg =
        JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], algorithms: vec!["none".into()], ..jwt_cfg() };
    assert!(Authenticator::new(&policy(Some(bad_alg), None)).unwrap_err().contains("none"));
    let hs_no_secret =
        JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], algorithms: vec!["HS256".into()], ..jwt_cfg() };
    assert!(Authenticator::new(&policy(Some(hs_no_secret), None)).unwrap_err().contains("secret"));
    let private_key = JwtAuth { key_files: vec![testdata("rsa_a.pem")], ..jwt_cfg() };
    assert!(Authenticator::new(&policy(Some(private_key), None)).unwrap_err().contains("private"));
    let missing = JwtAuth { key_files: vec![testdata("nope.pem")], ..jwt_cfg() };
    assert!(Authenticator::new(&policy(Some(missing), None)).unwrap_err().contains("nope.pem"));
    let bad_url = JwtAuth { jwks_url: Some("ftp://idp/jwks".into()), ..jwt_cfg() };
    assert!(Authenticator::new(&policy(Some(bad_url), None)).unwrap_err().contains("http"));
}

#[tokio::test]
async fn challenges_follow_rfc6750() {
    let cfg = JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() };
    let a = Authenticator::new(&policy(Some(cfg.clone()), None)).unwrap();
    let (status, r, h) = reason(&a, &parts("/", &[])).await.unwrap_err();
    assert_eq!((status, r), (StatusCode::UNAUTHORIZED, "missing_token"));
    assert_eq!(h.get_all("www-authenticate").iter().collect::<Vec<_>>(), ["Bearer realm=\"api\""]);
    // Another scheme is not a bearer token: no error code either.
    let (_, r, _) = reason(&a, &parts("/", &[("authorization", "Basic dTpw")])).await.unwrap_err();
    assert_eq!(r, "missing_token");

    let expired =
        sign(Algorithm::RS256, &private("rsa_a.pem", Algorithm::RS256), None, json!({ "exp": now() - 100 }));
    let (status, _, h) = reason(&a, &bearer(&expired)).await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\""
    );

    let id =
        reason(&a, &bearer(&sign(Algorithm::RS256, &private("rsa_a.pem", Algorithm::RS256), None, claims())))
            .await
            .unwrap();
    let require =
        RouteAuth { policy: "users".into(), scopes: vec!["read".into(), "admin".into()], claims: Vec::new() };
    let r = a.authorize(&id, &require).unwrap_err();
    assert_eq!((r.status, r.reason), (StatusCode::FORBIDDEN, "insufficient_scope"));
    let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").unwrap().1.to_str().unwrap().to_owned();
    assert!(www.starts_with("Bearer realm=\"api\", error=\"insufficient_scope\""), "{www}");
    assert!(www.ends_with(", scope=\"read admin\""), "{www}");
    let require = RouteAuth {
        policy: "users".into(),
        scopes: vec!["write".into()],
        claims: vec![("sub".into(), "bob".into())],
    };
    let r = a.authorize(&id, &require).unwrap_err();
    assert_eq!((r.status, r.reason), (StatusCode::FORBIDDEN, "claim_mismatch"));
    assert!(r.headers.is_empty());
    let require = RouteAuth {
        policy: "users".into(),
        scopes: vec!["write".into()],
        claims: vec![("sub".into(), "alice".into())],
    };
    assert!(a.authorize(&id, &require).is_ok());

    // Realm text is escaped inside the quoted string.
    let mut p = policy(Some(cfg), None);
    p.realm = "my \"realm\"\r\n".into();
    let a = Authenticator::new(&p).unwrap();
    let (_, _, h) = reason(&a, &parts("/", &[])).await.unwrap_err();
    assert_eq!(h["www-authenticate"], "Bearer realm=\"my \\\"realm\\\"\"");
}

fn api_keys() -> ApiKeyAuth {
    ApiKeyAuth {
        sources: vec![
            CredentialSource::Header("x-api-key".into()),
            CredentialSource::Query("api_key".into()),
        ],
        keys: vec![
            ApiKey { name: "ci".into(), sha256: sha256(b"ci-key-123"), scopes: vec!["read".into()] },
            ApiKey {
                name: "ops".into(),
                sha256: sha256(b"ops key/+="),
                scopes: vec!["read".into(), "write".into()],
            },
        ],
    }
}

#[tokio::test]
async fn api_keys_from_header_and_query() {
    let a = Authenticator::new(&policy(None, Some(api_keys()))).unwrap();
    let id = reason(&a, &parts("/", &[("x-api-key", "ci-key-123")])).await.unwrap();
    assert_eq!((id.subject.as_str(), id.api_key.as_deref()), ("apikey:ci", Some("ci")));
    assert_eq!(id.scopes, ["read"]);
    assert!(id.claims.is_empty());
    let id = reason(&a, &parts("/x?a=1&api_key=ops%20key%2F%2B%3D", &[])).await.unwrap();
    assert_eq!(id.api_key.as_deref(), Some("ops"));
    // The header comes first in `from`.
    let id =
        reason(&a, &parts("/x?api_key=ops%20key%2F%2B%3D", &[("x-api-key", "ci-key-123")])).await.unwrap();
    assert_eq!(id.api_key.as_deref(), Some("ci"));

    let (status, r, h) = reason(&a, &parts("/", &[("x-api-key", "ci-key-124")])).await.unwrap_err();
    assert_eq!((status, r), (StatusCode::UNAUTHORIZED, "bad_api_key"));
    assert!(
        h["www-authenticate"].to_str().unwrap().starts_with("ApiKey realm=\"api\", error=\"invalid_token\"")
    );
    let (_, r, h) = reason(&a, &parts("/", &[])).await.unwrap_err();
    assert_eq!(r, "missing_token");
    assert_eq!(h["www-authenticate"], "ApiKey realm=\"api\"");

    let require = RouteAuth { policy: "users".into(), scopes: vec!["write".into()], claims: Vec::new() };
    let id = reason(&a, &parts("/", &[("x-api-key", "ci-key-123")])).await.unwrap();
    let r = a.authorize(&id, &require).unwrap_err();
    assert!(
        r.headers[0].1.to_str().unwrap().starts_with("ApiKey realm=\"api\", error=\"insufficient_scope\"")
    );
}

#[tokio::test]
async fn jwt_and_api_key_policy() {
    let cfg = JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() };
    let mut keys = api_keys();
    keys.sources.push(CredentialSource::Header("authorization".into()));
    let a = Authenticator::new(&policy(Some(cfg), Some(keys))).unwrap();
    let token = sign(Algorithm::RS256, &private("rsa_a.pem", Algorithm::RS256), None, claims());
    assert_eq!(reason(&a, &bearer(&token)).await.unwrap().subject, "alice");
    // A bearer value that is not a JWT is tried as an API key.
    assert_eq!(reason(&a, &bearer("ci-key-123")).await.unwrap().api_key.as_deref(), Some("ci"));
    assert_eq!(reason(&a, &parts("/", &[("x-api-key", "ci-key-123")])).await.unwrap().subject, "apikey:ci");
    let (_, _, h) = reason(&a, &parts("/", &[])).await.unwrap_err();
    let challenges: Vec<_> = h.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(challenges, ["Bearer realm=\"api\"", "ApiKey realm=\"api\""]);
}

#[tokio::test]
async fn token_sources_in_order() {
    let cfg = JwtAuth {
        key_files: vec![testdata("rsa_a.pub.pem")],
        sources: vec![
            CredentialSource::Header("authorization".into()),
            CredentialSource::Cookie("session".into()),
            CredentialSource::Query("access_token".into()),
        ],
        ..jwt_cfg()
    };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    let key = private("rsa_a.pem", Algorithm::RS256);
    let mk = |sub: &str| sign(Algorithm::RS256, &key, None, json!({ "sub": sub, "exp": now() + 60 }));
    let (h, c, q) = (mk("from-header"), mk("from-cookie"), mk("from-query"));
    let cookie = format!("theme=dark; session={c}; other=1");
    let uri = format!("/p?x=1&access_token={q}");
    let a = &a;
    let sub = |p| async move { reason(a, &p).await.unwrap().subject.clone() };
    assert_eq!(
        sub(parts(&uri, &[("authorization", &format!("bearer {h}")), ("cookie", &cookie)])).await,
        "from-header"
    );
    assert_eq!(sub(parts(&uri, &[("cookie", "a=b"), ("cookie", &cookie)])).await, "from-cookie");
    assert_eq!(sub(parts(&uri, &[("authorization", "Basic x")])).await, "from-query");
}

#[tokio::test]
async fn scopes_from_string_array_and_scp() {
    let cfg = JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() };
    let a = Authenticator::new(&policy(Some(cfg.clone()), None)).unwrap();
    let key = private("rsa_a.pem", Algorithm::RS256);
    let scopes = |c: Value| {
        let t = sign(Algorithm::RS256, &key, None, c);
        let a = &a;
        async move { reason(a, &bearer(&t)).await.unwrap().scopes.clone() }
    };
    let exp = now() + 60;
    assert_eq!(scopes(json!({ "exp": exp, "scope": "  a  b\tc " })).await, ["a", "b", "c"]);
    assert_eq!(scopes(json!({ "exp": exp, "scope": ["a", 1, "b"] })).await, ["a", "b"]);
    assert_eq!(scopes(json!({ "exp": exp, "scp": ["x", "y"] })).await, ["x", "y"]);
    assert_eq!(scopes(json!({ "exp": exp, "scope": { "a": 1 } })).await, Vec::<String>::new());

    let custom =
        Authenticator::new(&policy(Some(JwtAuth { scope_claim: "permissions".into(), ..cfg }), None))
            .unwrap();
    let t =
        sign(Algorithm::RS256, &key, None, json!({ "exp": exp, "permissions": ["p:1"], "scope": "ignored" }));
    assert_eq!(reason(&custom, &bearer(&t)).await.unwrap().scopes, ["p:1"]);
}

#[tokio::test]
async fn forward_claims_are_sanitized() {
    let mut p = policy(Some(JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() }), None);
    p.forward_claims = vec![
        ("x-user-email".into(), "email".into()),
        ("x-groups".into(), "groups".into()),
        ("x-evil".into(), "evil".into()),
        ("x-obj".into(), "obj".into()),
        ("x-level".into(), "level".into()),
        ("x-missing".into(), "missing".into()),
        ("x-mixed".into(), "mixed".into()),
        ("x-sub".into(), "sub".into()),
    ];
    let a = Authenticator::new(&p).unwrap();
    assert_eq!(a.claim_headers().len(), 8);
    let token = sign(
        Algorithm::RS256,
        &private("rsa_a.pem", Algorithm::RS256),
        None,
        json!({
            "sub": "alice", "exp": now() + 60, "email": " alice@example.com ", "groups": ["eng", "ops"],
            "evil": "x\r\nx-admin: true", "obj": { "a": 1 }, "level": 3, "mixed": ["a", { "b": 1 }],
        }),
    );
    let id = reason(&a, &bearer(&token)).await.unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-missing", "forged".parse().unwrap());
    h.insert("x-evil", "forged".parse().unwrap());
    a.forward_claims(&id, &mut h);
    assert_eq!(h["x-user-email"], "alice@example.com");
    assert_eq!(h["x-groups"], "eng,ops");
    assert_eq!(h["x-level"], "3");
    assert_eq!(h["x-sub"], "alice");
    for absent in ["x-evil", "x-obj", "x-missing", "x-mixed", "x-admin"] {
        assert!(!h.contains_key(absent), "{absent} must not be forwarded: {h:?}");
    }

    // An API key forwards its subject as `sub`.
    let mut p2 = policy(None, Some(api_keys()));
    p2.forward_claims = vec![("x-sub".into(), "sub".into()), ("x-email".into(), "email".into())];
    let a2 = Authenticator::new(&p2).unwrap();
    let id = reason(&a2, &parts("/", &[("x-api-key", "ci-key-123")])).await.unwrap();
    let mut h = HeaderMap::new();
    a2.forward_claims(&id, &mut h);
    assert_eq!(h["x-sub"], "apikey:ci");
    assert!(!h.contains_key("x-email"));
}

#[tokio::test]
async fn claims_requirements_match_scalars_and_arrays() {
    let a = Authenticator::new(&policy(
        Some(JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() }),
        None,
    ))
    .unwrap();
    let token = sign(
        Algorithm::RS256,
        &private("rsa_a.pem", Algorithm::RS256),
        None,
        json!({ "exp": now() + 60, "role": "admin", "groups": ["eng", "ops"], "verified": true, "tier": 2 }),
    );
    let id = reason(&a, &bearer(&token)).await.unwrap();
    let req = |claims: &[(&str, &str)]| RouteAuth {
        policy: "users".into(),
        scopes: Vec::new(),
        claims: claims.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
    };
    assert!(
        a.authorize(&id, &req(&[("role", "admin"), ("groups", "ops"), ("verified", "true"), ("tier", "2")]))
            .is_ok()
    );
    for bad in [("role", "user"), ("groups", "sales"), ("verified", "false"), ("nope", "x")] {
        assert_eq!(a.authorize(&id, &req(&[bad])).unwrap_err().reason, "claim_mismatch", "{bad:?}");
    }
}

#[tokio::test]
async fn same_policy_tracks_settings_and_key_files() {
    let dir = tempdir();
    let path = dir.join("key.pem");
    std::fs::copy(testdata("rsa_a.pub.pem"), &path).unwrap();
    let p = policy(Some(JwtAuth { key_files: vec![path.clone()], ..jwt_cfg() }), None);
    let a = Authenticator::new(&p).unwrap();
    assert!(a.same_policy(&p.clone()));
    let mut changed = p.clone();
    changed.realm = "other".into();
    assert!(!a.same_policy(&changed));
    let mut changed = p.clone();
    changed.jwt.as_mut().unwrap().leeway = Duration::from_secs(5);
    assert!(!a.same_policy(&changed));
    std::fs::copy(testdata("rsa_b.pub.pem"), &path).unwrap();
    assert!(!a.same_policy(&p), "a key file whose content changed rebuilds the policy");
    std::fs::remove_dir_all(dir).unwrap();
}

// ---- JWKS URL ----

/// A mock IdP serving a JWKS: status, body and Cache-Control can be changed on the fly;
/// every request is counted.
#[derive(Clone)]
struct Idp {
    url: String,
    state: Arc<Mutex<(u16, String, Option<String>)>>,
    hits: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(body: &Value) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let idp =
            Idp { url, state: Arc::new(Mutex::new((200, body.to_string(), None))), hits: Arc::default() };
        let me = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            me.hits.fetch_add(1, Ordering::SeqCst);
                            let (status, body, cc) = me.state.lock().unwrap().clone();
                            let mut res =
                                Response::builder().status(status).header("content-type", "application/json");
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
        idp
    }

    fn set(&self, status: u16, body: &Value, cache_control: Option<&str>) {
        *self.state.lock().unwrap() = (status, body.to_string(), cache_control.map(str::to_owned));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn wait_hits(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.hits() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "IdP saw {} requests, waiting for {n}",
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn jwk(name: &str, alg: Algorithm, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(&private(name, alg), alg).unwrap();
    j.common.key_id = Some(kid.into());
    serde_json::to_value(j).unwrap()
}

fn remote_cfg(idp: &Idp) -> JwtAuth {
    JwtAuth { jwks_url: Some(idp.url.clone()), jwks_timeout: Duration::from_secs(2), ..jwt_cfg() }
}

fn token_for(name: &str, alg: Algorithm, kid: &str) -> String {
    sign(alg, &private(name, alg), Some(kid), claims())
}

/// Waits until the authenticator's first JWKS fetch has completed.
async fn fetched(a: &Authenticator) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.jwt.as_ref().unwrap().remote_keys().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no JWKS fetched");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn jwks_url_fetched_at_start_and_unknown_kid_refetch_is_single_flight() {
    let idp = Idp::start(&json!({ "keys": [jwk("rsa_a.pem", Algorithm::RS256, "a")] })).await;
    let cfg = JwtAuth { jwks_min_refresh: Duration::ZERO, ..remote_cfg(&idp) };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    idp.wait_hits(1).await;
    fetched(&a).await;
    assert!(reason(&a, &bearer(&token_for("rsa_a.pem", Algorithm::RS256, "a"))).await.is_ok());
    assert_eq!(idp.hits(), 1, "a known kid needs no fetch");

    // Rotation: the IdP adds key b; ten concurrent requests with kid b share one refetch.
    idp.set(200, &json!({ "keys": [jwk("rsa_a.pem", Algorithm::RS256, "a"), jwk("rsa_b.pem", Algorithm::RS256, "b")] }), None);
    let tb = token_for("rsa_b.pem", Algorithm::RS256, "b");
    let reqs: Vec<_> = (0..10).map(|_| bearer(&tb)).collect();
    let results = futures_util::future::join_all(reqs.iter().map(|p| reason(&a, p))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(idp.hits(), 2, "one fetch for ten requests");
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let idp = Idp::start(&json!({ "keys": [jwk("rsa_a.pem", Algorithm::RS256, "a")] })).await;
    let cfg = JwtAuth { jwks_min_refresh: Duration::from_secs(3600), ..remote_cfg(&idp) };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    idp.wait_hits(1).await;
    fetched(&a).await;
    idp.set(200, &json!({ "keys": [jwk("rsa_b.pem", Algorithm::RS256, "b")] }), None);
    for _ in 0..5 {
        let (status, r, _) =
            reason(&a, &bearer(&token_for("rsa_b.pem", Algorithm::RS256, "b"))).await.unwrap_err();
        assert_eq!((status, r), (StatusCode::UNAUTHORIZED, "unknown_key"));
    }
    assert_eq!(idp.hits(), 1, "no refetch within jwks_min_refresh");
    assert!(reason(&a, &bearer(&token_for("rsa_a.pem", Algorithm::RS256, "a"))).await.is_ok());
}

#[tokio::test]
async fn refreshed_in_background_before_expiry() {
    let idp = Idp::start(&json!({ "keys": [jwk("ec256.pem", Algorithm::ES256, "e1")] })).await;
    idp.set(200, &json!({ "keys": [jwk("ec256.pem", Algorithm::ES256, "e1")] }), Some("public, max-age=1"));
    let cfg = JwtAuth {
        jwks_min_refresh: Duration::from_secs(3600),
        jwks_min_ttl: Duration::from_millis(200),
        jwks_max_ttl: Duration::from_secs(3600),
        ..remote_cfg(&idp)
    };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    idp.wait_hits(1).await;
    fetched(&a).await;
    idp.set(200, &json!({ "keys": [jwk("ed25519.pem", Algorithm::EdDSA, "k2")] }), Some("max-age=1"));
    // max-age=1: refreshed at 0.9 s without any request asking.
    idp.wait_hits(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match reason(&a, &bearer(&token_for("ed25519.pem", Algorithm::EdDSA, "k2"))).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fails(&a, &token_for("ec256.pem", Algorithm::ES256, "e1")).await,
        "unknown_key",
        "rotated out"
    );
}

#[tokio::test]
async fn last_good_keys_kept_while_idp_fails() {
    let good = json!({ "keys": [jwk("rsa_a.pem", Algorithm::RS256, "a")] });
    let idp = Idp::start(&good).await;
    let cfg = JwtAuth {
        jwks_min_refresh: Duration::from_millis(50),
        jwks_min_ttl: Duration::from_millis(100),
        ..remote_cfg(&idp)
    };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    idp.wait_hits(1).await;
    fetched(&a).await;
    idp.set(500, &json!("down"), None);
    let before = idp.hits();
    idp.wait_hits(before + 3).await;
    assert!(reason(&a, &bearer(&token_for("rsa_a.pem", Algorithm::RS256, "a"))).await.is_ok());
    // Garbage and empty key sets do not replace the good set either.
    idp.set(200, &json!({ "keys": [] }), None);
    idp.wait_hits(idp.hits() + 2).await;
    idp.set(200, &json!({ "nope": 1 }), None);
    idp.wait_hits(idp.hits() + 2).await;
    assert!(reason(&a, &bearer(&token_for("rsa_a.pem", Algorithm::RS256, "a"))).await.is_ok());
    // And when it comes back, its new keys are taken.
    idp.set(200, &json!({ "keys": [jwk("rsa_b.pem", Algorithm::RS256, "b")] }), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reason(&a, &bearer(&token_for("rsa_b.pem", Algorithm::RS256, "b"))).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "new key never accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn keys_never_obtained_is_503_with_retry_after() {
    let idp = Idp::start(&json!({})).await;
    idp.set(503, &json!("starting"), None);
    let cfg = JwtAuth {
        jwks_min_refresh: Duration::from_secs(5),
        jwks_timeout: Duration::from_millis(500),
        ..remote_cfg(&idp)
    };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    let (status, r, h) =
        reason(&a, &bearer(&token_for("rsa_a.pem", Algorithm::RS256, "a"))).await.unwrap_err();
    assert_eq!((status, r), (StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable"));
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert!(!h.contains_key("www-authenticate"));
    // A token that could never be valid is still refused as such.
    assert_eq!(fails(&a, "garbage").await, "malformed");
}

#[tokio::test]
async fn unreachable_idp_is_503() {
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let cfg = JwtAuth {
        jwks_url: Some(dead),
        jwks_min_refresh: Duration::from_millis(100),
        jwks_timeout: Duration::from_millis(300),
        ..jwt_cfg()
    };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    let (status, r, _) =
        reason(&a, &bearer(&token_for("rsa_a.pem", Algorithm::RS256, "a"))).await.unwrap_err();
    assert_eq!((status, r), (StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable"));
}

#[test]
fn no_runtime_no_fetch() {
    // `sumun check` builds policies outside a runtime: nothing is spawned, nothing panics.
    let cfg = JwtAuth { jwks_url: Some("http://127.0.0.1:9/jwks.json".into()), ..jwt_cfg() };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    assert!(a.jwt.as_ref().unwrap().remote_keys().is_none());
}

#[test]
fn looks_like_jwt_shapes() {
    assert!(looks_like_jwt("a.b.c"));
    assert!(looks_like_jwt("eyJh-_.eyJ.sig_-"));
    assert!(!looks_like_jwt("a.b"));
    assert!(!looks_like_jwt("a.b.c.d"));
    assert!(!looks_like_jwt("a b.c.d"));
}

// ---- verified-token cache ----

fn rsa_policy() -> Authenticator {
    Authenticator::new(&policy(
        Some(JwtAuth { key_files: vec![testdata("rsa_a.pub.pem")], ..jwt_cfg() }),
        None,
    ))
    .unwrap()
}

fn same(a: &Authenticated, b: &Authenticated) -> bool {
    Arc::ptr_eq(&a.0, &b.0)
}

#[tokio::test]
async fn verified_token_is_reused_until_exp() {
    let a = rsa_policy();
    let key = private("rsa_a.pem", Algorithm::RS256);
    let exp = now() + 120;
    let token = sign(Algorithm::RS256, &key, None, json!({ "sub": "alice", "exp": exp }));
    let first = reason(&a, &bearer(&token)).await.unwrap();
    let second = reason(&a, &bearer(&token)).await.unwrap();
    assert!(same(&first, &second), "the second request is answered from the cache");
    assert_eq!(a.tokens.sizes(), (1, 0));
    assert!(matches!(a.tokens.get(&token, 0, exp - 1), cache::Lookup::Accepted(_)));
    assert!(matches!(a.tokens.get(&token, 0, exp), cache::Lookup::Unknown), "not past its exp");
    assert!(matches!(a.tokens.get(&token, 1, exp - 1), cache::Lookup::Unknown), "nor another key set");

    // Every byte counts: the same token with one signature character changed is verified.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(fails(&a, &forged).await, "bad_signature");
    // A prefix or an extension of a cached token is another token.
    assert!(reason(&a, &bearer(&token[..token.len() - 1])).await.is_err());
    assert!(reason(&a, &bearer(&format!("{token}A"))).await.is_err());
    assert_eq!(reason(&a, &bearer(&token)).await.unwrap().subject, "alice");

    // Each token has its own entry; claims are never mixed up.
    let bob = sign(Algorithm::RS256, &key, None, json!({ "sub": "bob", "exp": exp }));
    assert_eq!(reason(&a, &bearer(&bob)).await.unwrap().subject, "bob");
    assert_eq!(reason(&a, &bearer(&token)).await.unwrap().subject, "alice");
}

#[tokio::test]
async fn not_yet_valid_and_leeway_tokens_are_not_cached() {
    let key = private("rsa_a.pem", Algorithm::RS256);
    let lenient = Authenticator::new(&policy(
        Some(JwtAuth {
            key_files: vec![testdata("rsa_a.pub.pem")],
            leeway: Duration::from_secs(60),
            ..jwt_cfg()
        }),
        None,
    ))
    .unwrap();
    let t = now();
    // Accepted thanks to the leeway only: verified on every request.
    let early = sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": t + 300, "nbf": t + 30 }));
    let expired = sign(Algorithm::RS256, &key, None, json!({ "sub": "a", "exp": t - 5 }));
    for token in [&early, &expired] {
        let one = reason(&lenient, &bearer(token)).await.unwrap();
        let two = reason(&lenient, &bearer(token)).await.unwrap();
        assert!(!same(&one, &two));
    }
    assert_eq!(lenient.tokens.sizes(), (0, 0));
}

#[tokio::test]
async fn lasting_refusals_are_remembered_others_are_not() {
    let a = Authenticator::new(&policy(
        Some(JwtAuth {
            key_files: vec![testdata("rsa_a.pub.pem")],
            issuers: vec!["https://idp.example".into()],
            ..jwt_cfg()
        }),
        None,
    ))
    .unwrap();
    let key = private("rsa_a.pem", Algorithm::RS256);
    let other = private("rsa_b.pem", Algorithm::RS256);
    let t = now();
    let iss = "https://idp.example";
    let cases = [
        (sign(Algorithm::RS256, &other, None, json!({ "iss": iss, "exp": t + 60 })), "bad_signature", true),
        (sign(Algorithm::RS256, &key, None, json!({ "iss": iss, "exp": t - 10 })), "expired", true),
        (
            sign(Algorithm::RS256, &key, None, json!({ "iss": "https://evil", "exp": t + 60 })),
            "wrong_issuer",
            true,
        ),
        (sign(Algorithm::RS256, &key, None, json!({ "iss": iss, "exp": "soon" })), "malformed", true),
        (
            sign(Algorithm::RS256, &key, None, json!({ "iss": iss, "exp": t + 60, "nbf": t + 60 })),
            "not_yet_valid",
            false,
        ),
    ];
    for (i, (token, why, kept)) in cases.iter().enumerate() {
        let before = a.tokens.sizes().1;
        assert_eq!(fails(&a, token).await, *why);
        assert_eq!(a.tokens.sizes().1, before + u64::from(*kept), "{why}");
        // Answered the same way from the cache.
        assert_eq!(fails(&a, token).await, *why, "case {i}");
    }
    assert_eq!(a.tokens.sizes().0, 0);
}

#[tokio::test]
async fn api_key_credentials_are_shared() {
    let a = Authenticator::new(&policy(None, Some(api_keys()))).unwrap();
    let p = parts("/", &[("x-api-key", "ci-key-123")]);
    let one = reason(&a, &p).await.unwrap();
    let two = reason(&a, &p).await.unwrap();
    assert!(same(&one, &two), "one identity and passport slot per key");
    assert_eq!(one.subject, "apikey:ci");
}

#[tokio::test]
async fn jwks_rotation_invalidates_cached_tokens() {
    let idp = Idp::start(&json!({ "keys": [jwk("rsa_a.pem", Algorithm::RS256, "a")] })).await;
    let cfg = JwtAuth { jwks_min_refresh: Duration::ZERO, ..remote_cfg(&idp) };
    let a = Authenticator::new(&policy(Some(cfg), None)).unwrap();
    idp.wait_hits(1).await;
    fetched(&a).await;
    let ta = token_for("rsa_a.pem", Algorithm::RS256, "a");
    let first = reason(&a, &bearer(&ta)).await.unwrap();
    // Signed by key b under kid a: refused while kid a is key a.
    let swapped = sign(Algorithm::RS256, &private("rsa_b.pem", Algorithm::RS256), Some("a"), claims());
    assert_eq!(fails(&a, &swapped).await, "bad_signature");

    // A refetch that brings the same document keeps the cached verdicts.
    assert_eq!(fails(&a, &token_for("rsa_b.pem", Algorithm::RS256, "zzz")).await, "unknown_key");
    assert_eq!(idp.hits(), 2);
    assert!(same(&first, &reason(&a, &bearer(&ta)).await.unwrap()));

    // The IdP replaces key a by key b under the same kid: the cached acceptance and the cached
    // refusal are both verified again against the new set.
    idp.set(200, &json!({ "keys": [jwk("rsa_b.pem", Algorithm::RS256, "a")] }), None);
    assert_eq!(fails(&a, &token_for("rsa_b.pem", Algorithm::RS256, "zzz")).await, "unknown_key");
    assert_eq!(idp.hits(), 3);
    assert_eq!(fails(&a, &ta).await, "bad_signature", "key a was removed");
    assert_eq!(reason(&a, &bearer(&swapped)).await.unwrap().subject, "alice");

    // Key a removed altogether (kid gone): its tokens are unknown_key, never a cached yes.
    idp.set(200, &json!({ "keys": [jwk("rsa_b.pem", Algorithm::RS256, "b")] }), None);
    assert_eq!(fails(&a, &token_for("rsa_b.pem", Algorithm::RS256, "zzz")).await, "unknown_key");
    assert_eq!(fails(&a, &swapped).await, "unknown_key");
}
