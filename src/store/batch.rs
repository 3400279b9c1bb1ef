//! One settlement batch inside one Postgres transaction (docs/DESIGN.md §2, step 3): every SQL
//! statement the settler runs on the inventory and the reservations.
//!
//! Events are applied in stream order, in runs of the same kind: a run of new holds with one
//! multi-row insert and one summed conditional decrement; a run of transitions with one locking
//! read of its holds by primary key, one status update per target state and one summed stock
//! move; a run of admin stock changes with one summed conditional update of the total. Every
//! statement that moves stock has its affected-rows count checked, and only rows really
//! inserted or really moved out of `held` move stock.
//!
//! The inventory row is locked first and `available` tracked in memory, so the holds that do not
//! fit are found event by event, in order, without leaving the set-based statements: a later,
//! smaller hold may still fit after a larger one was refused.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{IdempotencyKey, ReservationId, ReservationStatus, Sku};
use crate::events::{
    Draft, EventFilter, Facts, RejectionFacts, ReservationFacts, SaleFacts, StockChangeFacts,
};
use crate::gate::{Event, EventKind, NewHold, RejectedHold};

/// Why Postgres refused a hold that Redis admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionReason {
    /// Postgres `available` had fewer units than the hold (Redis lost data or drifted).
    OutOfStock,
    /// Postgres already has another hold under the same (sku, buyer, idempotency key): Redis lost
    /// the idempotency record and admitted a retry a second time.
    DuplicateIdempotencyKey,
}

impl RejectionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "out_of_stock",
            Self::DuplicateIdempotencyKey => "duplicate_idempotency_key",
        }
    }
}

/// What a batch changed.
#[derive(Debug, Default)]
pub struct Applied {
    pub holds_inserted: u64,
    pub transitions: u64,
    /// The holds this batch moved out of `held`, and where to.
    pub left_held: Vec<(ReservationId, ReservationStatus)>,
    pub rejected: Vec<(RejectedHold, RejectionReason)>,
    /// Units of admin stock decreases Postgres could not take (Redis had drifted above
    /// Postgres): the change was applied as far as `available` allowed.
    pub stock_shortfall: i64,
    /// The events of the batch (of the kinds the outbox records), in stream order, and the
    /// SKU's last event sequence as the batch read it under the inventory row lock: written
    /// with the cursor's advance (`SettlementTx::commit`).
    pub events: Vec<Draft>,
    pub last_sequence: i64,
}

/// The SKU's inventory as the batch moves it, event by event, under the row lock, and the
/// events the batch records for the outbox (docs/DESIGN.md §11) in stream order.
struct Ledger {
    stock: crate::events::Stock,
    state: String,
    filter: EventFilter,
    drafts: Vec<Draft>,
}

impl Ledger {
    /// Records what `event` did, if the outbox keeps that kind.
    fn record(
        &mut self,
        event: &Event,
        facts: impl FnOnce() -> Facts,
        kind: crate::events::EventKind,
    ) {
        if self.filter.records(kind) {
            self.drafts.push(Draft {
                facts: facts(),
                occurred_at: event.id.time().unwrap_or_else(Utc::now),
                stream_event: Some(event.id),
            });
        }
    }

    /// `available` moved by `delta` because of `event`: the sale may have sold out or come back.
    fn move_available(&mut self, event: &Event, delta: i64) {
        let before = self.stock.available;
        self.stock.available += delta;
        let after = self.stock.available;
        let kind = if before > 0 && after == 0 {
            crate::events::EventKind::SaleSoldOut
        } else if before == 0 && after > 0 {
            crate::events::EventKind::SaleBackInStock
        } else {
            return;
        };
        let sale = SaleFacts {
            state: self.state.clone(),
            stock: self.stock,
        };
        self.record(
            event,
            || match kind {
                crate::events::EventKind::SaleSoldOut => Facts::SaleSoldOut(sale),
                _ => Facts::SaleBackInStock(sale),
            },
            kind,
        );
    }
}

