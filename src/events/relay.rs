//! The relay: carries outbox rows to the sinks and marks what they confirmed, and prunes old
//! rows (docs/DESIGN.md §11).
//!
//! One loop per sink. It wakes when this process commits events (the store's signal) or every
//! `poll_interval` for events other processes recorded — one query, whatever the catalogue's
//! size — claims the oldest unsent rows of SKUs no other relay holds (`Store::claim_events`:
//! an advisory lock per SKU for the claim's transaction, so many gates run relays without
//! sending a row twice in normal operation), hands them to the sink and marks, per SKU, the
//! prefix the sink confirmed. The broker is never on the buyer's path: while it is down the
//! sale and settlement go on, the outbox grows, and the loop retries with a jittered backoff.
//!
//! Delivery is at-least-once. A row is sent again when the relay did not learn of the
//! confirm in time, or died between the confirm and the mark (the claim's transaction rolls
//! back): a consumer then sees the same `id` twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::amqp::AmqpSink;
use super::webhook::WebhookSink;
use crate::store::{OutboxRow, Sink, Store};

/// What a sink did with a batch.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Confirmed by the sink: per SKU a prefix of the batch's rows.
    pub sent: Vec<Uuid>,
    /// Not confirmed within the retry period: marked done, left for the pull API.
    pub given_up: Vec<Uuid>,
    /// SKUs whose rows were not all confirmed: retried later from the first unconfirmed.
    pub failed_skus: Vec<String>,
    /// The sink itself failed (connection lost, timed out): back off before the next batch.
    pub broken: Option<String>,
}

impl Delivered {
    pub(super) fn broken(reason: String) -> Self {
        Self {
            broken: Some(reason),
            ..Self::default()
        }
    }

    pub(super) fn confirmed(&mut self, row: &OutboxRow) {
        self.sent.push(row.id);
    }
}

/// How the relay runs (`FLASHGATE_RELAY_*`, `FLASHGATE_OUTBOX_RETENTION`).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most rows claimed and sent at once.
    pub batch: usize,
    /// How often to look for events other processes recorded.
    pub poll_interval: Duration,
    /// How long rows are kept after every configured sink has them.
    pub retention: Duration,
    /// How often old rows are pruned.
    pub prune_interval: Duration,
    /// Longest pause while a sink or Postgres is failing.
    pub max_backoff: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 1000,
            poll_interval: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// How a sink is doing, for `/readyz` and the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Not configured.
    Off,
    /// Not tried yet.
    Starting,
    Up,
    /// Unreachable or refusing; the relay keeps trying.
    Down,
    /// Reached, but only a change of settings can help (an exchange of another type).
    Misconfigured,
}

/// What the relays report: each sink's state, and what waits to be sent.
#[derive(Debug, Clone, Default)]
pub struct RelayStatus {
    inner: Arc<Mutex<StatusInner>>,
    /// Set when a sink's pass sent or failed to send something: the backlog may have changed.
    /// A relay with nothing to do leaves it clear, and the backlog is then not read again.
    stirred: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// The exchange the broker sink publishes to.
    exchange: Option<String>,
    broker: Option<SinkState>,
    webhook: Option<SinkState>,
    /// Events not yet sent to the primary sink (the broker, else the webhook), capped.
    pending: i64,
    oldest: Option<chrono::DateTime<chrono::Utc>>,
    /// Per SKU: pending events and the oldest one's decision time, for the console.
    per_sku: HashMap<String, (i64, Option<chrono::DateTime<chrono::Utc>>)>,
}

/// `/readyz`'s `events` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventsReadiness {
    pub pending: i64,
    pub oldest_ms: i64,
    pub broker: SinkState,
    pub webhook: SinkState,
}

