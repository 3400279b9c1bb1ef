//! The in-process sold-out shortcut: once a SKU is sold out, a buyer who never held a unit of it
//! is answered `sold_out` without a Redis round trip.
//!
//! Why only such buyers: a buyer who holds (or held) a unit may be retrying a request whose 201
//! was lost, and must get the stored answer; their request still goes to Redis, as does any
//! buyer's while the shortcut is off. `reserve.lua` records every buyer who gets a hold in the
//! SKU's `buyers` set; when the gate sees `sold_out` with no unit left it loads that set and
//! turns the shortcut on for the SKU.
//!
//! Why it stays correct when units come back: every script that returns units or changes the
//! sale (release, expiry, restock, pause/resume, prewarm, resync) announces the SKU, and the
//! listener here drops the SKU's shortcut as soon as the message arrives. On one Redis the
//! announcement is a `PUBLISH` on the namespace's `sale-changed` channel, to which the listener
//! is subscribed for good. On a cluster a `PUBLISH` would cross the whole cluster bus for every
//! release, so it is a sharded `SPUBLISH` on the SKU's own channel (`<ns>:{sku}:sale-changed`,
//! in the SKU's slot), and a gate `SSUBSCRIBE`s to a SKU the first time it sees it sold out; the
//! shortcut is turned on only by a later `sold_out`, read after that subscription was
//! confirmed, so no announcement can fall between the two. While the subscription is down the
//! shortcut is off everywhere. An epoch, bumped by every message (and by every new sharded
//! subscription), keeps a shortcut from being turned on with a `buyers` set read before a
//! message that arrived meanwhile. A release or expiry through this gate turns its own
//! shortcut off before it answers, without waiting for the message.
//!
//! Why it cannot lie for long: a message can still be lost without the connection noticing (a
//! network path that drops packets silently). So an entry is trusted for [`MAX_AGE`] only; after
//! that the next buyer goes to Redis, and a `sold_out` answer re-confirms the entry with a fresh
//! `buyers` set. Only one such load per SKU runs at a time, so a crowd arriving at the moment of
//! sell-out does not each copy the set. The bound on a wrong refusal is therefore the delivery
//! time of one message on a healthy subscription, and [`MAX_AGE`] when messages are lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind};

use super::{GateError, GateInner, Namespace, RedisSettings};
use crate::domain::{BuyerId, Sku};

/// Longest an entry is trusted before a buyer's request goes to Redis again to re-confirm it.
pub(super) const MAX_AGE: Duration = Duration::from_secs(1);

/// A sold-out SKU: the buyers who got a hold on it, and when Redis last said it was sold out.
#[derive(Debug)]
struct Entry {
    buyers: Arc<HashSet<String>>,
    confirmed: Instant,
}

impl Entry {
    fn fresh(&self) -> bool {
        self.confirmed.elapsed() < MAX_AGE
    }
}

#[derive(Debug, Default)]
pub(super) struct SoldOutShortcut {
    enabled: bool,
    /// Whether the listener is subscribed; the shortcut answers only while it is.
    listening: AtomicBool,
    /// Bumped by every message and every change of `listening`.
    epoch: AtomicU64,
    /// Sold-out SKUs.
    sold_out: RwLock<HashMap<Sku, Entry>>,
    /// SKUs whose `buyers` set is being loaded right now (one load per SKU at a time).
    loading: Mutex<HashSet<Sku>>,
    /// On a cluster: the subscription connection and the SKUs it is subscribed to.
    sharded: Option<Sharded>,
}

/// Per-SKU sharded subscriptions on a cluster.
struct Sharded {
    namespace: Namespace,
    connection: Mutex<Option<ClusterConnection>>,
    subscribed: Mutex<HashSet<Sku>>,
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sharded")
    }
}

/// The right to load one SKU's `buyers` set; released on drop.
#[derive(Debug)]
pub(super) struct Loading<'a> {
    shortcut: &'a SoldOutShortcut,
    sku: Sku,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.shortcut
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.sku);
    }
}

impl SoldOutShortcut {
    /// `sharded` is the namespace of a cluster deployment, `None` on one Redis.
    pub(super) fn new(enabled: bool, sharded: Option<Namespace>) -> Self {
        Self {
            enabled,
            sharded: sharded.map(|namespace| Sharded {
                namespace,
                connection: Mutex::default(),
                subscribed: Mutex::default(),
            }),
            ..Self::default()
        }
    }

    /// Makes sure announcements of `sku` reach this gate. On one Redis the namespace channel
    /// covers every SKU: always true. On a cluster, subscribes to the SKU's channel if it is
    /// not yet and answers false: a shortcut may then be turned on only by a `sold_out` read
    /// after this call, never by one read before the subscription existed.
    pub(super) async fn subscribed(&self, sku: &Sku) -> bool {
        let Some(sharded) = &self.sharded else {
            return true;
        };
        if lock(&sharded.subscribed).contains(sku) {
            return true;
        }
        let Some(mut conn) = lock(&sharded.connection).clone() else {
            return false;
        };
        match conn
            .ssubscribe(sharded.namespace.sku(sku).sale_changed())
            .await
        {
            Ok(()) => self.mark_subscribed(sku),
            Err(err) => {
                tracing::debug!(sku = %sku, error = %err, "cannot subscribe to the SKU's sale-changed channel")
            }
        }
        false
    }

