//! The reserve decision (`lua/reserve.lua`); its answer is typed in `contract.rs`.

use redis::AsyncCommands;

use super::contract::{Refusal, ReserveOutcome, parse_reserve};
use super::{Durability, Gate, GateError};
use crate::domain::{BuyerId, HoldMetadata, HoldReference, IdempotencyKey, Quantity, Sku, Ticket};

/// One buyer's request for a hold.
#[derive(Debug, Clone, Copy)]
pub struct ReserveRequest<'a> {
    pub sku: &'a Sku,
    pub buyer: &'a BuyerId,
    pub quantity: Quantity,
    pub idempotency_key: &'a IdempotencyKey,
    /// The client the request came from, as the tiers it is counted at (for
    /// `FLASHGATE_HOLDS_PER_CLIENT*`: an IPv4 address, or an IPv6 /64, /56 and /48, narrowest
    /// first and space-separated), if known.
    pub client: Option<&'a str>,
    /// The caller's reference (its cart or order id), kept with the hold.
    pub reference: Option<&'a HoldReference>,
    /// The caller's metadata, kept with the hold.
    pub metadata: Option<&'a HoldMetadata>,
    /// The caller's place in the sale's waiting room, its ticket already verified.
    pub ticket: Option<Ticket>,
}

impl ReserveRequest<'_> {
    fn fingerprint(&self) -> String {
        fingerprint(self.sku, self.quantity, self.reference, self.metadata)
    }
}

/// What makes two requests under one idempotency key "the same request": the SKU, the quantity,
/// and the caller's reference and metadata. Without either it is `sku|quantity`, as before they
/// existed, so idempotency records written then still match; with them a SHA-256 of both is
/// appended (a reference has no control characters, so the newline separates them unambiguously).
pub fn fingerprint(
    sku: &Sku,
    quantity: Quantity,
    reference: Option<&HoldReference>,
    metadata: Option<&HoldMetadata>,
) -> String {
    use sha2::{Digest, Sha256};
    if reference.is_none() && metadata.is_none() {
        return format!("{sku}|{}", quantity.get());
    }
    let mut hash = Sha256::new();
    hash.update(reference.map_or("", HoldReference::as_str));
    hash.update("\n");
    hash.update(metadata.map_or("", HoldMetadata::as_str));
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{sku}|{}|{digest}", quantity.get())
}

impl Gate {
    /// Decides one reservation with `lua/reserve.lua`: one round trip for a known SKU.
    #[tracing::instrument(skip_all, fields(sku = %req.sku, buyer = %req.buyer))]
    pub async fn reserve(&self, req: ReserveRequest<'_>) -> Result<ReserveOutcome, GateError> {
        if self.inner.shortcut.refuses(req.sku, req.buyer) {
            metrics::counter!("flashgate_sold_out_shortcut_total").increment(1);
            return Ok(ReserveOutcome::Refused(Refusal::SoldOut { available: 0 }));
        }
        let epoch = self.inner.shortcut.epoch();
        let Some(number) = self.sku_number(req.sku).await? else {
            return Ok(ReserveOutcome::Refused(Refusal::UnknownSku));
        };
        let id = self.mint_id(number);
        let keys = self.namespace().sku(req.sku);
        let (interval_us, burst) = match self.inner.settings.buyer_rate {
            Some(rate) => (rate.emission_interval_us(), rate.burst),
            None => (0, 0),
        };
        let client = req.client.unwrap_or("");
        let [client_key, client56_key, client48_key] = keys.client_counters(req.client);
        let caps = self.inner.settings.holds_per_client;
        let quota = self.inner.settings.hold_quota;
        let (mut conn, dedicated) = self.dedicated_connection().await?;
        let decided = async {
            let reply: Vec<String> = self
                .inner
                .scripts
                .reserve
                .key(keys.meta())
                .key(keys.stock())
                .key(keys.buyer(req.buyer))
                .key(keys.idempotency(req.buyer, req.idempotency_key))
                .key(keys.rate_limit(req.buyer))
                .key(keys.hold(id))
                .key(keys.holds())
                .key(keys.events())
                .key(keys.buyers())
                .key(client_key)
                .key(keys.hold_quota(req.buyer))
                .key(client56_key)
                .key(client48_key)
                .key(keys.room())
                .key(keys.room_admits())
                .key(keys.room_used())
                .arg(id.to_string())
                .arg(req.buyer.as_str())
                .arg(req.quantity.get())
                .arg(req.fingerprint())
                .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
                .arg(interval_us)
                .arg(burst)
                .arg(req.idempotency_key.as_str())
                .arg(req.sku.as_str())
                .arg(client)
                .arg(caps.per_client)
                .arg(u8::from(
                    self.inner.settings.durability != Durability::Master,
                ))
                .arg(quota.map_or(0, |q| q.holds))
                .arg(quota.map_or(0, |q| q.window.as_millis().max(1) as u64))
                .arg(caps.per_56)
                .arg(caps.per_48)
                .arg(req.reference.map_or("", HoldReference::as_str))
                .arg(req.metadata.map_or("", HoldMetadata::as_str))
                .arg(req.ticket.map_or(0, |t| t.position))
                .invoke_async(&mut conn)
                .await?;
            let outcome = parse_reserve(
                &reply,
                req,
                self.inner.settings.buyer_rate,
                self.inner.settings.hold_quota,
            )?;
            if let Durability::Replica { timeout } = self.inner.settings.durability
                && matches!(
                    outcome,
                    ReserveOutcome::Created(_) | ReserveOutcome::Replayed(_)
                )
            {
                // WAIT covers every write this connection sent before it, the decision included
                // (a replay wrote too, see reserve.lua), so 1 means a replica has the hold.
                let replicas = conn.wait_for_replicas(&keys.stock(), 1, timeout).await?;
                if replicas < 1 {
                    metrics::counter!("flashgate_not_replicated_total").increment(1);
                    return Err(GateError::NotReplicated);
                }
            }
            Ok(outcome)
        }
        .await;
        let outcome = match decided {
            Ok(outcome) => outcome,
            Err(err) => {
                super::connection::DedicatedPool::discard_if_broken(dedicated, &err);
                return Err(err);
            }
        };
        if outcome == ReserveOutcome::Refused(Refusal::SoldOut { available: 0 })
            && self.inner.shortcut.enabled()
            && !self.inner.shortcut.is_on(req.sku)
        {
            self.turn_on_shortcut(req.sku, epoch).await;
        }
        Ok(outcome)
    }

    /// Loads the SKU's buyers and turns the sold-out shortcut on, unless anything changed since
    /// `epoch` (read before the request that found the SKU sold out). Best effort: on failure
    /// the shortcut simply stays off.
    async fn turn_on_shortcut(&self, sku: &Sku, epoch: u64) {
        // One load per SKU at a time: at the moment of sell-out a crowd sees `sold_out` at once.
        let Some(_loading) = self.inner.shortcut.begin_load(sku) else {
            return;
        };
        if !self.inner.shortcut.subscribed(sku).await {
            return;
        }
        let loaded: Result<std::collections::HashSet<String>, GateError> = async {
            let mut conn = self.connection().await?;
            Ok(conn.smembers(self.namespace().sku(sku).buyers()).await?)
        }
        .await;
        match loaded {
            Ok(buyers) => self.inner.shortcut.turn_on(sku, buyers, epoch),
            Err(err) => tracing::debug!(sku = %sku, error = %err, "sold-out shortcut stays off"),
        }
    }
}
