//! A hold's life in Redis: lookup, transitions (`lua/transition.lua`), the expiry sweep,
//! Postgres refusals written back (`lua/reject.lua`), restoration after data loss
//! (`lua/restore_hold.lua`), and the audit's scan.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use rust_decimal::Decimal;

use super::contract::{
    Mover, Restored, Transition, TransitionOutcome, parse_due_holds, parse_reject, parse_restore,
    parse_transition,
};
use super::{Gate, GateError, fingerprint, millis};
use crate::domain::{
    BuyerId, Currency, HoldMetadata, HoldReference, IdempotencyKey, Money, Quantity, ReservationId,
    ReservationStatus, Sku,
};

/// A hold as Redis knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: ReservationId,
    pub sku: Sku,
    pub buyer: BuyerId,
    pub idempotency_key: IdempotencyKey,
    pub quantity: Quantity,
    pub unit_price: Money,
    pub currency: Currency,
    pub status: ReservationStatus,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The client address whose live holds this one counts against, when that is limited.
    pub client: Option<String>,
    /// The caller's reference (its cart or order id), if it gave one.
    pub reference: Option<HoldReference>,
    /// The caller's metadata, if it gave any.
    pub metadata: Option<HoldMetadata>,
}

impl Hold {
    /// The exact amount due: unit price × quantity, never rounded.
    pub fn total(&self) -> Decimal {
        self.unit_price.times(self.quantity)
    }

    /// How long the hold lives, from its creation to its deadline — both read from the Redis
    /// clock that decided it, so the span holds whatever this process's clock says.
    pub fn lifetime(&self) -> Duration {
        (self.expires_at - self.created_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// What one expiry call did on a SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Holds past their deadline that the call looked at (at most its limit).
    pub due: usize,
    /// Of those, the ones this call expired (another sweeper, a commit or a release may have
    /// moved the others first).
    pub expired: usize,
    /// When the SKU's next hold falls due, from the call on; `None` when it has none left.
    pub next_due_in: Option<Duration>,
}

/// A hold Postgres refused, as the write-back needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedHold {
    pub id: ReservationId,
    pub buyer: BuyerId,
    pub idempotency_key: IdempotencyKey,
    pub quantity: Quantity,
    /// Postgres has the units the hold took from Redis stock (it was refused as a duplicate
    /// idempotency key, not for stock): the write-back gives them back to Redis.
    pub units_back: bool,
}

/// A hold's eight fixed fields as `lua/hold.lua` packs them into one value, a newline between
/// each: the hold hash's `hold` field and its `reserved` stream entry's. In [`Self::NAMES`]'
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PackedHold<'a>(pub [&'a str; 8]);

impl<'a> PackedHold<'a> {
    /// The name of the field that carries it, in the hash and in the stream entry.
    pub const FIELD: &'static str = "hold";
    /// The names an earlier version wrote the fields under, one by one, in the packed order.
    pub const NAMES: [&'static str; 8] = [
        "id", "buyer", "idem", "q", "price", "cur", "created", "expires",
    ];

    /// `None` unless `packed` has exactly eight values.
    pub fn parse(packed: &'a str) -> Option<Self> {
        let mut values = packed.split('\n');
        let mut hold = [""; 8];
        for value in &mut hold {
            *value = values.next()?;
        }
        values.next().is_none().then_some(Self(hold))
    }

    /// The value an earlier version wrote under `name`.
    fn field(&self, name: &str) -> Option<&'a str> {
        let at = Self::NAMES.iter().position(|known| *known == name)?;
        Some(self.0[at])
    }
}

