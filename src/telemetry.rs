//! Logging and metrics.
//!
//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`; lapin's per-message warning
//! about returned messages off unless `RUST_LOG` names lapin), as text coloured only when stderr
//! is a terminal (a log file or a pipe gets plain text), or as one JSON object per line
//! (`FLASHGATE_LOG_FORMAT=json`) carrying the fields of the spans it was logged in — a request's
//! `request_id` among them. Metrics: the `metrics`
//! facade with a Prometheus recorder, rendered at `GET /metrics`. Traces: the same spans exported
//! with OpenTelemetry (OTLP over HTTP, protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not at all when it is not; a request that
//! comes with a W3C `traceparent` continues the caller's trace.

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

/// What [`init`] started that must be flushed before the process exits: dropping it sends the
/// spans still buffered (the exporter sends in batches every few seconds).
#[derive(Debug)]
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (OTLP configured).
    pub fn exports_traces(&self) -> bool {
        self.traces.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            // Best effort: a collector that is down must not hold the exit up or fail it.
            let _ = traces.shutdown();
        }
    }
}

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
pub struct TraceExportError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Whether the standard OpenTelemetry variables ask for trace export: an OTLP endpoint is set
/// and the SDK is not disabled (`OTEL_SDK_DISABLED=true`).
fn trace_export_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn init(format: LogFormat) -> Result<Telemetry, TraceExportError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // lapin warns with the whole message for every event the broker returns as unroutable; the
    // relay dead-letters and counts those itself (`flashgate_outbox_dead_lettered_total`), and
    // a sale nobody is bound for would otherwise log one line per event. `RUST_LOG` naming
    // lapin keeps its own say.
    let names_lapin = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin"));
    if !names_lapin && let Ok(quiet) = "lapin::returned_messages=error".parse() {
        filter = filter.add_directive(quiet);
    }
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = if trace_export_configured(|name| std::env::var(name).ok()) {
        Some(tracer_provider()?)
    } else {
        None
    };
    let exported = traces.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(provider.tracer("flashgate"))
    });
    // One global filter for logs and spans alike: `RUST_LOG` at `info` (the default) exports
    // every request's span. (A filter per layer, tried first, now and then lost the request
    // span from the JSON log lines under load.)
    // A second init (tests, embedding) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(exported)
        .try_init()
        .is_ok();
    if installed && traces.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Telemetry { traces })
}

/// Spans go out over OTLP/HTTP from the SDK's batch thread. The exporter reads the standard
/// variables itself (endpoint, headers, timeout); the service is `flashgate` unless
/// `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) names it.
fn tracer_provider() -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TraceExportError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name"));
    if !named {
        resource = resource.with_service_name("flashgate");
    }
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Makes `span` (a request's) a child of the caller's trace when the request carries a W3C
/// `traceparent`, so the gate's spans join the checkout's trace. Nothing when not exporting.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use opentelemetry::propagation::Extractor;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(axum::http::HeaderName::as_str).collect()
        }
    }

    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) || !headers.contains_key("traceparent")
    {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    let _ = span.set_parent(parent);
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
        "flashgate_reserve_batch_size",
        Kind::Histogram,
        "Reserves of one SKU sent to Redis in one script call (FLASHGATE_RESERVE_BATCH)",
        &[],
    ),
    (
        "flashgate_room_places_total",
        Kind::Counter,
        "Places in a waiting room handed out by this gate, per SKU",
        &[],
    ),
    (
        "flashgate_room_polls_total",
        Kind::Counter,
        "Polls of a place in a waiting room (answered from the cached line)",
        &[&[]],
    ),
    (
        "flashgate_room_line_reads_total",
        Kind::Counter,
        "Reads of a waiting room's line from Redis (at most one per SKU per 100 ms per gate)",
        &[&[]],
    ),
    (
        "flashgate_room_waiting",
        Kind::Gauge,
        "Places waiting to be admitted (not told sold out), per SKU",
        &[],
    ),
    (
        "flashgate_room_frontier",
        Kind::Gauge,
        "Places admitted so far, per SKU",
        &[],
    ),
    (
        "flashgate_room_admit_per_second",
        Kind::Gauge,
        "The waiting room's admit rate, per SKU",
        &[],
    ),
    (
        "flashgate_room_sell_out_eta_seconds",
        Kind::Gauge,
        "Estimated time until the stock is gone at the admit rate (each admitted place taking the buyer limit), per SKU",
        &[],
    ),
    (
        "flashgate_room_tickets_issued_total",
        Kind::Counter,
        "Places handed out in the line (the line's own total, the same on every gate), per SKU",
        &[],
    ),
    (
        "flashgate_room_tickets_admitted_total",
        Kind::Counter,
        "Places admitted (the line's own total), per SKU",
        &[],
    ),
    (
        "flashgate_room_tickets_expired_total",
        Kind::Counter,
        "Admitted places whose window closed without a hold (the line's own total), per SKU",
        &[],
    ),
    (
        "flashgate_room_tickets_sold_out_total",
        Kind::Counter,
        "Places told sold_out (the line's own total), per SKU",
        &[],
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
mod trace_export_tests {
    use super::trace_export_configured;

    fn configured(vars: &[(&str, &str)]) -> bool {
        trace_export_configured(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn traces_are_exported_only_when_an_otlp_endpoint_is_set_and_the_sdk_is_not_disabled() {
        assert!(!configured(&[]));
        assert!(!configured(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(configured(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )]));
        assert!(configured(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )]));
        assert!(!configured(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]));
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