pub(super) async fn apply(
    tx: &mut PgConnection,
    sku: &Sku,
    events: &[Event],
    stop_after_inserts: &(dyn Fn() -> bool + Sync),
    filter: EventFilter,
) -> Result<Applied, StoreError> {
    let (total, available, reserved, sold, last_sequence, state): (
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
    ) = sqlx::query_as(
        "SELECT i.total, i.available, i.reserved, i.sold, i.last_event_seq, s.state \
         FROM inventory i JOIN skus s ON s.sku = i.sku WHERE i.sku = $1 FOR UPDATE OF i",
    )
    .bind(sku.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let mut ledger = Ledger {
        stock: crate::events::Stock {
            total,
            available,
            reserved,
            sold,
        },
        state,
        filter,
        drafts: Vec::new(),
    };
    let mut applied = Applied::default();
    for run in events.chunk_by(|a, b| same_kind(&a.kind, &b.kind)) {
        match run[0].kind {
            EventKind::Reserved(_) => {
                apply_new_holds(tx, sku, run, &mut ledger, &mut applied, stop_after_inserts).await?
            }
            EventKind::Transition { .. } => {
                apply_transitions(tx, sku, run, &mut ledger, &mut applied).await?
            }
            EventKind::StockChanged { .. } => {
                apply_stock_changes(tx, sku, run, &mut ledger, &mut applied).await?
            }
            EventKind::Fence => {}
        }
    }
    record_rejections(tx, sku, &applied.rejected).await?;
    applied.events = ledger.drafts;
    applied.last_sequence = last_sequence;
    Ok(applied)
}

fn same_kind(a: &EventKind, b: &EventKind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// A run of admin stock changes: the total and `available` move by their sum. Redis checked
/// each against its stock, which at this point in the stream equals Postgres `available` — unless
/// the stores had drifted (Redis above Postgres). A decrease Postgres cannot take in full is
/// taken as far as `available` allows and the rest is counted as a shortfall: refusing it would
/// fail every batch of the SKU after it, forever, and Postgres never goes below zero either way.
/// The audit then shows Redis stock below Postgres `available` until a resync.
async fn apply_stock_changes(
    tx: &mut PgConnection,
    sku: &Sku,
    run: &[Event],
    ledger: &mut Ledger,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    let mut moved_total: i64 = 0;
    for event in run {
        let EventKind::StockChanged { delta, cause } = event.kind else {
            continue;
        };
        let taken = delta.max(-ledger.stock.available);
        if taken != delta {
            applied.stock_shortfall += taken - delta;
            tracing::warn!(sku = %sku, event = %event.id, delta, taken,
                "postgres cannot take this stock decrease in full; redis has drifted above it");
        }
        moved_total += taken;
        ledger.stock.total += taken;
        ledger.move_available(event, taken);
        let facts = StockChangeFacts {
            cause,
            delta: taken,
            stock: ledger.stock,
        };
        ledger.record(
            event,
            || Facts::StockChanged(facts),
            crate::events::EventKind::StockChanged,
        );
    }
    if moved_total == 0 {
        return Ok(());
    }
    let moved = sqlx::query(
        "UPDATE inventory SET total = total + $2, available = available + $2 \
         WHERE sku = $1 AND available + $2 >= 0",
    )
    .bind(sku.as_str())
    .bind(moved_total)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    expect_rows("move stock for admin changes", moved, 1)
}

fn reservation_facts(hold: &NewHold) -> ReservationFacts {
    ReservationFacts {
        reservation_id: hold.id.as_uuid(),
        buyer_id: hold.buyer.to_string(),
        quantity: hold.quantity.get(),
        unit_price: hold.unit_price.amount(),
        currency: hold.currency.to_string(),
        amount: hold.unit_price.times(hold.quantity),
        reference: hold.reference.as_ref().map(|r| r.as_str().to_owned()),
        metadata: hold.metadata.as_ref().map(|m| m.as_object().clone()),
    }
}

async fn apply_new_holds(
    tx: &mut PgConnection,
    sku: &Sku,
    run: &[Event],
    ledger: &mut Ledger,
    applied: &mut Applied,
    stop_after_inserts: &(dyn Fn() -> bool + Sync),
) -> Result<(), StoreError> {
    use crate::events::EventKind::{ReservationHeld, ReservationRejected};
    let holds: Vec<(&Event, &NewHold)> = run
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reserved(hold) => Some((e, hold)),
            _ => None,
        })
        .collect();
    let inserted: HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO reservations (id, sku, buyer_id, idempotency_key, quantity, unit_price, total, \
           currency, status, created_at, expires_at, created_event, last_event, reference, metadata) \
         SELECT t.id, $1, t.buyer, t.idem, t.q, t.price, t.total, t.cur, 'held', t.created, \
           t.expires, t.ev, t.ev, t.ref, t.meta::jsonb \
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int4[], $6::numeric[], $7::numeric[], \
           $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::text[]) \
           AS t(id, buyer, idem, q, price, total, cur, created, expires, ev, ref, meta) \
         ON CONFLICT DO NOTHING \
         RETURNING id",
    )
    .bind(sku.as_str())
    .bind(holds.iter().map(|(_, h)| h.id.as_uuid()).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| h.buyer.as_str()).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| h.idempotency_key.as_str()).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| quantity(h)).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| h.unit_price.amount()).collect::<Vec<Decimal>>())
    .bind(holds.iter().map(|(_, h)| h.unit_price.times(h.quantity)).collect::<Vec<Decimal>>())
    .bind(holds.iter().map(|(_, h)| h.currency.as_str()).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| h.created_at).collect::<Vec<DateTime<Utc>>>())
    .bind(holds.iter().map(|(_, h)| h.expires_at).collect::<Vec<DateTime<Utc>>>())
    .bind(holds.iter().map(|(ev, _)| ev.id.to_string()).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| h.reference.as_ref().map(|r| r.as_str())).collect::<Vec<_>>())
    .bind(holds.iter().map(|(_, h)| h.metadata.as_ref().map(|m| m.as_str())).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if stop_after_inserts() {
        return Err(StoreError::Interrupted);
    }

    // A hold not inserted is either already here (this event was applied before) or collides
    // with another hold's idempotency key; only the latter is refused.
    let not_inserted: Vec<Uuid> = holds
        .iter()
        .map(|(_, h)| h.id.as_uuid())
        .filter(|id| !inserted.contains(id))
        .collect();
    let already_here: HashSet<Uuid> = if not_inserted.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar("SELECT id FROM reservations WHERE id = ANY($1)")
            .bind(&not_inserted)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };

    let mut taken: i64 = 0;
    let mut out_of_stock: Vec<Uuid> = Vec::new();
    // A hold recorded twice in one batch (two resyncs re-recording the same lost hold) was
    // inserted once: only its first event takes its units.
    let mut consumed: HashSet<Uuid> = HashSet::with_capacity(holds.len());
    for (event, hold) in &holds {
        let id = hold.id.as_uuid();
        if !consumed.insert(id) {
            continue;
        }
        let reason = if inserted.contains(&id) {
            let units = i64::from(hold.quantity.get());
            if units <= ledger.stock.available {
                taken += units;
                applied.holds_inserted += 1;
                ledger.stock.reserved += units;
                ledger.record(
                    event,
                    || Facts::ReservationHeld(reservation_facts(hold)),
                    ReservationHeld,
                );
                ledger.move_available(event, -units);
                continue;
            }
            out_of_stock.push(id);
            RejectionReason::OutOfStock
        } else if !already_here.contains(&id) {
            RejectionReason::DuplicateIdempotencyKey
        } else {
            continue;
        };
        applied.rejected.push((rejected(hold)?, reason));
        ledger.record(
            event,
            || {
                Facts::ReservationRejected(RejectionFacts {
                    reservation: reservation_facts(hold),
                    reason: reason.as_str().to_owned(),
                })
            },
            ReservationRejected,
        );
    }
    if !out_of_stock.is_empty() {
        let marked = sqlx::query(
            "UPDATE reservations SET status = 'rejected', updated_at = now() \
             WHERE id = ANY($1) AND status = 'held'",
        )
        .bind(&out_of_stock)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        expect_rows("mark rejected holds", marked, out_of_stock.len() as u64)?;
    }
    if taken > 0 {
        let moved = sqlx::query(
            "UPDATE inventory SET available = available - $2, reserved = reserved + $2 \
             WHERE sku = $1 AND available >= $2",
        )
        .bind(sku.as_str())
        .bind(taken)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        expect_rows("take stock for new holds", moved, 1)?;
    }
    Ok(())
}