/// `HMGET hold status hold q buyer idem`: the packed fields, or an earlier version's own.
type HoldFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The summary of the hold under `key`, or `None` when the key is gone: a terminal hold whose
/// TTL ran out between the scan that listed it and the read (an audit or resync must skip it,
/// not fail on it).
fn summary_of(prefix: &str, key: &str, row: HoldFields) -> Result<Option<HoldSummary>, GateError> {
    let bad = || GateError::Protocol(format!("hold key {key} is malformed"));
    let (status, quantity, buyer, idempotency_key) = match &row {
        (None, None, None, None, None) => return Ok(None),
        (Some(status), Some(packed), ..) => {
            let PackedHold([_, buyer, idem, q, ..]) = PackedHold::parse(packed).ok_or_else(bad)?;
            (status, q, buyer, idem)
        }
        (Some(status), None, Some(quantity), Some(buyer), Some(idempotency_key)) => (
            status,
            quantity.as_str(),
            buyer.as_str(),
            idempotency_key.as_str(),
        ),
        _ => return Err(bad()),
    };
    let quantity = quantity.parse().map_err(|_| bad())?;
    let (buyer, idempotency_key) = (buyer.to_owned(), idempotency_key.to_owned());
    Ok(Some(HoldSummary {
        id: key
            .strip_prefix(prefix)
            .and_then(|raw| ReservationId::parse(raw).ok())
            .ok_or_else(bad)?,
        status: ReservationStatus::parse(status).map_err(|_| bad())?,
        quantity,
        buyer,
        idempotency_key,
    }))
}

/// A hold's state as the audit reads it from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldSummary {
    pub id: ReservationId,
    pub status: ReservationStatus,
    pub quantity: u32,
    pub buyer: String,
    pub idempotency_key: String,
}

impl Hold {
    /// A hold from its Redis fields — the hold hash (`HGETALL`) or the answer `reserve.lua`
    /// gives, which uses the same field names. The one way a hold is read from Redis. The fixed
    /// fields come packed in `hold` ([`PackedHold`]), or one by one from an earlier version.
    pub(super) fn from_redis<'a>(
        id: ReservationId,
        sku: Sku,
        field: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, GateError> {
        let packed = match field(PackedHold::FIELD) {
            Some(packed) => Some(PackedHold::parse(packed).ok_or_else(|| {
                GateError::Protocol(format!("hold {id}: its packed fields are not eight"))
            })?),
            None => None,
        };
        let field = |name: &str| packed.and_then(|p| p.field(name)).or_else(|| field(name));
        let required = |name: &str| {
            field(name).ok_or_else(|| GateError::Protocol(format!("hold {id} has no {name}")))
        };
        let protocol = |e: crate::domain::ValidationError| GateError::Protocol(e.to_string());
        Ok(Self {
            id,
            sku,
            buyer: BuyerId::parse(required("buyer")?).map_err(protocol)?,
            idempotency_key: IdempotencyKey::from_decoded(required("idem")?.to_owned())
                .map_err(protocol)?,
            quantity: Quantity::parse(
                required("q")?
                    .parse()
                    .map_err(|_| GateError::Protocol(format!("hold {id}: q")))?,
            )
            .map_err(protocol)?,
            unit_price: Money::parse(required("price")?).map_err(protocol)?,
            currency: Currency::parse(required("cur")?).map_err(protocol)?,
            status: ReservationStatus::parse(required("status")?).map_err(protocol)?,
            created_at: millis(required("created")?)?,
            expires_at: millis(required("expires")?)?,
            client: field("client").filter(|c| !c.is_empty()).map(str::to_owned),
            reference: field("ref")
                .map(HoldReference::parse)
                .transpose()
                .map_err(protocol)?,
            metadata: field("meta")
                .map(HoldMetadata::from_stored)
                .transpose()
                .map_err(protocol)?,
        })
    }

    /// A hold from its Postgres record (resync puts a lost hold back from it). Postgres does
    /// not record the client address: such a hold counts against no client.
    pub fn from_record(
        sku: Sku,
        row: crate::store::StoredReservation,
    ) -> Result<Self, crate::domain::ValidationError> {
        Ok(Self {
            id: ReservationId::from_uuid(row.id),
            sku,
            buyer: BuyerId::parse(&row.buyer_id)?,
            idempotency_key: IdempotencyKey::from_decoded(row.idempotency_key)?,
            quantity: Quantity::parse(i64::from(row.quantity))?,
            unit_price: Money::new(row.unit_price)?,
            currency: Currency::parse(&row.currency)?,
            status: ReservationStatus::parse(&row.status)?,
            created_at: row.created_at,
            expires_at: row.expires_at,
            client: None,
            reference: row
                .reference
                .as_deref()
                .map(HoldReference::parse)
                .transpose()?,
            metadata: row
                .metadata
                .as_deref()
                .map(HoldMetadata::from_stored)
                .transpose()?,
        })
    }
}

