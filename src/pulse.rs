//! The sale's pulse: what buyers got, second by second, per SKU — for the operator's console and
//! for Prometheus, from one call per event.
//!
//! Every answer to a buyer's reserve or commit is recorded once with [`record_call`], every
//! release, expiry and rejection with [`record`]: each outcome increments the Prometheus counter
//! `flashgate_sale_outcomes_total{sku, outcome}` and the in-process counter the console reads;
//! [`record_call`] also feeds `flashgate_sale_call_duration_seconds{call}` and the console's
//! recent p50/p99. The counters are this process's: behind several gates, each console shows its own
//! gate, and Prometheus sums them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::domain::Sku;

/// What happened to a buyer's call, or to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new hold (201).
    Held,
    /// A retry answered with the stored hold.
    Replayed,
    SoldOut,
    /// The buyer's own rate limit (429 `rate_limited`).
    RateLimited,
    /// Shed per client address (429) or refused by admission (503 `overloaded`).
    Shed,
    /// Any other refusal of a reserve: limits, window, pause.
    Refused,
    Committed,
    Released,
    Expired,
    /// Postgres refused a hold Redis admitted.
    Rejected,
}

impl Outcome {
    pub const ALL: [Self; 10] = [
        Self::Held,
        Self::Replayed,
        Self::SoldOut,
        Self::RateLimited,
        Self::Shed,
        Self::Refused,
        Self::Committed,
        Self::Released,
        Self::Expired,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Replayed => "replayed",
            Self::SoldOut => "sold_out",
            Self::RateLimited => "rate_limited",
            Self::Shed => "shed",
            Self::Refused => "refused",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }

    /// Whether this outcome is a decision about a sale that exists, so that it may start the
    /// SKU's pulse. The others name a SKU taken from a URL that need not be a sale at all: a
    /// buyer's rate limit, a shed or refused request, an answer with no outcome (401, 404
    /// `unknown_sku`). Counted only for a SKU already tracked, they cannot make the process keep
    /// a pulse (~130 KB resident) per made-up SKU (it did, for every request to one).
    fn proves_a_sale(self) -> bool {
        match self {
            Self::Held
            | Self::Replayed
            | Self::SoldOut
            | Self::Committed
            | Self::Released
            | Self::Expired
            | Self::Rejected => true,
            Self::RateLimited | Self::Shed | Self::Refused => false,
        }
    }
}

/// A buyer's call whose latency the console shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Reserve,
    Commit,
}

impl Call {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Commit => "commit",
        }
    }
}

/// Counts `outcome` for `sku` (see [`Outcome::proves_a_sale`] for when a SKU starts being
/// tracked).
pub fn record(sku: &Sku, outcome: Outcome, count: u64) {
    if let Some(sale) = pulse().sale_for(sku, Some(outcome)) {
        sale.count(sku, outcome, count);
    }
}

/// Seconds of per-second history kept for the console's charts: five minutes.
pub const HISTORY_SECONDS: usize = 300;

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counts per outcome for each of the last [`HISTORY_SECONDS`] seconds, in a ring indexed by the
/// Unix second, so that a console opened after a sell-out still draws the last five minutes.
/// Lock-free on the recording path: a slot found holding an older second is claimed by one
/// caller and cleared; an increment racing that clear at the turn of a second may be lost, which
/// a chart can bear (the totals in `counts` are exact).
struct History {
    seconds: [AtomicU64; HISTORY_SECONDS],
    counts: [[AtomicU64; Outcome::ALL.len()]; HISTORY_SECONDS],
}

impl History {
    fn new() -> Self {
        Self {
            seconds: std::array::from_fn(|_| AtomicU64::new(0)),
            counts: std::array::from_fn(|_| Default::default()),
        }
    }

    fn record(&self, second: u64, outcome: Outcome, count: u64) {
        let slot = (second % HISTORY_SECONDS as u64) as usize;
        let held = self.seconds[slot].load(Ordering::Acquire);
        if held != second
            && self.seconds[slot]
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for counter in &self.counts[slot] {
                counter.store(0, Ordering::Relaxed);
            }
        }
        self.counts[slot][outcome.index()].fetch_add(count, Ordering::Relaxed);
    }

    /// Per outcome, the counts of the [`HISTORY_SECONDS`] whole seconds before `now` (the
    /// current one is still filling), oldest first; a second nothing happened in counts 0.
    fn last_seconds(&self, now: u64) -> HashMap<Outcome, Vec<u64>> {
        let mut series: HashMap<Outcome, Vec<u64>> = Outcome::ALL
            .iter()
            .map(|o| (*o, Vec::with_capacity(HISTORY_SECONDS)))
            .collect();
        for back in (1..=HISTORY_SECONDS as u64).rev() {
            let second = now.saturating_sub(back);
            let slot = (second % HISTORY_SECONDS as u64) as usize;
            let current = self.seconds[slot].load(Ordering::Acquire) == second;
            for outcome in Outcome::ALL {
                let count = if current {
                    self.counts[slot][outcome.index()].load(Ordering::Relaxed)
                } else {
                    0
                };
                series.entry(outcome).or_default().push(count);
            }
        }
        series
    }
}

