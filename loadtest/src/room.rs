//! `--waiting-room`: a crowd arriving over `--arrival-seconds` at a sale with its waiting room on,
//! beside the same crowd at the same sale without it, in one run; then a burst of places against
//! a burst of holds. The verdict: holds in arrival order, every buyer ending with a hold,
//! `sold_out` or an expired ticket, nobody told `sold_out` holding later, polls answered without
//! Redis calls, nothing oversold and the audit clean.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flashgate::auth::BearerTokens;
use flashgate::domain::BuyerId;
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

use crate::config::Config;

/// Longest one buyer keeps trying (a crowd without a room retries until it is told).
const BUYER_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Ending {
    Hold,
    SoldOut,
    Expired,
    /// Anything else: a refusal the run does not expect, or the deadline.
    Other,
}

/// What one buyer did.
#[derive(Debug, Clone)]
struct Buyer {
    /// 0 = the first to arrive.
    rank: usize,
    /// Requests until the final answer (the place, the polls, the reserve tries; not the commit).
    requests: u32,
    /// From arrival to the final answer.
    waited: Duration,
    /// The shortest `Retry-After` the buyer was given while waiting, in seconds.
    retry_after: Option<u64>,
    ending: Ending,
    /// When the buyer arrived and when its final answer came, from the start of the phase.
    arrived_at: Duration,
    ended_at: Duration,
    /// A hold for its ticket after an answer of `sold_out` (must never happen).
    held_after_sold_out: bool,
    unexpected: Option<String>,
    /// The answers that asked it to try again (`503 overloaded`, `409 not_your_turn`, ...).
    retried: Vec<String>,
}

