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

use crate::gate::Gate;
use crate::settler::Settler;
use crate::store::Store;

/// The stores every operation works on; cheap to build per call.
#[derive(Debug, Clone, Copy)]
pub struct App<'a> {
    pub gate: &'a Gate,
    pub store: &'a Store,
    pub settler: &'a Settler,
}
