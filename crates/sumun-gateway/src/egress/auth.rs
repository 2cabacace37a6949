//! `Proxy-Authorization: Basic` against the `[forward_proxy] users`, whose passwords are stored
//! as argon2 (PHC string) or bcrypt hashes.
//!
//! Password hashes are slow on purpose (tens of milliseconds), so verification runs on the
//! blocking pool, a few at a time, and a successful verification is remembered for a minute
//! under the SHA-256 of the header value: a keep-alive client sending the same header on every
//! request pays the hash once. Failures are never remembered. An unknown user name costs as much
//! as a known one, so response times don't tell which users exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordVerifier};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use http::header::PROXY_AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use sumun_config::model::ProxyUser;
use tokio::sync::Semaphore;

/// How long a verified header is trusted without hashing again.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered headers; past it the entry closest to expiry goes.
const VERIFIED_CAPACITY: usize = 1024;

/// Padding is optional on decode: some clients omit it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a request was not authenticated; both are answered with 407 and [`challenge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("proxy authentication required")]
    Missing,
    #[error("invalid proxy credentials")]
    Invalid,
}

/// The `Proxy-Authenticate` value sent with a 407.
pub fn challenge() -> HeaderValue {
    HeaderValue::from_static(r#"Basic realm="sumun", charset="UTF-8""#)
}

/// The proxy users of one config generation. Cloning shares the verified-header cache.
#[derive(Clone)]
pub struct ProxyAuth {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    users: Vec<User>,
    /// The hash an unknown user name is verified against; see [`ProxyAuth::new`].
    decoy: StoredHash,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// Bounds concurrent hashing, so a flood of bad passwords can't take every blocking thread
    /// (nor, for argon2, tens of MiB of memory each).
    hashing: Semaphore,
}

struct User {
    name: String,
    hash: StoredHash,
}

#[derive(Clone)]
enum StoredHash {
    Argon2(Arc<str>),
    Bcrypt(Arc<str>),
    /// Neither format: never matches.
    Unsupported,
}

struct Verified {
    user: String,
    expires: Instant,
}

impl StoredHash {
    fn new(hash: &str) -> StoredHash {
        if hash.starts_with("$argon2") {
            StoredHash::Argon2(hash.into())
        } else if ["$2a$", "$2b$", "$2x$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            StoredHash::Bcrypt(hash.into())
        } else {
            StoredHash::Unsupported
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            // The parameters come from the PHC string, not from the Argon2 value.
            StoredHash::Argon2(hash) => Argon2::default().verify_password(password, &**hash).is_ok(),
            StoredHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            StoredHash::Unsupported => false,
        }
    }
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> =
            self.inner.iter().flat_map(|i| i.users.iter().map(|u| u.name.as_str())).collect();
        f.debug_struct("ProxyAuth").field("users", &users).finish_non_exhaustive()
    }
}

impl ProxyAuth {
    /// No users: authentication is off. A user whose hash is neither argon2 nor bcrypt can
    /// never log in (the config loader is expected to have refused it already).
    ///
    /// An unknown user name is checked against the first usable configured hash and then
    /// refused: the same algorithm and cost as a real user, without precomputing a dummy hash.
    pub fn new(users: &[ProxyUser]) -> ProxyAuth {
        if users.is_empty() {
            return ProxyAuth { inner: None };
        }
        let users: Vec<User> = users
            .iter()
            .map(|u| User { name: u.name.clone(), hash: StoredHash::new(&u.password_hash) })
            .collect();
        let decoy = users
            .iter()
            .map(|u| &u.hash)
            .find(|h| !matches!(h, StoredHash::Unsupported))
            .cloned()
            .unwrap_or(StoredHash::Unsupported);
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        ProxyAuth {
            inner: Some(Arc::new(Inner {
                users,
                decoy,
                verified: Mutex::new(HashMap::new()),
                hashing: Semaphore::new(parallelism.max(2)),
            })),
        }
    }

