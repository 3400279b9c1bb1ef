//! Public sale information: `GET /v1/skus/{sku}`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AppPath, SkuPath};
use super::{ApiError, AppState};
use crate::domain::{Currency, Money, SaleState, Sku, WaitingRoom, timestamp};
use crate::store::SkuRecord;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show))
}

/// A sale as buyers see it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SkuView {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub name: String,
    /// A decimal string, e.g. `"199.99"`.
    #[schema(value_type = String)]
    pub price: Money,
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Units a new hold may take now (Redis when live, else Postgres).
    pub available: i64,
    /// Units on sale in total; shown when read from Postgres.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    pub per_buyer_limit: u32,
    pub hold_ttl_seconds: u32,
    #[serde(serialize_with = "timestamp::serialize_option")]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "timestamp::serialize_option")]
    pub ends_at: Option<DateTime<Utc>>,
    pub state: SaleState,
    /// Whether the sale is loaded into Redis (pre-warmed).
    pub live: bool,
    /// Whether a hold could be taken right now: live, open, and inside the window.
    pub open: bool,
    /// With the room on, a reserve needs an admitted place in line (`POST .../queue`).
    pub waiting_room: WaitingRoom,
}

impl SkuView {
    /// The sale after a change, as the application layer reports it.
    pub fn from_change(changed: crate::app::SaleChanged) -> Self {
        Self::from_record(changed.record).live(changed.live)
    }

    /// The same view, for a sale that is (or is not) loaded in Redis: `open` follows.
    pub fn live(mut self, live: bool) -> Self {
        self.live = live;
        self.open = live
            && self.state == SaleState::Open
            && window_contains(self.starts_at, self.ends_at, Utc::now());
        self
    }

    pub fn from_record(record: SkuRecord) -> Self {
        Self {
            sku: record.sku,
            name: record.name,
            price: record.price,
            currency: record.currency,
            available: record.available,
            total: Some(record.total),
            per_buyer_limit: record.per_buyer_limit,
            hold_ttl_seconds: record.hold_ttl_seconds,
            starts_at: record.starts_at,
            ends_at: record.ends_at,
            state: record.state,
            live: false,
            open: false,
            waiting_room: record.waiting_room,
        }
    }
}

fn window_contains(
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    starts_at.is_none_or(|s| s <= now) && ends_at.is_none_or(|e| now < e)
}

/// A sale as buyers see it: live availability and window. A sale never launched (created, not
/// yet pre-warmed) is not announced: its price, stock and start stay private until then (404,
/// as for a SKU nobody created). Operators see it with `GET /v1/admin/skus/{sku}`.
#[utoipa::path(get, path = "/v1/skus/{sku}", tag = "buyers", params(SkuPath),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 404, description = "unknown_sku (also a sale not launched yet)", body = super::error::ErrorBody),
        (status = 429, description = "rate_limited (per-client shedding); Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "service_unavailable, overloaded, request_timeout; Retry-After", body = super::error::ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    AppPath(raw): AppPath<String>,
) -> Result<Json<SkuView>, ApiError> {
    sale_view(&state, raw, Audience::Buyers).await.map(Json)
}

/// Who a sale is shown to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Audience {
    /// Launched sales only.
    Buyers,
    /// Every sale, drafts included.
    Operators,
}

/// The sale `raw` names: live from Redis when it is, else as Postgres records it.
pub(super) async fn sale_view(
    state: &AppState,
    raw: String,
    audience: Audience,
) -> Result<SkuView, ApiError> {
    let sku = Sku::parse(&raw).map_err(|_| ApiError::UnknownSku(raw.clone()))?;
    if let Some(live) = state.gate.live_sale(&sku).await? {
        let open = live.state == SaleState::Open
            && window_contains(live.starts_at, live.ends_at, Utc::now());
        return Ok(SkuView {
            sku,
            name: live.name,
            price: live.price,
            currency: live.currency,
            available: live.available,
            total: None,
            per_buyer_limit: live.per_buyer_limit,
            hold_ttl_seconds: live.hold_ttl_seconds,
            starts_at: live.starts_at,
            ends_at: live.ends_at,
            state: live.state,
            live: true,
            open,
            waiting_room: live.waiting_room,
        });
    }
    let record = state
        .store
        .find_sku(&sku)
        .await?
        .filter(|record| audience == Audience::Operators || record.launched_at.is_some())
        .ok_or(ApiError::UnknownSku(raw))?;
    Ok(SkuView::from_record(record))
}
