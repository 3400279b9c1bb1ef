//! The application layer: every operation that spans Redis and Postgres (docs/DESIGN.md §10).
//!
//! An HTTP handler or a CLI command parses its input, calls one function here and presents the
//! result; `gate` is only the Redis adapter and `store` only the Postgres one. Each function's
//! doc comment states the order of its writes across the two stores, what makes a retry safe,
//! and what a timeout means to the caller.
//!
//! - `holds.rs`: reserve, read, commit, release — a buyer's calls;
//! - `sales.rs`: create or change a sale, restock, prewarm, pause and resume;
//! - [`resync`]: the two-way repair after Redis lost data, drifted or failed over.

mod holds;
pub mod resync;
mod sales;

pub use holds::{HoldError, Reserved};
pub use sales::{SaleChanged, SaleError};

use crate::domain::Sku;
use crate::gate::Gate;
use crate::settler::Settler;
use crate::store::{SkuRecord, Store};

/// A prewarm or resync from a process whose `FLASHGATE_REDIS_NAMESPACE` is not the one the sale
/// was launched in. That process sees nothing of the sale in Redis; loading it there would make
/// a second live copy, and both would sell the same units.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "sale {sku} was launched in redis namespace {launched_in:?} and this process uses {ours:?}: \
     wrong FLASHGATE_REDIS_NAMESPACE? Loading it here would sell its units twice; force it only \
     once nothing serves the sale from {launched_in:?}"
)]
pub struct NamespaceMismatch {
    pub sku: Sku,
    pub launched_in: String,
    pub ours: String,
}

/// Refuses, unless `force`, to load `record`'s sale into `gate`'s namespace when it was launched
/// in another one. A sale never launched, or launched before the namespace was recorded, passes.
fn same_namespace(record: &SkuRecord, gate: &Gate, force: bool) -> Result<(), NamespaceMismatch> {
    let ours = gate.namespace().as_str();
    match &record.redis_namespace {
        Some(launched_in) if launched_in != ours && !force => Err(NamespaceMismatch {
            sku: record.sku.clone(),
            launched_in: launched_in.clone(),
            ours: ours.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The stores every operation works on; cheap to build per call.
#[derive(Debug, Clone, Copy)]
pub struct App<'a> {
    pub gate: &'a Gate,
    pub store: &'a Store,
    pub settler: &'a Settler,
}
