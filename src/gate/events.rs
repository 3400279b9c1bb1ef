//! The SKU's event stream: every decision the scripts make, in order, for the settler.
//!
//! Entries are written only by the Lua scripts; their field names are the contract between
//! `lua/*.lua` and this module.

use chrono::{DateTime, Utc};
use redis::Value;

use super::contract::{Fence, optional_id, parse_fence, parse_id};
use super::holds::PackedHold;
use super::{Gate, GateError, millis};
use crate::domain::{
    BuyerId, Currency, EventId, HoldMetadata, HoldReference, Money, Quantity, ReservationId,
    ReservationStatus, Sku,
};

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
    /// An admin changed the sale's total by `delta` units (`lua/adjust_sale.lua`); Redis already
    /// checked that its stock covers a decrease.
    StockChanged {
        delta: i64,
        cause: crate::events::StockCause,
    },
    /// Where a stream recreated by resync starts (`lua/fence_stream.lua`); changes nothing.
    Fence,
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
    pub reference: Option<HoldReference>,
    pub metadata: Option<HoldMetadata>,
}

impl Event {
    pub(crate) fn parse(entry: &Entry) -> Result<Self, GateError> {
        let raw_id = &entry.id;
        let bad = |what: &str| GateError::Protocol(format!("event {raw_id}: {what}"));
        let id = EventId::parse(raw_id).map_err(|e| bad(&e.to_string()))?;
        let text = |name: &str| -> Result<String, GateError> {
            match entry.field(name) {
                Some(value) => redis::from_redis_value_ref::<String>(value).map_err(|_| bad(name)),
                None => Err(bad(&format!("no field {name}"))),
            }
        };
        let invalid = |e: crate::domain::ValidationError| bad(&e.to_string());
        // A field entries written before it existed do not have.
        let optional = |name: &str| entry.field(name).map(|_| text(name)).transpose();
        let hold = || ReservationId::parse(&text("id")?).map_err(invalid);
        let kind = match text("type")?.as_str() {
            "reserved" => {
                // Packed in `hold` (lua/hold.lua); an earlier version wrote the eight
                // fields one by one.
                let (packed, mut separate);
                let PackedHold([id, buyer, idem, q, price, cur, created, expires]) =
                    if let Some(hold) = optional(PackedHold::FIELD)? {
                        packed = hold;
                        PackedHold::parse(&packed).ok_or_else(|| bad("hold: not eight fields"))?
                    } else {
                        separate = <[String; 8]>::default();
                        for (value, name) in separate.iter_mut().zip(PackedHold::NAMES) {
                            *value = text(name)?;
                        }
                        PackedHold(separate.each_ref().map(String::as_str))
                    };
                EventKind::Reserved(NewHold {
                    id: ReservationId::parse(id).map_err(invalid)?,
                    buyer: BuyerId::parse(buyer).map_err(invalid)?,
                    idempotency_key: idem.to_owned(),
                    quantity: Quantity::parse(q.parse().map_err(|_| bad("q"))?).map_err(invalid)?,
                    unit_price: Money::parse(price).map_err(invalid)?,
                    currency: Currency::parse(cur).map_err(invalid)?,
                    created_at: millis(created)?,
                    expires_at: millis(expires)?,
                    reference: optional("ref")?
                        .map(|r| HoldReference::parse(&r))
                        .transpose()
                        .map_err(invalid)?,
                    metadata: optional("meta")?
                        .map(|m| HoldMetadata::from_stored(&m))
                        .transpose()
                        .map_err(invalid)?,
                })
            }
            "committed" => EventKind::Transition {
                hold: hold()?,
                to: ReservationStatus::Committed,
            },
            "released" => EventKind::Transition {
                hold: hold()?,
                to: ReservationStatus::Released,
            },
            "expired" => EventKind::Transition {
                hold: hold()?,
                to: ReservationStatus::Expired,
            },
            "stock" => EventKind::StockChanged {
                delta: text("q")?.parse().map_err(|_| bad("q"))?,
                // Entries written before the cause was recorded were all total updates.
                cause: match optional("cause")?.as_deref() {
                    None | Some("total") => crate::events::StockCause::Update,
                    Some("add") => crate::events::StockCause::Restock,
                    Some(other) => return Err(bad(&format!("unknown stock cause {other:?}"))),
                },
            },
            "fence" => EventKind::Fence,
            other => return Err(bad(&format!("unknown type {other:?}"))),
        };
        Ok(Self { id, kind })
    }
}

