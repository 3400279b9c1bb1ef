//! The expiry sweeper: releases holds past their deadline (docs/DESIGN.md §3).
//!
//! Each tick it reads every SKU's earliest deadline in one pipelined round trip (against Redis
//! `TIME`), and for the SKUs with a hold due asks for those holds and expires them one by one
//! with `lua/transition.lua`, in bounded batches. Several sweepers may run at
//! once (every `serve` and `settle` process has one): the script expires a hold only while it is
//! `held`, so a hold is never released twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Sku;
use crate::gate::Gate;
use crate::store::Store;

/// Runs the expiry sweep.
#[derive(Debug, Clone)]
pub struct Sweeper {
    gate: Gate,
    store: Store,
    /// Pause between sweeps.
    interval: Duration,
    /// Most holds expired per SKU per Redis query.
    batch: usize,
}

impl Sweeper {
    pub fn new(gate: Gate, store: Store, interval: Duration, batch: usize) -> Self {
        Self {
            gate,
            store,
            interval,
            batch: batch.max(1),
        }
    }

    /// Sweeps until `shutdown` is cancelled. Failures are logged and retried next tick.
    pub async fn run(&self, shutdown: CancellationToken) {
        // The SKU list comes from Postgres; while Postgres is down the last list is reused, so
        // holds keep expiring (and their units keep coming back) from Redis alone.
        let mut skus: Vec<Sku> = Vec::new();
        while !shutdown.is_cancelled() {
            match self.store.settlement_skus().await {
                Ok(current) => skus = current,
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper cannot list SKUs; using the last list")
                }
            }
            // One pipelined look at every SKU's earliest deadline; only SKUs with a hold due
            // are swept, so an idle catalogue costs one round trip a tick.
            let due = match self.gate.skus_with_due_holds(&skus).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper cannot read deadlines; every SKU is swept");
                    skus.clone()
                }
            };
            for sku in &due {
                if shutdown.is_cancelled() {
                    break;
                }
                match self.sweep(sku).await {
                    Ok(0) => {}
                    Ok(expired) => {
                        tracing::info!(sku = %sku, expired, "expired holds past their deadline")
                    }
                    // One SKU's failure is its own: the others are swept all the same.
                    Err(err) => {
                        metrics::counter!("flashgate_sweep_failures_total", "sku" => sku.to_string())
                            .increment(1);
                        tracing::warn!(sku = %sku, error = %err, "sweep failed; the others go on")
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!("sweeper stopped");
    }

    /// Expires every hold of `sku` that is past its deadline; returns how many this call expired.
    pub async fn sweep(&self, sku: &Sku) -> Result<usize, crate::gate::GateError> {
        let mut total = 0;
        loop {
            let expired = self.gate.expire_due(sku, self.batch).await?;
            total += expired;
            metrics::counter!("flashgate_expired_holds_total").increment(expired as u64);
            crate::pulse::record(sku, crate::pulse::Outcome::Expired, expired as u64);
            if expired < self.batch {
                return Ok(total);
            }
        }
    }
}
