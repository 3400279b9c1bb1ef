//! The virtual buyers, and what each request's answer and latency were.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flashgate::auth::BearerTokens;
use flashgate::domain::BuyerId;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::config::{Config, Mode};

/// The calls a buyer makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Reserve,
    Commit,
    Release,
}

/// One request: what it was, how it ended, how long it took, and when it started.
#[derive(Debug, Clone)]
pub struct Sample {
    pub op: Op,
    /// `201`, `409 sold_out`, `429 shed` (the gate's per-client shedder), `429 rate_limited`
    /// (the per-buyer limit), `503 overloaded` (admission), `timeout`, ...
    pub outcome: String,
    pub status: Option<u16>,
    pub latency: Duration,
    /// When the request started, from the start of the drive.
    pub at: Duration,
}

impl Sample {
    /// Refused by the gate's own protection (per-client shedding or admission), not by a rule
    /// of the sale: a payment refused this way is a failure of the gate.
    pub fn shed_or_overloaded(&self) -> bool {
        self.outcome == "429 shed" || self.outcome == "503 overloaded"
    }

    /// Worth trying again with the same key: the gate or the network asked for patience.
    fn retryable(&self) -> bool {
        self.outcome == "timeout" || matches!(self.status, Some(429 | 503))
    }
}

/// What one call's answer said beyond its sample.
struct Answer {
    body: Option<Value>,
    retry_after: Option<Duration>,
}

/// What one buyer saw.
#[derive(Debug, Clone, Default)]
pub struct BuyerSeen {
    /// Every reservation id a 201 answered this buyer's key with.
    pub ids: BTreeSet<String>,
}

/// Everything the drive recorded.
#[derive(Debug)]
pub struct Drive {
    pub samples: Vec<Sample>,
    pub buyers: Vec<BuyerSeen>,
    pub duration: Duration,
}

/// Calls to the admin API.
pub struct Admin {
    client: reqwest::Client,
    url: String,
    token: String,
    sku: String,
}

