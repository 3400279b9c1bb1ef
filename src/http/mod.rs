//! The HTTP API (docs/DESIGN.md §5), built on axum.
//!
//! Each resource module exposes its routers; [`app`] merges them into lanes and adds the layers.
//! Errors become responses in one place: [`ApiError`], in `error.rs` — unknown routes, wrong
//! methods, bad paths and query strings, and timeouts included.
//!
//! A request passes, outside in: the edge — its id vetted and its client address resolved
//! (`client_addr::vet`), its id set, tracing, the request deadline, the body limit — then
//! routing → its lane's admission (`admission`) → the handler.
//! Connections are accepted, capped and timed out in `server`.

mod admin;
mod admission;
mod client_addr;
mod console;
mod error;
mod events;
mod extract;
mod header_names;
mod health;
mod observe;
mod queue;
mod reservations;
mod server;
mod shedding;
mod skus;

pub use admission::{Admission, AdmissionSettings};
pub use client_addr::{ClientAddr, ClientAddrPolicy, ForwardedHeader, TrustedProxies};
pub use error::ApiError;
pub use health::Readiness;
pub use server::ServerSettings;
pub use shedding::{ADMIN_FAILURE_BURST, ADMIN_FAILURE_REFILL, AdminBackoff, ClientShedder};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{AdminToken, BearerTokens};
use crate::gate::Gate;
use crate::store::Store;

/// Request bodies are tiny JSON objects; anything larger is refused before it is read.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// What every handler can reach: one `Arc`, because every request clones the router's state
/// several times (each middleware layer and the handler take their own), and one reference
/// count is cheaper than one per service.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

impl From<Services> for AppState {
    fn from(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
#[derive(Debug)]
pub struct Services {
    /// Redis: decides reservations.
    pub gate: Gate,
    /// Postgres: the authoritative record.
    pub store: Store,
    /// Settles synchronously where a caller must wait for Postgres (commit, resync).
    pub settler: crate::settler::Settler,
    /// Verifies buyer tokens.
    pub tokens: BearerTokens,
    /// The admin bearer token.
    pub admin: AdminToken,
    /// Per-client shedding and the admission lanes.
    pub admission: Admission,
    /// How the real client address is found behind proxies.
    pub client_addr: Arc<ClientAddrPolicy>,
    /// What `/readyz` answers, refreshed in the background.
    pub readiness: Readiness,
    /// The relays' state and backlog, for `/readyz` and the console.
    pub events: crate::events::RelayStatus,
    /// How long one request may take before it is answered 503 `request_timeout`.
    pub request_timeout: Duration,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Whether the benchmarks' floor route is served (`FLASHGATE_FLOOR_ROUTE`).
    pub floor_route: bool,
}

impl Services {
    /// The sale operations that span both stores (`app`).
    /// The application layer over this process's stores.
    pub fn app(&self) -> crate::app::App<'_> {
        crate::app::App {
            gate: &self.gate,
            store: &self.store,
            settler: &self.settler,
        }
    }
}

/// The routes of the new-buyer lane (reserve, the sale view), the payer lane (a holder's calls),
/// and the rest. Each is built only with `routes!`, which registers a handler and its OpenAPI
/// description together: [`app`] and [`openapi`] use these same functions, so the document and
/// the router cannot disagree.
fn new_buyer_routes() -> OpenApiRouter<AppState> {
    reservations::new_holds()
        .merge(skus::router())
        .merge(queue::places())
}

/// Polls of a place in a waiting room: answered from the gate's cached line, in no lane.
fn waiting_routes() -> OpenApiRouter<AppState> {
    queue::polls()
}

fn payer_routes() -> OpenApiRouter<AppState> {
    reservations::payments()
}

fn observed_routes() -> OpenApiRouter<AppState> {
    admin::router()
        .merge(events::router())
        .merge(console::router())
}

/// The API's OpenAPI document, generated once from the routes above and their types.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .merge(new_buyer_routes())
            .merge(payer_routes())
            .merge(waiting_routes())
            .merge(observed_routes())
            .merge(health::probes())
            .merge(health::operations())
            .merge(events::contract())
            .split_for_parts();
        document
    })
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "flashgate",
        description = "A flash-sale inventory gate: Redis decides fast, Postgres decides last. \
            Errors are JSON {\"error\": code, \"message\"} with the codes of the ErrorBody schema.",
    ),
    modifiers(&Tokens),
    components(schemas(error::ErrorBody)),
    tags(
        (name = "buyers", description = "reserve, read, commit, release; the sale view"),
        (name = "admin", description = "sales, stock, pause/resume, prewarm, resync, audit, events (admin token)"),
        (name = "console", description = "the operator's console"),
        (name = "operations", description = "health, metrics, this document"),
    )
)]
struct ApiDoc;

