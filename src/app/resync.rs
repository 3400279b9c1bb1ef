//! Resync: the repair after Redis lost data, drifted or failed over (docs/DESIGN.md §1, §3).
//!
//! The sale is paused in Redis, then both stores are brought to agree, in this order:
//!
//! 1. **Drain** the settler, so Postgres has every decision the stream still holds. A stream
//!    that no longer continues from the settlement cursor (lost, or replaced by a replica that
//!    lagged, whose new entries may sort below the cursor) is first **fenced**
//!    (`lua/fence_stream.lua`): recreated from the cursor, so no entry is ever skipped again.
//! 2. **Redis → Postgres.** A hold Redis decided but Postgres lacks (its events were lost with
//!    the stream), or that Redis moved out of `held` while Postgres still has it held, is
//!    recorded again from the hold itself (`lua/rerecord_hold.lua`) and drained: the settler
//!    applies it like any event, so a hold that no longer fits Postgres stock is rejected and
//!    written back through the outbox.
//! 3. **Postgres → Redis.** A hold Redis lost is put back (with its buyer's count and its
//!    idempotency record); a hold Redis still has `held` but Postgres has terminal follows
//!    Postgres (`lua/restore_hold.lua`).
//! 4. **Fenced load**: Redis stock from Postgres `available`, read together with the settlement
//!    cursor in one snapshot, loaded only if the stream still ends exactly at that cursor
//!    (`lua/load_sale.lua`, guard `drained`). An event appended since — a release or an expiry
//!    racing the resync — is not in `available` yet, so the load is refused and the loop runs
//!    again.
//!
//! On failure or after [`DEADLINE`] the sale goes back to the state Postgres records. A resync
//! killed between its pause and that restore leaves `skus.resync_paused_at`, from which the
//! sweepers restore the state once no resync holds the SKU's lock. One resync per SKU runs at a
//! time (a Postgres advisory lock). Over HTTP it runs as a background job (see [`start_job`]).

use std::collections::HashMap;

use crate::domain::{BuyerId, ReservationStatus, SaleState, Sku, ValidationError};
use crate::gate::{Fence, Gate, GateError, Hold, HoldSummary, Restored};
use crate::settler::{SettleError, Settler};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("no SKU {0}")]
    UnknownSku(Sku),
    #[error("events kept arriving while draining; try again")]
    Busy,
    /// One resync per SKU at a time: two would each re-record a lost hold, taking its units
    /// twice.
    #[error("another resync of {0} is running")]
    AlreadyRunning(Sku),
    #[error("the resync did not finish within {0:?}")]
    TimedOut(std::time::Duration),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error("reservation row is corrupt: {0}")]
    Corrupt(#[from] ValidationError),
    #[error(transparent)]
    NamespaceMismatch(#[from] super::NamespaceMismatch),
}

/// What a resync did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResyncReport {
    #[schema(value_type = String)]
    pub sku: Sku,
    /// Events the settler applied while draining.
    pub settled_events: usize,
    /// Holds Redis had lost and got back from Postgres.
    pub restored_holds: usize,
    /// Holds Redis had `held` that followed Postgres to a terminal status.
    pub followed_holds: usize,
    /// Holds only Redis knew about (or knew further along), recorded again for the settler.
    pub rerecorded_holds: usize,
    /// Whether the stream had to be recreated from the settlement cursor (it was lost or
    /// replaced), and how many of its entries sorted below the cursor and were dropped.
    pub stream_fenced: bool,
    pub dropped_events: usize,
    /// Holds of the sale found lost so far (given out, in neither store; see the audit's
    /// `lost_holds`). A lost hold is found when its id comes back, so later reads can add more.
    pub lost_holds: i64,
    /// Redis stock after the resync (Postgres `available`).
    pub stock: i64,
    /// The sale's state after the resync (from Postgres).
    pub state: SaleState,
}

const ATTEMPTS: usize = 20;

