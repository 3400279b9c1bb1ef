//! The one timestamp format everything flashgate shows uses: RFC 3339 in UTC with
//! milliseconds and `Z`, e.g. `2026-11-23T07:09:01.832Z`.

use chrono::{DateTime, SecondsFormat, Utc};

/// `2026-11-23T07:09:01.832Z`: its length.
const LENGTH: usize = 24;

pub fn format(at: DateTime<Utc>) -> String {
    encode(at, &mut [0; LENGTH]).into_owned()
}

/// [`format`] into `buffer`. Every hold's answer carries two times: written digit by digit from
/// the Unix day and second, without chrono's formatter (~700 instructions each) or a `String`.
/// A year outside 0–9999 or a leap second, which never come from Redis's milliseconds, still
/// go through chrono.
fn encode(at: DateTime<Utc>, buffer: &mut [u8; LENGTH]) -> std::borrow::Cow<'_, str> {
    let seconds = at.timestamp();
    let nanos = at.timestamp_subsec_nanos();
    let (year, month, day) = civil_date(seconds.div_euclid(86_400));
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return at.to_rfc3339_opts(SecondsFormat::Millis, true).into();
    }
    let of_day = seconds.rem_euclid(86_400) as u32;
    *buffer = *b"0000-00-00T00:00:00.000Z";
    let mut digits = |at: usize, width: usize, mut value: u32| {
        for slot in buffer[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, 4, year as u32);
    digits(5, 2, month);
    digits(8, 2, day);
    digits(11, 2, of_day / 3600);
    digits(14, 2, of_day / 60 % 60);
    digits(17, 2, of_day % 60);
    digits(20, 3, nanos / 1_000_000);
    // Only ASCII digits and separators were written.
    std::str::from_utf8(buffer)
        .unwrap_or_else(|_| unreachable!())
        .into()
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01: Howard
/// Hinnant's `civil_from_days`, in 400-year eras of 146,097 days.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `#[serde(serialize_with = "timestamp::serialize")]`
pub fn serialize<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&encode(*at, &mut [0; LENGTH]))
}

/// `#[serde(serialize_with = "timestamp::serialize_option")]`
pub fn serialize_option<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
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

    fn chrono_s(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    #[test]
    fn written_digit_by_digit_as_chrono_writes_it() {
        let edges = [
            "0000-01-01T00:00:00.000Z",
            "0999-12-31T23:59:59.999Z",
            "1970-01-01T00:00:00.000Z",
            "1900-02-28T23:59:59.999Z",
            "1900-03-01T00:00:00.000Z",
            "2000-02-29T00:00:00.001Z",
            "2024-02-29T12:34:56.007Z",
            "2100-03-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
        ];
        for edge in edges {
            let at = DateTime::parse_from_rfc3339(edge)
                .expect(edge)
                .with_timezone(&Utc);
            assert_eq!(format(at), edge);
            assert_eq!(format(at), chrono_s(at));
        }
        // Milliseconds over the whole range of four-digit years, and sub-millisecond parts.
        let first = DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z")
            .expect("first")
            .timestamp_millis();
        let last = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z")
            .expect("last")
            .timestamp_millis();
        for day in 0..(4 * 366) {
            let at =
                DateTime::from_timestamp(946_684_800 - 366 * 86_400 + day * 86_400 + day * 61, 0)
                    .expect("around 2000");
            assert_eq!(format(at), chrono_s(at));
        }
        let step = (last - first) / 100_003;
        for n in 0..=100_003 {
            let at = DateTime::from_timestamp_millis(first + n * step).expect("in range")
                + chrono::Duration::nanoseconds(n % 1_000_000);
            assert_eq!(format(at), chrono_s(at));
        }
    }

    #[test]
    fn years_beyond_four_digits_and_leap_seconds_go_through_chrono() {
        let early = DateTime::from_timestamp(-62_198_755_200, 0).expect("year -1");
        assert_eq!(format(early).get(..5), Some("-0001"));
        assert_eq!(format(early), chrono_s(early));
        let late = DateTime::from_timestamp(253_402_300_800, 0).expect("year 10000");
        assert_eq!(format(late), chrono_s(late));
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 1_500))
            .expect("leap second")
            .and_utc();
        assert_eq!(format(leap), chrono_s(leap));
        assert!(format(leap).starts_with("2016-12-31T23:59:60"));
    }
}
