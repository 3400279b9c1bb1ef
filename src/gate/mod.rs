//! The gate: Redis decides, fast (docs/DESIGN.md §1).
//!
//! Every state change of a hold is decided by one Lua script that reads the current state and
//! writes the new one atomically, and appends the decision to the SKU's event stream in the same
//! script, for the settler to carry into Postgres.
//!
//! - this file: the [`Gate`] handle, its settings and errors, the shared Redis connection, and
//!   the routing of reservation ids to their SKU;
//! - `reserve.rs`: the reserve decision and its refusals;
//! - `holds.rs`: a hold's life — lookup, transitions, the expiry sweep, refusals written back,
//!   restoration after data loss;
//! - `sale.rs`: loading a sale (prewarm, resync) and changing it while live;
//! - `events.rs`: the SKU's event stream, as the settler reads, trims and resync fences it;
//! - `contract.rs`: the Lua contract — guards, operations and replies as types, parsed there;
//! - `keys.rs`, `scripts.rs`: key names and the Lua scripts;
//! - `shortcut.rs`: the in-process sold-out shortcut;
//! - `breaker.rs`: the circuit breaker every Redis call goes through.

mod batch;
mod breaker;
mod connection;
mod contract;
mod events;
mod holds;
mod keys;
mod reserve;
mod room;
mod sale;
mod scripts;
mod shortcut;

pub use batch::ReserveBatching;
pub use breaker::BreakerSettings;
use breaker::GuardedConnection;
pub use connection::RedisConnection;
pub use contract::{
    Adjusted, Fence, Mover, Refusal, ReserveOutcome, Restored, StockChange, Transition,
    TransitionOutcome,
};
pub use events::{Event, EventKind, NewHold, StreamRead};
pub use holds::{Expiry, Hold, HoldSummary, RejectedHold, SETTLED_HOLD_GRACE};
pub use keys::{Namespace, SkuKeys};
pub use reserve::{ReserveRequest, fingerprint};
pub use room::{LINE_REFRESH, Line, PlaceOutcome, PlaceRefusal, PlaceStatus};
pub use sale::{LiveSale, definition_meta};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_redis::PoolError;
use redis::AsyncCommands;

use crate::domain::{ReservationId, ReservationSeal, Sku, TicketSeal, WaitingRoom};
use scripts::Scripts;

/// Why the gate could not decide. Cloned when one failed batch answers every request in it.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// `FLASHGATE_DURABILITY=replica`: no replica confirmed the decision in time (or every
    /// connection that waits for replicas was still waiting). The hold may exist on the master;
    /// a retry with the same key replays it once a replica has it, or decides it afresh.
    #[error("no replica confirmed the decision in time")]
    NotReplicated,
    /// Redis is not what the settings say: a cluster node reached by a single-node client
    /// (`MOVED`, `CROSSSLOT`), or the reverse. Retrying cannot help; the settings must change.
    #[error("redis is misconfigured: {0}")]
    Misconfigured(String),
}

impl From<redis::RedisError> for GateError {
    fn from(err: redis::RedisError) -> Self {
        // `OOM` and `BUSY` are outages too: the caller may retry once Redis has room or time.
        if breaker::is_outage(&err) {
            Self::Unavailable(err.to_string())
        } else if err.is_cluster_error()
            || err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot)
        {
            // The cluster client follows `MOVED`/`ASK` itself, and every call of the gate names
            // keys of one slot on a cluster: either reaching us means a cluster node behind the
            // single-server client.
            Self::Misconfigured(format!(
                "{err} (a Redis Cluster needs FLASHGATE_REDIS_CLUSTER=true and its nodes in REDIS_URL)"
            ))
        } else {
            Self::Protocol(err.to_string())
        }
    }
}