    /// Records a confirmed subscription and bumps the epoch: a request whose `sold_out` was
    /// read before the subscription existed (its epoch is older) cannot turn the shortcut on,
    /// since an announcement between its read and the subscription never reached this gate.
    fn mark_subscribed(&self, sku: &Sku) {
        if let Some(sharded) = &self.sharded {
            let _sold_out = self.write();
            lock(&sharded.subscribed).insert(sku.clone());
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this request may be refused `sold_out` here, without Redis.
    pub(super) fn refuses(&self, sku: &Sku, buyer: &BuyerId) -> bool {
        self.enabled
            && self.listening.load(Ordering::Acquire)
            && self
                .read()
                .get(sku)
                .is_some_and(|entry| entry.fresh() && !entry.buyers.contains(buyer.as_str()))
    }

    /// The right to load the SKU's buyers, unless another request is loading them already.
    pub(super) fn begin_load(&self, sku: &Sku) -> Option<Loading<'_>> {
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        loading.insert(sku.clone()).then(|| Loading {
            shortcut: self,
            sku: sku.clone(),
        })
    }

    /// Whether the SKU has an entry that is still trusted.
    pub(super) fn is_on(&self, sku: &Sku) -> bool {
        self.read().get(sku).is_some_and(Entry::fresh)
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Turns the shortcut on for `sku`, unless anything changed since `seen_epoch`.
    pub(super) fn turn_on(&self, sku: &Sku, buyers: HashSet<String>, seen_epoch: u64) {
        let mut sold_out = self.write();
        // Checked under the write lock that `turn_off` also takes: no message slips between.
        if self.listening() && self.epoch() == seen_epoch {
            let entry = Entry {
                buyers: Arc::new(buyers),
                confirmed: Instant::now(),
            };
            sold_out.insert(sku.clone(), entry);
        }
    }

    /// Units of the SKU came back (a message, or a release through this gate).
    pub(super) fn turn_off(&self, sku: &Sku) {
        let mut sold_out = self.write();
        sold_out.remove(sku);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn set_listening(&self, listening: bool) {
        let mut sold_out = self.write();
        sold_out.clear();
        if let Some(sharded) = &self.sharded {
            // Whatever was subscribed on a connection that went away is subscribed afresh.
            lock(&sharded.subscribed).clear();
        }
        self.listening.store(listening, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Sku, Entry>> {
        self.sold_out.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Sku, Entry>> {
        self.sold_out.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is one insert, remove or assignment: a poisoned lock still holds a whole value.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the listener subscribes with.
#[derive(Debug)]
pub(super) enum Subscription {
    /// One server: the namespace's channel, subscribed for good.
    Namespace {
        client: redis::Client,
        channel: String,
    },
    /// A cluster: per-SKU sharded channels, subscribed as SKUs sell out.
    Sharded(RedisSettings),
}

/// How often the subscription is pinged, and how long its answer may take: a connection that
/// stops answering (a dead network path, no FIN) is dropped and made anew, the shortcut off
/// meanwhile.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_DEADLINE: Duration = Duration::from_secs(1);

/// Runs [`listen`] on a thread of its own, with its own single-threaded runtime: however busy
/// the HTTP workers are, a `sale-changed` message is read as soon as it arrives, not after the
/// requests queued ahead of it on the server's runtime (with 32 buyers looping on a 2-core
/// machine that queue held the message for 6 ms at the median, during which the gate refused
/// units that were on sale again). The thread ends when the gate is dropped.
pub(super) fn spawn_listener(
    gate: Weak<GateInner>,
    subscription: Subscription,
) -> Result<(), GateError> {
    std::thread::Builder::new()
        .name("flashgate-sale-changed".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => match subscription {
                    Subscription::Namespace { client, channel } => {
                        runtime.block_on(listen(gate, client, channel))
                    }
                    Subscription::Sharded(redis) => runtime.block_on(listen_sharded(gate, redis)),
                },
                Err(err) => tracing::error!(error = %err,
                    "cannot start the sale-changed listener; the sold-out shortcut stays off"),
            }
        })
        .map(drop)
        .map_err(|err| {
            GateError::Protocol(format!("cannot start the sale-changed listener: {err}"))
        })
}

/// Subscribes to the namespace's `sale-changed` channel and turns shortcuts off as messages
/// arrive; pings the subscription every [`PING_EVERY`]; reconnects with backoff. Ends when the
/// gate is dropped.
async fn listen(gate: Weak<GateInner>, client: redis::Client, channel: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    let Some(inner) = gate.upgrade() else { return };
                    inner.shortcut.set_listening(true);
                    drop(inner);
                    backoff = Duration::from_millis(100);
                    let (mut sink, mut messages) = pubsub.split();
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Some(inner) = gate.upgrade() else { return };
                                match message
                                    .get_payload::<String>()
                                    .ok()
                                    .and_then(|raw| Sku::parse(&raw).ok())
                                {
                                    Some(sku) => inner.shortcut.turn_off(&sku),
                                    // Unreadable: be safe and forget every SKU.
                                    None => inner.shortcut.set_listening(true),
                                }
                            }
                            _ = ping.tick() => {
                                let answered =
                                    tokio::time::timeout(PING_DEADLINE, sink.ping::<redis::Value>()).await;
                                if !matches!(answered, Ok(Ok(_))) {
                                    tracing::warn!("sale-changed subscription does not answer its ping");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot subscribe to {channel}"),
            },
            Err(err) => tracing::debug!(error = %err, "cannot open a pub/sub connection"),
        }
        let Some(inner) = gate.upgrade() else { return };
        if inner.shortcut.listening() {
            tracing::warn!(
                "sale-changed subscription lost; sold-out shortcut off until it is back"
            );
        }
        inner.shortcut.set_listening(false);
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The cluster's listener: a RESP3 cluster connection whose pushes (sharded messages, and the
/// library's notice of a lost node connection) arrive here; SKUs are subscribed to by
/// [`SoldOutShortcut::subscribed`] on the same connection. Pings every node every
/// [`PING_EVERY`]; reconnects with backoff. Ends when the gate is dropped.
async fn listen_sharded(gate: Weak<GateInner>, redis: RedisSettings) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let connected = match super::connection::cluster_builder(&redis)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()
        {
            Ok(client) => client.get_async_connection().await,
            Err(err) => Err(err),
        };
        match connected {
            Ok(mut conn) => {
                let Some(inner) = gate.upgrade() else { return };
                if let Some(sharded) = &inner.shortcut.sharded {
                    *lock(&sharded.connection) = Some(conn.clone());
                }
                inner.shortcut.set_listening(true);
                drop(inner);
                backoff = Duration::from_millis(100);
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        push = pushes.recv() => {
                            let Some(push) = push else { break };
                            let Some(inner) = gate.upgrade() else { return };
                            on_push(&inner.shortcut, push);
                        }
                        _ = ping.tick() => {
                            let answered = tokio::time::timeout(
                                PING_DEADLINE,
                                redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                            )
                            .await;
                            if !matches!(answered, Ok(Ok(_))) {
                                tracing::warn!("sale-changed subscriptions do not answer their ping");
                                break;
                            }
                        }
                    }
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot open the cluster subscription connection")
            }
        }
        let Some(inner) = gate.upgrade() else { return };
        if inner.shortcut.listening() {
            tracing::warn!(
                "sale-changed subscriptions lost; sold-out shortcut off until they are back"
            );
        }
        if let Some(sharded) = &inner.shortcut.sharded {
            *lock(&sharded.connection) = None;
        }
        inner.shortcut.set_listening(false);
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One push of the cluster subscription connection.
fn on_push(shortcut: &SoldOutShortcut, push: PushInfo) {
    match push.kind {
        PushKind::SMessage => {
            let sku = push
                .data
                .get(1)
                .and_then(|payload| redis::from_redis_value_ref::<String>(payload).ok())
                .and_then(|raw| Sku::parse(&raw).ok());
            match sku {
                Some(sku) => shortcut.turn_off(&sku),
                // Unreadable: be safe and forget every SKU.
                None => shortcut.set_listening(true),
            }
        }
        // A node connection was lost (its subscriptions are made again by the client, but an
        // announcement may have been missed meanwhile), or the server dropped a subscription
        // (its slot moved): forget every SKU; each is subscribed again when next sold out.
        PushKind::Disconnection | PushKind::SUnsubscribe => shortcut.set_listening(true),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku() -> Sku {
        Sku::parse("hot").expect("sku")
    }

    /// On a cluster a `sold_out` read before the SKU's subscription existed may have missed an
    /// announcement: the shortcut must not turn on from it.
    #[test]
    fn a_sold_out_read_before_the_sharded_subscription_cannot_turn_the_shortcut_on() {
        let shortcut = SoldOutShortcut::new(true, Some(Namespace::parse("ns").expect("ns")));
        shortcut.set_listening(true);
        let read_before = shortcut.epoch();
        shortcut.mark_subscribed(&sku());
        shortcut.turn_on(&sku(), HashSet::new(), read_before);
        assert!(!shortcut.is_on(&sku()));

        let read_after = shortcut.epoch();
        shortcut.turn_on(&sku(), HashSet::new(), read_after);
        assert!(shortcut.is_on(&sku()));
    }
}
