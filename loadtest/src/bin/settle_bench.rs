//! `flashgate-settle-bench` — how fast the gate settles what buyers do, over HTTP.
//!
//! Two measurements against running gates (one `--url`, or several on the same stores):
//!
//! - **commits**: `--payers` buyers each reserve one unit of one SKU (not timed), then all of
//!   them commit with `--in-flight` commits at once; reports commits per second over the commit
//!   phase alone and each commit's latency (p50, p99, max). A commit answers only once Postgres
//!   has it, so this is the rate of synchronous settlement on one SKU.
//! - **release latency**: `--releases` rounds, `--release-in-flight` at once, each reserving a
//!   unit, releasing it, then reading the hold every millisecond until it shows
//!   `"settled": true`; reports the time from the release's answer to that read (p50, p99, max).
//!   A release is settled by the background settler, so this is the settler's reaction time.
//!
//! With several `--url`s, each payer commits through another gate than it reserved on. Each
//! buyer comes from its own address through `X-Forwarded-For`: the gates must trust this
//! machine as a proxy (`scripts/settle-bench.sh` sets that up).

#[path = "../admin_client.rs"]
mod admin_client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use flashgate::auth::BearerTokens;
use futures::StreamExt;
use hdrhistogram::Histogram;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// Base URL of a gate; repeat it for several gates on the same stores.
    #[arg(long, env = "FLASHGATE_URL", default_value = "http://127.0.0.1:8080", num_args = 1.., value_delimiter = ',')]
    url: Vec<String>,
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: SecretString,
    #[arg(long, env = "FLASHGATE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: SecretString,
    /// Payers in the commit measurement (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    payers: usize,
    /// Commits (and, before them, reserves) in flight at once.
    #[arg(long, default_value_t = 200)]
    in_flight: usize,
    /// Rounds of the release-latency measurement (0 skips it).
    #[arg(long, default_value_t = 500)]
    releases: usize,
    /// Release rounds in flight at once.
    #[arg(long, default_value_t = 1)]
    release_in_flight: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let bench = Bench::new(&config)?;
    let mut results = serde_json::Map::new();
    if config.payers > 0 {
        let sku = format!("commits-{}", bench.label);
        bench.sale(&sku, config.payers).await?;
        let commits = bench.commits(&sku, config.payers, config.in_flight).await?;
        if !config.json {
            println!(
                "commits: {} payers, {} in flight: {:.0} commits/s over {:.2} s; \
                 latency ms p50 {:.1}, p99 {:.1}, max {:.1}",
                config.payers,
                config.in_flight,
                commits.rate,
                commits.seconds,
                commits.p50,
                commits.p99,
                commits.max
            );
        }
        results.insert("commits".into(), commits.json());
    }
    if config.releases > 0 {
        let sku = format!("releases-{}", bench.label);
        bench.sale(&sku, config.releases.max(1)).await?;
        let releases = bench
            .release_latency(&sku, config.releases, config.release_in_flight)
            .await?;
        if !config.json {
            println!(
                "release -> settled: {} rounds, {} in flight: ms p50 {:.1}, p99 {:.1}, max {:.1}",
                config.releases, config.release_in_flight, releases.p50, releases.p99, releases.max
            );
        }
        results.insert("release_to_settled".into(), releases.json());
    }
    if config.json {
        println!("{}", Value::Object(results));
    }
    Ok(())
}