    /// Whether any user is configured, i.e. whether requests must authenticate.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The authenticated user, `None` when authentication is off.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Option<String>, AuthError> {
        let Some(inner) = &self.inner else { return Ok(None) };
        let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Invalid);
        }
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some(user) = inner.remembered(&key) {
            return Ok(Some(user));
        }
        let (name, password) = parse_basic(value.as_bytes()).ok_or(AuthError::Invalid)?;
        let found = inner.find_user(&name);
        let hash = match found {
            Some(i) => inner.users.get(i).map(|u| u.hash.clone()),
            None => None,
        }
        .unwrap_or_else(|| inner.decoy.clone());

        let _permit = inner.hashing.acquire().await.map_err(|_| AuthError::Invalid)?;
        let matched = tokio::task::spawn_blocking(move || hash.verify(&password)).await.map_err(|err| {
            tracing::error!(error = %err, "proxy password verification panicked");
            AuthError::Invalid
        })?;
        match found.and_then(|i| inner.users.get(i)) {
            Some(user) if matched => {
                inner.remember(key, &user.name);
                Ok(Some(user.name.clone()))
            }
            _ => Err(AuthError::Invalid),
        }
    }
}

impl Inner {
    /// The index of `name`, comparing against every user in constant time per comparison and
    /// without stopping at the first match.
    fn find_user(&self, name: &[u8]) -> Option<usize> {
        let mut found = 0u64;
        let mut index = 0u64;
        for (i, user) in self.users.iter().enumerate() {
            let eq = user.name.as_bytes().ct_eq(name);
            index.conditional_assign(&(i as u64), eq);
            found.conditional_assign(&1, eq);
        }
        (found == 1).then_some(index as usize)
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<String> {
        let verified = self.verified.lock().ok()?;
        let entry = verified.get(key)?;
        (entry.expires > Instant::now()).then(|| entry.user.clone())
    }

    fn remember(&self, key: [u8; 32], user: &str) {
        let Ok(mut verified) = self.verified.lock() else { return };
        let now = Instant::now();
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, v| v.expires > now);
        }
        if verified.len() >= VERIFIED_CAPACITY
            && let Some(oldest) = verified.iter().min_by_key(|(_, v)| v.expires).map(|(k, _)| *k)
        {
            verified.remove(&oldest);
        }
        verified.insert(key, Verified { user: user.to_owned(), expires: now + VERIFIED_TTL });
    }
}

