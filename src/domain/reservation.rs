//! A reservation (a hold on units) is named by a [`ReservationId`] and is in one
//! [`ReservationStatus`] at a time.

use std::fmt;

use uuid::Uuid;

use super::ValidationError;

/// The id of a hold: a UUID (version 8) whose first 32 bits are the SKU's number.
///
/// `GET /v1/reservations/{id}` carries no SKU, yet every Redis key of a hold lives under the
/// SKU's hash tag. Routing the id to its SKU lets any stateless gate instance find the hold
/// without a global index that the reserve script would have to write outside its slot. The
/// remaining 90 bits are random, so ids cannot be guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ReservationId(Uuid);

impl ReservationId {
    /// A fresh id for a hold on the SKU numbered `sku_number`.
    pub fn generate(sku_number: u32) -> Self {
        let mut bytes: [u8; 16] = rand::random();
        bytes[..4].copy_from_slice(&sku_number.to_be_bytes());
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ValidationError::new("id", "must be a UUID"))
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The number of the SKU this hold belongs to (see the type's documentation).
    pub fn sku_number(&self) -> u32 {
        let b = self.0.as_bytes();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a hold is in its life (docs/DESIGN.md §3). `held` is the only state that is not terminal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    Committed,
    Released,
    Expired,
    Rejected,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Ok(match raw {
            "held" => Self::Held,
            "committed" => Self::Committed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            "rejected" => Self::Rejected,
            _ => {
                return Err(ValidationError::new(
                    "status",
                    format!("unknown status {raw:?}"),
                ));
            }
        })
    }
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_routes_back_to_its_sku_number() {
        for n in [1, 42, u32::MAX] {
            let id = ReservationId::generate(n);
            assert_eq!(id.sku_number(), n);
            let reparsed = ReservationId::parse(&id.to_string()).expect("round trip");
            assert_eq!(reparsed.sku_number(), n);
            assert_eq!(id.as_uuid().get_version_num(), 8);
        }
    }

    #[test]
    fn ids_are_not_repeated() {
        assert_ne!(ReservationId::generate(7), ReservationId::generate(7));
    }

    #[test]
    fn status_round_trips_through_its_name() {
        use ReservationStatus::*;
        for s in [Held, Committed, Released, Expired, Rejected] {
            assert_eq!(ReservationStatus::parse(s.as_str()), Ok(s));
        }
        assert!(ReservationStatus::parse("gone").is_err());
    }
}
