//! The audit's reads of Postgres (the checks themselves are in `src/audit.rs`).

use std::collections::HashSet;

use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{EventId, Sku};

/// One SKU's Postgres side, read in one statement.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub per_buyer_limit: i32,
    pub cursor: EventId,
    /// Units of reservations `held`, and `committed`.
    pub held_units: i64,
    pub committed_units: i64,
    pub rejected: i64,
    /// (buyer, idempotency key) pairs with more than one reservation.
    pub duplicate_keys: i64,
    /// Reservations still `held` past their deadline plus the grace.
    pub overdue: i64,
    /// Refusals not yet written back to Redis.
    pub outbox: i64,
}

#[derive(sqlx::FromRow)]
struct LedgerRow {
    total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    per_buyer_limit: i32,
    cursor: String,
    held_units: i64,
    committed_units: i64,
    rejected: i64,
    duplicate_keys: i64,
    overdue: i64,
    outbox: i64,
}

impl Store {
    /// The SKU's ledger, or `None` for an unknown SKU. A hold counts as overdue once its
    /// deadline is `grace_ms` behind.
    pub async fn audit_ledger(
        &self,
        sku: &Sku,
        grace_ms: i64,
    ) -> Result<Option<Ledger>, StoreError> {
        let row: Option<LedgerRow> = sqlx::query_as(
            "SELECT i.total, i.available, i.reserved, i.sold, s.per_buyer_limit, c.last_event_id AS cursor, \
               COALESCE((SELECT sum(quantity) FROM reservations WHERE sku = $1 AND status = 'held'), 0)::int8 AS held_units, \
               COALESCE((SELECT sum(quantity) FROM reservations WHERE sku = $1 AND status = 'committed'), 0)::int8 AS committed_units, \
               (SELECT count(*) FROM reservations WHERE sku = $1 AND status = 'rejected') AS rejected, \
               (SELECT count(*) FROM (SELECT 1 FROM reservations WHERE sku = $1 \
                  GROUP BY buyer_id, idempotency_key HAVING count(*) > 1) d) AS duplicate_keys, \
               (SELECT count(*) FROM reservations WHERE sku = $1 AND status = 'held' \
                  AND expires_at < now() - make_interval(secs => $2)) AS overdue, \
               (SELECT count(*) FROM rejection_outbox WHERE sku = $1) AS outbox \
             FROM skus s JOIN inventory i ON i.sku = s.sku JOIN settlement_cursor c ON c.sku = s.sku \
             WHERE s.sku = $1",
        )
        .bind(sku.as_str())
        .bind(grace_ms as f64 / 1000.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Ledger {
                total: row.total,
                available: row.available,
                reserved: row.reserved,
                sold: row.sold,
                per_buyer_limit: row.per_buyer_limit,
                cursor: EventId::parse(&row.cursor)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                held_units: row.held_units,
                committed_units: row.committed_units,
                rejected: row.rejected,
                duplicate_keys: row.duplicate_keys,
                overdue: row.overdue,
                outbox: row.outbox,
            })
        })
        .transpose()
    }

    /// Up to ten buyers holding or owning more than `limit` units of the SKU, with their units.
    pub async fn buyers_over_limit(
        &self,
        sku: &Sku,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT buyer_id, sum(quantity)::int8 FROM reservations \
             WHERE sku = $1 AND status IN ('held', 'committed') \
             GROUP BY buyer_id HAVING sum(quantity) > $2 ORDER BY buyer_id LIMIT 10",
        )
        .bind(sku.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Which of `ids` Postgres has a reservation for.
    pub async fn recorded_reservations(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM reservations WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect(),
        )
    }
}
