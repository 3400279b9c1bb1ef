//! The waiting room of a sale: its settings, and the signed ticket that is a buyer's place in
//! line (docs/DESIGN.md §12).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{BuyerId, Sku, ValidationError};

/// Whether a sale makes its buyers take a place in line, and how fast the line moves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoom {
    /// With the room off, reserves need no ticket and the line is not used.
    pub enabled: bool,
    /// Places admitted per second, while the stock can serve them.
    #[schema(minimum = 1, maximum = 100_000)]
    pub admit_per_second: u32,
    /// How long an admitted place may reserve before its turn lapses.
    #[schema(minimum = 1, maximum = 86_400)]
    pub admission_window_seconds: u32,
}

impl Default for WaitingRoom {
    fn default() -> Self {
        Self {
            enabled: false,
            admit_per_second: Self::DEFAULT_ADMIT_PER_SECOND,
            admission_window_seconds: Self::DEFAULT_ADMISSION_WINDOW_SECONDS,
        }
    }
}

impl WaitingRoom {
    pub const DEFAULT_ADMIT_PER_SECOND: u32 = 100;
    pub const DEFAULT_ADMISSION_WINDOW_SECONDS: u32 = 60;
    pub const MAX_ADMIT_PER_SECOND: u32 = 100_000;
    pub const MAX_ADMISSION_WINDOW_SECONDS: u32 = 86_400;

    pub fn validate(self) -> Result<Self, ValidationError> {
        if !(1..=Self::MAX_ADMIT_PER_SECOND).contains(&self.admit_per_second) {
            return Err(ValidationError::new(
                "waiting_room.admit_per_second",
                format!("must be from 1 to {}", Self::MAX_ADMIT_PER_SECOND),
            ));
        }
        if !(1..=Self::MAX_ADMISSION_WINDOW_SECONDS).contains(&self.admission_window_seconds) {
            return Err(ValidationError::new(
                "waiting_room.admission_window_seconds",
                format!("must be from 1 to {}", Self::MAX_ADMISSION_WINDOW_SECONDS),
            ));
        }
        Ok(self)
    }
}

/// A place in one sale's line: its position (1 = first) and when it was taken. Who holds it and
/// for which SKU is not written in the ticket but sealed into it, so a ticket shown for another
/// buyer or another SKU does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub position: u64,
    pub issued_ms: u64,
}

/// Why a ticket was refused (403 `ticket_invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ticket is malformed, forged, or not this buyer's place on this SKU")]
pub struct InvalidTicket;

/// Signs tickets and checks them without Redis. The key is derived from the buyer-token secret
/// (an HMAC of a fixed label), which every gate of a deployment shares.
#[derive(Clone)]
pub struct TicketSeal {
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for TicketSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketSeal(..)")
    }
}

/// 16 bytes of HMAC-SHA256: forging one is a 2^128 guess.
const MAC_BYTES: usize = 16;

impl TicketSeal {
    pub fn derive(secret: &[u8]) -> Self {
        let mut derivation = keyed(secret);
        derivation.update(b"flashgate waiting room ticket v1");
        Self {
            keyed: keyed(&derivation.finalize().into_bytes()),
        }
    }