impl RelayStatus {
    fn set(&self, sink: Sink, state: SinkState) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match sink {
            Sink::Amqp => inner.broker = Some(state),
            Sink::Webhook => inner.webhook = Some(state),
        }
    }

    /// The exchange events are published to (the default when there is no broker sink).
    pub fn exchange(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .exchange
            .clone()
            .unwrap_or_else(|| super::contract::DEFAULT_EXCHANGE.to_owned())
    }

    pub fn readiness(&self) -> EventsReadiness {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        EventsReadiness {
            pending: inner.pending,
            oldest_ms: inner
                .oldest
                .map(|at| (chrono::Utc::now() - at).num_milliseconds().max(0))
                .unwrap_or(0),
            broker: inner.broker.clone().unwrap_or(SinkState::Off),
            webhook: inner.webhook.clone().unwrap_or(SinkState::Off),
        }
    }

    /// The SKU's pending events and how old the oldest is, in ms.
    pub fn sku_backlog(&self, sku: &str) -> (i64, i64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.per_sku.get(sku).map_or((0, 0), |(pending, oldest)| {
            let age = oldest.map_or(0, |at| (chrono::Utc::now() - at).num_milliseconds().max(0));
            (*pending, age)
        })
    }
}

/// A configured sink.
#[derive(Debug)]
enum Target {
    Amqp(Box<AmqpSink>),
    Webhook(Box<WebhookSink>),
}

impl Target {
    fn sink(&self) -> Sink {
        match self {
            Self::Amqp(_) => Sink::Amqp,
            Self::Webhook(_) => Sink::Webhook,
        }
    }

    async fn deliver(&mut self, rows: &[OutboxRow]) -> Delivered {
        match self {
            Self::Amqp(sink) => sink.deliver(rows).await,
            Self::Webhook(sink) => sink.deliver(rows).await,
        }
    }

    /// Connects when the sink has a connection (the broker), so `/readyz` tells the truth even
    /// while nothing is sent.
    async fn ready(&mut self) -> Result<(), SinkFailure> {
        match self {
            Self::Amqp(sink) => sink.connect().await.map(|_| ()).map_err(|err| SinkFailure {
                misconfigured: err.is_misconfiguration(),
                reason: err.to_string(),
            }),
            Self::Webhook(_) => Ok(()),
        }
    }
}

/// Why a sink could not take a batch.
#[derive(Debug)]
struct SinkFailure {
    reason: String,
    /// Only a change of settings can help.
    misconfigured: bool,
}

/// The relays of one process: one loop per configured sink, and the pruning.
#[derive(Debug)]
pub struct Relay {
    store: Store,
    settings: RelaySettings,
    targets: Vec<Target>,
    status: RelayStatus,
}

impl Relay {
    pub fn new(store: Store, settings: RelaySettings) -> Self {
        Self {
            store,
            settings,
            targets: Vec::new(),
            status: RelayStatus::default(),
        }
    }

    /// The same relay, reporting to `status` (one an API already shows).
    pub fn reporting_to(mut self, status: RelayStatus) -> Self {
        self.status = status;
        self
    }

    pub fn with_amqp(mut self, sink: AmqpSink) -> Self {
        self.status.set(Sink::Amqp, SinkState::Starting);
        self.status
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exchange = Some(sink.exchange().to_owned());
        self.targets.push(Target::Amqp(Box::new(sink)));
        self
    }

    pub fn with_webhook(mut self, sink: WebhookSink) -> Self {
        self.status.set(Sink::Webhook, SinkState::Starting);
        self.targets.push(Target::Webhook(Box::new(sink)));
        self
    }

    /// What `/readyz` and the console show of the relays.
    pub fn status(&self) -> RelayStatus {
        self.status.clone()
    }

    /// Runs every sink's loop, the backlog report and the pruning until `shutdown`. A batch
    /// under way is finished (or abandoned at the process's shutdown deadline, when it is sent
    /// again later).
    pub async fn run(self, shutdown: CancellationToken) {
        let done: Vec<Sink> = self.targets.iter().map(Target::sink).collect();
        let primary = done.first().copied();
        let mut tasks = tokio::task::JoinSet::new();
        for target in self.targets {
            let (store, settings, status, stop) = (
                self.store.clone(),
                self.settings.clone(),
                self.status.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move { send_loop(target, store, settings, status, stop).await });
        }
        if let Some(primary) = primary {
            let (store, status, stop) = (self.store.clone(), self.status.clone(), shutdown.clone());
            tasks.spawn(async move { report_backlog(store, primary, status, stop).await });
        }
        let (store, settings, stop) = (self.store.clone(), self.settings.clone(), shutdown.clone());
        tasks.spawn(async move { prune_loop(store, settings, done, stop).await });
        while tasks.join_next().await.is_some() {}
        tracing::info!("relay stopped");
    }
}

