//! Changing a sale: create or update, restock, prewarm, pause and resume.

use super::App;
use crate::domain::{EventId, IdempotencyKey, SaleDefinition, SaleState, Sku, WaitingRoom};
use crate::gate::{Adjusted, GateError, StockChange, definition_meta};
use crate::settler::SettleError;
use crate::store::{SkuRecord, StoreError};

/// Why a sale could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    #[error("no SKU {0}")]
    UnknownSku(Sku),
    #[error("stock {requested} is below the {committed} units already held or sold")]
    StockBelowCommitted { requested: u32, committed: i64 },
    #[error(transparent)]
    Gate(#[from] GateError),
    /// Includes the store's own `StockBelowCommitted` for a sale not live in Redis.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error(transparent)]
    NamespaceMismatch(#[from] super::NamespaceMismatch),
    /// Another change or prewarm of the sale held it longer than this one could wait.
    #[error("another change of sale {0} is under way; retry shortly")]
    ChangeUnderWay(Sku),
}

/// Longest a change of a sale waits for the one before it.
const CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a change of a sale may hold the sale before the next may start (its holder died):
/// past every timeout a change runs under.
const CHANGE_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// A sale as the caller sees it after a change: its Postgres record, and whether it is live in
/// Redis.
#[derive(Debug, Clone)]
pub struct SaleChanged {
    pub record: SkuRecord,
    pub live: bool,
}

/// Changing a sale.
impl App<'_> {
    /// Creates a sale, or changes it — live or not — to `sale` (its `stock` is the new total).
    ///
    /// Order: 1. Redis, if the sale is live there: `adjust_sale.lua` sets the metadata and moves
    /// stock and total to the target in one atomic decision, refused (nothing written) when the
    /// new total is below the units already held or sold, and records the stock change in the
    /// SKU's stream. 2. Postgres: the sale's row; for a sale not live in Redis also the
    /// inventory total (checked against what is reserved and sold). 3. The settler applies the
    /// stream up to the stock change, so the answer shows Postgres's new total.
    ///
    /// Retry: every value is an absolute target, so running it again moves nothing more.
    /// A timeout: the change may or may not be made in either store; send the same request again.
    pub async fn upsert(&self, sku: &Sku, sale: &SaleDefinition) -> Result<SaleChanged, SaleError> {
        self.serialised(sku, async {
            // A definition without a room keeps the sale's; a new sale takes the default.
            let mut sale = sale.clone();
            if sale.waiting_room.is_none() {
                sale.waiting_room = Some(match self.store.find_sku(sku).await? {
                    Some(record) => record.waiting_room,
                    None => self.gate.settings().waiting_room.default_room,
                });
            }
            let sale = &sale;
            let adjusted = self
                .gate
                .adjust_sale(
                    sku,
                    StockChange::Total(sale.stock),
                    None,
                    &definition_meta(sale),
                )
                .await?;
            let (live, event) = match adjusted {
                Adjusted::NotLive => (false, None),
                Adjusted::BelowHeld { total, stock } => {
                    return Err(SaleError::StockBelowCommitted {
                        requested: sale.stock,
                        committed: total - stock,
                    });
                }
                Adjusted::Done { event, .. } => (true, event),
                Adjusted::Replayed { .. } => (true, None),
            };
            self.store.upsert_sku(sku, sale, !live).await?;
            self.settled_view(sku, live, event).await
        })
        .await
    }

    /// Adds `units` to the sale.
    ///
    /// Live in Redis: `adjust_sale.lua` adds them to stock and total and records the change in
    /// the stream (1), the settler applies it to Postgres (2). Under an `operation` key the first
    /// result is remembered for the idempotency TTL, so a retry after a timeout answers it again
    /// instead of adding the units twice. Not live: Postgres alone, one conditional update —
    /// not idempotent; to be retry-safe there, send the new total with [`App::upsert`].
    ///
    /// A timeout: with a key, retry with the same key; without one, read the sale before retrying.
    pub async fn restock(
        &self,
        sku: &Sku,
        units: u32,
        operation: Option<&IdempotencyKey>,
    ) -> Result<SaleChanged, SaleError> {
        self.serialised(sku, async {
            match self
                .gate
                .adjust_sale(sku, StockChange::Add(units), operation, &[])
                .await?
            {
                Adjusted::NotLive => {
                    let record = self
                        .store
                        .restock(sku, units)
                        .await?
                        .ok_or_else(|| SaleError::UnknownSku(sku.clone()))?;
                    Ok(SaleChanged {
                        record,
                        live: false,
                    })
                }
                Adjusted::Done { event, .. } => self.settled_view(sku, true, event).await,
                Adjusted::Replayed { .. } => self.settled_view(sku, true, None).await,
                // Adding units cannot take stock below zero: the script broke its contract.
                Adjusted::BelowHeld { .. } => Err(SaleError::Gate(GateError::Protocol(
                    "adjust_sale.lua refused an addition".into(),
                ))),
            }
        })
        .await
    }

    /// Opens the sale in Redis from Postgres (`flashgate prewarm`).
    ///
    /// A sale not yet live is loaded with stock = Postgres `available`. A live one is refused
    /// (`SaleLive`) unless `force`; forced, its metadata, state and total are brought to
    /// Postgres's through `adjust_sale.lua` and its stock is never reset — units held but not
    /// yet settled are missing from Postgres `available` and would be sold twice.
    ///
    /// A sale launched in another Redis namespace is refused (`NamespaceMismatch`) unless
    /// `force`: from this namespace it looks never loaded, and a second live copy would sell its
    /// units twice.
    ///
    /// Order: 1. Redis loads the sale, 2. Postgres records that it was launched, and in which
    /// namespace (the first time, with its `sale.opened` event). Retry: loading is refused once
    /// live, and a forced load is an absolute target; a refused load still records the launch,
    /// so a retry after a timeout between the two steps completes it.
    pub async fn prewarm(&self, sku: &Sku, force: bool) -> Result<SaleChanged, SaleError> {
        self.serialised(sku, async {
            let record = self
                .store
                .find_sku(sku)
                .await?
                .ok_or_else(|| SaleError::UnknownSku(sku.clone()))?;
            super::same_namespace(&record, self.gate, force)?;
            let loaded = self.gate.prewarm(&record, force).await;
            if matches!(loaded, Ok(_) | Err(GateError::SaleLive(_))) {
                self.store
                    .mark_launched(sku, self.gate.namespace().as_str())
                    .await?;
            }
            let event = loaded?;
            self.settled_view(sku, true, event).await
        })
        .await
    }

    /// Pauses (new holds refused `sale_paused`; existing holds may still be paid or released)
    /// or resumes the sale.
    ///
    /// Order: 1. Postgres records the state (what a resync or a prewarm loads later), 2. Redis,
    /// if the sale is live there, switches at once (`sale_admin.lua`, which also drops every
    /// gate's sold-out shortcut). Retry: the state is an absolute target. A timeout: Postgres
    /// may have the state and Redis not yet; send it again.
    /// Sets the sale's waiting room (validated) in both stores, Postgres first: a prewarm loads
    /// it from there.
    pub async fn set_waiting_room(
        &self,
        sku: &Sku,
        room: WaitingRoom,
    ) -> Result<SaleChanged, SaleError> {
        self.serialised(sku, async {
            let record = self
                .store
                .set_waiting_room(sku, room)
                .await?
                .ok_or_else(|| SaleError::UnknownSku(sku.clone()))?;
            let live = self.gate.set_waiting_room(sku, room).await?;
            Ok(SaleChanged { record, live })
        })
        .await
    }

    pub async fn set_state(&self, sku: &Sku, state: SaleState) -> Result<SaleChanged, SaleError> {
        self.serialised(sku, async {
            let record = self
                .store
                .set_sale_state(sku, state)
                .await?
                .ok_or_else(|| SaleError::UnknownSku(sku.clone()))?;
            let live = self.gate.set_state(sku, state).await?;
            Ok(SaleChanged { record, live })
        })
        .await
    }

    /// Runs one change of the sale under its change lease (`Gate::claim_sale_change`): a
    /// prewarm reads Postgres and loads Redis, a change asks Redis whether the sale is live and
    /// then writes Postgres alone if not. Interleaved, a prewarm loaded what it read before the
    /// change committed: a test saw Redis selling 10 units of a sale Postgres had cut to 4.
    /// Waits up to [`CHANGE_WAIT`] for the change before it (else 503, retry); the lease lapses
    /// after [`CHANGE_LEASE`] if its holder died.
    async fn serialised<T>(
        &self,
        sku: &Sku,
        change: impl std::future::Future<Output = Result<T, SaleError>>,
    ) -> Result<T, SaleError> {
        let holder = uuid::Uuid::new_v4();
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        while !self
            .gate
            .claim_sale_change(sku, holder, CHANGE_LEASE)
            .await?
        {
            if started.elapsed() > CHANGE_WAIT {
                return Err(SaleError::ChangeUnderWay(sku.clone()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
        let changed = change.await;
        if let Err(err) = self.gate.release_sale_change(sku, holder).await {
            tracing::warn!(sku = %sku, error = %err, "cannot end the sale's change lease; it lapses");
        }
        changed
    }

    /// The sale's Postgres record once the settler has applied `event` (when given).
    async fn settled_view(
        &self,
        sku: &Sku,
        live: bool,
        event: Option<EventId>,
    ) -> Result<SaleChanged, SaleError> {
        if let Some(event) = event {
            self.settler.settle_through(sku, event).await?;
        }
        let record = self
            .store
            .find_sku(sku)
            .await?
            .ok_or_else(|| SaleError::UnknownSku(sku.clone()))?;
        Ok(SaleChanged { record, live })
    }
}