/// The two bearer tokens: a JWT (a buyer's, or a scoped service credential) and the admin token.
struct Tokens;

impl utoipa::Modify for Tokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "buyerToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with FLASHGATE_JWT_SECRET; `sub` is the buyer id. A \
                         `roles` claim (or OAuth `scope`) of `payments` makes it a service \
                         credential that reads, commits and releases any hold and takes none; \
                         `admin` acts as the admin token. `flashgate token --role ...` mints one",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("FLASHGATE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything on one listener (no `FLASHGATE_ADMIN_LISTEN`).
    Everything,
    /// The buyers' and payers' routes and the probes: what the internet reaches.
    Public,
    /// The probes, `/metrics`, the admin API, the console and the documents: the operators'
    /// listener (`FLASHGATE_ADMIN_LISTEN`), which no crowd of buyers can fill.
    Operations,
}

/// The whole API as one service.
pub fn app(state: AppState) -> Api {
    app_for(state, Surface::Everything)
}

/// What a listener serves: the router inside the edge layers, cloned once per connection and
/// once per request.
pub type Api = tower::util::BoxCloneSyncService<Request, Response, std::convert::Infallible>;

/// The routes of `surface` with every layer. The edge layers (request id, tracing, client
/// address, deadline, body limit) wrap the router once, as one service: added with
/// `Router::layer` they wrapped each route in a boxed service of its own, so every request
/// cloned, boxed and dropped the stack once per layer (a fifth of a hold's instructions).
pub fn app_for(state: AppState, surface: Surface) -> Api {
    let client_addr = state.client_addr.clone();
    let timeout = state.request_timeout;
    let router = router_for(state, surface);
    let edge = tower::ServiceBuilder::new()
        .map_response(|response: Response<_>| response.map(axum::body::Body::new))
        .map_request(move |request: Request| client_addr::vet(&client_addr, request))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Every log line of a request carries its id; the id is kept from a trusted proxy that
        // set a well-formed one (`client_addr::vet`).
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request
                .headers()
                .get(&header_names::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id);
            crate::telemetry::continue_trace(&span, request.headers());
            span
        }))
        .map_future(move |answer| deadline(timeout, answer))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .service(router);
    tower::util::BoxCloneSyncService::new(edge)
}

/// The routes of `surface` with their lanes' layers and the fallbacks, without the edge.
fn router_for(state: AppState, surface: Surface) -> Router {
    let public = surface != Surface::Operations;
    let operations = surface != Surface::Public;
    let mut routes = OpenApiRouter::new();
    if public {
        let mut new_buyer_routes = new_buyer_routes();
        if state.floor_route {
            new_buyer_routes = new_buyer_routes.merge(reservations::floor());
        }
        let new_buyers = new_buyer_routes.route_layer(from_fn_with_state(
            (state.admission.clone(), state.tokens.clone()),
            admission::new_buyers,
        ));
        let payers = payer_routes().route_layer(from_fn_with_state(
            state.admission.clone(),
            admission::payers,
        ));
        routes = routes
            .merge(new_buyers)
            .merge(payers)
            .merge(waiting_routes());
    }
    if operations {
        routes = routes.merge(observed_routes());
    }
    let mut routes = routes
        .route_layer(axum::middleware::from_fn(observe::observe))
        .merge(health::probes());
    if operations {
        routes = routes.merge(health::operations()).merge(events::contract());
    }
    let (routes, _) = routes.split_for_parts();
    routes
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// A request still running after `timeout` is abandoned and answered `503 request_timeout` +
/// `Retry-After`, in the API's error format.
async fn deadline<E>(
    timeout: Duration,
    answer: impl Future<Output = Result<Response, E>>,
) -> Result<Response, E> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(answered) => answered,
        Err(_) => {
            metrics::counter!("flashgate_request_timeouts_total").increment(1);
            Ok(ApiError::RequestTimeout.into_response())
        }
    }
}

