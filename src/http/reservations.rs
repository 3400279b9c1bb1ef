//! Buyers' reservations: `POST /v1/skus/{sku}/reservations`, `GET /v1/reservations/{id}`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use super::client_addr::ClientAddr;
use super::extract::{AppJson, AppPath, Buyer, Caller, IdempotencyKeyHeader};
use super::observe::SaleOf;
use super::{ApiError, AppState};
use crate::domain::{
    BuyerId, Currency, Money, Quantity, ReservationId, ReservationStatus, Sku, timestamp,
};
use crate::gate::{Hold, ReserveRequest};

/// New holds: the new-buyer lane (shed per client, admission-limited).
pub fn new_holds() -> Router<AppState> {
    Router::new().route("/v1/skus/{sku}/reservations", post(reserve))
}

/// A holder's calls — read, commit, release: the payer lane, never behind new buyers.
pub fn payments() -> Router<AppState> {
    Router::new()
        .route("/v1/reservations/{id}", get(show))
        .route("/v1/reservations/{id}/commit", post(commit))
        .route("/v1/reservations/{id}/release", post(release))
}

#[derive(Debug, serde::Deserialize)]
struct ReserveBody {
    /// Signed so that `0` and `-1` are refused by `Quantity::parse` with a clear message.
    quantity: i64,
}

/// A reservation as the API shows it (docs/DESIGN.md §5).
#[derive(Debug, serde::Serialize)]
pub struct ReservationView {
    id: ReservationId,
    sku: Sku,
    buyer_id: BuyerId,
    quantity: Quantity,
    status: ReservationStatus,
    unit_price: Money,
    #[serde(with = "rust_decimal::serde::str")]
    total: rust_decimal::Decimal,
    currency: Currency,
    #[serde(serialize_with = "timestamp::serialize")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp::serialize")]
    expires_at: DateTime<Utc>,
    /// Whether Postgres has applied this hold's latest state.
    settled: bool,
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
        }
    }
}

#[tracing::instrument(skip_all, fields(sku = %sku_raw, buyer = %buyer))]
async fn reserve(
    State(state): State<AppState>,
    Buyer(buyer): Buyer,
    AppPath(sku_raw): AppPath<String>,
    client: Option<axum::Extension<ClientAddr>>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    AppJson(body): AppJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&sku_raw).map_err(|_| ApiError::UnknownSku(sku_raw.clone()))?;
    let quantity = Quantity::parse(body.quantity)?;
    let client = client.map(|axum::Extension(client)| client.to_string());
    let reserved = state
        .holds()
        .reserve(ReserveRequest {
            sku: &sku,
            buyer: &buyer,
            quantity,
            idempotency_key: &key,
            client: client.as_deref(),
        })
        .await?;
    let location = format!("/v1/reservations/{}", reserved.hold.id);
    let mut response = (
        StatusCode::CREATED,
        Json(ReservationView::new(reserved.hold, reserved.settled)),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    if reserved.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A reservation id from the path; a malformed one is as unknown as a missing one.
fn reservation_id(raw: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(raw).map_err(|_| ApiError::ReservationNotFound)
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let (hold, settled) = state
        .holds()
        .find(reservation_id(&id)?, |buyer| caller.may_act_for(buyer))
        .await?;
    Ok(Json(ReservationView::new(hold, settled)))
}

/// Payment captured: `held` → `committed`, answered only once Postgres has it (see
/// `app::Holds::commit`). Committing again answers 200 again; a hold Postgres refused at
/// settlement answers 409 `rejected`, so the caller refunds.
#[tracing::instrument(skip_all, fields(reservation = %id))]
async fn commit(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<(axum::Extension<SaleOf>, Json<ReservationView>), ApiError> {
    let hold = state
        .holds()
        .commit(reservation_id(&id)?, |buyer| caller.may_act_for(buyer))
        .await?;
    Ok((
        axum::Extension(SaleOf(hold.sku.clone())),
        Json(ReservationView::new(hold, true)),
    ))
}

/// The buyer cancelled or payment failed: `held` → `released`; idempotent (see
/// `app::Holds::release`). The units go back on sale at once; Postgres follows.
#[tracing::instrument(skip_all, fields(reservation = %id))]
async fn release(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<(axum::Extension<SaleOf>, Json<ReservationView>), ApiError> {
    let (hold, settled) = state
        .holds()
        .release(reservation_id(&id)?, |buyer| caller.may_act_for(buyer))
        .await?;
    Ok((
        axum::Extension(SaleOf(hold.sku.clone())),
        Json(ReservationView::new(hold, settled)),
    ))
}
