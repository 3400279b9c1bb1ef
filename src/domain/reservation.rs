//! A reservation (a hold on units) is named by a [`ReservationId`] and is in one
//! [`ReservationStatus`] at a time.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::ValidationError;

/// The id of a hold: a UUID (version 8) whose first 32 bits are the SKU's number.
///
/// `GET /v1/reservations/{id}` carries no SKU, yet every Redis key of a hold lives under the
/// SKU's hash tag. Routing the id to its SKU lets any stateless gate instance find the hold
/// without a global index that the reserve script would have to write outside its slot. The
/// rest is random (90 bits), or — for ids a gate minted with a [`ReservationSeal`] — 58 random
/// bits and a 32-bit seal, so ids cannot be guessed either way.
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

    /// Room for [`ReservationId::encode`].
    pub fn text_buffer() -> [u8; uuid::fmt::Hyphenated::LENGTH] {
        [0; uuid::fmt::Hyphenated::LENGTH]
    }

    /// The id as its `Display` writes it, into `buffer`: without a `String` or the formatting
    /// machinery, for the keys and arguments of every reserve.
    pub fn encode(self, buffer: &mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &str {
        self.0.hyphenated().encode_lower(buffer)
    }
}

/// Signs the ids a gate mints, so that an id found in neither Redis nor Postgres can be told
/// apart: one this deployment handed to a buyer is a hold that was lost (Redis lost it before it
/// settled), anything else is an id nobody was ever given.
///
/// The last 32 bits of a sealed id are HMAC-SHA256 over its first 12 bytes (the SKU's number,
/// the random bits and the UUID version), keyed with a key derived from the buyer-token secret,
/// which every gate of a deployment shares. 58 random bits keep ids of one SKU apart (a
/// collision among a million holds of one SKU: about 2 in a million).
#[derive(Clone)]
pub struct ReservationSeal {
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for ReservationSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReservationSeal(..)")
    }
}

const SEAL_BYTES: usize = 4;
const SEALED_BYTES: usize = 16 - SEAL_BYTES;

impl ReservationSeal {
    /// The seal of a deployment whose buyer tokens are signed with `secret`. The key is derived
    /// (HMAC of a fixed label), so ids reveal nothing usable about the token secret.
    pub fn derive(secret: &[u8]) -> Self {
        let mut derivation = keyed(secret);
        derivation.update(b"flashgate reservation id seal v1");
        Self {
            keyed: keyed(&derivation.finalize().into_bytes()),
        }
    }

    /// A fresh sealed id for a hold on the SKU numbered `sku_number`.
    pub fn mint(&self, sku_number: u32) -> ReservationId {
        let mut bytes: [u8; 16] = rand::random();
        bytes[..4].copy_from_slice(&sku_number.to_be_bytes());
        // The builder sets the version and variant bits; seal what it leaves.
        let mut bytes = *uuid::Builder::from_custom_bytes(bytes).as_uuid().as_bytes();
        let seal = self.seal(&bytes[..SEALED_BYTES]);
        bytes[SEALED_BYTES..].copy_from_slice(&seal[..SEAL_BYTES]);
        ReservationId(Uuid::from_bytes(bytes))
    }

    /// Whether `id` was minted with this seal (compared in constant time).
    pub fn minted(&self, id: ReservationId) -> bool {
        let bytes = id.0.as_bytes();
        let mut mac = self.keyed.clone();
        mac.update(&bytes[..SEALED_BYTES]);
        mac.verify_truncated_left(&bytes[SEALED_BYTES..]).is_ok()
    }

    fn seal(&self, sealed: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(sealed);
        mac.finalize().into_bytes().into()
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut Self::text_buffer()))
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
    fn an_id_is_written_as_its_uuid_is() {
        let id = ReservationId::generate(42);
        assert_eq!(id.to_string(), id.as_uuid().hyphenated().to_string());
        assert_eq!(id.encode(&mut ReservationId::text_buffer()), id.to_string());
    }

    #[test]
    fn ids_are_not_repeated() {
        assert_ne!(ReservationId::generate(7), ReservationId::generate(7));
    }

    #[test]
    fn a_sealed_id_is_known_by_its_seal_alone() {
        let seal = ReservationSeal::derive(b"the buyer-token secret of this deployment");
        for n in [1, 42, u32::MAX] {
            let id = seal.mint(n);
            assert_eq!(id.sku_number(), n);
            assert_eq!(id.as_uuid().get_version_num(), 8);
            assert!(seal.minted(ReservationId::parse(&id.to_string()).expect("round trip")));
        }
        assert_ne!(seal.mint(7), seal.mint(7));
    }

    #[test]
    fn ids_not_minted_with_the_seal_are_not_taken_for_its_own() {
        let seal = ReservationSeal::derive(b"the buyer-token secret of this deployment");
        let other = ReservationSeal::derive(b"another deployment's buyer-token secret");
        let unsealed = (0..1000)
            .map(|_| ReservationId::generate(7))
            .filter(|id| seal.minted(*id))
            .count();
        assert_eq!(unsealed, 0);
        assert!(!seal.minted(other.mint(7)));
        // Any changed bit — the SKU's number, the random part or the seal — breaks it.
        let id = seal.mint(7);
        for bit in 0..128 {
            let flipped = id.as_uuid().as_u128() ^ (1u128 << bit);
            assert!(
                !seal.minted(ReservationId::from_uuid(Uuid::from_u128(flipped))),
                "bit {bit}"
            );
        }
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
