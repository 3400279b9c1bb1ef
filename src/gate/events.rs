//! The SKU's event stream: every decision the scripts make, in order, for the settler.
//!
//! Entries are written only by the Lua scripts; their field names are the contract between
//! `lua/*.lua` and this module.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::Value;

use super::{GateError, millis};
use crate::domain::{BuyerId, Currency, Money, Quantity, ReservationId, ReservationStatus};

/// A stream entry id, `<ms>-<seq>`.
pub type EventId = String;

/// One decision, as the settler applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A new hold took stock in Redis.
    Reserved(NewHold),
    /// A hold moved from `held` to a terminal state (`committed`, `released`, `expired`).
    Transition {
        hold: ReservationId,
        to: ReservationStatus,
    },
}

/// Everything Postgres needs to record a new hold.
#[derive(Debug, Clone, PartialEq)]
pub struct NewHold {
    pub id: ReservationId,
    pub buyer: BuyerId,
    pub idempotency_key: String,
    pub quantity: Quantity,
    pub unit_price: Money,
    pub currency: Currency,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Event {
    pub(crate) fn parse(id: String, fields: &HashMap<String, Value>) -> Result<Self, GateError> {
        let bad = |what: &str| GateError::Protocol(format!("event {id}: {what}"));
        let text = |name: &str| -> Result<String, GateError> {
            match fields.get(name) {
                Some(value) => redis::from_redis_value_ref::<String>(value).map_err(|_| bad(name)),
                None => Err(bad(&format!("no field {name}"))),
            }
        };
        let invalid = |e: crate::domain::ValidationError| bad(&e.to_string());
        let hold = ReservationId::parse(&text("id")?).map_err(invalid)?;
        let kind = match text("type")?.as_str() {
            "reserved" => EventKind::Reserved(NewHold {
                id: hold,
                buyer: BuyerId::parse(&text("buyer")?).map_err(invalid)?,
                idempotency_key: text("idem")?,
                quantity: Quantity::parse(text("q")?.parse().map_err(|_| bad("q"))?)
                    .map_err(invalid)?,
                unit_price: Money::parse(&text("price")?).map_err(invalid)?,
                currency: Currency::parse(&text("cur")?).map_err(invalid)?,
                created_at: millis(&text("created")?)?,
                expires_at: millis(&text("expires")?)?,
            }),
            "committed" => EventKind::Transition {
                hold,
                to: ReservationStatus::Committed,
            },
            "released" => EventKind::Transition {
                hold,
                to: ReservationStatus::Released,
            },
            "expired" => EventKind::Transition {
                hold,
                to: ReservationStatus::Expired,
            },
            other => return Err(bad(&format!("unknown type {other:?}"))),
        };
        Ok(Self { id, kind })
    }
}

/// The millisecond part of a stream id: when Redis decided the event.
pub fn event_time(id: &str) -> Option<DateTime<Utc>> {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis)
}
