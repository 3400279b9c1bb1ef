//! The gate: Redis decides, fast (DESIGN.md §1).
//!
//! Every state change of a hold is decided by one Lua script that reads the current state and
//! writes the new one atomically, and appends the decision to the SKU's event stream in the same
//! script, for the settler to carry into Postgres.

mod events;
mod keys;
mod scripts;
mod shortcut;

pub use events::{Event, EventId, EventKind, NewHold, event_time};
pub use keys::{Namespace, SkuKeys};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_redis::{Manager, Pool, PoolError, Runtime};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use rust_decimal::Decimal;

use crate::domain::{
    BuyerId, Currency, IdempotencyKey, Money, Quantity, ReservationId, ReservationStatus,
    SaleState, Sku,
};
use crate::store::SkuRecord;
use scripts::Scripts;

/// Why the gate could not decide.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Redis could not be reached in time; the caller may retry later.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered, but not as the scripts promise: a bug or a hand-edited key.
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
    /// `prewarm` would overwrite a sale that is already live in Redis.
    #[error("sale {0} is already live in redis; force it to overwrite the live stock")]
    SaleLive(Sku),
}

impl From<redis::RedisError> for GateError {
    fn from(err: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind as S};
        let transient = err.is_io_error()
            || err.is_timeout()
            || err.is_connection_refusal()
            || err.is_connection_dropped()
            || err.is_cluster_error()
            || matches!(
                err.kind(),
                ErrorKind::Server(
                    S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly
                )
            );
        if transient {
            Self::Unavailable(err.to_string())
        } else {
            Self::Protocol(err.to_string())
        }
    }
}

impl From<PoolError> for GateError {
    fn from(err: PoolError) -> Self {
        match err {
            PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Settings of the gate that are not per SKU.
#[derive(Debug, Clone)]
pub struct GateSettings {
    pub namespace: Namespace,
    /// How long a created hold stays stored under its idempotency key (24 h by default).
    pub idempotency_ttl: Duration,
    /// The per-buyer, per-SKU rate limit, or `None` for none.
    pub buyer_rate: Option<BuyerRate>,
    /// Answer `sold_out` in process once a SKU is sold out (see `gate::shortcut`).
    pub sold_out_shortcut: bool,
}

/// A GCRA quota: `per_second` requests a second on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuyerRate {
    pub per_second: f64,
    pub burst: u32,
}

impl BuyerRate {
    fn emission_interval_us(self) -> u64 {
        (1_000_000.0 / self.per_second).ceil() as u64
    }

    /// The time over which a full burst is earned back.
    pub fn window(self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst) / self.per_second)
    }
}

/// How to reach Redis, and how long to wait for it before answering 503.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub pool_size: usize,
    /// Bounds connecting, waiting for a pooled connection, and each command's answer.
    pub timeout: Duration,
}

/// One buyer's request for a hold.
#[derive(Debug, Clone, Copy)]
pub struct ReserveRequest<'a> {
    pub sku: &'a Sku,
    pub buyer: &'a BuyerId,
    pub quantity: Quantity,
    pub idempotency_key: &'a IdempotencyKey,
}

impl ReserveRequest<'_> {
    fn fingerprint(&self) -> String {
        fingerprint(self.sku, self.quantity)
    }
}

/// What makes two requests under one idempotency key "the same request".
pub fn fingerprint(sku: &Sku, quantity: Quantity) -> String {
    format!("{sku}|{}", quantity.get())
}

/// A move out of `held` (`lua/transition.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Payment captured. Past the deadline this expires the hold instead.
    Commit,
    /// The buyer cancelled or payment failed.
    Release,
    /// The deadline passed (the sweeper). Before the deadline this changes nothing.
    Expire,
}

