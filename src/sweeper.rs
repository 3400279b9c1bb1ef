//! The expiry sweeper: releases holds past their deadline (docs/DESIGN.md §3).
//!
//! It sweeps the SKUs the work board says have a hold due (`settler::WorkBoard`): this
//! process's gate posts each hold's deadline as it creates it, and every sweep re-arms its SKU
//! with the next deadline `lua/due_holds.lua` reports. So a tick with nothing due costs no round
//! trip at all. Holds this process did not create (another gate's, or from before a restart)
//! are found by a slow scan of this process's share of the catalogue every `scan_interval`: one
//! Postgres query and one pipelined look at each SKU's earliest deadline, which arms the board.
//!
//! Which holds expire is decided by the scripts on Redis time. Several sweepers may run at once
//! (every `serve` and `settle` process has one): `lua/transition.lua` expires a hold only while
//! it is `held`, so a hold is never released twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::domain::Sku;
use crate::gate::{Gate, GateError};
use crate::settler::WorkBoard;
use crate::store::Store;

/// How the sweeper paces itself.
#[derive(Debug, Clone)]
pub struct SweeperSettings {
    /// How often the board is looked at: a hold expires at most this late.
    pub interval: Duration,
    /// How often this process's share of the catalogue is scanned for holds it was not told
    /// about (`FLASHGATE_SWEEP_SCAN_INTERVAL_MS`).
    pub scan_interval: Duration,
    /// Most holds expired per SKU per Redis query.
    pub batch: usize,
}

impl Default for SweeperSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            scan_interval: Duration::from_secs(10),
            batch: 500,
        }
    }
}

/// Why a dead resync's pause could not be undone this time (the next scan tries again).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Runs the expiry sweep.
#[derive(Debug, Clone)]
pub struct Sweeper {
    gate: Gate,
    store: Store,
    board: Arc<WorkBoard>,
    settings: SweeperSettings,
}

impl Sweeper {
    /// A sweeper reading `board`, which must be the one this process's gate posts deadlines on
    /// (`Settler::board`).
    pub fn new(gate: Gate, store: Store, board: Arc<WorkBoard>, settings: SweeperSettings) -> Self {
        Self {
            gate,
            store,
            board,
            settings: SweeperSettings {
                batch: settings.batch.max(1),
                ..settings
            },
        }
    }

    /// Sweeps until `shutdown` is cancelled. Failures are logged and retried next tick.
    pub async fn run(&self, shutdown: CancellationToken) {
        // The SKU list comes from Postgres; while Postgres is down the last list is reused, so
        // holds keep expiring (and their units keep coming back) from Redis alone.
        let mut skus: Vec<Sku> = Vec::new();
        let mut next_scan = Instant::now();
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_scan {
                next_scan = Instant::now()
                    + match self.scan(&mut skus).await {
                        Ok(()) => self.settings.scan_interval,
                        // Scan again next tick: what it looks for was not found.
                        Err(err) => {
                            tracing::warn!(error = %err, "sweeper cannot read deadlines");
                            self.settings.interval
                        }
                    };
            }
            for sku in self.board.take_due(Instant::now()) {
                if shutdown.is_cancelled() {
                    break;
                }
                match self.sweep(&sku).await {
                    Ok(0) => {}
                    Ok(expired) => {
                        tracing::info!(sku = %sku, expired, "expired holds past their deadline")
                    }
                    // One SKU's failure is its own: the others are swept all the same, and this
                    // one again next tick.
                    Err(err) => {
                        self.board.falls_due(&sku, self.settings.interval);
                        metrics::counter!("flashgate_sweep_failures_total", "sku" => sku.to_string())
                            .increment(1);
                        tracing::warn!(sku = %sku, error = %err, "sweep failed; the others go on")
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
        }
        tracing::info!("sweeper stopped");
    }

    /// The safety net: puts the earliest deadline of every SKU of this process's share on the
    /// board. `skus` keeps the last list Postgres gave.
    async fn scan(&self, skus: &mut Vec<Sku>) -> Result<(), GateError> {
        if let Err(err) = self.recover_abandoned_pauses().await {
            tracing::warn!(error = %err, "cannot look for sales a dead resync left paused");
        }
        match self.store.settlement_skus(self.board.share()).await {
            Ok(current) => *skus = current,
            Err(err) => {
                tracing::warn!(error = %err, "sweeper cannot list SKUs; using the last list")
            }
        }
        for (sku, due_in) in self.gate.next_deadlines(skus).await? {
            self.board.falls_due(&sku, due_in);
        }
        Ok(())
    }

    /// Puts back the state Postgres records for every sale a resync paused and no longer
    /// holds: one killed between its pause and its restore. Run with every scan (and at start),
    /// so a dead resync never leaves a sale paused longer than a scan interval. Returns the SKUs
    /// put back.
    pub async fn recover_abandoned_pauses(&self) -> Result<Vec<Sku>, RecoveryError> {
        let mut recovered = Vec::new();
        for sku in self.store.paused_by_a_resync().await? {
            if self.recover_abandoned_pause(&sku).await? {
                recovered.push(sku);
            }
        }
        Ok(recovered)
    }

    /// Puts back the state Postgres records for `sku` if a resync paused it and none holds it
    /// now; answers whether it did.
    pub async fn recover_abandoned_pause(&self, sku: &Sku) -> Result<bool, RecoveryError> {
        // Held: a resync is running, and puts the state back itself.
        let Some(lock) = self.store.lock_resync(sku).await? else {
            return Ok(false);
        };
        let outcome = async {
            // Asked again under the lock: the list was read before it, and a resync that ended
            // in between has put the state back and cleared its mark (this sweeper then reported
            // a dead resync that never was).
            if !self.store.resync_pause_marked(sku).await? {
                return Ok(false);
            }
            if let Some(record) = self.store.find_sku(sku).await? {
                self.gate.set_state(sku, record.state).await?;
            }
            self.store.mark_resync_pause(sku, false).await?;
            Ok::<_, RecoveryError>(true)
        }
        .await;
        lock.release().await;
        if outcome? {
            tracing::warn!(sku = %sku,
                "a resync died with the sale paused; put back the state postgres records");
            metrics::counter!("flashgate_abandoned_resync_pauses_total").increment(1);
            return Ok(true);
        }
        Ok(false)
    }

    /// Expires every hold of `sku` that is past its deadline and puts the SKU's next deadline on
    /// the board; returns how many this call expired.
    pub async fn sweep(&self, sku: &Sku) -> Result<usize, GateError> {
        let mut total = 0;
        loop {
            let expiry = self.gate.expire_due(sku, self.settings.batch).await?;
            total += expiry.expired;
            metrics::counter!("flashgate_expired_holds_total").increment(expiry.expired as u64);
            crate::pulse::record(sku, crate::pulse::Outcome::Expired, expiry.expired as u64);
            if expiry.expired > 0 {
                // Their events are in the stream: this process's settler takes them now.
                self.board.events_appended(sku);
            }
            let more_due = expiry.due >= self.settings.batch;
            if more_due && expiry.expired > 0 {
                continue;
            }
            // A full batch of which nothing expired (raced by another sweeper): look again
            // next tick rather than spin.
            let next = if more_due {
                Some(self.settings.interval)
            } else {
                expiry.next_due_in
            };
            if let Some(next) = next {
                self.board.falls_due(sku, next);
            }
            return Ok(total);
        }
    }
}
