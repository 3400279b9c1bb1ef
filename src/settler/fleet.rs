//! The settler fleet: the live settlers share the catalogue's safety-net scans.
//!
//! Each settler (every `serve` and `settle` process has one) beats in Postgres
//! (`settler_fleet`) before each full scan and learns the live settlers, in id order; the one at
//! place `index` of `of` scans the SKUs whose `hashtext(sku) mod of = index`. So the fleet
//! scans the catalogue once per interval between them, not once per settler. A settler that
//! stops leaves the table; one that dies is forgotten after [`ALIVE_FOR_BEATS`] missed beats,
//! and its share is scanned by the others from their next beat.
//!
//! Ownership is about cost only. What is applied is decided by the settlement cursor, so while
//! the fleet changes a SKU may be scanned by two settlers or, for one interval, by none.
//! Every settler still settles at once whatever its own process decided (`board.rs`).

use std::time::Duration;

use uuid::Uuid;

use crate::store::{Share, Store, StoreError};

/// How many beats a settler may miss before the others take its share.
const ALIVE_FOR_BEATS: u32 = 3;

/// This settler's place in the fleet.
#[derive(Debug)]
pub struct Fleet {
    id: Uuid,
    alive_for: Duration,
}

impl Fleet {
    /// A new member that beats every `beat_every`.
    pub fn new(beat_every: Duration) -> Self {
        Self {
            id: Uuid::new_v4(),
            alive_for: (beat_every * ALIVE_FOR_BEATS).max(Duration::from_secs(1)),
        }
    }

    /// Says this settler is alive and returns its share of the catalogue.
    pub async fn beat(&self, store: &Store) -> Result<Share, StoreError> {
        let members = store.settler_heartbeat(self.id, self.alive_for).await?;
        metrics::gauge!("flashgate_settler_fleet_size").set(members.len() as f64);
        let index = members.iter().position(|m| *m == self.id).unwrap_or(0);
        Ok(Share::new(index as u32, members.len() as u32))
    }

    /// Leaves the fleet (on shutdown), so the others take this share at their next beat.
    pub async fn leave(&self, store: &Store) {
        if let Err(err) = store.settler_leave(self.id).await {
            tracing::warn!(error = %err, "could not leave the settler fleet; the others will forget this settler");
        }
    }
}
