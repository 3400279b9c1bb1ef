//! Isolation: one SKU that cannot be settled must not stop the others.
//!
//! A background pass walks every SKU; a SKU whose batch fails (a corrupt event, a row locked by
//! hand, a constraint the data breaks) is logged, counted
//! (`flashgate_settle_failures_total{sku}`) and left alone for a jittered, growing pause while
//! the pass goes on with the rest. When every SKU tried fails, the cause is shared (Postgres or
//! Redis down) and the whole pass backs off instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::domain::Sku;

/// A jittered exponential backoff from `first` up to `max`, never giving up.
pub fn backoff(first: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max.max(first))
        .with_jitter()
        .without_max_times()
        .build()
}

#[derive(Debug)]
struct Benched {
    until: Instant,
    pauses: ExponentialBackoff,
}

/// The SKUs a settler is leaving alone for a while, each with its own backoff.
#[derive(Debug)]
pub struct Quarantine {
    first: Duration,
    max: Duration,
    benched: Mutex<HashMap<Sku, Benched>>,
}

impl Quarantine {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            benched: Mutex::default(),
        }
    }

    fn benched(&self) -> std::sync::MutexGuard<'_, HashMap<Sku, Benched>> {
        self.benched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the SKU's pause is over.
    pub fn may_try(&self, sku: &Sku) -> bool {
        self.benched()
            .get(sku)
            .is_none_or(|b| Instant::now() >= b.until)
    }

    /// Whether the SKU failed last time it was tried (its pause may be over).
    pub fn was_benched(&self, sku: &Sku) -> bool {
        self.benched().contains_key(sku)
    }

    /// The SKU settled (or had nothing to settle): it is no longer benched.
    pub fn succeeded(&self, sku: &Sku) {
        self.benched().remove(sku);
    }

    /// The SKU failed again: bench it for its next pause, which is returned.
    pub fn failed(&self, sku: &Sku) -> Duration {
        let mut benched = self.benched();
        let entry = benched.entry(sku.clone()).or_insert_with(|| Benched {
            until: Instant::now(),
            pauses: backoff(self.first, self.max),
        });
        let pause = entry.pauses.next().unwrap_or(self.max);
        entry.until = Instant::now() + pause;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_sku_is_benched_with_growing_pauses_until_it_succeeds() {
        let quarantine = Quarantine::new(Duration::from_millis(100), Duration::from_secs(5));
        let sku = Sku::parse("poison").expect("sku");
        let other = Sku::parse("fine").expect("sku");
        let first = quarantine.failed(&sku);
        assert!(!quarantine.may_try(&sku));
        assert!(quarantine.was_benched(&sku) && !quarantine.was_benched(&other));
        assert!(quarantine.may_try(&other));
        let mut last = first;
        for _ in 0..10 {
            last = quarantine.failed(&sku);
        }
        assert!(
            last > first && last <= Duration::from_secs(10),
            "{first:?} {last:?}"
        );
        quarantine.succeeded(&sku);
        assert!(quarantine.may_try(&sku));
        assert!(!quarantine.was_benched(&sku));
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap() {
        let pauses: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_millis(400))
            .take(8)
            .collect();
        assert!(pauses.iter().all(|p| *p >= Duration::from_millis(100)));
        // Jitter adds at most the pause itself on top of the capped value.
        assert!(
            pauses.iter().all(|p| *p <= Duration::from_millis(800)),
            "{pauses:?}"
        );
        assert!(pauses[7] >= Duration::from_millis(400));
    }
}
