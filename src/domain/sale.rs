//! What a sale is: the SKU's name, price, stock, limits and window.

use chrono::{DateTime, Utc};

use super::{Currency, Money, ValidationError, WaitingRoom};

/// Whether new holds may be taken. Existing holds are unaffected by `paused` and `closed`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    Open,
    Paused,
    Closed,
}

impl SaleState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Paused => "paused",
            Self::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "open" => Ok(Self::Open),
            "paused" => Ok(Self::Paused),
            "closed" => Ok(Self::Closed),
            _ => Err(ValidationError::new(
                "state",
                "must be open, paused or closed",
            )),
        }
    }
}

/// A validated sale definition, as an admin creates or updates it.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleDefinition {
    pub name: String,
    pub price: Money,
    pub currency: Currency,
    /// Units on sale in total (`available + reserved + sold`).
    pub stock: u32,
    pub per_buyer_limit: u32,
    pub hold_ttl_seconds: u32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// The sale's waiting room; `None` keeps the one it has (a new sale takes the deployment's
    /// default, `FLASHGATE_WAITING_ROOM*`).
    pub waiting_room: Option<WaitingRoom>,
}

impl SaleDefinition {
    pub const MAX_STOCK: u32 = 100_000_000;
    pub const MAX_HOLD_TTL_SECONDS: u32 = 7 * 24 * 3600;
    /// What `PUT` and `flashgate sku upsert` use when a field is left out.
    pub const DEFAULT_CURRENCY: &'static str = "USD";
    pub const DEFAULT_PER_BUYER_LIMIT: u32 = 1;
    pub const DEFAULT_HOLD_TTL_SECONDS: u32 = 300;

    /// Checks the parts that only make sense together; the parts themselves are already typed.
    pub fn validate(self) -> Result<Self, ValidationError> {
        // Characters, as a JSON Schema `maxLength` counts them, not bytes.
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err(ValidationError::new("name", "must be 1 to 200 characters"));
        }
        // Postgres refuses NUL (a 500 before); control characters and bidirectional overrides
        // would let a name rewrite a console line or a log line.
        if self.name.chars().any(|c| {
            c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        }) {
            return Err(ValidationError::new(
                "name",
                "may not contain control characters or bidirectional overrides",
            ));
        }
        if self.price.amount().is_zero() {
            return Err(ValidationError::new("price", "must be more than 0"));
        }
        let places = self.price.amount().normalize().scale();
        if places > self.currency.minor_units() {
            return Err(ValidationError::new(
                "price",
                format!(
                    "{} allows {} decimal places; {} has {places}",
                    self.currency,
                    self.currency.minor_units(),
                    self.price
                ),
            ));
        }
        if self.stock > Self::MAX_STOCK {
            return Err(ValidationError::new(
                "stock",
                format!("must be at most {}", Self::MAX_STOCK),
            ));
        }
        if self.per_buyer_limit == 0 {
            return Err(ValidationError::new(
                "per_buyer_limit",
                "must be at least 1",
            ));
        }
        if !(1..=Self::MAX_HOLD_TTL_SECONDS).contains(&self.hold_ttl_seconds) {
            return Err(ValidationError::new(
                "hold_ttl_seconds",
                format!("must be from 1 to {}", Self::MAX_HOLD_TTL_SECONDS),
            ));
        }
        if let (Some(starts), Some(ends)) = (self.starts_at, self.ends_at)
            && starts >= ends
        {
            return Err(ValidationError::new("ends_at", "must be after starts_at"));
        }
        if let Some(room) = self.waiting_room {
            room.validate()?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_names_length_counts_characters_as_json_schema_does() {
        let mut definition = sale();
        definition.name = "靴".repeat(200);
        assert!(
            definition.clone().validate().is_ok(),
            "200 characters, 600 bytes"
        );
        definition.name = "靴".repeat(201);
        assert!(definition.validate().is_err());
    }

    #[test]
    fn names_with_control_characters_or_bidi_overrides_are_refused() {
        for name in ["a\0b", "line\nbreak", "evil\u{202E}txt", "iso\u{2066}late"] {
            let mut definition = sale();
            definition.name = name.into();
            assert!(definition.validate().is_err(), "{name:?}");
        }
        let mut definition = sale();
        definition.name = "Sneaker — édition limitée 🙂".into();
        assert!(definition.validate().is_ok());
    }

    fn sale() -> SaleDefinition {
        SaleDefinition {
            name: "Sneaker".into(),
            price: Money::parse("199.99").expect("price"),
            currency: Currency::parse("USD").expect("currency"),
            stock: 100,
            per_buyer_limit: 2,
            hold_ttl_seconds: 300,
            starts_at: None,
            ends_at: None,
            waiting_room: None,
        }
    }

    #[test]
    fn an_ordinary_sale_is_valid() {
        assert!(sale().validate().is_ok());
    }

    #[test]
    fn refuses_a_window_that_ends_before_it_starts() {
        let now = Utc::now();
        let s = SaleDefinition {
            starts_at: Some(now),
            ends_at: Some(now - chrono::Duration::seconds(1)),
            ..sale()
        };
        assert_eq!(s.validate().map_err(|e| e.field), Err("ends_at"));
    }

    #[test]
    fn refuses_zero_limit_zero_ttl_and_blank_name() {
        assert!(
            SaleDefinition {
                per_buyer_limit: 0,
                ..sale()
            }
            .validate()
            .is_err()
        );
        assert!(
            SaleDefinition {
                hold_ttl_seconds: 0,
                ..sale()
            }
            .validate()
            .is_err()
        );
        assert!(
            SaleDefinition {
                name: " ".into(),
                ..sale()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn sale_state_round_trips() {
        for s in [SaleState::Open, SaleState::Paused, SaleState::Closed] {
            assert_eq!(SaleState::parse(s.as_str()), Ok(s));
        }
    }

    #[test]
    fn prices_fit_the_currency_and_are_positive() {
        let priced = |price: &str, currency: &str| {
            SaleDefinition {
                price: Money::parse(price).expect("price"),
                currency: Currency::parse(currency).expect("currency"),
                ..sale()
            }
            .validate()
        };
        assert!(priced("199.99", "USD").is_ok());
        assert!(
            priced("199.90", "USD").is_ok(),
            "trailing zeros are not places"
        );
        assert!(priced("0.333", "USD").is_err());
        assert!(priced("1500", "JPY").is_ok());
        assert!(priced("1500.5", "JPY").is_err());
        assert!(priced("1.234", "BHD").is_ok());
        assert!(priced("0", "USD").is_err());
        assert!(priced("0.00", "USD").is_err());
        assert!(Currency::parse("ABC").is_err(), "not an ISO 4217 code");
    }
}
