//! Liveness and readiness probes, metrics, and the OpenAPI document.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The API's OpenAPI 3.1 document (`openapi.json` at the repository root).
async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../../openapi.json"),
    )
}

/// Prometheus text exposition of the process's counters.
async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The process is up.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answers: the gate decides from Redis alone, and keeps admitting while
/// Postgres is down (the settler catches up). Postgres's state is reported beside it.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (redis, postgres) = tokio::join!(state.gate.ping(), state.store.ping());
    let status = if redis.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(json!({
            "status": word(redis.is_ok()),
            "redis": word(redis.is_ok()),
            "postgres": word(postgres.is_ok()),
        })),
    )
}
