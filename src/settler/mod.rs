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
//!
//! Which SKUs the background loop looks at costs O(work), not O(catalogue): it wakes when this
//! process posts a SKU on the [`WorkBoard`] (`board.rs`), and only every
//! [`SettlerSettings::scan_interval`] scans its fleet share of the catalogue (`fleet.rs`) for
//! events other processes appended. Commits waiting on one SKU settle as a group: one batch and
//! one status read answer all of them ([`Settler::settle_for`]).
//!
//! - `board.rs`: what this process knows needs doing (SKUs with events, holds falling due);
//! - `fleet.rs`: live settlers share the safety-net scans;
//! - `isolation.rs`: one SKU that cannot settle is benched while the others go on;
//! - `faults.rs`: crash points for tests.

mod board;
mod faults;
mod fleet;
mod isolation;

pub use crate::store::RejectionReason;
pub use board::WorkBoard;
pub use faults::{FaultPoint, Faults};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use crate::domain::{
    BuyerId, EventId, IdempotencyKey, Quantity, ReservationId, ReservationStatus, Sku,
};
use crate::gate::{Gate, GateError, RejectedHold, StreamRead};
use crate::store::{CursorLock, CursorTurn, Store, StoreError};
use tokio::sync::oneshot;
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
    /// A decision's event is not in the stream after the cursor: Redis lost or replaced the
    /// stream after the decision was taken. Postgres cannot get it until a resync.
    #[error(
        "event {event} of {sku} is not in the stream after the settlement cursor {cursor}: redis \
         lost or replaced the stream; resync the SKU"
    )]
    EventMissing {
        sku: Sku,
        event: EventId,
        cursor: EventId,
    },
    /// The settlement of a group of commits failed; every commit of the group shares the cause.
    #[error(transparent)]
    Group(Arc<SettleError>),
    /// The task settling a group of commits stopped before it answered (it panicked).
    #[error("the group commit of {0} stopped before it answered")]
    GroupLost(Sku),
}

impl SettleError {
    /// Whether retrying later may succeed: a store unreachable, or a settlement that took too
    /// long or waits for a resync.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Gate(GateError::Unavailable(_) | GateError::NotReplicated) => true,
            Self::Store(err) => err.is_transient(),
            Self::TimedOut(_) | Self::StreamBroken { .. } | Self::EventMissing { .. } => true,
            Self::Group(shared) => shared.is_transient(),
            _ => false,
        }
    }
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
    /// Pause before looking again at a SKU another settler is settling; the first pause of a
    /// benched SKU and of the backoff while the stores are down.
    pub idle_interval: Duration,
    /// How often the background loop scans its share of the catalogue for events it was not
    /// told about (another process appended them): the safety net, not the way work is found.
    pub scan_interval: Duration,
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
            scan_interval: DEFAULT_SCAN_INTERVAL,
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
    /// What this process knows needs doing, shared with the sweeper and the use cases.
    board: Arc<WorkBoard>,
    /// This settler's place among the live settlers.
    fleet: Arc<fleet::Fleet>,
    /// Per SKU, the batch read from the stream and not yet committed to Postgres (see
    /// [`ReadAhead`]).
    read_ahead: Arc<std::sync::Mutex<HashMap<Sku, ReadAhead>>>,
}

/// Events this settler read after `after` and has not committed yet. Once read, they are
/// decisions buyers were told about: if Postgres refuses the batch for a while (a lock, a
/// timeout) and Redis then loses the stream, they are applied from here instead of being
/// forgotten with it. The settlement cursor still decides: they are applied only while it is
/// `after`, so nothing is applied twice.
#[derive(Debug, Clone)]
struct ReadAhead {
    after: EventId,
    events: Arc<[crate::gate::Event]>,
}

/// The default [`SettlerSettings::scan_interval`] (`FLASHGATE_SETTLER_SCAN_INTERVAL_MS`).
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// What one background pass leaves for the next.
#[derive(Debug, Default)]
struct Pass {
    /// SKUs to settle again at once (their batch was full).
    again_now: Vec<Sku>,
    /// SKUs to look at again after a short pause (another settler has them, or benched).
    again_soon: Vec<Sku>,
    /// Set when every SKU tried failed, or the scan failed with nothing else to try: the
    /// stores are likely down.
    failure: Option<SettleError>,
    /// The safety-net scan failed: run it again soon rather than after a whole interval.
    scan_failed: bool,
}

