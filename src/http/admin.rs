//! Admin operations under `/v1/admin`, behind the admin token.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{
    Admin, AppJson, AppPath, AppQuery, OptionalIdempotencyKey, OptionalIdempotencyKeyParam, SkuPath,
};
use super::skus::SkuView;
use super::{ApiError, AppState};
use crate::app::resync::ResyncJob;
use crate::audit::SkuAudit;
use crate::domain::{Currency, Money, SaleDefinition, SaleState, Sku, WaitingRoom};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upsert, show))
        .routes(routes!(prewarm))
        .routes(routes!(audit))
        .routes(routes!(restock))
        .routes(routes!(set_waiting_room))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(resync))
        .routes(routes!(resync_job))
}

/// `PUT /v1/admin/skus/{sku}` body (docs/DESIGN.md §5).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleBody {
    /// 1–200 characters, not only spaces, without control characters or bidirectional
    /// overrides.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F\u202A-\u202E\u2066-\u2069]*[^\s\x00-\x1F\x7F-\x9F\u202A-\u202E\u2066-\u2069][^\x00-\x1F\x7F-\x9F\u202A-\u202E\u2066-\u2069]*$"
    )]
    pub name: String,
    /// A decimal string such as `"199.99"`, more than 0 and at most 1,000,000,000, with at most
    /// 4 decimal places and no more than the currency allows; JSON numbers are refused so no
    /// float touches money.
    #[schema(
        pattern = r"^(0*[1-9][0-9]{0,8}(\.[0-9]{1,4})?|0*1000000000(\.0{1,4})?|0+\.([1-9][0-9]{0,3}|0[1-9][0-9]{0,2}|00[1-9][0-9]?|000[1-9]))$"
    )]
    pub price: String,
    /// An ISO 4217 code; the price may have no more decimal places than it allows.
    #[serde(default = "default_currency")]
    #[schema(default = "USD", schema_with = currency_schema)]
    pub currency: String,
    /// Units on sale in total.
    #[schema(maximum = 100_000_000)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    pub stock: u32,
    #[serde(
        default = "default_per_buyer_limit",
        deserialize_with = "super::extract::whole_number"
    )]
    #[schema(default = 1, minimum = 1)]
    pub per_buyer_limit: u32,
    #[serde(
        default = "default_hold_ttl_seconds",
        deserialize_with = "super::extract::whole_number"
    )]
    #[schema(default = 300, minimum = 1, maximum = 604_800)]
    pub hold_ttl_seconds: u32,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// The sale's waiting room. Left out, an existing sale keeps its own and a new sale gets the
    /// deployment's default (`FLASHGATE_WAITING_ROOM*`); changeable while the sale is live.
    #[serde(default)]
    pub waiting_room: Option<WaitingRoom>,
}

/// The currency's schema: the ISO 4217 codes the server knows, so a generated client offers
/// exactly those.
fn currency_schema() -> utoipa::openapi::schema::Object {
    use iso_currency::IntoEnumIterator as _;
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "An ISO 4217 code; the price may have no more decimal places than it allows.",
        ))
        .default(Some(serde_json::json!(SaleDefinition::DEFAULT_CURRENCY)))
        .enum_values(Some(iso_currency::Currency::iter().map(|c| c.code())))
        .build()
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
            waiting_room: self.waiting_room,
        }
        .validate()?)
    }
}

fn sku_param(raw: &str) -> Result<Sku, ApiError> {
    Ok(Sku::parse(raw)?)
}

/// Creates or changes a sale, live or not (see `app::App::upsert`): an absolute target, so a
/// retry after a timeout is safe.
#[utoipa::path(put, path = "/v1/admin/skus/{sku}", tag = "admin", params(SkuPath), request_body = SaleBody,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 400, description = "malformed_json, invalid_path", body = ErrorBody),
        (status = 409, description = "stock_below_committed", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "invalid_request, invalid_body", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn upsert(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    AppJson(body): AppJson<SaleBody>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = sku_param(&raw)?;
    let changed = state.app().upsert(&sku, &body.into_definition()?).await?;
    Ok(Json(SkuView::from_change(changed)))
}

/// A sale as operators see it: also before it is launched (buyers get 404 until then).
#[utoipa::path(get, path = "/v1/admin/skus/{sku}", tag = "admin", params(SkuPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
) -> Result<Json<SkuView>, ApiError> {
    super::skus::sale_view(&state, raw, super::skus::Audience::Operators)
        .await
        .map(Json)
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PrewarmQuery {
    /// Refresh a sale already live (never its stock), or load one launched in another Redis
    /// namespace into this gate's.
    #[serde(default)]
    force: bool,
}

/// Load the sale into Redis; `force` refreshes a live one (never its stock). A sale launched in
/// another Redis namespace is refused (409 `namespace_mismatch`) unless forced.
#[utoipa::path(post, path = "/v1/admin/skus/{sku}/prewarm", tag = "admin", params(SkuPath, PrewarmQuery),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale, live", body = SkuView),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 409, description = "sale_live, namespace_mismatch (without force)", body = ErrorBody),
        (status = 422, description = "invalid_request (a malformed SKU)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn prewarm(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    AppQuery(query): AppQuery<PrewarmQuery>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = sku_param(&raw)?;
    let changed = state.app().prewarm(&sku, query.force).await?;
    Ok(Json(SkuView::from_change(changed)))
}

/// Invariants 1–7 for one SKU; 200 with `"ok": false` when one is violated or a hold buyers
/// were told about was found lost (`lost_holds`).
#[utoipa::path(get, path = "/v1/admin/skus/{sku}/audit", tag = "admin", params(SkuPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the audit; `ok` is false when an invariant is violated or `lost_holds` is not 0", body = AuditView),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 422, description = "invalid_request (a malformed SKU)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn audit(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
) -> Result<Json<AuditView>, ApiError> {
    let sku = Sku::parse(&raw).map_err(|_| ApiError::UnknownSku(raw))?;
    let audit = crate::audit::audit_sku(&state.gate, &state.store, &sku).await?;
    Ok(Json(AuditView {
        ok: audit.ok(),
        audit,
    }))
}

