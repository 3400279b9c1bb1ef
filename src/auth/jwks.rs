//! Your identity provider's keys: a JSON Web Key Set read from `FLASHGATE_JWKS_URL` (or
//! `FLASHGATE_JWKS_FILE`), so tokens it signs with RS256, ES256 or EdDSA are accepted beside
//! the gate's own HS256 ones.
//!
//! The set is loaded before the gate serves (a gate that cannot read it does not start), then
//! refreshed in the background every `refresh`. A token naming a `kid` the set lacks (the
//! provider rotated its keys) asks for a refresh at once, at most once per `min_refresh`, so
//! forged `kid`s cannot make the gate hammer the provider. When refreshes keep failing, the
//! keys are used for `max_stale` after the last success, then dropped: tokens are refused
//! rather than checked against keys the provider may have revoked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;

/// The algorithms a provider's key may verify: RSA, P-256 and Ed25519 keys.
pub(super) const ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

/// How often the set is read again, and how long it may be used when it cannot be.
#[derive(Debug, Clone, Copy)]
pub struct JwksTiming {
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub max_stale: Duration,
}

/// Why the key set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch the JWKS from {url}: {source}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("cannot read the JWKS file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the JWKS is not a JSON Web Key Set: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the JWKS holds no RS256, ES256 or EdDSA key with a kid")]
    NoUsableKey,
}

/// One usable key: what it verifies, and with which algorithm only.
#[derive(Clone)]
pub(super) struct VerifyingKey {
    pub(super) key: DecodingKey,
    pub(super) algorithm: Algorithm,
}

/// The provider's keys, shared by every request; cheap to clone.
#[derive(Clone)]
pub struct Jwks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

struct Inner {
    source: JwksSource,
    timing: JwksTiming,
    client: reqwest::Client,
    keys: RwLock<Loaded>,
    /// When an unknown `kid` last asked for a refresh.
    last_asked: Mutex<Option<Instant>>,
    refresh_now: Notify,
}

struct Loaded {
    by_kid: HashMap<String, VerifyingKey>,
    at: Instant,
}

impl Jwks {
    /// Reads the set once (an error stops the gate from starting) and, inside a Tokio runtime,
    /// starts the background refresh, which ends when the last clone is dropped.
    pub async fn load(source: JwksSource, timing: JwksTiming) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| JwksError::Fetch {
                url: String::new(),
                source,
            })?;
        let by_kid = read(&client, &source).await?;
        let inner = Arc::new(Inner {
            source,
            timing,
            client,
            keys: RwLock::new(Loaded {
                by_kid,
                at: Instant::now(),
            }),
            last_asked: Mutex::new(None),
            refresh_now: Notify::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(refresh_loop(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    /// The key named `kid`, if the set has it and is not stale. An unknown `kid` asks the
    /// background task for a refresh (at most once per `min_refresh`).
    pub(super) fn key(&self, kid: &str) -> Option<VerifyingKey> {
        let found = {
            let loaded = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
            if loaded.at.elapsed() > self.inner.timing.max_stale {
                return None;
            }
            loaded.by_kid.get(kid).cloned()
        };
        if found.is_none() {
            let mut asked = self
                .inner
                .last_asked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if asked.is_none_or(|at| at.elapsed() >= self.inner.timing.min_refresh) {
                *asked = Some(Instant::now());
                self.inner.refresh_now.notify_one();
            }
        }
        found
    }
}

async fn refresh_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let wait = strong.timing.refresh;
        let woken = async {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = strong.refresh_now.notified() => {}
            }
        };
        woken.await;
        match read(&strong.client, &strong.source).await {
            Ok(by_kid) => {
                let mut loaded = strong.keys.write().unwrap_or_else(|p| p.into_inner());
                tracing::debug!(keys = by_kid.len(), "JWKS refreshed");
                *loaded = Loaded {
                    by_kid,
                    at: Instant::now(),
                };
            }
            Err(err) => {
                let age = strong
                    .keys
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .at
                    .elapsed();
                if age > strong.timing.max_stale {
                    tracing::error!(error = %err, "JWKS refresh failed and the keys are stale: tokens of the identity provider are refused");
                } else {
                    tracing::warn!(error = %err, "JWKS refresh failed; the last keys stay in use");
                }
            }
        }
        drop(strong);
    }
}

async fn read(
    client: &reqwest::Client,
    source: &JwksSource,
) -> Result<HashMap<String, VerifyingKey>, JwksError> {
    let text = match source {
        JwksSource::Url(url) => {
            let fetched = async {
                client
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            };
            fetched.await.map_err(|source| JwksError::Fetch {
                url: url.clone(),
                source,
            })?
        }
        JwksSource::File(path) => {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| JwksError::File {
                    path: path.clone(),
                    source,
                })?
        }
    };
    let set: JwkSet = serde_json::from_str(&text)?;
    let by_kid: HashMap<String, VerifyingKey> = set.keys.iter().filter_map(usable).collect();
    if by_kid.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(by_kid)
}

/// A key this gate verifies with: it has a `kid`, an asymmetric type we support, and an
/// algorithm that fits it (the JWK's `alg`, else the one its type implies). Symmetric keys and
/// others are ignored.
fn usable(jwk: &Jwk) -> Option<(String, VerifyingKey)> {
    let kid = jwk.common.key_id.clone()?;
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Algorithm::EdDSA,
        Some(_) => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, VerifyingKey { key, algorithm }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"{"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "symmetric"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "alg": "RS256", "kid": "lying"}
    ]}"#;

    async fn loaded(max_stale: Duration) -> Jwks {
        let path = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, SET).expect("write");
        let timing = JwksTiming {
            refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(3600),
            max_stale,
        };
        let jwks = Jwks::load(JwksSource::File(path.clone()), timing)
            .await
            .expect("load");
        let _ = std::fs::remove_file(path);
        jwks
    }

    #[tokio::test]
    async fn only_asymmetric_keys_whose_algorithm_fits_their_type_are_used() {
        let jwks = loaded(Duration::from_secs(60)).await;
        let ed = jwks.key("ed").expect("the Ed25519 key");
        assert_eq!(ed.algorithm, Algorithm::EdDSA);
        assert!(
            jwks.key("symmetric").is_none(),
            "no shared secret from a key set"
        );
        assert!(jwks.key("lying").is_none(), "an OKP key claiming RS256");
    }

    #[tokio::test]
    async fn keys_past_their_stale_bound_are_not_used() {
        let jwks = loaded(Duration::from_millis(50)).await;
        assert!(jwks.key("ed").is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            jwks.key("ed").is_none(),
            "the provider's revoked keys could still be in it"
        );
    }
}
