//! The verified-token cache of one `[auth.NAME]` policy: a JWT whose signature and claims
//! were verified once is taken at its word until its `exp`, so a client sending the same
//! token again costs a lookup instead of a signature verification (RS256/ES256: tens of µs).
//!
//! - The key is the token itself: a hit compares every byte, so no other token can ever match
//!   an entry. The map's hash only picks the bucket: XXH3 under a random secret per cache,
//!   about ten times cheaper than SipHash on a 1 KiB token (SipHash alone was most of the cost
//!   of a hit) and still unknown to a client who would aim collisions at one bucket.
//! - An entry is good until the token's `exp` (without the policy's leeway: after `exp` the
//!   token is verified again, and the leeway applies as usual), for at most [`MAX_LIFE`], and
//!   only while the JWKS it was verified against is still the current one (key generation):
//!   a refresh that brings another key set, a removed key included, makes every token be
//!   verified again once. A token whose `nbf` is still ahead is not cached.
//! - Refusals whose cause does not change with time (`bad_signature` under the same key set,
//!   `expired`, `malformed`, `wrong_issuer`, `wrong_audience`) are kept for [`REFUSED_LIFE`],
//!   so a client retrying a dead token costs a lookup too. This does not stop a flood of
//!   distinct forged tokens (each one is verified once); a refusal that may turn into an
//!   acceptance (`unknown_key`, `not_yet_valid`, `keys_unavailable`) is never kept.
//! - Both maps are bounded by an estimate of their memory (moka, TinyLFU admission: a flood
//!   of one-off tokens does not push out the tokens clients keep using).

use std::time::{Duration, Instant};

use moka::sync::Cache;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::Xxh3Builder;

use super::{Authenticated, Failure};

/// The longest an accepted token is trusted without a new verification.
pub(super) const MAX_LIFE: Duration = Duration::from_secs(300);
/// How long a refusal is remembered.
pub(super) const REFUSED_LIFE: Duration = Duration::from_secs(60);
/// Estimated bytes of accepted entries per policy (about 10,000 tokens of 1 KiB).
const ACCEPTED_BYTES: u64 = 32 * 1024 * 1024;
/// Estimated bytes of refusals per policy.
const REFUSED_BYTES: u64 = 4 * 1024 * 1024;
/// What an entry costs besides its token: the map's node, the identity, the claims.
const ENTRY_OVERHEAD: usize = 512;

#[derive(Clone)]
struct Accepted {
    credential: Authenticated,
    /// The token's `exp`, Unix seconds.
    exp: u64,
    /// The key generation the token was verified with.
    keys: u64,
    life: Duration,
    weight: u32,
}

#[derive(Clone)]
struct Refused {
    failure: Failure,
    /// None: the refusal holds whatever the keys (`expired`, `wrong_issuer`…).
    keys: Option<u64>,
    weight: u32,
}

/// Each accepted entry lives until its token's `exp`, [`MAX_LIFE`] at most.
struct AcceptedLife;

impl moka::Expiry<Box<str>, Accepted> for AcceptedLife {
    fn expire_after_create(&self, _: &Box<str>, v: &Accepted, _: Instant) -> Option<Duration> {
        Some(v.life)
    }

    fn expire_after_update(
        &self,
        _: &Box<str>,
        v: &Accepted,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.life)
    }
}

/// What the cache knows about a token.
pub(super) enum Lookup {
    Accepted(Authenticated),
    Refused(Failure),
    /// Verify it.
    Unknown,
}

pub(super) struct TokenCache {
    accepted: Cache<Box<str>, Accepted, Xxh3Builder>,
    refused: Cache<Box<str>, Refused, Xxh3Builder>,
}

impl TokenCache {
    pub fn new() -> Self {
        TokenCache {
            accepted: Cache::builder()
                .max_capacity(ACCEPTED_BYTES)
                .weigher(|_, v: &Accepted| v.weight)
                .expire_after(AcceptedLife)
                .build_with_hasher(keyed_hasher()),
            refused: Cache::builder()
                .max_capacity(REFUSED_BYTES)
                .weigher(|_, v: &Refused| v.weight)
                .time_to_live(REFUSED_LIFE)
                .build_with_hasher(keyed_hasher()),
        }
    }

