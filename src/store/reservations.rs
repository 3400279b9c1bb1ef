//! Reservation rows, as the settler wrote them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{ReservationId, ReservationStatus};

/// What Postgres says of a hold Redis does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingHold {
    /// Postgres has it: Redis forgot it after the idempotency window (or a resync is due).
    Recorded,
    /// Neither store has it: Redis lost it before it settled.
    Lost { first_report: bool },
}

impl Store {
    /// The status Postgres has recorded for a hold, or `None` while the settler has not
    /// reached it.
    pub async fn reservation_status(
        &self,
        id: ReservationId,
    ) -> Result<Option<ReservationStatus>, StoreError> {
        let status: Option<String> = super::timed(
            "reservation_status",
            sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(&self.pool),
        )
        .await?;
        status
            .map(|s| ReservationStatus::parse(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// The hold `id` as Postgres recorded it, if it left `held` there (committed, released,
    /// expired or rejected): what answers for a hold once Redis has let its record go.
    pub async fn settled_reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<SettledReservation>, StoreError> {
        Ok(super::timed(
            "settled_reservation",
            sqlx::query_as(
                "SELECT sku, id, buyer_id, idempotency_key, quantity, unit_price, currency, status, \
                   created_at, expires_at, reference, metadata::text AS metadata \
                 FROM reservations WHERE id = $1 AND status <> 'held'",
            )
            .bind(id.as_uuid())
            .fetch_optional(&self.pool),
        )
        .await?)
    }

    /// Looks for a hold Redis does not have: whether Postgres recorded it (held, settled or
    /// refused), else records it as lost — once; the answer says whether this was the first time.
    pub async fn trace_missing_hold(&self, id: ReservationId) -> Result<MissingHold, StoreError> {
        let (recorded, newly_lost): (bool, i64) = super::timed(
            "trace_missing_hold",
            sqlx::query_as(
                "WITH recorded AS ( \
                   SELECT EXISTS (SELECT 1 FROM reservations WHERE id = $1) \
                       OR EXISTS (SELECT 1 FROM refused_holds WHERE reservation_id = $1) \
                       OR EXISTS (SELECT 1 FROM rejection_outbox WHERE reservation_id = $1) AS yes), \
                 lost AS ( \
                   INSERT INTO lost_holds (reservation_id, sku) \
                   SELECT $1, s.sku FROM skus s, recorded WHERE s.num = $2 AND NOT recorded.yes \
                   ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT (SELECT yes FROM recorded), (SELECT count(*) FROM lost)",
            )
            .bind(id.as_uuid())
            .bind(i64::from(id.sku_number()))
            .fetch_one(&self.pool),
        )
        .await?;
        Ok(if recorded {
            MissingHold::Recorded
        } else {
            MissingHold::Lost {
                first_report: newly_lost > 0,
            }
        })
    }

    /// How many of the SKU's holds were found lost (and have not reached Postgres since).
    pub async fn lost_holds(&self, sku: &crate::domain::Sku) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM lost_holds l WHERE l.sku = $1 \
             AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.id = l.reservation_id)",
        )
        .bind(sku.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// The statuses Postgres has recorded for these holds, in one query; a hold the settler
    /// has not reached is missing from the answer.
    pub async fn statuses_of(
        &self,
        ids: &[ReservationId],
    ) -> Result<HashMap<ReservationId, ReservationStatus>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let rows: Vec<(Uuid, String)> = super::timed(
            "reservation_statuses",
            sqlx::query_as("SELECT id, status FROM reservations WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool),
        )
        .await?;
        rows.into_iter()
            .map(|(id, status)| {
                ReservationStatus::parse(&status)
                    .map(|status| (ReservationId::from_uuid(id), status))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }
}

/// A hold that left `held`, as Postgres recorded it, with its SKU.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SettledReservation {
    pub sku: String,
    #[sqlx(flatten)]
    pub row: StoredReservation,
}

/// A reservation row as stored, for rebuilding Redis from Postgres (resync).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredReservation {
    pub id: Uuid,
    pub buyer_id: String,
    pub idempotency_key: String,
    pub quantity: i32,
    pub unit_price: Decimal,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub reference: Option<String>,
    /// The caller's metadata as `jsonb` text (`metadata::text`).
    pub metadata: Option<String>,
}

impl Store {
    /// The reservations of the SKU a buyer may still ask about: the held, and the committed,
    /// released or expired that left `held` within `window` (the idempotency TTL, which is how
    /// long Redis keeps a terminal hold). Older ones are not brought back to life.
    pub async fn reservations_of(
        &self,
        sku: &crate::domain::Sku,
        window: std::time::Duration,
    ) -> Result<Vec<StoredReservation>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, buyer_id, idempotency_key, quantity, unit_price, currency, status, created_at, \
               expires_at, reference, metadata::text AS metadata FROM reservations \
             WHERE sku = $1 AND (status = 'held' \
               OR (status <> 'rejected' AND updated_at > now() - make_interval(secs => $2))) \
             ORDER BY created_event",
        )
        .bind(sku.as_str())
        .bind(window.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Per buyer of the SKU, the units of their held and committed reservations: what counts
    /// against their limit (0 for a buyer with none left).
    pub async fn buyer_counts(
        &self,
        sku: &crate::domain::Sku,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT buyer_id, COALESCE(SUM(quantity) FILTER (WHERE status IN ('held', 'committed')), 0)::int8 \
             FROM reservations WHERE sku = $1 GROUP BY buyer_id",
        )
        .bind(sku.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every reservation id of the SKU with its status, the rejected included.
    pub async fn reservation_statuses(
        &self,
        sku: &crate::domain::Sku,
    ) -> Result<Vec<(uuid::Uuid, ReservationStatus)>, StoreError> {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM reservations WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, status)| {
                ReservationStatus::parse(&status)
                    .map(|status| (id, status))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }
}
