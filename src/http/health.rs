//! Liveness and readiness probes, metrics, and the OpenAPI document.
//!
//! None of these touches a store per call: `/readyz` answers from [`Readiness`], which a
//! background task refreshes about once a second, so probes (or a flood of them) cost the stores
//! nothing. That refresh also lets the Redis circuit breaker probe and close with no traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::gate::Gate;
use crate::store::Store;

/// The probes: on every listener, so a load balancer and an orchestrator reach them wherever
/// they look.
pub fn probes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi))
}

/// `/metrics`: on the operators' listener when there is one.
pub fn operations() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// How often the stores are checked for `/readyz`.
pub const READINESS_INTERVAL: Duration = Duration::from_secs(1);

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The last known state of both stores, and whether the process is shutting down.
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug)]
struct ReadinessInner {
    redis: AtomicU8,
    postgres: AtomicU8,
    draining: AtomicBool,
    epoch: Instant,
    checked_at_ms: AtomicU64,
    /// The SKUs that take no new hold until a resync, as Postgres last said.
    resync_required: std::sync::Mutex<Vec<String>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            inner: Arc::new(ReadinessInner {
                redis: AtomicU8::new(UNKNOWN),
                postgres: AtomicU8::new(UNKNOWN),
                draining: AtomicBool::new(false),
                epoch: Instant::now(),
                checked_at_ms: AtomicU64::new(0),
                resync_required: std::sync::Mutex::default(),
            }),
        }
    }
}

impl Readiness {
    /// Checks both stores once (each call bounded by its store's timeout), and reads which
    /// sales wait for a resync.
    pub async fn refresh(&self, gate: &Gate, store: &Store) {
        let (redis, postgres) = tokio::join!(gate.ping(), store.resync_required());
        if let Ok(waiting) = &postgres {
            *self
                .inner
                .resync_required
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                waiting.iter().map(|(sku, ..)| sku.clone()).collect();
        }
        let word = |ok: bool| if ok { UP } else { DOWN };
        self.inner
            .redis
            .store(word(redis.is_ok()), Ordering::Relaxed);
        self.inner
            .postgres
            .store(word(postgres.is_ok()), Ordering::Relaxed);
        self.inner.checked_at_ms.store(
            self.inner.epoch.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// Refreshes every [`READINESS_INTERVAL`] until the task is dropped.
    pub async fn keep_fresh(self, gate: Gate, store: Store) {
        loop {
            tokio::time::sleep(READINESS_INTERVAL).await;
            self.refresh(&gate, &store).await;
        }
    }

    /// From now on `/readyz` answers 503 `draining`, so load balancers stop sending.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }
}

/// The API's OpenAPI document, generated from the handlers and their types.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
async fn openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(super::openapi())
}

/// Prometheus text exposition of the process's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "up", body = Object)))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answered the last check and the process is not shutting down: the gate
/// decides from Redis alone and keeps admitting while Postgres is down (the settler catches
/// up). Postgres's state is reported beside it, the sales that take no new hold until a resync
/// (`resync_required`: the gate still serves every other sale), and the events' relays.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = Object),
        (status = 503, description = "redis unavailable or the process draining", body = Object),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let readiness = &state.readiness.inner;
    let word = |s: &AtomicU8| match s.load(Ordering::Relaxed) {
        UP => "ok",
        DOWN => "unavailable",
        _ => "unknown",
    };
    let redis = word(&readiness.redis);
    let draining = readiness.draining.load(Ordering::Relaxed);
    let status = if draining {
        "draining"
    } else if redis == "ok" {
        "ok"
    } else {
        "unavailable"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let checked_ms_ago = (readiness.epoch.elapsed().as_millis() as u64)
        .saturating_sub(readiness.checked_at_ms.load(Ordering::Relaxed));
    (
        code,
        Json(json!({
            "status": status,
            "redis": redis,
            "postgres": word(&readiness.postgres),
            "redis_breaker_open": state.gate.breaker_open(),
            "checked_ms_ago": checked_ms_ago,
            "resync_required": *readiness
                .resync_required
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            // The broker is never on the buyer's path: it is reported, never a reason for 503.
            "events": state.events.readiness(),
        })),
    )
}
