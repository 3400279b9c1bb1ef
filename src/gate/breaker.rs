//! A circuit breaker in front of Redis.
//!
//! While Redis hangs (frozen, failing over, out of memory) every request would otherwise wait
//! its full response timeout and then fail: thousands of buyers queued into timeouts. After
//! `failures` consecutive failed calls the breaker opens and the gate answers 503 + `Retry-After`
//! at once, without touching Redis. After `open_for` one probe is let through (half-open): its
//! success closes the breaker, its failure opens it again. The readiness refresher calls Redis
//! about once a second, so a breaker also probes — and closes — when no buyer is calling.
//!
//! Only failures that say "Redis cannot serve now" count (I/O errors, timeouts, refused or
//! dropped connections, `LOADING`, `BUSY`, `OOM`, `MASTERDOWN`, `READONLY`, ...); a script's own
//! error reply or `NOSCRIPT` is an answer, not an outage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// When to open and how long to stay open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failed calls that open the breaker; 0 turns it off.
    pub failures: u32,
    /// How long it stays open before a probe is let through.
    pub open_for: Duration,
    /// How long a probe may take before another one may go (it may have been cancelled).
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// The breaker's state, shared by every connection of one gate.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

/// The breaker is open: Redis is not called.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("redis circuit breaker is open after repeated failures")]
pub struct BreakerOpen;

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is one assignment: a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go to Redis now; an open breaker answers at once.
    pub fn admit(&self) -> Result<(), BreakerOpen> {
        if self.settings.failures == 0 {
            return Ok(());
        }
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probe_since: now };
                tracing::info!("redis circuit breaker half-open: probing");
                Ok(())
            }
            State::HalfOpen { probe_since }
                if now.duration_since(probe_since) >= self.settings.probe_timeout =>
            {
                *state = State::HalfOpen { probe_since: now };
                Ok(())
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                metrics::counter!("flashgate_redis_breaker_rejected_total").increment(1);
                Err(BreakerOpen)
            }
        }
    }

    pub fn record_success(&self) {
        let mut state = self.state();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!("redis answered again: circuit breaker closed");
            metrics::gauge!("flashgate_redis_breaker_open").set(0.0);
        }
        *state = State::Closed {
            consecutive_failures: 0,
        };
    }

    pub fn record_failure(&self) {
        if self.settings.failures == 0 {
            return;
        }
        let mut state = self.state();
        let now = Instant::now();
        let open = State::Open {
            until: now + self.settings.open_for,
        };
        *state = match *state {
            State::Closed {
                consecutive_failures,
            } if consecutive_failures + 1 < self.settings.failures => State::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            State::Closed { .. } => {
                tracing::warn!(
                    failures = self.settings.failures,
                    open_ms = self.settings.open_for.as_millis() as u64,
                    "redis keeps failing: circuit breaker open, answering 503 without calling it"
                );
                metrics::counter!("flashgate_redis_breaker_opened_total").increment(1);
                metrics::gauge!("flashgate_redis_breaker_open").set(1.0);
                open
            }
            State::HalfOpen { .. } => open,
            // A call admitted before the breaker opened has failed too: the window stays.
            State::Open { until } => State::Open { until },
        };
    }

    /// Whether calls are refused right now (for `/readyz` and the console).
    pub fn is_open(&self) -> bool {
        matches!(*self.state(), State::Open { until } if Instant::now() < until)
    }
}

/// Whether an error means "Redis cannot serve now" rather than "Redis answered no".
pub fn is_outage(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly
            )
        )
        || err.code().is_some_and(is_outage_code)
}

/// Server error codes that mean the server cannot take this call now.
fn is_outage_code(code: &str) -> bool {
    matches!(
        code,
        "OOM" | "BUSY" | "LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN"
    )
}

/// A connection whose every reply is reported to the breaker. All gate traffic goes
/// through one of these, so no call path can bypass the breaker's bookkeeping.
#[derive(Clone)]
pub struct GuardedConnection {
    pub(super) inner: super::RedisConnection,
    breaker: std::sync::Arc<CircuitBreaker>,
}

impl std::fmt::Debug for GuardedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardedConnection")
    }
}

impl GuardedConnection {
    pub fn new(inner: super::RedisConnection, breaker: std::sync::Arc<CircuitBreaker>) -> Self {
        Self { inner, breaker }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, super::RedisConnection::Cluster(_))
    }

    pub(super) fn report<T>(&self, result: &Result<T, RedisError>, server_error: Option<&str>) {
        match (result, server_error) {
            (Err(err), _) if is_outage(err) => self.breaker.record_failure(),
            (_, Some(code)) if is_outage_code(code) => self.breaker.record_failure(),
            // Any other answer, even an error reply, proves Redis is serving.
            _ => self.breaker.record_success(),
        }
    }
}

impl ConnectionLike for GuardedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.inner.req_packed_command(cmd).await;
            metrics::histogram!("flashgate_redis_call_duration_seconds", "kind" => "command")
                .record(started.elapsed().as_secs_f64());
            let code = match &result {
                Ok(Value::ServerError(err)) => Some(err.code().to_owned()),
                _ => None,
            };
            self.report(&result, code.as_deref());
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            metrics::histogram!("flashgate_redis_call_duration_seconds", "kind" => "pipeline")
                .record(started.elapsed().as_secs_f64());
            self.report(&result, None);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failures,
            open_for: Duration::from_millis(open_ms),
            probe_timeout: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 10_000);
        b.record_failure();
        b.record_failure();
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert!(b.admit().is_ok());
        b.record_failure();
        assert!(b.is_open());
        assert!(b.admit().is_err());
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_answer_decides() {
        let b = breaker(1, 0);
        b.record_failure();
        assert!(b.admit().is_ok(), "the probe");
        assert!(b.admit().is_err(), "only one probe at a time");
        b.record_failure();
        assert!(b.admit().is_ok(), "open_for is 0: the next probe");
        b.record_success();
        assert!(b.admit().is_ok());
        assert!(b.admit().is_ok());
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = breaker(0, 10_000);
        for _ in 0..10 {
            b.record_failure();
        }
        assert!(b.admit().is_ok());
        assert!(!b.is_open());
    }

    #[test]
    fn full_and_busy_servers_count_as_outages() {
        assert!(is_outage_code("OOM"));
        assert!(is_outage_code("BUSY"));
        assert!(!is_outage_code("NOSCRIPT"));
        assert!(!is_outage_code("ERR"));
    }
}