pub async fn resync(
    gate: &Gate,
    store: &Store,
    settler: &Settler,
    sku: &Sku,
    force: bool,
) -> Result<ResyncReport, ResyncError> {
    let before = store
        .find_sku(sku)
        .await?
        .ok_or_else(|| ResyncError::UnknownSku(sku.clone()))?;
    // From another namespace the sale looks lost entirely; "repairing" it there would make a
    // second live copy (a fault run: 18 told 201 for 9 units).
    super::same_namespace(&before, gate, force)?;
    let Some(lock) = store.lock_resync(sku).await? else {
        return Err(ResyncError::AlreadyRunning(sku.clone()));
    };
    // Marked before the pause, cleared after the sale's state is back: a resync killed in
    // between (SIGKILL, a crash) leaves the mark, and the sweepers put the state back
    // (`Sweeper::recover_abandoned_pauses`).
    store.mark_resync_pause(sku, true).await?;
    let outcome = resync_locked(gate, store, settler, sku, before.state).await;
    if let Err(err) = store.mark_resync_pause(sku, false).await {
        tracing::warn!(sku = %sku, error = %err, "cannot clear the resync's pause mark; the sweepers will");
    }
    lock.release().await;
    outcome
}

async fn resync_locked(
    gate: &Gate,
    store: &Store,
    settler: &Settler,
    sku: &Sku,
    state_before: SaleState,
) -> Result<ResyncReport, ResyncError> {
    gate.set_state(sku, SaleState::Paused).await?;
    let repaired = match tokio::time::timeout(DEADLINE, repair(gate, store, settler, sku)).await {
        Ok(repaired) => repaired,
        Err(_) => Err(ResyncError::TimedOut(DEADLINE)),
    };
    if let Err(err) = &repaired {
        // A failed repair must not leave the sale paused: back to the state Postgres records
        // (a success loads it with the rest of the sale).
        tracing::warn!(sku = %sku, error = %err, "resync failed; restoring the sale's state");
        if let Err(restore) = gate.set_state(sku, state_before).await {
            tracing::error!(sku = %sku, error = %restore,
                "cannot restore the sale's state after a failed resync; resume it by hand");
        }
    }
    repaired
}

/// Longest a resync may take before it gives up (and restores the sale's state).
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a job stays the SKU's running resync if its gate dies before clearing it.
const JOB_LEASE: std::time::Duration = std::time::Duration::from_secs(150);

/// Steps 1 to 4 of the module doc; the sale is paused meanwhile.
async fn repair(
    gate: &Gate,
    store: &Store,
    settler: &Settler,
    sku: &Sku,
) -> Result<ResyncReport, ResyncError> {
    let mut report = ResyncReport {
        sku: sku.clone(),
        settled_events: 0,
        restored_holds: 0,
        followed_holds: 0,
        rerecorded_holds: 0,
        stream_fenced: false,
        dropped_events: 0,
        lost_holds: 0,
        stock: 0,
        // Until the load below: the sale is paused for the resync.
        state: SaleState::Paused,
    };
    for _ in 0..ATTEMPTS {
        drain_fenced(gate, settler, sku, &mut report).await?;
        let in_redis = gate.hold_summaries(sku).await?;
        let rerecorded = rerecord_redis_only(gate, store, sku, &in_redis).await?;
        if rerecorded > 0 {
            report.rerecorded_holds += rerecorded;
            drain_fenced(gate, settler, sku, &mut report).await?;
        }
        restore_from_postgres(gate, store, sku, &in_redis, &mut report).await?;
        // Counts against buyers' limits, absolutely, from the holds Postgres now has: a count
        // Redis kept would be counted twice for a hold whose record had merely expired.
        let counts = store
            .buyer_counts(sku)
            .await?
            .into_iter()
            .map(|(buyer, count)| Ok((BuyerId::parse(&buyer)?, count)))
            .collect::<Result<Vec<_>, ValidationError>>()?;
        gate.set_buyer_counts(sku, &counts).await?;
        if report.restored_holds > 0 {
            // Restored holds keep their deadlines: this process's sweeper looks at once, and
            // learns from the sweep when the next one falls due.
            settler.board().falls_due(sku, std::time::Duration::ZERO);
        }
        if let Some(record) = load_if_settled(gate, store, sku).await? {
            store
                .record_resynced(&record, gate.namespace().as_str())
                .await?;
            report.stock = record.available;
            report.state = record.state;
            report.lost_holds = store.lost_holds(sku).await?;
            tracing::info!(sku = %sku, ?report, "resynced redis and postgres");
            return Ok(report);
        }
    }
    Err(ResyncError::Busy)
}

