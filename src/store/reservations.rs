//! Reservation rows, as the settler wrote them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{ReservationId, ReservationStatus};

/// What Postgres knows of one hold.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationRecord {
    pub id: ReservationId,
    pub status: ReservationStatus,
    pub settled_at: DateTime<Utc>,
}

impl Store {
    /// The settled record of a hold, or `None` while the settler has not reached it.
    pub async fn find_reservation(
        &self,
        id: ReservationId,
    ) -> Result<Option<ReservationRecord>, StoreError> {
        let row: Option<(Uuid, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT id, status, settled_at FROM reservations WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(id, status, settled_at)| {
            Ok(ReservationRecord {
                id: ReservationId::from_uuid(id),
                status: ReservationStatus::parse(&status)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                settled_at,
            })
        })
        .transpose()
    }
}
