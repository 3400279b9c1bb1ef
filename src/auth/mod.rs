//! Who is calling: buyer tokens and the admin token.
//!
//! A buyer token is a JWT signed with HS256 under `FLASHGATE_JWT_SECRET` or, when a key set is
//! configured (`jwks`), with RS256, ES256 or EdDSA by the identity provider's key its `kid`
//! names; its `sub` is the buyer id and it must carry `exp`. Each key verifies with its own
//! algorithm only, and the secret only HS256, so `alg: none` and algorithm-confusion tokens fail
//! verification. `nbf` and `iat` may not lie in the future, a token may not live
//! longer than the configured maximum, and `iss` / `aud` are enforced when configured. The admin
//! token is a shared secret compared in constant time; failed admin attempts are logged (at most
//! once a second) and counted.
//!
//! Both secrets must be long enough that guessing is hopeless: an HS256 key of a few characters
//! falls to an offline brute force from a single token in well under a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::domain::BuyerId;

mod jwks;
pub use jwks::{Jwks, JwksError, JwksSource, JwksTiming};

/// Why a token was refused. The variants are for logs; callers see one 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token's subject is not a valid buyer id: {0}")]
    BadSubject(crate::domain::ValidationError),
    #[error("the token was issued in the future (iat {iat})")]
    IssuedInFuture { iat: u64 },
    #[error("the token lives {lifetime} s, longer than the {max} s allowed")]
    LivesTooLong { lifetime: u64, max: u64 },
    #[error("the token names more than one role of this gate; a credential has one")]
    SeveralRoles,
    #[error("the token is not a buyer's")]
    NotABuyer,
    #[error("the token names no key (kid)")]
    NoKeyId,
    #[error("the identity provider's key set has no key {0} (or its keys are stale)")]
    UnknownKey(String),
    #[error("the token says {token:?} but its key verifies {key:?} only")]
    AlgorithmMismatch { token: Algorithm, key: Algorithm },
}

/// What a token lets its holder do. A token whose `roles` and `scope` name none of these is a
/// buyer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Reserves for itself, and reads, commits and releases its own holds.
    Buyer,
    /// The payment (or order) service: reads, commits and releases any hold; never reserves
    /// and never touches a sale.
    Payments,
    /// Everything the admin token may do.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buyer => "buyer",
            Self::Payments => "payments",
            Self::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Buyer, Self::Payments, Self::Admin]
            .into_iter()
            .find(|role| role.as_str() == name)
    }

    /// The one role named by a token's `roles` (an array) and `scope` (space-separated, as
    /// OAuth writes it). Names of other systems are ignored, so a provider's buyer token with
    /// `scope: "openid email"` is a buyer's: naming none of ours is the least privilege.
    fn of(claims: &Claims) -> Result<Self, AuthError> {
        let named = claims.roles.iter().flatten().map(String::as_str);
        let scoped = claims
            .scope
            .iter()
            .flat_map(|scope| scope.split_whitespace());
        let mut ours = named.chain(scoped).filter_map(Self::parse);
        let role = ours.next().unwrap_or(Self::Buyer);
        if ours.any(|other| other != role) {
            return Err(AuthError::SeveralRoles);
        }
        Ok(role)
    }
}

/// Who a valid token names, and in which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the buyer, or the service holding a payments or admin credential.
    pub subject: BuyerId,
    pub role: Role,
}

/// A secret too short to be safe; `serve` refuses to start with one.
#[derive(Debug, thiserror::Error)]
pub enum WeakSecret {
    #[error(
        "FLASHGATE_JWT_SECRET is {0} bytes long; it must be at least {MIN_JWT_SECRET_BYTES} \
         (generate one with `flashgate secret` or `openssl rand -hex 32`)"
    )]
    JwtSecret(usize),
    #[error(
        "FLASHGATE_ADMIN_TOKEN is {0} characters long; it must be at least \
         {MIN_ADMIN_TOKEN_CHARS} (generate one with `flashgate secret` or `openssl rand -hex 32`)"
    )]
    AdminToken(usize),
}

/// Shortest accepted HS256 secret, in bytes (the hash's own size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Shortest accepted admin token, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// Refuses a JWT secret shorter than [`MIN_JWT_SECRET_BYTES`].
pub fn check_jwt_secret(secret: &SecretString) -> Result<(), WeakSecret> {
    let len = secret.expose_secret().len();
    if len < MIN_JWT_SECRET_BYTES {
        return Err(WeakSecret::JwtSecret(len));
    }
    Ok(())
}

