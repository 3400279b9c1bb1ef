//! The Postgres store: the authoritative record of sales, inventory and reservations.
//!
//! Postgres decides last (docs/DESIGN.md §1): every write the settler makes is conditional and its
//! affected-rows count is checked, and the schema's constraints hold the invariants even if the
//! code is wrong. SQL lives next to the function that runs it.

mod audit;
mod batch;
mod outbox;
mod reservations;
mod settlement;
mod skus;

pub use audit::Ledger;
pub use batch::{Applied, RejectionReason};
pub use outbox::{Backlog, Claim, OutboxRow, Sink};
pub use reservations::{MissingHold, SettledReservation, StoredReservation};
pub use settlement::{CursorLock, CursorTurn, PendingRejection, SettlementTx, Share};
pub use skus::SkuRecord;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
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
    /// A conditional write that must succeed did not: the transaction is rolled back rather
    /// than applied in part.
    #[error("settlement invariant broken: {0}")]
    Invariant(String),
    /// The migrations do not apply (a changed or missing migration).
    #[error("migrations: {0}")]
    Migration(String),
    /// A test's crash point stopped the transaction (see `SettlementTx::apply`).
    #[error("stopped by a test's crash point")]
    Interrupted,
    #[error("postgres is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Postgres cancelled the statement to bound it — `statement_timeout`, `lock_timeout`, a
    /// deadlock or serialization failure: nothing was applied, and a retry may succeed.
    #[error("postgres is busy: {0}")]
    Busy(#[source] sqlx::Error),
    #[error(transparent)]
    Database(sqlx::Error),
}

/// Runs one Postgres call and records how long it took as
/// `flashgate_postgres_call_duration_seconds{call}`.
pub(crate) async fn timed<T>(call: &'static str, work: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let outcome = work.await;
    metrics::histogram!("flashgate_postgres_call_duration_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    outcome
}

impl StoreError {
    /// Whether waiting may cure it: Postgres unreachable, or up but still starting or shutting
    /// down (SQLSTATE class 57: `cannot_connect_now`, `admin_shutdown`).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Busy(_) => true,
            Self::Database(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|code| code.starts_with("57"))
            }
            _ => false,
        }
    }
}

/// SQLSTATEs of a statement Postgres cancelled to bound it: `query_canceled` (statement_timeout),
/// `lock_not_available` (lock_timeout), `serialization_failure`, `deadlock_detected`.
const RETRYABLE_STATES: [&str; 4] = ["57014", "55P03", "40001", "40P01"];

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => Self::Unavailable(err),
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|code| RETRYABLE_STATES.contains(&code.as_ref())) =>
            {
                Self::Busy(err)
            }
            other => Self::Database(other),
        }
    }
}

/// A handle on the Postgres store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// Which events the transactions of this store record in the outbox (`FLASHGATE_EVENTS`).
    events: crate::events::EventFilter,
    /// Bumped after every commit that recorded events, so this process's relays wake at once.
    recorded: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// A SKU's resync lock ([`Store::lock_resync`]); dropping it closes its connection, which
/// releases the lock once that connection's backend has exited.
#[derive(Debug)]
pub struct ResyncLock {
    conn: sqlx::PgConnection,
    key: String,
}

impl ResyncLock {
    /// Releases the lock now: unlocked before the connection closes, since a backend frees its
    /// locks only as it exits, after the close has returned (the next resync was refused).
    pub async fn release(mut self) {
        use sqlx::Connection as _;
        if let Err(err) = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&self.key)
            .execute(&mut self.conn)
            .await
        {
            tracing::debug!(error = %err, "unlocking the resync lock; its connection's close frees it");
        }
        if let Err(err) = self.conn.close().await {
            tracing::debug!(error = %err, "closing the resync lock's connection");
        }
    }
}

/// Server-side bounds on every statement of a pool, so one stray lock or runaway query cannot
/// stall settling or hold a request: Postgres cancels the statement and the caller retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementLimits {
    /// `statement_timeout`: longest one statement may run. Also the pool's
    /// `idle_in_transaction_session_timeout`: a transaction nobody drives any more (its task
    /// cancelled between statements) is ended by Postgres, and its locks released, after as long.
    pub statement_timeout: Duration,
    /// `lock_timeout`: longest one statement may wait for a lock (a row, the cursor).
    pub lock_timeout: Duration,
}