/// What the settler found after its cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamRead {
    /// The stream continues from the cursor: these events follow it (none: nothing to do).
    Events(Vec<Event>),
    /// The stream no longer holds the cursor's entry: it was lost or replaced. Nothing may be
    /// applied or trimmed until a resync fences it.
    Broken,
}

fn parse_entries(entries: impl IntoIterator<Item = Entry>) -> Result<Vec<Event>, GateError> {
    entries
        .into_iter()
        .map(|entry| Event::parse(&entry))
        .collect()
}

/// A stream's entries as `XRANGE` answers them, in order, each its id and its fields as
/// written. Read straight from the reply: the `redis` crate's `StreamRangeReply` built two
/// `HashMap`s per entry (one for the id alone), which with the parsing around them cost the
/// settler ~7,000 instructions per hold it read.
#[derive(Debug, Default)]
pub(crate) struct Entries(Vec<Entry>);

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    fields: Vec<(String, Value)>,
}

impl Entry {
    /// The field's value; of a field written twice, the last (as a map of them kept it).
    fn field(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .rev()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value)
    }
}

impl IntoIterator for Entries {
    type Item = Entry;
    type IntoIter = std::vec::IntoIter<Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl std::ops::Deref for Entries {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        &self.0
    }
}

impl redis::FromRedisValue for Entries {
    fn from_redis_value(reply: Value) -> Result<Self, redis::ParsingError> {
        let unexpected = |what: &str| redis::ParsingError::from(format!("a stream range: {what}"));
        let rows = match reply {
            Value::Array(rows) => rows,
            Value::Nil => return Ok(Self::default()),
            _ => return Err(unexpected("not an array")),
        };
        rows.into_iter()
            .map(|row| {
                let Value::Array(parts) = row else {
                    return Err(unexpected("an entry that is not an array"));
                };
                let [id, fields]: [Value; 2] = parts
                    .try_into()
                    .map_err(|_| unexpected("an entry that is not an id and its fields"))?;
                let id: String = redis::from_redis_value(id)?;
                let fields = match fields {
                    Value::Array(items) => {
                        if items.len() % 2 != 0 {
                            return Err(unexpected("an odd number of field items"));
                        }
                        let mut items = items.into_iter();
                        let mut fields = Vec::with_capacity(items.len() / 2);
                        while let (Some(name), Some(value)) = (items.next(), items.next()) {
                            fields.push((redis::from_redis_value(name)?, value));
                        }
                        fields
                    }
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .map(|(name, value)| Ok((redis::from_redis_value(name)?, value)))
                        .collect::<Result<_, redis::ParsingError>>()?,
                    Value::Nil => Vec::new(),
                    _ => return Err(unexpected("fields that are not an array")),
                };
                Ok(Entry { id, fields })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl Gate {
    /// The id of the last entry of the SKU's stream, or `None` when the stream is empty.
    pub async fn last_event_id(&self, sku: &Sku) -> Result<Option<EventId>, GateError> {
        let mut conn = self.connection().await?;
        let reply: Entries = redis::cmd("XREVRANGE")
            .arg(self.namespace().sku(sku).events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        reply.first().map(|entry| parse_id(&entry.id)).transpose()
    }

    /// Up to `count` events after the settlement cursor `after`, oldest first — provided the
    /// stream still continues from it.
    ///
    /// The settler trims only below its cursor, so an intact stream holds the cursor's own entry
    /// (except [`EventId::START`], before anything was settled). A stream without it was lost
    /// or replaced (failover to a lagging replica, a restore, eviction), and entries sorting
    /// below the cursor would be skipped without a trace: that is [`StreamRead::Broken`],
    /// repaired by a resync.
    pub async fn events_after(
        &self,
        sku: &Sku,
        after: EventId,
        count: usize,
    ) -> Result<StreamRead, GateError> {
        if after.is_start() {
            let reply = self.range_after(sku, after, count).await?;
            return parse_entries(reply).map(StreamRead::Events);
        }
        let mut conn = self.connection().await?;
        let reply: Entries = redis::cmd("XRANGE")
            .arg(self.namespace().sku(sku).events())
            .arg(after)
            .arg("+")
            .arg("COUNT")
            .arg(count + 1)
            .query_async(&mut conn)
            .await?;
        let mut entries = reply.into_iter();
        match entries.next() {
            Some(first) if parse_id(&first.id)? == after => {
                parse_entries(entries).map(StreamRead::Events)
            }
            _ => Ok(StreamRead::Broken),
        }
    }

    /// Makes a broken stream continue from the settlement cursor `cursor` again
    /// (`lua/fence_stream.lua`): a `fence` entry at the cursor, then the entries that sorted
    /// above it. Entries below the cursor are dropped; the caller records their decisions again
    /// from the holds ([`Gate::rerecord_hold`]).
    pub async fn fence_stream(&self, sku: &Sku, cursor: EventId) -> Result<Fence, GateError> {
        let mut conn = self.connection().await?;
        let reply: (String, usize) = self
            .inner
            .scripts
            .fence_stream
            .key(self.namespace().sku(sku).events())
            .arg(cursor)
            .invoke_async(&mut conn)
            .await?;
        parse_fence(reply)
    }

    /// Appends, from the hold itself, the events that bring Postgres to its state
    /// (`lua/rerecord_hold.lua`): its reservation when `with_reservation` (Postgres lacks the
    /// hold), and its transition when it left `held`. Returns the last event appended.
    pub async fn rerecord_hold(
        &self,
        sku: &Sku,
        hold: ReservationId,
        with_reservation: bool,
    ) -> Result<Option<EventId>, GateError> {
        let keys = self.namespace().sku(sku);
        let mut conn = self.connection().await?;
        let last: String = self
            .inner
            .scripts
            .rerecord_hold
            .key(keys.hold(hold))
            .key(keys.events())
            .arg(hold.to_string())
            .arg(if with_reservation { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        optional_id(&last)
    }

    /// Of these SKUs and their settlement cursors, the ones whose stream has something for the
    /// settler: an event after the cursor, or a broken stream (which the settler must report).
    /// One pipelined round trip per 1,000 SKUs on one Redis (concurrent calls on a cluster):
    /// the settler's full scan costs O(round trips), not a query per SKU.
    pub async fn skus_with_events(
        &self,
        cursors: &[(Sku, EventId)],
    ) -> Result<Vec<Sku>, GateError> {
        let calls = cursors
            .iter()
            .map(|(sku, cursor)| {
                let mut range = redis::cmd("XRANGE");
                range.arg(self.namespace().sku(sku).events());
                if cursor.is_start() {
                    range.arg("-").arg("+").arg("COUNT").arg(1);
                } else {
                    range.arg(cursor).arg("+").arg("COUNT").arg(2);
                }
                range
            })
            .collect();
        let mut conn = self.connection().await?;
        let replies: Vec<Entries> = conn.per_slot(calls).await?;
        let mut busy = Vec::new();
        for ((sku, cursor), reply) in cursors.iter().zip(replies) {
            let has_work = if cursor.is_start() {
                !reply.is_empty()
            } else {
                // Intact and idle: exactly the cursor's own entry.
                match &reply[..] {
                    [only] => parse_id(&only.id)? != *cursor,
                    _ => true,
                }
            };
            if has_work {
                busy.push(sku.clone());
            }
        }
        Ok(busy)
    }

    /// The number of events after `after`, counted up to `cap`, and the oldest one's id.
    pub async fn backlog(
        &self,
        sku: &Sku,
        after: EventId,
        cap: usize,
    ) -> Result<(usize, Option<EventId>), GateError> {
        let reply = self.range_after(sku, after, cap).await?;
        let oldest = reply.first().map(|e| parse_id(&e.id)).transpose()?;
        Ok((reply.len(), oldest))
    }

    async fn range_after(
        &self,
        sku: &Sku,
        after: EventId,
        count: usize,
    ) -> Result<Entries, GateError> {
        let mut conn = self.connection().await?;
        Ok(redis::cmd("XRANGE")
            .arg(self.namespace().sku(sku).events())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?)
    }

    /// Drops stream entries older than `settled`, which Postgres has committed. Never call it
    /// with an id the settlement cursor has not reached: those events would be lost.
    pub async fn trim_events_below(&self, sku: &Sku, settled: EventId) -> Result<(), GateError> {
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("XTRIM")
            .arg(self.namespace().sku(sku).events())
            .arg("MINID")
            .arg(settled)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            text(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(name, value)| [text(name), text(value)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn a_range_reply_reads_as_its_entries_in_order() {
        let reply = Value::Array(vec![
            entry(
                "1700000000000-0",
                &[
                    ("type", "reserved"),
                    ("id", "0190b6a4-0000-8000-8000-000000000001"),
                    ("buyer", "alice"),
                    ("idem", "k1"),
                    ("q", "2"),
                    ("price", "19.99"),
                    ("cur", "USD"),
                    ("created", "1700000000000"),
                    ("expires", "1700000600000"),
                ],
            ),
            entry(
                "1700000000001-0",
                &[
                    ("type", "committed"),
                    ("id", "0190b6a4-0000-8000-8000-000000000001"),
                ],
            ),
        ]);
        let entries: Entries = redis::from_redis_value(reply).expect("entries");
        assert_eq!(entries.len(), 2);
        let events = parse_entries(entries).expect("events");
        assert_eq!(events[0].id, EventId::parse("1700000000000-0").expect("id"));
        let EventKind::Reserved(hold) = &events[0].kind else {
            panic!("{:?}", events[0]);
        };
        assert_eq!(hold.buyer.as_str(), "alice");
        assert_eq!(hold.idempotency_key, "k1");
        assert_eq!(hold.quantity.get(), 2);
        assert_eq!(hold.reference, None);
        assert!(matches!(
            events[1].kind,
            EventKind::Transition {
                to: ReservationStatus::Committed,
                ..
            }
        ));
    }

    /// reserve.lua packs a new hold's fields into `hold` (lua/hold.lua); an earlier
    /// version's entry has them one by one. Both read as the same hold, and a packed value
    /// without exactly eight fields is refused.
    #[test]
    fn a_packed_hold_reads_as_the_same_hold_as_its_fields_one_by_one() {
        let fields = [
            ("id", "0190b6a4-0000-8000-8000-000000000001"),
            ("buyer", "alice"),
            ("idem", "k 1"),
            ("q", "2"),
            ("price", "19.99"),
            ("cur", "EUR"),
            ("created", "1700000000000"),
            ("expires", "1700000600000"),
        ];
        let packed = fields.map(|(_, value)| value).join("\n");
        let mut one_by_one = vec![("type", "reserved")];
        one_by_one.extend(fields);
        one_by_one.push(("ref", "order-7"));
        let reply = Value::Array(vec![
            entry("1-0", &one_by_one),
            entry(
                "1-0",
                &[("type", "reserved"), ("hold", &packed), ("ref", "order-7")],
            ),
        ]);
        let entries: Entries = redis::from_redis_value(reply).expect("entries");
        let events = parse_entries(entries).expect("events");
        assert_eq!(events[0], events[1]);
        let EventKind::Reserved(hold) = &events[1].kind else {
            panic!("{:?}", events[1]);
        };
        assert_eq!(hold.idempotency_key, "k 1");
        assert_eq!(hold.currency.as_str(), "EUR");
        assert_eq!(hold.expires_at.timestamp_millis(), 1_700_000_600_000);
        assert_eq!(hold.reference.as_ref().map(|r| r.as_str()), Some("order-7"));

        for broken in [
            packed.rsplit_once('\n').expect("fields").0.to_owned(),
            format!("{packed}\nextra"),
        ] {
            let reply = Value::Array(vec![entry(
                "1-0",
                &[("type", "reserved"), ("hold", &broken)],
            )]);
            let entries: Entries = redis::from_redis_value(reply).expect("entries");
            assert!(parse_entries(entries).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn a_field_written_twice_reads_as_its_last_value() {
        let reply = Value::Array(vec![entry(
            "1-0",
            &[("type", "stock"), ("q", "1"), ("q", "5")],
        )]);
        let entries: Entries = redis::from_redis_value(reply).expect("entries");
        let events = parse_entries(entries).expect("events");
        assert!(matches!(
            events[0].kind,
            EventKind::StockChanged { delta: 5, .. }
        ));
    }

    #[test]
    fn an_empty_or_malformed_range_is_told_apart() {
        let empty: Entries = redis::from_redis_value(Value::Array(vec![])).expect("empty");
        assert!(empty.is_empty());
        let nil: Entries = redis::from_redis_value(Value::Nil).expect("nil");
        assert!(nil.is_empty());
        let odd = Value::Array(vec![Value::Array(vec![
            text("1-0"),
            Value::Array(vec![text("type")]),
        ])]);
        assert!(redis::from_redis_value::<Entries>(odd).is_err());
        let no_fields = Value::Array(vec![Value::Array(vec![text("1-0")])]);
        assert!(redis::from_redis_value::<Entries>(no_fields).is_err());
    }
}
