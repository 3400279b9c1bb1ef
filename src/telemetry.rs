//! Logging and metrics.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`; lapin's per-message warning
//! about returned messages off unless `RUST_LOG` names lapin), as text coloured only when stderr
//! is a terminal (a log file or a pipe gets plain text), or as one JSON object per line
//! (`FLASHGATE_LOG_FORMAT=json`) carrying the fields of the spans it was logged in — a request's
//! `request_id` among them. Metrics: the `metrics`
//! facade with a Prometheus recorder, rendered at `GET /metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: from a Redis round trip to a commit waiting out a slow Postgres.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
use tracing_subscriber::EnvFilter;

/// `FLASHGATE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // lapin warns with the whole message for every event the broker returns as unroutable; the
    // relay dead-letters and counts those itself (`flashgate_outbox_dead_lettered_total`), and
    // a sale nobody is bound for would otherwise log one line per event. `RUST_LOG` naming
    // lapin keeps its own say.
    let names_lapin = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin"));
    if !names_lapin && let Ok(quiet) = "lapin::returned_messages=error".parse() {
        filter = filter.add_directive(quiet);
    }
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// The process's Prometheus recorder, installed on first use. There is one global recorder per
/// process, so every caller (each test's app included) shares it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Every `*_seconds` histogram is exported with buckets (a Prometheus histogram,
            // which Grafana can aggregate across gates), not as a summary.
            // Fails only for an empty bucket list, which LATENCY_BUCKETS is not.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe_all();
            handle
        })
        .clone()
}

/// What a metric is, for its `# HELP` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One label set a metric is shown with.
type Labels = &'static [(&'static str, &'static str)];

