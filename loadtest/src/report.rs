//! The report: throughput, latency percentiles per outcome (HDR histograms), counts, the
//! settlement lag and the verdict — as text, JSON, and a self-contained HTML page with a
//! latency-over-time plot and a latency histogram drawn as inline SVG.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::config::Config;
use crate::drive::{Drive, Op, Sample};
use crate::events::EventTally;
use crate::verdict::Finding;

/// Latency percentiles of one (operation, outcome), in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutcomeStats {
    pub op: Op,
    pub outcome: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub struct Report {
    summary: Value,
    outcomes: Vec<OutcomeStats>,
    audit: Value,
    verdict: Vec<Finding>,
    points: Vec<(f64, f64, &'static str)>,
    buckets: Vec<(f64, u64)>,
    /// Answers per outcome over time: the slot width in seconds, then per outcome the count
    /// in each slot.
    timeline: (f64, Vec<(String, Vec<u64>)>),
    /// With `--consume-events`: per event, (occurred since the first, settlement lag, event
    /// lag) in seconds.
    event_lags: Vec<(f64, f64, f64)>,
}

/// Slots of the "answers over time" chart.
const SLOTS: usize = 60;

/// Where each figure of this report is on the gate's own `/metrics`, so a run can be read
/// beside a Grafana dashboard (ops/grafana) or the console.
const METRICS_KEY: &[(&str, &str)] = &[
    (
        "reserve answers by outcome",
        "flashgate_sale_outcomes_total{sku, outcome} (held, replayed, sold_out, rate_limited, shed, refused)",
    ),
    (
        "commits, releases, expiries, rejections",
        "flashgate_sale_outcomes_total{outcome=committed|released|expired|rejected}",
    ),
    (
        "reserve and commit latency",
        "flashgate_sale_call_duration_seconds{call=reserve|commit} (gate side, without the network)",
    ),
    (
        "latency per route and outcome",
        "flashgate_http_request_duration_seconds{route, method, outcome}",
    ),
    (
        "shed / overloaded",
        "flashgate_shed_total, flashgate_admission_refused_total{lane}",
    ),
    (
        "settlement lag",
        "flashgate_settlement_lag_seconds{sku}, flashgate_settlement_backlog{sku}",
    ),
    (
        "event lag (decision to broker confirm), outbox backlog",
        "flashgate_outbox_lag_seconds, flashgate_outbox_pending{sku}",
    ),
];

/// p50, p99 and max of `values` (seconds), in milliseconds.
fn lag_percentiles(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        (values[i] * 1e6).round() / 1e3
    };
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

fn timeline(samples: &[Sample]) -> (f64, Vec<(String, Vec<u64>)>) {
    let end = samples
        .iter()
        .map(|s| s.at.as_secs_f64())
        .fold(0.001, f64::max);
    let width = end / SLOTS as f64;
    let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in samples {
        let label = outcome_label(s);
        let slot = ((s.at.as_secs_f64() / width) as usize).min(SLOTS - 1);
        series.entry(label).or_insert_with(|| vec![0; SLOTS])[slot] += 1;
    }
    (width, series.into_iter().collect())
}

fn op_name(op: Op) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn histogram(samples: &[&Sample]) -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; `saturating_record` keeps outliers at the top.
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    for s in samples {
        h.saturating_record(s.latency.as_micros().max(1) as u64);
    }
    h
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// What a sample is called in the charts and the legend: its operation and outcome.
fn outcome_label(sample: &Sample) -> String {
    format!("{} {}", op_name(sample.op), sample.outcome)
}

/// One colour per outcome label, the same in every chart. The usual outcomes keep a colour of
/// their own from run to run (a hold green, sold out orange, a commit blue, a release purple);
/// the others take the rest of the palette in the timeline's (sorted) order, server errors and
/// transport failures in shades of red.
fn colour_of(labels: &[(String, Vec<u64>)], label: &str) -> &'static str {
    const FIXED: [(&str, &str); 4] = [
        ("reserve 201", "#2ca02c"),
        ("reserve 409 sold_out", "#ff7f0e"),
        ("commit 200", "#1f77b4"),
        ("release 200", "#9467bd"),
    ];
    const OTHERS: [&str; 8] = [
        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39",
    ];
    const FAILURES: [&str; 3] = ["#d62728", "#ff9896", "#a50f15"];
    if let Some((_, colour)) = FIXED.iter().find(|(fixed, _)| *fixed == label) {
        return colour;
    }
    let is_failure = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .is_none_or(|status| status.starts_with('5') || !status.starts_with(char::is_numeric))
    };
    let rank = |failure: bool| {
        labels
            .iter()
            .map(|(l, _)| l.as_str())
            .filter(|l| !FIXED.iter().any(|(fixed, _)| fixed == l) && is_failure(l) == failure)
            .position(|l| l == label)
            .unwrap_or(0)
    };
    if is_failure(label) {
        FAILURES[rank(true) % FAILURES.len()]
    } else {
        OTHERS[rank(false) % OTHERS.len()]
    }
}

