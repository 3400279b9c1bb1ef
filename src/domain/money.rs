//! Prices and totals. All money is `rust_decimal`, never floating point, and travels as a string.

use std::fmt;

use rust_decimal::Decimal;

use super::{Quantity, ValidationError};

/// An ISO 4217 currency code, known to the standard (`iso_currency`'s table).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Currency(&'static str);

/// ISO 4217 by code, sorted for a binary search: `iso_currency::Currency::from_code` compares
/// the code with each currency's in turn (~800 instructions for USD), and every hold's answer and
/// every event the settler reads parses its currency.
fn iso_4217(code: &str) -> Option<(&'static str, iso_currency::Currency)> {
    use iso_currency::IntoEnumIterator as _;
    static BY_CODE: std::sync::LazyLock<Vec<(&'static str, iso_currency::Currency)>> =
        std::sync::LazyLock::new(|| {
            let mut table: Vec<_> = iso_currency::Currency::iter()
                .map(|currency| (currency.code(), currency))
                .collect();
            table.sort_unstable_by_key(|(code, _)| *code);
            table
        });
    BY_CODE
        .binary_search_by(|(known, _)| (*known).cmp(code))
        .ok()
        .map(|at| BY_CODE[at])
}

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match iso_4217(raw) {
            Some((code, _)) => Ok(Self(code)),
            None => Err(ValidationError::new(
                "currency",
                "must be an ISO 4217 currency code such as USD",
            )),
        }
    }

    /// Decimal places the currency allows (ISO 4217: USD 2, JPY 0, BHD 3); a code without a
    /// minor unit (such as XAU) allows [`Money::MAX_SCALE`].
    pub fn minor_units(&self) -> u32 {
        iso_4217(self.0)
            .and_then(|(_, currency)| currency.exponent())
            .map_or(Money::MAX_SCALE, u32::from)
    }

    pub fn as_str(&self) -> &str {
        self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A non-negative amount with at most [`Money::MAX_SCALE`] decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Money(#[serde(with = "rust_decimal::serde::str")] Decimal);

impl Money {
    pub const MAX_SCALE: u32 = 4;
    /// Far above any real unit price, and low enough that `price × Quantity::MAX` cannot overflow.
    const MAX_AMOUNT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

    /// Parses plain decimal notation only (`199.99`): no exponent, no sign other than `-`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let malformed = || ValidationError::new("price", "must be a decimal number such as 199.99");
        let digits = raw.strip_prefix('-').unwrap_or(raw);
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || !all_digits(fraction) {
            return Err(malformed());
        }
        let amount: Decimal = raw.parse().map_err(|_| malformed())?;
        Self::new(amount)
    }

    pub fn new(amount: Decimal) -> Result<Self, ValidationError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(ValidationError::new("price", "must not be negative"));
        }
        if amount.scale() > Self::MAX_SCALE {
            return Err(ValidationError::new(
                "price",
                format!("may have at most {} decimal places", Self::MAX_SCALE),
            ));
        }
        if amount > Self::MAX_AMOUNT {
            return Err(ValidationError::new("price", "is too large"));
        }
        // Kept at the scale it was written with, so "10.00" is shown as "10.00".
        Ok(Self(amount.max(Decimal::ZERO)))
    }

    /// The exact total of `quantity` units at this unit price.
    pub fn times(self, quantity: Quantity) -> Decimal {
        // Cannot overflow: MAX_AMOUNT × Quantity::MAX ≈ 1e13, far inside Decimal's 7.9e28.
        self.0 * Decimal::from(quantity.get())
    }

    pub fn amount(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: i64) -> Quantity {
        Quantity::parse(n).expect("valid quantity")
    }

    #[test]
    fn totals_are_exact() {
        let price = Money::parse("19.99").expect("valid price");
        assert_eq!(price.times(q(3)).to_string(), "59.97");
        let price = Money::parse("0.10").expect("valid price");
        assert_eq!(price.times(q(3)).to_string(), "0.30");
        let price = Money::parse("199.99").expect("valid price");
        assert_eq!(price.times(q(2)).to_string(), "399.98");
    }

    #[test]
    fn price_keeps_its_written_value() {
        assert_eq!(
            Money::parse("199.99").map(|m| m.to_string()),
            Ok("199.99".into())
        );
        assert_eq!(
            Money::parse("10.00").map(|m| m.to_string()),
            Ok("10.00".into())
        );
        assert_eq!(Money::parse("5").map(|m| m.to_string()), Ok("5".into()));
    }

    #[test]
    fn refuses_negative_overprecise_and_garbage_prices() {
        for bad in [
            "-1",
            "1.23456",
            "abc",
            "1e3",
            "",
            "10000000000",
            "+1",
            ".5",
            "1.",
            " 1",
        ] {
            assert!(Money::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn currency_is_three_upper_case_letters() {
        assert!(Currency::parse("USD").is_ok());
        for bad in ["usd", "US", "USDX", "U$D"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn currency_lookup_knows_exactly_the_codes_iso_currency_knows() {
        let letters = || (b'A'..=b'Z').chain([b'a', b'0', b'$']);
        let mut known = 0;
        for a in letters() {
            for b in letters() {
                for c in letters() {
                    let code = String::from_utf8(vec![a, b, c]).expect("ascii");
                    let theirs = iso_currency::Currency::from_code(&code);
                    let ours = Currency::parse(&code).ok();
                    assert_eq!(
                        ours.as_ref().map(Currency::as_str),
                        theirs.map(|c| c.code())
                    );
                    if let (Some(ours), Some(theirs)) = (ours, theirs) {
                        let exponent = theirs.exponent().map_or(Money::MAX_SCALE, u32::from);
                        assert_eq!(ours.minor_units(), exponent, "{code}");
                        known += 1;
                    }
                }
            }
        }
        assert!(known > 150, "only {known} codes known");
        for odd in ["", "US", "USDX", "USD ", " USD"] {
            assert!(Currency::parse(odd).is_err(), "{odd:?}");
        }
    }
}
