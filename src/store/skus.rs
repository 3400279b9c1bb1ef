//! Sales and their inventory rows.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{Store, StoreError};
use crate::domain::{Currency, Money, SaleDefinition, SaleState, Sku, WaitingRoom};
use crate::events::{Draft, Facts, SaleFacts, Stock, StockCause, StockChangeFacts};

/// A SKU's sale definition joined with its inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct SkuRecord {
    pub sku: Sku,
    /// The SKU's stable number, embedded in its reservation ids.
    pub num: u32,
    pub name: String,
    pub price: Money,
    pub currency: Currency,
    pub per_buyer_limit: u32,
    pub hold_ttl_seconds: u32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub state: SaleState,
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// When the sale was first loaded into the gate (prewarm); `None` before.
    pub launched_at: Option<DateTime<Utc>>,
    /// Why the gate must not sell until a resync (the settler found the stream broken).
    pub resync_required: Option<String>,
    /// The Redis namespace the sale was launched in (`None` before, or if launched before
    /// this was recorded).
    pub redis_namespace: Option<String>,
    pub waiting_room: WaitingRoom,
}

#[derive(sqlx::FromRow)]
struct SkuRow {
    sku: String,
    num: i32,
    name: String,
    price: Decimal,
    currency: String,
    per_buyer_limit: i32,
    hold_ttl_seconds: i32,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    state: String,
    total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    launched_at: Option<DateTime<Utc>>,
    resync_required: Option<String>,
    redis_namespace: Option<String>,
    waiting_room: bool,
    admit_per_second: i32,
    admission_window_seconds: i32,
}

impl TryFrom<SkuRow> for SkuRecord {
    type Error = StoreError;

    fn try_from(row: SkuRow) -> Result<Self, StoreError> {
        let corrupt = |e: crate::domain::ValidationError| {
            StoreError::Corrupt(format!("sku {}: {e}", row.sku))
        };
        let positive = |n: i32, what: &str| {
            u32::try_from(n)
                .map_err(|_| StoreError::Corrupt(format!("sku {}: {what} is {n}", row.sku)))
        };
        Ok(Self {
            sku: Sku::parse(&row.sku).map_err(corrupt)?,
            num: positive(row.num, "num")?,
            price: Money::new(row.price).map_err(corrupt)?,
            currency: Currency::parse(&row.currency).map_err(corrupt)?,
            per_buyer_limit: positive(row.per_buyer_limit, "per_buyer_limit")?,
            hold_ttl_seconds: positive(row.hold_ttl_seconds, "hold_ttl_seconds")?,
            state: SaleState::parse(&row.state).map_err(corrupt)?,
            name: row.name,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            total: row.total,
            available: row.available,
            reserved: row.reserved,
            sold: row.sold,
            launched_at: row.launched_at,
            resync_required: row.resync_required,
            redis_namespace: row.redis_namespace,
            waiting_room: WaitingRoom {
                enabled: row.waiting_room,
                admit_per_second: positive(row.admit_per_second, "admit_per_second")?,
                admission_window_seconds: positive(
                    row.admission_window_seconds,
                    "admission_window_seconds",
                )?,
            },
        })
    }
}

const SELECT_SKU: &str = "SELECT s.sku, s.num, s.name, s.price, s.currency, s.per_buyer_limit, \
     s.hold_ttl_seconds, s.starts_at, s.ends_at, s.state, \
     i.total, i.available, i.reserved, i.sold, s.launched_at, s.resync_required, s.redis_namespace, \
     s.waiting_room, s.admit_per_second, s.admission_window_seconds \
     FROM skus s JOIN inventory i ON i.sku = s.sku";