/// `Basic base64(user:pass)` → (user, pass) as bytes; the scheme is case-insensitive.
fn parse_basic(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return None;
    }
    let mut decoded = BASE64.decode(token).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let password = decoded.split_off(colon + 1);
    decoded.truncate(colon);
    Some((decoded, password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Params, PasswordHasher, Version};

    fn argon2_hash(password: &str) -> String {
        // Lowest cost the crate accepts: the test checks the plumbing, not the strength.
        let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(password.as_bytes(), b"sumun-test-salt")
            .unwrap()
            .to_string()
    }

    fn bcrypt_hash(password: &str) -> String {
        bcrypt::hash_with_salt(password, 4, *b"sumun-test-salt!").unwrap().to_string()
    }

    fn user(name: &str, password_hash: String) -> ProxyUser {
        ProxyUser { name: name.into(), password_hash, allow: vec![] }
    }

    fn auth() -> ProxyAuth {
        ProxyAuth::new(&[user("alice", argon2_hash("wonderland")), user("bob", bcrypt_hash("builder"))])
    }

    fn basic(credentials: &str) -> HeaderMap {
        header(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials)))
    }

    fn header(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(PROXY_AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn hashes_are_recognized() {
        assert!(argon2_hash("x").starts_with("$argon2id$"));
        assert!(bcrypt_hash("x").starts_with("$2b$04$"));
        assert!(matches!(StoredHash::new("plaintext"), StoredHash::Unsupported));
    }

    #[tokio::test]
    async fn no_users_means_no_authentication() {
        let auth = ProxyAuth::new(&[]);
        assert!(!auth.is_enabled());
        assert_eq!(auth.verify(&HeaderMap::new()).await, Ok(None));
        assert_eq!(auth.verify(&basic("anyone:anything")).await, Ok(None));
    }

    #[tokio::test]
    async fn good_passwords() {
        let auth = auth();
        assert!(auth.is_enabled());
        assert_eq!(auth.verify(&basic("alice:wonderland")).await, Ok(Some("alice".into())));
        assert_eq!(auth.verify(&basic("bob:builder")).await, Ok(Some("bob".into())));
        // Scheme case and unpadded base64 are accepted; a colon may be part of the password.
        let auth = ProxyAuth::new(&[user("carol", bcrypt_hash("a:b"))]);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("carol:a:b");
        assert_eq!(auth.verify(&header(&format!("bAsIc  {unpadded}"))).await, Ok(Some("carol".into())));
    }

    #[tokio::test]
    async fn wrong_password() {
        let auth = auth();
        assert_eq!(auth.verify(&basic("alice:builder")).await, Err(AuthError::Invalid));
        assert_eq!(auth.verify(&basic("bob:wonderland")).await, Err(AuthError::Invalid));
        assert_eq!(auth.verify(&basic("bob:")).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn unknown_user_is_refused_even_with_a_real_password() {
        let auth = auth();
        // The decoy is alice's hash: her password must not open an unknown name.
        assert_eq!(auth.verify(&basic("mallory:wonderland")).await, Err(AuthError::Invalid));
        assert_eq!(auth.verify(&basic("Alice:wonderland")).await, Err(AuthError::Invalid));
        assert_eq!(auth.verify(&basic(":wonderland")).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn missing_and_malformed_headers() {
        let auth = auth();
        assert_eq!(auth.verify(&HeaderMap::new()).await, Err(AuthError::Missing));
        for bad in
            ["Basic", "Basic ", "Basic !!!not-base64!!!", "Bearer abc", "Digest username=alice", "Basicxyz"]
        {
            assert_eq!(auth.verify(&header(bad)).await, Err(AuthError::Invalid), "{bad}");
        }
        let no_colon = base64::engine::general_purpose::STANDARD.encode("alicewonderland");
        assert_eq!(auth.verify(&header(&format!("Basic {no_colon}"))).await, Err(AuthError::Invalid));
        let mut twice = basic("alice:wonderland");
        twice.append(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic Ym9iOmJ1aWxkZXI="));
        assert_eq!(auth.verify(&twice).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn unsupported_hash_never_matches() {
        let auth = ProxyAuth::new(&[user("dave", "secret".into())]);
        assert_eq!(auth.verify(&basic("dave:secret")).await, Err(AuthError::Invalid));
        assert_eq!(auth.verify(&basic("eve:secret")).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn verified_header_is_remembered() {
        let auth = auth();
        let headers = basic("alice:wonderland");
        assert_eq!(auth.verify(&headers).await, Ok(Some("alice".into())));
        let inner = auth.inner.as_ref().unwrap();
        assert_eq!(inner.verified.lock().unwrap().len(), 1);
        // Hold every hashing permit: only a remembered answer can come back now.
        let _all = inner.hashing.acquire_many(inner.hashing.available_permits() as u32).await.unwrap();
        let cached = tokio::time::timeout(Duration::from_secs(1), auth.verify(&headers)).await;
        assert_eq!(cached, Ok(Ok(Some("alice".into()))));
        // A different (wrong) header is not served from the cache: it waits for a permit.
        let uncached =
            tokio::time::timeout(Duration::from_millis(100), auth.verify(&basic("alice:nope"))).await;
        assert!(uncached.is_err());
    }

    #[tokio::test]
    async fn failures_are_not_remembered_and_expired_entries_are_not_used() {
        let auth = auth();
        assert_eq!(auth.verify(&basic("alice:nope")).await, Err(AuthError::Invalid));
        let inner = auth.inner.as_ref().unwrap();
        assert!(inner.verified.lock().unwrap().is_empty());
        let key: [u8; 32] = Sha256::digest(b"Basic stale").into();
        inner
            .verified
            .lock()
            .unwrap()
            .insert(key, Verified { user: "alice".into(), expires: Instant::now() });
        assert_eq!(inner.remembered(&key), None);
    }

    #[test]
    fn remembered_headers_are_bounded() {
        let auth = ProxyAuth::new(&[user("alice", "x".into())]);
        let inner = auth.inner.as_ref().unwrap();
        for i in 0..VERIFIED_CAPACITY + 10 {
            let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
            inner.remember(key, "alice");
        }
        assert_eq!(inner.verified.lock().unwrap().len(), VERIFIED_CAPACITY);
    }

    #[test]
    fn user_lookup() {
        let auth = ProxyAuth::new(&[user("alice", "x".into()), user("bob", "y".into())]);
        let inner = auth.inner.as_ref().unwrap();
        assert_eq!(inner.find_user(b"alice"), Some(0));
        assert_eq!(inner.find_user(b"bob"), Some(1));
        assert_eq!(inner.find_user(b"bo"), None);
        assert_eq!(inner.find_user(b""), None);
    }

    #[test]
    fn challenge_header() {
        assert_eq!(challenge(), r#"Basic realm="sumun", charset="UTF-8""#);
    }
}
