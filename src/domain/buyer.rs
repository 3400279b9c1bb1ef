//! The buyer a hold belongs to.

use std::fmt;

use super::ValidationError;

/// A buyer id, taken from the `sub` claim of the buyer's token: 1–128 characters of
/// `A-Z a-z 0-9 . _ - @ +`.
///
/// The id becomes part of Redis key names (`buyer:<id>`, `idem:<buyer>:<key>`), so colons,
/// braces and spaces are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct BuyerId(String);

impl BuyerId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                "buyer_id",
                format!("must be 1 to {} characters", Self::MAX_LEN),
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'))
        {
            return Err(ValidationError::new(
                "buyer_id",
                "may contain only letters, digits and '.', '_', '-', '@', '+'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BuyerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["buyer-1", "alice@example.com", "u+1", &"b".repeat(128)] {
            assert!(BuyerId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_ids_that_would_break_key_names() {
        for bad in ["", "a:b", "{a}", "a b", &"b".repeat(129)] {
            assert!(BuyerId::parse(bad).is_err(), "{bad}");
        }
    }
}
