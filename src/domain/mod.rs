//! Validated domain values.
//!
//! Every value that crosses the HTTP or CLI boundary is parsed into one of these newtypes first,
//! so invalid input cannot reach Redis or Postgres. Each type has a `parse` constructor and its
//! unit tests beside it.

mod buyer;
mod client;
mod event_id;
mod idempotency_key;
mod money;
mod quantity;
mod reference;
mod reservation;
mod sale;
mod sku;
pub mod timestamp;
mod waiting_room;

pub use buyer::BuyerId;
pub use client::ClientAddr;
pub use event_id::EventId;
pub use idempotency_key::IdempotencyKey;
pub use money::{Currency, Money};
pub use quantity::Quantity;
pub use reference::{HoldMetadata, HoldReference};
pub use reservation::{ReservationId, ReservationSeal, ReservationStatus};
pub use sale::{SaleDefinition, SaleState};
pub use sku::Sku;
pub use waiting_room::{InvalidTicket, Ticket, TicketSeal, WaitingRoom};

/// Why a value was refused; the message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The field or header that was refused.
    pub field: &'static str,
    /// What is wrong with it, for a human.
    pub reason: String,
}

impl ValidationError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}
