//! The identity passport: after authentication sumun hands the upstream a short-lived JWT
//! (EdDSA over Ed25519) saying who the caller is, so services verify one issuer instead of
//! every IdP and API-key store. `kid` is the key's RFC 7638 thumbprint; the public keys are
//! served as a JWKS (`GET /v1/passport/jwks.json` on the admin listener). Without a configured
//! `signing_key`, a key is generated at start and kept across reloads; when the key changes on
//! reload, the old public key stays in the JWKS until the last passport it signed expires.
//!
//! Signing is the costly part (an Ed25519 signature per passport, ~10 µs). The key pair is
//! parsed once and the JWS is assembled here (RFC 7515 compact form, header encoded once):
//! `jsonwebtoken::encode` parses the PKCS#8 key again for every token, which doubled the cost
//! (21 µs against 11.5 µs per passport, `auth_cost` example, release). Verification, in tests and in
//! services, goes through ordinary JOSE libraries. With `bind_request =
//! false` (the default) a passport is signed once per verified credential and kept in a
//! [`PassportSlot`] next to it (the verified-token cache entry, or the API key): every request
//! of that credential gets the same passport until half its `ttl` has passed, then a new one
//! is signed. Such a passport has no `rid` and its `jti` names the passport, not a request.
//! With `bind_request = true` every request gets its own passport with `rid` (the request id)
//! and a unique `jti`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use super::auth::Identity;

/// Extra time a retired key stays published after its last passport's `exp`, for verifiers'
/// clock skew.
const RETIRE_MARGIN: Duration = Duration::from_secs(60);

/// An Ed25519 signing key and its public JWK.
struct SigningKey {
    pair: Ed25519KeyPair,
    kid: String,
    jwk: serde_json::Value,
    /// Generated at start (not configured): kept across reloads.
    generated: bool,
}

impl SigningKey {
    /// From a PKCS#8 DER document (v1 as OpenSSL writes it, or v2 with the public key).
    fn from_pkcs8(der: &[u8], generated: bool) -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| format!("the signing key is not an Ed25519 PKCS#8 key: {e}"))?;
        let x = B64.encode(pair.public_key().as_ref());
        let kid = thumbprint(&x);
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig",
        });
        Ok(SigningKey { pair, kid, jwk, generated })
    }

    fn from_pem(pem_text: &str) -> Result<SigningKey, String> {
        let block = pem::parse(pem_text.as_bytes())
            .map_err(|_| "the signing key is not PEM (`sumun passport keygen` writes one)".to_owned())?;
        if block.tag() != "PRIVATE KEY" {
            return Err(format!(
                "the signing key must be a PKCS#8 `PRIVATE KEY` PEM block, not `{}`",
                block.tag()
            ));
        }
        SigningKey::from_pkcs8(block.contents(), false)
    }

    fn generate() -> Result<SigningKey, String> {
        SigningKey::from_pkcs8(&new_pkcs8()?, true)
    }
}

/// A new Ed25519 private key as a PKCS#8 v1 document (RFC 8410 §7): the form OpenSSL, Python
/// `cryptography` and every JOSE library read (v2 with the public key is not).
fn new_pkcs8() -> Result<Vec<u8>, String> {
    let doc = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
        .map_err(|_| "cannot generate an Ed25519 key".to_owned())?;
    Ok(doc.as_ref().to_vec())
}

/// RFC 7638 thumbprint of an Ed25519 public key (`x`, base64url): SHA-256 over the required
/// members in lexicographic order, base64url.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64.encode(crate::protect::auth::sha256(canonical.as_bytes()))
}

/// A new Ed25519 signing key as a PKCS#8 PEM document, and its `kid` (`sumun passport keygen`).
pub fn generate_signing_key_pem() -> Result<(String, String), String> {
    let der = new_pkcs8()?;
    let key = SigningKey::from_pkcs8(&der, true)?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
    Ok((pem, key.kid))
}

