//! Buyers' reservations: `POST /v1/skus/{sku}/reservations`, `GET /v1/reservations/{id}`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use super::client_addr::ClientAddr;
use super::extract::{AppJson, AppPath, Buyer, Caller, IdempotencyKeyHeader};
use super::{ApiError, AppState};
use crate::domain::{BuyerId, Currency, Money, Quantity, ReservationId, ReservationStatus, Sku};
use crate::gate::{Hold, Refusal, ReserveOutcome, ReserveRequest, Transition, TransitionOutcome};

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
    AppPath(sku_raw): AppPath<String>,
    client: Option<axum::Extension<ClientAddr>>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    AppJson(body): AppJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&sku_raw).map_err(|_| ApiError::UnknownSku(sku_raw.clone()))?;
    let quantity = Quantity::parse(body.quantity)?;
    let client = client.map(|axum::Extension(client)| client.to_string());
    let request = ReserveRequest {
        sku: &sku,
        buyer: &buyer,
        quantity,
        idempotency_key: &key,
        client: client.as_deref(),
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
    match state.store.reservation_status(hold.id).await {
        Ok(recorded) => recorded == Some(hold.status),
        Err(err) => {
            // The gate answers from Redis alone; an unreachable Postgres only hides `settled`.
            tracing::warn!(error = %err, "could not tell whether the hold is settled");
            false
        }
    }
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let hold = owned_hold(&state, &caller, &id).await?;
    let settled = is_settled(&state, &hold).await;
    Ok(Json(ReservationView::new(hold, settled)))
}

/// The hold named `id` if the caller may see it. Another buyer's hold answers exactly as a
/// missing one, so ids cannot be probed.
async fn owned_hold(state: &AppState, caller: &Caller, id: &str) -> Result<Hold, ApiError> {
    let id = ReservationId::parse(id).map_err(|_| ApiError::ReservationNotFound)?;
    match state.gate.hold(id).await? {
        Some(hold) if caller.may_act_for(&hold.buyer) => Ok(hold),
        _ => Err(ApiError::ReservationNotFound),
    }
}

/// Payment captured: `held` → `committed`, answered only once Postgres has it (DESIGN.md §3).
///
/// The Redis transition decides the race with the expiry sweeper; then this handler settles the
/// SKU up to its own event with the settler's code (fenced by the cursor, so it is safe beside
/// any number of background settlers) and answers from Postgres. Committing again answers 200
/// again; a hold Postgres refused at settlement answers 409 `rejected`, so the caller refunds.
#[tracing::instrument(skip_all, fields(reservation = %id))]
async fn commit(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let mut hold = owned_hold(&state, &caller, &id).await?;
    let through = match state.gate.transition(&hold, Transition::Commit).await? {
        TransitionOutcome::Changed {
            to: ReservationStatus::Committed,
            event,
        } => Some(event),
        TransitionOutcome::Unchanged(ReservationStatus::Committed) => None,
        TransitionOutcome::Changed { to, .. } | TransitionOutcome::Unchanged(to) => {
            return Err(ApiError::HoldIs(to));
        }
        TransitionOutcome::Missing => return Err(ApiError::ReservationNotFound),
    };
    // A fresh commit settles through its own event. A repeated one first asks whether Postgres
    // has it already, else settles through whatever the stream holds now (which includes it).
    let already = match through {
        Some(_) => None,
        None => state.store.reservation_status(hold.id).await?,
    };
    let recorded = if already == Some(ReservationStatus::Committed) {
        ReservationStatus::Committed
    } else {
        let through = match through {
            Some(event) => Some(event),
            None => state.gate.last_event_id(&hold.sku).await?,
        };
        if let Some(event) = through {
            state.settler.settle_through(&hold.sku, &event).await?;
        }
        state
            .store
            .reservation_status(hold.id)
            .await?
            .ok_or(ApiError::Unavailable("settlement"))?
    };
    match recorded {
        ReservationStatus::Committed => {
            hold.status = ReservationStatus::Committed;
            Ok(Json(ReservationView::new(hold, true)))
        }
        other => Err(ApiError::HoldIs(other)),
    }
}

/// The buyer cancelled or payment failed: `held` → `released`; idempotent. The units go back on
/// sale at once; Postgres follows through the settler.
#[tracing::instrument(skip_all, fields(reservation = %id))]
async fn release(
    State(state): State<AppState>,
    caller: Caller,
    AppPath(id): AppPath<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let mut hold = owned_hold(&state, &caller, &id).await?;
    match state.gate.transition(&hold, Transition::Release).await? {
        TransitionOutcome::Changed {
            to: ReservationStatus::Released,
            ..
        }
        | TransitionOutcome::Unchanged(ReservationStatus::Released) => {
            hold.status = ReservationStatus::Released;
            let settled = is_settled(&state, &hold).await;
            Ok(Json(ReservationView::new(hold, settled)))
        }
        TransitionOutcome::Changed { to, .. } | TransitionOutcome::Unchanged(to) => {
            Err(ApiError::HoldIs(to))
        }
        TransitionOutcome::Missing => Err(ApiError::ReservationNotFound),
    }
}