impl Store {
    /// Creates the sale or updates it. `stock` is the new total: on an update, what is already
    /// reserved or sold stays so and `available` becomes the rest, which must not be negative.
    ///
    /// With `with_total`, the inventory's total is set too (checked against what is reserved
    /// and sold). Without, an existing inventory is left alone: a sale live in Redis changes its
    /// total through its event stream, which the settler applies in order.
    #[tracing::instrument(skip_all, fields(sku = %sku))]
    pub async fn upsert_sku(
        &self,
        sku: &Sku,
        sale: &SaleDefinition,
        with_total: bool,
    ) -> Result<SkuRecord, StoreError> {
        // The caller resolves a definition without a room (the sale's own, or the default).
        let room = sale.waiting_room.unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO skus (sku, name, price, currency, per_buyer_limit, hold_ttl_seconds, starts_at, ends_at, \
               waiting_room, admit_per_second, admission_window_seconds) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, \
               currency = EXCLUDED.currency, per_buyer_limit = EXCLUDED.per_buyer_limit, \
               hold_ttl_seconds = EXCLUDED.hold_ttl_seconds, starts_at = EXCLUDED.starts_at, \
               ends_at = EXCLUDED.ends_at, waiting_room = EXCLUDED.waiting_room, \
               admit_per_second = EXCLUDED.admit_per_second, \
               admission_window_seconds = EXCLUDED.admission_window_seconds, updated_at = now()",
        )
        .bind(sku.as_str())
        .bind(&sale.name)
        .bind(sale.price.amount())
        .bind(sale.currency.as_str())
        .bind(i32::try_from(sale.per_buyer_limit).unwrap_or(i32::MAX))
        .bind(i32::try_from(sale.hold_ttl_seconds).unwrap_or(i32::MAX))
        .bind(sale.starts_at)
        .bind(sale.ends_at)
        .bind(room.enabled)
        .bind(i32::try_from(room.admit_per_second).unwrap_or(i32::MAX))
        .bind(i32::try_from(room.admission_window_seconds).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;

        // Lock the inventory row so that the check below and the update see the same counts.
        let before: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT total, available, reserved, sold FROM inventory WHERE sku = $1 FOR UPDATE",
        )
        .bind(sku.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let stock = i64::from(sale.stock);
        let cause = match before {
            None => {
                sqlx::query("INSERT INTO inventory (sku, total, available) VALUES ($1, $2, $2)")
                    .bind(sku.as_str())
                    .bind(stock)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO settlement_cursor (sku) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(sku.as_str())
                .execute(&mut *tx)
                .await?;
                Some(StockCause::Created)
            }
            Some(_) if !with_total => None,
            Some((_, _, reserved, sold)) if reserved + sold > stock => {
                return Err(StoreError::StockBelowCommitted {
                    requested: sale.stock,
                    committed: reserved + sold,
                });
            }
            Some((total, ..)) if total == stock => None,
            Some(_) => {
                sqlx::query(
                    "UPDATE inventory SET total = $2, available = $2 - reserved - sold WHERE sku = $1",
                )
                .bind(sku.as_str())
                .bind(stock)
                .execute(&mut *tx)
                .await?;
                Some(StockCause::Update)
            }
        };
        let record = Self::fetch_sku(&mut *tx, sku).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("sku {sku} vanished inside its own transaction"))
        })?;
        let mut recorded = 0;
        if let Some(cause) = cause {
            let before = before.map(|(total, available, ..)| (total, available));
            recorded = super::outbox::append(
                &mut tx,
                sku,
                stock_drafts(&record, before, cause),
                self.events,
            )
            .await?;
        }
        self.commit_recorded(tx, recorded).await?;
        Ok(record)
    }

    /// Adds `units` to the sale's total and available stock; `None` for an unknown SKU.
    pub async fn restock(&self, sku: &Sku, units: u32) -> Result<Option<SkuRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let before: Option<(i64, i64)> =
            sqlx::query_as("SELECT total, available FROM inventory WHERE sku = $1 FOR UPDATE")
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if before.is_none() {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE inventory SET total = total + $2, available = available + $2 WHERE sku = $1",
        )
        .bind(sku.as_str())
        .bind(i64::from(units))
        .execute(&mut *tx)
        .await?;
        let Some(record) = Self::fetch_sku(&mut *tx, sku).await? else {
            return Ok(None);
        };
        let mut recorded = 0;
        if units > 0 {
            recorded = super::outbox::append(
                &mut tx,
                sku,
                stock_drafts(&record, before, StockCause::Restock),
                self.events,
            )
            .await?;
        }
        self.commit_recorded(tx, recorded).await?;
        Ok(Some(record))
    }

    /// Records whether new holds may be taken; `None` for an unknown SKU. A change of state
    /// records `sale.paused` or `sale.resumed`; setting the state it already has records nothing.
    /// Sets the sale's waiting room; `None` for an unknown SKU.
    pub async fn set_waiting_room(
        &self,
        sku: &Sku,
        room: WaitingRoom,
    ) -> Result<Option<SkuRecord>, StoreError> {
        let updated = sqlx::query(
            "UPDATE skus SET waiting_room = $2, admit_per_second = $3, \
               admission_window_seconds = $4, updated_at = now() WHERE sku = $1",
        )
        .bind(sku.as_str())
        .bind(room.enabled)
        .bind(i32::try_from(room.admit_per_second).unwrap_or(i32::MAX))
        .bind(i32::try_from(room.admission_window_seconds).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        Self::fetch_sku(&self.pool, sku).await
    }

    pub async fn set_sale_state(
        &self,
        sku: &Sku,
        state: SaleState,
    ) -> Result<Option<SkuRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let before: Option<String> =
            sqlx::query_scalar("SELECT state FROM skus WHERE sku = $1 FOR UPDATE")
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(before) = before else {
            return Ok(None);
        };
        if before != state.as_str() {
            sqlx::query("UPDATE skus SET state = $2, updated_at = now() WHERE sku = $1")
                .bind(sku.as_str())
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let record = Self::fetch_sku(&mut *tx, sku).await?;
        let kind = match (before.as_str(), state) {
            (_, SaleState::Paused) => Some(Facts::SalePaused as fn(SaleFacts) -> Facts),
            ("paused", SaleState::Open) => Some(Facts::SaleResumed as fn(SaleFacts) -> Facts),
            _ => None,
        };
        let mut recorded = 0;
        if let (Some(record), Some(facts), true) = (&record, kind, before != state.as_str()) {
            recorded = super::outbox::append(
                &mut tx,
                sku,
                vec![Draft {
                    facts: facts(sale_facts(record)),
                    occurred_at: Utc::now(),
                    stream_event: None,
                }],
                self.events,
            )
            .await?;
        }
        self.commit_recorded(tx, recorded).await?;
        Ok(record)
    }

    /// Records that the sale was loaded into the gate, in Redis namespace `namespace`: the
    /// first time, `sale.opened`. Returns whether this call was the first.
    pub async fn mark_launched(&self, sku: &Sku, namespace: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query(
            "UPDATE skus SET launched_at = now() WHERE sku = $1 AND launched_at IS NULL",
        )
        .bind(sku.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        sqlx::query(
            "UPDATE skus SET redis_namespace = $2 \
             WHERE sku = $1 AND redis_namespace IS DISTINCT FROM $2",
        )
        .bind(sku.as_str())
        .bind(namespace)
        .execute(&mut *tx)
        .await?;
        let mut recorded = 0;
        if first && let Some(record) = Self::fetch_sku(&mut *tx, sku).await? {
            recorded = super::outbox::append(
                &mut tx,
                sku,
                vec![Draft {
                    facts: Facts::SaleOpened(sale_facts(&record)),
                    occurred_at: Utc::now(),
                    stream_event: None,
                }],
                self.events,
            )
            .await?;
        }
        self.commit_recorded(tx, recorded).await?;
        Ok(first)
    }

    /// Records that the gate must not sell the SKU until a resync, and why (the first reason is
    /// kept). Returns whether this call recorded it.
    pub async fn require_resync(&self, sku: &Sku, reason: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE skus SET resync_required = $2, resync_required_at = now() \
             WHERE sku = $1 AND resync_required IS NULL",
        )
        .bind(sku.as_str())
        .bind(reason)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Records that a resync is about to pause the sale in Redis (or, with `false`, that it
    /// ended): a resync killed in between leaves the mark for [`Store::paused_by_a_resync`].
    pub async fn mark_resync_pause(&self, sku: &Sku, paused: bool) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE skus SET resync_paused_at = CASE WHEN $2 THEN now() END WHERE sku = $1",
        )
        .bind(sku.as_str())
        .bind(paused)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a resync's pause mark is on `sku` (see [`Self::paused_by_a_resync`]).
    pub async fn resync_pause_marked(&self, sku: &Sku) -> Result<bool, StoreError> {
        let marked: Option<bool> =
            sqlx::query_scalar("SELECT resync_paused_at IS NOT NULL FROM skus WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(marked.unwrap_or(false))
    }

    /// The SKUs a resync paused in Redis and has not (yet) put back: running ones, and ones a
    /// killed resync left paused.
    pub async fn paused_by_a_resync(&self) -> Result<Vec<Sku>, StoreError> {
        let skus: Vec<String> = super::timed(
            "paused_by_a_resync",
            sqlx::query_scalar("SELECT sku FROM skus WHERE resync_paused_at IS NOT NULL")
                .fetch_all(&self.pool),
        )
        .await?;
        skus.iter()
            .map(|sku| Sku::parse(sku).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    /// The SKUs waiting for a resync, with why and since when.
    pub async fn resync_required(
        &self,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        Ok(super::timed(
            "resync_required",
            sqlx::query_as(
                "SELECT sku, resync_required, resync_required_at FROM skus \
                 WHERE resync_required IS NOT NULL ORDER BY sku",
            )
            .fetch_all(&self.pool),
        )
        .await?)
    }

    /// Records that a resync loaded the gate from the sale's Postgres inventory (`record`): the
    /// sale no longer waits for one, and a `stock.changed` with `delta` 0 is a snapshot consumers
    /// can reconcile against.
    pub async fn record_resynced(
        &self,
        record: &SkuRecord,
        namespace: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE skus SET resync_required = NULL, resync_required_at = NULL, \
             redis_namespace = $2 WHERE sku = $1",
        )
        .bind(record.sku.as_str())
        .bind(namespace)
        .execute(&self.pool)
        .await?;
        self.record_events(
            &record.sku,
            vec![Draft {
                facts: Facts::StockChanged(StockChangeFacts {
                    cause: StockCause::Resync,
                    delta: 0,
                    stock: stock_of(record),
                }),
                occurred_at: Utc::now(),
                stream_event: None,
            }],
        )
        .await
    }

    /// The sale and its settlement cursor read in one snapshot: `available` is exactly what
    /// the events up to that cursor left (the settler moves both in one transaction). `None` for
    /// an unknown SKU.
    pub async fn find_sku_at_cursor(
        &self,
        sku: &Sku,
    ) -> Result<Option<(SkuRecord, crate::domain::EventId)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(record) = Self::fetch_sku(&mut *tx, sku).await? else {
            return Ok(None);
        };
        let cursor: String =
            sqlx::query_scalar("SELECT last_event_id FROM settlement_cursor WHERE sku = $1")
                .bind(sku.as_str())
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        let cursor = crate::domain::EventId::parse(&cursor)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some((record, cursor)))
    }

    pub async fn find_sku(&self, sku: &Sku) -> Result<Option<SkuRecord>, StoreError> {
        super::timed("find_sku", Self::fetch_sku(&self.pool, sku)).await
    }

    pub async fn list_skus(&self) -> Result<Vec<SkuRecord>, StoreError> {
        static LIST: LazyLock<String> = LazyLock::new(|| format!("{SELECT_SKU} ORDER BY s.num"));
        let rows: Vec<SkuRow> = sqlx::query_as(LIST.as_str()).fetch_all(&self.pool).await?;
        rows.into_iter().map(SkuRecord::try_from).collect()
    }

    async fn fetch_sku<'e, E>(executor: E, sku: &Sku) -> Result<Option<SkuRecord>, StoreError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        static FETCH: LazyLock<String> = LazyLock::new(|| format!("{SELECT_SKU} WHERE s.sku = $1"));
        let row: Option<SkuRow> = sqlx::query_as(FETCH.as_str())
            .bind(sku.as_str())
            .fetch_optional(executor)
            .await?;
        row.map(SkuRecord::try_from).transpose()
    }
}

