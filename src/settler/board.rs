//! The work board: what this process knows needs doing, so that the settler and the expiry
//! sweeper work on the SKUs that have work instead of polling every SKU (docs/DESIGN.md §8).
//!
//! Whoever makes a decision posts it here as it is made: a SKU whose stream got an event (a
//! reserve, a release, a commit, an expiry), and when a SKU's next hold falls due (from the
//! hold's own lifetime, measured on the Redis clock that decided it, so no application clock is
//! compared with Redis). The settler wakes as soon as a SKU is posted; the sweeper looks at the
//! board every tick without a round trip.
//!
//! A notice is only a hint. What is applied is decided by the settlement cursor, what expires by
//! `lua/due_holds.lua` on Redis time, so a lost, late or duplicated notice is harmless. What
//! other processes decided (and what this one decided before a restart) is found by the slow
//! full scans, each over this settler's share of the catalogue (`fleet.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::domain::Sku;
use crate::store::Share;

/// Cheap to share (`Arc`); every method is a short critical section.
#[derive(Debug)]
pub struct WorkBoard {
    /// SKUs whose streams have events the settler has not looked at.
    to_settle: Mutex<HashSet<Sku>>,
    /// Wakes the settler when a SKU is posted.
    posted: Notify,
    /// Per SKU, when its earliest known hold falls due.
    due: Mutex<HashMap<Sku, Instant>>,
    /// This process's part of the catalogue for the full scans.
    share: Mutex<Share>,
}

impl Default for WorkBoard {
    fn default() -> Self {
        Self {
            to_settle: Mutex::default(),
            posted: Notify::new(),
            due: Mutex::default(),
            share: Mutex::new(Share::ALL),
        }
    }
}

impl WorkBoard {
    /// `sku`'s stream has a new event: wake the settler.
    pub fn events_appended(&self, sku: &Sku) {
        lock(&self.to_settle).insert(sku.clone());
        // Stores a permit when the settler is busy, so a post during a pass is not missed.
        self.posted.notify_one();
    }

    /// Takes every SKU posted since the last call.
    pub fn take_to_settle(&self) -> Vec<Sku> {
        std::mem::take(&mut *lock(&self.to_settle))
            .into_iter()
            .collect()
    }

    /// Resolves once a SKU is posted (at once if one was posted since the last wait).
    pub async fn posted(&self) {
        self.posted.notified().await;
    }

    /// A hold of `sku` falls due `after` from now; the earliest one known is kept.
    pub fn falls_due(&self, sku: &Sku, after: Duration) {
        let at = Instant::now() + after;
        let mut due = lock(&self.due);
        match due.get_mut(sku) {
            Some(known) if *known <= at => {}
            Some(known) => *known = at,
            None => {
                due.insert(sku.clone(), at);
            }
        }
    }

    /// Takes the SKUs whose earliest known hold is due by `now`.
    pub fn take_due(&self, now: Instant) -> Vec<Sku> {
        let mut due = lock(&self.due);
        let ready: Vec<Sku> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(sku, _)| sku.clone())
            .collect();
        for sku in &ready {
            due.remove(sku);
        }
        ready
    }

    /// This process's share of the catalogue, as its settler last heard from the fleet.
    pub fn share(&self) -> Share {
        *lock(&self.share)
    }

    pub(super) fn set_share(&self, share: Share) {
        *lock(&self.share) = share;
    }
}

/// Every critical section here is a single insert, take or read: a poisoned lock still holds
/// a consistent value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(code: &str) -> Sku {
        Sku::parse(code).expect("sku")
    }

    #[test]
    fn each_posted_sku_is_taken_once() {
        let board = WorkBoard::default();
        board.events_appended(&sku("a"));
        board.events_appended(&sku("a"));
        board.events_appended(&sku("b"));
        let mut taken = board.take_to_settle();
        taken.sort();
        assert_eq!(taken, vec![sku("a"), sku("b")]);
        assert!(board.take_to_settle().is_empty());
    }

    #[tokio::test]
    async fn a_post_while_the_settler_is_busy_wakes_its_next_wait() {
        let board = WorkBoard::default();
        board.events_appended(&sku("a"));
        tokio::time::timeout(Duration::from_secs(1), board.posted())
            .await
            .expect("the post made before the wait must wake it");
    }

    #[test]
    fn the_earliest_deadline_of_a_sku_is_kept_and_taken_when_due() {
        let board = WorkBoard::default();
        board.falls_due(&sku("a"), Duration::from_secs(60));
        board.falls_due(&sku("a"), Duration::ZERO);
        board.falls_due(&sku("a"), Duration::from_secs(30));
        board.falls_due(&sku("b"), Duration::from_secs(60));
        assert_eq!(board.take_due(Instant::now()), vec![sku("a")]);
        assert!(board.take_due(Instant::now()).is_empty(), "taken once");
        assert_eq!(
            board.take_due(Instant::now() + Duration::from_secs(61)),
            vec![sku("b")]
        );
    }
}
