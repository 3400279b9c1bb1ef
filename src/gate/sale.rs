//! A sale in Redis: loading it (`lua/load_sale.lua`), changing it while live
//! (`lua/sale_admin.lua`), and reading it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::contract::{Adjusted, LoadGuard, Loaded, SaleAdmin, StockChange, parse_adjusted};
use super::{Gate, GateError, optional_millis};
use crate::domain::EventId;
use crate::domain::{Currency, IdempotencyKey, Money, SaleDefinition, SaleState, Sku, WaitingRoom};
use crate::store::SkuRecord;

/// The sale's descriptive fields as `meta` stores them.
fn meta_fields(
    name: &str,
    price: &Money,
    currency: &Currency,
    per_buyer_limit: u32,
    hold_ttl_seconds: u32,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
) -> Vec<(&'static str, String)> {
    let millis = |at: Option<DateTime<Utc>>| at.map_or(0, |t| t.timestamp_millis());
    vec![
        ("name", name.to_owned()),
        ("price", price.to_string()),
        ("currency", currency.to_string()),
        ("limit", per_buyer_limit.to_string()),
        ("ttl_s", hold_ttl_seconds.to_string()),
        ("starts_ms", millis(starts_at).to_string()),
        ("ends_ms", millis(ends_at).to_string()),
    ]
}

/// The waiting room's settings as `meta` stores them (read by reserve.lua and the room scripts).
pub fn room_fields(room: WaitingRoom) -> [(&'static str, String); 3] {
    [
        ("room", u8::from(room.enabled).to_string()),
        ("room_rate", room.admit_per_second.to_string()),
        ("room_window_s", room.admission_window_seconds.to_string()),
    ]
}

fn record_meta(record: &SkuRecord) -> Vec<(&'static str, String)> {
    let mut fields = meta_fields(
        &record.name,
        &record.price,
        &record.currency,
        record.per_buyer_limit,
        record.hold_ttl_seconds,
        record.starts_at,
        record.ends_at,
    );
    fields.extend(room_fields(record.waiting_room));
    fields
}

/// The meta fields a sale definition sets (not its state, nor its total: those change apart).
pub fn definition_meta(sale: &SaleDefinition) -> Vec<(&'static str, String)> {
    let mut fields = meta_fields(
        &sale.name,
        &sale.price,
        &sale.currency,
        sale.per_buyer_limit,
        sale.hold_ttl_seconds,
        sale.starts_at,
        sale.ends_at,
    );
    fields.extend(sale.waiting_room.into_iter().flat_map(room_fields));
    fields
}

/// The live view of a sale in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSale {
    pub name: String,
    pub price: Money,
    pub currency: Currency,
    pub per_buyer_limit: u32,
    pub hold_ttl_seconds: u32,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub state: SaleState,
    /// Units a new hold may take right now.
    pub available: i64,
    pub waiting_room: WaitingRoom,
}