/// Refuses an admin token shorter than [`MIN_ADMIN_TOKEN_CHARS`].
pub fn check_admin_token(token: &SecretString) -> Result<(), WeakSecret> {
    let len = token.expose_secret().chars().count();
    if len < MIN_ADMIN_TOKEN_CHARS {
        return Err(WeakSecret::AdminToken(len));
    }
    Ok(())
}

/// A fresh random secret: 32 bytes as 64 hex characters, long enough for both secrets.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a buyer token must satisfy beyond its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Longest `exp` − `iat` (or `exp` − now without `iat`).
    pub max_lifetime: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            max_lifetime: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    /// A string or an array of strings; checked by jsonwebtoken against the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Signs and verifies bearer tokens (buyers', and scoped service credentials); cheap to clone
/// (the router's state is cloned per request).
#[derive(Clone)]
pub struct BearerTokens {
    keys: std::sync::Arc<TokenKeys>,
    /// The identity provider's keys, when configured.
    jwks: Option<Jwks>,
    /// Tokens signed with the shared secret that verified, with whom they name, until their
    /// `exp`: a buyer presents the same token on every reserve, retry, poll and commit, and
    /// verifying it again (two base64 decodes, a JSON parse, an HMAC key set-up and check) was a
    /// tenth of a hold's instructions. Only successes are kept, so a bad token costs what it
    /// did; the identity provider's tokens are not kept (its keys rotate).
    verified: std::sync::Arc<quick_cache::sync::Cache<Box<str>, Verified>>,
}

/// A token that verified, and the last second it may be answered from [`BearerTokens`]'s cache
/// without being verified again: its `exp`, before the leeway (past it, the full check decides).
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    until: u64,
}

struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The same checks for each algorithm an identity provider's key may verify, built once.
    provider_validations: Vec<(Algorithm, Validation)>,
    policy: TokenPolicy,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerTokens([redacted])")
    }
}

impl BearerTokens {
    /// Tolerated clock skew between whoever minted a token and this gate.
    const LEEWAY_SECONDS: u64 = 30;
    /// Verified tokens kept: the buyers active in the last moments of a sale.
    const VERIFIED_CAPACITY: usize = 16_384;
    /// Longer tokens are verified every time, so the cache's memory stays bounded (~8 MiB).
    const VERIFIED_MAX_TOKEN_BYTES: usize = 512;

    /// Tokens under `secret` with the default policy (no issuer or audience, 24 h at most).
    pub fn new(secret: &SecretString) -> Self {
        Self::with_policy(secret, TokenPolicy::default())
    }