/// One phase's figures.
#[derive(Debug, serde::Serialize)]
pub struct Phase {
    sku: String,
    waiting_room: bool,
    buyers: usize,
    holds: usize,
    sold_out: usize,
    expired: usize,
    other: usize,
    /// Share of the holds that went to the earliest `stock / per_buyer_limit` arrivals.
    share_to_earliest: f64,
    /// The largest arrival-rank gap between a buyer without a hold and a later one with one.
    largest_inversion: usize,
    mean_requests: f64,
    max_requests: u32,
    /// Buyers whose requests exceeded 2 + waiting time ÷ Retry-After (the place, the reserve,
    /// and one poll per Retry-After).
    over_request_bound: usize,
    /// The latest a buyer told `sold_out` learned it after the last unit was sold (or after it
    /// arrived, if later), in ms.
    sold_out_told_late_ms: u64,
    held_after_sold_out: usize,
    polls: Option<u64>,
    line_reads: Option<u64>,
    duration_ms: u64,
    audit_ok: bool,
    oversold: bool,
    first_unexpected: Option<String>,
    /// Answers that asked a buyer to try again, by status and code.
    retried: std::collections::BTreeMap<String, usize>,
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct RoomRun {
    with_room: Phase,
    without_room: Phase,
    places_per_second: f64,
    holds_per_second: f64,
}

impl RoomRun {
    pub fn passed(&self) -> bool {
        let room = &self.with_room;
        room.share_to_earliest >= 0.99
            && room.other == 0
            && room.held_after_sold_out == 0
            && room.over_request_bound == 0
            && room.audit_ok
            && !room.oversold
            && self.without_room.audit_ok
            && !self.without_room.oversold
            && room.polls.zip(room.line_reads).is_none_or(|(p, r)| r < p)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let row = |name: &str, a: String, b: String| format!("{name:<44} {a:>14} {b:>14}\n");
        out.push_str(&row("", "room on".into(), "room off".into()));
        let (a, b) = (&self.with_room, &self.without_room);
        let pct = |v: f64| format!("{:.2} %", v * 100.0);
        out.push_str(&row("buyers", a.buyers.to_string(), b.buyers.to_string()));
        out.push_str(&row("holds", a.holds.to_string(), b.holds.to_string()));
        out.push_str(&row(
            "told sold_out",
            a.sold_out.to_string(),
            b.sold_out.to_string(),
        ));
        out.push_str(&row(
            "expired tickets",
            a.expired.to_string(),
            b.expired.to_string(),
        ));
        out.push_str(&row(
            "other endings",
            a.other.to_string(),
            b.other.to_string(),
        ));
        out.push_str(&row(
            "holds to the earliest stock/limit arrivals",
            pct(a.share_to_earliest),
            pct(b.share_to_earliest),
        ));
        out.push_str(&row(
            "largest inversion (arrival ranks)",
            a.largest_inversion.to_string(),
            b.largest_inversion.to_string(),
        ));
        out.push_str(&row(
            "requests per buyer, mean",
            format!("{:.2}", a.mean_requests),
            format!("{:.2}", b.mean_requests),
        ));
        out.push_str(&row(
            "requests per buyer, max",
            a.max_requests.to_string(),
            b.max_requests.to_string(),
        ));
        out.push_str(&row(
            "buyers over 2 + wait / Retry-After",
            a.over_request_bound.to_string(),
            "-".into(),
        ));
        out.push_str(&row(
            "sold_out told after sell-out, worst (ms)",
            a.sold_out_told_late_ms.to_string(),
            b.sold_out_told_late_ms.to_string(),
        ));
        out.push_str(&row(
            "held after being told sold_out",
            a.held_after_sold_out.to_string(),
            b.held_after_sold_out.to_string(),
        ));
        let count = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        out.push_str(&row("polls answered", count(a.polls), "-".into()));
        out.push_str(&row(
            "line reads from Redis",
            count(a.line_reads),
            "-".into(),
        ));
        out.push_str(&row(
            "oversold / audit ok",
            format!("{} / {}", a.oversold, a.audit_ok),
            format!("{} / {}", b.oversold, b.audit_ok),
        ));
        out.push_str(&row(
            "phase duration (ms)",
            a.duration_ms.to_string(),
            b.duration_ms.to_string(),
        ));
        for phase in [a, b] {
            if !phase.retried.is_empty() {
                out.push_str(&format!(
                    "answers retried ({}): {:?}\n",
                    phase.sku, phase.retried
                ));
            }
            if let Some(first) = &phase.first_unexpected {
                out.push_str(&format!(
                    "first unexpected answer ({}): {first}\n",
                    phase.sku
                ));
            }
        }
        out.push_str(&format!(
            "burst: places {:.0}/s, holds {:.0}/s, ratio {:.2}x\n",
            self.places_per_second,
            self.holds_per_second,
            self.places_per_second / self.holds_per_second.max(1.0)
        ));
        out.push_str(&format!(
            "verdict: {}\n",
            if self.passed() { "PASS" } else { "FAIL" }
        ));
        out
    }
}

struct Gate {
    client: reqwest::Client,
    url: String,
    admin: crate::drive::Admin,
}

impl Gate {
    /// Creates (or resets) `sku` with `room` (none: the room off) and pre-warms it.
    async fn create(
        &self,
        sku: &str,
        stock: u32,
        limit: u32,
        room: Option<Value>,
    ) -> anyhow::Result<()> {
        let room = room.unwrap_or(json!({
            "enabled": false, "admit_per_second": 100, "admission_window_seconds": 60
        }));
        self.admin
            .for_sku(sku)
            .put_and_prewarm(&json!({
                "name": format!("waiting room test {sku}"),
                "price": "19.99",
                "stock": stock,
                "per_buyer_limit": limit,
                "hold_ttl_seconds": 300,
                "waiting_room": room,
            }))
            .await
    }

    /// A counter of `/metrics` (unlabelled), if the gate serves it here.
    async fn counter(&self, name: &str) -> Option<u64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == name)
                .then(|| parts.next()?.parse::<f64>().ok())
                .flatten()
                .map(|v| v as u64)
        })
    }
}

