//! JWT verification with `jsonwebtoken`: the token's `alg` must be one the policy accepts and
//! fit the key's type (an HMAC token is only ever checked with the policy's `secret`, so a
//! public key can never be used as an HMAC secret); `exp` is required, `nbf` checked, both
//! with the leeway; `iss` and `aud` must be among the configured values when set.

use std::sync::{Arc, OnceLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use sumun_config::{CredentialSource, JwtAuth};

use super::jwks::{KeySet, RemoteJwks, TaskGuard};
use super::{Denial, Failure, MAX_CREDENTIAL_LEN};

/// The most keys one token is tried against (tokens without `kid`).
const MAX_CANDIDATES: usize = 8;

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

pub(super) struct JwtVerifier {
    sources: Vec<CredentialSource>,
    /// One prepared validation per accepted algorithm.
    validations: Vec<(Algorithm, Validation)>,
    secret: Option<DecodingKey>,
    files: KeySet,
    remote: Option<Arc<RemoteJwks>>,
    /// The refresh task, started at build inside a runtime, else on first use.
    task: OnceLock<TaskGuard>,
    scope_claim: String,
}

/// The outcome of trying the keys a set has for a token.
enum Tried {
    Done(Result<Map<String, Value>, Failure>),
    /// No key of the token's `kid` (or, without `kid`, of its algorithm).
    NoKey,
}

impl JwtVerifier {
    pub(super) fn new(cfg: &JwtAuth, policy: &Arc<str>) -> Result<Self, String> {
        let secret = cfg.secret.as_ref().map(|s| DecodingKey::from_secret(s.0.as_bytes()));
        if cfg.secret.as_ref().is_some_and(|s| s.0.is_empty()) {
            return Err("the JWT secret is empty".into());
        }
        let mut files = KeySet::default();
        for path in &cfg.key_files {
            let bytes = super::jwks::read_key_file(path)?;
            let set =
                KeySet::from_file_bytes(&bytes).map_err(|e| format!("key file {}: {e}", path.display()))?;
            files.keys.extend(set.keys);
        }
        let remote = match &cfg.jwks_url {
            Some(url) => Some(RemoteJwks::new(policy.clone(), url, cfg)?),
            None => None,
        };
        if secret.is_none() && files.keys.is_empty() && remote.is_none() {
            return Err("JWT verification needs `jwks_url`, `keys` or `secret`".into());
        }
        let algorithms: Vec<Algorithm> = if cfg.algorithms.is_empty() {
            let asym = if files.keys.is_empty() && remote.is_none() { &[][..] } else { &ASYMMETRIC[..] };
            let hs = if secret.is_some() { &HMAC[..] } else { &[][..] };
            asym.iter().chain(hs).copied().collect()
        } else {
            let mut v = Vec::new();
            for a in &cfg.algorithms {
                let alg: Algorithm =
                    a.parse().map_err(|_| format!("`{a}` is not a supported JWT algorithm"))?;
                if alg.family() == AlgorithmFamily::Hmac && secret.is_none() {
                    return Err(format!("algorithm `{a}` needs `secret`"));
                }
                if alg.family() != AlgorithmFamily::Hmac && files.keys.is_empty() && remote.is_none() {
                    return Err(format!("algorithm `{a}` needs `keys` or `jwks_url`"));
                }
                v.push(alg);
            }
            v
        };
        let validations = algorithms.iter().map(|a| (*a, validation(*a, cfg))).collect();
        let sources = if cfg.sources.is_empty() {
            vec![CredentialSource::Header("authorization".into())]
        } else {
            cfg.sources.clone()
        };
        let task = OnceLock::new();
        if let Some(r) = &remote
            && let Some(guard) = r.spawn()
        {
            let _ = task.set(guard);
        }
        Ok(JwtVerifier {
            sources,
            validations,
            secret,
            files,
            remote,
            task,
            scope_claim: if cfg.scope_claim.is_empty() { "scope".into() } else { cfg.scope_claim.clone() },
        })
    }

    pub(super) fn sources(&self) -> &[CredentialSource] {
        &self.sources
    }

    #[cfg(test)]
    pub(super) fn remote_keys(&self) -> Option<Arc<KeySet>> {
        self.remote.as_ref().and_then(|r| r.keys())
    }

    pub(super) fn scope_claim(&self) -> &str {
        &self.scope_claim
    }

    /// The generation of the fetched key set (0 without a JWKS URL or before the first
    /// fetch). Read before a verification, it is never newer than the set the verification
    /// used, so a cache entry tagged with it is dropped whenever the set may have changed.
    pub(super) fn key_generation(&self) -> u64 {
        self.remote.as_ref().map_or(0, |r| r.generation())
    }

    /// Verifies `token` and returns its claims.
    pub(super) async fn verify(&self, token: &str) -> Result<Map<String, Value>, Denial> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(Failure::Malformed.into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::Malformed)?;
        let alg = header.alg;
        let Some(validation) = self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v) else {
            return Err(Failure::BadSignature.into());
        };
        if alg.family() == AlgorithmFamily::Hmac {
            let Some(secret) = &self.secret else { return Err(Failure::BadSignature.into()) };
            return decode(token, secret, validation).map_err(Denial::from);
        }
        let kid = header.kid.as_deref();
        if let Tried::Done(r) = try_set(&self.files, token, alg, kid, validation) {
            return r.map_err(Denial::from);
        }
        let Some(remote) = &self.remote else { return Err(Failure::UnknownKey.into()) };
        if self.task.get().is_none()
            && let Some(guard) = remote.spawn()
        {
            let _ = self.task.set(guard);
        }
        if let Some(set) = remote.keys()
            && let Tried::Done(r) = try_set(&set, token, alg, kid, validation)
        {
            return r.map_err(Denial::from);
        }
        // Unknown key, or no key set yet: a fetch may bring it.
        let refreshed = remote.refresh().await;
        match remote.keys() {
            Some(set) => match try_set(&set, token, alg, kid, validation) {
                Tried::Done(r) => r.map_err(Denial::from),
                Tried::NoKey => Err(Failure::UnknownKey.into()),
            },
            None => {
                tracing::debug!(?refreshed, "JWT refused: no JWKS obtained yet");
                Err(Denial { kind: Failure::KeysUnavailable, retry_after: Some(remote.retry_after()) })
            }
        }
    }
}