fn stock_of(record: &SkuRecord) -> Stock {
    Stock {
        total: record.total,
        available: record.available,
        reserved: record.reserved,
        sold: record.sold,
    }
}

fn sale_facts(record: &SkuRecord) -> SaleFacts {
    SaleFacts {
        state: record.state.as_str().to_owned(),
        stock: stock_of(record),
    }
}

/// The events of a change of the total made in Postgres: `stock.changed`, then `sale.sold_out`
/// or `sale.back_in_stock` when `available` crossed zero. `before` is (total, available), `None`
/// for a new sale.
fn stock_drafts(record: &SkuRecord, before: Option<(i64, i64)>, cause: StockCause) -> Vec<Draft> {
    let now = Utc::now();
    let (total_before, available_before) = before.unwrap_or((0, 0));
    let draft = |facts| Draft {
        facts,
        occurred_at: now,
        stream_event: None,
    };
    let mut drafts = vec![draft(Facts::StockChanged(StockChangeFacts {
        cause,
        delta: record.total - total_before,
        stock: stock_of(record),
    }))];
    if before.is_some() && available_before > 0 && record.available == 0 {
        drafts.push(draft(Facts::SaleSoldOut(sale_facts(record))));
    } else if available_before == 0 && record.available > 0 && before.is_some() {
        drafts.push(draft(Facts::SaleBackInStock(sale_facts(record))));
    }
    drafts
}
