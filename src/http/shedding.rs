//! Per-client load shedding, in process, before a request costs a Redis round trip.
//!
//! A client flooding the gate (a bot, a broken retry loop) is answered 429 here from a `governor`
//! keyed limiter on its IP address. The per-buyer limit and rate limit stay in Lua, where every
//! gate instance sees the same counts; this limiter is per instance and only protects it.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::ApiError;

/// A keyed GCRA limiter on client IP addresses.
#[derive(Debug, Clone)]
pub struct ClientShedder {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
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

    fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.limiter
            .check_key(&ip)
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

/// Middleware: sheds the request if its client is over quota. Requests without a peer address
/// (tests driving the router in process) are let through.
pub async fn shed(
    State(shedder): State<Option<ClientShedder>>,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(shedder), Some(ConnectInfo(peer))) = (
        shedder,
        request.extensions().get::<ConnectInfo<SocketAddr>>(),
    ) && let Err(refusal) = shedder.check(peer.ip())
    {
        return refusal.into_response();
    }
    next.run(request).await
}