impl Transition {
    fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Release => "release",
            Self::Expire => "expire",
        }
    }
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    /// Redis has no such hold.
    Missing,
    /// The hold was not moved; this is its status.
    Unchanged(ReservationStatus),
    /// The hold moved to `to`; `event` is the stream entry that records it.
    Changed {
        to: ReservationStatus,
        event: EventId,
    },
}

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
}

impl Hold {
    /// The exact amount due: unit price × quantity, never rounded.
    pub fn total(&self) -> Decimal {
        self.unit_price.times(self.quantity)
    }
}

/// A hold Postgres refused, as the write-back needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedHold {
    pub id: ReservationId,
    pub buyer: BuyerId,
    pub idempotency_key: IdempotencyKey,
    pub quantity: Quantity,
}

/// `HMGET hold status q buyer idem`.
type HoldFields = (Option<String>, Option<u32>, Option<String>, Option<String>);

/// A hold's state as the audit reads it from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldSummary {
    pub id: ReservationId,
    pub status: ReservationStatus,
    pub quantity: u32,
    pub buyer: String,
    pub idempotency_key: String,
}

/// What the reserve script decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ReserveOutcome {
    Created(Hold),
    /// The same request was seen before under this idempotency key; this is its stored answer.
    Replayed(Hold),
    Refused(Refusal),
}

/// Why a hold was not given. A refusal has no effect, so a retry is decided afresh.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("this idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error("too many requests from this buyer")]
    RateLimited {
        retry_after: Duration,
        /// The quota: `burst` requests per `window`.
        burst: u32,
        window: Duration,
    },
    #[error("no sale is loaded for this SKU")]
    UnknownSku,
    #[error("the sale is not open")]
    SaleNotOpen { opens_at: Option<DateTime<Utc>> },
    #[error("the sale is paused")]
    SalePaused,
    #[error("this buyer has reached the per-buyer limit of {limit}")]
    BuyerLimitReached { limit: u32 },
    #[error("sold out")]
    SoldOut { available: u32 },
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
}

/// The Redis side of flashgate; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    pool: Pool,
    settings: GateSettings,
    scripts: Scripts,
    /// SKU ↔ number, learnt from Redis once per process: the mapping never changes.
    sku_numbers: RwLock<SkuNumbers>,
    /// The connection requests currently share, and when it was taken from the pool.
    shared: Mutex<Option<(MultiplexedConnection, Instant)>>,
    shortcut: shortcut::SoldOutShortcut,
}

/// How long requests share one connection before it is taken afresh from the pool.
const CONNECTION_REUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct SkuNumbers {
    by_sku: HashMap<Sku, u32>,
    by_number: HashMap<u32, Sku>,
}

