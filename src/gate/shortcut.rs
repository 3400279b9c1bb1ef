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
//! sale (release, expiry, restock, pause/resume, prewarm, resync) publishes the SKU on the
//! namespace's `sale-changed` channel, and the listener here drops the SKU's shortcut as soon as
//! the message arrives. While the subscription is down the shortcut is off everywhere. An epoch,
//! bumped by every message, keeps a shortcut from being turned on with a `buyers` set read
//! before a message that arrived meanwhile. A release or expiry through this gate turns its own
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

use super::{GateError, GateInner};
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
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
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
    client: redis::Client,
    channel: String,
) -> Result<(), GateError> {
    std::thread::Builder::new()
        .name("flashgate-sale-changed".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(listen(gate, client, channel)),
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
