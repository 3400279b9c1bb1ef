//! Who is calling: buyer tokens and the admin token.
//!
//! A buyer token is a JWT signed with HS256 under `FLASHGATE_JWT_SECRET`; its `sub` is the buyer
//! id and it must carry `exp`. Only HS256 is accepted, so `alg: none` and algorithm-confusion
//! tokens fail verification. The admin token is a shared secret compared in constant time.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::domain::BuyerId;

/// Why a token was refused. The variants are for logs; callers see one 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token's subject is not a valid buyer id: {0}")]
    BadSubject(crate::domain::ValidationError),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
}

/// Signs and verifies buyer tokens.
#[derive(Clone)]
pub struct BuyerTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for BuyerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuyerTokens([redacted])")
    }
}

impl BuyerTokens {
    /// Tolerated clock skew between whoever minted a token and this gate.
    const LEEWAY_SECONDS: u64 = 30;

    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = Self::LEEWAY_SECONDS;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// A token for `buyer` that expires after `ttl`.
    pub fn mint(&self, buyer: &BuyerId, ttl: Duration) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: buyer.as_str().to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The buyer a valid, unexpired token names.
    pub fn verify(&self, token: &str) -> Result<BuyerId, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?;
        BuyerId::parse(&data.claims.sub).map_err(AuthError::BadSubject)
    }
}

/// The admin bearer token.
#[derive(Clone)]
pub struct AdminToken(SecretString);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

impl AdminToken {
    pub fn new(secret: SecretString) -> Self {
        Self(secret)
    }

    /// Compares in constant time, so response timing does not leak the token byte by byte.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.expose_secret().as_bytes();
        !expected.is_empty() && bool::from(expected.ct_eq(presented.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> BuyerTokens {
        BuyerTokens::new(&SecretString::from(secret.to_owned()))
    }

    fn buyer() -> BuyerId {
        BuyerId::parse("buyer-1").expect("buyer")
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
        assert_eq!(t.verify(&token).expect("verify"), buyer());
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
    fn admin_token_matches_only_itself() {
        let admin = AdminToken::new(SecretString::from("admin-secret".to_owned()));
        assert!(admin.matches("admin-secret"));
        assert!(!admin.matches("admin-secreT"));
        assert!(!admin.matches(""));
        assert!(!AdminToken::new(SecretString::from(String::new())).matches(""));
    }
}