/// Tries the candidate keys of `set`. A signature that fits none of them is `bad_signature`
/// when a key with the token's `kid` (or any key, for a token without `kid`) was tried;
/// `NoKey` when the set has no key for the token (a refetch may bring it).
fn try_set(set: &KeySet, token: &str, alg: Algorithm, kid: Option<&str>, validation: &Validation) -> Tried {
    let candidates = set.candidates(alg, kid);
    if candidates.is_empty() {
        // A kid the set has, but for another algorithm: no refetch will change that.
        return if kid.is_some_and(|k| set.has_kid(k)) {
            Tried::Done(Err(Failure::BadSignature))
        } else {
            Tried::NoKey
        };
    }
    for k in candidates.iter().take(MAX_CANDIDATES) {
        match decode(token, &k.key, validation) {
            Err(Failure::BadSignature) => continue,
            r => return Tried::Done(r),
        }
    }
    // Only keys without `kid` were tried for a token naming one: its key may be unknown yet.
    if kid.is_some_and(|k| !set.has_kid(k)) {
        return Tried::NoKey;
    }
    Tried::Done(Err(Failure::BadSignature))
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Map<String, Value>, Failure> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| failure_of(e.kind()))
}

fn failure_of(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::ExpiredSignature => Failure::Expired,
        ErrorKind::ImmatureSignature => Failure::NotYetValid,
        ErrorKind::InvalidIssuer => Failure::WrongIssuer,
        ErrorKind::InvalidAudience => Failure::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => Failure::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => Failure::WrongAudience,
        // The signature does not verify with this key, or the key does not fit the algorithm.
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => Failure::BadSignature,
        // Shape, encoding, claim types, a missing `exp`.
        _ => Failure::Malformed,
    }
}

fn validation(alg: Algorithm, cfg: &JwtAuth) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if cfg.issuers.is_empty() {
        v.iss = None;
    } else {
        v.set_issuer(&cfg.issuers);
        required.push("iss");
    }
    if cfg.audiences.is_empty() {
        // Not checked: a token may name any audience.
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}
