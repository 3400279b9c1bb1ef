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
            handle
        })
        .clone()
}