/// The chart's legend: each outcome in its colour, down the right edge.
fn legend(svg: &mut String, labels: &[(String, Vec<u64>)], x: f64, top: f64) {
    for (n, (label, _)) in labels.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"{}\" font-size=\"11\" fill=\"{}\">{}</text>",
            top + 14.0 * n as f64,
            colour_of(labels, label),
            escape(label)
        );
    }
}

impl Report {
    pub fn new(
        config: &Config,
        drive: &Drive,
        settlement_lag: Duration,
        audit: Value,
        verdict: Vec<Finding>,
        server_peak_memory_kib: Option<u64>,
        events: Option<&EventTally>,
    ) -> Self {
        let mut groups: BTreeMap<(Op, String), Vec<&Sample>> = BTreeMap::new();
        for s in &drive.samples {
            groups.entry((s.op, s.outcome.clone())).or_default().push(s);
        }
        let outcomes: Vec<OutcomeStats> = groups
            .iter()
            .map(|((op, outcome), samples)| {
                let h = histogram(samples);
                OutcomeStats {
                    op: *op,
                    outcome: outcome.clone(),
                    count: h.len(),
                    p50_ms: ms(h.value_at_quantile(0.5)),
                    p90_ms: ms(h.value_at_quantile(0.9)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    p999_ms: ms(h.value_at_quantile(0.999)),
                    max_ms: ms(h.max()),
                }
            })
            .collect();
        let reserves: Vec<&Sample> = drive
            .samples
            .iter()
            .filter(|s| s.op == Op::Reserve)
            .collect();
        let all_reserves = histogram(&reserves);
        let seconds = drive.duration.as_secs_f64().max(1e-9);
        let holds: usize = drive.buyers.iter().map(|b| b.ids.len()).sum();
        let count = |op: Op, outcome: &str| {
            drive
                .samples
                .iter()
                .filter(|s| s.op == op && s.outcome == outcome)
                .count()
        };
        let refused = json!({
            "sold_out": count(Op::Reserve, "409 sold_out"),
            "rate_limited": count(Op::Reserve, "429 rate_limited"),
            "shed": count(Op::Reserve, "429 shed"),
            "overloaded": count(Op::Reserve, "503 overloaded"),
            "payments_shed_or_overloaded": drive
                .samples
                .iter()
                .filter(|s| s.op != Op::Reserve && s.shed_or_overloaded())
                .count(),
        });
        let summary = json!({
            "sku": config.sku,
            "mode": config.mode,
            "buyers": config.buyers,
            "concurrency": config.concurrency.unwrap_or(config.buyers),
            "rate": config.rate,
            "stock": config.stock,
            "shares": {"double_submit": config.double_submit, "retry": config.retry, "commit": config.commit, "release": config.release},
            "duration_seconds": seconds,
            "requests": drive.samples.len(),
            "requests_per_second": drive.samples.len() as f64 / seconds,
            "reserves_per_second": reserves.len() as f64 / seconds,
            "reserve_latency_ms": {
                "p50": ms(all_reserves.value_at_quantile(0.5)),
                "p90": ms(all_reserves.value_at_quantile(0.9)),
                "p99": ms(all_reserves.value_at_quantile(0.99)),
                "p999": ms(all_reserves.value_at_quantile(0.999)),
                "max": ms(all_reserves.max()),
            },
            "holds": holds,
            "clients": config.clients,
            "reserves_refused": refused,
            "settlement_lag_seconds": settlement_lag.as_secs_f64(),
            "server_peak_memory_kib": server_peak_memory_kib,
            "events": events.map(|tally| json!({
                "messages": tally.messages,
                "distinct": tally.sequences.len(),
                "duplicates": tally.duplicates.len(),
                "settlement_lag_ms": lag_percentiles(tally.lags.iter().map(|l| l.1).collect()),
                "event_lag_ms": lag_percentiles(tally.lags.iter().map(|l| l.2).collect()),
            })),
        });

        let timeline = timeline(&drive.samples);
        let stride = (drive.samples.len() / 4_000).max(1);
        let points = drive
            .samples
            .iter()
            .step_by(stride)
            .map(|s| {
                (
                    s.at.as_secs_f64(),
                    s.latency.as_secs_f64() * 1000.0,
                    colour_of(&timeline.1, &outcome_label(s)),
                )
            })
            .collect();
        // Reserve latency in log-spaced buckets from 0.1 ms to 10 s, four per decade.
        let edges: Vec<f64> = (0..=20)
            .map(|i| 0.1 * 10f64.powf(f64::from(i) / 4.0))
            .collect();
        let buckets = edges
            .windows(2)
            .map(|w| {
                let count = reserves
                    .iter()
                    .filter(|s| {
                        let l = s.latency.as_secs_f64() * 1000.0;
                        l >= w[0] && l < w[1]
                    })
                    .count() as u64;
                (w[0], count)
            })
            .collect();
        Self {
            summary,
            outcomes,
            audit,
            verdict,
            points,
            buckets,
            timeline,
            event_lags: events.map(|t| t.lags.clone()).unwrap_or_default(),
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict.iter().all(|f| f.passed)
    }

    pub fn json(&self) -> Value {
        json!({
            "summary": self.summary,
            "outcomes": self.outcomes,
            "audit": self.audit,
            "verdict": {"passed": self.passed(), "findings": self.verdict},
            "timeline": {
                "slot_seconds": self.timeline.0,
                "answers": self.timeline.1.iter().map(|(label, counts)| json!({"outcome": label, "counts": counts})).collect::<Vec<_>>(),
            },
            "gate_metrics": METRICS_KEY.iter().map(|(figure, metric)| json!({"figure": figure, "metric": metric})).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} buyers ({} mode) at SKU {} with stock {}: {} requests in {:.2} s = {:.0} requests/s ({:.0} reserves/s)",
            s["buyers"],
            s["mode"].as_str().unwrap_or("?"),
            s["sku"].as_str().unwrap_or("?"),
            s["stock"],
            s["requests"],
            s["duration_seconds"].as_f64().unwrap_or(0.0),
            s["requests_per_second"].as_f64().unwrap_or(0.0),
            s["reserves_per_second"].as_f64().unwrap_or(0.0),
        );
        let r = &s["reserve_latency_ms"];
        let _ = writeln!(
            out,
            "reserve latency ms: p50 {} p90 {} p99 {} p99.9 {} max {}",
            r["p50"], r["p90"], r["p99"], r["p999"], r["max"]
        );
        let f = &s["reserves_refused"];
        let _ = writeln!(
            out,
            "reserves refused: sold out {}, rate-limited per buyer {}, shed per client {}, \
             overloaded (admission) {}; payments refused by shedding or admission: {}",
            f["sold_out"],
            f["rate_limited"],
            f["shed"],
            f["overloaded"],
            f["payments_shed_or_overloaded"]
        );
        let _ = writeln!(
            out,
            "\n{:<8} {:<34} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "outcome", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for o in &self.outcomes {
            let op = serde_json::to_value(o.op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<8} {:<34} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                op, o.outcome, o.count, o.p50_ms, o.p90_ms, o.p99_ms, o.p999_ms, o.max_ms
            );
        }
        let _ = writeln!(
            out,
            "\nholds handed out: {}; settlement lag: {:.2} s; postgres available {} reserved {} sold {} of {}; redis stock {}",
            s["holds"],
            s["settlement_lag_seconds"].as_f64().unwrap_or(0.0),
            self.audit["available"],
            self.audit["reserved"],
            self.audit["sold"],
            self.audit["total"],
            self.audit["redis_stock"]
        );
        if s["events"].is_object() {
            let e = &s["events"];
            let _ = writeln!(
                out,
                "events: {} messages, {} distinct, {} duplicates; settlement lag ms {}; event lag (decision to consumer) ms {}",
                e["messages"],
                e["distinct"],
                e["duplicates"],
                e["settlement_lag_ms"],
                e["event_lag_ms"]
            );
        }
        if let Some(kib) = s["server_peak_memory_kib"].as_u64() {
            let _ = writeln!(
                out,
                "server peak memory (VmHWM): {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
        let _ = writeln!(out, "\nverdict:");
        for f in &self.verdict {
            let _ = writeln!(
                out,
                "  {} {} — {}",
                if f.passed { "PASS" } else { "FAIL" },
                f.name,
                f.detail
            );
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.passed() {
                "VERDICT: PASS"
            } else {
                "VERDICT: FAIL"
            }
        );
        let sku = s["sku"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "on the gate: flashgate_sale_outcomes_total{{sku=\"{sku}\"}} (answers by outcome), \
             flashgate_sale_call_duration_seconds{{call=\"reserve\"|\"commit\"}} (latency), \
             flashgate_settlement_lag_seconds{{sku=\"{sku}\"}}"
        );
        out
    }

    pub fn html(&self) -> String {
        let mut rows = String::new();
        for o in &self.outcomes {
            let op = serde_json::to_value(o.op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = write!(
                rows,
                "<tr><td>{op}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                escape(&o.outcome),
                o.count,
                o.p50_ms,
                o.p90_ms,
                o.p99_ms,
                o.p999_ms,
                o.max_ms
            );
        }
        let mut findings = String::new();
        for f in &self.verdict {
            let _ = write!(
                findings,
                "<li class=\"{}\">{} {} — {}</li>",
                if f.passed { "pass" } else { "fail" },
                if f.passed { "PASS" } else { "FAIL" },
                escape(&f.name),
                escape(&f.detail)
            );
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>flashgate load test</title><style>\
             body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}} table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:nth-child(2),td:first-child{{text-align:left}}\
             .pass{{color:#2ca02c}} .fail{{color:#d62728;font-weight:bold}} pre{{background:#f6f6f6;padding:1em}}</style></head><body>\
             <h1>flashgate load test — {}</h1><h2>Verdict: {}</h2><ul>{findings}</ul>\
             <h2>Latency over time</h2><p>Each dot is a request (sampled to at most 4,000), coloured by \
             outcome as the legend says: a hold green, sold out orange, a commit blue, a release purple, server \
             errors and transport failures red; an outcome has the same colour in every chart. Log scale.</p>{}\
             <h2>Answers over time, by outcome</h2><p>Requests started in each of {} slots of {:.2} s.</p>{}\
             {}\
             <h2>Reserve latency histogram</h2>{}\
             <h2>Per outcome</h2><table><tr><th>op</th><th>outcome</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>\
             <th>p99.9 ms</th><th>max ms</th></tr>{rows}</table>\
             <h2>The same figures on the gate</h2><p>The gate's <code>/metrics</code> (and the Grafana dashboard in \
             <code>ops/grafana</code>) carry these as:</p><table>{}</table>\
             <h2>Summary</h2><pre>{}</pre><h2>Audit</h2><pre>{}</pre></body></html>",
            escape(self.summary["sku"].as_str().unwrap_or("")),
            if self.passed() {
                "<span class=\"pass\">PASS</span>"
            } else {
                "<span class=\"fail\">FAIL</span>"
            },
            self.scatter_svg(),
            SLOTS,
            self.timeline.0,
            self.timeline_svg(),
            self.event_lag_section(),
            self.histogram_svg(),
            METRICS_KEY
                .iter()
                .map(|(figure, metric)| format!(
                    "<tr><td>{}</td><td><code>{}</code></td></tr>",
                    escape(figure),
                    escape(metric)
                ))
                .collect::<String>(),
            escape(&serde_json::to_string_pretty(&self.summary).unwrap_or_default()),
            escape(&serde_json::to_string_pretty(&self.audit).unwrap_or_default()),
        )
    }

    /// With `--consume-events`: each event's settlement lag (decision to Postgres) and event
    /// lag (decision to this consumer) by when it was decided.
    fn event_lag_section(&self) -> String {
        if self.event_lags.is_empty() {
            return String::new();
        }
        let (w, h, pad) = (900.0, 300.0, 50.0);
        let max_t = self.event_lags.iter().map(|l| l.0).fold(0.001, f64::max);
        let (lo, hi) = (0.1f64.log10(), 100_000f64.log10());
        let y = |seconds: f64| {
            let ms = (seconds * 1000.0).clamp(0.1, 100_000.0);
            h - pad - (ms.log10() - lo) / (hi - lo) * (h - 2.0 * pad)
        };
        let mut svg =
            format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">");
        for decade in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0] {
            let y0 = y(decade / 1000.0);
            let _ = write!(
                svg,
                "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#eee\"/><text x=\"4\" y=\"{:.1}\" font-size=\"11\">{decade} ms</text>",
                w - 10.0,
                y0 + 4.0
            );
        }
        let stride = (self.event_lags.len() / 4_000).max(1);
        for (t, settled, published) in self.event_lags.iter().step_by(stride) {
            let x = pad + t / max_t * (w - pad - 10.0);
            let _ = write!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"1.5\" fill=\"#ff7f0e\" fill-opacity=\"0.6\"/>\
                 <circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"1.5\" fill=\"#1f77b4\" fill-opacity=\"0.6\"/>",
                y(*settled),
                y(*published)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\">decided at (s since the first event), 0 – {max_t:.2}</text></svg>",
            w / 2.0 - 100.0,
            h - 10.0
        );
        format!(
            "<h2>Event lag beside settlement lag</h2><p>Per event, by when the gate decided it: \
             <span style=\"color:#ff7f0e\">orange</span> until Postgres recorded it (settlement), \
             <span style=\"color:#1f77b4\">blue</span> until this consumer received it from the \
             broker. Log scale.</p>{svg}"
        )
    }

    /// One line per outcome: answers started per slot.
    fn timeline_svg(&self) -> String {
        let (w, h, pad) = (900.0, 260.0, 40.0);
        let (_, series) = &self.timeline;
        let max = series
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1);
        let x = |i: usize| pad + i as f64 / (SLOTS - 1) as f64 * (w - pad - 160.0);
        let y = |n: u64| h - pad - n as f64 / max as f64 * (h - 2.0 * pad);
        let mut svg =
            format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">");
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">{max}</text><text x=\"4\" y=\"{:.1}\" font-size=\"11\">0</text>",
            y(max) + 4.0,
            y(0) + 4.0
        );
        for (label, counts) in series {
            let points: Vec<String> = counts
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:.1},{:.1}", x(i), y(*c)))
                .collect();
            let _ = write!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                points.join(" "),
                colour_of(series, label)
            );
        }
        legend(&mut svg, series, w - 150.0, pad);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"14\" font-size=\"11\">answers per {:.2} s slot</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">time since start (s), 0 – {:.2}</text></svg>",
            self.timeline.0,
            w / 2.0 - 120.0,
            h - 8.0,
            self.timeline.0 * SLOTS as f64
        );
        svg
    }

    fn scatter_svg(&self) -> String {
        let (w, h, pad) = (1060.0, 360.0, 50.0);
        let plot_w = 900.0;
        let max_t = self.points.iter().map(|p| p.0).fold(0.001, f64::max);
        let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
        let y = |ms: f64| {
            h - pad - (ms.clamp(0.1, 10_000.0).log10() - lo) / (hi - lo) * (h - 2.0 * pad)
        };
        let mut svg =
            format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">");
        for decade in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
            let y0 = y(decade);
            let _ = write!(
                svg,
                "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#eee\"/><text x=\"4\" y=\"{:.1}\" font-size=\"11\">{decade} ms</text>",
                plot_w - 10.0,
                y0 + 4.0
            );
        }
        for (t, l, c) in &self.points {
            let x = pad + t / max_t * (plot_w - pad - 10.0);
            let _ = write!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"1.5\" fill=\"{c}\" fill-opacity=\"0.6\"/>",
                y(*l)
            );
        }
        legend(&mut svg, &self.timeline.1, plot_w + 10.0, pad);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"14\" font-size=\"11\">latency, ms (log scale)</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">time since start (s), 0 – {max_t:.2}</text></svg>",
            plot_w / 2.0 - 80.0,
            h - 10.0
        );
        svg
    }

    fn histogram_svg(&self) -> String {
        let (w, h, pad) = (900.0, 260.0, 40.0);
        let max = self.buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
        let bar = (w - 2.0 * pad) / self.buckets.len().max(1) as f64;
        let mut svg =
            format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">");
        for (i, (edge, count)) in self.buckets.iter().enumerate() {
            let height = *count as f64 / max * (h - 2.0 * pad);
            let x = pad + i as f64 * bar;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"#2ca02c\"><title>≥ {edge:.2} ms: {count}</title></rect>\
                 <text x=\"{x:.1}\" y=\"{}\" font-size=\"9\">{}</text>",
                h - pad - height,
                bar - 2.0,
                h - pad + 12.0,
                if i % 2 == 0 {
                    format!("{edge:.1}")
                } else {
                    String::new()
                }
            );
        }
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"14\" font-size=\"11\">reserves (tallest: {max})</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">reserve latency, ms (log buckets)</text></svg>",
            w / 2.0 - 80.0,
            h - 5.0
        );
        svg
    }
}

fn escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The peak resident memory of a process, from `/proc/<pid>/status` (Linux).
pub fn peak_memory_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