/// Every metric the gate records: its kind, its help text, and the label sets it is shown with
/// (at zero) from start-up, so a dashboard or an alert finds it before the first event. A
/// metric labelled per SKU (or per route, per call) appears with its first value; histograms
/// with their first observation.
const CATALOGUE: &[(&str, Kind, &str, &[Labels])] = &[
    (
        "flashgate_sale_outcomes_total",
        Kind::Counter,
        "Answers and hold events per sale, by outcome",
        &[],
    ),
    (
        "flashgate_sale_call_duration_seconds",
        Kind::Histogram,
        "Reserve and commit latency inside the gate",
        &[],
    ),
    (
        "flashgate_http_request_duration_seconds",
        Kind::Histogram,
        "Every routed request, by route, method and outcome (status and error code)",
        &[],
    ),
    (
        "flashgate_redis_call_duration_seconds",
        Kind::Histogram,
        "Every Redis command or pipeline",
        &[],
    ),
    (
        "flashgate_postgres_call_duration_seconds",
        Kind::Histogram,
        "Postgres calls on the hot paths",
        &[],
    ),
    (
        "flashgate_settlement_lag_seconds",
        Kind::Gauge,
        "Age of the last settled batch's oldest event when Postgres committed it, per SKU",
        &[],
    ),
    (
        "flashgate_settlement_delay_seconds",
        Kind::Histogram,
        "Age of each settled batch's oldest event when Postgres committed it",
        &[],
    ),
    (
        "flashgate_settlement_backlog",
        Kind::Gauge,
        "Events not yet settled, per SKU (set when the console or the audit reads it)",
        &[],
    ),
    (
        "flashgate_shed_total",
        Kind::Counter,
        "Requests refused by per-client shedding",
        &[&[("lane", "new_buyers")]],
    ),
    (
        "flashgate_admission_refused_total",
        Kind::Counter,
        "Requests refused admission (overloaded)",
        &[&[("lane", "new_buyers")], &[("lane", "payers")]],
    ),
    (
        "flashgate_in_flight_refused_total",
        Kind::Counter,
        "Requests refused because their client address or buyer had its cap in flight",
        &[&[("per", "client")], &[("per", "buyer")]],
    ),
    (
        "flashgate_body_read_timeouts_total",
        Kind::Counter,
        "Request bodies that did not arrive in time (408)",
        &[&[]],
    ),
    (
        "flashgate_connections_open",
        Kind::Gauge,
        "Client connections open",
        &[&[]],
    ),
    (
        "flashgate_connections_refused_total",
        Kind::Counter,
        "Connections refused at accept",
        &[&[("reason", "per_client")]],
    ),
    (
        "flashgate_connections_closed_total",
        Kind::Counter,
        "Connections the gate closed, by reason",
        &[
            &[("reason", "header_read_timeout")],
            &[("reason", "idle_timeout")],
            &[("reason", "evicted_idle")],
        ],
    ),
    (
        "flashgate_accept_errors_total",
        Kind::Counter,
        "Failed accepts (out of file descriptors, reset before accept)",
        &[&[]],
    ),
    (
        "flashgate_settled_events_total",
        Kind::Counter,
        "Stream events applied to Postgres",
        &[&[]],
    ),
    (
        "flashgate_rejected_holds_total",
        Kind::Counter,
        "Holds Redis admitted and Postgres refused (drift)",
        &[&[]],
    ),
    (
        "flashgate_expired_holds_total",
        Kind::Counter,
        "Holds the sweeper expired",
        &[&[]],
    ),
    (
        "flashgate_broken_streams_total",
        Kind::Counter,
        "Streams found no longer holding the settlement cursor (the sale halts for a resync), per SKU",
        &[],
    ),
    (
        "flashgate_settle_failures_total",
        Kind::Counter,
        "Failed settlement batches, per SKU",
        &[],
    ),
    (
        "flashgate_sweep_failures_total",
        Kind::Counter,
        "Failed expiry sweeps, per SKU",
        &[],
    ),
    (
        "flashgate_group_commit_size",
        Kind::Histogram,
        "Commits answered by one group-commit batch",
        &[],
    ),
    (
        "flashgate_settler_fleet_size",
        Kind::Gauge,
        "Live settlers as this one last saw them",
        &[&[]],
    ),
    (
        "flashgate_settler_scanned_skus",
        Kind::Gauge,
        "SKUs of this settler's share at its last safety-net scan",
        &[&[]],
    ),
    (
        "flashgate_settler_scan_failures_total",
        Kind::Counter,
        "Failed safety-net scans",
        &[&[]],
    ),
    (
        "flashgate_rescued_events_total",
        Kind::Counter,
        "Events a settler applied from its read batch after Redis lost the stream",
        &[&[]],
    ),
    (
        "flashgate_stock_shortfall_units_total",
        Kind::Counter,
        "Units of admin stock decreases Postgres could not take, per SKU",
        &[],
    ),
    (
        "flashgate_abandoned_resync_pauses_total",
        Kind::Counter,
        "Sales reopened after a resync died between its pause and its restore",
        &[&[]],
    ),
    (
        "flashgate_lost_holds_total",
        Kind::Counter,
        "Holds told 201 found in neither store (answered 410 hold_lost)",
        &[&[]],
    ),
    (
        "flashgate_redis_breaker_open",
        Kind::Gauge,
        "1 while the circuit breaker in front of Redis is open",
        &[&[]],
    ),
    (
        "flashgate_redis_breaker_opened_total",
        Kind::Counter,
        "Times the Redis circuit breaker opened",
        &[&[]],
    ),
    (
        "flashgate_redis_breaker_rejected_total",
        Kind::Counter,
        "Calls refused while the Redis circuit breaker was open",
        &[&[]],
    ),
    (
        "flashgate_redis_cluster_scan_fallbacks_total",
        Kind::Counter,
        "Multi-SKU cluster scans that fell back to one call per key",
        &[&[]],
    ),
    (
        "flashgate_request_timeouts_total",
        Kind::Counter,
        "Requests abandoned at the request deadline (503 request_timeout)",
        &[&[]],
    ),
    (
        "flashgate_not_replicated_total",
        Kind::Counter,
        "Holds no replica confirmed in time (503 not_replicated)",
        &[&[]],
    ),
    (
        "flashgate_sold_out_shortcut_total",
        Kind::Counter,
        "sold_out answers decided in process by the sold-out shortcut",
        &[&[]],
    ),
    (
        "flashgate_admin_auth_failures_total",
        Kind::Counter,
        "Admin calls without a token or with a wrong one",
        &[&[("reason", "missing")], &[("reason", "wrong")]],
    ),
    (
        "flashgate_admin_backoffs_total",
        Kind::Counter,
        "Admin calls refused 429 while their client backs off from wrong tokens",
        &[&[]],
    ),
    (
        "flashgate_outbox_pending",
        Kind::Gauge,
        "Events not yet confirmed by the broker, per SKU",
        &[],
    ),
    (
        "flashgate_outbox_lag_seconds",
        Kind::Histogram,
        "Per event, its decision time to the broker's confirm",
        &[],
    ),
    (
        "flashgate_outbox_recorded_total",
        Kind::Counter,
        "Events written to the outbox",
        &[&[]],
    ),
    (
        "flashgate_outbox_published_total",
        Kind::Counter,
        "Events published to the broker",
        &[&[]],
    ),
    (
        "flashgate_outbox_confirms_total",
        Kind::Counter,
        "Events the broker confirmed",
        &[&[]],
    ),
    (
        "flashgate_outbox_nacks_total",
        Kind::Counter,
        "Events the broker refused",
        &[&[]],
    ),
    (
        "flashgate_outbox_reconnects_total",
        Kind::Counter,
        "Connections the relay made to the broker",
        &[&[]],
    ),
    (
        "flashgate_outbox_dead_lettered_total",
        Kind::Counter,
        "Unroutable events, by kind",
        &[],
    ),
    (
        "flashgate_outbox_pruned_total",
        Kind::Counter,
        "Outbox rows deleted after the retention",
        &[&[]],
    ),
    (
        "flashgate_webhook_deliveries_total",
        Kind::Counter,
        "Webhook deliveries, by outcome",
        &[
            &[("outcome", "delivered")],
            &[("outcome", "failed")],
            &[("outcome", "given_up")],
        ],
    ),
    (
        "flashgate_webhook_pending",
        Kind::Gauge,
        "Events not yet delivered by the webhook, per SKU",
        &[],
    ),
    (
        "flashgate_webhook_lag_seconds",
        Kind::Histogram,
        "Per event, its decision time to the webhook's delivery",
        &[],
    ),
];