/// A public key no longer signing, published until `until`.
#[derive(Clone)]
struct Retired {
    kid: String,
    jwk: serde_json::Value,
    until: SystemTime,
}

pub struct Passport {
    header: HeaderName,
    key: Arc<SigningKey>,
    /// The JWS protected header, base64url-encoded, then `.`: the same for every passport.
    jws_prefix: String,
    issuer: String,
    audience: Option<String>,
    ttl: Duration,
    bind_request: bool,
    /// Tells passports this signer made from those of an earlier configuration: a reload
    /// (new key, issuer, ttl…) stops the reuse of passports kept in slots.
    id: u64,
    retired: Vec<Retired>,
}

/// A passport kept with one credential for reuse (`bind_request = false`). Empty until the
/// first request of the credential; any number of requests may read and renew it at once
/// (two renewing together both sign, and the later one is kept).
#[derive(Default)]
pub struct PassportSlot(ArcSwapOption<Issued>);

impl std::fmt::Debug for PassportSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassportSlot").field("filled", &self.0.load().is_some()).finish()
    }
}

struct Issued {
    /// `Passport::id` of the signer.
    signer: u64,
    /// `iat` in milliseconds (whole seconds, as in the token).
    iat_ms: u64,
    /// Reused until then: `iat` + half the ttl.
    renew_ms: u64,
    value: HeaderValue,
}

impl std::fmt::Debug for Passport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passport")
            .field("kid", &self.key.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    exp: u64,
    sub: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    scope: String,
    auth: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    orig_iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orig_jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rid: Option<&'a str>,
    jti: String,
}