impl From<breaker::BreakerOpen> for GateError {
    fn from(err: breaker::BreakerOpen) -> Self {
        Self::Unavailable(err.to_string())
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
    /// Most live holds one client may have on one SKU, per tier.
    pub holds_per_client: ClientHoldCaps,
    /// Most holds one buyer may take on one SKU per window, whatever became of them; `None`
    /// for no quota.
    pub hold_quota: Option<HoldQuota>,
    /// Whether a hold is answered only once a replica has it.
    pub durability: Durability,
    /// Signs the ids of new holds so that a lost one can be recognised (see
    /// [`ReservationSeal`]); `None` mints plain random ids (tools that never answer buyers).
    pub reservation_seal: Option<ReservationSeal>,
    /// The waiting rooms: the default for new sales, the per-client cap on places, the seal.
    pub waiting_room: RoomSettings,
    /// How reserves of one SKU are batched into one script call.
    pub reserve_batching: ReserveBatching,
}

/// Settings of the waiting rooms (see `gate::room`).
#[derive(Debug, Clone, Default)]
pub struct RoomSettings {
    /// What a new sale gets when its definition names no room (`FLASHGATE_WAITING_ROOM*`).
    pub default_room: WaitingRoom,
    /// Most places in one line per client address (IPv4, or IPv6 /64); 0 for no cap.
    pub places_per_client: u32,
    /// Signs tickets; `None` in tools that never answer buyers (a place cannot be taken).
    pub ticket_seal: Option<TicketSeal>,
}

/// Most live holds on one SKU per client tier (`FLASHGATE_HOLDS_PER_CLIENT`, `_56`, `_48`); 0
/// for no cap at a tier. An IPv4 client is counted at its address only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientHoldCaps {
    /// Per IPv4 address or IPv6 /64.
    pub per_client: u32,
    /// Per IPv6 /56: the delegation a household usually gets (256 /64s to rotate through).
    pub per_56: u32,
    /// Per IPv6 /48: a site's delegation.
    pub per_48: u32,
}

impl ClientHoldCaps {
    /// Whether any tier is capped (the client is counted at all).
    pub fn is_on(self) -> bool {
        self != Self::default()
    }

    /// The caps of one client, with the looser tiers' defaults: 4× per /56 and 16× per /48.
    pub fn per_client(limit: u32) -> Self {
        Self {
            per_client: limit,
            per_56: limit.saturating_mul(4),
            per_48: limit.saturating_mul(16),
        }
    }
}

/// When a reservation is answered `201` (`FLASHGATE_DURABILITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// As soon as the master decided it (a failover may lose the last decisions).
    #[default]
    Master,
    /// Only after `WAIT` confirms at least one replica has it, within `timeout`; else 503 and
    /// the retry replays the stored answer.
    Replica { timeout: Duration },
}

/// At most `holds` holds per buyer per SKU in each `window` (a fixed window from the buyer's
/// first hold in it): reserve→release churn cannot grow both stores without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldQuota {
    pub holds: u32,
    pub window: Duration,
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

/// Redis settings that decide whether it keeps what the gate writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub maxmemory_policy: Option<String>,
    pub appendonly: Option<bool>,
    /// Whether the server is a cluster node (`INFO cluster`), where `INFO` is allowed.
    pub cluster_enabled: Option<bool>,
}

impl ServerFacts {
    /// Whether Redis may drop keys under memory pressure. Any policy but `noeviction` may:
    /// `volatile-*` evicts keys with a TTL, such as idempotency records, and `allkeys-*` any
    /// key, such as stock or the event stream. Either silently breaks the invariants.
    pub fn evicts(&self) -> bool {
        self.maxmemory_policy
            .as_deref()
            .is_some_and(|policy| policy != "noeviction")
    }
}

/// How to reach Redis, and how long to wait for it before answering 503.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One server's URL, or a cluster's seed nodes.
    pub urls: Vec<String>,
    /// Whether `urls` are nodes of a Redis Cluster (`FLASHGATE_REDIS_CLUSTER`).
    pub cluster: bool,
    /// Most pooled connections to one server (a cluster client keeps one per node).
    pub pool_size: usize,
    /// Bounds connecting, waiting for a pooled connection, and each command's answer.
    pub timeout: Duration,
    /// When the circuit breaker in front of Redis opens.
    pub breaker: BreakerSettings,
}

impl RedisSettings {
    /// Settings with the default breaker: open after 5 consecutive failures, probe after 500 ms.
    /// `urls` is `REDIS_URL`: one URL, or a comma-separated list of cluster seed nodes.
    pub fn new(urls: &str, pool_size: usize, timeout: Duration) -> Self {
        Self {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect(),
            cluster: false,
            pool_size,
            timeout,
            breaker: BreakerSettings {
                failures: 5,
                open_for: Duration::from_millis(500),
                probe_timeout: timeout,
            },
        }
    }
}

