//! Buyers' reservations: `POST /v1/skus/{sku}/reservations`, `GET /v1/reservations/{id}`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::client_addr::ClientAddr;
use super::error::ErrorBody;
use super::extract::{
    AppJson, AppPath, Buyer, Caller, IdempotencyKeyHeader, IdempotencyKeyParam, SkuPath,
};
use super::header_names::IDEMPOTENT_REPLAYED;
use super::observe::SaleOf;
use super::{ApiError, AppState};
use crate::domain::{
    BuyerId, Currency, HoldMetadata, HoldReference, Money, Quantity, ReservationId,
    ReservationStatus, Sku, timestamp,
};
use crate::gate::{Hold, ReserveRequest};

/// New holds: the new-buyer lane (shed per client, admission-limited).
pub fn new_holds() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(reserve))
}

/// A holder's calls — read, commit, release: the payer lane, never behind new buyers.
pub fn payments() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(commit))
        .routes(routes!(release))
}

/// The benchmarks' floor (`FLASHGATE_FLOOR_ROUTE`, off unless set): served in the new-buyer
/// lane, behind every layer a reserve passes, it answers exactly what a sold-out reserve answers
/// without reading the path, the key, the body or the sale. `scripts/perf.sh` holds sold-out
/// answers to it. Left out of the API's document: it is no part of the API.
pub fn floor() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sold_out_floor))
}

#[utoipa::path(post, path = "/v1/skus/{sku}/floor", tag = "operations",
    params(SkuPath),
    responses((status = 409, description = "sold_out, always", body = ErrorBody)))]
async fn sold_out_floor() -> ApiError {
    ApiError::Refused(crate::gate::Refusal::SoldOut { available: 0 })
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
struct ReserveBody {
    /// Signed so that `0` and `-1` are refused by `Quantity::parse` with a clear message.
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "super::extract::whole_number")]
    quantity: i64,
    /// Your own handle on the hold, e.g. the cart or order id: 1 to 128 characters, no control
    /// characters. Kept with the hold in every answer and event; part of the idempotency check.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"
    )]
    reference: Option<String>,
    /// A small JSON object of your own (at most 1,024 bytes as compact JSON), kept like
    /// `reference`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// A reservation as the API shows it (docs/DESIGN.md §5).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    #[schema(value_type = String, format = Uuid)]
    id: ReservationId,
    #[schema(value_type = String)]
    sku: Sku,
    #[schema(value_type = String)]
    buyer_id: BuyerId,
    #[schema(value_type = u32, minimum = 1)]
    quantity: Quantity,
    status: ReservationStatus,
    /// A decimal string, e.g. `"199.99"`.
    #[schema(value_type = String)]
    unit_price: Money,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    total: rust_decimal::Decimal,
    #[schema(value_type = String)]
    currency: Currency,
    #[serde(serialize_with = "timestamp::serialize")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp::serialize")]
    expires_at: DateTime<Utc>,
    /// Whether Postgres has applied this hold's latest state.
    settled: bool,
    /// The caller's reference given with the hold, `null` if none.
    #[schema(value_type = Option<String>)]
    reference: Option<HoldReference>,
    /// The caller's metadata given with the hold, `null` if none.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ReservationView {
    fn new(hold: Hold, settled: bool) -> Self {
        Self {
            total: hold.total(),
            id: hold.id,
            sku: hold.sku,
            buyer_id: hold.buyer,
            quantity: hold.quantity,
            status: hold.status,
            unit_price: hold.unit_price,
            currency: hold.currency,
            created_at: hold.created_at,
            expires_at: hold.expires_at,
            settled,
            reference: hold.reference,
            metadata: hold.metadata.map(|m| m.as_object().clone()),
        }
    }
}

/// Reserve units of a sale (one atomic decision in Redis).
#[utoipa::path(post, path = "/v1/skus/{sku}/reservations", tag = "buyers",
    params(SkuPath, IdempotencyKeyParam, super::queue::QueueTicketParam),
    request_body = ReserveBody,
    security(("buyerToken" = [])),
    responses(
        (status = 201, description = "a hold (replayed with Idempotent-Replayed: true)", body = ReservationView),
        (status = 400, description = "idempotency_key_missing, idempotency_key_invalid, malformed_json, invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: a payments or admin credential takes no holds; ticket_invalid: the Queue-Ticket is malformed, forged, or another buyer's or SKU's", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 409, description = "sold_out, buyer_limit_reached, client_limit_reached, sale_not_open, sale_not_prewarmed, sale_paused; with a waiting room: not_your_turn (Retry-After), ticket_expired, ticket_used", body = ErrorBody),
        (status = 413, description = "body_too_large", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "invalid_request, invalid_body, idempotency_key_reused", body = ErrorBody),
        (status = 429, description = "rate_limited (the buyer's rate, or per-client shedding), hold_quota_reached (the buyer's holds on the sale in the quota window), too_many_in_flight; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, overloaded, request_timeout, not_replicated; Retry-After", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku_raw, buyer = %buyer))]
