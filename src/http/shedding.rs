//! Per-client load shedding, in process, before a request costs a Redis round trip.
//!
//! A client flooding the gate (a bot, a broken retry loop) is answered 429 here from a `governor`
//! keyed limiter on its [`ClientAddr`] — the real client behind trusted proxies, not the proxy.
//! The per-buyer limit and rate limit stay in Lua, where every gate instance sees the same
//! counts; this limiter is per instance and only protects it. It guards new-buyer traffic only:
//! a buyer who holds a unit is never shed on the way to paying (see `admission`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::ApiError;
use super::client_addr::ClientAddr;

/// A keyed GCRA limiter on client addresses.
#[derive(Debug, Clone)]
pub struct ClientShedder {
    limiter: Arc<DefaultKeyedRateLimiter<ClientAddr>>,
    burst: u32,
    window: Duration,
}

impl ClientShedder {
    /// `None` when `per_second` is 0: shedding is off.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            burst: burst.get(),
            window: Duration::from_secs_f64(f64::from(burst.get()) / f64::from(rate.get())),
        })
    }

    pub fn check(&self, client: ClientAddr) -> Result<(), ApiError> {
        self.limiter
            .check_key(&client)
            .map_err(|not_until| ApiError::ClientShed {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                burst: self.burst,
                window: self.window,
            })
    }

    /// Forgets clients that have earned their full burst back, so the map stays bounded.
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Backs off admin-token guessing per client: a client that sent [`ADMIN_FAILURE_BURST`] wrong
/// admin tokens gets one more try every [`ADMIN_FAILURE_REFILL`], and while it waits it is
/// answered 429 `rate_limited` + `Retry-After` *without* its token being compared, so guessing
/// gains nothing from speed (a run against the build before: 5,000 wrong tokens in 0.62 s, all
/// compared). Only wrong tokens count: a missing one, or a right one, never does.
#[derive(Debug, Clone)]
pub struct AdminBackoff {
    failures: Arc<DefaultKeyedRateLimiter<ClientAddr>>,
    /// Clients out of tries, and until when. Failures are rare, so a lock is no cost; bounded
    /// by [`BACKING_OFF_CLIENTS`].
    backing_off: Arc<std::sync::Mutex<std::collections::HashMap<ClientAddr, std::time::Instant>>>,
}

/// Wrong admin tokens a client may send at once before it must wait.
pub const ADMIN_FAILURE_BURST: u32 = 20;
/// How often a client that used its burst earns one more try.
pub const ADMIN_FAILURE_REFILL: Duration = Duration::from_secs(3);
/// Most clients remembered as backing off; past it the oldest entries that ended are dropped,
/// and a client not remembered is still limited by the failure count.
const BACKING_OFF_CLIENTS: usize = 65_536;

impl Default for AdminBackoff {
    fn default() -> Self {
        let quota = Quota::with_period(ADMIN_FAILURE_REFILL)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(ADMIN_FAILURE_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            failures: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            backing_off: Arc::default(),
        }
    }
}

impl AdminBackoff {
    /// 429 while `client` is out of tries; its token is not to be compared.
    pub fn check(&self, client: ClientAddr) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        let mut backing_off = self.backing_off.lock().unwrap_or_else(|p| p.into_inner());
        match backing_off.get(&client) {
            Some(until) if *until > now => Err(Self::refusal(*until - now)),
            Some(_) => {
                backing_off.remove(&client);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a wrong token from `client`; once it is out of tries, the 429 to answer instead of
    /// the 403.
    pub fn failed(&self, client: ClientAddr) -> Result<(), ApiError> {
        let Err(not_until) = self.failures.check_key(&client) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let now = std::time::Instant::now();
        let mut backing_off = self.backing_off.lock().unwrap_or_else(|p| p.into_inner());
        if backing_off.len() >= BACKING_OFF_CLIENTS {
            backing_off.retain(|_, until| *until > now);
        }
        if backing_off.len() < BACKING_OFF_CLIENTS {
            backing_off.insert(client, now + wait);
        }
        Err(Self::refusal(wait))
    }

    /// Forgets clients whose wait ended and whose tries came back, so both maps stay bounded.
    pub fn forget_idle_clients(&self) {
        let now = std::time::Instant::now();
        self.backing_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
    }

    fn refusal(retry_after: Duration) -> ApiError {
        metrics::counter!("flashgate_admin_backoffs_total").increment(1);
        ApiError::ClientShed {
            retry_after,
            burst: ADMIN_FAILURE_BURST,
            window: ADMIN_FAILURE_REFILL * ADMIN_FAILURE_BURST,
        }
    }
}
