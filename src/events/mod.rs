//! Events out (docs/DESIGN.md §11): how the order, payment and search systems learn every
//! decision without reading flashgate's tables.
//!
//! An event is born in Postgres, in the transaction that records the change it describes — the
//! settler's batch for reservations and stock moved by the stream, the sale's own transaction
//! for pause, resume, launch and stock changed by hand — as a row of the outbox
//! (`store/outbox.rs`), with a per-SKU sequence without gaps. So an event exists if and only if
//! Postgres has the change. Relays then carry the rows out, each row once per sink, in per-SKU
//! order, and mark it only after the sink confirmed it: at-least-once, deduplicable by id.
//!
//! - this file: the event kinds and the message body every sink sends ([`Event`]);
//! - `relay.rs`: the loop that claims rows, hands them to a sink and marks what it confirmed,
//!   and the pruning of old rows;
//! - `amqp.rs`: the RabbitMQ sink (lapin, publisher confirms, dead letters);
//! - `webhook.rs`: the Standard Webhooks sink;
//! - `contract.rs`: the AsyncAPI document and the JSON Schemas, generated from these types.

mod amqp;
pub mod contract;
mod relay;
mod webhook;

pub use amqp::{AmqpSettings, AmqpSink};
pub use relay::{Relay, RelaySettings, RelayStatus, SinkState};
pub use webhook::{
    WebhookSettings, WebhookSink, generate_secret as generate_webhook_secret, sign as sign_webhook,
};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{EventId, ValidationError};

/// What happened. Its name is the message's `kind` and the first part of its routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    ReservationHeld,
    ReservationCommitted,
    ReservationReleased,
    ReservationExpired,
    ReservationRejected,
    StockChanged,
    SaleOpened,
    SalePaused,
    SaleResumed,
    SaleSoldOut,
    SaleBackInStock,
}