/// One HTTP answer: status, error code or body, `Retry-After` in seconds.
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

async fn call(request: reqwest::RequestBuilder) -> Answer {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = response.json().await.unwrap_or(Value::Null);
            Answer {
                status,
                body,
                retry_after,
            }
        }
        Err(err) => Answer {
            status: 0,
            body: json!({ "error": if err.is_timeout() { "timeout" } else { "transport_error" } }),
            retry_after: None,
        },
    }
}

fn code(answer: &Answer) -> &str {
    answer.body["error"].as_str().unwrap_or("")
}

struct Crowd {
    client: reqwest::Client,
    /// `--clients`: buyers spread over that many addresses, sent as `X-Forwarded-For`.
    clients: usize,
    url: String,
    sku: String,
    room: bool,
    start: Instant,
}

impl Crowd {
    /// A request of buyer `rank`, from its client address.
    fn from(&self, rank: usize, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match crate::drive::client_address(rank, self.clients) {
            Some(address) => request.header("X-Forwarded-For", address),
            None => request,
        }
    }

    async fn commit(&self, rank: usize, token: &str, hold: &Value) {
        if let Some(id) = hold["id"].as_str() {
            let _ = call(
                self.from(
                    rank,
                    self.client
                        .post(format!("{}/v1/reservations/{id}/commit", self.url))
                        .bearer_auth(token),
                ),
            )
            .await;
        }
    }

    fn reserve(
        &self,
        rank: usize,
        token: &str,
        key: &str,
        ticket: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(format!("{}/v1/skus/{}/reservations", self.url, self.sku))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({ "quantity": 1 }));
        let request = match ticket {
            Some(ticket) => request.header("Queue-Ticket", ticket),
            None => request,
        };
        self.from(rank, request)
    }

    /// One buyer, from its arrival to its final answer; a hold is paid at once.
    async fn buyer(&self, rank: usize, token: String, arrival: Duration) -> Buyer {
        tokio::time::sleep_until((self.start + arrival).into()).await;
        let arrived = Instant::now();
        let mut seen = Buyer {
            rank,
            requests: 0,
            waited: Duration::ZERO,
            retry_after: None,
            ending: Ending::Other,
            arrived_at: self.start.elapsed(),
            ended_at: Duration::ZERO,
            held_after_sold_out: false,
            unexpected: None,
            retried: Vec::new(),
        };
        let mut ticket: Option<String> = None;
        let key = format!("fair-{rank}");
        let ending = loop {
            if arrived.elapsed() > BUYER_DEADLINE {
                seen.unexpected = Some("deadline".into());
                break Ending::Other;
            }
            // Without a room: reserve until told. With one: take a place, wait, then reserve.
            let answer = if self.room && ticket.is_none() {
                call(
                    self.from(
                        rank,
                        self.client
                            .post(format!("{}/v1/skus/{}/queue", self.url, self.sku))
                            .bearer_auth(&token),
                    ),
                )
                .await
            } else {
                call(self.reserve(rank, &token, &key, ticket.as_deref())).await
            };
            seen.requests += 1;
            let mut wait = answer.retry_after.map(Duration::from_secs);
            match (answer.status, code(&answer)) {
                (201, _) => {
                    self.commit(rank, &token, &answer.body).await;
                    break Ending::Hold;
                }
                (202, _) => {
                    ticket = answer.body["ticket"].as_str().map(str::to_owned);
                    // Wait on the place until it is decided.
                    let mut status = answer.body["status"].as_str().unwrap_or("").to_owned();
                    let mut retry = answer.retry_after;
                    while status == "waiting" {
                        let seconds = retry.unwrap_or(1).max(1);
                        seen.retry_after =
                            Some(seen.retry_after.map_or(seconds, |s| s.min(seconds)));
                        tokio::time::sleep(Duration::from_secs(seconds)).await;
                        let Some(raw) = &ticket else { break };
                        let poll = call(
                            self.from(
                                rank,
                                self.client
                                    .get(format!("{}/v1/skus/{}/queue/{raw}", self.url, self.sku))
                                    .bearer_auth(&token),
                            ),
                        )
                        .await;
                        seen.requests += 1;
                        retry = poll.retry_after;
                        match poll.status {
                            200 => {
                                status = poll.body["status"].as_str().unwrap_or("").to_owned();
                            }
                            // The gate or the network asked for patience: poll again.
                            0 | 429 | 503 => {
                                seen.retried
                                    .push(format!("poll {} {}", poll.status, code(&poll)));
                            }
                            _ => {
                                seen.unexpected =
                                    Some(format!("poll {} {}", poll.status, code(&poll)));
                                break;
                            }
                        }
                    }
                    match status.as_str() {
                        "admitted" => continue,
                        "sold_out" => break Ending::SoldOut,
                        "expired" => break Ending::Expired,
                        _ => break Ending::Other,
                    }
                }
                (409, "sold_out") => break Ending::SoldOut,
                (409, "ticket_expired") => break Ending::Expired,
                (409, "not_your_turn") => {
                    seen.retried.push("409 not_your_turn".into());
                    wait = Some(Duration::from_millis(100));
                }
                (status @ (0 | 429 | 503), code) => {
                    seen.retried.push(format!("{status} {code}"));
                }
                (status, code) => {
                    seen.unexpected = Some(format!("{status} {code}"));
                    break Ending::Other;
                }
            }
            let wait = wait
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_secs(2));
            tokio::time::sleep(wait.mul_f64(rand::rng().random_range(0.5..=1.0))).await;
        };
        seen.ending = ending;
        seen.waited = arrived.elapsed();
        seen.ended_at = self.start.elapsed();
        // A buyer told sold_out who tries its ticket anyway must be refused (not counted as a
        // request: the verdict's probe, not the buyer's need).
        if ending == Ending::SoldOut
            && let Some(raw) = &ticket
        {
            let probe = call(self.reserve(rank, &token, &format!("{key}-probe"), Some(raw))).await;
            if probe.status == 201 {
                seen.held_after_sold_out = true;
            }
        }
        seen
    }
}

