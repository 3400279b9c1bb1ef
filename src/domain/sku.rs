//! The SKU code a sale is sold under.

use std::fmt;

use super::ValidationError;

/// A SKU code: 1–64 characters of `A-Z a-z 0-9 . _ -`.
///
/// The alphabet is narrow on purpose: the code is embedded in Redis keys inside a `{hash tag}`
/// and in URLs, so braces, colons, slashes and spaces must never appear in it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl From<Sku> for String {
    fn from(sku: Sku) -> Self {
        sku.0
    }
}

impl TryFrom<String> for Sku {
    type Error = ValidationError;

    fn try_from(raw: String) -> Result<Self, ValidationError> {
        Self::parse(&raw)
    }
}

impl Sku {
    pub const MAX_LEN: usize = 64;
    /// What [`Sku::parse`] accepts besides the length, as a regular expression (for the OpenAPI
    /// document): the allowed characters, and not only dots.
    pub const PATTERN: &'static str = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$";

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                "sku",
                format!("must be 1 to {} characters", Self::MAX_LEN),
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ValidationError::new(
                "sku",
                "may contain only letters, digits, '.', '_' and '-'",
            ));
        }
        // `.` and `..` name path segments, not sales: a URL with them is rewritten by clients
        // and proxies before it arrives.
        if raw.bytes().all(|b| b == b'.') {
            return Err(ValidationError::new("sku", "may not be only dots"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Sku {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_not_skus() {
        for raw in [".", "..", "..."] {
            assert!(Sku::parse(raw).is_err(), "{raw}");
        }
        assert!(Sku::parse("a.b").is_ok());
        assert!(Sku::parse(".hidden").is_ok());
    }

    #[test]
    fn accepts_codes_made_of_the_safe_alphabet() {
        for ok in ["A", "sku-1", "TSHIRT_XL.red", &"a".repeat(64)] {
            assert!(Sku::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_empty_long_and_key_breaking_codes() {
        for bad in ["", &"a".repeat(65), "a{b}", "a:b", "a b", "a/b", "é"] {
            assert!(Sku::parse(bad).is_err(), "{bad}");
        }
    }
}
