//! What Postgres recorded for the SKU, read directly (`--database-url`): the truth the buyers'
//! answers and the events are held against.

use std::collections::HashMap;

use anyhow::Context;

/// The SKU's reservations and inventory as Postgres has them.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Reservation id → status.
    pub statuses: HashMap<String, String>,
    pub available: i64,
    /// The SKU's last event sequence (0 before its first event).
    pub last_sequence: i64,
}

pub async fn read(database_url: &str, sku: &str) -> anyhow::Result<Ledger> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("cannot reach the gate's Postgres (--database-url)")?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status FROM reservations WHERE sku = $1")
            .bind(sku)
            .fetch_all(&pool)
            .await?;
    let inventory: Option<(i64, i64)> =
        sqlx::query_as("SELECT available, last_event_seq FROM inventory WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&pool)
            .await?;
    pool.close().await;
    let (available, last_sequence) = inventory.unwrap_or_default();
    Ok(Ledger {
        statuses: rows.into_iter().collect(),
        available,
        last_sequence,
    })
}