/// Runs the fairness comparison and the burst; `config.sku` names the SKUs (`-room`, `-direct`,
/// `-places`, `-holds` appended).
pub async fn run(config: &Config) -> anyhow::Result<RoomRun> {
    let url = config
        .url
        .first()
        .map(|u| u.trim_end_matches('/').to_owned())
        .context("no --url")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.connections)
        .timeout(Duration::from_millis(config.timeout_ms))
        .build()?;
    let gate = Gate {
        client: client.clone(),
        url: url.clone(),
        admin: crate::drive::Admin::new(config)?,
    };
    let tokens = BearerTokens::new(&config.jwt_secret);
    let run: u32 = rand::random();
    let mint = |prefix: &str, n: usize| -> anyhow::Result<Vec<String>> {
        (0..n)
            .map(|i| {
                let buyer = BuyerId::parse(&format!("{prefix}{run}-{i}")).context("buyer id")?;
                tokens
                    .mint(&buyer, Duration::from_secs(3600))
                    .context("mint a buyer token")
            })
            .collect()
    };
    let room = json!({
        "enabled": true,
        "admit_per_second": config.admit_per_second,
        "admission_window_seconds": config.admission_window_seconds,
    });
    let mut phases = Vec::new();
    for with_room in [true, false] {
        let sku = format!(
            "{}-{}",
            config.sku,
            if with_room { "room" } else { "direct" }
        );
        gate.create(
            &sku,
            config.stock,
            config.per_buyer_limit,
            with_room.then(|| room.clone()),
        )
        .await?;
        let polls_before = gate.counter("flashgate_room_polls_total").await;
        let reads_before = gate.counter("flashgate_room_line_reads_total").await;
        let tokens = mint(if with_room { "wr" } else { "wd" }, config.buyers)?;
        // Arrival times spread at random over the window; rank = arrival order.
        let mut arrivals: Vec<Duration> = (0..config.buyers)
            .map(|_| {
                Duration::from_secs_f64(
                    rand::rng().random_range(0.0..config.arrival_seconds.max(0.001)),
                )
            })
            .collect();
        arrivals.sort();
        let crowd = Arc::new(Crowd {
            client: client.clone(),
            clients: config.clients,
            url: url.clone(),
            sku: sku.clone(),
            room: with_room,
            start: Instant::now() + Duration::from_millis(200),
        });
        eprintln!(
            "{} buyers arriving over {} s at {sku} (waiting room {}) ...",
            config.buyers,
            config.arrival_seconds,
            if with_room { "on" } else { "off" }
        );
        let buyers: Vec<Buyer> =
            futures::stream::iter(tokens.into_iter().zip(arrivals).enumerate())
                .map(|(rank, (token, arrival))| {
                    let crowd = crowd.clone();
                    async move { crowd.buyer(rank, token, arrival).await }
                })
                .buffer_unordered(config.buyers.max(1))
                .collect()
                .await;
        let duration = crowd.start.elapsed();
        let polls = gate
            .counter("flashgate_room_polls_total")
            .await
            .zip(polls_before)
            .map(|(after, before)| after.saturating_sub(before));
        let line_reads = gate
            .counter("flashgate_room_line_reads_total")
            .await
            .zip(reads_before)
            .map(|(after, before)| after.saturating_sub(before));
        let audit = gate.admin.for_sku(&sku).wait_for_settlement(config).await?;
        phases.push(judge(
            &sku,
            with_room,
            buyers,
            config,
            duration,
            polls.filter(|_| with_room),
            line_reads.filter(|_| with_room),
            &audit,
        ));
    }
    let (places_per_second, holds_per_second) = burst(&gate, &client, config, &mint).await?;
    let without_room = phases.pop().context("no phase")?;
    let with_room = phases.pop().context("no phase")?;
    Ok(RoomRun {
        with_room,
        without_room,
        places_per_second,
        holds_per_second,
    })
}