    pub fn with_policy(secret: &SecretString, policy: TokenPolicy) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = Self::LEEWAY_SECONDS;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when the token carries them: require them.
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &policy.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &policy.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let provider_validations = jwks::ALGORITHMS
            .iter()
            .map(|algorithm| {
                let mut only = validation.clone();
                only.algorithms = vec![*algorithm];
                (*algorithm, only)
            })
            .collect();
        Self {
            keys: std::sync::Arc::new(TokenKeys {
                encoding: EncodingKey::from_secret(bytes),
                decoding: DecodingKey::from_secret(bytes),
                validation,
                provider_validations,
                policy,
            }),
            jwks: None,
            verified: std::sync::Arc::new(quick_cache::sync::Cache::new(Self::VERIFIED_CAPACITY)),
        }
    }

    /// Also accepts tokens the identity provider signs with a key of `jwks`.
    pub fn with_jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// A buyer's token for `buyer` that expires after `ttl`, with this policy's issuer and
    /// audience.
    pub fn mint(&self, buyer: &BuyerId, ttl: Duration) -> Result<String, AuthError> {
        self.mint_for(buyer, Role::Buyer, ttl)
    }

    /// A token naming `subject` in `role` (a buyer's carries no `roles` claim).
    pub fn mint_for(
        &self,
        subject: &BuyerId,
        role: Role,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            roles: (role != Role::Buyer).then(|| vec![role.as_str().to_owned()]),
            scope: None,
            sub: subject.as_str().to_owned(),
            iat: Some(now),
            exp: now + ttl.as_secs(),
            iss: self.keys.policy.issuer.clone(),
            aud: self
                .keys
                .policy
                .audience
                .clone()
                .map(serde_json::Value::String),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.keys.encoding,
        )?)
    }

    /// Who a valid, unexpired token names, and in which role.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(verified) = self.verified.get(token)
            && now <= verified.until
        {
            return Ok(verified.principal);
        }
        let (principal, shared_secret_until) = self.verify_in_full(token, now)?;
        if let Some(until) = shared_secret_until
            && token.len() <= Self::VERIFIED_MAX_TOKEN_BYTES
        {
            self.verified.insert(
                token.into(),
                Verified {
                    principal: principal.clone(),
                    until,
                },
            );
        }
        Ok(principal)
    }

    /// Every check of `token`; with the principal, the token's `exp` when it was signed with the
    /// shared secret (so it may be kept as verified until then).
    fn verify_in_full(&self, token: &str, now: u64) -> Result<(Principal, Option<u64>), AuthError> {
        let header = jsonwebtoken::decode_header(token)?;
        let shared_secret = header.alg == Algorithm::HS256;
        let claims = match (header.alg, &self.jwks) {
            (Algorithm::HS256, _) => {
                jsonwebtoken::decode::<Claims>(token, &self.keys.decoding, &self.keys.validation)?
                    .claims
            }
            (alg, Some(jwks)) => {
                let kid = header.kid.ok_or(AuthError::NoKeyId)?;
                let key = jwks.key(&kid).ok_or(AuthError::UnknownKey(kid))?;
                if key.algorithm != alg {
                    return Err(AuthError::AlgorithmMismatch {
                        token: alg,
                        key: key.algorithm,
                    });
                }
                let validation = self
                    .keys
                    .provider_validations
                    .iter()
                    .find(|(algorithm, _)| *algorithm == key.algorithm)
                    .map(|(_, validation)| validation)
                    .ok_or(AuthError::AlgorithmMismatch {
                        token: alg,
                        key: key.algorithm,
                    })?;
                jsonwebtoken::decode::<Claims>(token, &key.key, validation)?.claims
            }
            (_, None) => {
                return Err(AuthError::Invalid(
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into(),
                ));
            }
        };
        if let Some(iat) = claims.iat
            && iat > now + Self::LEEWAY_SECONDS
        {
            return Err(AuthError::IssuedInFuture { iat });
        }
        let lifetime = claims.exp.saturating_sub(claims.iat.unwrap_or(now));
        let max = self.keys.policy.max_lifetime.as_secs();
        if lifetime > max + Self::LEEWAY_SECONDS {
            return Err(AuthError::LivesTooLong { lifetime, max });
        }
        let role = Role::of(&claims)?;
        let subject = BuyerId::parse(&claims.sub).map_err(AuthError::BadSubject)?;
        Ok((
            Principal { subject, role },
            shared_secret.then_some(claims.exp),
        ))
    }

    /// The buyer a valid buyer's token names; any other role is refused.
    pub fn verify_buyer(&self, token: &str) -> Result<BuyerId, AuthError> {
        match self.verify(token)? {
            Principal {
                subject,
                role: Role::Buyer,
            } => Ok(subject),
            _ => Err(AuthError::NotABuyer),
        }
    }
}

/// The admin bearer token.
#[derive(Clone)]
pub struct AdminToken(std::sync::Arc<SecretString>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

impl AdminToken {
    pub fn new(secret: SecretString) -> Self {
        Self(std::sync::Arc::new(secret))
    }

    /// Compares in constant time, so response timing does not leak the token byte by byte.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.expose_secret().as_bytes();
        !expected.is_empty() && bool::from(expected.ct_eq(presented.as_bytes()))
    }
}

