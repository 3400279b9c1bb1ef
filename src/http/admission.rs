//! Admission: overload is answered fast and fairly instead of being queued into timeouts.
//!
//! Requests are split into lanes with budgets of their own, so that a flood of new buyers can
//! never stand between a buyer who holds a unit and their payment:
//!
//! - **new buyers** (`POST .../reservations`, `GET /v1/skus/{sku}`): first the per-client
//!   shedder (429 `rate_limited`, on the real client address), then an in-flight limit with a
//!   short queue. A request that finds no place within the queue time is answered
//!   `503 overloaded` + `Retry-After` at once, so latency stays bounded under any load.
//! - **payers** (commit, release, a buyer's read of their own hold): never shed per client and
//!   never behind new buyers; a separate, larger in-flight limit guards only against a flood of
//!   payment calls themselves. Its queue runs almost to the request deadline: a payer waits
//!   rather than being refused because new buyers keep the machine busy.
//!
//! Admin, health and metrics routes are in neither lane: they are cheap and touch no store per
//! call (admin needs its token; `/readyz` answers from a state refreshed in the background).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::ApiError;
use super::client_addr::ClientAddr;
use super::shedding::ClientShedder;

/// The budgets of both lanes.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// New-buyer requests in flight at once in this process.
    pub new_buyer_limit: usize,
    /// Longest a new-buyer request waits for a place before it is answered 503.
    pub new_buyer_queue: Duration,
    /// Payment requests in flight at once.
    pub payer_limit: usize,
    /// Longest a payment request waits for a place.
    pub payer_queue: Duration,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            new_buyer_limit: 256,
            new_buyer_queue: Duration::from_millis(100),
            payer_limit: 1024,
            payer_queue: Duration::from_secs(8),
        }
    }
}

#[derive(Debug)]
struct Lane {
    name: &'static str,
    permits: Semaphore,
    queue: Duration,
}

impl Lane {
    fn new(name: &'static str, limit: usize, queue: Duration) -> Self {
        Self {
            name,
            permits: Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS)),
            queue,
        }
    }

    /// A place in the lane, or `503 overloaded` once the queue time has passed.
    async fn enter(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        let permit = if self.queue.is_zero() {
            self.permits.try_acquire().ok()
        } else {
            tokio::time::timeout(self.queue, self.permits.acquire())
                .await
                .ok()
                .and_then(Result::ok)
        };
        permit.ok_or_else(|| {
            metrics::counter!("flashgate_admission_refused_total", "lane" => self.name)
                .increment(1);
            ApiError::Overloaded
        })
    }
}

/// Per-client shedding plus the two lanes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shedder: Option<ClientShedder>,
    new_buyers: Lane,
    payers: Lane,
}

impl Admission {
    pub fn new(settings: AdmissionSettings, shedder: Option<ClientShedder>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shedder,
                new_buyers: Lane::new(
                    "new_buyers",
                    settings.new_buyer_limit,
                    settings.new_buyer_queue,
                ),
                payers: Lane::new("payers", settings.payer_limit, settings.payer_queue),
            }),
        }
    }

    pub fn shedder(&self) -> Option<&ClientShedder> {
        self.inner.shedder.as_ref()
    }
}

/// Middleware for the new-buyer lane: shed per client, then admit within the in-flight limit.
pub async fn new_buyers(
    State(admission): State<Admission>,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(shedder), Some(client)) = (
        admission.shedder(),
        request.extensions().get::<ClientAddr>(),
    ) && let Err(refusal) = shedder.check(*client)
    {
        metrics::counter!("flashgate_shed_total", "lane" => "new_buyers").increment(1);
        return refusal.into_response();
    }
    match admission.inner.new_buyers.enter().await {
        Ok(_place) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Middleware for the payer lane: its own in-flight limit, no per-client shedding.
pub async fn payers(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    match admission.inner.payers.enter().await {
        Ok(_place) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_lane_refuses_within_its_queue_time() {
        let lane = Lane::new("test", 1, Duration::from_millis(20));
        let held = lane.enter().await.expect("first place");
        let started = std::time::Instant::now();
        assert!(matches!(lane.enter().await, Err(ApiError::Overloaded)));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(held);
        assert!(lane.enter().await.is_ok());
    }

    #[tokio::test]
    async fn a_zero_queue_refuses_at_once() {
        let lane = Lane::new("test", 1, Duration::ZERO);
        let _held = lane.enter().await.expect("first place");
        assert!(matches!(lane.enter().await, Err(ApiError::Overloaded)));
    }
}
