//! `flashgate-shortcut-race` — measures how long a gate's sold-out shortcut can refuse a buyer
//! after a unit came back through another gate.
//!
//! Two gates on one Redis and one Postgres. Each round: a holder takes the only unit through
//! gate A; a probe buyer is refused `sold_out` by gate B (so B's shortcut knows the SKU is sold
//! out); the holder releases through A; the moment A answers, a new buyer reserves through B.
//! A `409 sold_out` there is a wrong refusal: the unit is on sale. The buyer then retries every
//! millisecond, and the time from A's answer to B's `201` is the refusal window. Meanwhile
//! `--busy` tasks keep gate B busy with new buyers of another sold-out SKU.
//!
//! Run it twice, with `FLASHGATE_SOLD_OUT_SHORTCUT=true` and `false` on the gates, to compare
//! (`scripts/shortcut-race.sh` does both).

#[path = "../admin_client.rs"]
mod admin_client;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use flashgate::auth::BearerTokens;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// Gate A: the holder reserves and releases here.
    #[arg(long)]
    url_a: String,
    /// Gate B: the busy gate, where the new buyer reserves right after the release.
    #[arg(long)]
    url_b: String,
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: SecretString,
    #[arg(long, env = "FLASHGATE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: SecretString,
    /// Release-then-reserve rounds.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Tasks keeping gate B busy with new buyers of a sold-out SKU (0: B idle).
    #[arg(long, default_value_t = 32)]
    busy: usize,
    /// Give up on a wrongly refused buyer after this long, in ms.
    #[arg(long, default_value_t = 5_000)]
    give_up_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let race = Race::new(&config)?;
    let run = race.label.clone();
    race.sale("race").await?;
    race.sale("busy").await?;
    race.reserve(&race.url_b, "busy", "busy-holder", "k")
        .await?
        .expect_created()?;

    let stop = Arc::new(AtomicBool::new(false));
    let busy_answers = Arc::new(AtomicU64::new(0));
    let mut busy = Vec::new();
    for task in 0..config.busy {
        let (race, stop, answers) = (race.clone(), stop.clone(), busy_answers.clone());
        busy.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let buyer = format!("busy-{task}-{n}");
                if race.reserve(&race.url_b, "busy", &buyer, "k").await.is_ok() {
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let busy_started = Instant::now();

    let mut windows_ms: Vec<f64> = Vec::new();
    for round in 0..config.rounds {
        let hold = race
            .reserve(&race.url_a, "race", &format!("holder-{run}-{round}"), "k")
            .await?
            .expect_created()?;
        let probe = race
            .reserve(&race.url_b, "race", &format!("probe-{run}-{round}"), "k")
            .await?;
        if probe.code() != "sold_out" {
            bail!(
                "round {round}: the probe got {} {}",
                probe.status,
                probe.body
            );
        }
        race.act(
            &race.url_a,
            &hold,
            "release",
            &format!("holder-{run}-{round}"),
        )
        .await?;
        let released = Instant::now();
        let buyer = format!("buyer-{run}-{round}");
        let mut refused = false;
        let id = loop {
            let answer = race.reserve(&race.url_b, "race", &buyer, "k").await?;
            if answer.status == 201 {
                break answer.expect_created()?;
            }
            if answer.code() != "sold_out" {
                bail!("round {round}: {} {}", answer.status, answer.body);
            }
            refused = true;
            if released.elapsed() > Duration::from_millis(config.give_up_ms) {
                bail!(
                    "round {round}: gate B still refused after {} ms",
                    config.give_up_ms
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if refused {
            windows_ms.push(released.elapsed().as_secs_f64() * 1000.0);
        }
        race.act(&race.url_a, &id, "release", &buyer).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for task in busy {
        let _ = task.await;
    }
    let busy_rate =
        busy_answers.load(Ordering::Relaxed) as f64 / busy_started.elapsed().as_secs_f64();

    windows_ms.sort_by(f64::total_cmp);
    let pick = |q: f64| -> f64 {
        if windows_ms.is_empty() {
            0.0
        } else {
            windows_ms[((windows_ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    println!(
        "rounds {}: wrong refusals {}; refusal window ms p50 {:.1}, \
         max {:.1}; gate B busy at {busy_rate:.0} answers/s from {} tasks",
        config.rounds,
        windows_ms.len(),
        pick(0.5),
        pick(1.0),
        config.busy
    );
    Ok(())
}

#[derive(Clone)]
struct Race {
    client: reqwest::Client,
    url_a: String,
    url_b: String,
    admin: String,
    tokens: Arc<BearerTokens>,
    /// Distinguishes this run's buyers from an earlier run's on the same sale.
    label: String,
}

struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    fn expect_created(self) -> anyhow::Result<String> {
        match (self.status, self.body["id"].as_str()) {
            (201, Some(id)) => Ok(id.to_owned()),
            _ => bail!("expected a hold, got {} {}", self.status, self.body),
        }
    }
}

impl Race {
    fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(256)
                .build()?,
            url_a: config.url_a.trim_end_matches('/').to_owned(),
            url_b: config.url_b.trim_end_matches('/').to_owned(),
            admin: config.admin_token.expose_secret().to_owned(),
            tokens: Arc::new(BearerTokens::new(&config.jwt_secret)),
            label: format!("{:x}", rand::random::<u32>()),
        })
    }

    /// One unit on sale, one per buyer, loaded into Redis.
    async fn sale(&self, sku: &str) -> anyhow::Result<()> {
        admin_client::open_sale(&self.client, &self.url_a, &self.admin, sku, 1).await
    }

    fn token(&self, buyer: &str) -> anyhow::Result<String> {
        admin_client::buyer_token(&self.tokens, buyer)
    }

    async fn reserve(
        &self,
        url: &str,
        sku: &str,
        buyer: &str,
        key: &str,
    ) -> anyhow::Result<Answer> {
        let response = self
            .client
            .post(format!("{url}/v1/skus/{sku}/reservations"))
            .bearer_auth(self.token(buyer)?)
            .header("Idempotency-Key", key)
            .json(&json!({"quantity": 1}))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok(Answer {
            status,
            body: response.json().await.unwrap_or(Value::Null),
        })
    }

    async fn act(&self, url: &str, id: &str, action: &str, buyer: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{url}/v1/reservations/{id}/{action}"))
            .bearer_auth(self.token(buyer)?)
            .send()
            .await?;
        if response.status() != 200 {
            bail!(
                "{action} {id}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(())
    }
}