/// Counts a failed admin authentication and logs it, at most once a second (a brute force must
/// not flood the log), with how many went unlogged since.
pub fn admin_auth_failed(client: Option<std::net::IpAddr>, reason: &'static str) {
    static LAST_LOGGED_SECOND: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("flashgate_admin_auth_failures_total", "reason" => reason).increment(1);
    let now = jsonwebtoken::get_current_timestamp();
    let last = LAST_LOGGED_SECOND.load(Ordering::Relaxed);
    if now > last
        && LAST_LOGGED_SECOND
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let also = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            client = client.map(|ip| ip.to_string()).unwrap_or_default(),
            reason,
            unlogged_since_last = also,
            "failed admin authentication"
        );
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> BearerTokens {
        BearerTokens::new(&SecretString::from(secret.to_owned()))
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn policy(issuer: Option<&str>, audience: Option<&str>, max_s: u64) -> TokenPolicy {
        TokenPolicy {
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            max_lifetime: Duration::from_secs(max_s),
        }
    }

    #[test]
    fn refuses_tokens_from_the_future() {
        let t = tokens("s3cret");
        let future_nbf = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": now() + 600, "nbf": now() + 300}),
            "s3cret",
        );
        let future_iat = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": now() + 600, "iat": now() + 300}),
            "s3cret",
        );
        assert!(t.verify(&future_nbf).is_err());
        assert!(matches!(
            t.verify(&future_iat),
            Err(AuthError::IssuedInFuture { .. })
        ));
    }

    #[test]
    fn refuses_tokens_that_live_too_long() {
        let t = tokens("s3cret");
        let year_3000 = 32_503_680_000_u64;
        let forever = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": year_3000}),
            "s3cret",
        );
        let with_iat = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": year_3000, "iat": now()}),
            "s3cret",
        );
        assert!(matches!(
            t.verify(&forever),
            Err(AuthError::LivesTooLong { .. })
        ));
        assert!(matches!(
            t.verify(&with_iat),
            Err(AuthError::LivesTooLong { .. })
        ));
        let short = BearerTokens::with_policy(
            &SecretString::from("s3cret".to_owned()),
            policy(None, None, 60),
        );
        assert!(
            short
                .mint(&buyer(), Duration::from_secs(3600))
                .is_ok_and(|tok| short.verify(&tok).is_err())
        );
        assert!(
            short
                .mint(&buyer(), Duration::from_secs(60))
                .is_ok_and(|tok| short.verify(&tok).is_ok())
        );
    }

    #[test]
    fn enforces_issuer_and_audience_when_configured() {
        let secret = SecretString::from("s3cret".to_owned());
        let strict =
            BearerTokens::with_policy(&secret, policy(Some("shop"), Some("flashgate"), 3600));
        let own = strict
            .mint(&buyer(), Duration::from_secs(60))
            .expect("mint");
        assert_eq!(strict.verify_buyer(&own).expect("own token"), buyer());
        let claims = |iss: &str, aud: &str| {
            sign(
                &serde_json::json!({"sub": "buyer-1", "exp": now() + 60, "iss": iss, "aud": aud}),
                "s3cret",
            )
        };
        assert!(strict.verify(&claims("evil", "flashgate")).is_err());
        assert!(strict.verify(&claims("shop", "elsewhere")).is_err());
        let no_iss = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": now() + 60, "aud": "flashgate"}),
            "s3cret",
        );
        assert!(strict.verify(&no_iss).is_err());
        // Without a configured issuer, any iss is accepted.
        assert!(tokens("s3cret").verify(&claims("anyone", "x")).is_ok());
    }

    #[test]
    fn short_secrets_are_refused_and_generated_ones_pass() {
        let short = SecretString::from("a".repeat(31));
        assert!(check_jwt_secret(&short).is_err());
        assert!(check_admin_token(&short).is_err());
        assert!(check_jwt_secret(&SecretString::from(String::new())).is_err());
        let generated = SecretString::from(generate_secret());
        assert!(check_jwt_secret(&generated).is_ok());
        assert!(check_admin_token(&generated).is_ok());
        assert_ne!(generate_secret(), generate_secret());
        let message = check_jwt_secret(&short).expect_err("weak").to_string();
        assert!(message.contains("flashgate secret"), "{message}");
    }

    fn buyer() -> BuyerId {
        BuyerId::parse("buyer-1").expect("buyer")
    }

    #[test]
    fn a_token_that_verified_is_kept_until_its_exp_and_one_that_failed_never() {
        let t = tokens("s3cret");
        let exp = now() + 600;
        let good = sign(&serde_json::json!({"sub": "buyer-1", "exp": exp}), "s3cret");
        let forged = sign(&serde_json::json!({"sub": "buyer-1", "exp": exp}), "other");
        let long = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": exp, "pad": "x".repeat(600)}),
            "s3cret",
        );
        assert!(t.verify(&good).is_ok());
        assert_eq!(
            t.verified.get(good.as_str()).map(|kept| kept.until),
            Some(exp)
        );
        assert!(t.verify(&forged).is_err());
        assert!(t.verified.get(forged.as_str()).is_none());
        assert!(t.verify(&long).is_ok());
        assert!(t.verified.get(long.as_str()).is_none(), "too long to keep");
    }

    #[test]
    fn a_kept_token_past_its_exp_is_checked_in_full_again() {
        let t = tokens("s3cret");
        // Signed with another secret: only what was kept could make it pass.
        let forged = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": now() + 600}),
            "other",
        );
        let principal = Principal {
            subject: BuyerId::parse("buyer-1").expect("id"),
            role: Role::Buyer,
        };
        let keep = |until| Verified {
            principal: principal.clone(),
            until,
        };
        t.verified.insert(forged.as_str().into(), keep(now() + 60));
        assert_eq!(t.verify(&forged).ok(), Some(principal.clone()));
        t.verified.insert(forged.as_str().into(), keep(now() - 1));
        assert!(t.verify(&forged).is_err());
    }

    fn sign(claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn a_minted_token_names_its_buyer() {
        let t = tokens("s3cret");
        let token = t.mint(&buyer(), Duration::from_secs(60)).expect("mint");
        assert_eq!(t.verify_buyer(&token).expect("verify"), buyer());
    }

    #[test]
    fn refuses_a_token_signed_with_another_secret() {
        let token = tokens("other")
            .mint(&buyer(), Duration::from_secs(60))
            .expect("mint");
        assert!(tokens("s3cret").verify(&token).is_err());
    }

    #[test]
    fn refuses_an_expired_token() {
        let past = jsonwebtoken::get_current_timestamp() - 3600;
        let token = sign(
            &serde_json::json!({"sub": "buyer-1", "exp": past}),
            "s3cret",
        );
        assert!(tokens("s3cret").verify(&token).is_err());
    }

    #[test]
    fn refuses_a_token_without_exp_or_sub() {
        let future = jsonwebtoken::get_current_timestamp() + 3600;
        let no_exp = sign(&serde_json::json!({"sub": "buyer-1"}), "s3cret");
        let no_sub = sign(&serde_json::json!({"exp": future}), "s3cret");
        assert!(tokens("s3cret").verify(&no_exp).is_err());
        assert!(tokens("s3cret").verify(&no_sub).is_err());
    }

    #[test]
    fn refuses_alg_none() {
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"buyer-1","exp":9999999999}, no signature
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                     eyJzdWIiOiJidXllci0xIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(tokens("s3cret").verify(token).is_err());
    }

    #[test]
    fn refuses_a_subject_that_is_not_a_buyer_id() {
        let future = jsonwebtoken::get_current_timestamp() + 3600;
        let token = sign(&serde_json::json!({"sub": "a:b", "exp": future}), "s3cret");
        assert!(matches!(
            tokens("s3cret").verify(&token),
            Err(AuthError::BadSubject(_))
        ));
    }

    #[test]
    fn a_token_has_one_role_of_ours_and_none_means_a_buyer() {
        let tokens = tokens("a-sufficiently-long-test-secret-0123456789");
        let role_of = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "svc-1", "exp": now() + 60});
            if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
                claims.extend(extra.clone());
            }
            tokens
                .verify(&sign(&claims, "a-sufficiently-long-test-secret-0123456789"))
                .map(|principal| principal.role)
        };
        assert_eq!(role_of(serde_json::json!({})).ok(), Some(Role::Buyer));
        assert_eq!(
            role_of(serde_json::json!({"roles": ["payments"]})).ok(),
            Some(Role::Payments)
        );
        assert_eq!(
            role_of(serde_json::json!({"scope": "openid payments profile"})).ok(),
            Some(Role::Payments)
        );
        assert_eq!(
            role_of(serde_json::json!({"roles": ["admin", "auditor"]})).ok(),
            Some(Role::Admin)
        );
        assert_eq!(
            role_of(serde_json::json!({"scope": "openid email"})).ok(),
            Some(Role::Buyer),
            "another system's scopes leave a buyer's token a buyer's"
        );
        assert!(matches!(
            role_of(serde_json::json!({"roles": ["buyer"], "scope": "admin"})),
            Err(AuthError::SeveralRoles)
        ));
    }

    #[test]
    fn a_minted_service_credential_is_no_buyers() {
        let tokens = tokens("a-sufficiently-long-test-secret-0123456789");
        let service = BuyerId::parse("checkout-svc").expect("subject");
        let token = tokens
            .mint_for(&service, Role::Payments, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            tokens.verify(&token).expect("valid"),
            Principal {
                subject: service,
                role: Role::Payments
            }
        );
        assert!(matches!(
            tokens.verify_buyer(&token),
            Err(AuthError::NotABuyer)
        ));
    }

    #[test]
    fn admin_token_matches_only_itself() {
        let admin = AdminToken::new(SecretString::from("admin-secret".to_owned()));
        assert!(admin.matches("admin-secret"));
        assert!(!admin.matches("admin-secreT"));
        assert!(!admin.matches(""));
        assert!(!AdminToken::new(SecretString::from(String::new())).matches(""));
    }
}
