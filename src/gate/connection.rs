//! How the gate reaches Redis: one server through a pool of multiplexed connections, or a
//! Redis Cluster through the redis crate's cluster client (`FLASHGATE_REDIS_CLUSTER=true`).
//!
//! Both hand out a [`RedisConnection`], which every command of the gate goes through, so the
//! scripts, the breaker and the metrics do not know which one they talk to. Where the two
//! differ — a `SCAN` must be sent to the node that owns the keys, a pipeline may not mix slots,
//! a sale-changed announcement is `PUBLISH` on one server and a sharded `SPUBLISH` on a
//! cluster — the difference is decided here or by asking [`GuardedConnection::is_cluster`].

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr,
};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};

use super::breaker::GuardedConnection;
use super::{GateError, RedisSettings};

/// Most commands of one multi-SKU query in flight at once on a cluster.
const CLUSTER_FAN_OUT: usize = 256;

/// A connection to one Redis server or to a cluster; cheap to clone.
#[derive(Clone)]
pub enum RedisConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl GuardedConnection {
    /// How many replicas of `key`'s master acknowledged every write this connection sent it,
    /// waiting at most `timeout` for `replicas` of them (`WAIT`). On a cluster it asks the master
    /// of `key`'s slot only: the cluster client would send a plain `WAIT` to every master and
    /// answer the least count, so one master without a replica would refuse every SKU.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<i64, GateError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis().max(1) as u64);
        self.on_master_of(key, wait).await
    }

    /// Runs `cmd`, which names no key, on the master of `key`'s slot (on one Redis, on it).
    async fn on_master_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> Result<T, GateError> {
        match &mut self.inner {
            RedisConnection::Single(_) => Ok(cmd.query_async(self).await?),
            RedisConnection::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let reply = conn
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await;
                self.report(&reply, None);
                redis::from_redis_value(reply?).map_err(|e| GateError::Protocol(e.to_string()))
            }
        }
    }

    /// `CONFIG GET name` as every server answers it: one answer on one Redis, one per master on
    /// a cluster (a cluster client would ask one node at random). A server that refuses the
    /// command (managed services may) answers `None`.
    pub async fn config_everywhere(
        &mut self,
        name: &str,
    ) -> Result<Vec<Option<String>>, GateError> {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg(name);
        let reply = match &mut self.inner {
            RedisConnection::Single(_) => get
                .query_async::<Vec<String>>(self)
                .await
                .map(|pair| vec![pair]),
            RedisConnection::Cluster(conn) => {
                let reply = conn
                    .route_command(
                        get,
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await;
                self.report(&reply, None);
                match reply {
                    Ok(per_node) => {
                        let nodes: Vec<(String, Vec<String>)> =
                            redis::from_redis_value(per_node)
                                .map_err(|e| GateError::Protocol(e.to_string()))?;
                        Ok(nodes.into_iter().map(|(_, pair)| pair).collect())
                    }
                    Err(err) => Err(err),
                }
            }
        };
        match reply {
            Ok(answers) => Ok(answers
                .into_iter()
                .map(|pair| pair.into_iter().nth(1))
                .collect()),
            Err(err) if super::breaker::is_outage(&err) => Err(err.into()),
            Err(_) => Ok(vec![None]),
        }
    }

    /// Every key that starts with `prefix`, which must carry a hash tag: on a cluster the `SCAN`
    /// goes to the master of that tag's slot (a `SCAN` sent anywhere else would page another
    /// node and silently miss the keys).
    pub async fn scan_prefix(&mut self, prefix: &str) -> Result<Vec<String>, GateError> {
        let pattern = format!("{prefix}*");
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000);
            let (next, page): (u64, Vec<String>) = self.on_master_of(prefix, scan).await?;
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Redis `TIME` in ms: of the one server, or the latest of every cluster master's clock (so
    /// a hint read against it is never late for any SKU's owner).
    pub async fn latest_clock_ms(&mut self) -> Result<i64, GateError> {
        let to_ms = |(seconds, micros): (i64, i64)| seconds * 1000 + micros / 1000;
        match &mut self.inner {
            RedisConnection::Single(_) => {
                let time: (i64, i64) = redis::cmd("TIME").query_async(self).await?;
                Ok(to_ms(time))
            }
            RedisConnection::Cluster(conn) => {
                let reply = conn
                    .route_command(
                        redis::cmd("TIME"),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await;
                self.report(&reply, None);
                let per_node: Vec<(String, (i64, i64))> = redis::from_redis_value(reply?)
                    .map_err(|e| GateError::Protocol(e.to_string()))?;
                per_node
                    .into_iter()
                    .map(|(_, time)| to_ms(time))
                    .max()
                    .ok_or_else(|| GateError::Protocol("no cluster master answered TIME".into()))
            }
        }
    }

    /// Runs one command per key (each touching a single SKU's slot) and returns the replies in
    /// order: pipelined in chunks of 1,000 on one server; on a cluster one pipeline per master
    /// ([`Self::per_node`]), or concurrent redirected calls when the slots moved meanwhile.
    pub async fn per_slot<T: FromRedisValue>(
        &mut self,
        commands: Vec<Cmd>,
    ) -> Result<Vec<T>, GateError> {
        if !self.is_cluster() {
            let mut replies = Vec::with_capacity(commands.len());
            for chunk in commands.chunks(1_000) {
                let mut pipe = redis::pipe();
                for cmd in chunk {
                    pipe.add_command(cmd.clone());
                }
                let chunk_replies: Vec<T> = pipe.query_async(self).await?;
                replies.extend(chunk_replies);
            }
            return Ok(replies);
        }
        match self.per_node(&commands).await {
            Ok(replies) => Ok(replies),
            // The slots moved between the map and the pipelines (failover, resharding): one call
            // per key, which the cluster client redirects.
            Err(err) => {
                metrics::counter!("flashgate_redis_cluster_scan_fallbacks_total").increment(1);
                tracing::debug!(error = %err, "per-node pipelines failed; one call per key");
                let conn = self.clone();
                futures::stream::iter(commands)
                    .map(|cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<T>(&mut conn).await }
                    })
                    .buffered(CLUSTER_FAN_OUT)
                    .map_err(GateError::from)
                    .try_collect()
                    .await
            }
        }
    }

    /// On a cluster: the commands grouped by the master that serves their key's slot (from
    /// `CLUSTER SLOTS`), one pipeline per master — a node answers commands of any of its slots
    /// in one pipeline. Thousands of SKUs cost one round trip per master, not one call each
    /// (one call each kept an idle gate with 10,000 SKUs at 30 % of a core).
    async fn per_node<T: FromRedisValue>(&mut self, commands: &[Cmd]) -> Result<Vec<T>, GateError> {
        let RedisConnection::Cluster(conn) = &mut self.inner else {
            return Err(GateError::Protocol(
                "per-node pipelines need a cluster".into(),
            ));
        };
        let slots: Vec<(u16, u16, String, u16)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<redis::Value>>(conn)
            .await?
            .into_iter()
            .filter_map(|range| {
                // [start, end, [host, port, id, ...], replicas...]
                let range: Vec<redis::Value> = redis::from_redis_value(range).ok()?;
                let mut fields = range.into_iter();
                let start: u16 = redis::from_redis_value(fields.next()?).ok()?;
                let end: u16 = redis::from_redis_value(fields.next()?).ok()?;
                let master: Vec<redis::Value> = redis::from_redis_value(fields.next()?).ok()?;
                let mut master = master.into_iter();
                let host: String = redis::from_redis_value(master.next()?).ok()?;
                let port: u16 = redis::from_redis_value(master.next()?).ok()?;
                Some((start, end, host, port))
            })
            .collect();
        // `Slot` does not give its number back: a map from every slot to its master's index.
        let mut owners = std::collections::HashMap::with_capacity(16_384);
        for (node, (start, end, ..)) in slots.iter().enumerate() {
            for slot in (*start..=*end).filter_map(Slot::new) {
                owners.insert(slot, node);
            }
        }
        let owner = |key: &[u8]| owners.get(&Slot::for_key(key)).copied();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); slots.len()];
        for (index, cmd) in commands.iter().enumerate() {
            let key = match cmd.args_iter().nth(1) {
                Some(redis::Arg::Simple(key)) => key,
                _ => {
                    return Err(GateError::Protocol(
                        "a per-slot command without a key".into(),
                    ));
                }
            };
            let node = owner(key)
                .ok_or_else(|| GateError::Unavailable("a slot without a master".into()))?;
            groups[node].push(index);
        }
        let mut replies: Vec<Option<redis::Value>> = vec![None; commands.len()];
        let answers = futures::future::try_join_all(
            groups
                .iter()
                .enumerate()
                .filter(|(_, g)| !g.is_empty())
                .map(|(node, group)| {
                    let mut conn = conn.clone();
                    let mut pipe = redis::pipe();
                    for index in group {
                        pipe.add_command(commands[*index].clone());
                    }
                    let (_, _, host, port) = slots[node].clone();
                    async move {
                        conn.route_pipeline(
                            pipe,
                            0,
                            group.len(),
                            SingleNodeRoutingInfo::ByAddress { host, port },
                        )
                        .await
                        .map(|values| (group, values))
                    }
                }),
        )
        .await;
        self.report(&answers, None);
        for (group, values) in answers? {
            for (index, value) in group.iter().zip(values) {
                replies[*index] = Some(value);
            }
        }
        replies
            .into_iter()
            .map(|value| {
                let value =
                    value.ok_or_else(|| GateError::Protocol("a command got no answer".into()))?;
                if let redis::Value::ServerError(err) = &value {
                    return Err(GateError::from(redis::RedisError::from(err.clone())));
                }
                redis::from_redis_value(value).map_err(|e| GateError::Protocol(e.to_string()))
            })
            .collect()
    }
}