impl Gate {
    /// Builds the pool; no connection is made until the first command.
    pub fn connect(redis: &RedisSettings, settings: GateSettings) -> Result<Self, GateError> {
        let connection = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(redis.timeout))
            .set_response_timeout(Some(redis.timeout));
        let manager = Manager::new_with_config(redis.url.as_str(), connection)?;
        let pool = Pool::builder(manager)
            .max_size(redis.pool_size)
            .wait_timeout(Some(redis.timeout))
            .create_timeout(Some(redis.timeout))
            .recycle_timeout(Some(redis.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| GateError::Unavailable(e.to_string()))?;
        let shortcut = shortcut::SoldOutShortcut::new(settings.sold_out_shortcut);
        let channel = settings.namespace.sale_changed_channel();
        let inner = Arc::new(GateInner {
            pool,
            settings,
            scripts: Scripts::load(),
            sku_numbers: RwLock::default(),
            shared: Mutex::new(None),
            shortcut,
        });
        // The shortcut needs its listener; without a runtime (or when disabled) it stays off.
        if inner.shortcut.enabled()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let client = redis::Client::open(redis.url.as_str())?;
            runtime.spawn(shortcut::listen(Arc::downgrade(&inner), client, channel));
        }
        Ok(Self { inner })
    }

    pub fn namespace(&self) -> &Namespace {
        &self.inner.settings.namespace
    }

    /// A handle on a multiplexed Redis connection.
    ///
    /// A `MultiplexedConnection` pipelines any number of concurrent requests over one socket,
    /// so requests share one through cheap clones instead of each holding a pooled object for
    /// its whole duration (which caps concurrency at the pool size and turns a burst into
    /// 503s). The handle is reused for [`CONNECTION_REUSE`] and then taken afresh from the pool,
    /// whose health check (a `PING` on every `get`) thus runs about once a second rather than
    /// on every request, and which replaces a connection that broke.
    pub(crate) async fn connection(&self) -> Result<MultiplexedConnection, GateError> {
        {
            let shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((conn, fetched)) = shared.as_ref()
                && fetched.elapsed() < CONNECTION_REUSE
            {
                return Ok(conn.clone());
            }
        }
        let pooled = self.inner.pool.get().await?;
        let conn = MultiplexedConnection::clone(&pooled);
        *self.inner.shared.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((conn.clone(), Instant::now()));
        Ok(conn)
    }

    pub async fn ping(&self) -> Result<(), GateError> {
        let mut conn = self.connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

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
        let id = ReservationId::generate(number);
        let keys = self.namespace().sku(req.sku);
        let (interval_us, burst) = match self.inner.settings.buyer_rate {
            Some(rate) => (rate.emission_interval_us(), rate.burst),
            None => (0, 0),
        };
        let mut conn = self.connection().await?;
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
            .arg(id.to_string())
            .arg(req.buyer.as_str())
            .arg(req.quantity.get())
            .arg(req.fingerprint())
            .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
            .arg(interval_us)
            .arg(burst)
            .arg(req.idempotency_key.as_str())
            .arg(req.sku.as_str())
            .invoke_async(&mut conn)
            .await?;
        let outcome = parse_reserve_reply(&reply, req, self.inner.settings.buyer_rate)?;
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
        hold_from_fields(id, sku, &fields).map(Some)
    }

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

    /// Moves `hold` out of `held` with `lua/transition.lua`.
    #[tracing::instrument(skip_all, fields(hold = %hold.id, action = action.as_str()))]
    pub async fn transition(
        &self,
        hold: &Hold,
        action: Transition,
    ) -> Result<TransitionOutcome, GateError> {
        let keys = self.namespace().sku(&hold.sku);
        let mut conn = self.connection().await?;
        let reply: Vec<String> = self
            .inner
            .scripts
            .transition
            .key(keys.hold(hold.id))
            .key(keys.stock())
            .key(keys.buyer(&hold.buyer))
            .key(keys.idempotency(&hold.buyer, &hold.idempotency_key))
            .key(keys.holds())
            .key(keys.events())
            .arg(hold.id.to_string())
            .arg(action.as_str())
            .arg(self.namespace().sale_changed_channel())
            .arg(hold.sku.as_str())
            .invoke_async(&mut conn)
            .await?;
        let status = |raw: &str| {
            ReservationStatus::parse(raw).map_err(|e| GateError::Protocol(e.to_string()))
        };
        match reply.as_slice() {
            [tag] if tag == "missing" => Ok(TransitionOutcome::Missing),
            [tag, s] if tag == "unchanged" => Ok(TransitionOutcome::Unchanged(status(s)?)),
            [tag, s, event] if tag == "changed" => Ok(TransitionOutcome::Changed {
                to: status(s)?,
                event: event.clone(),
            }),
            _ => Err(GateError::Protocol(format!(
                "transition.lua answered {reply:?}"
            ))),
        }
    }

    /// Expires up to `limit` of the SKU's holds whose deadline has passed (by Redis `TIME`).
    /// Any number of sweepers may run: the script expires a hold only while it is `held`.
    /// Returns how many this call expired.
    pub async fn expire_due(&self, sku: &Sku, limit: usize) -> Result<usize, GateError> {
        let due: Vec<String> = {
            let mut conn = self.connection().await?;
            let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
            let now_ms = seconds * 1000 + micros / 1000;
            redis::cmd("ZRANGE")
                .arg(self.namespace().sku(sku).holds())
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn)
                .await?
        };
        let mut expired = 0;
        for raw in due {
            let id = ReservationId::parse(&raw).map_err(|e| GateError::Protocol(e.to_string()))?;
            let Some(hold) = self.hold_in(sku, id).await? else {
                // A deadline without a hold: nothing to expire; drop the stale entry.
                let mut conn = self.connection().await?;
                let _: i64 = conn.zrem(self.namespace().sku(sku).holds(), &raw).await?;
                continue;
            };
            if let TransitionOutcome::Changed { .. } =
                self.transition(&hold, Transition::Expire).await?
            {
                expired += 1;
            }
        }
        Ok(expired)
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

    /// Puts back a hold Redis lost, from its Postgres record. Returns false when Redis had it.
    pub async fn restore_hold(&self, hold: &Hold) -> Result<bool, GateError> {
        let keys = self.namespace().sku(&hold.sku);
        let mut conn = self.connection().await?;
        let restored: i64 = self
            .inner
            .scripts
            .restore_hold
            .key(keys.hold(hold.id))
            .key(keys.buyer(&hold.buyer))
            .key(keys.idempotency(&hold.buyer, &hold.idempotency_key))
            .key(keys.holds())
            .key(keys.buyers())
            .arg(hold.id.to_string())
            .arg(hold.sku.as_str())
            .arg(hold.buyer.as_str())
            .arg(hold.quantity.get())
            .arg(hold.unit_price.to_string())
            .arg(hold.currency.as_str())
            .arg(hold.created_at.timestamp_millis())
            .arg(hold.expires_at.timestamp_millis())
            .arg(hold.status.as_str())
            .arg(hold.idempotency_key.as_str())
            .arg(fingerprint(&hold.sku, hold.quantity))
            .arg(self.inner.settings.idempotency_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(restored == 1)
    }

    /// The id of the last entry of the SKU's stream, or `None` when the stream is empty.
    pub async fn last_event_id(&self, sku: &Sku) -> Result<Option<EventId>, GateError> {
        let mut conn = self.connection().await?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.namespace().sku(sku).events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(reply.ids.into_iter().next().map(|e| e.id))
    }

    /// Up to `count` events after `after` (exclusive), oldest first.
    pub async fn events_after(
        &self,
        sku: &Sku,
        after: &str,
        count: usize,
    ) -> Result<Vec<Event>, GateError> {
        let reply = self.range_after(sku, after, count).await?;
        reply
            .ids
            .into_iter()
            .map(|entry| Event::parse(entry.id, &entry.map))
            .collect()
    }

    /// The number of events after `after`, counted up to `cap`, and the oldest one's id.
    pub async fn backlog(
        &self,
        sku: &Sku,
        after: &str,
        cap: usize,
    ) -> Result<(usize, Option<EventId>), GateError> {
        let reply = self.range_after(sku, after, cap).await?;
        let oldest = reply.ids.first().map(|e| e.id.clone());
        Ok((reply.ids.len(), oldest))
    }

    async fn range_after(
        &self,
        sku: &Sku,
        after: &str,
        count: usize,
    ) -> Result<redis::streams::StreamRangeReply, GateError> {
        let mut conn = self.connection().await?;
        Ok(redis::cmd("XRANGE")
            .arg(self.namespace().sku(sku).events())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?)
    }

    /// Drops stream entries older than `settled`, which Postgres has committed. Never call it
    /// with an id the settlement cursor has not reached: those events would be lost.
    pub async fn trim_events_below(&self, sku: &Sku, settled: &str) -> Result<(), GateError> {
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("XTRIM")
            .arg(self.namespace().sku(sku).events())
            .arg("MINID")
            .arg(settled)
            .query_async(&mut conn)
            .await?;
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
        let before: String = self
            .inner
            .scripts
            .reject
            .key(keys.hold(hold.id))
            .key(keys.buyer(&hold.buyer))
            .key(keys.idempotency(&hold.buyer, &hold.idempotency_key))
            .key(keys.holds())
            .arg(hold.id.to_string())
            .arg(hold.quantity.get())
            .invoke_async(&mut conn)
            .await?;
        match before.as_str() {
            "missing" => Ok(None),
            status => ReservationStatus::parse(status)
                .map(Some)
                .map_err(|e| GateError::Protocol(e.to_string())),
        }
    }

    /// Redis `stock` of the SKU, or `None` when the sale is not loaded.
    pub async fn stock(&self, sku: &Sku) -> Result<Option<i64>, GateError> {
        let mut conn = self.connection().await?;
        Ok(conn.get(self.namespace().sku(sku).stock()).await?)
    }

    /// Every hold Redis has for the SKU, with its state (an audit scan, not for the hot path).
    pub async fn hold_summaries(&self, sku: &Sku) -> Result<Vec<HoldSummary>, GateError> {
        let prefix = self.namespace().sku(sku).hold_prefix();
        let mut conn = self.connection().await?;
        let mut keys = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> = conn.scan_match(format!("{prefix}*")).await?;
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
        }
        let mut holds = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET")
                    .arg(key)
                    .arg(&["status", "q", "buyer", "idem"]);
            }
            let rows: Vec<HoldFields> = pipe.query_async(&mut conn).await?;
            for (key, row) in chunk.iter().zip(rows) {
                let bad = || GateError::Protocol(format!("hold key {key} is malformed"));
                let (Some(status), Some(quantity), Some(buyer), Some(idempotency_key)) = row else {
                    return Err(bad());
                };
                holds.push(HoldSummary {
                    id: key
                        .strip_prefix(&prefix)
                        .and_then(|raw| ReservationId::parse(raw).ok())
                        .ok_or_else(bad)?,
                    status: ReservationStatus::parse(&status).map_err(|_| bad())?,
                    quantity,
                    buyer,
                    idempotency_key,
                });
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

    /// The SKU's number, from the process cache or the sale's meta hash.
    async fn sku_number(&self, sku: &Sku) -> Result<Option<u32>, GateError> {
        if let Some(n) = self.read_numbers().by_sku.get(sku) {
            return Ok(Some(*n));
        }
        let mut conn = self.connection().await?;
        let number: Option<u32> = conn.hget(self.namespace().sku(sku).meta(), "num").await?;
        if let Some(n) = number {
            self.remember(sku.clone(), n);
        }
        Ok(number)
    }

    async fn sku_of_number(&self, number: u32) -> Result<Option<Sku>, GateError> {
        if let Some(sku) = self.read_numbers().by_number.get(&number) {
            return Ok(Some(sku.clone()));
        }
        let mut conn = self.connection().await?;
        let sku: Option<String> = conn.hget(self.namespace().sku_numbers(), number).await?;
        let Some(sku) = sku else { return Ok(None) };
        let sku = Sku::parse(&sku).map_err(|e| GateError::Protocol(e.to_string()))?;
        self.remember(sku.clone(), number);
        Ok(Some(sku))
    }

    fn read_numbers(&self) -> std::sync::RwLockReadGuard<'_, SkuNumbers> {
        // A panic while holding this lock cannot leave the maps half-written (each insert is
        // one call), so a poisoned lock is still sound to use.
        self.inner
            .sku_numbers
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, sku: Sku, number: u32) {
        let mut numbers = self
            .inner
            .sku_numbers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        numbers.by_number.insert(number, sku.clone());
        numbers.by_sku.insert(sku, number);
    }
}

