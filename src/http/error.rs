//! The one place where every failure becomes an HTTP response.
//!
//! Policy: every refusal has a stable machine code in `{"error": "<code>", "message": "..."}`,
//! plus fields a client can act on (`retry_after_seconds`, `available`, ...). 5xx responses are
//! logged here with their cause and answered without it, so internals never leak to buyers.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::header_names::{RATELIMIT, RATELIMIT_POLICY};
use crate::domain::{ReservationStatus, Sku, ValidationError};
use crate::gate::{GateError, Refusal};
use crate::store::StoreError;

/// Everything a handler can answer other than success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body does not match the expected shape: {0}")]
    InvalidBody(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is too large")]
    BodyTooLarge,
    #[error("the Idempotency-Key header is required")]
    IdempotencyKeyMissing,
    #[error("{0}")]
    IdempotencyKeyInvalid(ValidationError),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("this token may not do that")]
    Forbidden,
    #[error("no SKU {0}")]
    UnknownSku(String),
    #[error("no such reservation")]
    ReservationNotFound,
    /// Given out by this deployment, and in neither store: Redis lost it before it settled.
    #[error(
        "this reservation was lost before it was recorded (the gate's Redis lost it); the buyer does not have it"
    )]
    HoldLost,
    #[error("no such resync job (jobs are kept for the idempotency TTL)")]
    JobNotFound,
    /// The hold is not in a state this call can move it from.
    #[error("the reservation is {0}")]
    HoldIs(ReservationStatus),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("too many requests from this client")]
    ClientShed {
        retry_after: Duration,
        burst: u32,
        window: Duration,
    },
    #[error(
        "sale {0} exists but is not open for buyers yet: it was never pre-warmed (POST /v1/admin/skus/{0}/prewarm)"
    )]
    SaleNotPrewarmed(String),
    #[error("sale {0} is already live in redis; pass force=true to overwrite its stock")]
    SaleLive(Sku),
    #[error(transparent)]
    NamespaceMismatch(crate::app::NamespaceMismatch),
    #[error("stock {requested} is below the {committed} units already reserved or sold")]
    StockBelowCommitted { requested: u32, committed: i64 },
    #[error("{0} is unavailable, retry shortly")]
    Unavailable(&'static str),
    #[error("no replica confirmed the hold in time; retry with the same Idempotency-Key")]
    NotReplicated,
    #[error("the gate is at capacity for new buyers, retry shortly")]
    Overloaded,
    /// One client address or one buyer has its cap of new-buyer requests in flight.
    #[error("too many requests from this {0} in flight at once; wait for an answer")]
    TooManyInFlight(&'static str),
    #[error("the request body did not arrive in time")]
    BodyReadTimeout,
    #[error("the request took too long and was abandoned, retry shortly")]
    RequestTimeout,
    #[error("no such route")]
    RouteNotFound,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    /// hyper refused the request head before any handler ran (see `server::Tracked`).
    #[error("the request head is larger than the gate accepts (32 KiB)")]
    HeadTooLarge,
    #[error("the request target is too long")]
    UriTooLong,
    #[error("the request is not valid HTTP/1.1")]
    MalformedRequest,
    /// A `Queue-Ticket` (or a polled ticket) that this deployment did not sign for this buyer
    /// on this SKU: malformed, truncated, forged, another buyer's or another SKU's.
    #[error(transparent)]
    TicketInvalid(#[from] crate::domain::InvalidTicket),
    /// A place in line was asked for on a sale without a waiting room.
    #[error("sale {0} has no waiting room: reserve directly")]
    WaitingRoomOff(Sku),
    #[error("internal error")]
    Internal(String),
}

/// Every error code the API can answer with. The OpenAPI document lists exactly these, and a
/// test checks that every variant's code is here.
pub const CODES: &[&str] = &[
    "invalid_request",
    "malformed_json",
    "invalid_body",
    "unsupported_media_type",
    "body_too_large",
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "unauthorized",
    "forbidden",
    "unknown_sku",
    "reservation_not_found",
    "hold_lost",
    "job_not_found",
    "held",
    "committed",
    "released",
    "expired",
    "rejected",
    "idempotency_key_reused",
    "rate_limited",
    "sale_not_open",
    "sale_paused",
    "resync_required",
    "buyer_limit_reached",
    "sold_out",
    "client_limit_reached",
    "hold_quota_reached",
    "not_your_turn",
    "ticket_expired",
    "ticket_used",
    "ticket_invalid",
    "waiting_room_off",
    "sale_not_prewarmed",
    "sale_live",
    "namespace_mismatch",
    "stock_below_committed",
    "service_unavailable",
    "not_replicated",
    "overloaded",
    "too_many_in_flight",
    "body_read_timeout",
    "request_timeout",
    "not_found",
    "method_not_allowed",
    "invalid_path",
    "invalid_query",
    "header_too_large",
    "uri_too_long",
    "malformed_request",
    "internal_error",
];

/// The error body every refusal has, as the OpenAPI document describes it.
pub struct ErrorBody;

impl utoipa::PartialSchema for ErrorBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        let integer = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .property(
                "error",
                text("A stable machine code").enum_values(Some(CODES.iter().copied())),
            )
            .required("error")
            .property("message", text("For a human"))
            .required("message")
            .property(
                "field",
                text("The field or header refused (invalid_request)"),
            )
            .property(
                "limit",
                integer("buyer_limit_reached, client_limit_reached"),
            )
            .property("available", integer("sold_out: units left"))
            .property(
                "ahead",
                integer("not_your_turn: places before the frontier reaches the ticket"),
            )
            .property(
                "opens_at",
                text("sale_not_open: when the window opens (RFC 3339)"),
            )
            .property(
                "retry_after_seconds",
                integer("429 and 503: as the Retry-After header"),
            )
            .into()
    }
}