/// A jittered exponential backoff from 100 ms to `max`.
fn backoff(max: Duration) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn send_loop(
    mut target: Target,
    store: Store,
    settings: RelaySettings,
    status: RelayStatus,
    shutdown: CancellationToken,
) {
    let sink = target.sink();
    let mut recorded = store.watch_recorded();
    let mut pause = backoff(settings.max_backoff);
    let mut wait = Duration::ZERO;
    // SKUs whose last batch failed at the sink: left alone until their own backoff has passed.
    let mut resting: HashMap<String, (Instant, backon::ExponentialBackoff)> = HashMap::new();
    // One log line per outage, not one per attempt.
    let mut down_since: Option<Instant> = None;
    loop {
        // While the sink is down only the backoff wakes the loop; a commit would not help.
        let wake_on_commit = down_since.is_none();
        let sleep_for = if wait.is_zero() {
            settings.poll_interval
        } else {
            wait
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            // The store keeps the sender alive as long as this loop holds the store.
            _ = recorded.changed(), if wake_on_commit => {}
            () = tokio::time::sleep(sleep_for) => {}
        }
        wait = Duration::ZERO;
        resting.retain(|_, (until, _)| *until > Instant::now());
        let skip: Vec<String> = resting.keys().cloned().collect();
        let sent = send_batches(&mut target, &store, &settings, &skip).await;
        if !matches!(&sent, Ok(SentPass { claimed: false, .. })) {
            status
                .stirred
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match sent.map(|pass| pass.failed_skus) {
            Ok(failed_skus) => {
                if down_since.take().is_some() {
                    tracing::info!(sink = sink.as_str(), "relay is sending again");
                }
                status.set(sink, SinkState::Up);
                pause = backoff(settings.max_backoff);
                for sku in failed_skus {
                    let entry = resting
                        .entry(sku)
                        .or_insert_with(|| (Instant::now(), backoff(settings.max_backoff)));
                    entry.0 = Instant::now() + entry.1.next().unwrap_or(settings.max_backoff);
                }
                if let Some(soonest) = resting.values().map(|(until, _)| *until).min() {
                    wait = soonest
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(1), settings.poll_interval);
                }
            }
            Err(failure) => {
                status.set(
                    sink,
                    if failure.misconfigured {
                        SinkState::Misconfigured
                    } else {
                        SinkState::Down
                    },
                );
                if down_since.is_none() {
                    tracing::warn!(sink = sink.as_str(), reason = %failure.reason,
                        "relay cannot send events; they wait in the outbox and the sale goes on");
                } else {
                    tracing::debug!(sink = sink.as_str(), reason = %failure.reason,
                        "relay still cannot send");
                }
                down_since.get_or_insert_with(Instant::now);
                wait = pause.next().unwrap_or(settings.max_backoff);
            }
        }
    }
}

/// What one pass of a sink's loop did.
struct SentPass {
    /// Whether it claimed anything.
    claimed: bool,
    /// SKUs that failed at the sink (they rest a while).
    failed_skus: Vec<String>,
}

