//! The operator's console: `GET /console`, a page that watches and steers live sales, and the
//! admin data it polls, `GET /v1/admin/console/sales`.
//!
//! The page itself is public and holds no data: it asks for the admin token once, keeps it in
//! the tab's `sessionStorage` (never in a URL), and sends it with every data and action call,
//! each of which checks it like any admin call. Actions are the admin API's own routes (pause,
//! resume, restock, resync), so the page shows exactly what the API answers.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use chrono::{DateTime, Utc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Admin;
use super::{ApiError, AppState};
use crate::audit::Verdict;
use crate::domain::{SaleState, Sku, timestamp};
use crate::pulse::SalePulse;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(sales))
}

/// The console page (public; its data and actions need the admin token).
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "the page", content_type = "text/html", body = String)))]
async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            // A page on another origin must not frame the console and trick a signed-in
            // operator into pressing Pause (clickjacking); old browsers read X-Frame-Options.
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(CONSOLE_PAGE),
    )
}

const CONSOLE_PAGE: &str = include_str!("console.html");

/// The console's policy: its one inline script and one inline style allowed by their hashes,
/// nothing else inline, no framing, and calls only to this origin.
fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; connect-src 'self'; img-src data:; script-src {}; style-src {}; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            inline_hash(CONSOLE_PAGE, "script"),
            inline_hash(CONSOLE_PAGE, "style"),
        )
    })
}

/// `'sha256-…'` of the content of the page's first `<tag>` element.
fn inline_hash(page: &str, tag: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let content = page
        .split_once(open.as_str())
        .and_then(|(_, rest)| rest.split_once(close.as_str()))
        .map_or("", |(content, _)| content);
    let digest = sha2::Sha256::digest(content.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// One sale as the console shows it, read afresh on every poll.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct SaleNow {
    #[schema(value_type = String)]
    sku: Sku,
    name: String,
    /// The state Postgres records, and the one the gate serves (`None`: not pre-warmed).
    state: SaleState,
    live_state: Option<SaleState>,
    /// Units a new hold may take now, in Redis.
    redis_stock: Option<i64>,
    total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    /// Events not yet applied to Postgres (counted up to 10,000), and the oldest one's age.
    backlog: usize,
    lag_ms: Option<i64>,
    /// Events recorded for the sale but not yet confirmed by the broker (or the webhook, when
    /// there is no broker), as this gate's relay last counted them, and the oldest one's age.
    events_pending: i64,
    events_lag_ms: i64,
    /// Why the sale takes no new hold until a resync (the settler found its stream broken).
    resync_required: Option<String>,
    /// This gate's counters and recent latencies for the sale.
    pulse: SalePulse,
    /// The last audit, rerun when older than [`AUDIT_EVERY`].
    audit: Option<AuditNow>,
    /// The sale's waiting room, and its line when the room is on and the sale live.
    waiting_room: crate::domain::WaitingRoom,
    line: Option<LineNow>,
}

/// A waiting room's line; its totals are the line's own, so the page derives per-second rates.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct LineNow {
    waiting: u64,
    frontier: u64,
    issued: u64,
    admitted: u64,
    expired: u64,
    sold_out: u64,
    admit_per_second: u32,
    /// The stock at the admit rate, each admitted place taking the buyer limit.
    sell_out_eta_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
struct AuditNow {
    ok: bool,
    #[serde(serialize_with = "timestamp::serialize")]
    checked_at: DateTime<Utc>,
    /// `"<invariant>. <detail>"` for each invariant violated, or pending.
    notes: Vec<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ConsoleNow {
    #[serde(serialize_with = "timestamp::serialize")]
    at: DateTime<Utc>,
    sales: Vec<SaleNow>,
}

const AUDIT_EVERY: Duration = Duration::from_secs(15);
const BACKLOG_CAP: usize = 10_000;

/// Every sale as the console shows it, read afresh.
#[utoipa::path(get, path = "/v1/admin/console/sales", tag = "console",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "every sale", body = ConsoleNow),
        (status = 401, description = "unauthorized", body = super::error::ErrorBody),
        (status = 403, description = "forbidden", body = super::error::ErrorBody),
        (status = 429, description = "rate_limited: too many wrong admin tokens from this client; Retry-After", body = super::error::ErrorBody),
        (status = 503, description = "service_unavailable, request_timeout; Retry-After", body = super::error::ErrorBody),
    ))]
