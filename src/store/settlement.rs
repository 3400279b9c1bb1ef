//! The settler's bookkeeping: cursors and the rejection outbox.

use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::Sku;

/// A refusal waiting to be written back to Redis (`rejection_outbox`).
#[derive(Debug, Clone)]
pub struct PendingRejection {
    pub reservation_id: Uuid,
    pub sku: Sku,
    pub buyer_id: String,
    pub idempotency_key: String,
    pub quantity: i32,
}

impl Store {
    /// Every SKU with a settlement cursor, i.e. every SKU.
    pub async fn settlement_skus(&self) -> Result<Vec<Sku>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT sku FROM settlement_cursor ORDER BY sku")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|s| parse_sku(s)).collect()
    }

    /// The id of the last event applied for the SKU (`0-0` before the first).
    pub async fn settlement_cursor(&self, sku: &Sku) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT last_event_id FROM settlement_cursor WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn pending_rejections(
        &self,
        sku: Option<&Sku>,
    ) -> Result<Vec<PendingRejection>, StoreError> {
        let rows: Vec<(Uuid, String, String, String, i32)> = sqlx::query_as(
            "SELECT reservation_id, sku, buyer_id, idempotency_key, quantity FROM rejection_outbox \
             WHERE $1::text IS NULL OR sku = $1 ORDER BY created_at LIMIT 1000",
        )
        .bind(sku.map(Sku::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(reservation_id, sku, buyer_id, idempotency_key, quantity)| {
                    Ok(PendingRejection {
                        reservation_id,
                        sku: parse_sku(&sku)?,
                        buyer_id,
                        idempotency_key,
                        quantity,
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
