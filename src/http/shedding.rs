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