/// Records the answer to a buyer's `call` on `sku`: its outcome, when it counts one, and how long
/// it took. The sale is looked up once for both (each lookup hashes the SKU under a lock and
/// touches a shared reference count: a reserve's answer looked it up twice).
pub fn record_call(sku: &Sku, outcome: Option<Outcome>, call: Call, took: Duration) {
    let Some(sale) = pulse().sale_for(sku, outcome) else {
        return;
    };
    if let Some(outcome) = outcome {
        sale.count(sku, outcome, 1);
    }
    sale.time(call, took);
}

/// One SKU's counters and recent latencies, as the console shows them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SalePulse {
    /// Totals since this process started, by outcome; the console turns them into rates.
    pub counts: HashMap<Outcome, u64>,
    /// Per outcome, how many happened in each of the last 300 whole seconds, oldest first: the
    /// console draws its five-minute charts from it, also when opened after the sale.
    pub per_second: HashMap<Outcome, Vec<u64>>,
    /// p50 and p99 over the last 10 to 20 seconds, in ms; `None` without calls.
    pub reserve_ms: Option<Percentiles>,
    pub commit_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub count: u64,
}

/// What this process has seen of `sku`.
pub fn snapshot(sku: &Sku) -> SalePulse {
    let Some(sale) = pulse().tracked(sku) else {
        return SalePulse {
            counts: Outcome::ALL.iter().map(|o| (*o, 0)).collect(),
            per_second: Outcome::ALL
                .iter()
                .map(|o| (*o, vec![0; HISTORY_SECONDS]))
                .collect(),
            reserve_ms: None,
            commit_ms: None,
        };
    };
    let percentiles = |window: &Mutex<Window>| {
        window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .percentiles()
    };
    SalePulse {
        counts: Outcome::ALL
            .iter()
            .map(|o| (*o, sale.counts[o.index()].load(Ordering::Relaxed)))
            .collect(),
        per_second: sale.history.last_seconds(unix_second()),
        reserve_ms: percentiles(&sale.reserve),
        commit_ms: percentiles(&sale.commit),
    }
}

#[derive(Default)]
struct Pulse {
    sales: RwLock<HashMap<Sku, Arc<Sale>>>,
}

struct Sale {
    counts: [AtomicU64; Outcome::ALL.len()],
    history: History,
    reserve: Mutex<Window>,
    commit: Mutex<Window>,
    /// The exported metrics' handles, each registered on its first use: the `counter!` and
    /// `histogram!` macros build, hash and look up their key on every call, which was a twelfth
    /// of a sold-out answer's instructions.
    outcome_counters: [OnceLock<metrics::Counter>; Outcome::ALL.len()],
    reserve_duration: OnceLock<metrics::Histogram>,
    commit_duration: OnceLock<metrics::Histogram>,
}

impl Sale {
    fn count(&self, sku: &Sku, outcome: Outcome, count: u64) {
        let slot = outcome.index();
        self.outcome_counters[slot]
            .get_or_init(|| {
                metrics::counter!("flashgate_sale_outcomes_total", "sku" => sku.to_string(), "outcome" => outcome.as_str())
            })
            .increment(count);
        self.counts[slot].fetch_add(count, Ordering::Relaxed);
        self.history.record(unix_second(), outcome, count);
    }

    fn time(&self, call: Call, took: Duration) {
        let (window, duration) = match call {
            Call::Reserve => (&self.reserve, &self.reserve_duration),
            Call::Commit => (&self.commit, &self.commit_duration),
        };
        duration
            .get_or_init(
                || metrics::histogram!("flashgate_sale_call_duration_seconds", "call" => call.as_str()),
            )
            .record(took.as_secs_f64());
        window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(took);
    }
}

fn pulse() -> &'static Pulse {
    static PULSE: OnceLock<Pulse> = OnceLock::new();
    PULSE.get_or_init(Pulse::default)
}

impl Pulse {
    /// The SKU's pulse: started by an outcome that proves a sale, else only if already tracked.
    fn sale_for(&self, sku: &Sku, outcome: Option<Outcome>) -> Option<Arc<Sale>> {
        match outcome {
            Some(outcome) if outcome.proves_a_sale() => Some(self.sale(sku)),
            _ => self.tracked(sku),
        }
    }

    fn tracked(&self, sku: &Sku) -> Option<Arc<Sale>> {
        self.sales
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sku)
            .cloned()
    }

    fn sale(&self, sku: &Sku) -> Arc<Sale> {
        if let Some(sale) = self.tracked(sku) {
            return sale;
        }
        self.sales
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sku.clone())
            .or_insert_with(|| {
                Arc::new(Sale {
                    counts: Default::default(),
                    history: History::new(),
                    reserve: Mutex::new(Window::new()),
                    commit: Mutex::new(Window::new()),
                    outcome_counters: Default::default(),
                    reserve_duration: OnceLock::new(),
                    commit_duration: OnceLock::new(),
                })
            })
            .clone()
    }
}