impl EventKind {
    /// Every kind, in the order the documents list them.
    pub const ALL: [EventKind; 11] = [
        Self::ReservationHeld,
        Self::ReservationCommitted,
        Self::ReservationReleased,
        Self::ReservationExpired,
        Self::ReservationRejected,
        Self::StockChanged,
        Self::SaleOpened,
        Self::SalePaused,
        Self::SaleResumed,
        Self::SaleSoldOut,
        Self::SaleBackInStock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReservationHeld => "reservation.held",
            Self::ReservationCommitted => "reservation.committed",
            Self::ReservationReleased => "reservation.released",
            Self::ReservationExpired => "reservation.expired",
            Self::ReservationRejected => "reservation.rejected",
            Self::StockChanged => "stock.changed",
            Self::SaleOpened => "sale.opened",
            Self::SalePaused => "sale.paused",
            Self::SaleResumed => "sale.resumed",
            Self::SaleSoldOut => "sale.sold_out",
            Self::SaleBackInStock => "sale.back_in_stock",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// What a consumer should know about it, for the AsyncAPI document.
    pub fn summary(self) -> &'static str {
        match self {
            Self::ReservationHeld => {
                "A buyer holds units (recorded by Postgres); the hold expires unless committed."
            }
            Self::ReservationCommitted => {
                "Payment captured and recorded: create the order. Its price is the one sold at."
            }
            Self::ReservationReleased => {
                "The buyer or the payment service released the hold; its units are on sale again."
            }
            Self::ReservationExpired => {
                "The hold passed its deadline unpaid; do not charge it. Its units are on sale again."
            }
            Self::ReservationRejected => {
                "The buyer was told 201 but Postgres refused the hold (the gate had drifted): \
                 do not fulfil it, and refund it if it was paid."
            }
            Self::StockChanged => {
                "The sale's total changed (created, updated, restocked) or a resync reloaded the \
                 gate: the new total and what is available."
            }
            Self::SaleOpened => {
                "The sale was loaded into the gate: buyers may reserve once its window opens."
            }
            Self::SalePaused => {
                "New holds are refused; existing holds may still be paid or released."
            }
            Self::SaleResumed => "New holds are taken again.",
            Self::SaleSoldOut => "Postgres `available` reached 0: show the product as sold out.",
            Self::SaleBackInStock => "Units are available again after the sale was sold out.",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kinds are recorded in the outbox (`FLASHGATE_EVENTS`): every sink and the pull API see
/// exactly these, and the per-SKU sequence counts only these, so it has no gaps.
///
/// Written as a comma-separated list: kinds (`reservation.committed`), groups
/// (`reservation.*`), `all`, `none`, and exclusions (`-reservation.held`), applied left to
/// right. The default is `all,-reservation.held`: a hold that was only taken is the loudest
/// event of a sale and the one few consumers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter {
    /// One bit per kind, by its place in [`EventKind::ALL`].
    kinds: u16,
}

impl EventFilter {
    pub const DEFAULT: &'static str = "all,-reservation.held";

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let mut filter = Self::none();
        for word in raw.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let (exclude, pattern) = match word.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, word),
            };
            let matched: Vec<EventKind> = match pattern {
                "all" | "*" => EventKind::ALL.to_vec(),
                "none" => {
                    filter = Self::none();
                    continue;
                }
                group if group.ends_with(".*") => {
                    let prefix = &group[..group.len() - 1];
                    EventKind::ALL
                        .into_iter()
                        .filter(|k| k.as_str().starts_with(prefix))
                        .collect()
                }
                name => vec![EventKind::parse(name).ok_or_else(|| {
                    ValidationError::new(
                        "FLASHGATE_EVENTS",
                        format!(
                            "unknown event kind {name:?}; the kinds are {}",
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        ),
                    )
                })?],
            };
            if matched.is_empty() {
                return Err(ValidationError::new(
                    "FLASHGATE_EVENTS",
                    format!("{pattern:?} names no event kind"),
                ));
            }
            for kind in matched {
                if exclude {
                    filter.kinds &= !bit(kind);
                } else {
                    filter.kinds |= bit(kind);
                }
            }
        }
        Ok(filter)
    }

    pub fn records(self, kind: EventKind) -> bool {
        self.kinds & bit(kind) != 0
    }

    /// Records nothing (settlement without an outbox, for comparison runs).
    pub fn none() -> Self {
        Self { kinds: 0 }
    }

    /// The kinds recorded, as `FLASHGATE_EVENTS` would list them.
    pub fn kinds(self) -> Vec<EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(|k| self.records(*k))
            .collect()
    }
}

fn bit(kind: EventKind) -> u16 {
    let place = EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default();
    1 << place
}

impl Default for EventFilter {
    fn default() -> Self {
        let all = Self {
            kinds: (1 << EventKind::ALL.len()) - 1,
        };
        Self {
            kinds: all.kinds & !bit(EventKind::ReservationHeld),
        }
    }
}

/// One event: the JSON body of the AMQP message and of the webhook call, and one entry of the
/// pull API. Fields may be added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Stable across every re-send: deduplicate on it (also the AMQP `message_id` and the
    /// `webhook-id`).
    pub id: Uuid,
    pub sku: String,
    /// Per SKU, from 1, without gaps among the kinds recorded (`FLASHGATE_EVENTS`).
    pub sequence: i64,
    /// When the decision was made: the gate's decision time for reservation and stream events,
    /// Postgres's commit time for changes made there.
    #[serde(with = "crate::domain::timestamp::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub occurred_at: DateTime<Utc>,
    /// When Postgres recorded it: the transaction of the settler's batch, or of the change
    /// made in Postgres. `recorded_at - occurred_at` is how late settlement was.
    #[serde(with = "crate::domain::timestamp::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub recorded_at: DateTime<Utc>,
    /// The id of the gate's stream entry the event came from, when it came from one.
    pub stream_event_id: Option<String>,
    #[serde(flatten)]
    pub facts: Facts,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.facts.kind()
    }

    /// The AMQP routing key: `<kind>.<sku>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.kind(), self.sku)
    }
}