impl Passport {
    /// `previous`: the running passport, whose generated key is kept when no key is configured.
    pub fn new(cfg: &sumun_config::Passport, previous: Option<&Passport>) -> Result<Self, String> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("header `{}` is not a valid header name", cfg.header))?;
        let key = match (&cfg.signing_key, previous) {
            (Some(secret), _) => Arc::new(SigningKey::from_pem(&secret.0)?),
            (None, Some(prev)) if prev.key.generated => prev.key.clone(),
            (None, _) => Arc::new(SigningKey::generate()?),
        };
        let now = SystemTime::now();
        let mut retired: Vec<Retired> = Vec::new();
        if let Some(prev) = previous {
            retired.extend(prev.retired.iter().filter(|r| r.until > now && r.kid != key.kid).cloned());
            if prev.key.kid != key.kid {
                retired.push(Retired {
                    kid: prev.key.kid.clone(),
                    jwk: prev.key.jwk.clone(),
                    until: now + prev.ttl + RETIRE_MARGIN,
                });
            }
        }
        let mut jws_header = Header::new(Algorithm::EdDSA);
        jws_header.kid = Some(key.kid.clone());
        let header_json =
            serde_json::to_vec(&jws_header).map_err(|e| format!("cannot encode the JWS header: {e}"))?;
        let mut jws_prefix = B64.encode(header_json);
        jws_prefix.push('.');
        static IDS: AtomicU64 = AtomicU64::new(0);
        Ok(Passport {
            header,
            jws_prefix,
            key,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.ttl.max(Duration::from_secs(1)),
            bind_request: cfg.bind_request,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            retired,
        })
    }

    /// The header that carries the passport; stripped from every client request.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The `kid` passports are signed with.
    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// The passport of a request by this identity. With `bind_request`, a new one naming
    /// the request; otherwise the one kept in `slot`, signed anew when there is none yet, when
    /// half its ttl has passed, or when this signer did not make it (a reload). None when
    /// signing failed (logged and counted).
    pub fn issue(&self, id: &Identity, slot: &PassportSlot, request_id: &HeaderValue) -> Option<HeaderValue> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        if self.bind_request {
            return self.sign(id, now.as_secs(), request_id.to_str().ok());
        }
        if let Some(p) = slot.0.load().as_deref()
            && p.signer == self.id
            // A clock set back would hand out a passport from the future: sign anew.
            && (p.iat_ms..p.renew_ms).contains(&now_ms)
        {
            return Some(p.value.clone());
        }
        let iat = now.as_secs();
        let value = self.sign(id, iat, None)?;
        // The same whole seconds as `exp`: a reused passport has at least half its life left.
        let half = self.ttl.as_secs().max(1).saturating_mul(1000) / 2;
        let iat_ms = iat.saturating_mul(1000);
        slot.0.store(Some(Arc::new(Issued {
            signer: self.id,
            iat_ms,
            renew_ms: iat_ms.saturating_add(half),
            value: value.clone(),
        })));
        Some(value)
    }

    /// Signs a passport issued at `iat` (seconds), with `rid` when given.
    fn sign(&self, id: &Identity, iat: u64, rid: Option<&str>) -> Option<HeaderValue> {
        let claims = Claims {
            iss: &self.issuer,
            aud: self.audience.as_deref(),
            iat,
            exp: iat + self.ttl.as_secs().max(1),
            sub: &id.subject,
            scope: id.scopes.join(" "),
            auth: &id.policy,
            orig_iss: id.issuer.as_deref(),
            orig_jti: id.jti.as_deref(),
            rid,
            jti: next_jti(),
        };
        let payload = match serde_json::to_vec(&claims) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!("sumun_passport_errors_total").increment(1);
                tracing::error!(error = %e, "cannot encode the passport");
                return None;
            }
        };
        // header.payload, signed; then .signature (base64url without padding throughout).
        let mut token = String::with_capacity(self.jws_prefix.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&self.jws_prefix);
        B64.encode_string(&payload, &mut token);
        let signature = self.key.pair.sign(token.as_bytes());
        token.push('.');
        B64.encode_string(signature.as_ref(), &mut token);
        HeaderValue::from_maybe_shared(Bytes::from(token)).ok()
    }

    /// The public keys as a JWKS document (`GET /v1/passport/jwks.json`): the signing key,
    /// then retired keys whose passports may still be valid.
    pub fn jwks(&self) -> Bytes {
        let now = SystemTime::now();
        let keys: Vec<&serde_json::Value> = std::iter::once(&self.key.jwk)
            .chain(self.retired.iter().filter(|r| r.until > now).map(|r| &r.jwk))
            .collect();
        Bytes::from(serde_json::json!({ "keys": keys }).to_string())
    }
}