/// Recent latencies: the current and the previous 10-second histogram.
struct Window {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    started: Instant,
}

const WINDOW: Duration = Duration::from_secs(10);

impl Window {
    fn new() -> Self {
        // Microseconds, 1 µs to 60 s, 2 significant digits: about 4 KiB per histogram.
        let histogram =
            || Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant, valid bounds");
        Self {
            current: histogram(),
            previous: histogram(),
            started: Instant::now(),
        }
    }

    fn rotate(&mut self) {
        let age = self.started.elapsed();
        if age >= WINDOW {
            if age >= WINDOW * 2 {
                self.previous.reset();
            } else {
                std::mem::swap(&mut self.current, &mut self.previous);
            }
            self.current.reset();
            self.started = Instant::now();
        }
    }

    fn record(&mut self, took: Duration) {
        self.rotate();
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.current.saturating_record(micros);
    }

    fn percentiles(&mut self) -> Option<Percentiles> {
        self.rotate();
        let mut both = self.previous.clone();
        both.add(&self.current).ok()?;
        (!both.is_empty()).then(|| Percentiles {
            p50: both.value_at_quantile(0.5) as f64 / 1000.0,
            p99: both.value_at_quantile(0.99) as f64 / 1000.0,
            count: both.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles_per_sku() {
        let sku = Sku::parse("pulse-test").expect("sku");
        let other = Sku::parse("pulse-other").expect("sku");
        record(&sku, Outcome::Held, 3);
        record(&sku, Outcome::SoldOut, 1);
        for ms in 1..=100 {
            record_call(&sku, None, Call::Reserve, Duration::from_millis(ms));
        }
        let seen = snapshot(&sku);
        assert_eq!(seen.counts[&Outcome::Held], 3);
        assert_eq!(seen.counts[&Outcome::SoldOut], 1);
        let reserve = seen.reserve_ms.expect("latencies");
        assert!((49.0..=51.5).contains(&reserve.p50), "{reserve:?}");
        assert!((98.0..=100.5).contains(&reserve.p99), "{reserve:?}");
        assert!(seen.commit_ms.is_none());
        assert_eq!(snapshot(&other).counts[&Outcome::Held], 0);
    }

    #[test]
    fn only_a_decision_about_a_sale_starts_tracking_its_sku() {
        let made_up = Sku::parse("pulse-made-up").expect("sku");
        record_call(&made_up, None, Call::Reserve, Duration::from_millis(1));
        for outcome in [Outcome::RateLimited, Outcome::Shed, Outcome::Refused] {
            record_call(
                &made_up,
                Some(outcome),
                Call::Reserve,
                Duration::from_millis(1),
            );
            record(&made_up, outcome, 1);
        }
        record_call(&made_up, None, Call::Commit, Duration::from_millis(1));
        assert!(pulse().tracked(&made_up).is_none());
        let seen = snapshot(&made_up);
        assert!(seen.counts.values().all(|count| *count == 0));
        assert!(seen.reserve_ms.is_none());
        assert!(
            pulse().tracked(&made_up).is_none(),
            "a snapshot tracks nothing"
        );

        let sale = Sku::parse("pulse-real").expect("sku");
        record_call(
            &sale,
            Some(Outcome::Shed),
            Call::Reserve,
            Duration::from_millis(1),
        );
        record_call(
            &sale,
            Some(Outcome::SoldOut),
            Call::Reserve,
            Duration::from_millis(2),
        );
        record_call(
            &sale,
            Some(Outcome::Shed),
            Call::Reserve,
            Duration::from_millis(3),
        );
        record_call(&sale, None, Call::Reserve, Duration::from_millis(4));
        let seen = snapshot(&sale);
        assert_eq!(seen.counts[&Outcome::SoldOut], 1);
        // The shed before the first decision is not counted; the one after is.
        assert_eq!(seen.counts[&Outcome::Shed], 1);
        assert_eq!(seen.reserve_ms.expect("latencies").count, 3);
    }

    #[test]
    fn history_keeps_five_minutes_of_whole_seconds() {
        let history = History::new();
        let start = 1_000_000;
        history.record(start, Outcome::Held, 2);
        history.record(start, Outcome::Held, 1);
        history.record(start + 1, Outcome::SoldOut, 5);
        history.record(start + 2, Outcome::Held, 7); // still filling when read below
        let seen = history.last_seconds(start + 2);
        let held = &seen[&Outcome::Held];
        assert_eq!(held.len(), HISTORY_SECONDS);
        assert_eq!(&held[HISTORY_SECONDS - 2..], &[3, 0]);
        assert_eq!(seen[&Outcome::SoldOut][HISTORY_SECONDS - 1], 5);
        // Five minutes on, the slot of `start` holds a new second: the old counts are gone.
        let later = start + HISTORY_SECONDS as u64;
        history.record(later, Outcome::Held, 1);
        let seen = history.last_seconds(later + 1);
        assert_eq!(seen[&Outcome::Held][HISTORY_SECONDS - 1], 1);
        assert_eq!(seen[&Outcome::Held].iter().sum::<u64>(), 1 + 7);
    }
}
