//! The HTTP API (DESIGN.md §5), built on axum.
//!
//! Each resource module exposes `router()`; [`app`] merges them and adds the layers. Errors
//! become responses in one place: [`ApiError`], in `error.rs`.

mod admin;
mod error;
mod extract;
mod health;
mod reservations;
mod shedding;
mod skus;

pub use error::ApiError;
pub use shedding::ClientShedder;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{AdminToken, BuyerTokens};
use crate::gate::Gate;
use crate::store::Store;

/// Request bodies are tiny JSON objects; anything larger is refused before it is read.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Redis: decides reservations.
    pub gate: Gate,
    /// Postgres: the authoritative record.
    pub store: Store,
    /// Settles synchronously where a caller must wait for Postgres (commit, resync).
    pub settler: crate::settler::Settler,
    /// Verifies buyer tokens.
    pub tokens: BuyerTokens,
    /// The admin bearer token.
    pub admin: AdminToken,
    /// Per-client-IP shedding, or `None` when disabled.
    pub shedder: Option<ClientShedder>,
    /// How long one request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(reservations::router())
        .merge(skus::router())
        .merge(admin::router())
        .layer(axum::middleware::from_fn_with_state(
            state.shedder.clone(),
            shedding::shed,
        ));
    Router::new()
        .merge(api)
        .merge(health::router())
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The shedder's map only grows; prune it while the server runs.
    let pruner = state.shedder.clone().map(|shedder| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                shedder.forget_idle_clients();
            }
        })
    });
    let served = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    served
}
