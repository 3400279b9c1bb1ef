//! Events for systems without a broker (docs/DESIGN.md §11): `GET /v1/admin/events` pages
//! through a SKU's events in sequence order, with the same bodies the relays send; and
//! `GET /asyncapi.json` describes them.

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{Admin, AppQuery, SkuQuery};
use super::{ApiError, AppState};
use crate::domain::Sku;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

pub fn contract() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(asyncapi))
}

/// Most events one page may hold.
const MAX_LIMIT: i64 = 1000;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// The SKU whose events to list (documented by `SkuQuery`).
    #[param(ignore)]
    sku: String,
    /// Only events with a larger sequence (0: from the first kept).
    #[serde(default)]
    #[param(minimum = 0)]
    after: i64,
    /// Most events in the page (1 to 1000).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

/// One page of a SKU's events.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct EventsPage {
    sku: String,
    /// The events, in sequence order: exactly the bodies the broker and the webhook receive
    /// (see `/asyncapi.json`).
    #[schema(value_type = Vec<Object>)]
    events: Vec<Value>,
    /// Pass as `after` for the next page.
    next_after: i64,
    /// Whether more events follow this page now.
    more: bool,
}

/// A SKU's events after a sequence number, oldest first (kept for FLASHGATE_OUTBOX_RETENTION).
/// To replay a range a consumer missed: start at the last sequence it applied and follow
/// `next_after` until `more` is false.
#[utoipa::path(get, path = "/v1/admin/events", tag = "admin", params(SkuQuery, EventsQuery),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "a page of events", body = EventsPage),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 422, description = "invalid_request", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn events(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let sku = Sku::parse(&query.sku).map_err(|_| ApiError::UnknownSku(query.sku.clone()))?;
    if !(1..=MAX_LIMIT).contains(&query.limit) || query.after < 0 {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be 1 to {MAX_LIMIT} and after at least 0"
        )));
    }
    // One more than asked, to tell whether more follow.
    let bodies = state
        .store
        .events_after(&sku, query.after, query.limit + 1)
        .await?
        .ok_or_else(|| ApiError::UnknownSku(query.sku.clone()))?;
    let more = bodies.len() as i64 > query.limit;
    let events: Vec<Value> = bodies
        .iter()
        .take(query.limit as usize)
        .map(|body| serde_json::from_str(body))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Internal(format!("an outbox row of {sku} is not JSON: {e}")))?;
    let next_after = events
        .last()
        .and_then(|e| e["sequence"].as_i64())
        .unwrap_or(query.after);
    Ok(Json(EventsPage {
        sku: sku.to_string(),
        events,
        next_after,
        more,
    }))
}

/// The AsyncAPI 3 document of the events published to this gate's exchange, with a JSON
/// Schema per kind (generated from the code).
#[utoipa::path(get, path = "/asyncapi.json", tag = "operations",
    responses((status = 200, description = "the AsyncAPI document", content_type = "application/json", body = Object)))]
async fn asyncapi(State(state): State<AppState>) -> Json<Value> {
    Json(crate::events::contract::asyncapi(&state.events.exchange()))
}
