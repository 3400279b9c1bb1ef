//! A position in a SKU's event stream: the Redis stream entry id `<ms>-<seq>`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::ValidationError;

/// A stream entry id. Ordered numerically — as text `"9-0"` would sort after `"10-0"` — which is
/// the order Redis appends in, and the order the settlement cursor moves in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    ms: u64,
    seq: u64,
}

impl EventId {
    /// Before every entry: the settlement cursor of a SKU nothing was settled for yet.
    pub const START: Self = Self { ms: 0, seq: 0 };

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let invalid = || ValidationError {
            field: "event id",
            reason: format!("{raw:?} is not a stream id <ms>-<seq>"),
        };
        let (ms, seq) = raw.split_once('-').ok_or_else(invalid)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }

    pub fn is_start(self) -> bool {
        self == Self::START
    }

    /// When Redis appended the entry (its clock).
    pub fn time(self) -> Option<DateTime<Utc>> {
        i64::try_from(self.ms)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
    }
}

impl fmt::Display for EventId {
    /// `<ms>-<seq>`, the digits written by `itoa`: the settler writes every event's id into
    /// its hold's row, and `write!` took ~1,200 instructions for each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(itoa::Buffer::new().format(self.ms))?;
        f.write_str("-")?;
        f.write_str(itoa::Buffer::new().format(self.seq))
    }
}

impl FromStr for EventId {
    type Err = ValidationError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl redis::ToRedisArgs for EventId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> EventId {
        EventId::parse(raw).expect("event id")
    }

    #[test]
    fn orders_numerically_not_as_text() {
        assert!(id("0-0") < id("1-0"));
        assert!(id("9-0") < id("10-0"));
        assert!(id("10-2") < id("10-10"));
        assert_eq!(id("10-10"), id("10-10"));
        assert!(EventId::START.is_start());
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        assert_eq!(id("1700000000000-3").to_string(), "1700000000000-3");
        let widest = "18446744073709551615-18446744073709551615";
        assert_eq!(id(widest).to_string(), widest);
        assert_eq!(id("0-0").to_string(), "0-0");
        for bad in ["", "12", "a-1", "1-b", "-1-2", "1-2-3"] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            id("1700000000000-0").time().map(|t| t.timestamp_millis()),
            Some(1_700_000_000_000)
        );
    }
}