/// Drains the settler; a broken stream is fenced first.
async fn drain_fenced(
    gate: &Gate,
    settler: &Settler,
    sku: &Sku,
    report: &mut ResyncReport,
) -> Result<(), ResyncError> {
    let cursor = match settler.drain(sku).await {
        Ok(events) => {
            report.settled_events += events;
            return Ok(());
        }
        Err(SettleError::StreamBroken { cursor, .. }) => cursor,
        Err(err) => return Err(err.into()),
    };
    if let Fence::Fenced { dropped } = gate.fence_stream(sku, cursor).await? {
        tracing::warn!(sku = %sku, cursor = %cursor, dropped,
            "the event stream no longer continued from the settlement cursor; recreated it from there");
        report.stream_fenced = true;
        report.dropped_events += dropped;
    }
    report.settled_events += settler.drain(sku).await?;
    Ok(())
}

/// Step 2: records again the holds Redis decided that Postgres lacks or has behind. Returns how
/// many were recorded.
async fn rerecord_redis_only(
    gate: &Gate,
    store: &Store,
    sku: &Sku,
    in_redis: &[HoldSummary],
) -> Result<usize, ResyncError> {
    let in_postgres: HashMap<uuid::Uuid, ReservationStatus> =
        store.reservation_statuses(sku).await?.into_iter().collect();
    let mut recorded = 0;
    for hold in in_redis {
        let (behind, with_reservation) = match in_postgres.get(&hold.id.as_uuid()) {
            None => (true, true),
            Some(ReservationStatus::Held) => (hold.status != ReservationStatus::Held, false),
            Some(_) => (false, false),
        };
        if behind
            && gate
                .rerecord_hold(sku, hold.id, with_reservation)
                .await?
                .is_some()
        {
            recorded += 1;
        }
    }
    if recorded > 0 {
        tracing::warn!(sku = %sku, recorded, "holds only redis knew about were recorded again for postgres");
    }
    Ok(recorded)
}

/// Step 3: puts back what Redis lost of the holds Postgres has (live ones, and terminal ones
/// within the idempotency window), and moves holds Redis still has `held` that Postgres has
/// terminal. `in_redis` (read once, after the drain) tells which rows Redis already agrees
/// with: those cost nothing — the common resync, after a drift, touches only the few that
/// differ — and the rest are restored in batches of [`RESTORE_CONCURRENCY`], pipelined on the
/// connection. On the build before, every row cost two sequential round trips, also those
/// Redis had: 20,000 reservations kept the sale paused for seconds.
async fn restore_from_postgres(
    gate: &Gate,
    store: &Store,
    sku: &Sku,
    in_redis: &[HoldSummary],
    report: &mut ResyncReport,
) -> Result<(), ResyncError> {
    let redis_status: HashMap<uuid::Uuid, ReservationStatus> = in_redis
        .iter()
        .map(|hold| (hold.id.as_uuid(), hold.status))
        .collect();
    // What `restore_hold.lua` answers `kept` for, decided without asking it.
    let agrees = |postgres: &str, id: &uuid::Uuid| match redis_status.get(id) {
        Some(ReservationStatus::Held) => postgres == ReservationStatus::Held.as_str(),
        Some(_) => true,
        None => false,
    };
    let differing: Vec<Hold> = store
        .reservations_of(sku, gate.idempotency_ttl())
        .await?
        .into_iter()
        .filter(|row| !agrees(&row.status, &row.id))
        .map(|row| Hold::from_record(sku.clone(), row))
        .collect::<Result<_, ValidationError>>()?;
    for batch in differing.chunks(RESTORE_CONCURRENCY) {
        let outcomes =
            futures::future::try_join_all(batch.iter().map(|hold| gate.restore_hold(hold))).await?;
        for outcome in outcomes {
            match outcome {
                Restored::Restored => report.restored_holds += 1,
                Restored::Followed => report.followed_holds += 1,
                Restored::Kept => {}
            }
        }
    }
    Ok(())
}

