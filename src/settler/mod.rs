//! The settler: makes Postgres follow every decision the gate made, exactly once and in order
//! (docs/DESIGN.md §2).
//!
//! Each SKU has a row `settlement_cursor(sku, last_event_id)`. A batch reads the events after
//! the cursor from the SKU's stream, then in one transaction locks the cursor row, checks it
//! still names the event it read from (else another settler got there first: roll back and
//! re-read), applies the batch (`store/batch.rs`), advances the cursor and commits. Only then is the
//! stream trimmed below the cursor and are refusals written back to Redis. Any number of
//! settlers may run; they serialise on the cursor row, and a crash at any point loses nothing:
//! the stream still holds every event the cursor has not passed.

mod faults;
mod isolation;

pub use crate::store::RejectionReason;
pub use faults::{FaultPoint, Faults};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{BuyerId, EventId, IdempotencyKey, Quantity, ReservationId, Sku};
use crate::gate::{Gate, GateError, RejectedHold, StreamRead};
use crate::store::{CursorLock, CursorTurn, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Why a settler step failed.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A conditional write that must succeed did not: the batch was rolled back.
    #[error("settlement invariant broken: {0}")]
    Invariant(String),
    /// A fault injected by a test.
    #[error("fault injected at {0:?}")]
    Injected(FaultPoint),
    #[error("no settlement cursor for SKU {0}")]
    NoCursor(Sku),
    /// Another settler kept the SKU's cursor longer than the caller could wait.
    #[error("settling {0} took longer than the caller could wait")]
    TimedOut(Sku),
    /// The SKU's stream no longer continues from the settlement cursor (Redis lost or replaced
    /// it). Nothing is applied or trimmed until a resync fences the stream.
    #[error(
        "the event stream of {sku} no longer holds the settlement cursor {cursor}; resync the SKU"
    )]
    StreamBroken { sku: Sku, cursor: EventId },
}

impl From<sqlx::Error> for SettleError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

/// How the settler paces itself.
#[derive(Debug, Clone)]
pub struct SettlerSettings {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// Pause between passes over the SKUs when there was nothing to do.
    pub idle_interval: Duration,
    /// Longest pause after repeated failures (Postgres or Redis down).
    pub max_backoff: Duration,
    /// Longest a caller of `settle_through` (a commit) waits for Postgres.
    pub settle_through_timeout: Duration,
}

impl Default for SettlerSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_interval: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            settle_through_timeout: Duration::from_secs(5),
        }
    }
}

/// What one call to [`Settler::settle_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// No event after the cursor.
    Idle,
    /// Another settler holds the SKU's cursor (only when not waiting for it).
    Busy,
    /// The cursor moved between reading the stream and locking it; nothing was applied.
    Moved,
    /// A batch was committed.
    Applied { events: usize, rejected: usize },
}

/// Applies the gate's decisions to Postgres; cheap to clone.
#[derive(Debug, Clone)]
pub struct Settler {
    gate: Gate,
    store: Store,
    settings: SettlerSettings,
    faults: Faults,
    /// Per SKU: the queue of this process's `settle_through` callers and how far it knows the
    /// SKU is settled.
    turns: Arc<std::sync::Mutex<HashMap<Sku, Arc<SkuTurn>>>>,
    /// SKUs whose background batch failed, left alone for a while (see `isolation`).
    quarantine: Arc<isolation::Quarantine>,
    /// SKUs this process knows to have work for the background pass.
    hints: Arc<std::sync::Mutex<std::collections::HashSet<Sku>>>,
    /// When the background pass last scanned every SKU.
    last_scan: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How often the background settler scans every SKU for events it was not told about (another
/// process appended them). Events this process's gate appends are settled on its next pass.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// One SKU's commit queue in this process (group commit).
///
/// `settled_through` is the highest cursor this process has seen committed in Postgres for the
/// SKU. A batch settles up to `batch_size` events, so the commit that applies it also settles
/// every commit queued behind it; those return as soon as the batch commits, without a
/// Postgres round trip each. Stream ids only grow: `XADD *` never goes below the stream's last id,
/// the settler refuses a stream that no longer holds its cursor, and resync recreates such a
/// stream above the cursor (`lua/fence_stream.lua`), so a watermark cannot claim an event that
/// was not settled.
#[derive(Debug, Default)]
struct SkuTurn {
    queue: tokio::sync::Mutex<()>,
    settled_through: std::sync::Mutex<Option<EventId>>,
}

impl SkuTurn {
    fn covers(&self, event: EventId) -> bool {
        self.settled_through
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|settled| settled >= event)
    }

    fn observe(&self, cursor: EventId) {
        let mut settled = self
            .settled_through
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if settled.is_none_or(|settled| settled < cursor) {
            *settled = Some(cursor);
        }
    }
}

impl Settler {
    pub fn new(gate: Gate, store: Store, settings: SettlerSettings) -> Self {
        let quarantine = isolation::Quarantine::new(
            settings.idle_interval.max(Duration::from_millis(10)),
            settings.max_backoff,
        );
        Self {
            gate,
            store,
            settings,
            faults: Faults::default(),
            turns: Arc::default(),
            quarantine: Arc::new(quarantine),
            hints: Arc::default(),
            last_scan: Arc::default(),
        }
    }