#[allow(clippy::too_many_arguments)]
fn judge(
    sku: &str,
    waiting_room: bool,
    mut buyers: Vec<Buyer>,
    config: &Config,
    duration: Duration,
    polls: Option<u64>,
    line_reads: Option<u64>,
    audit: &Value,
) -> Phase {
    buyers.sort_by_key(|b| b.rank);
    let count = |ending: Ending| buyers.iter().filter(|b| b.ending == ending).count();
    let holds = count(Ending::Hold);
    let earliest = (config.stock / config.per_buyer_limit.max(1)) as usize;
    let early_holds = buyers
        .iter()
        .filter(|b| b.ending == Ending::Hold && b.rank < earliest)
        .count();
    let first_without = buyers
        .iter()
        .find(|b| b.ending != Ending::Hold)
        .map(|b| b.rank);
    let last_with = buyers
        .iter()
        .rev()
        .find(|b| b.ending == Ending::Hold)
        .map(|b| b.rank);
    let largest_inversion = match (first_without, last_with) {
        (Some(without), Some(with)) if with > without => with - without,
        _ => 0,
    };
    let sold_out_at = buyers
        .iter()
        .filter(|b| b.ending == Ending::Hold)
        .map(|b| b.ended_at)
        .max()
        .unwrap_or_default();
    let sold_out_told_late_ms = buyers
        .iter()
        .filter(|b| b.ending == Ending::SoldOut)
        .map(|b| {
            let since = sold_out_at.max(b.arrived_at);
            b.ended_at.saturating_sub(since).as_millis() as u64
        })
        .max()
        .unwrap_or(0);
    let over_request_bound = buyers
        .iter()
        .filter(|b| {
            let per = b.retry_after.unwrap_or(1).max(1) as f64;
            f64::from(b.requests) > 2.0 + b.waited.as_secs_f64() / per
        })
        .count();
    let total_requests: u64 = buyers.iter().map(|b| u64::from(b.requests)).sum();
    Phase {
        sku: sku.to_owned(),
        waiting_room,
        buyers: buyers.len(),
        holds,
        sold_out: count(Ending::SoldOut),
        expired: count(Ending::Expired),
        other: count(Ending::Other),
        share_to_earliest: if holds == 0 {
            0.0
        } else {
            early_holds as f64 / holds as f64
        },
        largest_inversion,
        mean_requests: total_requests as f64 / buyers.len().max(1) as f64,
        max_requests: buyers.iter().map(|b| b.requests).max().unwrap_or(0),
        over_request_bound,
        sold_out_told_late_ms,
        held_after_sold_out: buyers.iter().filter(|b| b.held_after_sold_out).count(),
        polls,
        line_reads,
        duration_ms: duration.as_millis() as u64,
        audit_ok: audit["ok"] == true,
        oversold: holds > config.stock as usize,
        first_unexpected: buyers.iter().find_map(|b| b.unexpected.clone()),
        retried: buyers.iter().flat_map(|b| b.retried.iter()).fold(
            Default::default(),
            |mut tally, answer| {
                *tally.entry(answer.clone()).or_default() += 1;
                tally
            },
        ),
    }
}

