//! The Postgres store: the authoritative record of sales, inventory and reservations.
//!
//! Postgres decides last (DESIGN.md §1): every write the settler makes is conditional and its
//! affected-rows count is checked, and the schema's constraints hold the invariants even if the
//! code is wrong. SQL lives next to the function that runs it.

mod reservations;
mod settlement;
mod skus;

pub use reservations::StoredReservation;
pub use settlement::PendingRejection;
pub use skus::SkuRecord;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The new total is below what is already reserved and sold.
    #[error("stock {requested} is below the {committed} units already reserved or sold")]
    StockBelowCommitted { requested: u32, committed: i64 },
    /// A row holds a value the domain types refuse: the database was edited by hand or a
    /// migration is missing.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("postgres is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Self::Unavailable(err),
            other => Self::Database(other),
        }
    }
}

/// A handle on the Postgres store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects lazily: the process starts (and the gate admits holds from Redis) even while
    /// Postgres is down; a statement waits at most `acquire_timeout` for a connection.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the database named in `url` if it does not exist yet.
    pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
        use sqlx::migrate::MigrateDatabase;
        if sqlx::Postgres::database_exists(url).await? {
            return Ok(false);
        }
        sqlx::Postgres::create_database(url).await?;
        Ok(true)
    }

    /// Applies the migrations embedded from `migrations/`.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!().run(&self.pool).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
