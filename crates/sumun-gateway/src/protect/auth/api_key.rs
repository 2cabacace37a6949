//! API keys: the presented key is hashed with SHA-256 and compared with every stored digest
//! in constant time, so neither the key nor which stored key is closest leaks through timing.

use subtle::{ConditionallySelectable, ConstantTimeEq};
use sumun_config::{ApiKey, ApiKeyAuth, CredentialSource};

pub(super) struct ApiKeys {
    sources: Vec<CredentialSource>,
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    pub(super) fn new(cfg: &ApiKeyAuth) -> Self {
        let sources = if cfg.sources.is_empty() {
            vec![CredentialSource::Header("x-api-key".into())]
        } else {
            cfg.sources.clone()
        };
        ApiKeys { sources, keys: cfg.keys.clone() }
    }

    pub(super) fn sources(&self) -> &[CredentialSource] {
        &self.sources
    }

    pub(super) fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// The index of the stored key whose digest matches `presented`. Every stored digest is
    /// compared, whatever matches first.
    pub(super) fn verify(&self, presented: &[u8]) -> Option<usize> {
        let digest = super::jwks::sha256(presented);
        // 0 = no match; i + 1 = the key at index i.
        let mut found = 0u32;
        for (i, k) in self.keys.iter().enumerate() {
            let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
            found.conditional_assign(&index, digest.ct_eq(&k.sha256));
        }
        let i = usize::try_from(found).ok()?.checked_sub(1)?;
        (i < self.keys.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(&ApiKeyAuth {
            sources: Vec::new(),
            keys: vec![
                ApiKey {
                    name: "ci".into(),
                    sha256: super::super::jwks::sha256(b"ci-secret"),
                    scopes: vec!["read".into()],
                },
                ApiKey {
                    name: "ops".into(),
                    sha256: super::super::jwks::sha256(b"ops-secret"),
                    scopes: vec!["read".into(), "write".into()],
                },
            ],
        })
    }

    #[test]
    fn matches_by_digest() {
        let k = keys();
        let name = |i: usize| k.keys()[i].name.as_str();
        assert_eq!(k.verify(b"ci-secret").map(name), Some("ci"));
        assert_eq!(k.verify(b"ops-secret").map(name), Some("ops"));
        assert!(k.verify(b"ops-secreT").is_none());
        assert!(k.verify(b"").is_none());
        assert!(
            k.verify(&super::super::jwks::sha256(b"ci-secret")).is_none(),
            "the digest itself is not a key"
        );
    }

    #[test]
    fn default_source_is_x_api_key() {
        assert_eq!(keys().sources(), &[CredentialSource::Header("x-api-key".into())]);
    }
}
