//! How many units one hold asks for.

use super::ValidationError;

/// A positive unit count, at most [`Quantity::MAX`].
///
/// The ceiling keeps sums of a settler batch far inside `i64` and refuses absurd requests before
/// they cost a Redis round trip; the SKU's per-buyer limit is the real bound and is checked in Lua.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 10_000;

    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        match u32::try_from(raw) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(ValidationError::new(
                "quantity",
                format!("must be a whole number from 1 to {}", Self::MAX),
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_one_to_the_ceiling() {
        assert_eq!(Quantity::parse(1).map(Quantity::get), Ok(1));
        assert_eq!(
            Quantity::parse(i64::from(Quantity::MAX)).map(Quantity::get),
            Ok(Quantity::MAX)
        );
    }

    #[test]
    fn refuses_zero_negative_and_huge() {
        for bad in [0, -1, i64::from(Quantity::MAX) + 1, i64::MAX] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }
}
