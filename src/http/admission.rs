//! Admission: overload is answered fast and fairly instead of being queued into timeouts.
//!
//! Requests are split into lanes with budgets of their own, so that a flood of new buyers can
//! never stand between a buyer who holds a unit and their payment:
//!
//! - **new buyers** (`POST .../reservations`, `GET /v1/skus/{sku}`): first the per-client
//!   shedder (429 `rate_limited`, on the real client address); then caps on what one client
//!   address and one buyer may have in flight at once (429 `too_many_in_flight`); then the body
//!   is read under its own short deadline (408 `body_read_timeout`) — all before the request
//!   takes a place — and last an in-flight limit with a short queue. A request that finds no
//!   place within the queue time is answered `503 overloaded` + `Retry-After` at once, so
//!   latency stays bounded under any load. A client trickling its body a byte a second never
//!   holds a place, and one client or one buyer token on hundreds of connections holds only its
//!   cap of requests.
//! - **payers** (commit, release, a buyer's read of their own hold): never shed per client and
//!   never behind new buyers; a separate, larger in-flight limit guards only against a flood of
//!   payment calls themselves. Its queue runs almost to the request deadline: a payer waits
//!   rather than being refused because new buyers keep the machine busy.
//!
//! Admin, health and metrics routes are in neither lane: they are cheap and touch no store per
//! call (admin needs its token; `/readyz` answers from a state refreshed in the background).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::ApiError;
use super::client_addr::ClientAddr;
use super::shedding::{AdminBackoff, ClientShedder};
use crate::auth::BearerTokens;
use crate::domain::BuyerId;

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
    /// New-buyer requests one client address may have in flight at once (0: no cap).
    pub per_client_in_flight: usize,
    /// New-buyer requests one buyer may have in flight at once (0: no cap).
    pub per_buyer_in_flight: usize,
    /// Longest a new-buyer request's body may take to arrive, before it takes a place.
    pub body_read_timeout: Duration,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            new_buyer_limit: 256,
            new_buyer_queue: Duration::from_millis(100),
            payer_limit: 1024,
            payer_queue: Duration::from_secs(8),
            per_client_in_flight: 64,
            per_buyer_in_flight: 4,
            body_read_timeout: Duration::from_secs(2),
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
    admin_backoff: AdminBackoff,
    new_buyers: Lane,
    payers: Lane,
    clients: Arc<InFlight<ClientAddr>>,
    buyers: Arc<InFlight<BuyerId>>,
    body_read_timeout: Duration,
}

/// Requests in flight per key, capped. Only keys with a request in flight are kept, so the map
/// is as large as the concurrency, not as the crowd.
#[derive(Debug)]
struct InFlight<K> {
    cap: usize,
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Mutex::default(),
        }
    }

    /// A place for `key`, or `None` when it has its cap in flight already.
    fn enter(self: &Arc<Self>, key: K) -> Option<InFlightPlace<K>> {
        if self.cap == 0 {
            return Some(InFlightPlace { of: None });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key.clone()).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(InFlightPlace {
            of: Some((self.clone(), key)),
        })
    }
}

/// A request counted in flight; it leaves when dropped.
struct InFlightPlace<K: Hash + Eq + Clone> {
    of: Option<(Arc<InFlight<K>>, K)>,
}

impl<K: Hash + Eq + Clone> Drop for InFlightPlace<K> {
    fn drop(&mut self) {
        if let Some((in_flight, key)) = self.of.take() {
            let mut counts = in_flight.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(settings: AdmissionSettings, shedder: Option<ClientShedder>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shedder,
                admin_backoff: AdminBackoff::default(),
                new_buyers: Lane::new(
                    "new_buyers",
                    settings.new_buyer_limit,
                    settings.new_buyer_queue,
                ),
                payers: Lane::new("payers", settings.payer_limit, settings.payer_queue),
                clients: Arc::new(InFlight::new(settings.per_client_in_flight)),
                buyers: Arc::new(InFlight::new(settings.per_buyer_in_flight)),
                body_read_timeout: settings.body_read_timeout,
            }),
        }
    }

    pub fn shedder(&self) -> Option<&ClientShedder> {
        self.inner.shedder.as_ref()
    }

    /// The per-client back-off of wrong admin tokens.
    pub fn admin_backoff(&self) -> &AdminBackoff {
        &self.inner.admin_backoff
    }
}

/// Middleware for the new-buyer lane: shed per client, cap what one client and one buyer have
/// in flight, read the body under its deadline, then admit within the lane's in-flight limit.
pub async fn new_buyers(
    State((admission, tokens)): State<(Admission, BearerTokens)>,
    request: Request,
    next: Next,
) -> Response {
    let inner = &admission.inner;
    let client = request.extensions().get::<ClientAddr>().copied();
    if let (Some(shedder), Some(client)) = (admission.shedder(), client)
        && let Err(refusal) = shedder.check(client)
    {
        metrics::counter!("flashgate_shed_total", "lane" => "new_buyers").increment(1);
        return refusal.into_response();
    }
    let _client_place = match client {
        Some(client) => match inner.clients.enter(client) {
            Some(place) => Some(place),
            None => return too_many_in_flight("client"),
        },
        None => None,
    };
    // The buyer, when the request names a valid one: checked here so that one token on many
    // connections holds only its cap, and handed to the handler so it is not checked twice. An
    // invalid token is left to the handler: the sale view needs none, and a reserve answers it
    // 401 from its extractor.
    let mut request = request;
    let buyer = super::extract::bearer_token(request.headers())
        .and_then(|token| tokens.verify_buyer(token).ok());
    let _buyer_place = match buyer {
        Some(buyer) => {
            request
                .extensions_mut()
                .insert(super::extract::Buyer(buyer.clone()));
            match inner.buyers.enter(buyer) {
                Some(place) => Some(place),
                None => return too_many_in_flight("buyer"),
            }
        }
        None => None,
    };
    let request = match read_body(request, inner.body_read_timeout).await {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    match inner.new_buyers.enter().await {
        Ok(_place) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

fn too_many_in_flight(of: &'static str) -> Response {
    metrics::counter!("flashgate_in_flight_refused_total", "per" => of).increment(1);
    ApiError::TooManyInFlight(of).into_response()
}

/// The request with its body read whole (at most [`super::BODY_LIMIT_BYTES`]) within
/// `deadline`, so a slow sender never waits inside the lane.
async fn read_body(request: Request, deadline: Duration) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, super::BODY_LIMIT_BYTES);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(
            parts,
            axum::body::Body::from(collected.to_bytes()),
        )),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge),
        Ok(Err(_)) => Err(ApiError::MalformedJson("the request body broke off".into())),
        Err(_) => {
            metrics::counter!("flashgate_body_read_timeouts_total").increment(1);
            Err(ApiError::BodyReadTimeout)
        }
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
