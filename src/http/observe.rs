//! Every answer, measured: `flashgate_http_request_duration_seconds{route, method, outcome}`
//! for each routed request, and the sale's pulse (`crate::pulse`) for a buyer's reserve,
//! commit and release.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ErrorCode;
use super::header_names::{IDEMPOTENT_REPLAYED, RATELIMIT_POLICY};
use crate::domain::Sku;
use crate::pulse::{self, Call, Outcome};

/// The sale a response is about, when the handler knows it and the path does not name it
/// (commit and release name a reservation).
#[derive(Debug, Clone)]
pub struct SaleOf(pub Sku);

pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    // The route matched, so the path is exactly its prefix, the SKU and its suffix (cut off
    // directly: a `split('/')` cost ~470 instructions a reserve).
    let reserved_sku = (method == Method::POST && route == "/v1/skus/{sku}/reservations")
        .then(|| {
            request
                .uri()
                .path()
                .strip_prefix("/v1/skus/")?
                .strip_suffix("/reservations")
        })
        .flatten()
        .and_then(|raw| Sku::parse(raw).ok());
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    duration_of(AnswerKind {
        route,
        method: method.as_str(),
        status,
        code,
    })
    .record(took.as_secs_f64());

    if let Some(sku) = &reserved_sku {
        let counted = match (status, code) {
            (201, _) if response.headers().contains_key(&IDEMPOTENT_REPLAYED) => {
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
        pulse::record_call(sku, counted, Call::Reserve, took);
    } else if let Some(SaleOf(sku)) = response.extensions().get::<SaleOf>() {
        if route.ends_with("/commit") {
            let committed = (status == 200).then_some(Outcome::Committed);
            pulse::record_call(sku, committed, Call::Commit, took);
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
        .get(&RATELIMIT_POLICY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("client"))
}

/// What one series of `flashgate_http_request_duration_seconds` counts: borrowed from the
/// request to look its handle up, owned (`Box<str>`) once kept. Both hash alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AnswerKind<S> {
    route: S,
    method: S,
    status: u16,
    code: Option<&'static str>,
}

impl quick_cache::Equivalent<AnswerKind<Box<str>>> for AnswerKind<&str> {
    fn equivalent(&self, kept: &AnswerKind<Box<str>>) -> bool {
        self.route == &*kept.route
            && self.method == &*kept.method
            && self.status == kept.status
            && self.code == kept.code
    }
}

/// The duration histogram's handles, one per route, method and outcome, registered on first
/// use: the `histogram!` macro built the key's three label strings and looked them up in the
/// registry on every answer (~5,000 instructions, a twelfth of a sold-out answer). A handle
/// evicted from the cache is registered again: the registry answers the same series.
fn durations() -> &'static quick_cache::sync::Cache<AnswerKind<Box<str>>, metrics::Histogram> {
    static DURATIONS: OnceLock<quick_cache::sync::Cache<AnswerKind<Box<str>>, metrics::Histogram>> =
        OnceLock::new();
    DURATIONS.get_or_init(|| quick_cache::sync::Cache::new(1024))
}

fn duration_of(kind: AnswerKind<&str>) -> metrics::Histogram {
    let series = durations();
    if let Some(histogram) = series.get(&kind) {
        return histogram;
    }
    let outcome = match kind.code {
        Some(code) => format!("{} {code}", kind.status),
        None => kind.status.to_string(),
    };
    let histogram = metrics::histogram!("flashgate_http_request_duration_seconds",
        "route" => kind.route.to_owned(), "method" => kind.method.to_owned(), "outcome" => outcome);
    series.insert(
        AnswerKind {
            route: kind.route.into(),
            method: kind.method.into(),
            status: kind.status,
            code: kind.code,
        },
        histogram.clone(),
    );
    histogram
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept handle is found from the request's borrowed strings: the two forms hash alike.
    #[test]
    fn a_kept_answer_kind_is_found_by_its_borrowed_form() {
        let kept = quick_cache::sync::Cache::<AnswerKind<Box<str>>, u8>::new(16);
        let owned = |code| AnswerKind {
            route: "/v1/skus/{sku}/reservations".into(),
            method: "POST".into(),
            status: 409,
            code,
        };
        kept.insert(owned(Some("sold_out")), 1);
        kept.insert(owned(None), 2);
        let asked = |code| AnswerKind {
            route: "/v1/skus/{sku}/reservations",
            method: "POST",
            status: 409,
            code,
        };
        assert_eq!(kept.get(&asked(Some("sold_out"))), Some(1));
        assert_eq!(kept.get(&asked(None)), Some(2));
        assert_eq!(kept.get(&asked(Some("sale_paused"))), None);
    }
}