fn optional_millis(ms: i64) -> Option<DateTime<Utc>> {
    if ms > 0 {
        DateTime::from_timestamp_millis(ms)
    } else {
        None
    }
}

fn millis(raw: &str) -> Result<DateTime<Utc>, GateError> {
    raw.parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| GateError::Protocol(format!("{raw:?} is not a timestamp in ms")))
}

fn parse_reserve_reply(
    reply: &[String],
    req: ReserveRequest<'_>,
    rate: Option<BuyerRate>,
) -> Result<ReserveOutcome, GateError> {
    let bad = || GateError::Protocol(format!("reserve.lua answered {reply:?}"));
    let hold = |f: &[String]| -> Result<Hold, GateError> {
        let protocol = |e: crate::domain::ValidationError| GateError::Protocol(e.to_string());
        Ok(Hold {
            id: ReservationId::parse(&f[0]).map_err(protocol)?,
            sku: req.sku.clone(),
            buyer: req.buyer.clone(),
            idempotency_key: req.idempotency_key.clone(),
            quantity: Quantity::parse(f[1].parse().map_err(|_| bad())?).map_err(protocol)?,
            unit_price: Money::parse(&f[2]).map_err(protocol)?,
            currency: Currency::parse(&f[3]).map_err(protocol)?,
            created_at: millis(&f[4])?,
            expires_at: millis(&f[5])?,
            status: ReservationStatus::parse(&f[6]).map_err(protocol)?,
        })
    };
    match reply.split_first() {
        Some((tag, rest)) if tag == "created" && rest.len() >= 7 => {
            Ok(ReserveOutcome::Created(hold(rest)?))
        }
        Some((tag, rest)) if tag == "replayed" && rest.len() >= 7 => {
            Ok(ReserveOutcome::Replayed(hold(rest)?))
        }
        Some((tag, [code, detail, ..])) if tag == "refused" => {
            let detail: u64 = detail.parse().map_err(|_| bad())?;
            let small = u32::try_from(detail).unwrap_or(u32::MAX);
            Ok(ReserveOutcome::Refused(match code.as_str() {
                "idempotency_key_reused" => Refusal::IdempotencyKeyReused,
                "rate_limited" => Refusal::RateLimited {
                    retry_after: Duration::from_micros(detail),
                    burst: rate.map_or(0, |r| r.burst),
                    window: rate.map_or(Duration::ZERO, BuyerRate::window),
                },
                "unknown_sku" => Refusal::UnknownSku,
                "sale_not_open" => Refusal::SaleNotOpen {
                    opens_at: optional_millis(i64::try_from(detail).unwrap_or(0)),
                },
                "sale_paused" => Refusal::SalePaused,
                "buyer_limit_reached" => Refusal::BuyerLimitReached { limit: small },
                "sold_out" => Refusal::SoldOut { available: small },
                _ => return Err(bad()),
            }))
        }
        _ => Err(bad()),
    }
}

fn hold_from_fields(
    id: ReservationId,
    sku: Sku,
    fields: &HashMap<String, String>,
) -> Result<Hold, GateError> {
    let field = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| GateError::Protocol(format!("hold {id} has no {name}")))
    };
    let protocol = |e: crate::domain::ValidationError| GateError::Protocol(e.to_string());
    Ok(Hold {
        id,
        sku,
        buyer: BuyerId::parse(field("buyer")?).map_err(protocol)?,
        idempotency_key: IdempotencyKey::from_decoded(field("idem")?.to_owned())
            .map_err(protocol)?,
        quantity: Quantity::parse(
            field("q")?
                .parse()
                .map_err(|_| GateError::Protocol(format!("hold {id}: q")))?,
        )
        .map_err(protocol)?,
        unit_price: Money::parse(field("price")?).map_err(protocol)?,
        currency: Currency::parse(field("cur")?).map_err(protocol)?,
        status: ReservationStatus::parse(field("status")?).map_err(protocol)?,
        created_at: millis(field("created")?)?,
        expires_at: millis(field("expires")?)?,
    })
}