/// What one measurement saw: latencies in ms and, for the commits, the rate.
struct Measured {
    rate: f64,
    seconds: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Measured {
    fn new(latencies_us: &Histogram<u64>, count: usize, elapsed: Duration) -> Self {
        let ms = |q: f64| latencies_us.value_at_quantile(q) as f64 / 1000.0;
        Self {
            rate: count as f64 / elapsed.as_secs_f64(),
            seconds: elapsed.as_secs_f64(),
            p50: ms(0.5),
            p99: ms(0.99),
            max: latencies_us.max() as f64 / 1000.0,
        }
    }

    fn json(&self) -> Value {
        json!({"per_second": self.rate, "seconds": self.seconds,
            "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }
}

struct Bench {
    client: reqwest::Client,
    gates: Vec<String>,
    admin: String,
    tokens: BearerTokens,
    /// Each buyer's one token, as a buyer's app keeps it from its reserve to its commit.
    buyer_tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Keeps this run's sales and buyers apart from an earlier run's on the same stores.
    label: String,
}

impl Bench {
    fn new(config: &Config) -> anyhow::Result<Arc<Self>> {
        if config.url.is_empty() {
            bail!("no --url");
        }
        Ok(Arc::new(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1024)
                .build()?,
            gates: config
                .url
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            admin: config.admin_token.expose_secret().to_owned(),
            tokens: BearerTokens::new(&config.jwt_secret),
            buyer_tokens: Default::default(),
            label: format!("{:x}", rand::random::<u32>()),
        }))
    }

    fn gate(&self, n: usize) -> &str {
        &self.gates[n % self.gates.len()]
    }

    /// `stock` units, one per buyer, loaded into Redis.
    async fn sale(&self, sku: &str, stock: usize) -> anyhow::Result<()> {
        admin_client::open_sale(&self.client, self.gate(0), &self.admin, sku, stock).await
    }

    fn token(&self, buyer: &str) -> anyhow::Result<String> {
        let mut kept = self
            .buyer_tokens
            .lock()
            .map_err(|_| anyhow::anyhow!("a buyer-token lock was poisoned"))?;
        if let Some(token) = kept.get(buyer) {
            return Ok(token.clone());
        }
        let token = admin_client::buyer_token(&self.tokens, buyer)?;
        kept.insert(buyer.to_owned(), token.clone());
        Ok(token)
    }

    /// Reserves one unit for `buyer` through gate `n`; returns the hold's id.
    async fn reserve(&self, n: usize, sku: &str, buyer: &str) -> anyhow::Result<String> {
        let response = self
            .client
            .post(format!("{}/v1/skus/{sku}/reservations", self.gate(n)))
            .bearer_auth(self.token(buyer)?)
            .header("Idempotency-Key", "k")
            // One client address per buyer, as behind a load balancer (the gate must trust this
            // machine as a proxy), so per-client shedding sees buyers, not the bench.
            .header("X-Forwarded-For", client_address(n))
            .json(&json!({"quantity": 1}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match (status.as_u16(), body["id"].as_str()) {
            (201, Some(id)) => Ok(id.to_owned()),
            _ => bail!("reserve for {buyer}: {status} {body}"),
        }
    }

    /// `commit` or `release` of hold `id` through gate `n`, which must answer 200.
    async fn act(&self, n: usize, id: &str, action: &str, buyer: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(format!("{}/v1/reservations/{id}/{action}", self.gate(n)))
            .bearer_auth(self.token(buyer)?)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 {
            bail!("{action} {id}: {status} {body}");
        }
        Ok(body)
    }

    async fn commits(
        self: &Arc<Self>,
        sku: &str,
        payers: usize,
        in_flight: usize,
    ) -> anyhow::Result<Measured> {
        let buyer = |n: usize| format!("payer-{}-{n}", self.label);
        let holds: Vec<(usize, String)> = futures::stream::iter(0..payers)
            .map(|n| {
                let (bench, buyer) = (self.clone(), buyer(n));
                let sku = sku.to_owned();
                async move { bench.reserve(n, &sku, &buyer).await.map(|id| (n, id)) }
            })
            .buffer_unordered(in_flight.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;

        let started = Instant::now();
        let latencies: Vec<Duration> = futures::stream::iter(holds)
            .map(|(n, id)| {
                let (bench, buyer) = (self.clone(), buyer(n));
                async move {
                    let sent = Instant::now();
                    let body = bench.act(n + 1, &id, "commit", &buyer).await?;
                    if body["status"] != "committed" {
                        bail!("commit {id}: {body}");
                    }
                    Ok(sent.elapsed())
                }
            })
            .buffer_unordered(in_flight.max(1))
            .collect::<Vec<anyhow::Result<Duration>>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let elapsed = started.elapsed();
        Ok(Measured::new(
            &histogram(&latencies)?,
            latencies.len(),
            elapsed,
        ))
    }

    async fn release_latency(
        self: &Arc<Self>,
        sku: &str,
        rounds: usize,
        in_flight: usize,
    ) -> anyhow::Result<Measured> {
        let started = Instant::now();
        let latencies: Vec<Duration> = futures::stream::iter(0..rounds)
            .map(|n| {
                let bench = self.clone();
                let sku = sku.to_owned();
                async move {
                    let buyer = format!("releaser-{}-{n}", bench.label);
                    let id = bench.reserve(n, &sku, &buyer).await?;
                    bench.act(n, &id, "release", &buyer).await?;
                    let released = Instant::now();
                    let token = bench.token(&buyer)?;
                    loop {
                        let read: Value = bench
                            .client
                            .get(format!("{}/v1/reservations/{id}", bench.gate(n)))
                            .bearer_auth(&token)
                            .send()
                            .await?
                            .json()
                            .await?;
                        if read["settled"] == true && read["status"] == "released" {
                            return Ok(released.elapsed());
                        }
                        if released.elapsed() > Duration::from_secs(30) {
                            bail!("release of {id} not settled after 30 s: {read}");
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
            .buffer_unordered(in_flight.max(1))
            .collect::<Vec<anyhow::Result<Duration>>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        Ok(Measured::new(
            &histogram(&latencies)?,
            latencies.len(),
            started.elapsed(),
        ))
    }
}

/// Buyer `n`'s address in the benchmarking range 198.18.0.0/15, which no real network uses.
fn client_address(n: usize) -> String {
    std::net::Ipv4Addr::from(0xC612_0000_u32 + (n % 100_000) as u32 + 1).to_string()
}

fn histogram(latencies: &[Duration]) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for latency in latencies {
        histogram.record(latency.as_micros().max(1) as u64)?;
    }
    Ok(histogram)
}
