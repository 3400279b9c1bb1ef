//! Extractors whose rejections speak the API's own error format.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::client_addr::ClientAddr;
use super::{ApiError, AppState};
use crate::auth::{Principal, Role};
use crate::domain::{BuyerId, IdempotencyKey, Sku};
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};

/// `axum::Json`, but a bad body is answered with an [`ApiError`].
///
/// The usual request — `Content-Type: application/json` exactly, a body that parses — skips
/// what axum's extractor does for every request: parsing the content type as a MIME type and
/// tracking the path of each field while deserializing (together ~10 % of a sold-out answer's
/// handler). Any other content type, and a body that does not parse, go through `axum::Json`,
/// so every acceptance and every rejection message is axum's.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let plain_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"application/json"));
        if !plain_json {
            return axum::Json::<T>::from_request(req, state)
                .await
                .map(|axum::Json(value)| Self(value))
                .map_err(json_rejection);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| json_rejection(rejection.into()))?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Self(value)),
            Err(_) => axum::Json::<T>::from_bytes(&bytes)
                .map(|axum::Json(value)| Self(value))
                .map_err(json_rejection),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge,
        other => ApiError::MalformedJson(other.body_text()),
    }
}

/// `axum::extract::Path`, but a bad path (invalid UTF-8, wrong shape) is answered with an
/// [`ApiError`] (`400 invalid_path`) instead of a plain-text body.
#[derive(Debug)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| ApiError::InvalidPath(rejection.body_text()))
    }
}

/// `axum::extract::Query`, with rejections as `400 invalid_query`.
#[derive(Debug)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))
    }
}

/// The client the request is charged to (see `client_addr`), when the server knows its peer.
pub fn client_of(parts: &Parts) -> Option<ClientAddr> {
    parts.extensions.get::<ClientAddr>().copied()
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // The scheme ends within a few bytes: a byte scan, not `split_once`'s memchr set-up (~150
    // instructions on every authenticated request).
    let space = value.bytes().position(|b| b == b' ')?;
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The buyer named by a valid buyer's `Authorization: Bearer <jwt>`. A valid token of another
/// role (payments, admin) is refused 403: no service credential takes holds.
#[derive(Debug, Clone)]
pub struct Buyer(pub BuyerId);

impl FromRequestParts<AppState> for Buyer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The new-buyer lane verified the token already, before admission; taken, not cloned:
        // nothing after the handler's extractors reads it.
        if let Some(buyer) = parts.extensions.remove::<Buyer>() {
            return Ok(buyer);
        }
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        match state.tokens.verify(token) {
            Ok(Principal {
                subject,
                role: Role::Buyer,
            }) => Ok(Self(subject)),
            Ok(Principal { subject, role }) => {
                tracing::info!(%subject, role = role.as_str(), "a service credential tried a buyer's call");
                Err(ApiError::Forbidden)
            }
            Err(err) => {
                tracing::debug!(error = %err, "buyer token refused");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// Proof that the caller presented the admin token, or a valid token in the `admin` role.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = client_of(parts);
        let Some(token) = bearer(parts) else {
            crate::auth::admin_auth_failed(client.map(ClientAddr::ip), "missing");
            return Err(ApiError::Unauthorized);
        };
        let backoff = state.admission.admin_backoff();
        if let Some(client) = client {
            backoff.check(client)?;
        }
        if state.admin.matches(token) {
            return Ok(Self);
        }
        // A signed credential is no guess at the admin token: its role decides, without backoff.
        if let Ok(Principal { subject, role }) = state.tokens.verify(token) {
            return if role == Role::Admin {
                Ok(Self)
            } else {
                tracing::info!(%subject, role = role.as_str(), "a credential without the admin role tried an admin call");
                Err(ApiError::Forbidden)
            };
        }
        crate::auth::admin_auth_failed(client.map(ClientAddr::ip), "wrong");
        if let Some(client) = client {
            backoff.failed(client)?;
        }
        Err(ApiError::Forbidden)
    }
}

/// Whoever may act on a hold: the buyer who owns it, the payments service, or the admin.
#[derive(Debug, Clone)]
pub enum Caller {
    Buyer(BuyerId),
    /// A `payments` credential, naming the service that holds it.
    Payments(BuyerId),
    Admin,
}

/// As logs name the caller: `buyer:<id>`, `payments:<service>`, `admin`.
impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Buyer(buyer) => write!(f, "buyer:{buyer}"),
            Self::Payments(service) => write!(f, "payments:{service}"),
            Self::Admin => f.write_str("admin"),
        }
    }
}

impl Caller {
    /// Whose holds this caller may see and change: a buyer its own, a payments credential and
    /// the admin any.
    pub fn mover(&self) -> crate::gate::Mover<'_> {
        match self {
            Self::Admin | Self::Payments(_) => crate::gate::Mover::Anyone,
            Self::Buyer(buyer) => crate::gate::Mover::Buyer(buyer),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if state.admin.matches(token) {
            return Ok(Self::Admin);
        }
        match state.tokens.verify(token) {
            Ok(Principal { subject, role }) => Ok(match role {
                Role::Buyer => Self::Buyer(subject),
                Role::Payments => Self::Payments(subject),
                Role::Admin => Self::Admin,
            }),
            Err(err) => {
                tracing::debug!(error = %err, "token refused");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// The required `Idempotency-Key` header.
#[derive(Debug, Clone)]
pub struct IdempotencyKeyHeader(pub IdempotencyKey);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        idempotency_key(parts)?
            .map(Self)
            .ok_or(ApiError::IdempotencyKeyMissing)
    }
}

/// An `Idempotency-Key` header where it is optional (admin mutations): absent is `None`,
/// present but invalid is refused.
#[derive(Debug, Clone)]
pub struct OptionalIdempotencyKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for OptionalIdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        idempotency_key(parts).map(Self)
    }
}

