//! The one timestamp format everything flashgate shows uses: RFC 3339 in UTC with
//! milliseconds and `Z`, e.g. `2026-11-23T07:09:01.832Z`.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `#[serde(serialize_with = "timestamp::serialize")]`
pub fn serialize<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*at))
}

/// `#[serde(serialize_with = "timestamp::serialize_option")]`
pub fn serialize_option<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serializer.serialize_str(&format(*at)),
        None => serializer.serialize_none(),
    }
}

/// `#[serde(with = "timestamp::rfc3339")]`: written as [`format`], read as any RFC 3339 time.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};

    pub fn serialize<S: serde::Serializer>(
        at: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        super::serialize(at, serializer)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_with_milliseconds_and_z() {
        let at = DateTime::parse_from_rfc3339("2026-11-23T08:09:01.832808551+01:00")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(format(at), "2026-11-23T07:09:01.832Z");
        let whole = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        assert_eq!(format(whole), "2027-01-15T08:00:00.000Z");
    }
}
