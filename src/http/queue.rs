//! The waiting room over HTTP (docs/DESIGN.md §12): `POST /v1/skus/{sku}/queue` takes a place,
//! `GET /v1/skus/{sku}/queue/{ticket}` tells where it stands (also as a server-sent event
//! stream), and a reserve on a sale with its room on shows the ticket in `Queue-Ticket`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::client_addr::ClientAddr;
use super::error::ErrorBody;
use super::extract::{AppPath, Buyer, SkuPath};
use super::header_names::QUEUE_TICKET;
use super::{ApiError, AppState};
use crate::domain::{BuyerId, Sku, Ticket, TicketSeal, timestamp};
use crate::gate::{Line, PlaceOutcome, PlaceRefusal, PlaceStatus};

/// Taking a place: in the new buyers' lane, like a reserve.
pub fn places() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(take_place))
}

/// Asking where a place stands: answered from the line this gate read last, so it needs no
/// lane of its own; a stream holds no lane place for its lifetime.
pub fn polls() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(poll))
}

/// The optional `Queue-Ticket` header of a reserve, as the OpenAPI document states it.
pub struct QueueTicketParam;

impl utoipa::IntoParams for QueueTicketParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![super::extract::parameter(
            "Queue-Ticket",
            ParameterIn::Header,
            false,
            "The buyer's admitted place in the sale's waiting room (required when the sale has \
             its room on): the `ticket` of POST /v1/skus/{sku}/queue",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]{1,19}\.[0-9]{1,19}\.[A-Za-z0-9_-]{1,32}$")),
        )]
    }
}

fn seal(state: &AppState) -> Result<&TicketSeal, ApiError> {
    state
        .gate
        .settings()
        .waiting_room
        .ticket_seal
        .as_ref()
        .ok_or_else(|| ApiError::Internal("this gate has no ticket seal".into()))
}

/// The reserve's `Queue-Ticket` header as shown, unverified (taken alone: extracting the whole
/// `HeaderMap` cloned every header of every reserve).
#[derive(Debug, Clone)]
pub(super) struct ShownTicket(Option<HeaderValue>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ShownTicket {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        Ok(Self(parts.headers.get(&QUEUE_TICKET).cloned()))
    }
}

/// The reserve's `Queue-Ticket`, verified for this buyer and SKU: `None` when not shown (the
/// reserve script decides whether the sale needs one), 403 `ticket_invalid` when it does not
/// verify.
pub(super) fn ticket_header(
    state: &AppState,
    ShownTicket(shown): &ShownTicket,
    sku: &Sku,
    buyer: &BuyerId,
) -> Result<Option<Ticket>, ApiError> {
    let Some(raw) = shown else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| ApiError::TicketInvalid(crate::domain::InvalidTicket))?;
    Ok(Some(seal(state)?.verify(sku, buyer, raw.trim())?))
}

/// Where a place stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PlaceView {
    /// Show it in `Queue-Ticket` to reserve once admitted; poll it at
    /// `/v1/skus/{sku}/queue/{ticket}`.
    ticket: String,
    #[schema(value_type = String)]
    sku: Sku,
    #[schema(value_type = String)]
    buyer_id: BuyerId,
    /// 1 is the first place in line.
    position: u64,
    #[serde(serialize_with = "timestamp::serialize")]
    issued_at: DateTime<Utc>,
    /// `waiting`, `admitted` (reserve before `admitted_until`), `sold_out` (the places ahead
    /// can take everything left: final) or `expired` (admitted, and the window closed).
    #[schema(value_type = String)]
    status: &'static str,
    /// Places admitted so far.
    frontier: u64,
    /// Waiting: places ahead not admitted yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    ahead: Option<u64>,
    /// Waiting: at the sale's admit rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_wait_seconds: Option<f64>,
    /// Admitted: until when a reserve with this ticket is taken.
    #[serde(
        serialize_with = "timestamp::serialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    admitted_until: Option<DateTime<Utc>>,
    /// Waiting: when to ask again, as the Retry-After header.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
}