/// A held hold as the batch locked it.
struct LockedHold {
    quantity: i32,
    facts: ReservationFacts,
}

async fn apply_transitions(
    tx: &mut PgConnection,
    sku: &Sku,
    run: &[Event],
    ledger: &mut Ledger,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    use ReservationStatus::{Committed, Expired, Held, Released};
    let named: Vec<Uuid> = run
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Transition { hold, .. } => Some(hold.as_uuid()),
            _ => None,
        })
        .collect();
    // Each row is found by its primary key and nothing else. Filtering on (sku, status) in the
    // same statement lets the planner pick the `(sku, status)` index, and on a sale's fresh rows
    // (a new SKU the statistics have not seen) it estimates one held row where there are tens
    // of thousands: every batch then scanned all of the SKU's held holds. `id = ANY` is
    // estimated exactly, with or without statistics.
    type Row = (
        Uuid,
        String,
        String,
        i32,
        String,
        Decimal,
        String,
        Decimal,
        Option<String>,
        Option<String>,
    );
    let mut still_held: HashMap<Uuid, LockedHold> = sqlx::query_as::<_, Row>(
        "SELECT id, sku, status, quantity, buyer_id, unit_price, currency, total, reference, \
           metadata::text FROM reservations WHERE id = ANY($1) FOR UPDATE",
    )
    .bind(&named)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    // Only holds still `held` move: a hold Postgres rejected has no units to move, and a hold
    // this event already moved is not moved again.
    .filter(|(_, row_sku, status, ..)| row_sku == sku.as_str() && status == Held.as_str())
    .map(
        |(id, _, _, quantity, buyer, unit_price, currency, total, reference, metadata)| {
            let facts = ReservationFacts {
                reservation_id: id,
                buyer_id: buyer,
                quantity: u32::try_from(quantity).unwrap_or_default(),
                unit_price,
                currency: currency.trim_end().to_owned(),
                amount: total,
                reference,
                metadata: stored_metadata(metadata.as_deref())?,
            };
            Ok((id, LockedHold { quantity, facts }))
        },
    )
    .collect::<Result<_, StoreError>>()?;
    // In stream order: which holds move where, and what each move does to the stock.
    let mut moves: Vec<(Uuid, ReservationStatus, String, i64)> = Vec::new();
    for event in run {
        let EventKind::Transition { hold, to } = &event.kind else {
            continue;
        };
        let Some(locked) = still_held.remove(&hold.as_uuid()) else {
            continue;
        };
        let units = i64::from(locked.quantity);
        ledger.stock.reserved -= units;
        let (facts, kind) = match to {
            Committed => {
                ledger.stock.sold += units;
                (
                    Facts::ReservationCommitted(locked.facts),
                    crate::events::EventKind::ReservationCommitted,
                )
            }
            Released => (
                Facts::ReservationReleased(locked.facts),
                crate::events::EventKind::ReservationReleased,
            ),
            Expired => (
                Facts::ReservationExpired(locked.facts),
                crate::events::EventKind::ReservationExpired,
            ),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "event {} moves hold {hold} to {other}",
                    event.id
                )));
            }
        };
        ledger.record(event, || facts, kind);
        if *to != Committed {
            ledger.move_available(event, units);
        }
        moves.push((hold.as_uuid(), *to, event.id.to_string(), units));
        applied.left_held.push((*hold, *to));
    }
    for to in [Committed, Released, Expired] {
        let mut units: i64 = 0;
        let (ids, event_ids): (Vec<Uuid>, Vec<String>) = moves
            .iter()
            .filter(|(_, t, ..)| *t == to)
            .map(|(id, _, event, quantity)| {
                units += quantity;
                (*id, event.clone())
            })
            .unzip();
        if ids.is_empty() {
            continue;
        }
        // The rows are locked above: exactly these move. Each row's event comes with its id in
        // one join: looking it up with `array_position` searched the whole array for every row
        // (a 500-hold batch: ~1 ms more of Postgres's time than the join).
        let moved = sqlx::query(
            "UPDATE reservations r SET status = $1, last_event = t.event, updated_at = now() \
             FROM UNNEST($2::uuid[], $3::text[]) AS t(id, event) WHERE r.id = t.id",
        )
        .bind(to.as_str())
        .bind(&ids)
        .bind(&event_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        expect_rows("move held holds", moved, ids.len() as u64)?;
        applied.transitions += moved;
        let statement = if to == Committed {
            "UPDATE inventory SET reserved = reserved - $2, sold = sold + $2 \
             WHERE sku = $1 AND reserved >= $2"
        } else {
            "UPDATE inventory SET available = available + $2, reserved = reserved - $2 \
             WHERE sku = $1 AND reserved >= $2"
        };
        let moved = sqlx::query(statement)
            .bind(sku.as_str())
            .bind(units)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        expect_rows("move stock for transitions", moved, 1)?;
    }
    Ok(())
}

