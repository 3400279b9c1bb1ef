//! What the caller attaches to a hold of its own: a reference (its cart or order id) and a small
//! JSON object. flashgate never reads either; it keeps them with the hold through Redis,
//! Postgres, every answer and every event, so the order system can tie a hold to its order.

use std::fmt;

use serde_json::{Map, Value};

use super::ValidationError;

/// The caller's reference on a hold, e.g. a cart or order id: 1 to 128 characters, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct HoldReference(String);

impl HoldReference {
    pub const MAX_CHARS: usize = 128;
    const FIELD: &'static str = "reference";

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("must be 1 to {} characters", Self::MAX_CHARS),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                Self::FIELD,
                "may not contain control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HoldReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The caller's metadata on a hold: a JSON object of at most [`HoldMetadata::MAX_BYTES`] bytes
/// in its canonical form (keys sorted at every level, no whitespace), which is how it is stored
/// and compared, so `{"b":1,"a":2}` and `{ "a": 2, "b": 1 }` are the same metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldMetadata {
    object: Map<String, Value>,
    canonical: String,
}

impl HoldMetadata {
    pub const MAX_BYTES: usize = 1024;
    const FIELD: &'static str = "metadata";

    pub fn parse(value: Value) -> Result<Self, ValidationError> {
        let Value::Object(object) = canonical(value) else {
            return Err(ValidationError::new(Self::FIELD, "must be a JSON object"));
        };
        let canonical = Value::Object(object.clone()).to_string();
        if canonical.len() > Self::MAX_BYTES {
            return Err(ValidationError::new(
                Self::FIELD,
                format!(
                    "must be at most {} bytes as compact JSON (is {})",
                    Self::MAX_BYTES,
                    canonical.len()
                ),
            ));
        }
        Ok(Self { object, canonical })
    }

    /// Metadata as stored (in Redis, a stream entry or Postgres' `jsonb` text).
    pub fn from_stored(text: &str) -> Result<Self, ValidationError> {
        let value = serde_json::from_str(text)
            .map_err(|e| ValidationError::new(Self::FIELD, format!("is not JSON: {e}")))?;
        Self::parse(value)
    }

    /// The canonical JSON text: what is stored and what the idempotency fingerprint covers.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    pub fn as_object(&self) -> &Map<String, Value> {
        &self.object
    }
}

/// The value with every object's keys in sorted order, so its compact text is canonical
/// whether or not `serde_json` keeps insertion order.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(String, Value)> = object.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_reference_is_one_to_128_characters_without_control_characters() {
        assert_eq!(
            HoldReference::parse("cart-42").expect("valid").as_str(),
            "cart-42"
        );
        assert!(HoldReference::parse(&"é".repeat(128)).is_ok());
        for bad in ["", "a\nb", "tab\there"] {
            let err = HoldReference::parse(bad).expect_err("refused");
            assert_eq!(err.field, "reference", "{bad:?}");
        }
        assert!(HoldReference::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn metadata_is_a_bounded_object_compared_in_canonical_form() {
        let a = HoldMetadata::parse(json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}}))
            .expect("valid");
        assert_eq!(
            a.as_str(),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
        let b = HoldMetadata::from_stored(
            r#"{ "b" : 1, "a": {"x": null, "y": [1, {"c": 3, "d": 2}]} }"#,
        )
        .expect("valid");
        assert_eq!(a, b);

        for bad in [json!([1]), json!("text"), json!(3)] {
            assert_eq!(
                HoldMetadata::parse(bad).expect_err("refused").field,
                "metadata"
            );
        }
        let big = json!({"note": "x".repeat(HoldMetadata::MAX_BYTES)});
        assert!(HoldMetadata::parse(big).is_err());
        let fits = json!({"n": "x".repeat(HoldMetadata::MAX_BYTES - r#"{"n":""}"#.len())});
        assert!(HoldMetadata::parse(fits).is_ok());
    }
}