/// A unique token id: a random per-process prefix and a counter (128 bits, base64url).
fn next_jti() -> String {
    static PREFIX: LazyLock<[u8; 8]> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        if SystemRandom::new().fill(&mut b).is_err() {
            // Still unique within the process; across restarts the start time differs.
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            b = (t as u64).to_le_bytes();
        }
        b
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&*PREFIX);
    id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    B64.encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use sumun_config::Secret;

    fn cfg() -> sumun_config::Passport {
        sumun_config::Passport { audience: Some("internal".into()), ..Default::default() }
    }

    fn identity() -> Identity {
        Identity {
            policy: Arc::from("users"),
            subject: "alice".into(),
            scopes: vec!["read".into(), "orders:write".into()],
            claims: serde_json::Map::new(),
            issuer: Some("https://idp.example".into()),
            jti: Some("idp-jti-1".into()),
            api_key: None,
        }
    }

    fn verify(p: &Passport, token: &str) -> serde_json::Map<String, serde_json::Value> {
        let jwks: serde_json::Value = serde_json::from_slice(&p.jwks()).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        let kid = header.kid.unwrap();
        let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&["sumun"]);
        v.set_audience(&["internal"]);
        jsonwebtoken::decode(token, &DecodingKey::from_jwk(&jwk).unwrap(), &v).unwrap().claims
    }

    fn issue(p: &Passport, rid: &'static str) -> HeaderValue {
        p.issue(&identity(), &PassportSlot::default(), &HeaderValue::from_static(rid)).unwrap()
    }

    #[test]
    fn bound_to_request_issues_one_passport_per_request() {
        let p = Passport::new(&sumun_config::Passport { bind_request: true, ..cfg() }, None).unwrap();
        let slot = PassportSlot::default();
        let token = p.issue(&identity(), &slot, &HeaderValue::from_static("req-1")).unwrap();
        let c = verify(&p, token.to_str().unwrap());
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["scope"], "read orders:write");
        assert_eq!(c["auth"], "users");
        assert_eq!(c["orig_iss"], "https://idp.example");
        assert_eq!(c["orig_jti"], "idp-jti-1");
        assert_eq!(c["rid"], "req-1");
        assert_eq!(c["aud"], "internal");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        let other = p.issue(&identity(), &slot, &HeaderValue::from_static("req-2")).unwrap();
        let c2 = verify(&p, other.to_str().unwrap());
        assert_ne!(c2["jti"], c["jti"], "jti is unique");
        assert_eq!(c2["rid"], "req-2");
        assert!(slot.0.load().is_none(), "nothing kept for reuse");
    }

    #[test]
    fn reused_per_credential_until_half_its_ttl() {
        let p = Passport::new(&cfg(), None).unwrap();
        let slot = PassportSlot::default();
        let first = p.issue(&identity(), &slot, &HeaderValue::from_static("req-1")).unwrap();
        let c = verify(&p, first.to_str().unwrap());
        assert_eq!((c["sub"].as_str(), c["scope"].as_str()), (Some("alice"), Some("read orders:write")));
        assert!(c.get("rid").is_none(), "a shared passport names no request");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        let again = p.issue(&identity(), &slot, &HeaderValue::from_static("req-2")).unwrap();
        assert_eq!(again, first, "the same passport, jti included");

        // Another credential (another slot) gets its own.
        let other = p.issue(&identity(), &PassportSlot::default(), &HeaderValue::from_static("r")).unwrap();
        assert_ne!(verify(&p, other.to_str().unwrap())["jti"], c["jti"]);

        // Half the ttl gone: signed anew, and the new one is kept.
        let kept = slot.0.load_full().unwrap();
        assert_eq!(kept.renew_ms - kept.iat_ms, 30_000);
        slot.0.store(Some(Arc::new(Issued {
            signer: kept.signer,
            iat_ms: kept.iat_ms - 31_000,
            renew_ms: kept.renew_ms - 31_000,
            value: kept.value.clone(),
        })));
        let renewed = p.issue(&identity(), &slot, &HeaderValue::from_static("r")).unwrap();
        assert_ne!(renewed, first);
        assert_ne!(verify(&p, renewed.to_str().unwrap())["jti"], c["jti"]);
        assert_eq!(p.issue(&identity(), &slot, &HeaderValue::from_static("r")).unwrap(), renewed);

        // A passport from the future (the clock was set back) is not handed out.
        let kept = slot.0.load_full().unwrap();
        slot.0.store(Some(Arc::new(Issued {
            signer: kept.signer,
            iat_ms: kept.iat_ms + 10_000,
            renew_ms: kept.renew_ms + 10_000,
            value: kept.value.clone(),
        })));
        assert_ne!(p.issue(&identity(), &slot, &HeaderValue::from_static("r")).unwrap(), renewed);

        // A reload (another signer, even with the same key) signs anew.
        let reloaded = Passport::new(&cfg(), Some(&p)).unwrap();
        let current = slot.0.load_full().unwrap().value.clone();
        let after = reloaded.issue(&identity(), &slot, &HeaderValue::from_static("r")).unwrap();
        assert_ne!(after, current);
        assert_eq!(reloaded.issue(&identity(), &slot, &HeaderValue::from_static("r")).unwrap(), after);
    }

    #[test]
    fn jwks_shape_and_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let p = Passport::new(&cfg(), None).unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&p.jwks()).unwrap();
        let k = &jwks["keys"][0];
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str(), k["use"].as_str()),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
        );
        assert_eq!(k["kid"], thumbprint(k["x"].as_str().unwrap()));
        assert_eq!(k["kid"], p.kid());
        assert!(k.get("d").is_none(), "no private part");
    }

    #[test]
    fn generated_key_survives_reload_configured_key_rotates_with_overlap() {
        let first = Passport::new(&cfg(), None).unwrap();
        let reloaded = Passport::new(&cfg(), Some(&first)).unwrap();
        assert_eq!(first.kid(), reloaded.kid());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&reloaded.jwks()).unwrap()["keys"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // A configured key (as `sumun passport keygen` writes it) replaces the generated one;
        // the old key stays published while its passports may be alive.
        let old_token = issue(&first, "r");
        let (pem, kid) = generate_signing_key_pem().unwrap();
        assert_eq!(pem::parse(&pem).unwrap().contents().len(), 48, "PKCS#8 v1 (RFC 8410 §7)");
        let configured = sumun_config::Passport { signing_key: Some(Secret(pem)), ..cfg() };
        let rotated = Passport::new(&configured, Some(&reloaded)).unwrap();
        assert_eq!(rotated.kid(), kid);
        let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwks()).unwrap();
        let kids: Vec<&str> =
            jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids, vec![kid.as_str(), first.kid()]);
        assert_eq!(verify(&rotated, old_token.to_str().unwrap())["sub"], "alice");
        let new_token = issue(&rotated, "r");
        assert_eq!(
            jsonwebtoken::decode_header(new_token.to_str().unwrap()).unwrap().kid.as_deref(),
            Some(kid.as_str())
        );

        // Reloading with the same configured key keeps one signing key and the overlap.
        let again = Passport::new(&configured, Some(&rotated)).unwrap();
        assert_eq!(again.kid(), kid);
    }

    #[test]
    fn openssl_pkcs8_v1_key_is_accepted() {
        let pem = include_str!("auth/testdata/ed25519.pem");
        let c = sumun_config::Passport { signing_key: Some(Secret(pem.into())), ..cfg() };
        let p = Passport::new(&c, None).unwrap();
        let token = issue(&p, "r");
        assert_eq!(verify(&p, token.to_str().unwrap())["sub"], "alice");
    }

    #[test]
    fn refuses_bad_keys() {
        let rsa = include_str!("auth/testdata/rsa_a.pem");
        let c = sumun_config::Passport { signing_key: Some(Secret(rsa.into())), ..cfg() };
        assert!(Passport::new(&c, None).unwrap_err().contains("Ed25519"));
        let c = sumun_config::Passport { signing_key: Some(Secret("not a key".into())), ..cfg() };
        assert!(Passport::new(&c, None).unwrap_err().contains("PEM"));
        let pubkey = include_str!("auth/testdata/ed25519.pub.pem");
        let c = sumun_config::Passport { signing_key: Some(Secret(pubkey.into())), ..cfg() };
        assert!(Passport::new(&c, None).is_err());
    }

    #[test]
    fn identity_without_origin_claims() {
        let p = Passport::new(&sumun_config::Passport::default(), None).unwrap();
        let id = Identity {
            subject: "apikey:ci".into(),
            scopes: vec![],
            issuer: None,
            jti: None,
            api_key: Some("ci".into()),
            ..identity()
        };
        let token = p.issue(&id, &PassportSlot::default(), &HeaderValue::from_static("r")).unwrap();
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(token.to_str().unwrap()).unwrap();
        assert_eq!(claims["sub"], "apikey:ci");
        assert!(
            claims.get("aud").is_none()
                && claims.get("orig_iss").is_none()
                && claims.get("scope").is_none()
                && claims.get("rid").is_none()
        );
        assert_eq!(claims["iss"], "sumun");
    }
}
