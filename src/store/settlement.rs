//! The settler's bookkeeping: cursors, settlement transactions and the rejection outbox.

use std::sync::LazyLock;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::batch::{self, Applied};
use super::{Store, StoreError};
use crate::domain::{EventId, Sku};
use crate::gate::Event;

/// Whether a batch waits for another settler that holds the SKU's cursor, or moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorLock {
    Wait,
    SkipLocked,
}

/// What [`Store::lock_cursor`] found.
#[derive(Debug)]
pub enum CursorTurn {
    /// This caller holds the cursor: apply the batch, then commit.
    Locked(SettlementTx),
    /// Another settler holds the cursor (only with [`CursorLock::SkipLocked`]).
    Busy,
    /// The cursor moved since the caller read the stream: read again.
    Moved,
}

/// One settlement batch: a Postgres transaction that holds the SKU's cursor row. Dropped
/// without [`SettlementTx::commit`], it rolls back, as when the process dies.
#[derive(Debug)]
pub struct SettlementTx {
    tx: Transaction<'static, Postgres>,
    sku: Sku,
    from: EventId,
    /// The store the batch belongs to: which events it records, whom to tell after commit.
    store: Store,
    /// The batch's events, written with the cursor's advance, and the SKU's last sequence.
    events: Vec<crate::events::Draft>,
    last_sequence: i64,
}

impl SettlementTx {
    /// Applies `events` (see `batch.rs`). `stop_after_inserts` is a test's crash point: when it
    /// answers true the batch stops with [`StoreError::Interrupted`] after inserting the holds.
    pub async fn apply(
        &mut self,
        events: &[Event],
        stop_after_inserts: &(dyn Fn() -> bool + Sync),
    ) -> Result<Applied, StoreError> {
        super::timed(
            "settlement_batch",
            batch::apply(
                &mut self.tx,
                &self.sku,
                events,
                stop_after_inserts,
                self.store.events,
            ),
        )
        .await
        .map(|mut applied| {
            self.events.append(&mut applied.events);
            self.last_sequence = applied.last_sequence;
            applied
        })
    }

    /// Advances the cursor to `through`, the batch's last event, writes the batch's events (in
    /// the same statement), and commits.
    pub async fn commit(mut self, through: EventId) -> Result<(), StoreError> {
        let recorded = if self.events.is_empty() {
            let advanced = sqlx::query(
                "UPDATE settlement_cursor SET last_event_id = $2, updated_at = now() \
                 WHERE sku = $1 AND last_event_id = $3",
            )
            .bind(self.sku.as_str())
            .bind(through.to_string())
            .bind(self.from.to_string())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            if advanced != 1 {
                return Err(StoreError::Invariant(format!(
                    "cursor of {} did not advance",
                    self.sku
                )));
            }
            0
        } else {
            super::timed(
                "settlement_events",
                super::outbox::append_and_advance(
                    &mut self.tx,
                    &self.sku,
                    std::mem::take(&mut self.events),
                    self.last_sequence,
                    &self.from.to_string(),
                    &through.to_string(),
                ),
            )
            .await?
        };
        let store = self.store.clone();
        super::timed(
            "settlement_commit",
            store.commit_recorded(self.tx, recorded),
        )
        .await
    }
}

fn parse_event_id(raw: &str) -> Result<EventId, StoreError> {
    EventId::parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Which part of the catalogue a settler scans for work it was not told about: the SKUs whose
/// `hashtext(sku)` modulo `of` is `index` (see `settler::fleet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub of: u32,
}

impl Share {
    /// Every SKU: a settler alone, or one that does not know its fleet yet.
    pub const ALL: Share = Share { index: 0, of: 1 };

    /// Share `index` of `of` (`of` at least 1).
    pub fn new(index: u32, of: u32) -> Self {
        let of = of.max(1);
        Self {
            index: index % of,
            of,
        }
    }
}

/// The SQL condition that keeps a [`Share`]'s SKUs, with `$1` its index and `$2` its size.
const IN_SHARE: &str = "($2 = 1 OR mod(abs(hashtext(sku)::bigint), $2) = $1)";
static SKUS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT sku FROM settlement_cursor WHERE {IN_SHARE} ORDER BY sku"));
static CURSORS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT sku, last_event_id FROM settlement_cursor WHERE {IN_SHARE} ORDER BY sku")
});

/// A refusal waiting to be written back to Redis (`rejection_outbox`).
#[derive(Debug, Clone)]
pub struct PendingRejection {
    pub reservation_id: Uuid,
    pub sku: Sku,
    pub buyer_id: String,
    pub idempotency_key: String,
    pub quantity: i32,
    /// Why Postgres refused it (`RejectionReason::as_str`).
    pub reason: String,
}

impl Store {
    /// The SKUs of `share` (every SKU has a settlement cursor).
    pub async fn settlement_skus(&self, share: Share) -> Result<Vec<Sku>, StoreError> {
        let rows: Vec<String> = super::timed(
            "settlement_skus",
            sqlx::query_scalar(SKUS.as_str())
                .bind(i64::from(share.index))
                .bind(i64::from(share.of))
                .fetch_all(&self.pool),
        )
        .await?;
        rows.iter().map(|s| parse_sku(s)).collect()
    }

