//! Buyers' reservations: `POST /v1/skus/{sku}/reservations`, `GET /v1/reservations/{id}`.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use super::extract::{AppJson, Buyer, IdempotencyKeyHeader};
use super::{ApiError, AppState};
use crate::domain::{BuyerId, Currency, Money, Quantity, ReservationId, ReservationStatus, Sku};
use crate::gate::{Hold, Refusal, ReserveOutcome, ReserveRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/skus/{sku}/reservations", post(reserve))
        .route("/v1/reservations/{id}", get(show))
}

#[derive(Debug, serde::Deserialize)]
struct ReserveBody {
    /// Signed so that `0` and `-1` are refused by `Quantity::parse` with a clear message.
    quantity: i64,
}

/// A reservation as the API shows it (DESIGN.md §5).
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
    created_at: DateTime<Utc>,
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
    Path(sku_raw): Path<String>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    AppJson(body): AppJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&sku_raw).map_err(|_| ApiError::UnknownSku(sku_raw.clone()))?;
    let quantity = Quantity::parse(body.quantity)?;
    let request = ReserveRequest {
        sku: &sku,
        buyer: &buyer,
        quantity,
        idempotency_key: &key,
    };
    let (hold, replayed) = match state.gate.reserve(request).await? {
        ReserveOutcome::Created(hold) => (hold, false),
        ReserveOutcome::Replayed(hold) => (hold, true),
        ReserveOutcome::Refused(Refusal::UnknownSku) => return Err(not_loaded(&state, sku).await),
        ReserveOutcome::Refused(refusal) => return Err(refusal.into()),
    };
    // A fresh hold cannot be settled yet; a replay may be, and replays are rare enough to ask.
    let settled = replayed && is_settled(&state, &hold).await;
    let location = format!("/v1/reservations/{}", hold.id);
    let mut response = (
        StatusCode::CREATED,
        Json(ReservationView::new(hold, settled)),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The gate has no sale for `sku`: tell a SKU that exists but was not pre-warmed (409) from one
/// that does not exist (404). Only refused requests pay for this Postgres lookup.
async fn not_loaded(state: &AppState, sku: Sku) -> ApiError {
    match state.store.find_sku(&sku).await {
        Ok(Some(_)) => Refusal::SaleNotOpen { opens_at: None }.into(),
        Ok(None) => ApiError::UnknownSku(sku.to_string()),
        Err(err) => err.into(),
    }
}

async fn is_settled(state: &AppState, hold: &Hold) -> bool {
    match state.store.find_reservation(hold.id).await {
        Ok(record) => record.is_some_and(|r| r.status == hold.status),
        Err(err) => {
            // The gate answers from Redis alone; an unreachable Postgres only hides `settled`.
            tracing::warn!(error = %err, "could not tell whether the hold is settled");
            false
        }
    }
}

async fn show(
    State(state): State<AppState>,
    Buyer(buyer): Buyer,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let id = ReservationId::parse(&id).map_err(|_| ApiError::ReservationNotFound)?;
    let hold = state
        .gate
        .hold(id)
        .await?
        .ok_or(ApiError::ReservationNotFound)?;
    // Another buyer's hold answers exactly as a missing one, so ids cannot be probed.
    if hold.buyer != buyer {
        return Err(ApiError::ReservationNotFound);
    }
    let settled = is_settled(&state, &hold).await;
    Ok(Json(ReservationView::new(hold, settled)))
}