/// An audit with its verdict.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct AuditView {
    /// False when an invariant is violated or a hold was found lost.
    ok: bool,
    #[serde(flatten)]
    audit: SkuAudit,
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    #[schema(minimum = 1, maximum = 100_000_000)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    quantity: u32,
}

/// Adds units to the sale (see `app::App::restock`). With an `Idempotency-Key` a retry after
/// a timeout answers the first result instead of adding the units twice.
#[utoipa::path(post, path = "/v1/admin/skus/{sku}/restock", tag = "admin", params(SkuPath, OptionalIdempotencyKeyParam), request_body = RestockBody,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 400, description = "malformed_json, idempotency_key_invalid", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "invalid_request, invalid_body", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
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
        .app()
        .restock(&sku, body.quantity, key.as_ref())
        .await?;
    Ok(Json(SkuView::from_change(changed)))
}

/// Sets the sale's waiting room, live or not: on at once for every gate (reserves then need an
/// admitted ticket), off at once (reserves need none).
#[utoipa::path(put, path = "/v1/admin/skus/{sku}/waiting-room", tag = "admin", params(SkuPath), request_body = WaitingRoom,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 400, description = "malformed_json", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "invalid_request (field waiting_room.admit_per_second or waiting_room.admission_window_seconds), invalid_body", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn set_waiting_room(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    AppJson(room): AppJson<WaitingRoom>,
) -> Result<Json<SkuView>, ApiError> {
    let sku = Sku::parse(&raw).map_err(|_| ApiError::UnknownSku(raw))?;
    let changed = state.app().set_waiting_room(&sku, room.validate()?).await?;
    Ok(Json(SkuView::from_change(changed)))
}

/// Pause: new holds are refused `sale_paused`; existing holds may still be paid.
#[utoipa::path(post, path = "/v1/admin/skus/{sku}/pause", tag = "admin", params(SkuPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 422, description = "invalid_request (a malformed SKU)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn pause(
    state: State<AppState>,
    admin: Admin,
    raw: AppPath<String>,
) -> Result<Json<SkuView>, ApiError> {
    set_state(state, admin, raw, SaleState::Paused).await
}

/// Resume a paused sale.
#[utoipa::path(post, path = "/v1/admin/skus/{sku}/resume", tag = "admin", params(SkuPath),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "the sale", body = SkuView),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 422, description = "invalid_request (a malformed SKU)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
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
    let changed = state.app().set_state(&sku, sale_state).await?;
    Ok(Json(SkuView::from_change(changed)))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ResyncQuery {
    /// Resync a sale launched in another Redis namespace into this gate's: only once nothing
    /// serves it from there any more.
    #[serde(default)]
    force: bool,
}

/// Starts a resync job (pause, drain, restore, fenced load, resume; see `resync`) and answers
/// `202 Accepted` at once with its status URL in `Location`: the repair can take longer than a
/// request may, and a failed job puts the sale back in its previous state.
#[utoipa::path(post, path = "/v1/admin/skus/{sku}/resync", tag = "admin", params(SkuPath, ResyncQuery),
    security(("adminToken" = [])),
    responses(
        (status = 202, description = "the job, running; `status_url` and Location name it", body = ResyncJob),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 409, description = "namespace_mismatch: the sale was launched in another Redis namespace (without force)", body = ErrorBody),
        (status = 422, description = "invalid_request (a malformed SKU)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn resync(
    State(state): State<AppState>,
    _: Admin,
    AppPath(raw): AppPath<String>,
    AppQuery(query): AppQuery<ResyncQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let sku = sku_param(&raw)?;
    let job = crate::app::resync::start_job(
        state.gate.clone(),
        state.store.clone(),
        state.settler.clone(),
        sku.clone(),
        query.force,
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
#[utoipa::path(get, path = "/v1/admin/skus/{sku}/resync/{job}", tag = "admin", params(SkuPath, ("job" = String, Path, format = Uuid)),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "running, succeeded (with its report) or failed (with its error)", body = ResyncJob),
        (status = 404, description = "job_not_found", body = ErrorBody),
        (status = 422, description = "invalid_request (a malformed SKU)", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn resync_job(
    State(state): State<AppState>,
    _: Admin,
    AppPath((raw, job)): AppPath<(String, String)>,
) -> Result<Json<ResyncJob>, ApiError> {
    let sku = sku_param(&raw)?;
    let job = uuid::Uuid::parse_str(&job).map_err(|_| ApiError::JobNotFound)?;
    crate::app::resync::job(&state.gate, &sku, job)
        .await?
        .map(Json)
        .ok_or(ApiError::JobNotFound)
}