impl Admin {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            url: config
                .url
                .first()
                .map(|u| u.trim_end_matches('/').to_owned())
                .context("no --url")?,
            token: config.admin_token.expose_secret().to_owned(),
            sku: config.sku.clone(),
        })
    }

    /// The same admin client for another SKU.
    pub fn for_sku(&self, sku: &str) -> Self {
        Self {
            client: self.client.clone(),
            url: self.url.clone(),
            token: self.token.clone(),
            sku: sku.to_owned(),
        }
    }

    /// Creates or resets the sale and loads it into Redis (`prewarm?force=true`).
    pub async fn create_sale(&self, config: &Config) -> anyhow::Result<()> {
        self.put_and_prewarm(&json!({
            "name": format!("load test {}", self.sku),
            "price": config.price,
            "currency": "USD",
            "stock": config.stock,
            "per_buyer_limit": config.per_buyer_limit,
            "hold_ttl_seconds": config.hold_ttl_seconds,
        }))
        .await
    }

    /// `PUT /v1/admin/skus/{sku}` with `body`, then `prewarm?force=true`.
    pub async fn put_and_prewarm(&self, body: &Value) -> anyhow::Result<()> {
        let base = format!("{}/v1/admin/skus/{}", self.url, self.sku);
        let put = self
            .client
            .put(&base)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        if !put.status().is_success() {
            bail!(
                "PUT {base}: {} {}",
                put.status(),
                put.text().await.unwrap_or_default()
            );
        }
        let warm = self
            .client
            .post(format!("{base}/prewarm?force=true"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !warm.status().is_success() {
            bail!(
                "prewarm {}: {} {}",
                self.sku,
                warm.status(),
                warm.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The sale as the gate has it (`GET /v1/admin/skus/{sku}`).
    pub async fn sale(&self) -> anyhow::Result<Value> {
        self.get_json("").await
    }

    pub async fn audit(&self) -> anyhow::Result<Value> {
        self.get_json("/audit").await
    }

    /// `GET /v1/admin/skus/{sku}{below}` with the admin token; a refusal is an error.
    async fn get_json(&self, below: &str) -> anyhow::Result<Value> {
        let url = format!("{}/v1/admin/skus/{}{below}", self.url, self.sku);
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "GET {url}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json().await?)
    }

    /// Polls the audit until the settler has drained the stream and written back every refusal,
    /// or the timeout passes; returns the last audit either way.
    pub async fn wait_for_settlement(&self, config: &Config) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(config.settle_timeout_seconds);
        loop {
            let audit = self.audit().await?;
            let drained = audit["backlog"] == 0 && audit["pending_write_backs"] == 0;
            if drained || Instant::now() >= deadline {
                return Ok(audit);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Shared by every buyer task.
struct Shared {
    client: reqwest::Client,
    /// Base URLs of the gates.
    gates: Vec<String>,
    config: Config,
    run: u64,
    start: Instant,
}

/// The address virtual buyer `n` comes from with `--clients`: one of `clients` addresses of the
/// benchmarking range 198.18.0.0/15, so they never collide with a real network.
pub(crate) fn client_address(n: usize, clients: usize) -> Option<String> {
    (clients > 0).then(|| {
        let host = (n % clients) as u32 + 1;
        std::net::Ipv4Addr::from(0xC612_0000_u32 + host).to_string()
    })
}

/// Runs every buyer and collects what they saw.
pub async fn drive(config: &Config) -> anyhow::Result<Drive> {
    let tokens = BearerTokens::new(&config.jwt_secret);
    let run: u64 = rand::random::<u32>().into();
    let minted: Vec<String> = (0..config.buyers)
        .map(|n| {
            let buyer = BuyerId::parse(&format!("lt{run}-{n}")).context("buyer id")?;
            tokens
                .mint(&buyer, Duration::from_secs(3600))
                .context("mint a buyer token")
        })
        .collect::<anyhow::Result<_>>()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.connections)
        .timeout(Duration::from_millis(config.timeout_ms))
        .build()?;
    let gates: Vec<String> = config
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    anyhow::ensure!(!gates.is_empty(), "no --url");
    let context = Arc::new(Shared {
        client,
        gates,
        config: config.clone(),
        run,
        start: Instant::now(),
    });
    let progress = if config.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(config.buyers as u64).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} buyers {per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };

    let buyers = minted.into_iter().enumerate().map(|(n, token)| {
        let (context, progress) = (context.clone(), progress.clone());
        async move {
            let scheduled = match context.config.mode {
                Mode::Open => {
                    let at = context.start
                        + Duration::from_secs_f64(n as f64 / context.config.rate.max(0.001));
                    tokio::time::sleep_until(at.into()).await;
                    Some(at)
                }
                Mode::Closed => None,
            };
            let seen = buyer(&context, n, &token, scheduled).await;
            progress.inc(1);
            seen
        }
    });
    let concurrency = match config.mode {
        Mode::Closed => config.concurrency.unwrap_or(config.buyers).max(1),
        // Open mode: every buyer waits for its own arrival time; none may wait for another.
        Mode::Open => config.buyers.max(1),
    };
    let results: Vec<(Vec<Sample>, BuyerSeen)> = futures::stream::iter(buyers)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.finish_and_clear();
    let duration = context.start.elapsed();
    let mut samples = Vec::new();
    let mut seen = Vec::with_capacity(results.len());
    for (buyer_samples, buyer_seen) in results {
        samples.extend(buyer_samples);
        seen.push(buyer_seen);
    }
    Ok(Drive {
        samples,
        buyers: seen,
        duration,
    })
}

/// One virtual buyer: reserve (maybe twice at once, maybe again later), then commit, release or
/// walk away. Its choices come from a generator seeded by its number, so a run is repeatable.
async fn buyer(
    context: &Shared,
    n: usize,
    token: &str,
    scheduled: Option<Instant>,
) -> (Vec<Sample>, BuyerSeen) {
    let config = &context.config;
    let mut rng =
        StdRng::seed_from_u64(context.run ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let key = format!("lt-{}-{n}", context.run);
    let from = client_address(n, config.clients);
    let from = from.as_deref();
    let mut samples = Vec::new();
    let mut seen = BuyerSeen::default();

    // With several gates: this buyer's own gate, and "the next one" for the copy of a double
    // submit, the retry and the payment, so that every cross-gate path is exercised.
    let own = n % context.gates.len();
    let next = (n + 1) % context.gates.len();
    let double = rng.random_bool(config.double_submit.clamp(0.0, 1.0));
    let first = if double {
        let (a, b) = futures::join!(
            reserve(context, own, token, &key, from, scheduled),
            reserve(context, next, token, &key, from, scheduled)
        );
        vec![a, b]
    } else {
        vec![reserve(context, own, token, &key, from, scheduled).await]
    };
    for (answers, id) in first {
        samples.extend(answers);
        seen.ids.extend(id);
    }
    if rng.random_bool(config.retry.clamp(0.0, 1.0)) {
        let (answers, id) = reserve(context, next, token, &key, from, None).await;
        samples.extend(answers);
        seen.ids.extend(id);
    }

    if let Some(id) = seen.ids.iter().next().cloned() {
        let roll: f64 = rng.random();
        let op = if roll < config.commit {
            Some(Op::Commit)
        } else if roll < config.commit + config.release {
            Some(Op::Release)
        } else {
            None // walks away: the hold expires
        };
        if let Some(op) = op {
            let action = if op == Op::Commit {
                "commit"
            } else {
                "release"
            };
            let url = format!("{}/v1/reservations/{id}/{action}", context.gates[next]);
            let (answers, _) = with_retries(context, op, None, || {
                with_client(context.client.post(&url).bearer_auth(token), from)
            })
            .await;
            samples.extend(answers);
        }
    }
    (samples, seen)
}

fn with_client(request: reqwest::RequestBuilder, from: Option<&str>) -> reqwest::RequestBuilder {
    match from {
        Some(address) => request.header("X-Forwarded-For", address),
        None => request,
    }
}

/// A reserve under one idempotency key, with retries. Returns its samples and the reservation
/// id of a 201.
async fn reserve(
    context: &Shared,
    gate: usize,
    token: &str,
    key: &str,
    from: Option<&str>,
    scheduled: Option<Instant>,
) -> (Vec<Sample>, Option<String>) {
    let url = format!(
        "{}/v1/skus/{}/reservations",
        context.gates[gate], context.config.sku
    );
    let (samples, last) = with_retries(context, Op::Reserve, scheduled, || {
        let request = context
            .client
            .post(&url)
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"quantity": 1}));
        with_client(request, from)
    })
    .await;
    let id = samples
        .last()
        .filter(|s| s.status == Some(201))
        .and(last.as_ref())
        .and_then(|b| b["id"].as_str().map(str::to_owned));
    (samples, id)
}

/// Sends a call up to `--attempts` times while its answer asks for patience (a timeout, 503 or
/// 429), waiting `Retry-After` (capped) between tries. Every try is a sample; returns them and
/// the last answer's body. Only the first try of an open-mode arrival counts from its
/// scheduled time.
async fn with_retries(
    context: &Shared,
    op: Op,
    scheduled: Option<Instant>,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> (Vec<Sample>, Option<Value>) {
    let config = &context.config;
    let mut samples = Vec::new();
    let mut body = None;
    for attempt in 0..config.attempts.max(1) {
        let (sample, answer) = send(
            context,
            op,
            request(),
            if attempt == 0 { scheduled } else { None },
        )
        .await;
        let retry = sample.retryable();
        body = answer.body;
        samples.push(sample);
        if !retry || attempt + 1 == config.attempts.max(1) {
            break;
        }
        let wait = answer
            .retry_after
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(config.max_retry_wait_ms));
        // Spread the retries of a refused crowd over the wait instead of returning together.
        let jitter = rand::random_range(0.5..=1.0);
        tokio::time::sleep(wait.mul_f64(jitter)).await;
    }
    (samples, body)
}

async fn send(
    context: &Shared,
    op: Op,
    request: reqwest::RequestBuilder,
    scheduled: Option<Instant>,
) -> (Sample, Answer) {
    let started = scheduled.unwrap_or_else(Instant::now);
    let at = started.saturating_duration_since(context.start);
    let (outcome, status, answer) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            // The gate's shedder and the per-buyer limit both answer `rate_limited`; the
            // RateLimit-Policy names which ("client" or "buyer").
            let shed = header("ratelimit-policy").is_some_and(|p| p.starts_with("\"client\""));
            let body: Option<Value> = response.json().await.ok();
            let code = body
                .as_ref()
                .and_then(|b| b["error"].as_str())
                .map(str::to_owned);
            let outcome = match code {
                Some(_) if status == 429 && shed => "429 shed".to_owned(),
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            };
            (outcome, Some(status), Answer { body, retry_after })
        }
        Err(err) => {
            let outcome = if err.is_timeout() {
                "timeout"
            } else if err.is_connect() {
                "connect_error"
            } else {
                "transport_error"
            };
            let answer = Answer {
                body: None,
                retry_after: None,
            };
            (outcome.to_owned(), None, answer)
        }
    };
    (
        Sample {
            op,
            outcome,
            status,
            latency: started.elapsed(),
            at,
        },
        answer,
    )
}