impl utoipa::ToSchema for ErrorBody {}

impl ApiError {
    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_request",
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyInvalid(_) => "idempotency_key_invalid",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UnknownSku(_) => "unknown_sku",
            Self::ReservationNotFound => "reservation_not_found",
            Self::HoldLost => "hold_lost",
            Self::JobNotFound => "job_not_found",
            Self::HoldIs(status) => status.as_str(),
            Self::Refused(r) => match r {
                Refusal::IdempotencyKeyReused => "idempotency_key_reused",
                Refusal::RateLimited { .. } => "rate_limited",
                Refusal::UnknownSku => "unknown_sku",
                Refusal::SaleNotOpen { .. } => "sale_not_open",
                Refusal::SalePaused => "sale_paused",
                Refusal::ResyncRequired => "resync_required",
                Refusal::BuyerLimitReached { .. } => "buyer_limit_reached",
                Refusal::SoldOut { .. } => "sold_out",
                Refusal::ClientLimitReached { .. } => "client_limit_reached",
                Refusal::HoldQuotaReached { .. } => "hold_quota_reached",
                Refusal::NotYourTurn { .. } => "not_your_turn",
                Refusal::TicketExpired => "ticket_expired",
                Refusal::TicketUsed => "ticket_used",
            },
            Self::TicketInvalid(_) => "ticket_invalid",
            Self::WaitingRoomOff(_) => "waiting_room_off",
            Self::ClientShed { .. } => "rate_limited",
            Self::SaleLive(_) => "sale_live",
            Self::NamespaceMismatch(_) => "namespace_mismatch",
            Self::SaleNotPrewarmed(_) => "sale_not_prewarmed",
            Self::StockBelowCommitted { .. } => "stock_below_committed",
            Self::Unavailable(_) => "service_unavailable",
            Self::NotReplicated => "not_replicated",
            Self::Overloaded => "overloaded",
            Self::TooManyInFlight(_) => "too_many_in_flight",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidPath(_) => "invalid_path",
            Self::InvalidQuery(_) => "invalid_query",
            Self::HeadTooLarge => "header_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::MalformedRequest => "malformed_request",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::IdempotencyKeyMissing
            | Self::IdempotencyKeyInvalid(_)
            | Self::InvalidPath(_)
            | Self::InvalidQuery(_)
            | Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::HoldLost => StatusCode::GONE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Invalid(_) | Self::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UnknownSku(_) | Self::ReservationNotFound | Self::JobNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::Refused(r) => match r {
                Refusal::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
                Refusal::RateLimited { .. } | Refusal::HoldQuotaReached { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                Refusal::UnknownSku => StatusCode::NOT_FOUND,
                Refusal::ResyncRequired => StatusCode::SERVICE_UNAVAILABLE,
                Refusal::SaleNotOpen { .. }
                | Refusal::SalePaused
                | Refusal::BuyerLimitReached { .. }
                | Refusal::ClientLimitReached { .. }
                | Refusal::SoldOut { .. }
                | Refusal::NotYourTurn { .. }
                | Refusal::TicketExpired
                | Refusal::TicketUsed => StatusCode::CONFLICT,
            },
            Self::TicketInvalid(_) => StatusCode::FORBIDDEN,
            Self::WaitingRoomOff(_) => StatusCode::CONFLICT,
            Self::ClientShed { .. } | Self::TooManyInFlight(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyReadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::SaleLive(_)
            | Self::NamespaceMismatch(_)
            | Self::SaleNotPrewarmed(_)
            | Self::StockBelowCommitted { .. }
            | Self::HoldIs(_) => StatusCode::CONFLICT,
            Self::Unavailable(_)
            | Self::Overloaded
            | Self::RequestTimeout
            | Self::NotReplicated => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<GateError> for ApiError {
    fn from(err: GateError) -> Self {
        match err {
            GateError::Unavailable(_) => {
                tracing::warn!(error = %err, "redis unavailable");
                Self::Unavailable("redis")
            }
            GateError::SaleLive(sku) => Self::SaleLive(sku),
            GateError::NotReplicated => Self::NotReplicated,
            GateError::Protocol(_) => Self::Internal(err.to_string()),
            GateError::Misconfigured(_) => {
                tracing::error!(error = %err, "redis is not what the settings say");
                Self::Internal(err.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::StockBelowCommitted {
                requested,
                committed,
            } => Self::StockBelowCommitted {
                requested,
                committed,
            },
            // Unreachable, starting or stopping, or a statement cancelled by its timeout: a
            // retry may succeed, so 503 + Retry-After rather than 500.
            _ if err.is_transient() => {
                tracing::warn!(error = %err, "postgres unavailable");
                Self::Unavailable("postgres")
            }
            StoreError::Corrupt(_)
            | StoreError::Unavailable(_)
            | StoreError::Busy(_)
            | StoreError::Database(_)
            | StoreError::Invariant(_)
            | StoreError::Migration(_)
            | StoreError::Interrupted => Self::Internal(err.to_string()),
        }
    }
}

impl From<crate::app::HoldError> for ApiError {
    fn from(err: crate::app::HoldError) -> Self {
        use crate::app::HoldError;
        match err {
            HoldError::Refused(refusal) => refusal.into(),
            HoldError::UnknownSku(sku) => Self::UnknownSku(sku),
            HoldError::NotPrewarmed(sku) => Self::SaleNotPrewarmed(sku),
            HoldError::NotFound => Self::ReservationNotFound,
            HoldError::Lost => Self::HoldLost,
            HoldError::HoldIs(status) => Self::HoldIs(status),
            HoldError::NotRecorded => Self::Unavailable("settlement"),
            HoldError::Gate(e) => e.into(),
            HoldError::Store(e) => e.into(),
            HoldError::Settle(e) => e.into(),
        }
    }
}

impl From<crate::app::SaleError> for ApiError {
    fn from(err: crate::app::SaleError) -> Self {
        use crate::app::SaleError;
        match err {
            SaleError::UnknownSku(sku) => Self::UnknownSku(sku.to_string()),
            SaleError::StockBelowCommitted {
                requested,
                committed,
            } => Self::StockBelowCommitted {
                requested,
                committed,
            },
            SaleError::Gate(e) => e.into(),
            SaleError::Store(e) => e.into(),
            SaleError::Settle(e) => e.into(),
            SaleError::NamespaceMismatch(e) => Self::NamespaceMismatch(e),
            SaleError::ChangeUnderWay(_) => Self::Unavailable("another change of this sale"),
        }
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(err: crate::audit::AuditError) -> Self {
        use crate::audit::AuditError;
        match err {
            AuditError::UnknownSku(sku) => Self::UnknownSku(sku.to_string()),
            AuditError::Gate(e) => e.into(),
            AuditError::Store(e) => e.into(),
        }
    }
}

impl From<crate::settler::SettleError> for ApiError {
    fn from(err: crate::settler::SettleError) -> Self {
        use crate::settler::SettleError;
        match err {
            SettleError::Gate(e) => e.into(),
            SettleError::Store(e) => e.into(),
            SettleError::TimedOut(_) => Self::Unavailable("settlement"),
            SettleError::StreamBroken { .. } | SettleError::EventMissing { .. } => {
                Self::Unavailable("settlement")
            }
            // Shared by a group of commits: judged by its kind, logged once per commit.
            SettleError::Group(shared) if shared.is_transient() => {
                tracing::warn!(error = %shared, "group commit could not settle");
                Self::Unavailable("settlement")
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<crate::app::resync::ResyncError> for ApiError {
    fn from(err: crate::app::resync::ResyncError) -> Self {
        use crate::app::resync::ResyncError;
        match err {
            ResyncError::UnknownSku(sku) => Self::UnknownSku(sku.to_string()),
            ResyncError::Busy => Self::Unavailable("the settler"),
            ResyncError::AlreadyRunning(_) => Self::Unavailable("another resync of this sale"),
            ResyncError::TimedOut(_) => Self::Unavailable("resync"),
            ResyncError::Gate(e) => e.into(),
            ResyncError::Store(e) => e.into(),
            ResyncError::Settle(e) => e.into(),
            ResyncError::Corrupt(e) => Self::Internal(e.to_string()),
            ResyncError::NamespaceMismatch(e) => Self::NamespaceMismatch(e),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        Self::Invalid(err)
    }
}

/// Whole seconds, rounded up: a client that waits `Retry-After` must not be refused again.
fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` plus the IETF draft `RateLimit` / `RateLimit-Policy` fields.
fn rate_limit_headers(
    headers: &mut HeaderMap,
    policy: &str,
    retry_after: Duration,
    quota: u32,
    window: Duration,
) {
    let secs = ceil_seconds(retry_after).max(1);
    let mut set = |name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(header::RETRY_AFTER, secs.to_string());
    set(RATELIMIT.clone(), format!("\"{policy}\";r=0;t={secs}"));
    set(
        RATELIMIT_POLICY.clone(),
        format!("\"{policy}\";q={quota};w={}", ceil_seconds(window).max(1)),
    );
}

impl ApiError {
    /// The error hyper answered a request head it could not parse with (its status), whose
    /// empty body the connection replaces with this error's.
    pub fn refused_before_routing(status: u16) -> Option<Self> {
        match status {
            400 => Some(Self::MalformedRequest),
            414 => Some(Self::UriTooLong),
            431 => Some(Self::HeadTooLarge),
            _ => None,
        }
    }

    /// The body's two fields every error has: its code and a message for a human (a 5xx says
    /// nothing of its cause).
    fn base_body(&self) -> Map<String, Value> {
        let message = if self.status().is_server_error() {
            if let Self::Internal(detail) = &self {
                tracing::error!(%detail, "internal error");
            }
            match self {
                Self::Unavailable(_)
                | Self::Overloaded
                | Self::RequestTimeout
                | Self::NotReplicated
                | Self::Refused(Refusal::ResyncRequired) => self.to_string(),
                _ => "internal error".to_owned(),
            }
        } else {
            self.to_string()
        };
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code()));
        body.insert("message".into(), json!(message));
        body
    }

    /// The JSON body of an error that has no fields beyond its code and message.
    pub fn plain_body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.base_body()).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Refused(Refusal::SoldOut { available: 0 }) = self {
            return sold_out_response();
        }
        let code = ErrorCode(self.code());
        let (status, headers, body) = self.parts();
        let mut response = (status, headers, Json(Value::Object(body))).into_response();
        // For the observing middleware: the answer's code without parsing the body.
        response.extensions_mut().insert(code);
        response
    }
}

/// `409 sold_out` with no units left: after a sell-out nearly every answer is this one, so its
/// body is rendered once (by the same [`ApiError::parts`] as every other error) and shared.
fn sold_out_response() -> Response {
    static BODY: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let error = ApiError::Refused(Refusal::SoldOut { available: 0 });
    let body = BODY.get_or_init(|| {
        let (_, _, body) = error.parts();
        serde_json::to_vec(&Value::Object(body))
            .unwrap_or_default()
            .into()
    });
    let mut response = (
        StatusCode::CONFLICT,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.clone(),
    )
        .into_response();
    response.extensions_mut().insert(ErrorCode("sold_out"));
    response
}

impl ApiError {
    /// An error's status, headers and JSON body.
    fn parts(&self) -> (StatusCode, HeaderMap, Map<String, Value>) {
        let status = self.status();
        let mut body = self.base_body();
        let mut headers = HeaderMap::new();
        match &self {
            Self::Invalid(e) | Self::IdempotencyKeyInvalid(e) => {
                body.insert("field".into(), json!(e.field));
            }
            Self::Refused(Refusal::RateLimited {
                retry_after,
                burst,
                window,
            }) => {
                body.insert(
                    "retry_after_seconds".into(),
                    json!(ceil_seconds(*retry_after).max(1)),
                );
                rate_limit_headers(&mut headers, "buyer", *retry_after, *burst, *window);
            }
            Self::Refused(Refusal::SoldOut { available }) => {
                body.insert("available".into(), json!(available));
            }
            Self::Refused(Refusal::NotYourTurn { ahead }) => {
                body.insert("ahead".into(), json!(ahead));
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                body.insert("retry_after_seconds".into(), json!(1));
            }
            Self::Refused(Refusal::HoldQuotaReached {
                limit,
                window,
                retry_after,
            }) => {
                body.insert("limit".into(), json!(limit));
                body.insert("window_seconds".into(), json!(window.as_secs()));
                body.insert(
                    "retry_after_seconds".into(),
                    json!(ceil_seconds(*retry_after).max(1)),
                );
                rate_limit_headers(&mut headers, "holds", *retry_after, *limit, *window);
            }
            Self::Refused(
                Refusal::BuyerLimitReached { limit } | Refusal::ClientLimitReached { limit },
            ) => {
                body.insert("limit".into(), json!(limit));
            }
            Self::Refused(Refusal::SaleNotOpen { opens_at: Some(at) }) => {
                body.insert(
                    "opens_at".into(),
                    json!(crate::domain::timestamp::format(*at)),
                );
            }
            Self::ClientShed {
                retry_after,
                burst,
                window,
            } => {
                body.insert(
                    "retry_after_seconds".into(),
                    json!(ceil_seconds(*retry_after).max(1)),
                );
                rate_limit_headers(&mut headers, "client", *retry_after, *burst, *window);
            }
            Self::Unavailable(_)
            | Self::Overloaded
            | Self::RequestTimeout
            | Self::NotReplicated => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                body.insert("retry_after_seconds".into(), json!(1));
            }
            Self::TooManyInFlight(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                body.insert("retry_after_seconds".into(), json!(1));
            }
            // An operator's resync takes seconds to minutes: no point asking every second.
            Self::Refused(Refusal::ResyncRequired) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                body.insert("retry_after_seconds".into(), json!(5));
            }
            _ => {}
        }
        (status, headers, body)
    }
}

/// The error code an error response carries (a response extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared sold-out answer is byte for byte what rendering the error gives.
    #[tokio::test]
    async fn the_shared_sold_out_answer_is_the_rendered_one() {
        let error = ApiError::Refused(Refusal::SoldOut { available: 0 });
        let (status, headers, body) = error.parts();
        let rendered = (status, headers, Json(Value::Object(body))).into_response();
        let shared = error.into_response();
        assert_eq!(shared.status(), rendered.status());
        assert_eq!(shared.headers(), rendered.headers());
        assert_eq!(
            shared.extensions().get::<ErrorCode>(),
            Some(&ErrorCode("sold_out"))
        );
        let shared = axum::body::to_bytes(shared.into_body(), 4096)
            .await
            .expect("body");
        let rendered = axum::body::to_bytes(rendered.into_body(), 4096)
            .await
            .expect("body");
        assert_eq!(shared, rendered);
        let body: Value = serde_json::from_slice(&shared).expect("json");
        assert_eq!(body["error"], "sold_out");
        assert_eq!(body["available"], 0);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_seconds(Duration::from_millis(1001)), 2);
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail() {
        let response = ApiError::Internal("password=hunter2".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"], "internal_error");
        assert!(!body.to_string().contains("hunter2"));
    }

    #[test]
    fn rate_limit_refusals_carry_the_draft_headers() {
        let response = ApiError::Refused(Refusal::RateLimited {
            retry_after: Duration::from_millis(1500),
            burst: 10,
            window: Duration::from_secs(2),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = response.headers();
        assert_eq!(h[header::RETRY_AFTER], "2");
        assert_eq!(h["ratelimit"], "\"buyer\";r=0;t=2");
        assert_eq!(h["ratelimit-policy"], "\"buyer\";q=10;w=2");
    }

    /// One value of every variant: the match below stops compiling when a variant is added,
    /// so its code cannot be left out of [`CODES`].
    fn one_of_each() -> Vec<ApiError> {
        let invalid = ValidationError::new("field", "reason");
        let all = vec![
            ApiError::Invalid(invalid.clone()),
            ApiError::MalformedJson(String::new()),
            ApiError::InvalidBody(String::new()),
            ApiError::UnsupportedMediaType,
            ApiError::BodyTooLarge,
            ApiError::IdempotencyKeyMissing,
            ApiError::IdempotencyKeyInvalid(invalid),
            ApiError::Unauthorized,
            ApiError::Forbidden,
            ApiError::UnknownSku(String::new()),
            ApiError::ReservationNotFound,
            ApiError::HoldLost,
            ApiError::JobNotFound,
            ApiError::HoldIs(ReservationStatus::Held),
            ApiError::HoldIs(ReservationStatus::Committed),
            ApiError::HoldIs(ReservationStatus::Released),
            ApiError::HoldIs(ReservationStatus::Expired),
            ApiError::HoldIs(ReservationStatus::Rejected),
            ApiError::Refused(Refusal::IdempotencyKeyReused),
            ApiError::Refused(Refusal::RateLimited {
                retry_after: Duration::ZERO,
                burst: 0,
                window: Duration::ZERO,
            }),
            ApiError::Refused(Refusal::UnknownSku),
            ApiError::Refused(Refusal::SaleNotOpen { opens_at: None }),
            ApiError::Refused(Refusal::SalePaused),
            ApiError::Refused(Refusal::ResyncRequired),
            ApiError::Refused(Refusal::BuyerLimitReached { limit: 1 }),
            ApiError::Refused(Refusal::SoldOut { available: 0 }),
            ApiError::Refused(Refusal::ClientLimitReached { limit: 1 }),
            ApiError::Refused(Refusal::HoldQuotaReached {
                limit: 1,
                window: Duration::ZERO,
                retry_after: Duration::ZERO,
            }),
            ApiError::Refused(Refusal::NotYourTurn { ahead: 0 }),
            ApiError::Refused(Refusal::TicketExpired),
            ApiError::Refused(Refusal::TicketUsed),
            ApiError::TicketInvalid(crate::domain::InvalidTicket),
            ApiError::WaitingRoomOff(Sku::parse("s").expect("sku")),
            ApiError::ClientShed {
                retry_after: Duration::ZERO,
                burst: 0,
                window: Duration::ZERO,
            },
            ApiError::SaleNotPrewarmed(String::new()),
            ApiError::SaleLive(Sku::parse("s").expect("sku")),
            ApiError::NamespaceMismatch(crate::app::NamespaceMismatch {
                sku: Sku::parse("s").expect("sku"),
                launched_in: "a".into(),
                ours: "b".into(),
            }),
            ApiError::StockBelowCommitted {
                requested: 0,
                committed: 0,
            },
            ApiError::Unavailable("redis"),
            ApiError::NotReplicated,
            ApiError::Overloaded,
            ApiError::TooManyInFlight("buyer"),
            ApiError::BodyReadTimeout,
            ApiError::RequestTimeout,
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::InvalidPath(String::new()),
            ApiError::InvalidQuery(String::new()),
            ApiError::HeadTooLarge,
            ApiError::UriTooLong,
            ApiError::MalformedRequest,
            ApiError::Internal(String::new()),
        ];
        for error in &all {
            match error {
                ApiError::Invalid(_)
                | ApiError::MalformedJson(_)
                | ApiError::InvalidBody(_)
                | ApiError::UnsupportedMediaType
                | ApiError::BodyTooLarge
                | ApiError::IdempotencyKeyMissing
                | ApiError::IdempotencyKeyInvalid(_)
                | ApiError::Unauthorized
                | ApiError::Forbidden
                | ApiError::UnknownSku(_)
                | ApiError::ReservationNotFound
                | ApiError::HoldLost
                | ApiError::JobNotFound
                | ApiError::HoldIs(_)
                | ApiError::Refused(_)
                | ApiError::ClientShed { .. }
                | ApiError::SaleNotPrewarmed(_)
                | ApiError::SaleLive(_)
                | ApiError::NamespaceMismatch(_)
                | ApiError::StockBelowCommitted { .. }
                | ApiError::Unavailable(_)
                | ApiError::NotReplicated
                | ApiError::Overloaded
                | ApiError::TooManyInFlight(_)
                | ApiError::BodyReadTimeout
                | ApiError::RequestTimeout
                | ApiError::RouteNotFound
                | ApiError::MethodNotAllowed
                | ApiError::InvalidPath(_)
                | ApiError::InvalidQuery(_)
                | ApiError::HeadTooLarge
                | ApiError::UriTooLong
                | ApiError::MalformedRequest
                | ApiError::TicketInvalid(_)
                | ApiError::WaitingRoomOff(_)
                | ApiError::Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_code_the_api_can_answer_is_listed() {
        for error in one_of_each() {
            assert!(
                CODES.contains(&error.code()),
                "{} is not in CODES",
                error.code()
            );
        }
        let answered: std::collections::HashSet<_> =
            one_of_each().iter().map(ApiError::code).collect();
        for code in CODES {
            assert!(
                answered.contains(code),
                "{code} is listed but never answered"
            );
        }
    }
}