/// The same number of buyers, all at once (`--connections` in flight): first each takes a
/// place on a sale with a room, then each reserves on a sale without one; both with stock for
/// all. Returns (places/s, holds/s).
async fn burst(
    gate: &Gate,
    client: &reqwest::Client,
    config: &Config,
    mint: &dyn Fn(&str, usize) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<(f64, f64)> {
    let n = config.buyers;
    let stock = u32::try_from(n).unwrap_or(u32::MAX);
    let places_sku = format!("{}-places", config.sku);
    let holds_sku = format!("{}-holds", config.sku);
    gate.create(
        &places_sku,
        stock,
        1,
        Some(json!({"enabled": true, "admit_per_second": 100, "admission_window_seconds": 60})),
    )
    .await?;
    gate.create(&holds_sku, stock, 1, None).await?;
    eprintln!(
        "burst: {n} places, then {n} holds, {} in flight ...",
        config.connections
    );
    let mut rates = Vec::new();
    for (sku, places) in [(&places_sku, true), (&holds_sku, false)] {
        let tokens = mint(if places { "bp" } else { "bh" }, n)?;
        let started = Instant::now();
        let ok: usize = futures::stream::iter(tokens.into_iter().enumerate())
            .map(|(i, token)| {
                let from = crate::drive::client_address(i, config.clients);
                let request = if places {
                    client
                        .post(format!("{}/v1/skus/{sku}/queue", gate.url))
                        .bearer_auth(token)
                } else {
                    client
                        .post(format!("{}/v1/skus/{sku}/reservations", gate.url))
                        .bearer_auth(token)
                        .header("Idempotency-Key", format!("burst-{i}"))
                        .json(&json!({ "quantity": 1 }))
                };
                let request = match from {
                    Some(address) => request.header("X-Forwarded-For", address),
                    None => request,
                };
                async move { usize::from(matches!(call(request).await.status, 201 | 202)) }
            })
            .buffer_unordered(config.connections.max(1))
            .fold(0, |sum, ok| async move { sum + ok })
            .await;
        let seconds = started.elapsed().as_secs_f64();
        if ok < n * 9 / 10 {
            bail!("burst on {sku}: only {ok} of {n} calls succeeded");
        }
        rates.push(ok as f64 / seconds);
    }
    Ok((rates[0], rates[1]))
}
