//! Every answer, measured: `flashgate_http_request_duration_seconds{route, method, outcome}`
//! for each routed request, and the sale's pulse (`crate::pulse`) for a buyer's reserve,
//! commit and release.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ErrorCode;
use crate::domain::Sku;
use crate::pulse::{self, Call, Outcome};

/// The sale a response is about, when the handler knows it and the path does not name it
/// (commit and release name a reservation).
#[derive(Debug, Clone)]
pub struct SaleOf(pub Sku);

pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let reserved_sku = (method == Method::POST && route == "/v1/skus/{sku}/reservations")
        .then(|| request.uri().path().split('/').nth(3).map(str::to_owned))
        .flatten()
        .and_then(|raw| Sku::parse(&raw).ok());
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    let outcome = match code {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    };
    metrics::histogram!("flashgate_http_request_duration_seconds",
        "route" => route.clone(), "method" => method.to_string(), "outcome" => outcome)
    .record(took.as_secs_f64());

    if let Some(sku) = &reserved_sku {
        let counted = match (status, code) {
            (201, _) if response.headers().contains_key("idempotent-replayed") => {
                Some(Outcome::Replayed)
            }
            (201, _) => Some(Outcome::Held),
            (_, Some("sold_out")) => Some(Outcome::SoldOut),
            (_, Some("rate_limited")) if status == 429 && is_shed(&response) => Some(Outcome::Shed),
            (_, Some("rate_limited" | "hold_quota_reached")) => Some(Outcome::RateLimited),
            (_, Some("overloaded")) => Some(Outcome::Shed),
            (409, Some(_)) => Some(Outcome::Refused),
            _ => None,
        };
        if let Some(outcome) = counted {
            pulse::record(sku, outcome, 1);
        }
        pulse::record_latency(sku, Call::Reserve, took);
    } else if let Some(SaleOf(sku)) = response.extensions().get::<SaleOf>() {
        if route.ends_with("/commit") {
            if status == 200 {
                pulse::record(sku, Outcome::Committed, 1);
            }
            pulse::record_latency(sku, Call::Commit, took);
        } else if route.ends_with("/release") && status == 200 {
            pulse::record(sku, Outcome::Released, 1);
        }
    }
    response
}

/// A 429 from per-client shedding rather than the buyer's own rate limit: its policy names the
/// client (`RateLimit-Policy: ...;client`).
fn is_shed(response: &Response) -> bool {
    response
        .headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("client"))
}