    fn mac(&self, sku: &Sku, buyer: &BuyerId, ticket: Ticket) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        // Lengths first, so no two (sku, buyer) pairs share a byte string.
        for part in [sku.as_str(), buyer.as_str()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&ticket.position.to_be_bytes());
        mac.update(&ticket.issued_ms.to_be_bytes());
        mac
    }

    /// `<position>.<issued_ms>.<mac>`: URL-safe, so it travels in a path and a header as is.
    pub fn sign(&self, sku: &Sku, buyer: &BuyerId, ticket: Ticket) -> String {
        let tag = self.mac(sku, buyer, ticket).finalize().into_bytes();
        format!(
            "{}.{}.{}",
            ticket.position,
            ticket.issued_ms,
            URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES])
        )
    }

    /// The ticket `raw` names, if this deployment signed it for `buyer` on `sku` (compared in
    /// constant time).
    pub fn verify(&self, sku: &Sku, buyer: &BuyerId, raw: &str) -> Result<Ticket, InvalidTicket> {
        let ticket = Self::read(raw)?;
        let tag = raw
            .rsplit('.')
            .next()
            .and_then(|tag| URL_SAFE_NO_PAD.decode(tag).ok())
            .filter(|tag| tag.len() == MAC_BYTES)
            .ok_or(InvalidTicket)?;
        self.mac(sku, buyer, ticket)
            .verify_truncated_left(&tag)
            .map_err(|_| InvalidTicket)?;
        Ok(ticket)
    }

    /// The position and time a ticket claims, unverified: for a poll, whose answer reveals only
    /// the line's state at that position. Anything but `<digits>.<digits>.<mac>` is refused.
    pub fn read(raw: &str) -> Result<Ticket, InvalidTicket> {
        let mut parts = raw.split('.');
        let number = |part: Option<&str>| {
            part.filter(|p| !p.is_empty() && p.len() <= 19 && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or(InvalidTicket)
        };
        let position = number(parts.next())?;
        let issued_ms = number(parts.next())?;
        let tag = parts.next().ok_or(InvalidTicket)?;
        if parts.next().is_some() || position == 0 || tag.len() > 32 {
            return Err(InvalidTicket);
        }
        Ok(Ticket {
            position,
            issued_ms,
        })
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> TicketSeal {
        TicketSeal::derive(b"a test secret of at least thirty-two bytes")
    }

    fn parts() -> (Sku, BuyerId, Ticket) {
        (
            Sku::parse("SNEAKER-1").expect("sku"),
            BuyerId::parse("alice").expect("buyer"),
            Ticket {
                position: 42,
                issued_ms: 1_790_000_000_000,
            },
        )
    }

    #[test]
    fn a_signed_ticket_verifies_for_its_buyer_and_sku_only() {
        let (sku, buyer, ticket) = parts();
        let raw = seal().sign(&sku, &buyer, ticket);
        assert_eq!(seal().verify(&sku, &buyer, &raw), Ok(ticket));
        let other_buyer = BuyerId::parse("mallory").expect("buyer");
        assert_eq!(seal().verify(&sku, &other_buyer, &raw), Err(InvalidTicket));
        let other_sku = Sku::parse("SNEAKER-2").expect("sku");
        assert_eq!(seal().verify(&other_sku, &buyer, &raw), Err(InvalidTicket));
        let other_deployment = TicketSeal::derive(b"another secret of at least thirty-two bytes");
        assert_eq!(
            other_deployment.verify(&sku, &buyer, &raw),
            Err(InvalidTicket)
        );
    }

    #[test]
    fn a_changed_position_or_a_cut_tag_does_not_verify() {
        let (sku, buyer, ticket) = parts();
        let raw = seal().sign(&sku, &buyer, ticket);
        let moved = raw.replacen("42.", "1.", 1);
        assert_eq!(seal().verify(&sku, &buyer, &moved), Err(InvalidTicket));
        let cut = &raw[..raw.len() - 4];
        assert_eq!(seal().verify(&sku, &buyer, cut), Err(InvalidTicket));
        for junk in ["", "1", "1.2", "a.b.c", "0.1.AAAA", "1.2.3.4", "-1.2.AAAA"] {
            assert_eq!(
                seal().verify(&sku, &buyer, junk),
                Err(InvalidTicket),
                "{junk}"
            );
        }
    }

    #[test]
    fn settings_out_of_range_name_their_field() {
        let room = WaitingRoom {
            enabled: true,
            ..WaitingRoom::default()
        };
        assert!(room.validate().is_ok());
        let zero_rate = WaitingRoom {
            admit_per_second: 0,
            ..room
        };
        assert_eq!(
            zero_rate.validate().map_err(|e| e.field),
            Err("waiting_room.admit_per_second")
        );
        let huge_rate = WaitingRoom {
            admit_per_second: 1_000_000,
            ..room
        };
        assert!(huge_rate.validate().is_err());
        let no_window = WaitingRoom {
            admission_window_seconds: 0,
            ..room
        };
        assert_eq!(
            no_window.validate().map_err(|e| e.field),
            Err("waiting_room.admission_window_seconds")
        );
    }
}
