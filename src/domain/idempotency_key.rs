//! The `Idempotency-Key` request header (IETF httpapi idempotency-key draft).

use std::fmt;

use super::ValidationError;

/// A client-chosen key that makes a retried `POST` safe: 1–255 printable ASCII characters.
///
/// The draft defines the header as a structured-field string (`"abc"`); many clients send the
/// bare value instead, so both forms are accepted and yield the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;
    const FIELD: &'static str = "Idempotency-Key";

    pub fn parse(header: &str) -> Result<Self, ValidationError> {
        let value = header.trim_matches(' ');
        let key = match value.strip_prefix('"') {
            Some(quoted) => Self::unquote(quoted)?,
            None => value.to_owned(),
        };
        Self::from_decoded(key)
    }

    /// A key already decoded from its header form (as stored in Redis and Postgres).
    pub fn from_decoded(key: String) -> Result<Self, ValidationError> {
        if key.is_empty() || key.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("must be 1 to {} characters", Self::MAX_LEN),
            ));
        }
        if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(ValidationError::new(
                Self::FIELD,
                "may contain only printable ASCII characters",
            ));
        }
        Ok(Self(key))
    }

    /// Decodes the body of an RFC 8941 string: `\"` and `\\` are the only escapes, and the
    /// closing quote must end the value.
    fn unquote(quoted: &str) -> Result<String, ValidationError> {
        let mut key = String::with_capacity(quoted.len());
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('"' | '\\')) => key.push(escaped),
                    _ => {
                        return Err(ValidationError::new(
                            Self::FIELD,
                            "a quoted key may escape only '\"' and '\\'",
                        ));
                    }
                },
                '"' if chars.as_str().is_empty() => return Ok(key),
                '"' => {
                    return Err(ValidationError::new(
                        Self::FIELD,
                        "nothing may follow the closing quote",
                    ));
                }
                other => key.push(other),
            }
        }
        Err(ValidationError::new(
            Self::FIELD,
            "the quoted key is not closed",
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Result<String, ValidationError> {
        IdempotencyKey::parse(raw).map(|k| k.0)
    }

    #[test]
    fn bare_and_quoted_forms_give_the_same_key() {
        assert_eq!(key("8e03978e-40d5"), Ok("8e03978e-40d5".into()));
        assert_eq!(key("\"8e03978e-40d5\""), Ok("8e03978e-40d5".into()));
    }

    #[test]
    fn quoted_form_decodes_its_escapes() {
        assert_eq!(key(r#""a\"b\\c""#), Ok(r#"a"b\c"#.into()));
    }

    #[test]
    fn length_is_one_to_255() {
        assert!(key(&"k".repeat(255)).is_ok());
        assert!(key(&"k".repeat(256)).is_err());
        assert!(key("").is_err());
        assert!(key("\"\"").is_err());
    }

    #[test]
    fn a_decoded_key_is_taken_as_it_is() {
        let decoded = IdempotencyKey::parse(r#""\"abc""#).expect("parse");
        assert_eq!(decoded.as_str(), "\"abc");
        let again = IdempotencyKey::from_decoded(decoded.as_str().to_owned()).expect("decoded");
        assert_eq!(again, decoded);
    }

    #[test]
    fn refuses_non_printable_and_malformed_quoting() {
        for bad in ["a\tb", "clé", "\"open", "\"a\"b", r#""a\nb""#] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
    }
}