fn idempotency_key(parts: &Parts) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = parts
        .headers
        .get_all(&super::header_names::IDEMPOTENCY_KEY)
        .iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two keys: which one the client meant cannot be known, and a proxy might pick the other.
    if values.next().is_some() {
        return Err(ApiError::IdempotencyKeyInvalid(
            crate::domain::ValidationError::new("Idempotency-Key", "must be sent once"),
        ));
    }
    let value = value.to_str().map_err(|_| {
        ApiError::IdempotencyKeyInvalid(crate::domain::ValidationError::new(
            "Idempotency-Key",
            "may contain only printable ASCII characters",
        ))
    })?;
    IdempotencyKey::parse(value)
        .map(Some)
        .map_err(ApiError::IdempotencyKeyInvalid)
}

/// The `{sku}` path segment, as the OpenAPI document states it (the handlers read it with
/// [`AppPath`]; this type only documents it).
pub struct SkuPath;

impl utoipa::IntoParams for SkuPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![sku_parameter(ParameterIn::Path)]
    }
}

/// The `sku` query parameter (`GET /v1/admin/events`), stated as [`SkuPath`] is.
pub struct SkuQuery;

impl utoipa::IntoParams for SkuQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![sku_parameter(ParameterIn::Query)]
    }
}

/// Every constraint [`Sku::parse`] enforces, so generated clients check before sending.
fn sku_parameter(location: ParameterIn) -> Parameter {
    parameter(
        "sku",
        location,
        true,
        "1-64 letters, digits, '.', '_' and '-', not only dots",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Sku::PATTERN))
            .min_length(Some(1))
            .max_length(Some(Sku::MAX_LEN)),
    )
}

/// The required `Idempotency-Key` header, as the OpenAPI document states it (read by
/// [`IdempotencyKeyHeader`]).
pub struct IdempotencyKeyParam;

impl utoipa::IntoParams for IdempotencyKeyParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![idempotency_key_parameter(true)]
    }
}

/// An optional `Idempotency-Key` (admin mutations; read by [`OptionalIdempotencyKey`]).
pub struct OptionalIdempotencyKeyParam;

impl utoipa::IntoParams for OptionalIdempotencyKeyParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![idempotency_key_parameter(false)]
    }
}

/// The bare form of a key [`IdempotencyKey::parse`] accepts: 1–255 printable ASCII characters,
/// not starting with `"` (that begins the structured-field string form, `"abc"`, also
/// accepted) and without spaces at either end (they are trimmed).
fn idempotency_key_parameter(required: bool) -> Parameter {
    parameter(
        "Idempotency-Key",
        ParameterIn::Header,
        required,
        "1-255 printable ASCII characters; the same key and body replay the stored answer",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[!#-~]([ -~]{0,253}[!-~])?$"))
            .min_length(Some(1))
            .max_length(Some(IdempotencyKey::MAX_LEN)),
    )
}

pub(super) fn parameter(
    name: &str,
    location: ParameterIn,
    required: bool,
    description: &str,
    schema: ObjectBuilder,
) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
        .schema(Some(schema.build()))
        .build()
}

/// A whole number from a JSON body, also when written as a float with no fraction (`99.0`):
/// JSON Schema calls that an integer, so a client generated from the OpenAPI document may send
/// it. Anything else — a fraction, a string, out of `T`'s range — is refused as `invalid_body`.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = match (number.as_i64(), number.as_f64()) {
        (Some(n), _) => Some(n),
        // Within ±2^53 a float with no fraction is an exact integer.
        (None, Some(f)) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Some(f as i64),
        _ => None,
    };
    whole
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| D::Error::custom(format!("expected a whole number in range, got {number}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_what_follows_the_scheme_and_its_first_space() {
        for (value, token) in [
            ("Bearer abc.def", Some("abc.def")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Bearer a b", Some("a b")),
            ("Bearer ", Some("")),
            ("Bearer", None),
            ("Basic abc", None),
            ("Bearerabc", None),
            (" Bearer abc", None),
            ("", None),
        ] {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header value"));
            assert_eq!(bearer_token(&headers), token, "{value:?}");
        }
        assert_eq!(bearer_token(&axum::http::HeaderMap::new()), None);
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // read through its Debug form
    struct Body {
        quantity: u32,
        note: Option<String>,
    }

    fn request(content_type: Option<&str>, body: &'static str) -> Request {
        let mut builder = Request::builder().method("POST").uri("/");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(axum::body::Body::from(body)).expect("request")
    }

    #[tokio::test]
    async fn app_json_accepts_and_refuses_exactly_what_axum_json_does() {
        let content_types = [
            Some("application/json"),
            Some("APPLICATION/JSON"),
            Some("application/json; charset=utf-8"),
            Some("application/problem+json"),
            Some("application/jsonx"),
            Some("text/plain"),
            None,
        ];
        let bodies = [
            r#"{"quantity": 1}"#,
            " {\"quantity\": 2, \"note\": \"a\\nb\"} \n",
            r#"{"quantity": "1"}"#,
            r#"{"note": "no quantity"}"#,
            r#"{"quantity": 1} trailing"#,
            "{",
            "",
        ];
        for content_type in content_types {
            for body in bodies {
                let ours = AppJson::<Body>::from_request(request(content_type, body), &()).await;
                let axums = axum::Json::<Body>::from_request(request(content_type, body), &())
                    .await
                    .map(|axum::Json(value)| AppJson(value))
                    .map_err(json_rejection);
                assert_eq!(
                    format!("{ours:?}"),
                    format!("{axums:?}"),
                    "{content_type:?} {body:?}"
                );
            }
        }
    }
}
