//! A sale in Redis: loading it (`lua/load_sale.lua`), changing it while live
//! (`lua/sale_admin.lua`), and reading it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::{Gate, GateError, optional_millis};
use crate::domain::{Currency, Money, SaleState, Sku};
use crate::store::SkuRecord;

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
        }))
    }

    /// Opens the sale in Redis from its Postgres record: sale metadata, and stock set to
    /// Postgres `available`. Refuses to overwrite a live sale unless `force`.
    #[tracing::instrument(skip_all, fields(sku = %record.sku, force))]
    pub async fn prewarm(&self, record: &SkuRecord, force: bool) -> Result<(), GateError> {
        match self
            .load_sale(record, if force { "force" } else { "new" }, "")
            .await?
            .as_str()
        {
            "ok" => Ok(()),
            "live" => Err(GateError::SaleLive(record.sku.clone())),
            other => Err(GateError::Protocol(format!("load_sale answered {other:?}"))),
        }
    }

    /// Loads the sale like [`Gate::prewarm`] with `force`, but only if the SKU's stream still
    /// ends at `last_event` (`None`: empty), i.e. nothing happened since the caller drained it.
    /// Returns false when an event slipped in: drain again and retry.
    pub async fn load_sale_if_drained(
        &self,
        record: &SkuRecord,
        last_event: Option<&str>,
    ) -> Result<bool, GateError> {
        Ok(self
            .load_sale(record, "drained", last_event.unwrap_or(""))
            .await?
            == "ok")
    }

    async fn load_sale(
        &self,
        record: &SkuRecord,
        guard: &str,
        last_event: &str,
    ) -> Result<String, GateError> {
        let keys = self.namespace().sku(&record.sku);
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
        let millis = |at: Option<DateTime<Utc>>| at.map_or(0, |t| t.timestamp_millis());
        Ok(self
            .inner
            .scripts
            .load_sale
            .key(keys.meta())
            .key(keys.stock())
            .key(keys.events())
            .arg(guard)
            .arg(last_event)
            .arg(record.available)
            .arg(self.namespace().sale_changed_channel())
            .arg(record.sku.as_str())
            .arg(&[
                ("num", record.num.to_string()),
                ("name", record.name.clone()),
                ("price", record.price.to_string()),
                ("currency", record.currency.to_string()),
                ("limit", record.per_buyer_limit.to_string()),
                ("ttl_s", record.hold_ttl_seconds.to_string()),
                ("starts_ms", millis(record.starts_at).to_string()),
                ("ends_ms", millis(record.ends_at).to_string()),
                ("state", record.state.as_str().to_owned()),
            ])
            .invoke_async(&mut conn)
            .await?)
    }

    /// Adds `units` to a live sale's stock. Returns false when the sale is not live in Redis.
    pub async fn restock(&self, sku: &Sku, units: u32) -> Result<bool, GateError> {
        self.sale_admin(sku, "restock", units.to_string()).await
    }

    /// Sets a live sale's state. Returns false when the sale is not live in Redis.
    pub async fn set_state(&self, sku: &Sku, state: SaleState) -> Result<bool, GateError> {
        self.sale_admin(sku, "state", state.as_str().to_owned())
            .await
    }

    async fn sale_admin(
        &self,
        sku: &Sku,
        operation: &str,
        value: String,
    ) -> Result<bool, GateError> {
        let keys = self.namespace().sku(sku);
        let mut conn = self.connection().await?;
        let changed: i64 = self
            .inner
            .scripts
            .sale_admin
            .key(keys.meta())
            .key(keys.stock())
            .arg(operation)
            .arg(value)
            .arg(self.namespace().sale_changed_channel())
            .arg(sku.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(changed == 1)
    }

    /// Redis `stock` of the SKU, or `None` when the sale is not loaded.
    pub async fn stock(&self, sku: &Sku) -> Result<Option<i64>, GateError> {
        let mut conn = self.connection().await?;
        Ok(conn.get(self.namespace().sku(sku).stock()).await?)
    }
}
