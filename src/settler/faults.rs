//! Fault points: where a test makes the settler fail exactly as a crash would.
//!
//! A fault returns an error from the settler at that point; the open transaction is dropped and
//! rolled back, as it would be when the process dies, and nothing after the point runs. The
//! hooks live on each `Settler` value rather than in a process-global registry (the `fail`
//! crate's model), so tests that inject faults still run in parallel with every other test.

use std::fmt;
use std::sync::Arc;

/// A place in a settler batch where a fault may be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The batch's reservation rows are inserted; no stock has moved yet.
    AfterInserts,
    /// Stock has moved for the batch; the cursor has not advanced and nothing is committed.
    MidBatch,
    /// The batch is committed; the stream is not trimmed and rejections not written back.
    AfterCommit,
    /// The background safety-net scan fails (a cluster master down, the catalogue query
    /// refused).
    Scan,
}

/// The fault hook of one settler: `None` in production.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<dyn Fn(FaultPoint) -> bool + Send + Sync>>);

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Faults(injected)"
        } else {
            "Faults(none)"
        })
    }
}

impl Faults {
    /// Fails at every point for which `should_fail` answers true.
    pub fn inject(should_fail: impl Fn(FaultPoint) -> bool + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(should_fail)))
    }

    pub(super) fn fails(&self, point: FaultPoint) -> bool {
        self.0
            .as_ref()
            .is_some_and(|should_fail| should_fail(point))
    }

    pub(super) fn check(&self, point: FaultPoint) -> Result<(), super::SettleError> {
        if self.fails(point) {
            Err(super::SettleError::Injected(point))
        } else {
            Ok(())
        }
    }
}
