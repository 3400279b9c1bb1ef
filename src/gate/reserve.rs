//! The reserve decision (`lua/reserve.lua`); its answer is typed in `contract.rs`.

use redis::AsyncCommands;

use super::batch::ReserveCall;
use super::contract::{Refusal, ReserveOutcome, parse_reserve};
use super::scripts::run_script;
use super::{Durability, Gate, GateError};
use crate::domain::{
    BuyerId, ClientAddr, HoldMetadata, HoldReference, IdempotencyKey, Quantity, ReservationId, Sku,
    Ticket,
};

/// One buyer's request for a hold.
#[derive(Debug, Clone, Copy)]
pub struct ReserveRequest<'a> {
    pub sku: &'a Sku,
    pub buyer: &'a BuyerId,
    pub quantity: Quantity,
    pub idempotency_key: &'a IdempotencyKey,
    /// The client the request came from, if known (counted by `FLASHGATE_HOLDS_PER_CLIENT*`).
    pub client: Option<ClientAddr>,
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
        // Every reserve sends this: written without `format!`, which grew its buffer twice.
        let mut plain = String::with_capacity(sku.as_str().len() + 11);
        plain.push_str(sku.as_str());
        plain.push('|');
        plain.push_str(itoa::Buffer::new().format(quantity.get()));
        return plain;
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
            shortcut_answers().increment(1);
            return Ok(ReserveOutcome::Refused(Refusal::SoldOut { available: 0 }));
        }
        // Boxed: the Redis path's future is large, and every caller's future holds this one, so
        // unboxed it was copied whole at each `.await` up to the handler even for the shortcut.
        Box::pin(self.decide(req)).await
    }

    /// Decides in Redis what the shortcut could not.
    async fn decide(&self, req: ReserveRequest<'_>) -> Result<ReserveOutcome, GateError> {
        let epoch = self.inner.shortcut.epoch();
        let Some(number) = self.sku_number(req.sku).await? else {
            return Ok(ReserveOutcome::Refused(Refusal::UnknownSku));
        };
        let id = self.mint_id(number);
        let client_tiers = self.client_tiers(&req);
        let call = self.reserve_call(&req, id, client_tiers.as_deref());
        let decided = if self.batches_reserves() {
            match self.decide_batched(req.sku, call).await {
                Ok(reply) => parse_reserve(
                    &reply,
                    req,
                    client_tiers.as_deref(),
                    self.inner.settings.buyer_rate,
                    self.inner.settings.hold_quota,
                ),
                Err(err) => Err(err),
            }
        } else {
            self.decide_alone(req, client_tiers.as_deref(), call).await
        };
        let outcome = decided?;
        if outcome == ReserveOutcome::Refused(Refusal::SoldOut { available: 0 })
            && self.inner.shortcut.enabled()
            && !self.inner.shortcut.is_on(req.sku)
        {
            self.turn_on_shortcut(req.sku, epoch).await;
        }
        Ok(outcome)
    }

    /// The tiers the request's client is counted at, when a cap counts it: formatted only then
    /// (most sales have no cap, and the sold-out shortcut answers before this).
    pub(super) fn client_tiers(&self, req: &ReserveRequest<'_>) -> Option<String> {
        if !self.inner.settings.holds_per_client.is_on() {
            return None;
        }
        req.client.map(ClientAddr::tiers)
    }

    /// The keys and arguments of `lua/reserve.lua` for one request (see its header): the fixed
    /// ones, then only the optional groups this request's checks use.
    pub(super) fn reserve_call(
        &self,
        req: &ReserveRequest<'_>,
        id: ReservationId,
        client_tiers: Option<&str>,
    ) -> ReserveCall {
        let settings = &self.inner.settings;
        let keys = self.namespace().sku(req.sku);
        let mut call = ReserveCall {
            keys: Vec::with_capacity(16),
            args: Vec::with_capacity(19),
        };
        call.keys.extend([
            keys.meta(),
            keys.stock(),
            keys.buyer(req.buyer),
            keys.idempotency(req.buyer, req.idempotency_key),
            keys.hold(id),
            keys.holds(),
            keys.events(),
            keys.buyers(),
        ]);
        call.args.extend([
            id.encode(&mut ReservationId::text_buffer()).to_owned(),
            req.buyer.as_str().to_owned(),
            req.quantity.get().to_string(),
            req.fingerprint(),
            settings.idempotency_ttl.as_secs().max(1).to_string(),
            req.idempotency_key.as_str().to_owned(),
            req.sku.as_str().to_owned(),
            u8::from(settings.durability != Durability::Master).to_string(),
            // The letters of the optional groups that follow (`ReserveCall::add_group`).
            String::new(),
        ]);
        if let Some(rate) = settings.buyer_rate {
            call.add_group(
                'r',
                [keys.rate_limit(req.buyer)],
                [
                    rate.emission_interval_us().to_string(),
                    rate.burst.to_string(),
                ],
            );
        }
        if let Some(quota) = settings.hold_quota {
            call.add_group(
                'q',
                [keys.hold_quota(req.buyer)],
                [
                    quota.holds.to_string(),
                    (quota.window.as_millis().max(1) as u64).to_string(),
                ],
            );
        }
        let caps = settings.holds_per_client;
        if caps.is_on() {
            call.add_group(
                'c',
                keys.client_counters(client_tiers),
                [
                    client_tiers.unwrap_or("").to_owned(),
                    caps.per_client.to_string(),
                    caps.per_56.to_string(),
                    caps.per_48.to_string(),
                ],
            );
        }
        if let Some(ticket) = req.ticket {
            call.add_group(
                't',
                [keys.room(), keys.room_admits(), keys.room_used()],
                [ticket.position.to_string()],
            );
        }
        if req.reference.is_some() || req.metadata.is_some() {
            call.add_group(
                'o',
                [],
                [
                    req.reference.map_or("", HoldReference::as_str).to_owned(),
                    req.metadata.map_or("", HoldMetadata::as_str).to_owned(),
                ],
            );
        }
        call
    }

    /// One `reserve.lua` call for this request alone, on the connection durability asks for:
    /// with `FLASHGATE_DURABILITY=replica`, a connection of its own that then `WAIT`s.
    async fn decide_alone(
        &self,
        req: ReserveRequest<'_>,
        client_tiers: Option<&str>,
        call: ReserveCall,
    ) -> Result<ReserveOutcome, GateError> {
        let (mut conn, dedicated) = self.dedicated_connection().await?;
        let decided = async {
            let reserve = &self.inner.scripts.reserve;
            let reply: String = run_script(reserve, &call.command(reserve), &mut conn).await?;
            let outcome = parse_reserve(
                &reply,
                req,
                client_tiers,
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
                let stock = self.namespace().sku(req.sku).stock();
                let replicas = conn.wait_for_replicas(&stock, 1, timeout).await?;
                if replicas < 1 {
                    metrics::counter!("flashgate_not_replicated_total").increment(1);
                    return Err(GateError::NotReplicated);
                }
            }
            Ok(outcome)
        }
        .await;
        if let Err(err) = &decided {
            super::connection::DedicatedPool::discard_if_broken(dedicated, err);
        }
        decided
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

/// `flashgate_sold_out_shortcut_total`, registered once: registering it on every shortcut answer
/// looked its name up in the recorder's registry each time (~370 instructions of ~52k).
fn shortcut_answers() -> &'static metrics::Counter {
    static ANSWERS: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    ANSWERS.get_or_init(|| metrics::counter!("flashgate_sold_out_shortcut_total"))
}