impl PlaceView {
    fn new(raw: String, sku: &Sku, buyer: &BuyerId, ticket: Ticket, line: &Line) -> Self {
        let mut view = Self {
            ticket: raw,
            sku: sku.clone(),
            buyer_id: buyer.clone(),
            position: ticket.position,
            issued_at: millis(ticket.issued_ms),
            status: "waiting",
            frontier: line.frontier,
            ahead: None,
            estimated_wait_seconds: None,
            admitted_until: None,
            retry_after_seconds: None,
        };
        match line.status(ticket.position) {
            PlaceStatus::Waiting {
                ahead,
                estimated_wait,
            } => {
                view.ahead = Some(ahead);
                view.estimated_wait_seconds =
                    Some((estimated_wait.as_secs_f64() * 10.0).ceil() / 10.0);
                view.retry_after_seconds = Some(retry_after(estimated_wait));
            }
            PlaceStatus::Admitted { until_ms } => {
                view.status = "admitted";
                view.admitted_until = Some(millis(until_ms));
            }
            PlaceStatus::SoldOut => view.status = "sold_out",
            PlaceStatus::Expired => view.status = "expired",
        }
        view
    }

    fn settled(&self) -> bool {
        self.status != "waiting"
    }

    fn into_response(self, status: StatusCode) -> Response {
        let retry = self.retry_after_seconds;
        let location = format!("/v1/skus/{}/queue/{}", self.sku, self.ticket);
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::ACCEPTED
            && let Ok(location) = HeaderValue::from_str(&location)
        {
            headers.insert(header::LOCATION, location);
        }
        response
    }
}

/// Half the estimated wait, from 1 to 2 seconds: a buyer learns within 2 s that it was
/// admitted or that its place cannot be served, and never asks more than once a second (a
/// poll costs no Redis call).
fn retry_after(estimated_wait: Duration) -> u64 {
    (estimated_wait.as_secs() / 2).clamp(1, 2)
}

fn millis(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default()
}

/// Take a place in the sale's waiting room: one per buyer per sale, the same ticket again on a
/// retry.
#[utoipa::path(post, path = "/v1/skus/{sku}/queue", tag = "buyers", params(SkuPath),
    security(("buyerToken" = [])),
    responses(
        (status = 202, description = "the buyer's place (Location: where to poll it; Retry-After when waiting)", body = PlaceView),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: a payments or admin credential takes no place", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 409, description = "sold_out (the places handed out can take everything left; no ticket), waiting_room_off, sale_not_open, client_limit_reached", body = ErrorBody),
        (status = 429, description = "rate_limited (per-client shedding), too_many_in_flight; Retry-After", body = ErrorBody),
        (status = 503, description = "service_unavailable, overloaded, request_timeout; Retry-After", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku_raw, buyer = %buyer))]
async fn take_place(
    State(state): State<AppState>,
    Buyer(buyer): Buyer,
    AppPath(sku_raw): AppPath<String>,
    client: Option<axum::Extension<ClientAddr>>,
) -> Result<Response, ApiError> {
    let sku = Sku::parse(&sku_raw).map_err(|_| ApiError::UnknownSku(sku_raw.clone()))?;
    let seal = seal(&state)?;
    let client = client.map(|axum::Extension(client)| client);
    let ticket = match state.gate.take_place(&sku, &buyer, client).await? {
        PlaceOutcome::Placed { ticket, .. } => ticket,
        PlaceOutcome::Refused(refusal) => {
            use crate::gate::Refusal;
            return Err(match refusal {
                PlaceRefusal::UnknownSku => ApiError::UnknownSku(sku_raw),
                PlaceRefusal::RoomOff => ApiError::WaitingRoomOff(sku),
                PlaceRefusal::SaleNotOpen => {
                    ApiError::Refused(Refusal::SaleNotOpen { opens_at: None })
                }
                PlaceRefusal::SoldOut { available } => {
                    ApiError::Refused(Refusal::SoldOut { available })
                }
                PlaceRefusal::ClientLimitReached { limit } => {
                    ApiError::Refused(Refusal::ClientLimitReached { limit })
                }
            });
        }
    };
    let line = state
        .gate
        .line(&sku)
        .await?
        .ok_or_else(|| ApiError::UnknownSku(sku.to_string()))?;
    let raw = seal.sign(&sku, &buyer, ticket);
    Ok(PlaceView::new(raw, &sku, &buyer, ticket, &line).into_response(StatusCode::ACCEPTED))
}