/// Where connections come from.
pub(super) enum Source {
    Single(Pool),
    Cluster {
        client: Box<ClusterClient>,
        /// Made on first use, then shared: the cluster client reconnects to nodes by itself.
        connection: tokio::sync::OnceCell<ClusterConnection>,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Source::Single",
            Self::Cluster { .. } => "Source::Cluster",
        })
    }
}

impl Source {
    /// Builds the pool or the cluster client; no connection is made until the first command.
    pub(super) fn new(redis: &RedisSettings) -> Result<Self, GateError> {
        if redis.cluster {
            let client = cluster_builder(redis)
                .build()
                .map_err(|e| GateError::Misconfigured(format!("REDIS_URL: {e}")))?;
            return Ok(Self::Cluster {
                client: Box::new(client),
                connection: tokio::sync::OnceCell::new(),
                timeout: redis.timeout,
            });
        }
        if redis.urls.len() > 1 {
            return Err(GateError::Misconfigured(format!(
                "REDIS_URL lists {} nodes but FLASHGATE_REDIS_CLUSTER is not true",
                redis.urls.len()
            )));
        }
        let url = redis.urls.first().map(String::as_str).unwrap_or_default();
        let manager = Manager::new_with_config(url, single_config(redis))?;
        let pool = Pool::builder(manager)
            .max_size(redis.pool_size)
            .wait_timeout(Some(redis.timeout))
            .create_timeout(Some(redis.timeout))
            .recycle_timeout(Some(redis.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| GateError::Unavailable(e.to_string()))?;
        Ok(Self::Single(pool))
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// A fresh handle: from the pool (whose health check replaces a broken connection), or the
    /// shared cluster connection.
    pub(super) async fn get(&self) -> Result<RedisConnection, GateError> {
        match self {
            Self::Single(pool) => {
                // Boxed: deadpool's get holds the whole connect path (~7 KB of future) though it
                // almost always finds an idle connection; inline, every gate call's future and
                // every request's carried and copied it (memcpy was a sixth of a hold).
                let pooled = Box::pin(pool.get()).await?;
                Ok(RedisConnection::Single(MultiplexedConnection::clone(
                    &pooled,
                )))
            }
            Self::Cluster {
                client,
                connection,
                timeout,
            } => {
                let conn = connection
                    // Boxed for the same reason as the pool's get: the connect path is rare.
                    .get_or_try_init(|| {
                        Box::pin(async {
                            match tokio::time::timeout(*timeout, client.get_async_connection())
                                .await
                            {
                                Ok(Ok(conn)) => Ok(conn),
                                Ok(Err(err)) => Err(cluster_connect_error(err)),
                                Err(_) => Err(GateError::Unavailable(
                                    "no redis cluster node answered in time".into(),
                                )),
                            }
                        })
                    })
                    .await?;
                Ok(RedisConnection::Cluster(conn.clone()))
            }
        }
    }
}

/// Connections a request holds alone, for `FLASHGATE_DURABILITY=replica`.
///
/// `WAIT` counts only the writes of the connection it is sent on, and Redis reads nothing more
/// from that connection until the replicas confirm or the timeout passes. On the connection every
/// request shares, one buyer's wait for a lost replica held every read and commit of the gate
/// behind it; so a durable decision and its `WAIT` run on a connection of their own.
pub(super) struct DedicatedPool(deadpool::managed::Pool<DedicatedManager>);

impl std::fmt::Debug for DedicatedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedicatedPool")
    }
}