/// What happened, by kind (the `kind` field of the body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind")]
pub enum Facts {
    #[serde(rename = "reservation.held")]
    ReservationHeld(ReservationFacts),
    #[serde(rename = "reservation.committed")]
    ReservationCommitted(ReservationFacts),
    #[serde(rename = "reservation.released")]
    ReservationReleased(ReservationFacts),
    #[serde(rename = "reservation.expired")]
    ReservationExpired(ReservationFacts),
    #[serde(rename = "reservation.rejected")]
    ReservationRejected(RejectionFacts),
    #[serde(rename = "stock.changed")]
    StockChanged(StockChangeFacts),
    #[serde(rename = "sale.opened")]
    SaleOpened(SaleFacts),
    #[serde(rename = "sale.paused")]
    SalePaused(SaleFacts),
    #[serde(rename = "sale.resumed")]
    SaleResumed(SaleFacts),
    #[serde(rename = "sale.sold_out")]
    SaleSoldOut(SaleFacts),
    #[serde(rename = "sale.back_in_stock")]
    SaleBackInStock(SaleFacts),
}

impl Facts {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::ReservationHeld(_) => EventKind::ReservationHeld,
            Self::ReservationCommitted(_) => EventKind::ReservationCommitted,
            Self::ReservationReleased(_) => EventKind::ReservationReleased,
            Self::ReservationExpired(_) => EventKind::ReservationExpired,
            Self::ReservationRejected(_) => EventKind::ReservationRejected,
            Self::StockChanged(_) => EventKind::StockChanged,
            Self::SaleOpened(_) => EventKind::SaleOpened,
            Self::SalePaused(_) => EventKind::SalePaused,
            Self::SaleResumed(_) => EventKind::SaleResumed,
            Self::SaleSoldOut(_) => EventKind::SaleSoldOut,
            Self::SaleBackInStock(_) => EventKind::SaleBackInStock,
        }
    }
}

/// A reservation with the price it was sold at: an order system needs nothing else from
/// flashgate's catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationFacts {
    pub reservation_id: Uuid,
    pub buyer_id: String,
    #[schemars(range(min = 1))]
    pub quantity: u32,
    /// A decimal string, with no more places than the currency has.
    #[serde(with = "rust_decimal::serde::str")]
    #[schemars(with = "String", pattern(r"^[0-9]+(\.[0-9]+)?$"))]
    pub unit_price: Decimal,
    /// ISO 4217, e.g. `USD`.
    #[schemars(pattern(r"^[A-Z]{3}$"))]
    pub currency: String,
    /// `unit_price` × `quantity`, a decimal string.
    #[serde(with = "rust_decimal::serde::str")]
    #[schemars(with = "String", pattern(r"^[0-9]+(\.[0-9]+)?$"))]
    pub amount: Decimal,
    /// The caller's reference on the hold (its cart or order id, 1 to 128 characters), `null`
    /// when it gave none.
    #[serde(default)]
    #[schemars(length(min = 1, max = 128))]
    pub reference: Option<String>,
    /// The caller's metadata on the hold (a JSON object of at most 1 KiB), `null` when it gave
    /// none.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A hold the buyer was told about that Postgres refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectionFacts {
    #[serde(flatten)]
    pub reservation: ReservationFacts,
    /// `out_of_stock` (Postgres had fewer units than the gate had admitted) or
    /// `duplicate_idempotency_key` (Postgres already has a hold under the buyer's key).
    #[schemars(extend("enum" = ["out_of_stock", "duplicate_idempotency_key"]))]
    pub reason: String,
}

/// Why the total changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StockCause {
    /// The sale was created.
    Created,
    /// `PUT` (or `flashgate sku upsert`) set a new total.
    Update,
    /// Units were added (`restock`).
    Restock,
    /// A resync reloaded the gate from Postgres (`delta` 0: a snapshot to reconcile against).
    Resync,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockChangeFacts {
    pub cause: StockCause,
    /// How much the total moved.
    pub delta: i64,
    #[serde(flatten)]
    pub stock: Stock,
}