/// Where the buyer's place stands: `waiting` (with Retry-After), `admitted`, `sold_out` or
/// `expired`. Answered from the line this gate read at most 100 ms ago, without a Redis call
/// of its own. With `Accept: text/event-stream`, the same answer is pushed as a `place` event
/// whenever it changes, until the place is no longer waiting.
#[utoipa::path(get, path = "/v1/skus/{sku}/queue/{ticket}", tag = "buyers",
    params(SkuPath, ("ticket" = String, Path, description = "the ticket POST .../queue gave")),
    security(("buyerToken" = [])),
    responses(
        (status = 200, description = "where the place stands (Retry-After while waiting)", content(
            (PlaceView = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "ticket_invalid: malformed, forged, another buyer's or another SKU's; forbidden", body = ErrorBody),
        (status = 404, description = "unknown_sku", body = ErrorBody),
        (status = 409, description = "waiting_room_off", body = ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku_raw, buyer = %buyer))]
async fn poll(
    State(state): State<AppState>,
    Buyer(buyer): Buyer,
    AppPath((sku_raw, raw)): AppPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metrics::counter!("flashgate_room_polls_total").increment(1);
    let sku = Sku::parse(&sku_raw).map_err(|_| ApiError::UnknownSku(sku_raw.clone()))?;
    let ticket = seal(&state)?.verify(&sku, &buyer, &raw)?;
    let line = current(&state, &sku).await?;
    let view = PlaceView::new(raw.clone(), &sku, &buyer, ticket, &line);
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_stream {
        return Ok(view.into_response(StatusCode::OK));
    }
    Ok(stream(state, sku, buyer, raw, ticket, view).into_response())
}

/// The sale's line, refused when the sale has no room.
async fn current(state: &AppState, sku: &Sku) -> Result<Arc<Line>, ApiError> {
    let line = state
        .gate
        .line(sku)
        .await?
        .ok_or_else(|| ApiError::UnknownSku(sku.to_string()))?;
    if !line.enabled {
        return Err(ApiError::WaitingRoomOff(sku.clone()));
    }
    Ok(line)
}

/// How often a stream looks at the line, and how long it lasts at most.
const STREAM_TICK: Duration = Duration::from_millis(250);
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The place's answers as server-sent events: the first at once, then each change, ending once
/// the place is no longer waiting (or the line cannot be read).
fn stream(
    state: AppState,
    sku: Sku,
    buyer: BuyerId,
    raw: String,
    ticket: Ticket,
    first: PlaceView,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    struct Watch {
        first: Option<PlaceView>,
        last: Option<PlaceView>,
        done: bool,
    }
    let place = Arc::new((state, sku, buyer, raw, ticket));
    let started = tokio::time::Instant::now();
    let watch = Watch {
        first: Some(first),
        last: None,
        done: false,
    };
    let events = futures::stream::unfold(watch, move |mut watch| {
        let place = place.clone();
        async move {
            let (state, sku, buyer, raw, ticket) = &*place;
            if watch.done {
                return None;
            }
            let view = match watch.first.take() {
                Some(view) => view,
                None => loop {
                    tokio::time::sleep(STREAM_TICK).await;
                    if started.elapsed() > STREAM_LIFETIME {
                        return None;
                    }
                    let line = current(state, sku).await.ok()?;
                    let view = PlaceView::new(raw.clone(), sku, buyer, *ticket, &line);
                    let changed = watch.last.as_ref().is_none_or(|last| {
                        last.status != view.status || last.frontier != view.frontier
                    });
                    if changed {
                        break view;
                    }
                },
            };
            watch.done = view.settled();
            let event = Event::default().event("place").json_data(&view).ok()?;
            watch.last = Some(view);
            Some((Ok(event), watch))
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