/// Where the API is served: one listener for everything, or the public routes on one and the
/// operators' routes on another (`FLASHGATE_ADMIN_LISTEN`).
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub operations: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(public: TcpListener) -> Self {
        Self {
            public,
            operations: None,
        }
    }
}

/// Operators are few: the operations listener's connection cap, per client none.
const OPERATIONS_MAX_CONNECTIONS: usize = 1024;

/// Serves the API on `listeners` until `shutdown` resolves, then drains in-flight requests.
/// Keeps `/readyz` fresh and the shedder's client map pruned while it runs.
pub async fn serve(
    listeners: impl Into<Listeners>,
    state: AppState,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listeners = listeners.into();
    state.readiness.refresh(&state.gate, &state.store).await;
    let mut background = tokio::task::JoinSet::new();
    background.spawn(
        state
            .readiness
            .clone()
            .keep_fresh(state.gate.clone(), state.store.clone()),
    );
    {
        // The shedders' maps only grow; prune them while the server runs.
        let shedder = state.admission.shedder().cloned();
        let admin_backoff = state.admission.admin_backoff().clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                if let Some(shedder) = &shedder {
                    shedder.forget_idle_clients();
                }
                admin_backoff.forget_idle_clients();
            }
        });
    }
    let trusted = state.client_addr.trusted.clone();
    let served = match listeners.operations {
        None => server::serve(listeners.public, app(state), settings, trusted, shutdown).await,
        Some(operations) => {
            let stop = tokio_util::sync::CancellationToken::new();
            let stopping = stop.clone();
            background.spawn(async move {
                shutdown.await;
                stopping.cancel();
            });
            let operators = ServerSettings {
                max_connections: OPERATIONS_MAX_CONNECTIONS.min(settings.max_connections),
                max_connections_per_client: 0,
                ..settings
            };
            let (public, operations) = tokio::join!(
                server::serve(
                    listeners.public,
                    app_for(state.clone(), Surface::Public),
                    settings,
                    trusted.clone(),
                    stop.clone().cancelled_owned(),
                ),
                server::serve(
                    operations,
                    app_for(state, Surface::Operations),
                    operators,
                    trusted,
                    stop.cancelled_owned(),
                ),
            );
            public.and(operations)
        }
    };
    background.abort_all();
    served
}

#[cfg(test)]
mod tests {
    /// Routes are registered only with `routes!`, which documents them: a plain route call
    /// would serve an operation the OpenAPI document does not describe.
    #[test]
    fn every_route_is_registered_with_its_documentation() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        for entry in std::fs::read_dir(&folder).expect("src/http") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).expect("source");
                // The code, not its tests (this test names the calls it looks for).
                let source = source.split("#[cfg(test)]").next().unwrap_or_default();
                let plain = [".route(", ".route_service(", ".nest("];
                assert!(
                    plain.iter().all(|call| !source.contains(call)),
                    "{} registers a route without documenting it",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_document_lists_every_error_code() {
        let document = serde_json::to_value(super::openapi()).expect("json");
        let listed: Vec<&str> =
            document["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"]
                .as_array()
                .expect("enum")
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect();
        assert_eq!(listed, super::error::CODES);
    }
}
