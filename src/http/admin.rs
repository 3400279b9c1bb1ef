//! Admin operations under `/v1/admin`, behind the admin token.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use super::extract::{Admin, AppJson, AppPath, AppQuery, OptionalIdempotencyKey};
use super::skus::SkuView;
use super::{ApiError, AppState};
use crate::domain::{Currency, Money, SaleDefinition, SaleState, Sku};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/skus/{sku}", put(upsert))
        .route("/v1/admin/skus/{sku}/prewarm", post(prewarm))
        .route("/v1/admin/skus/{sku}/audit", get(audit))
        .route("/v1/admin/skus/{sku}/restock", post(restock))
        .route("/v1/admin/skus/{sku}/pause", post(pause))
        .route("/v1/admin/skus/{sku}/resume", post(resume))
        .route("/v1/admin/skus/{sku}/resync", post(resync))
        .route("/v1/admin/skus/{sku}/resync/{job}", get(resync_job))
}

/// `PUT /v1/admin/skus/{sku}` body (docs/DESIGN.md §5).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleBody {
    pub name: String,
    /// A decimal string such as `"199.99"`; JSON numbers are refused so no float touches money.
    pub price: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    pub stock: u32,
    #[serde(default = "default_per_buyer_limit")]
    pub per_buyer_limit: u32,
    #[serde(default = "default_hold_ttl_seconds")]
    pub hold_ttl_seconds: u32,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
}

// Left out, these fields default as in `flashgate sku upsert`.
fn default_currency() -> String {
    SaleDefinition::DEFAULT_CURRENCY.to_owned()
}
fn default_per_buyer_limit() -> u32 {
    SaleDefinition::DEFAULT_PER_BUYER_LIMIT
}
fn default_hold_ttl_seconds() -> u32 {
    SaleDefinition::DEFAULT_HOLD_TTL_SECONDS
}

impl SaleBody {
    pub fn into_definition(self) -> Result<SaleDefinition, ApiError> {
        Ok(SaleDefinition {
            name: self.name,
            price: Money::parse(&self.price)?,
            currency: Currency::parse(&self.currency)?,
            stock: self.stock,
            per_buyer_limit: self.per_buyer_limit,
            hold_ttl_seconds: self.hold_ttl_seconds,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        }
        .validate()?)
    }
}

fn sku_param(raw: &str) -> Result<Sku, ApiError> {
    Ok(Sku::parse(raw)?)
}

/// Creates or changes a sale, live or not (see `app::Sales::upsert`): an absolute target, so a
/// retry after a timeout is safe.
async fn upsert(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    AppJson(body): AppJson<SaleBody>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = sku_param(&raw)?;
    let changed = state.sales().upsert(&sku, &body.into_definition()?).await?;
    Ok(Json(SkuView::from_change(changed)))
}

#[derive(Debug, Default, serde::Deserialize)]
struct PrewarmQuery {
    #[serde(default)]
    force: bool,
}

async fn prewarm(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    AppQuery(query): AppQuery<PrewarmQuery>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = sku_param(&raw)?;
    let changed = state.sales().prewarm(&sku, query.force).await?;
    Ok(Json(SkuView::from_change(changed)))
}

/// Invariants 1–7 for one SKU; 200 with `"ok": false` when one is violated.
async fn audit(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sku = Sku::parse(&raw).map_err(|_| ApiError::UnknownSku(raw))?;
    let report = crate::audit::audit_sku(&state.gate, &state.store, &sku).await?;
    let mut body = serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["ok"] = report.ok().into();
    Ok(Json(body))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    quantity: u32,
}

/// Adds units to the sale (see `app::Sales::restock`). With an `Idempotency-Key` a retry after
/// a timeout answers the first result instead of adding the units twice.
async fn restock(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
    AppJson(body): AppJson<RestockBody>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = sku_param(&raw)?;
    if body.quantity == 0 || body.quantity > SaleDefinition::MAX_STOCK {
        return Err(crate::domain::ValidationError::new(
            "quantity",
            format!("must be from 1 to {}", SaleDefinition::MAX_STOCK),
        )
        .into());
    }
    let changed = state
        .sales()
        .restock(&sku, body.quantity, key.as_ref())
        .await?;
    Ok(Json(SkuView::from_change(changed)))
}

async fn pause(
    state: State<AppState>,
    admin: Admin,
    raw: AppPath<String>,
) -> Result<Json<SkuView>, ApiError> {
    set_state(state, admin, raw, SaleState::Paused).await
}

async fn resume(
    state: State<AppState>,
    admin: Admin,
    raw: AppPath<String>,
) -> Result<Json<SkuView>, ApiError> {
    set_state(state, admin, raw, SaleState::Open).await
}

/// Paused: new holds are refused with 409 `sale_paused`; existing holds are unaffected.
async fn set_state(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    sale_state: SaleState,
) -> Result<Json<SkuView>, ApiError> {
    let sku = sku_param(&raw)?;
    let changed = state.sales().set_state(&sku, sale_state).await?;
    Ok(Json(SkuView::from_change(changed)))
}

/// Starts a resync job (pause, drain, restore, fenced load, resume; see `resync`) and answers
/// `202 Accepted` at once with its status URL in `Location`: the repair can take longer than a
/// request may, and a failed job puts the sale back in its previous state.
async fn resync(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let sku = sku_param(&raw)?;
    let job = crate::app::resync::start_job(
        state.gate.clone(),
        state.store.clone(),
        state.settler.clone(),
        sku.clone(),
    )
    .await?;
    let location = format!("/v1/admin/skus/{sku}/resync/{}", job.job);
    let mut body = serde_json::to_value(&job).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["status_url"] = location.clone().into();
    let mut response = (axum::http::StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = axum::http::HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    Ok(response)
}

/// A resync job's state: `running`, then `succeeded` with its report or `failed` with its error.
async fn resync_job(
    State(state): State<AppState>,
    _: Admin,
    AppPath((raw, job)): AppPath<(String, String)>,
) -> Result<Json<crate::app::resync::ResyncJob>, ApiError> {
    let sku = sku_param(&raw)?;
    let job = uuid::Uuid::parse_str(&job).map_err(|_| ApiError::JobNotFound)?;
    crate::app::resync::job(&state.gate, &sku, job)
        .await?
        .map(Json)
        .ok_or(ApiError::JobNotFound)
}