async fn sales(State(state): State<AppState>, _: Admin) -> Result<Json<ConsoleNow>, ApiError> {
    let mut sales = Vec::new();
    for record in state.store.list_skus().await? {
        let sku = record.sku.clone();
        let live = state.gate.live_sale(&sku).await?;
        let cursor = state
            .store
            .settlement_cursor(&sku)
            .await?
            .unwrap_or_default();
        let (backlog, oldest) = state.gate.backlog(&sku, cursor, BACKLOG_CAP).await?;
        let lag_ms = oldest
            .and_then(|id| id.time())
            .map(|t| (Utc::now() - t).num_milliseconds().max(0));
        metrics::gauge!("flashgate_settlement_backlog", "sku" => sku.to_string())
            .set(backlog as f64);
        let (events_pending, events_lag_ms) = state.events.sku_backlog(sku.as_str());
        let line = match &live {
            Some(live) if live.waiting_room.enabled => {
                state.gate.line(&sku).await?.map(|line| LineNow {
                    waiting: line.waiting(),
                    frontier: line.frontier,
                    issued: line.issued,
                    admitted: line.frontier,
                    expired: line.expired,
                    sold_out: line.sold_out(),
                    admit_per_second: line.admit_per_second,
                    sell_out_eta_seconds: line.estimated_sell_out().as_secs_f64(),
                })
            }
            _ => None,
        };
        sales.push(SaleNow {
            name: record.name,
            state: record.state,
            live_state: live.as_ref().map(|l| l.state),
            redis_stock: live.as_ref().map(|l| l.available),
            total: record.total,
            available: record.available,
            reserved: record.reserved,
            sold: record.sold,
            backlog,
            lag_ms,
            events_pending,
            events_lag_ms,
            resync_required: record.resync_required.clone(),
            pulse: crate::pulse::snapshot(&sku),
            audit: last_audit(&state, &sku).await,
            waiting_room: record.waiting_room,
            line,
            sku,
        });
    }
    Ok(Json(ConsoleNow {
        at: Utc::now(),
        sales,
    }))
}

/// The SKU's last audit, run again when older than [`AUDIT_EVERY`]. Kept per process: each
/// gate audits the sales its console shows.
async fn last_audit(state: &AppState, sku: &Sku) -> Option<AuditNow> {
    static AUDITS: OnceLock<Mutex<HashMap<Sku, (Instant, AuditNow)>>> = OnceLock::new();
    let audits = AUDITS.get_or_init(Mutex::default);
    let cached = audits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(sku)
        .cloned();
    if let Some((checked, audit)) = &cached
        && checked.elapsed() < AUDIT_EVERY
    {
        return Some(audit.clone());
    }
    match crate::audit::audit_sku(&state.gate, &state.store, sku).await {
        Ok(report) => {
            let audit = AuditNow {
                ok: report.ok(),
                checked_at: Utc::now(),
                notes: report
                    .checks
                    .iter()
                    .filter(|c| c.verdict != Verdict::Held)
                    .map(|c| format!("invariant {} ({}): {}", c.invariant, c.name, c.detail))
                    .collect(),
            };
            audits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sku.clone(), (Instant::now(), audit.clone()));
            Some(audit)
        }
        Err(err) => {
            tracing::warn!(sku = %sku, error = %err, "console: audit failed");
            cached.map(|(_, audit)| audit)
        }
    }
}