/// The room a live sale's `meta` describes (a sale loaded before rooms existed has none).
pub(crate) fn room_from_meta(meta: &HashMap<String, String>) -> WaitingRoom {
    let number = |name: &str, default: u32| {
        meta.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    WaitingRoom {
        enabled: meta.get("room").is_some_and(|v| v == "1"),
        admit_per_second: number("room_rate", WaitingRoom::DEFAULT_ADMIT_PER_SECOND),
        admission_window_seconds: number(
            "room_window_s",
            WaitingRoom::DEFAULT_ADMISSION_WINDOW_SECONDS,
        ),
    }
}

impl Gate {
    /// The sale as Redis serves it, or `None` when it was never pre-warmed.
    pub async fn live_sale(&self, sku: &Sku) -> Result<Option<LiveSale>, GateError> {
        let keys = self.namespace().sku(sku);
        let mut conn = self.connection().await?;
        let (meta, stock): (HashMap<String, String>, Option<i64>) = redis::pipe()
            .hgetall(keys.meta())
            .get(keys.stock())
            .query_async(&mut conn)
            .await?;
        if meta.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            meta.get(name)
                .map(String::as_str)
                .ok_or_else(|| GateError::Protocol(format!("sale {sku}: meta has no {name}")))
        };
        let number = |name: &str| -> Result<i64, GateError> {
            field(name)?.parse().map_err(|_| {
                GateError::Protocol(format!("sale {sku}: meta {name} is not a number"))
            })
        };
        let protocol = |e: crate::domain::ValidationError| GateError::Protocol(e.to_string());
        Ok(Some(LiveSale {
            name: field("name")?.to_owned(),
            price: Money::parse(field("price")?).map_err(protocol)?,
            currency: Currency::parse(field("currency")?).map_err(protocol)?,
            per_buyer_limit: u32::try_from(number("limit")?).unwrap_or(u32::MAX),
            hold_ttl_seconds: u32::try_from(number("ttl_s")?).unwrap_or(u32::MAX),
            starts_at: optional_millis(number("starts_ms")?),
            ends_at: optional_millis(number("ends_ms")?),
            state: SaleState::parse(field("state")?).map_err(protocol)?,
            available: stock.unwrap_or(0),
            waiting_room: room_from_meta(&meta),
        }))
    }

    /// Opens the sale in Redis from its Postgres record: sale metadata, and stock set to
    /// Postgres `available`. A sale already live is refused, unless `force`: then its metadata,
    /// state and total are brought to the record's, through [`Gate::adjust_sale`] — its stock
    /// is never reset, since units held and not yet settled are not in Postgres `available`
    /// and would be sold twice. Returns the stream entry of a stock change, if any.
    #[tracing::instrument(skip_all, fields(sku = %record.sku, force))]
    pub async fn prewarm(
        &self,
        record: &SkuRecord,
        force: bool,
    ) -> Result<Option<EventId>, GateError> {
        match self.load_sale(record, LoadGuard::New).await? {
            Loaded::Done => Ok(None),
            Loaded::Live if force => {
                let total = u32::try_from(record.total).unwrap_or(u32::MAX);
                let mut meta = record_meta(record);
                meta.push(("state", record.state.as_str().to_owned()));
                match self
                    .adjust_sale(&record.sku, StockChange::Total(total), None, &meta)
                    .await?
                {
                    Adjusted::Done { event, .. } => Ok(event),
                    Adjusted::Replayed { .. } => Ok(None),
                    // Unloaded in between: load it afresh.
                    Adjusted::NotLive => Box::pin(self.prewarm(record, false)).await,
                    Adjusted::BelowHeld { total, stock } => Err(GateError::Protocol(format!(
                        "postgres total {} is below the {} units redis has handed out",
                        record.total,
                        total - stock
                    ))),
                }
            }
            Loaded::Live => Err(GateError::SaleLive(record.sku.clone())),
            Loaded::Moved => Err(GateError::Protocol(
                "load_sale.lua answered 'moved' to guard 'new'".into(),
            )),
        }
    }

    /// Changes a live sale with `lua/adjust_sale.lua`: sets `meta` fields and moves its stock
    /// and total, recording a stock change in the stream for the settler. See [`Adjusted`].
    pub async fn adjust_sale(
        &self,
        sku: &Sku,
        change: StockChange,
        operation: Option<&IdempotencyKey>,
        meta: &[(&'static str, String)],
    ) -> Result<Adjusted, GateError> {
        let keys = self.namespace().sku(sku);
        let (mode, units) = change.args();
        let record = operation.map_or_else(|| keys.meta(), |op| keys.admin_operation(op));
        let (channel, announce) = self.announcement(sku);
        let mut conn = self.connection().await?;
        let reply: Vec<String> = self
            .inner
            .scripts
            .adjust_sale
            .key(keys.meta())
            .key(keys.stock())
            .key(keys.events())
            .key(record)
            .arg(mode)
            .arg(units)
            .arg(operation.map_or("", IdempotencyKey::as_str))
            .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
            .key(channel)
            .arg(announce)
            .arg(sku.as_str())
            .arg(meta)
            .invoke_async(&mut conn)
            .await?;
        parse_adjusted(&reply)
    }

    /// Overwrites the sale's metadata and stock from `record`, but only if the SKU's stream
    /// ends exactly at `settled_through` (`None`: the stream is empty) — the settlement cursor
    /// that `record.available` was read at. Then `available` is exactly Redis's stock after the
    /// last event, and no unsettled event is lost. Returns false when the stream has moved on:
    /// drain again and retry.
    pub async fn load_sale_if_drained(
        &self,
        record: &SkuRecord,
        settled_through: Option<EventId>,
    ) -> Result<bool, GateError> {
        Ok(self
            .load_sale(record, LoadGuard::Drained { settled_through })
            .await?
            == Loaded::Done)
    }

    async fn load_sale(&self, record: &SkuRecord, guard: LoadGuard) -> Result<Loaded, GateError> {
        let keys = self.namespace().sku(&record.sku);
        let (channel, announce) = self.announcement(&record.sku);
        let mut conn = self.connection().await?;
        // The number → SKU directory first: a reservation id must be routable as soon as the
        // first hold can be created. It is immutable, so writing it twice is harmless.
        let _: () = conn
            .hset(
                self.namespace().sku_numbers(),
                record.num,
                record.sku.as_str(),
            )
            .await?;
        let mut meta = record_meta(record);
        meta.extend([
            ("num", record.num.to_string()),
            ("total", record.total.to_string()),
            ("state", record.state.as_str().to_owned()),
        ]);
        let (guard, settled_through) = guard.args();
        let reply: String = self
            .inner
            .scripts
            .load_sale
            .key(keys.meta())
            .key(keys.stock())
            .key(keys.events())
            .arg(guard)
            .arg(settled_through)
            .arg(record.available)
            .key(channel)
            .arg(announce)
            .arg(record.sku.as_str())
            .arg(meta)
            .invoke_async(&mut conn)
            .await?;
        Loaded::parse(&reply)
    }

    /// Sets a live sale's state. Returns false when the sale is not live in Redis.
    pub async fn set_state(&self, sku: &Sku, state: SaleState) -> Result<bool, GateError> {
        self.sale_admin(sku, SaleAdmin::State(state)).await
    }

    /// Sets a live sale's waiting room; false when the sale is not live.
    pub async fn set_waiting_room(&self, sku: &Sku, room: WaitingRoom) -> Result<bool, GateError> {
        self.sale_admin(sku, SaleAdmin::Room(room)).await
    }

    /// Stops the sale's new holds until a resync (`lua/halt_sale.lua`): every reserve is refused
    /// `resync_required` while its stream cannot be trusted. Returns whether this call halted it
    /// (false: halted already, or not in Redis at all).
    pub async fn halt_for_resync(&self, sku: &Sku, reason: &str) -> Result<bool, GateError> {
        let keys = self.namespace().sku(sku);
        let (channel, announce) = self.announcement(sku);
        let mut conn = self.connection().await?;
        let halted: i64 = self
            .inner
            .scripts
            .halt_sale
            .key(keys.meta())
            .key(channel)
            .arg(reason)
            .arg(announce)
            .arg(sku.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(halted == 1)
    }

    async fn sale_admin(&self, sku: &Sku, change: SaleAdmin) -> Result<bool, GateError> {
        let (operation, value) = change.args();
        let keys = self.namespace().sku(sku);
        let (channel, announce) = self.announcement(sku);
        let mut conn = self.connection().await?;
        let changed: i64 = self
            .inner
            .scripts
            .sale_admin
            .key(keys.meta())
            .key(keys.stock())
            .arg(operation)
            .arg(value)
            .key(channel)
            .arg(announce)
            .arg(sku.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(changed == 1)
    }

    /// Records a background job's state (JSON), kept for the idempotency TTL.
    pub async fn put_job(&self, sku: &Sku, job: uuid::Uuid, record: &str) -> Result<(), GateError> {
        let mut conn = self.connection().await?;
        let ttl = self.inner.settings.idempotency_ttl.as_secs().max(1);
        let _: () = conn
            .set_ex(self.namespace().sku(sku).resync_job(job), record, ttl)
            .await?;
        Ok(())
    }

    /// Names `job` the SKU's running resync for at most `lease`, unless another is named: then
    /// that one's id.
    pub async fn claim_resync(
        &self,
        sku: &Sku,
        job: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<uuid::Uuid>, GateError> {
        let key = self.namespace().sku(sku).resync_running();
        self.claim_lease(key, job, lease)
            .await?
            .map(|raw| {
                uuid::Uuid::parse_str(&raw)
                    .map_err(|e| GateError::Protocol(format!("running resync {raw:?}: {e}")))
            })
            .transpose()
    }

    /// Forgets `job` as the SKU's running resync (if it still is).
    pub async fn release_resync(&self, sku: &Sku, job: uuid::Uuid) -> Result<(), GateError> {
        self.release_lease(self.namespace().sku(sku).resync_running(), job)
            .await
    }

    /// Takes the sale's change lease for `holder`, for at most `lease`: whether it got it. The
    /// changes and prewarms of one sale read one store and write the other; under the lease,
    /// from any gate or command, they cannot interleave.
    pub async fn claim_sale_change(
        &self,
        sku: &Sku,
        holder: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<bool, GateError> {
        let key = self.namespace().sku(sku).sale_change();
        Ok(self.claim_lease(key, holder, lease).await?.is_none())
    }

    /// Ends `holder`'s change lease of the sale (if it still holds it).
    pub async fn release_sale_change(
        &self,
        sku: &Sku,
        holder: uuid::Uuid,
    ) -> Result<(), GateError> {
        self.release_lease(self.namespace().sku(sku).sale_change(), holder)
            .await
    }

    /// `lua/claim_lease.lua`: `None` when `holder` now holds the lease, else the holder's id.
    async fn claim_lease(
        &self,
        key: String,
        holder: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<String>, GateError> {
        let mut conn = self.connection().await?;
        Ok(self
            .inner
            .scripts
            .claim_lease
            .key(key)
            .arg(holder.to_string())
            .arg(lease.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn release_lease(&self, key: String, holder: uuid::Uuid) -> Result<(), GateError> {
        let mut conn = self.connection().await?;
        let _: i64 = self
            .inner
            .scripts
            .release_lease
            .key(key)
            .arg(holder.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A background job's last recorded state.
    pub async fn job_record(
        &self,
        sku: &Sku,
        job: uuid::Uuid,
    ) -> Result<Option<String>, GateError> {
        let mut conn = self.connection().await?;
        Ok(conn.get(self.namespace().sku(sku).resync_job(job)).await?)
    }

    /// Redis `stock` of the SKU, or `None` when the sale is not loaded.
    pub async fn stock(&self, sku: &Sku) -> Result<Option<i64>, GateError> {
        let mut conn = self.connection().await?;
        Ok(conn.get(self.namespace().sku(sku).stock()).await?)
    }
}