/// A connection of a [`DedicatedPool`], returned to it when dropped.
pub(super) type DedicatedConnection = deadpool::managed::Object<DedicatedManager>;

pub(super) enum DedicatedManager {
    Single(Box<Manager>),
    Cluster(Box<ClusterClient>),
}

impl deadpool::managed::Manager for DedicatedManager {
    type Type = RedisConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<RedisConnection, redis::RedisError> {
        match self {
            Self::Single(manager) => Ok(RedisConnection::Single(manager.create().await?)),
            Self::Cluster(client) => Ok(RedisConnection::Cluster(
                client.get_async_connection().await?,
            )),
        }
    }

    /// A `PING` on every take would add a round trip to each durable reserve: a connection
    /// taken within the last second is handed out as it is, and one that failed meanwhile was
    /// discarded (see [`DedicatedPool::discard_if_broken`]).
    async fn recycle(
        &self,
        conn: &mut RedisConnection,
        metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        if metrics.last_used() >= Duration::from_secs(1) {
            redis::cmd("PING").query_async::<()>(conn).await?;
        }
        Ok(())
    }
}

impl DedicatedPool {
    /// As many connections as `FLASHGATE_REDIS_POOL_SIZE`, made on first use. Their answers
    /// may take `wait` (the `WAIT` timeout) longer than other commands': a replica slow to
    /// confirm is answered `not_replicated`, not taken for Redis being down.
    pub(super) fn new(redis: &RedisSettings, wait: Duration) -> Result<Self, GateError> {
        let answered_within = redis.timeout + wait;
        let manager = if redis.cluster {
            let client = cluster_builder(redis)
                .response_timeout(answered_within)
                .build()
                .map_err(|e| GateError::Misconfigured(format!("REDIS_URL: {e}")))?;
            DedicatedManager::Cluster(Box::new(client))
        } else {
            let url = redis.urls.first().map(String::as_str).unwrap_or_default();
            let config = single_config(redis).set_response_timeout(Some(answered_within));
            DedicatedManager::Single(Box::new(Manager::new_with_config(url, config)?))
        };
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(redis.pool_size)
            .wait_timeout(Some(redis.timeout))
            .create_timeout(Some(redis.timeout))
            .recycle_timeout(Some(redis.timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| GateError::Unavailable(e.to_string()))?;
        Ok(Self(pool))
    }

    /// A connection no other request uses until it is dropped. Every one of them busy until the
    /// wait timed out means replicas are not confirming: answered as [`GateError::NotReplicated`],
    /// which a client retries under the same key.
    pub(super) async fn get(&self) -> Result<DedicatedConnection, GateError> {
        use deadpool::managed::PoolError;
        // Boxed, as `Source::get` is: the connect path is rare and large.
        match Box::pin(self.0.get()).await {
            Ok(conn) => Ok(conn),
            Err(PoolError::Timeout(deadpool::managed::TimeoutType::Wait)) => {
                Err(GateError::NotReplicated)
            }
            Err(PoolError::Backend(err)) => Err(err.into()),
            Err(other) => Err(GateError::Unavailable(other.to_string())),
        }
    }
}

impl DedicatedPool {
    /// Drops `lease` instead of returning it to the pool when `err` says its connection failed
    /// (a connection that answered, even with an error reply, goes back).
    pub(super) fn discard_if_broken(lease: Option<DedicatedConnection>, err: &GateError) {
        if let (Some(lease), GateError::Unavailable(_)) = (lease, err) {
            drop(deadpool::managed::Object::take(lease));
        }
    }
}

/// The connect and response timeouts of one server's connections.
fn single_config(redis: &RedisSettings) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(redis.timeout))
        .set_response_timeout(Some(redis.timeout))
}

/// The cluster client of these settings: the same connect and response timeouts as one server.
pub(super) fn cluster_builder(redis: &RedisSettings) -> ClusterClientBuilder {
    ClusterClientBuilder::new(redis.urls.clone())
        .connection_timeout(redis.timeout)
        .response_timeout(redis.timeout)
        // A slot moving (failover, resharding) is followed within the response timeout.
        .retries(3)
}

/// A server that is no cluster node answers the client's `CLUSTER SLOTS` with an error: that
/// is a configuration error, not an outage to retry forever.
fn cluster_connect_error(err: redis::RedisError) -> GateError {
    let text = err.to_string();
    if text.contains("cluster support disabled") {
        GateError::Misconfigured(format!(
            "FLASHGATE_REDIS_CLUSTER=true but REDIS_URL is not a Redis Cluster node ({text})"
        ))
    } else {
        err.into()
    }
}