/// The sale's state and its stock after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SaleFacts {
    /// `open`, `paused` or `closed`.
    #[schemars(extend("enum" = ["open", "paused", "closed"]))]
    pub state: String,
    #[serde(flatten)]
    pub stock: Stock,
}

/// Postgres's inventory right after the event: `available + reserved + sold = total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Stock {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// An event before the outbox gives it its sequence: what the transaction recording the change
/// knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub facts: Facts,
    pub occurred_at: DateTime<Utc>,
    pub stream_event: Option<EventId>,
}

impl Draft {
    pub fn kind(&self) -> EventKind {
        self.facts.kind()
    }

    /// The event with its id and place in the SKU's sequence, recorded at `recorded_at`.
    pub fn into_event(
        self,
        sku: &crate::domain::Sku,
        sequence: i64,
        recorded_at: DateTime<Utc>,
    ) -> Event {
        Event {
            id: Uuid::now_v7(),
            sku: sku.to_string(),
            sequence,
            occurred_at: self.occurred_at,
            recorded_at,
            stream_event_id: self.stream_event.map(|id| id.to_string()),
            facts: self.facts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_leaves_out_only_held() {
        let filter = EventFilter::parse(EventFilter::DEFAULT).expect("filter");
        assert_eq!(filter, EventFilter::default());
        for kind in EventKind::ALL {
            assert_eq!(filter.records(kind), kind != EventKind::ReservationHeld);
        }
    }

    #[test]
    fn filters_read_left_to_right() {
        let filter =
            EventFilter::parse("reservation.*,-reservation.held,sale.sold_out").expect("f");
        assert!(filter.records(EventKind::ReservationCommitted));
        assert!(!filter.records(EventKind::ReservationHeld));
        assert!(filter.records(EventKind::SaleSoldOut));
        assert!(!filter.records(EventKind::SalePaused));
        assert!(
            !EventFilter::parse("none")
                .expect("none")
                .records(EventKind::StockChanged)
        );
        assert!(EventFilter::parse("reservation.comitted").is_err());
        assert!(EventFilter::parse("order.*").is_err());
    }

    #[test]
    fn the_body_is_flat_with_its_kind() {
        let event = Draft {
            facts: Facts::ReservationCommitted(ReservationFacts {
                reservation_id: Uuid::nil(),
                buyer_id: "alice".into(),
                quantity: 2,
                unit_price: Decimal::new(19999, 2),
                currency: "USD".into(),
                amount: Decimal::new(39998, 2),
                reference: Some("order-7".into()),
                metadata: serde_json::json!({"cart": 42}).as_object().cloned(),
            }),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            stream_event: Some(EventId::parse("1800000000000-0").expect("id")),
        }
        .into_event(
            &crate::domain::Sku::parse("sneaker").expect("sku"),
            7,
            DateTime::from_timestamp(1_800_000_001, 0).expect("time"),
        );
        let body = serde_json::to_value(&event).expect("json");
        assert_eq!(body["kind"], "reservation.committed");
        assert_eq!(body["sequence"], 7);
        assert_eq!(body["unit_price"], "199.99");
        assert_eq!(body["amount"], "399.98");
        assert_eq!(body["occurred_at"], "2027-01-15T08:00:00.000Z");
        assert_eq!(body["recorded_at"], "2027-01-15T08:00:01.000Z");
        assert_eq!(body["stream_event_id"], "1800000000000-0");
        assert_eq!(body["reference"], "order-7");
        assert_eq!(body["metadata"]["cart"], 42);
        assert_eq!(event.routing_key(), "reservation.committed.sneaker");
        let back: Event = serde_json::from_value(body).expect("parse");
        assert_eq!(back, event);
    }
}