/// Holds restored at once (one batch pipelined on the connection): each is its own script,
/// touching its own keys and commutative counters, so their order does not matter.
const RESTORE_CONCURRENCY: usize = 64;

/// The fenced last step: reads Postgres `available` together with the settlement cursor, and
/// loads it into Redis only if the SKU's stream ends exactly at that cursor. Returns the record
/// loaded, or `None` when an event was appended since (the caller drains and tries again).
pub async fn load_if_settled(
    gate: &Gate,
    store: &Store,
    sku: &Sku,
) -> Result<Option<crate::store::SkuRecord>, ResyncError> {
    let (record, cursor) = store
        .find_sku_at_cursor(sku)
        .await?
        .ok_or_else(|| ResyncError::UnknownSku(sku.clone()))?;
    let settled_through = (!cursor.is_start()).then_some(cursor);
    Ok(gate
        .load_sale_if_drained(&record, settled_through)
        .await?
        .then_some(record))
}

/// A resync running in the background, as `POST /v1/admin/skus/{sku}/resync` starts it. Its
/// state is kept in Redis under the SKU's hash tag for the idempotency TTL, so any gate answers
/// its status URL.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResyncJob {
    pub job: uuid::Uuid,
    #[schema(value_type = String)]
    pub sku: Sku,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub started_at: chrono::DateTime<chrono::Utc>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::domain::timestamp::serialize_option"
    )]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ResyncReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ResyncJob {
    fn record(&self) -> Result<String, GateError> {
        serde_json::to_string(self).map_err(|e| GateError::Protocol(e.to_string()))
    }
}

/// Records a new job for `sku` and runs the resync in the background; returns at once. A sale
/// launched in another Redis namespace is refused here, unless `force`, before any job starts.
pub async fn start_job(
    gate: Gate,
    store: Store,
    settler: Settler,
    sku: Sku,
    force: bool,
) -> Result<ResyncJob, ResyncError> {
    let record = store
        .find_sku(&sku)
        .await?
        .ok_or_else(|| ResyncError::UnknownSku(sku.clone()))?;
    super::same_namespace(&record, &gate, force)?;
    let mut job = ResyncJob {
        job: uuid::Uuid::new_v4(),
        sku: sku.clone(),
        status: "running".into(),
        started_at: chrono::Utc::now(),
        finished_at: None,
        report: None,
        error: None,
    };
    // A second request while one runs answers the running job instead of starting another.
    if let Some(running) = gate.claim_resync(&sku, job.job, JOB_LEASE).await? {
        return self::job(&gate, &sku, running)
            .await?
            .ok_or(ResyncError::AlreadyRunning(sku));
    }
    gate.put_job(&sku, job.job, &job.record()?).await?;
    let started = job.clone();
    tokio::spawn(async move {
        let outcome = resync(&gate, &store, &settler, &sku, force).await;
        if let Err(err) = gate.release_resync(&sku, job.job).await {
            tracing::warn!(sku = %sku, error = %err, "cannot clear the running resync; it lapses with its lease");
        }
        job.finished_at = Some(chrono::Utc::now());
        match outcome {
            Ok(report) => {
                job.status = "succeeded".into();
                job.report = Some(report);
            }
            Err(err) => {
                job.status = "failed".into();
                job.error = Some(err.to_string());
            }
        }
        let recorded = match job.record() {
            Ok(record) => gate.put_job(&sku, job.job, &record).await,
            Err(err) => Err(err),
        };
        if let Err(err) = recorded {
            tracing::error!(sku = %sku, job = %job.job, error = %err, "cannot record the resync job's end");
        }
    });
    Ok(started)
}

/// A job's last recorded state, or `None` when unknown (or older than the idempotency TTL).
pub async fn job(gate: &Gate, sku: &Sku, job: uuid::Uuid) -> Result<Option<ResyncJob>, GateError> {
    let Some(raw) = gate.job_record(sku, job).await? else {
        return Ok(None);
    };
    serde_json::from_str(&raw)
        .map(Some)
        .map_err(|e| GateError::Protocol(format!("resync job {job}: {e}")))
}