impl Store {
    /// Connects lazily: the process starts (and the gate admits holds from Redis) even while
    /// Postgres is down; a statement waits at most `acquire_timeout` for a connection. With
    /// `limits`, every connection runs with that `statement_timeout` and `lock_timeout`.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        limits: Option<StatementLimits>,
    ) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = url.parse()?;
        if let Some(limits) = limits {
            let statement_timeout = format!("{}ms", limits.statement_timeout.as_millis().max(1));
            options = options.options([
                ("statement_timeout", statement_timeout.clone()),
                ("idle_in_transaction_session_timeout", statement_timeout),
                (
                    "lock_timeout",
                    format!("{}ms", limits.lock_timeout.as_millis().max(1)),
                ),
            ]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            events: crate::events::EventFilter::default(),
            recorded: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Changes after each commit of this process that recorded events in the outbox.
    pub fn watch_recorded(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recorded.subscribe()
    }

    /// Tells this process's relays that a commit recorded events.
    fn signal_recorded(&self) {
        self.recorded.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Which events this store records.
    pub fn event_filter(&self) -> crate::events::EventFilter {
        self.events
    }

    /// The same store, recording the event kinds `events` keeps (`FLASHGATE_EVENTS`).
    pub fn with_events(mut self, events: crate::events::EventFilter) -> Self {
        self.events = events;
        self
    }

    /// The SKU's resync lock, or `None` while another process or task holds it: a session
    /// advisory lock on a connection of its own, taken out of the pool, so that it is released
    /// when the connection closes — also when its holder is cancelled or killed.
    pub async fn lock_resync(
        &self,
        sku: &crate::domain::Sku,
    ) -> Result<Option<ResyncLock>, StoreError> {
        use sqlx::Connection as _;
        let mut conn = self.pool.acquire().await?.detach();
        let key = format!("flashgate.resync:{sku}");
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut conn)
                .await?;
        if locked {
            Ok(Some(ResyncLock { conn, key }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
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
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!()
            .run(&self.pool)
            .await
            .map_err(|err| match err {
                sqlx::migrate::MigrateError::Execute(err) => err.into(),
                other => StoreError::Migration(other.to_string()),
            })
    }

    /// The embedded migrations this database has not applied (by version and description),
    /// or `None` when Postgres cannot be asked right now.
    pub async fn pending_migrations(&self) -> Option<Vec<String>> {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(applied) => applied,
                // No table: nothing was ever applied.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                    Vec::new()
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot tell whether the migrations are applied");
                    return None;
                }
            };
        Some(
            sqlx::migrate!()
                .iter()
                .filter(|migration| !applied.contains(&migration.version))
                .map(|migration| format!("{} {}", migration.version, migration.description))
                .collect(),
        )
    }

    /// The server's `max_connections`.
    pub async fn max_connections(&self) -> Result<i64, StoreError> {
        let raw: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&self.pool)
            .await?;
        raw.parse()
            .map_err(|_| StoreError::Corrupt(format!("max_connections is {raw:?}")))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Every index is paid for by every insert into its table and every update of an indexed
    /// column, and the settler does both for each decision: an index whose key columns lead a
    /// wider index of the same table answers nothing the wider one does not
    /// (`reservations (sku, buyer_id)` under the unique `(sku, buyer_id, idempotency_key)` did).
    /// Unique and partial indexes say more than their columns and are left out.
    #[sqlx::test]
    async fn no_index_repeats_the_leading_columns_of_a_wider_one(pool: sqlx::PgPool) {
        let repeated: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.indexrelid::regclass::text, b.indexrelid::regclass::text \
             FROM pg_index a \
             JOIN pg_index b ON b.indrelid = a.indrelid AND b.indexrelid <> a.indexrelid \
             JOIN pg_class t ON t.oid = a.indrelid \
             JOIN pg_class ia ON ia.oid = a.indexrelid \
             JOIN pg_class ib ON ib.oid = b.indexrelid \
             WHERE t.relnamespace = current_schema()::regnamespace \
               AND ia.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') \
               AND ib.relam = ia.relam \
               AND NOT a.indisunique AND a.indpred IS NULL AND b.indpred IS NULL \
               AND a.indexprs IS NULL AND b.indexprs IS NULL \
               AND a.indnkeyatts <= b.indnkeyatts \
               AND (string_to_array(a.indkey::text, ' '))[1:a.indnkeyatts] \
                 = (string_to_array(b.indkey::text, ' '))[1:a.indnkeyatts] \
             ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .expect("indexes");
        assert!(
            repeated.is_empty(),
            "indexes whose columns lead a wider one: {repeated:?}"
        );
    }
}