async fn reserve(
    State(state): State<AppState>,
    Buyer(buyer): Buyer,
    AppPath(sku_raw): AppPath<String>,
    client: Option<axum::Extension<ClientAddr>>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    shown_ticket: super::queue::ShownTicket,
    AppJson(body): AppJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&sku_raw).map_err(|_| ApiError::UnknownSku(sku_raw.clone()))?;
    let quantity = Quantity::parse(body.quantity)?;
    let reference = body
        .reference
        .as_deref()
        .map(HoldReference::parse)
        .transpose()?;
    let metadata = body.metadata.map(HoldMetadata::parse).transpose()?;
    let ticket = super::queue::ticket_header(&state, &shown_ticket, &sku, &buyer)?;
    let reserved = state
        .app()
        .reserve(ReserveRequest {
            sku: &sku,
            buyer: &buyer,
            quantity,
            idempotency_key: &key,
            client: client.map(|axum::Extension(client)| client),
            reference: reference.as_ref(),
            metadata: metadata.as_ref(),
            ticket,
        })
        .await?;
    let location = format!("/v1/reservations/{}", reserved.hold.id);
    let mut response = created(&ReservationView::new(reserved.hold, reserved.settled))?;
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    if reserved.replayed {
        headers.insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// A new hold's 201, its body written into one buffer sized for it: axum's `Json` starts at 128
/// bytes and writes through `BytesMut`'s writer, which grew twice and checked its room on each
/// of a hold's ~30 fragments.
fn created(view: &ReservationView) -> Result<Response, ApiError> {
    let mut body = Vec::with_capacity(512);
    serde_json::to_writer(&mut body, view)
        .map_err(|err| ApiError::Internal(format!("writing a reservation: {err}")))?;
    Ok((
        StatusCode::CREATED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// A reservation id from the path; a malformed one is as unknown as a missing one.
fn reservation_id(raw: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(raw).map_err(|_| ApiError::ReservationNotFound)
}

/// A buyer's own reservation (a payments credential or the admin may read any).
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "buyers",
    params(("id" = String, Path, format = Uuid)),
    security(("buyerToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "the reservation", body = ReservationView),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "reservation_not_found", body = ErrorBody),
        (status = 410, description = "hold_lost: this deployment gave the hold out and Redis lost it before it settled; the buyer does not have it", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let (hold, settled) = state
        .app()
        .find(reservation_id(&id)?, caller.mover())
        .await?;
    Ok(Json(ReservationView::new(hold, settled)))
}

/// Payment captured: `held` → `committed`, answered only once Postgres has it (see
/// `app::App::commit`). Committing again answers 200 again; a hold Postgres refused at
/// settlement answers 409 `rejected`, so the caller refunds.
#[utoipa::path(post, path = "/v1/reservations/{id}/commit", tag = "buyers",
    params(("id" = String, Path, format = Uuid)),
    security(("buyerToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "committed, and recorded in Postgres (idempotent)", body = ReservationView),
        (status = 409, description = "expired, released, rejected", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "reservation_not_found", body = ErrorBody),
        (status = 410, description = "hold_lost: this deployment gave the hold out and Redis lost it before it settled; the buyer does not have it", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(reservation = %id, caller = %caller))]
async fn commit(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<(axum::Extension<SaleOf>, Json<ReservationView>), ApiError> {
    let hold = state
        .app()
        .commit(reservation_id(&id)?, caller.mover())
        .await?;
    Ok((
        axum::Extension(SaleOf(hold.sku.clone())),
        Json(ReservationView::new(hold, true)),
    ))
}

/// The buyer cancelled or payment failed: `held` → `released`; idempotent (see
/// `app::App::release`). The units go back on sale at once; Postgres follows.
#[utoipa::path(post, path = "/v1/reservations/{id}/release", tag = "buyers",
    params(("id" = String, Path, format = Uuid)),
    security(("buyerToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "released (idempotent)", body = ReservationView),
        (status = 409, description = "committed, expired, rejected", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 404, description = "reservation_not_found", body = ErrorBody),
        (status = 410, description = "hold_lost: this deployment gave the hold out and Redis lost it before it settled; the buyer does not have it", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(reservation = %id, caller = %caller))]
async fn release(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<(axum::Extension<SaleOf>, Json<ReservationView>), ApiError> {
    let (hold, settled) = state
        .app()
        .release(reservation_id(&id)?, caller.mover())
        .await?;
    Ok((
        axum::Extension(SaleOf(hold.sku.clone())),
        Json(ReservationView::new(hold, settled)),
    ))
}