/// The metrics `/metrics` shows from start-up (at zero until something happens).
pub fn shown_from_start() -> impl Iterator<Item = &'static str> {
    CATALOGUE
        .iter()
        .filter(|(_, _, _, shown)| !shown.is_empty())
        .map(|(name, ..)| *name)
}

/// Describes every metric and shows the ones with known labels at zero.
fn describe_all() {
    for &(name, kind, help, shown) in CATALOGUE {
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                for labels in shown {
                    metrics::counter!(name, *labels).increment(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                for labels in shown {
                    metrics::gauge!(name, *labels).increment(0.0);
                }
            }
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `"flashgate_…"` name in the sources, outside this file.
    fn recorded_names() -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut folders = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).expect("src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("telemetry.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("source");
                    for piece in text.split("\"flashgate_").skip(1) {
                        let name: String = piece
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if piece[name.len()..].starts_with('"') {
                            names.insert(format!("flashgate_{name}"));
                        }
                    }
                }
            }
        }
        names
    }

    #[test]
    fn every_recorded_metric_is_in_the_catalogue_and_nothing_else() {
        let catalogued: std::collections::BTreeSet<String> = CATALOGUE
            .iter()
            .map(|(name, ..)| (*name).to_owned())
            .collect();
        assert_eq!(recorded_names(), catalogued);
    }
}