    /// The same settler, failing at the points `faults` chooses (tests only).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Settles every SKU until `shutdown` is cancelled. A batch under way is finished first.
    /// A SKU that fails is benched on its own while the others go on; when everything fails
    /// (Postgres or Redis down) the pass is retried with a jittered, capped exponential backoff:
    /// the gate keeps admitting from Redis meanwhile, and the settler catches up when they return.
    pub async fn run(&self, shutdown: CancellationToken) {
        let first = self.settings.idle_interval.max(Duration::from_millis(10));
        let mut backoff = isolation::backoff(first, self.settings.max_backoff);
        while !shutdown.is_cancelled() {
            let pause = match self.pass(&shutdown).await {
                Ok(true) => {
                    backoff = isolation::backoff(first, self.settings.max_backoff);
                    continue;
                }
                Ok(false) => {
                    backoff = isolation::backoff(first, self.settings.max_backoff);
                    self.settings.idle_interval
                }
                Err(err) => {
                    let pause = backoff.next().unwrap_or(self.settings.max_backoff);
                    tracing::warn!(error = %err, retry_in = ?pause, "settler pass failed");
                    pause
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("settler stopped");
    }

    /// One pass: retries pending write-backs, then one batch for each SKU known to have work
    /// and not benched. A SKU has work when this process decided something for it (a hint, see
    /// [`Settler::hint`]), when its last batch was full, or — found by a scan every
    /// [`FULL_SCAN_EVERY`], one Postgres query and one pipelined Redis round trip for all SKUs —
    /// when its stream has events another process appended. An idle catalogue therefore costs
    /// one cheap scan a second, not a batch attempt per SKU per pass. Returns whether any work
    /// was done; fails only when every SKU tried failed.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<bool, SettleError> {
        let mut worked = self.write_back_rejections(None).await? > 0;
        let mut candidates: Vec<Sku> = self.take_hints();
        if self.scan_due() {
            let cursors = self.store.settlement_cursors().await?;
            candidates.extend(self.gate.skus_with_events(&cursors).await?);
        }
        candidates.sort();
        candidates.dedup();
        let (mut tried, mut failed, mut last_failure) = (0, 0, None);
        for sku in candidates {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.quarantine.may_try(&sku) {
                // Benched: look again once its backoff has passed.
                self.hint(&sku);
                continue;
            }
            tried += 1;
            match self
                .settle_batch_locking(&sku, CursorLock::SkipLocked)
                .await
            {
                Ok(outcome) => {
                    self.quarantine.succeeded(&sku);
                    match outcome {
                        BatchOutcome::Applied { events, .. } => {
                            worked = true;
                            if events >= self.settings.batch_size {
                                self.hint(&sku);
                            }
                        }
                        // Another settler has it or got there first: look again next pass.
                        BatchOutcome::Moved | BatchOutcome::Busy => {
                            worked = true;
                            self.hint(&sku);
                        }
                        BatchOutcome::Idle => {}
                    }
                }
                Err(err) => {
                    failed += 1;
                    self.hint(&sku);
                    let retry_in = self.quarantine.failed(&sku);
                    metrics::counter!("flashgate_settle_failures_total", "sku" => sku.to_string())
                        .increment(1);
                    tracing::warn!(sku = %sku, error = %err, ?retry_in,
                        "cannot settle this SKU; the others go on");
                    last_failure = Some(err);
                }
            }
        }
        match last_failure {
            Some(err) if failed == tried => Err(err),
            _ => Ok(worked),
        }
    }

    /// Tells this process's settler that `sku` has new events (the gate just appended one).
    pub fn hint(&self, sku: &Sku) {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sku.clone());
    }

    fn take_hints(&self) -> Vec<Sku> {
        std::mem::take(&mut *self.hints.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Whether the full scan is due (and, if so, marks it done now).
    fn scan_due(&self) -> bool {
        let mut last = self.last_scan.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(at) if at.elapsed() < FULL_SCAN_EVERY => false,
            _ => {
                *last = Some(std::time::Instant::now());
                true
            }
        }
    }

    /// Applies one batch of the SKU's events, waiting for the cursor if another settler has it.
    pub async fn settle_batch(&self, sku: &Sku) -> Result<BatchOutcome, SettleError> {
        self.settle_batch_locking(sku, CursorLock::Wait).await
    }

    /// Settles the SKU until no event is left after its cursor and every refusal is written
    /// back to Redis; returns the events applied.
    pub async fn drain(&self, sku: &Sku) -> Result<usize, SettleError> {
        let mut total = 0;
        loop {
            match self.settle_batch(sku).await? {
                BatchOutcome::Idle => {
                    self.write_back_rejections(Some(sku)).await?;
                    return Ok(total);
                }
                BatchOutcome::Applied { events, .. } => total += events,
                BatchOutcome::Moved | BatchOutcome::Busy => {}
            }
        }
    }

    /// Settles the SKU at least up to the event `through`, whoever applies it, waiting at most
    /// `settle_through_timeout`.
    ///
    /// Callers (every commit) queue in process, one per SKU at a time, without holding a
    /// Postgres connection: the caller ahead usually settles the events of those behind it, who
    /// then need only one cursor read. Against settlers in other processes the cursor row is
    /// taken with `SKIP LOCKED`; while another settler holds it (it is most likely applying
    /// `through` right now) this waits with a growing pause and looks again.
    pub async fn settle_through(&self, sku: &Sku, through: EventId) -> Result<(), SettleError> {
        let turn = self.local_turn(sku);
        if turn.covers(through) {
            return Ok(());
        }
        let settle = async {
            let _turn = turn.queue.lock().await;
            // The caller ahead in the queue most likely settled this event with its batch.
            if turn.covers(through) {
                return Ok(());
            }
            let mut pause = Duration::from_millis(2);
            loop {
                let cursor = self
                    .store
                    .settlement_cursor(sku)
                    .await?
                    .ok_or_else(|| SettleError::NoCursor(sku.clone()))?;
                turn.observe(cursor);
                if cursor >= through {
                    return Ok(());
                }
                match self
                    .settle_batch_from(sku, cursor, CursorLock::SkipLocked)
                    .await?
                {
                    BatchOutcome::Applied { .. } => continue,
                    BatchOutcome::Idle => {
                        // Nothing after the cursor the batch read. Another settler may have moved
                        // the cursor past `through` since `cursor` was read: look again.
                        let now = self.store.settlement_cursor(sku).await?.unwrap_or_default();
                        if now >= through {
                            return Ok(());
                        }
                        // Still behind, and the stream has nothing after it: the event is gone
                        // (Redis lost data). Nothing more can be applied.
                        return Err(SettleError::Invariant(format!(
                            "event {through} of {sku} is not in the stream after cursor {now}"
                        )));
                    }
                    BatchOutcome::Busy | BatchOutcome::Moved => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                }
            }
        };
        tokio::time::timeout(self.settings.settle_through_timeout, settle)
            .await
            .unwrap_or_else(|_| Err(SettleError::TimedOut(sku.clone())))
    }

    /// The in-process queue of `settle_through` callers for one SKU.
    fn local_turn(&self, sku: &Sku) -> Arc<SkuTurn> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(sku.clone()).or_default().clone()
    }

    async fn settle_batch_locking(
        &self,
        sku: &Sku,
        lock: CursorLock,
    ) -> Result<BatchOutcome, SettleError> {
        let Some(cursor) = self.store.settlement_cursor(sku).await? else {
            return Err(SettleError::NoCursor(sku.clone()));
        };
        self.settle_batch_from(sku, cursor, lock).await
    }

    /// Applies one batch of the SKU's events after `cursor`, the settlement cursor as the
    /// caller last read it, waiting for the cursor row if another settler has it.
    pub async fn settle_batch_after(
        &self,
        sku: &Sku,
        cursor: EventId,
    ) -> Result<BatchOutcome, SettleError> {
        self.settle_batch_from(sku, cursor, CursorLock::Wait).await
    }

    #[tracing::instrument(skip(self), fields(sku = %sku))]
    async fn settle_batch_from(
        &self,
        sku: &Sku,
        cursor: EventId,
        lock: CursorLock,
    ) -> Result<BatchOutcome, SettleError> {
        let events = match self
            .gate
            .events_after(sku, cursor, self.settings.batch_size)
            .await?
        {
            StreamRead::Events(events) => events,
            StreamRead::Broken => {
                // Another settler may have committed past `cursor` since it was read and trimmed
                // the entries below its new cursor: that is a moved cursor, not a lost stream.
                let now = self.store.settlement_cursor(sku).await?;
                if now.is_some_and(|now| now != cursor) {
                    return Ok(BatchOutcome::Moved);
                }
                metrics::counter!("flashgate_broken_streams_total", "sku" => sku.to_string())
                    .increment(1);
                return Err(SettleError::StreamBroken {
                    sku: sku.clone(),
                    cursor,
                });
            }
        };
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(BatchOutcome::Idle);
        };
        let mut batch = match self.store.lock_cursor(sku, cursor, lock).await? {
            CursorTurn::Locked(batch) => batch,
            CursorTurn::Busy => return Ok(BatchOutcome::Busy),
            CursorTurn::Moved => return Ok(BatchOutcome::Moved),
        };
        let applied = batch
            .apply(&events, &|| self.faults.fails(FaultPoint::AfterInserts))
            .await
            .map_err(|err| match err {
                StoreError::Interrupted => SettleError::Injected(FaultPoint::AfterInserts),
                other => other.into(),
            })?;
        self.faults.check(FaultPoint::MidBatch)?;
        batch.commit(last).await?;
        self.local_turn(sku).observe(last);
        // How late Postgres learns of a decision: the batch's oldest event's age at commit.
        if let Some(decided) = events.first().and_then(|e| e.id.time()) {
            let lag = (chrono::Utc::now() - decided).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("flashgate_settlement_lag_seconds", "sku" => sku.to_string()).set(lag);
            metrics::histogram!("flashgate_settlement_delay_seconds").record(lag);
        }
        self.faults.check(FaultPoint::AfterCommit)?;

        metrics::counter!("flashgate_settled_events_total").increment(events.len() as u64);
        let rejected = applied.rejected.len();
        if rejected > 0 {
            metrics::counter!("flashgate_rejected_holds_total").increment(rejected as u64);
            crate::pulse::record(sku, crate::pulse::Outcome::Rejected, rejected as u64);
            for (hold, reason) in &applied.rejected {
                tracing::warn!(sku = %sku, hold = %hold.id, buyer = %hold.buyer, reason = reason.as_str(),
                    "postgres refused a hold redis admitted; redis has drifted");
            }
            self.write_back_rejections(Some(sku)).await?;
        }
        // Safe: everything below `last` is committed. A failure only leaves a longer stream.
        if let Err(err) = self.gate.trim_events_below(sku, last).await {
            tracing::warn!(error = %err, "could not trim the event stream");
        }
        Ok(BatchOutcome::Applied {
            events: events.len(),
            rejected,
        })
    }

    /// Writes pending refusals back to Redis (all SKUs, or one) and clears them from the outbox.
    async fn write_back_rejections(&self, sku: Option<&Sku>) -> Result<usize, SettleError> {
        let pending = self.store.pending_rejections(sku).await?;
        for row in &pending {
            let hold = RejectedHold {
                id: ReservationId::from_uuid(row.reservation_id),
                buyer: BuyerId::parse(&row.buyer_id)
                    .map_err(|e| SettleError::Invariant(e.to_string()))?,
                idempotency_key: IdempotencyKey::from_decoded(row.idempotency_key.clone())
                    .map_err(|e| SettleError::Invariant(e.to_string()))?,
                quantity: Quantity::parse(i64::from(row.quantity))
                    .map_err(|e| SettleError::Invariant(e.to_string()))?,
            };
            self.gate.reject(&row.sku, &hold).await?;
            self.store.clear_rejection(row.reservation_id).await?;
        }
        Ok(pending.len())
    }
}