    /// The settlement cursor of every SKU of `share`, in one query.
    pub async fn settlement_cursors(
        &self,
        share: Share,
    ) -> Result<Vec<(Sku, EventId)>, StoreError> {
        let rows: Vec<(String, String)> = super::timed(
            "settlement_cursors",
            sqlx::query_as(CURSORS.as_str())
                .bind(i64::from(share.index))
                .bind(i64::from(share.of))
                .fetch_all(&self.pool),
        )
        .await?;
        rows.iter()
            .map(|(sku, cursor)| Ok((parse_sku(sku)?, parse_event_id(cursor)?)))
            .collect()
    }

    /// Records that settler `id` is alive, forgets settlers not seen for `alive_for`, and returns
    /// the ids of every live settler (this one included), in order. One round trip.
    pub async fn settler_heartbeat(
        &self,
        id: Uuid,
        alive_for: std::time::Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        // A data-modifying CTE's rows are not visible to the rest of the statement, so this
        // settler's own row is added to the answer from `beat`.
        Ok(super::timed(
            "settler_heartbeat",
            sqlx::query_scalar(
                "WITH beat AS (INSERT INTO settler_fleet (settler_id) VALUES ($1) \
                   ON CONFLICT (settler_id) DO UPDATE SET seen_at = now() RETURNING settler_id), \
                 gone AS (DELETE FROM settler_fleet \
                   WHERE seen_at < now() - make_interval(secs => $2) AND settler_id <> $1) \
                 SELECT settler_id FROM settler_fleet \
                   WHERE seen_at >= now() - make_interval(secs => $2) AND settler_id <> $1 \
                 UNION SELECT settler_id FROM beat ORDER BY 1",
            )
            .bind(id)
            .bind(alive_for.as_secs_f64())
            .fetch_all(&self.pool),
        )
        .await?)
    }

    /// Settler `id` stops: the others take its share at their next beat.
    pub async fn settler_leave(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM settler_fleet WHERE settler_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The id of the last event applied for the SKU ([`EventId::START`] before the first).
    pub async fn settlement_cursor(&self, sku: &Sku) -> Result<Option<EventId>, StoreError> {
        let raw: Option<String> = super::timed(
            "settlement_cursor",
            sqlx::query_scalar("SELECT last_event_id FROM settlement_cursor WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&self.pool),
        )
        .await?;
        raw.as_deref().map(parse_event_id).transpose()
    }

    /// Opens a settlement batch: a transaction holding the SKU's cursor row, provided the cursor
    /// still names `read_from`, the event the caller read the stream after.
    pub async fn lock_cursor(
        &self,
        sku: &Sku,
        read_from: EventId,
        lock: CursorLock,
    ) -> Result<CursorTurn, StoreError> {
        let mut tx = self.pool.begin().await?;
        let statement = match lock {
            CursorLock::Wait => {
                "SELECT last_event_id FROM settlement_cursor WHERE sku = $1 FOR UPDATE"
            }
            CursorLock::SkipLocked => {
                "SELECT last_event_id FROM settlement_cursor WHERE sku = $1 FOR UPDATE SKIP LOCKED"
            }
        };
        let locked: Option<String> = sqlx::query_scalar(statement)
            .bind(sku.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        match locked {
            None if lock == CursorLock::SkipLocked => Ok(CursorTurn::Busy),
            None => Err(StoreError::Corrupt(format!(
                "no settlement cursor for SKU {sku}"
            ))),
            Some(now) if parse_event_id(&now)? != read_from => Ok(CursorTurn::Moved),
            Some(_) => Ok(CursorTurn::Locked(SettlementTx {
                tx,
                sku: sku.clone(),
                from: read_from,
                store: self.clone(),
                events: Vec::new(),
                last_sequence: 0,
            })),
        }
    }

    pub async fn pending_rejections(
        &self,
        sku: Option<&Sku>,
    ) -> Result<Vec<PendingRejection>, StoreError> {
        let rows: Vec<(Uuid, String, String, String, i32, String)> = sqlx::query_as(
            "SELECT reservation_id, sku, buyer_id, idempotency_key, quantity, reason FROM rejection_outbox \
             WHERE $1::text IS NULL OR sku = $1 ORDER BY created_at LIMIT 1000",
        )
        .bind(sku.map(Sku::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(reservation_id, sku, buyer_id, idempotency_key, quantity, reason)| {
                    Ok(PendingRejection {
                        reservation_id,
                        sku: parse_sku(&sku)?,
                        buyer_id,
                        idempotency_key,
                        quantity,
                        reason,
                    })
                },
            )
            .collect()
    }

    pub async fn clear_rejection(&self, reservation_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM rejection_outbox WHERE reservation_id = $1")
            .bind(reservation_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn parse_sku(raw: &str) -> Result<Sku, StoreError> {
    Sku::parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}