/// The Redis side of flashgate; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    source: connection::Source,
    settings: GateSettings,
    scripts: Scripts,
    /// SKU ↔ number, learnt from Redis once per process: the mapping never changes.
    sku_numbers: RwLock<SkuNumbers>,
    /// The connection requests currently share, and when it was taken from the pool.
    shared: Mutex<Option<(RedisConnection, Instant)>>,
    /// Connections a durable reserve holds alone for its `WAIT` (`FLASHGATE_DURABILITY=replica`).
    dedicated: Option<connection::DedicatedPool>,
    shortcut: shortcut::SoldOutShortcut,
    breaker: Arc<breaker::CircuitBreaker>,
    /// The waiting rooms' lines as this gate read them last.
    lines: room::LineCache,
    /// The per-SKU queues of batched reserves.
    batcher: batch::Batcher,
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
        let source = connection::Source::new(redis)?;
        let dedicated = match settings.durability {
            Durability::Master => None,
            Durability::Replica { timeout } => {
                Some(connection::DedicatedPool::new(redis, timeout)?)
            }
        };
        let shortcut = shortcut::SoldOutShortcut::new(
            settings.sold_out_shortcut,
            redis.cluster.then(|| settings.namespace.clone()),
        );
        let subscription = if redis.cluster {
            shortcut::Subscription::Sharded(redis.clone())
        } else {
            shortcut::Subscription::Namespace {
                client: redis::Client::open(
                    redis.urls.first().map(String::as_str).unwrap_or_default(),
                )?,
                channel: settings.namespace.sale_changed_channel(),
            }
        };
        let inner = Arc::new(GateInner {
            source,
            settings,
            scripts: Scripts::load(),
            sku_numbers: RwLock::default(),
            shared: Mutex::new(None),
            dedicated,
            shortcut,
            breaker: Arc::new(breaker::CircuitBreaker::new(redis.breaker)),
            lines: room::LineCache::default(),
            batcher: batch::Batcher::default(),
        });
        // The shortcut needs its listener; outside a server (no runtime) or disabled it stays off.
        if inner.shortcut.enabled() && tokio::runtime::Handle::try_current().is_ok() {
            shortcut::spawn_listener(Arc::downgrade(&inner), subscription)?;
        }
        Ok(Self { inner })
    }

    pub fn namespace(&self) -> &Namespace {
        &self.inner.settings.namespace
    }

    pub fn settings(&self) -> &GateSettings {
        &self.inner.settings
    }

    /// How long a created hold answers under its idempotency key, and a terminal one is kept.
    pub fn idempotency_ttl(&self) -> Duration {
        self.inner.settings.idempotency_ttl
    }

    /// A fresh id for a hold on the SKU numbered `sku_number`: sealed when the gate has a seal.
    fn mint_id(&self, sku_number: u32) -> ReservationId {
        match &self.inner.settings.reservation_seal {
            Some(seal) => seal.mint(sku_number),
            None => ReservationId::generate(sku_number),
        }
    }

    /// Whether `id` is one a gate of this deployment minted (always false without a seal).
    pub fn minted(&self, id: ReservationId) -> bool {
        self.inner
            .settings
            .reservation_seal
            .as_ref()
            .is_some_and(|seal| seal.minted(id))
    }

    /// Whether this gate talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.source.is_cluster()
    }

    /// Where a script announces that `sku`'s units came back or its sale changed, and with
    /// which command: the namespace channel on one Redis, the SKU's sharded channel (in its
    /// slot, passed in KEYS) on a cluster. See `gate::shortcut`.
    fn announcement(&self, sku: &Sku) -> (String, &'static str) {
        if self.is_cluster() {
            (self.namespace().sku(sku).sale_changed(), "SPUBLISH")
        } else {
            (self.namespace().sale_changed_channel(), "PUBLISH")
        }
    }

    /// A handle on a multiplexed Redis connection.
    ///
    /// A `MultiplexedConnection` pipelines any number of concurrent requests over one socket,
    /// so requests share one through cheap clones instead of each holding a pooled object for
    /// its whole duration (which caps concurrency at the pool size and turns a burst into
    /// 503s). The handle is reused for [`CONNECTION_REUSE`] and then taken afresh from the pool,
    /// whose health check (a `PING` on every `get`) thus runs about once a second rather than
    /// on every request, and which replaces a connection that broke.
    ///
    /// Every call goes through the circuit breaker: while it is open this fails at once, and
    /// every reply on the returned connection is reported to it.
    pub(crate) async fn connection(&self) -> Result<GuardedConnection, GateError> {
        self.inner.breaker.admit()?;
        let guard = |conn| GuardedConnection::new(conn, self.inner.breaker.clone());
        {
            let shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((conn, fetched)) = shared.as_ref()
                && fetched.elapsed() < CONNECTION_REUSE
            {
                return Ok(guard(conn.clone()));
            }
        }
        let conn = self.reported(self.inner.source.get().await)?;
        *self.inner.shared.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((conn.clone(), Instant::now()));
        Ok(guard(conn))
    }

    /// A connection no other request uses while the returned lease lives, for decisions
    /// followed by `WAIT` (see [`connection::DedicatedPool`]); the shared one without replica
    /// durability.
    async fn dedicated_connection(
        &self,
    ) -> Result<(GuardedConnection, Option<connection::DedicatedConnection>), GateError> {
        let Some(dedicated) = &self.inner.dedicated else {
            return Ok((self.connection().await?, None));
        };
        self.inner.breaker.admit()?;
        let lease = self.reported(dedicated.get().await)?;
        let conn =
            GuardedConnection::new(RedisConnection::clone(&lease), self.inner.breaker.clone());
        Ok((conn, Some(lease)))
    }

    /// `got`, with a failure to reach Redis counted by the circuit breaker.
    fn reported<T>(&self, got: Result<T, GateError>) -> Result<T, GateError> {
        if let Err(GateError::Unavailable(_)) = &got {
            self.inner.breaker.record_failure();
        }
        got
    }

    /// A connection to the same Redis outside the circuit breaker, for tools and tests that
    /// read or repair keys by hand (never for the gate's own decisions).
    pub async fn raw_connection(&self) -> Result<RedisConnection, GateError> {
        self.inner.source.get().await
    }

    /// Whether the circuit breaker in front of Redis is refusing calls right now.
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// What Redis says of its eviction policy and persistence, where `CONFIG GET` is allowed
    /// (managed services may refuse it: then both are `None`). On a cluster every master is
    /// asked and the worst answer counts: one master that may evict, or keeps nothing on disk,
    /// is enough to lose its SKUs' keys.
    pub async fn server_facts(&self) -> Result<ServerFacts, GateError> {
        let mut conn = self.connection().await?;
        let policies = conn.config_everywhere("maxmemory-policy").await?;
        let maxmemory_policy = policies
            .iter()
            .flatten()
            .find(|policy| policy.as_str() != "noeviction")
            .or_else(|| policies.iter().flatten().next())
            .cloned();
        let appendonly = conn
            .config_everywhere("appendonly")
            .await?
            .into_iter()
            .flatten()
            .map(|v| v == "yes")
            .reduce(|all, this| all && this);
        // A cluster client reaches cluster nodes only (it could not connect otherwise).
        let cluster_enabled = if self.is_cluster() {
            Some(true)
        } else {
            let info: redis::RedisResult<String> = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut conn)
                .await;
            match info {
                Ok(info) => Some(info.lines().any(|line| line.trim() == "cluster_enabled:1")),
                Err(err) if breaker::is_outage(&err) => return Err(err.into()),
                Err(_) => None,
            }
        };
        Ok(ServerFacts {
            maxmemory_policy,
            appendonly,
            cluster_enabled,
        })
    }

    pub async fn ping(&self) -> Result<(), GateError> {
        let mut conn = self.connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_keeps_every_key() {
        let facts = |policy: Option<&str>| ServerFacts {
            maxmemory_policy: policy.map(str::to_owned),
            appendonly: None,
            cluster_enabled: None,
        };
        assert!(!facts(Some("noeviction")).evicts());
        assert!(
            !facts(None).evicts(),
            "unknown (CONFIG refused) is not judged"
        );
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "volatile-ttl",
            "allkeys-random",
        ] {
            assert!(facts(Some(policy)).evicts(), "{policy}");
        }
    }
}