    /// `keys`: the current key generation; `now`: Unix seconds.
    pub fn get(&self, token: &str, keys: u64, now: u64) -> Lookup {
        if let Some(a) = self.accepted.get(token)
            && a.keys == keys
            && now < a.exp
        {
            return Lookup::Accepted(a.credential);
        }
        match self.refused.get(token) {
            Some(r) if r.keys.is_none_or(|k| k == keys) => Lookup::Refused(r.failure),
            _ => Lookup::Unknown,
        }
    }

    /// Keeps a verified token: `keys` is the generation read before the verification began,
    /// `now` the time after it ended (Unix seconds).
    pub fn accept(&self, token: &str, credential: &Authenticated, keys: u64, now: u64) {
        let Some(exp) = cache_until(&credential.claims, now) else { return };
        let life = Duration::from_secs(exp - now).min(MAX_LIFE);
        let weight = weight(token.len().saturating_mul(2));
        self.accepted
            .insert(token.into(), Accepted { credential: credential.clone(), exp, keys, life, weight });
    }

    /// Remembers a refusal whose cause stays true.
    pub fn refuse(&self, token: &str, failure: Failure, keys: u64) {
        let keys = match failure {
            Failure::BadSignature => Some(keys),
            Failure::Expired | Failure::Malformed | Failure::WrongIssuer | Failure::WrongAudience => None,
            _ => return,
        };
        self.refused.insert(token.into(), Refused { failure, keys, weight: weight(token.len()) });
    }

    #[cfg(test)]
    pub fn sizes(&self) -> (u64, u64) {
        self.accepted.run_pending_tasks();
        self.refused.run_pending_tasks();
        (self.accepted.entry_count(), self.refused.entry_count())
    }
}

/// XXH3 with a random secret and seed.
fn keyed_hasher() -> Xxh3Builder {
    let mut secret = [0u8; 192];
    let mut seed = [0u8; 8];
    let rng = SystemRandom::new();
    if rng.fill(&mut secret).is_err() || rng.fill(&mut seed).is_err() {
        // No system randomness: still a per-process secret, only less hard to guess.
        fastrand::fill(&mut secret);
        fastrand::fill(&mut seed);
    }
    Xxh3Builder::new().with_seed(u64::from_le_bytes(seed)).with_secret(secret)
}

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes.saturating_add(ENTRY_OVERHEAD)).unwrap_or(u32::MAX)
}

/// Until when (Unix seconds) a token verified at `now` may be cached: its `exp`, when that is
/// ahead and `nbf` (if any) has passed. None: do not cache.
fn cache_until(claims: &Map<String, Value>, now: u64) -> Option<u64> {
    let exp = seconds(claims.get("exp")?)?;
    match claims.get("nbf") {
        None => {}
        Some(nbf) if seconds(nbf)? <= now => {}
        Some(_) => return None,
    }
    (exp > now).then_some(exp)
}

/// A NumericDate as whole seconds (fractions cut: an `exp` of 10.5 counts as 10).
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn cache_until_needs_exp_ahead_and_nbf_passed() {
        assert_eq!(cache_until(&claims(json!({ "exp": 110 })), 100), Some(110));
        assert_eq!(cache_until(&claims(json!({ "exp": 110.9 })), 100), Some(110));
        assert_eq!(cache_until(&claims(json!({ "exp": 100 })), 100), None, "exp reached");
        assert_eq!(cache_until(&claims(json!({ "exp": 90 })), 100), None, "within leeway only");
        assert_eq!(cache_until(&claims(json!({})), 100), None);
        assert_eq!(cache_until(&claims(json!({ "exp": "110" })), 100), None);
        assert_eq!(cache_until(&claims(json!({ "exp": -1 })), 100), None);
        assert_eq!(cache_until(&claims(json!({ "exp": 110, "nbf": 100 })), 100), Some(110));
        assert_eq!(cache_until(&claims(json!({ "exp": 110, "nbf": 101 })), 100), None, "nbf ahead");
        assert_eq!(cache_until(&claims(json!({ "exp": 110, "nbf": "x" })), 100), None);
    }
}