/// One SKU's settlement state in this process.
///
/// `queue` orders this process's `settle_through` callers; `settled_through` is the highest
/// cursor this process has seen committed in Postgres for the SKU, so a caller whose event a
/// batch already covered returns without a Postgres round trip. Stream ids only grow: `XADD *`
/// never goes below the stream's last id, the settler refuses a stream that no longer holds its
/// cursor, and resync recreates such a stream above the cursor (`lua/fence_stream.lua`), so a
/// watermark cannot claim an event that was not settled. `commits` is the group commit.
#[derive(Debug, Default)]
struct SkuTurn {
    queue: tokio::sync::Mutex<()>,
    settled_through: std::sync::Mutex<Option<EventId>>,
    commits: std::sync::Mutex<CommitGroup>,
}

/// The commits of one SKU waiting to be settled, and whether a leader is settling them.
#[derive(Debug, Default)]
struct CommitGroup {
    waiting: Vec<WaitingCommit>,
    leading: bool,
}

/// A commit waiting for Postgres: its hold, its event, and where to send the answer.
#[derive(Debug)]
struct WaitingCommit {
    hold: ReservationId,
    through: EventId,
    answer: oneshot::Sender<Result<Option<ReservationStatus>, Arc<SettleError>>>,
}

/// Marks the SKU's group as leaderless if its leader stops without saying so (a panic), so the
/// next commit starts a new leader instead of waiting for one that is gone.
struct Leading<'a> {
    group: &'a std::sync::Mutex<CommitGroup>,
    done: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.group.lock().unwrap_or_else(|p| p.into_inner()).leading = false;
        }
    }
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
            faults: Faults::default(),
            turns: Arc::default(),
            quarantine: Arc::new(quarantine),
            board: Arc::default(),
            fleet: Arc::new(fleet::Fleet::new(settings.scan_interval)),
            read_ahead: Arc::default(),
            settings,
        }
    }

    /// What this process knows needs doing: the use cases post on it, the sweeper reads it.
    pub fn board(&self) -> Arc<WorkBoard> {
        self.board.clone()
    }

    /// The same settler, failing at the points `faults` chooses (tests only).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Settles until `shutdown` is cancelled. A batch under way is finished first.
    ///
    /// The loop sleeps until a SKU is posted on the board or the next scan is due. A SKU that
    /// fails is benched with its own backoff while the others go on; a failed safety-net scan is
    /// retried soon, and the SKUs already known are settled meanwhile. When every SKU tried fails
    /// (Postgres or Redis down) the loop backs off with a jittered, capped exponential pause, deaf
    /// to posts meanwhile: the gate keeps admitting from Redis, and the settler catches up when
    /// they return.
    pub async fn run(&self, shutdown: CancellationToken) {
        let first = self.settings.idle_interval.max(Duration::from_millis(10));
        let mut backoff = isolation::backoff(first, self.settings.max_backoff);
        let mut next_scan = Instant::now();
        let mut soon: Vec<Sku> = Vec::new();
        while !shutdown.is_cancelled() {
            let mut candidates = self.board.take_to_settle();
            candidates.append(&mut soon);
            let scan = Instant::now() >= next_scan;
            if scan {
                next_scan = Instant::now() + self.settings.scan_interval;
            }
            let pass = self.pass(candidates, scan, &shutdown).await;
            soon = pass.again_soon;
            if let Some(err) = pass.failure {
                if scan {
                    // Scan again once the stores answer: what it looks for was not found.
                    next_scan = Instant::now();
                }
                let pause = backoff.next().unwrap_or(self.settings.max_backoff);
                tracing::warn!(error = %err, retry_in = ?pause, "settler pass failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            backoff = isolation::backoff(first, self.settings.max_backoff);
            if pass.scan_failed {
                next_scan =
                    Instant::now() + self.settings.max_backoff.min(self.settings.scan_interval);
            }
            if !pass.again_now.is_empty() {
                soon.extend(pass.again_now);
                continue;
            }
            let wait = if soon.is_empty() {
                next_scan.saturating_duration_since(Instant::now())
            } else {
                self.settings.idle_interval
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.board.posted() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.fleet.leave(&self.store).await;
        tracing::info!("settler stopped");
    }

    /// One pass: one batch for each SKU in `candidates` that is not benched, after — when
    /// `scan` — the safety-net scan of this settler's share of the catalogue (one Postgres
    /// query for the cursors, one pipelined Redis round trip per 1,000 SKUs) and the write-back
    /// of refusals a crash left in the outbox.
    async fn pass(
        &self,
        mut candidates: Vec<Sku>,
        scan: bool,
        shutdown: &CancellationToken,
    ) -> Pass {
        let mut pass = Pass::default();
        let mut scan_failure = None;
        if scan {
            match self.scan().await {
                Ok(found) => candidates.extend(found),
                // What this process knows needs settling is settled anyway: one failing scan
                // must not stop settlement for every SKU.
                Err(err) => {
                    metrics::counter!("flashgate_settler_scan_failures_total").increment(1);
                    tracing::warn!(error = %err, known = candidates.len(),
                        "the safety-net scan failed; settling the SKUs this process knows of");
                    pass.scan_failed = true;
                    scan_failure = Some(err);
                }
            }
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
                pass.again_soon.push(sku);
                continue;
            }
            tried += 1;
            // A SKU that failed may have failed writing its refusals back after its batch
            // committed: those are retried with it, not left for the next scan.
            let settled = async {
                if self.quarantine.was_benched(&sku) {
                    self.write_back_rejections(Some(&sku)).await?;
                }
                self.settle_batch_locking(&sku, CursorLock::SkipLocked)
                    .await
            };
            match settled.await {
                Ok(outcome) => {
                    self.quarantine.succeeded(&sku);
                    match outcome {
                        BatchOutcome::Applied { events, .. } => {
                            if events >= self.settings.batch_size {
                                pass.again_now.push(sku);
                            }
                        }
                        // Another settler has it or got there first: look again shortly.
                        BatchOutcome::Moved | BatchOutcome::Busy => pass.again_soon.push(sku),
                        BatchOutcome::Idle => {}
                    }
                }
                Err(err) => {
                    failed += 1;
                    let retry_in = self.quarantine.failed(&sku);
                    metrics::counter!("flashgate_settle_failures_total", "sku" => sku.to_string())
                        .increment(1);
                    tracing::warn!(sku = %sku, error = %err, ?retry_in,
                        "cannot settle this SKU; the others go on");
                    pass.again_soon.push(sku);
                    last_failure = Some(err);
                }
            }
        }
        if failed > 0 && failed == tried {
            pass.failure = last_failure;
        } else if tried == 0 {
            pass.failure = scan_failure;
        }
        pass
    }

    /// The safety net: beats in the fleet, writes back refusals left in the outbox, and returns
    /// the SKUs of this settler's share whose streams have events after their cursors.
    async fn scan(&self) -> Result<Vec<Sku>, SettleError> {
        self.faults.check(FaultPoint::Scan)?;
        let share = self.fleet.beat(&self.store).await?;
        self.board.set_share(share);
        // One refusal that cannot be written back must not keep the scan from finding work.
        if let Err(err) = self.write_back_rejections(None).await {
            tracing::warn!(error = %err, "cannot write refusals back to redis; the next scan retries");
        }
        let cursors = self.store.settlement_cursors(share).await?;
        metrics::gauge!("flashgate_settler_scanned_skus").set(cursors.len() as f64);
        Ok(self.gate.skus_with_events(&cursors).await?)
    }

    /// Tells this process's settler that `sku` has new events (its gate just appended one).
    pub fn hint(&self, sku: &Sku) {
        self.board.events_appended(sku);
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
                        // (Redis lost or replaced the stream). Nothing more can be applied.
                        return Err(SettleError::EventMissing {
                            sku: sku.clone(),
                            event: through,
                            cursor: now,
                        });
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

    /// Settles the SKU through `through` (a commit's event) and returns the status Postgres then
    /// has for `hold`: group commit.
    ///
    /// Every commit waiting on the SKU in this process joins one group; the first starts a
    /// leader task, which takes the whole group, settles through the latest of its events
    /// ([`Settler::settle_through`]), reads every hold's status in one query and answers each.
    /// Commits that arrive meanwhile form the next group. A caller that gives up (its client
    /// left) strands nobody: the leader is a task of its own. Waits at most
    /// `settle_through_timeout`.
    pub async fn settle_for(
        &self,
        sku: &Sku,
        hold: ReservationId,
        through: EventId,
    ) -> Result<Option<ReservationStatus>, SettleError> {
        let turn = self.local_turn(sku);
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut group = turn.commits.lock().unwrap_or_else(|p| p.into_inner());
            group.waiting.push(WaitingCommit {
                hold,
                through,
                answer,
            });
            !std::mem::replace(&mut group.leading, true)
        };
        if lead {
            let (settler, sku) = (self.clone(), sku.clone());
            tokio::spawn(async move { settler.lead_commits(&sku, &turn).await });
        }
        match tokio::time::timeout(self.settings.settle_through_timeout, answered).await {
            Ok(Ok(Ok(status))) => Ok(status),
            Ok(Ok(Err(shared))) => Err(SettleError::Group(shared)),
            Ok(Err(_)) => Err(SettleError::GroupLost(sku.clone())),
            Err(_) => Err(SettleError::TimedOut(sku.clone())),
        }
    }

    /// Settles the SKU's waiting commits group after group until none is left.
    async fn lead_commits(&self, sku: &Sku, turn: &SkuTurn) {
        let mut leading = Leading {
            group: &turn.commits,
            done: false,
        };
        loop {
            let waiting = {
                let mut group = turn.commits.lock().unwrap_or_else(|p| p.into_inner());
                if group.waiting.is_empty() {
                    group.leading = false;
                    leading.done = true;
                    return;
                }
                std::mem::take(&mut group.waiting)
            };
            metrics::histogram!("flashgate_group_commit_size").record(waiting.len() as f64);
            let holds: Vec<ReservationId> = waiting.iter().map(|w| w.hold).collect();
            let settled = match waiting.iter().map(|w| w.through).max() {
                Some(through) => self.settle_through(sku, through).await,
                None => Ok(()),
            };
            let answered = match settled {
                Ok(()) => self
                    .store
                    .statuses_of(&holds)
                    .await
                    .map_err(SettleError::from),
                Err(err) => Err(err),
            };
            match answered {
                Ok(statuses) => {
                    for commit in waiting {
                        let _ = commit.answer.send(Ok(statuses.get(&commit.hold).copied()));
                    }
                }
                Err(err) => {
                    let shared = Arc::new(err);
                    for commit in waiting {
                        let _ = commit.answer.send(Err(shared.clone()));
                    }
                }
            }
        }
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
        let read = self
            .gate
            .events_after(sku, cursor, self.settings.batch_size)
            .await?;
        let read_ahead = self.read_ahead_after(sku, cursor);
        let events: Arc<[crate::gate::Event]> = match read {
            // The stream still holds what this settler read from it (if anything).
            StreamRead::Events(events)
                if read_ahead.as_ref().is_none_or(|held| {
                    held.first().map(|e| e.id) == events.first().map(|e| e.id)
                }) =>
            {
                events.into()
            }
            // The stream no longer holds the cursor, or (a SKU never settled, whose cursor is
            // the stream's start) no longer holds the events read from it.
            _ => {
                // Another settler may have committed past `cursor` since it was read and trimmed
                // the entries below its new cursor: that is a moved cursor, not a lost stream.
                let now = self.store.settlement_cursor(sku).await?;
                if now.is_some_and(|now| now != cursor) {
                    self.forget_read_ahead(sku);
                    return Ok(BatchOutcome::Moved);
                }
                metrics::counter!("flashgate_broken_streams_total", "sku" => sku.to_string())
                    .increment(1);
                self.require_resync(sku, cursor).await;
                match read_ahead {
                    // What this settler read before the loss is still owed to Postgres.
                    Some(events) => {
                        tracing::warn!(sku = %sku, events = events.len(),
                            "the stream is gone; applying the events read from it before the loss");
                        metrics::counter!("flashgate_rescued_events_total")
                            .increment(events.len() as u64);
                        events
                    }
                    None => {
                        return Err(SettleError::StreamBroken {
                            sku: sku.clone(),
                            cursor,
                        });
                    }
                }
            }
        };
        if !events.is_empty() {
            self.remember_read_ahead(sku, cursor, events.clone());
        }
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(BatchOutcome::Idle);
        };
        let mut batch = match self.store.lock_cursor(sku, cursor, lock).await? {
            CursorTurn::Locked(batch) => batch,
            CursorTurn::Busy => return Ok(BatchOutcome::Busy),
            CursorTurn::Moved => {
                self.forget_read_ahead(sku);
                return Ok(BatchOutcome::Moved);
            }
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
        self.forget_read_ahead(sku);
        self.local_turn(sku).observe(last);
        // How late Postgres learns of a decision: the batch's oldest event's age at commit.
        if let Some(decided) = events.first().and_then(|e| e.id.time()) {
            let lag = (chrono::Utc::now() - decided).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("flashgate_settlement_lag_seconds", "sku" => sku.to_string()).set(lag);
            metrics::histogram!("flashgate_settlement_delay_seconds").record(lag);
        }
        self.faults.check(FaultPoint::AfterCommit)?;

        metrics::counter!("flashgate_settled_events_total").increment(events.len() as u64);
        if applied.stock_shortfall > 0 {
            // Redis had drifted above Postgres and an admin lowered the total: Postgres took
            // what it had; the audit shows the drift and a resync settles it.
            metrics::counter!("flashgate_stock_shortfall_units_total", "sku" => sku.to_string())
                .increment(applied.stock_shortfall as u64);
        }
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
        // Postgres answers for these from now on. A failure only keeps them longer.
        let back_on_sale: Vec<_> = applied
            .left_held
            .iter()
            .filter(|(_, to)| *to != ReservationStatus::Committed)
            .map(|(id, _)| *id)
            .collect();
        if let Err(err) = self.gate.forget_settled_holds(sku, &back_on_sale).await {
            tracing::warn!(error = %err, "could not shorten the records of settled holds");
        }
        Ok(BatchOutcome::Applied {
            events: events.len(),
            rejected,
        })
    }

    fn remember_read_ahead(&self, sku: &Sku, after: EventId, events: Arc<[crate::gate::Event]>) {
        let mut read_ahead = self.read_ahead.lock().unwrap_or_else(|p| p.into_inner());
        read_ahead.insert(sku.clone(), ReadAhead { after, events });
    }

    fn forget_read_ahead(&self, sku: &Sku) {
        let mut read_ahead = self.read_ahead.lock().unwrap_or_else(|p| p.into_inner());
        read_ahead.remove(sku);
    }

    /// The events this settler read after `cursor` and has not committed, if any.
    fn read_ahead_after(&self, sku: &Sku, cursor: EventId) -> Option<Arc<[crate::gate::Event]>> {
        let read_ahead = self.read_ahead.lock().unwrap_or_else(|p| p.into_inner());
        read_ahead
            .get(sku)
            .filter(|held| held.after == cursor)
            .map(|held| held.events.clone())
    }

    /// The SKU's stream no longer holds its settlement cursor: Redis lost data, was rolled back
    /// or failed over to a replica that lagged, so what it admits from now on may sell units
    /// twice. From this moment the sale takes no new hold (`resync_required`) until a resync:
    /// Postgres records it (for `/readyz`, the console, and every gate), and Redis refuses every
    /// reserve (`lua/halt_sale.lua`). Best effort: a failure is logged, and the next batch of
    /// the SKU tries again.
    ///
    /// A settler whose `FLASHGATE_REDIS_NAMESPACE` is not the one the sale was launched in
    /// finds every stream "lost": it says so and halts nothing — a resync from there would make
    /// a second live copy of the sale.
    async fn require_resync(&self, sku: &Sku, cursor: EventId) {
        let ours = self.gate.namespace().as_str();
        if let Ok(Some(record)) = self.store.find_sku(sku).await
            && let Some(launched_in) = record.redis_namespace.filter(|ns| ns != ours)
        {
            tracing::error!(sku = %sku, launched_in = %launched_in, ours = %ours,
                "this sale was launched in another redis namespace: wrong FLASHGATE_REDIS_NAMESPACE? \
                 Not halting it, and do not resync it from here (that would sell its units twice)");
            return;
        }
        let reason = format!(
            "the event stream no longer holds the settlement cursor {cursor}: redis lost or \
             rolled back data"
        );
        match self.store.require_resync(sku, &reason).await {
            Ok(true) => tracing::error!(sku = %sku, %cursor,
                "redis lost or rolled back this sale's events: it takes no new hold until a resync \
                 (flashgate prewarm --resync, or POST /v1/admin/skus/{sku}/resync)"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(sku = %sku, error = %err, "cannot record that the sale needs a resync")
            }
        }
        if let Err(err) = self.gate.halt_for_resync(sku, &reason).await {
            tracing::warn!(sku = %sku, error = %err, "cannot stop the sale in redis until a resync");
        }
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
                units_back: row.reason == RejectionReason::DuplicateIdempotencyKey.as_str(),
            };
            self.gate.reject(&row.sku, &hold).await?;
            self.store.clear_rejection(row.reservation_id).await?;
        }
        Ok(pending.len())
    }
}