/// Claims and sends batches until nothing is left, or the sink or Postgres fails.
async fn send_batches(
    target: &mut Target,
    store: &Store,
    settings: &RelaySettings,
    skip: &[String],
) -> Result<SentPass, SinkFailure> {
    let sink = target.sink();
    let postgres = |err: crate::store::StoreError| SinkFailure {
        reason: format!("postgres: {err}"),
        misconfigured: false,
    };
    target.ready().await?;
    let mut skip = skip.to_vec();
    let mut failed_skus = Vec::new();
    let mut claimed = false;
    loop {
        let Some(mut claim) = store
            .claim_events(sink, settings.batch, &skip)
            .await
            .map_err(postgres)?
        else {
            return Ok(SentPass {
                claimed,
                failed_skus,
            });
        };
        claimed = true;
        let delivered = target.deliver(&claim.rows).await;
        let lag_metric = match sink {
            Sink::Amqp => "flashgate_outbox_lag_seconds",
            Sink::Webhook => "flashgate_webhook_lag_seconds",
        };
        let now = chrono::Utc::now();
        let sent: std::collections::HashSet<&Uuid> = delivered.sent.iter().collect();
        for row in claim.rows.iter().filter(|r| sent.contains(&r.id)) {
            let lag = (now - row.occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(lag_metric).record(lag);
        }
        claim
            .give_up(&delivered.given_up, "webhook retry period ran out")
            .await
            .map_err(postgres)?;
        let done: Vec<Uuid> = delivered
            .sent
            .iter()
            .chain(&delivered.given_up)
            .copied()
            .collect();
        claim.finish(&done).await.map_err(postgres)?;
        if let Some(reason) = delivered.broken {
            return Err(SinkFailure {
                reason,
                misconfigured: false,
            });
        }
        skip.extend(delivered.failed_skus.iter().cloned());
        failed_skus.extend(delivered.failed_skus);
        // A claim takes at most a few hundred SKUs and a share of the batch per SKU: claim
        // again until nothing is left, however the events are spread.
    }
}

/// Keeps `/readyz`, the console and `flashgate_outbox_pending{sku}` up to date, about once a
/// second: one query, pending counted from the cursors rather than by reading the events.
async fn report_backlog(
    store: Store,
    sink: Sink,
    status: RelayStatus,
    shutdown: CancellationToken,
) {
    let gauge = match sink {
        Sink::Amqp => "flashgate_outbox_pending",
        Sink::Webhook => "flashgate_webhook_pending",
    };
    let mut reported: Vec<String> = Vec::new();
    loop {
        let quiet = reported.is_empty()
            && !status
                .stirred
                .swap(false, std::sync::atomic::Ordering::Relaxed);
        let backlog = if quiet {
            // Nothing was pending and no pass has sent or failed since: still nothing.
            Ok(Vec::new())
        } else {
            store.event_backlog(sink).await
        };
        match backlog {
            Ok(backlog) => {
                let now: std::collections::HashSet<&str> =
                    backlog.iter().map(|b| b.sku.as_str()).collect();
                for sku in reported.iter().filter(|sku| !now.contains(sku.as_str())) {
                    metrics::gauge!(gauge, "sku" => sku.clone()).set(0.0);
                }
                let mut inner = status.inner.lock().unwrap_or_else(|p| p.into_inner());
                inner.pending = backlog.iter().map(|b| b.pending).sum();
                inner.oldest = backlog.iter().filter_map(|b| b.oldest).min();
                inner.per_sku = backlog
                    .iter()
                    .map(|b| (b.sku.clone(), (b.pending, b.oldest)))
                    .collect();
                for b in &backlog {
                    metrics::gauge!(gauge, "sku" => b.sku.clone()).set(b.pending as f64);
                }
                reported = backlog.into_iter().map(|b| b.sku).collect();
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the outbox backlog"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Deletes rows past the retention period that every configured sink has, in batches of
/// 1,000, every `prune_interval`.
async fn prune_loop(
    store: Store,
    settings: RelaySettings,
    done: Vec<Sink>,
    shutdown: CancellationToken,
) {
    const BATCH: i64 = 1000;
    loop {
        loop {
            match store.prune_events(settings.retention, &done, BATCH).await {
                Ok(pruned) => {
                    metrics::counter!("flashgate_outbox_pruned_total").increment(pruned);
                    if pruned < BATCH as u64 || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cannot prune the outbox");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.prune_interval) => {}
        }
    }
}