/// How long Redis keeps a released or expired hold's record once Postgres has it: a retry or a
/// read right after the release is still answered from Redis; later ones from Postgres.
pub const SETTLED_HOLD_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl Gate {
    /// Shortens to [`SETTLED_HOLD_GRACE`] what Redis keeps of these holds, which Postgres has
    /// moved out of `held` (released or expired): their records would otherwise stay for the
    /// whole idempotency window (~330 B each), so reserve→release churn grew Redis by a record
    /// per cycle. The idempotency record stays: a same-key retry is still answered for the whole
    /// window. `LT` never lengthens a record's life. One pipelined call.
    pub async fn forget_settled_holds(
        &self,
        sku: &Sku,
        holds: &[ReservationId],
    ) -> Result<(), GateError> {
        if holds.is_empty() {
            return Ok(());
        }
        let keys = self.namespace().sku(sku);
        let mut pipe = redis::pipe();
        for id in holds {
            pipe.cmd("EXPIRE")
                .arg(keys.hold(*id))
                .arg(SETTLED_HOLD_GRACE.as_secs())
                .arg("LT")
                .ignore();
        }
        let mut conn = self.connection().await?;
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The hold named `id`, if Redis has it.
    pub async fn hold(&self, id: ReservationId) -> Result<Option<Hold>, GateError> {
        let Some(sku) = self.sku_of_number(id.sku_number()).await? else {
            return Ok(None);
        };
        self.hold_in(&sku, id).await
    }

    async fn hold_in(&self, sku: &Sku, id: ReservationId) -> Result<Option<Hold>, GateError> {
        let sku = sku.clone();
        let mut conn = self.connection().await?;
        let fields: HashMap<String, String> =
            conn.hgetall(self.namespace().sku(&sku).hold(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Hold::from_redis(id, sku, |name| fields.get(name).map(String::as_str)).map(Some)
    }

    /// Moves the hold `id` out of `held` with `lua/transition.lua`, if `mover` may: one round
    /// trip, the script reading the hold itself.
    #[tracing::instrument(skip_all, fields(hold = %id, action = action.as_str()))]
    pub async fn transition(
        &self,
        id: ReservationId,
        action: Transition,
        mover: Mover<'_>,
    ) -> Result<TransitionOutcome, GateError> {
        let Some(sku) = self.sku_of_number(id.sku_number()).await? else {
            return Ok(TransitionOutcome::Missing);
        };
        self.transition_in(&sku, id, action, mover).await
    }

    async fn transition_in(
        &self,
        sku: &Sku,
        id: ReservationId,
        action: Transition,
        mover: Mover<'_>,
    ) -> Result<TransitionOutcome, GateError> {
        let keys = self.namespace().sku(sku);
        let (channel, announce) = self.announcement(sku);
        let mut conn = self.connection().await?;
        let reply: String = self
            .inner
            .scripts
            .transition
            .key(keys.hold(id))
            .key(keys.stock())
            .key(keys.holds())
            .key(keys.events())
            .key(channel)
            .arg(id.to_string())
            .arg(action.as_str())
            .arg(announce)
            .arg(sku.as_str())
            .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
            .arg(keys.prefix())
            .arg(mover.as_str())
            .invoke_async(&mut conn)
            .await?;
        let outcome = parse_transition(&reply, id, sku)?;
        if matches!(&outcome, TransitionOutcome::Changed { hold, .. } if hold.status != ReservationStatus::Committed)
        {
            // Units came back: this gate's own shortcut is off before the caller is answered,
            // without waiting for the pub/sub message.
            self.inner.shortcut.turn_off(sku);
        }
        Ok(outcome)
    }

    /// When each of these SKUs' earliest hold falls due, as a span from now (zero when already
    /// past); SKUs with no hold are left out. A hint for the sweeper, not a decision: each SKU's
    /// earliest deadline (`ZRANGE 0 0`, pipelined per 1,000 on one Redis, one pipeline per master
    /// on a cluster) against the latest master clock, so the hint is never late for any SKU's
    /// owner; which holds expire is decided on the owner's own clock ([`Gate::expire_due`]). A
    /// scan costs O(round trips), and no script runs for a SKU (a script per SKU a second
    /// tripled an idle Redis's CPU).
    pub async fn next_deadlines(&self, skus: &[Sku]) -> Result<Vec<(Sku, Duration)>, GateError> {
        let calls = skus
            .iter()
            .map(|sku| {
                let mut earliest = redis::cmd("ZRANGE");
                earliest
                    .arg(self.namespace().sku(sku).holds())
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
                earliest
            })
            .collect();
        let mut conn = self.connection().await?;
        let now_ms = conn.latest_clock_ms().await? as f64;
        let earliest: Vec<Vec<(String, f64)>> = conn.per_slot(calls).await?;
        Ok(skus
            .iter()
            .zip(earliest)
            .filter_map(|(sku, first)| {
                let (_, deadline) = first.first()?;
                let in_ms = (deadline - now_ms).max(0.0);
                Some((sku.clone(), Duration::from_millis(in_ms as u64)))
            })
            .collect())
    }

    /// Expires up to `limit` of the SKU's holds whose deadline has passed (by the owning Redis's
    /// `TIME`). Any number of sweepers may run: the script expires a hold only while it is
    /// `held`. Returns how many were due, how many this call expired, and when the next hold
    /// falls due.
    pub async fn expire_due(&self, sku: &Sku, limit: usize) -> Result<Expiry, GateError> {
        let found = {
            let mut conn = self.connection().await?;
            let reply: (i64, Vec<String>) = self
                .inner
                .scripts
                .due_holds
                .key(self.namespace().sku(sku).holds())
                .arg(limit)
                .invoke_async(&mut conn)
                .await?;
            parse_due_holds(reply)?
        };
        let mut expired = 0;
        for id in &found.due {
            match self
                .transition_in(sku, *id, Transition::Expire, Mover::Anyone)
                .await?
            {
                TransitionOutcome::Changed { .. } => expired += 1,
                TransitionOutcome::Missing => {
                    // A deadline without a hold: nothing to expire; drop the stale entry.
                    let mut conn = self.connection().await?;
                    let _: i64 = conn
                        .zrem(self.namespace().sku(sku).holds(), id.to_string())
                        .await?;
                }
                TransitionOutcome::Unchanged(_) | TransitionOutcome::NotYours => {}
            }
        }
        Ok(Expiry {
            due: found.due.len(),
            expired,
            next_due_in: found.next_due_in,
        })
    }

    /// Makes Redis follow a hold's Postgres record (`lua/restore_hold.lua`): puts it back when
    /// Redis lost it, moves it out of `held` when Postgres already has it terminal.
    pub async fn restore_hold(&self, hold: &Hold) -> Result<Restored, GateError> {
        let keys = self.namespace().sku(&hold.sku);
        let mut conn = self.connection().await?;
        // The client counters' keys must be named in KEYS; resync is rare, so one more read.
        let client: Option<String> = conn.hget(keys.hold(hold.id), "client").await?;
        let outcome: String = self
            .inner
            .scripts
            .restore_hold
            .key(keys.hold(hold.id))
            .key(keys.idempotency(&hold.buyer, &hold.idempotency_key))
            .key(keys.holds())
            .key(keys.buyers())
            .key(&keys.client_counters(client.as_deref())[..])
            .arg(hold.id.to_string())
            .arg(hold.buyer.as_str())
            .arg(hold.quantity.get())
            .arg(hold.unit_price.to_string())
            .arg(hold.currency.as_str())
            .arg(hold.created_at.timestamp_millis())
            .arg(hold.expires_at.timestamp_millis())
            .arg(hold.status.as_str())
            .arg(hold.idempotency_key.as_str())
            .arg(fingerprint(
                &hold.sku,
                hold.quantity,
                hold.reference.as_ref(),
                hold.metadata.as_ref(),
            ))
            .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
            .arg(hold.reference.as_ref().map_or("", HoldReference::as_str))
            .arg(hold.metadata.as_ref().map_or("", HoldMetadata::as_str))
            .invoke_async(&mut conn)
            .await?;
        parse_restore(&outcome)
    }

    /// Sets buyers' counts against their limit to `counts` (units of their held and committed
    /// holds as Postgres records them; 0 deletes the key), with `lua/set_buyer_counts.lua`.
    pub async fn set_buyer_counts(
        &self,
        sku: &Sku,
        counts: &[(BuyerId, i64)],
    ) -> Result<(), GateError> {
        let keys = self.namespace().sku(sku);
        let mut conn = self.connection().await?;
        for chunk in counts.chunks(500) {
            let mut call = self.inner.scripts.set_buyer_counts.prepare_invoke();
            for (buyer, count) in chunk {
                call.key(keys.buyer(buyer)).arg(*count);
            }
            let _: i64 = call.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Writes a Postgres refusal back to Redis with `lua/reject.lua`; idempotent. Returns the
    /// hold's status before the call (`None` when Redis no longer has the hold).
    pub async fn reject(
        &self,
        sku: &Sku,
        hold: &RejectedHold,
    ) -> Result<Option<ReservationStatus>, GateError> {
        let keys = self.namespace().sku(sku);
        let mut conn = self.connection().await?;
        // The client counters' keys must be named in KEYS; refusals are rare, so one more read.
        let client: Option<String> = conn.hget(keys.hold(hold.id), "client").await?;
        let [client, client56, client48] = keys.client_counters(client.as_deref());
        let (channel, publish) = self.announcement(sku);
        let before: String = self
            .inner
            .scripts
            .reject
            .key(keys.hold(hold.id))
            .key(keys.buyer(&hold.buyer))
            .key(keys.idempotency(&hold.buyer, &hold.idempotency_key))
            .key(keys.holds())
            .key(client)
            .key(keys.stock())
            .key(&channel)
            .key(client56)
            .key(client48)
            .arg(hold.id.to_string())
            .arg(hold.quantity.get())
            .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
            .arg(if hold.units_back { "1" } else { "0" })
            .arg(publish)
            .arg(sku.as_str())
            .invoke_async(&mut conn)
            .await?;
        parse_reject(&before)
    }

    /// Every hold Redis has for the SKU, with its state (an audit scan, not for the hot path).
    pub async fn hold_summaries(&self, sku: &Sku) -> Result<Vec<HoldSummary>, GateError> {
        let prefix = self.namespace().sku(sku).hold_prefix();
        let mut conn = self.connection().await?;
        let keys = conn.scan_prefix(&prefix).await?;
        let mut holds = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET").arg(key).arg(&[
                    "status",
                    PackedHold::FIELD,
                    "q",
                    "buyer",
                    "idem",
                ]);
            }
            let rows: Vec<HoldFields> = pipe.query_async(&mut conn).await?;
            for (key, row) in chunk.iter().zip(rows) {
                holds.extend(summary_of(&prefix, key, row)?);
            }
        }
        Ok(holds)
    }

    /// Holds whose deadline (ms since the epoch) is before `before_ms`, still in the `holds` set.
    pub async fn overdue_holds(&self, sku: &Sku, before_ms: i64) -> Result<usize, GateError> {
        let mut conn = self.connection().await?;
        Ok(conn
            .zcount(
                self.namespace().sku(sku).holds(),
                "-inf",
                format!("({before_ms}"),
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_gone_between_the_scan_and_the_read_is_skipped_not_an_error() {
        let prefix = "fg:{A}:hold:";
        let key = format!("{prefix}{}", ReservationId::generate(1));
        // `HMGET status hold q buyer idem`'s answer.
        let row = |fields: [Option<&str>; 5]| -> HoldFields {
            let [status, packed, q, buyer, idem] = fields.map(|f| f.map(str::to_owned));
            (status, packed, q, buyer, idem)
        };
        assert!(matches!(summary_of(prefix, &key, row([None; 5])), Ok(None)));
        let packed = row([
            Some("held"),
            Some("id\nalice\nk\n2\n9.99\nEUR\n1\n2"),
            None,
            None,
            None,
        ]);
        let one_by_one = row([Some("held"), None, Some("2"), Some("alice"), Some("k")]);
        let packed = summary_of(prefix, &key, packed).expect("packed");
        assert!(packed.is_some());
        assert_eq!(
            packed,
            summary_of(prefix, &key, one_by_one).expect("one by one")
        );
        // Half a hold is still malformed, and so is a packed value of seven fields.
        let half = row([Some("held"), None, None, None, None]);
        assert!(summary_of(prefix, &key, half).is_err());
        let short = row([Some("held"), Some("a\nb\nc\nd\ne\nf\ng"), None, None, None]);
        assert!(summary_of(prefix, &key, short).is_err());
    }
}