/// Queues the refusals for write-back to Redis, in the batch's own transaction.
async fn record_rejections(
    tx: &mut PgConnection,
    sku: &Sku,
    rejected: &[(RejectedHold, RejectionReason)],
) -> Result<(), StoreError> {
    if rejected.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rejection_outbox (reservation_id, sku, buyer_id, idempotency_key, quantity, reason) \
         SELECT t.id, $1, t.buyer, t.idem, t.q, t.reason \
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::int4[], $6::text[]) AS t(id, buyer, idem, q, reason) \
         ON CONFLICT DO NOTHING",
    )
    .bind(sku.as_str())
    .bind(rejected.iter().map(|(h, _)| h.id.as_uuid()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|(h, _)| h.buyer.as_str()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|(h, _)| h.idempotency_key.as_str()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|(h, _)| i32::try_from(h.quantity.get()).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rejected.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // Kept after the write-back, so that a refused hold Redis has forgotten is never taken for
    // a lost one.
    sqlx::query(
        "INSERT INTO refused_holds (reservation_id, sku, reason) \
         SELECT t.id, $1, t.reason FROM UNNEST($2::uuid[], $3::text[]) AS t(id, reason) \
         ON CONFLICT DO NOTHING",
    )
    .bind(sku.as_str())
    .bind(
        rejected
            .iter()
            .map(|(h, _)| h.id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(rejected.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The caller's metadata from its `jsonb` text.
fn stored_metadata(
    text: Option<&str>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, StoreError> {
    text.map(|text| {
        crate::domain::HoldMetadata::from_stored(text)
            .map(|metadata| metadata.as_object().clone())
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    })
    .transpose()
}

fn quantity(hold: &NewHold) -> i32 {
    // Quantity::MAX is far below i32::MAX.
    i32::try_from(hold.quantity.get()).unwrap_or(i32::MAX)
}

fn rejected(hold: &NewHold) -> Result<RejectedHold, StoreError> {
    Ok(RejectedHold {
        id: hold.id,
        buyer: hold.buyer.clone(),
        idempotency_key: IdempotencyKey::from_decoded(hold.idempotency_key.clone())
            .map_err(|e| StoreError::Corrupt(format!("hold {}: {e}", hold.id)))?,
        quantity: hold.quantity,
        units_back: false,
    })
}

/// A conditional write that must have hit `expected` rows; anything else means a bug, and the
/// batch is rolled back rather than applied half.
fn expect_rows(what: &str, actual: u64, expected: u64) -> Result<(), StoreError> {
    if actual == expected {
        Ok(())
    } else {
        Err(StoreError::Invariant(format!(
            "{what}: {actual} rows changed, {expected} expected"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventId, ReservationId};

    /// A sale of `holds` units, every one held by its own buyer, straight in Postgres: the ids.
    async fn sale_with_holds(pool: &sqlx::PgPool, sku: &Sku, holds: i64) -> Vec<Uuid> {
        sqlx::query(
            "INSERT INTO skus (sku, name, price, currency, per_buyer_limit, hold_ttl_seconds) \
             VALUES ($1, $1, 1, 'USD', 1, 600)",
        )
        .bind(sku.as_str())
        .execute(pool)
        .await
        .expect("sku");
        sqlx::query(
            "INSERT INTO inventory (sku, total, available, reserved) VALUES ($1, $2, 0, $2)",
        )
        .bind(sku.as_str())
        .bind(holds)
        .execute(pool)
        .await
        .expect("inventory");
        sqlx::query_scalar(
            "INSERT INTO reservations (id, sku, buyer_id, idempotency_key, quantity, unit_price, \
               total, currency, status, created_at, expires_at, created_event, last_event) \
             SELECT gen_random_uuid(), $1, 'buyer-' || n, 'k', 1, 1, 1, 'USD', 'held', now(), \
               now() + interval '10 minutes', '1-' || n, '1-' || n \
             FROM generate_series(1, $2) AS n RETURNING id",
        )
        .bind(sku.as_str())
        .bind(holds)
        .fetch_all(pool)
        .await
        .expect("holds")
    }

    /// A batch moves holds to different ends in one statement per end: every row must get its
    /// own status and the id of the event that moved it, whatever the order of the batch.
    #[sqlx::test]
    async fn each_moved_hold_records_its_own_end_and_event(pool: sqlx::PgPool) {
        const HOLDS: i64 = 12;
        let sku = Sku::parse("mixed-ends").expect("sku");
        let held = sale_with_holds(&pool, &sku, HOLDS).await;
        let ends = [
            ReservationStatus::Committed,
            ReservationStatus::Released,
            ReservationStatus::Expired,
        ];
        // Newest hold first, the ends interleaved: stream order is not the rows' order.
        let events: Vec<Event> = held
            .iter()
            .rev()
            .enumerate()
            .map(|(n, id)| Event {
                id: EventId::parse(&format!("2-{n}")).expect("event id"),
                kind: EventKind::Transition {
                    hold: ReservationId::from_uuid(*id),
                    to: ends[n % ends.len()],
                },
            })
            .collect();

        let mut tx = pool.begin().await.expect("begin");
        let applied = apply(&mut tx, &sku, &events, &|| false, EventFilter::default())
            .await
            .expect("apply");
        assert_eq!(applied.transitions, HOLDS as u64);
        let rows: HashMap<Uuid, (String, String)> = sqlx::query_as::<_, (Uuid, String, String)>(
            "SELECT id, status, last_event FROM reservations WHERE sku = $1",
        )
        .bind(sku.as_str())
        .fetch_all(&mut *tx)
        .await
        .expect("rows")
        .into_iter()
        .map(|(id, status, event)| (id, (status, event)))
        .collect();
        for event in &events {
            let EventKind::Transition { hold, to } = &event.kind else {
                unreachable!("only transitions were made");
            };
            assert_eq!(
                rows[&hold.as_uuid()],
                (to.as_str().to_owned(), event.id.to_string()),
                "hold {hold}"
            );
        }
    }

    /// A sale's holds arrive faster than Postgres gathers statistics on them: the planner has
    /// never seen the SKU. Moving a batch of them must still read those rows, not every held
    /// row of the sale (it did: one held row estimated, thirty thousand read, every batch).
    #[sqlx::test]
    async fn a_batch_of_transitions_reads_its_own_holds_not_the_whole_sale(pool: sqlx::PgPool) {
        const HOLDS: i64 = 30_000;
        let sku = Sku::parse("fresh-sale").expect("sku");
        let held = sale_with_holds(&pool, &sku, HOLDS).await;
        let events: Vec<Event> = held
            .iter()
            .take(10)
            .enumerate()
            .map(|(n, id)| Event {
                id: EventId::parse(&format!("2-{n}")).expect("event id"),
                kind: EventKind::Transition {
                    hold: ReservationId::from_uuid(*id),
                    to: ReservationStatus::Committed,
                },
            })
            .collect();

        let mut tx = pool.begin().await.expect("begin");
        let applied = apply(&mut tx, &sku, &events, &|| false, EventFilter::default())
            .await
            .expect("apply");
        assert_eq!(applied.transitions, 10);
        // This transaction's own reads, before they are flushed to the cumulative statistics.
        let (scanned, fetched): (i64, i64) = sqlx::query_as(
            "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables \
             WHERE relname = 'reservations'",
        )
        .fetch_one(&mut *tx)
        .await
        .expect("statistics");
        assert!(
            scanned + fetched <= 100,
            "moving 10 holds read {scanned} rows by scan and {fetched} by index"
        );
    }
}
