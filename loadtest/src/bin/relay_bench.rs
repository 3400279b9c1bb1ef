//! `flashgate-relay-bench` — how fast the relay empties the outbox into RabbitMQ, and how late an
//! event is confirmed under a steady stream of decisions.
//!
//! Runs flashgate's own relay (`flashgate::events::Relay`, publisher confirms) in process against
//! a database and an exchange of its own, with a queue bound to every routing key and drained by
//! a consumer, as an order service would:
//!
//! - **drain**: `--events` rows are written into the outbox of `--skus` sales (not timed), then
//!   the relay starts; reports confirmed publishes per second until every row is marked.
//! - **steady** (`--rate R --seconds S`): the relay runs while R events per second are recorded
//!   (in batches every 10 ms, as a settler's batches arrive); reports the lag from each event's
//!   `occurred_at` to its arrival at the consumer, after the broker confirmed it (p50, p99, max).
//!
//! Needs `DATABASE_URL` (the server; a database `flashgate_relaybench_<pid>` is created and
//! dropped) and `FLASHGATE_AMQP_URL`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::MigrateDatabase as _;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// The Postgres server (its database name is replaced by the bench's own).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: SecretString,
    #[arg(long, env = "FLASHGATE_AMQP_URL", hide_env_values = true)]
    amqp_url: SecretString,
    /// Events in the drain measurement (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Sales the events belong to.
    #[arg(long, default_value_t = 100)]
    skus: usize,
    /// Rows the relay claims and publishes at once (FLASHGATE_RELAY_BATCH).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Events per second recorded in the steady measurement (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    rate: usize,
    /// Length of the steady measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bind no queue: every event comes back unroutable and goes to the dead-letter exchange
    /// (a sale nobody consumes yet).
    #[arg(long)]
    unbound: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let server = config.database_url.expose_secret();
    let server = server.rsplit_once('/').map_or(server, |(s, _)| s);
    let url = format!("{server}/flashgate_relaybench_{}", std::process::id());
    let _ = sqlx::Postgres::drop_database(&url).await;
    sqlx::Postgres::create_database(&url).await?;
    let outcome = run(&config, &url).await;
    let _ = sqlx::Postgres::force_drop_database(&url).await;
    outcome
}

async fn run(config: &Config, url: &str) -> anyhow::Result<()> {
    let store = flashgate::store::Store::connect_lazy(url, 8, None)?;
    store.migrate().await?;
    let pool = store.pool().clone();
    sqlx::query(
        "INSERT INTO skus (sku, name, price, currency, per_buyer_limit, hold_ttl_seconds) \
         SELECT 'bench-' || n, 'bench', 19.99, 'USD', 1, 300 FROM generate_series(1, $1) n",
    )
    .bind(config.skus as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO inventory (sku, total, available) SELECT sku, 1000000, 1000000 FROM skus",
    )
    .execute(&pool)
    .await?;

    let exchange = format!("flashgate.relaybench.{}", std::process::id());
    let broker = Connection::connect(
        config.amqp_url.expose_secret(),
        ConnectionProperties::default(),
    )
    .await
    .context("the broker")?;
    let channel = broker.create_channel().await?;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    if !config.unbound {
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "relay-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Per message, its decision time to its arrival here, in seconds.
    let confirmed_at: std::sync::Arc<std::sync::Mutex<Vec<f64>>> = Default::default();
    {
        let (received, lags) = (received.clone(), confirmed_at.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let occurred = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                    .ok()
                    .and_then(|body| body["occurred_at"].as_str().map(str::to_owned))
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok());
                if let Some(occurred) = occurred {
                    let lag = (chrono::Utc::now() - occurred.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1e6;
                    lags.lock().unwrap_or_else(|p| p.into_inner()).push(lag);
                }
            }
        });
    }
    let relay = flashgate::events::Relay::new(
        store.clone(),
        flashgate::events::RelaySettings {
            batch: config.batch,
            ..Default::default()
        },
    )
    .with_amqp(flashgate::events::AmqpSink::new(
        flashgate::events::AmqpSettings {
            url: config.amqp_url.clone(),
            exchange: exchange.clone(),
            confirm_timeout: Duration::from_secs(10),
        },
    )?);

    if config.events > 0 {
        record(&pool, config.events, config.skus).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let running = {
            let (relay, stop) = (relay, stop.clone());
            tokio::spawn(async move { relay.run(stop).await })
        };
        wait_until_published(&store).await?;
        let seconds = started.elapsed().as_secs_f64();
        stop.cancel();
        let _ = running.await;
        println!(
            "drain: {} events of {} sales, batch {}: {:.0} confirmed publishes/s ({:.2} s); consumer received {}",
            config.events,
            config.skus,
            config.batch,
            config.events as f64 / seconds,
            seconds,
            received.load(std::sync::atomic::Ordering::Relaxed)
        );
    } else {
        drop(relay);
    }

    if config.rate > 0 {
        sqlx::query("DELETE FROM event_outbox")
            .execute(&pool)
            .await?;
        sqlx::query("DELETE FROM outbox_cursor")
            .execute(&pool)
            .await?;
        sqlx::query("UPDATE inventory SET last_event_seq = 0")
            .execute(&pool)
            .await?;
        let relay = flashgate::events::Relay::new(
            store.clone(),
            flashgate::events::RelaySettings {
                batch: config.batch,
                ..Default::default()
            },
        )
        .with_amqp(flashgate::events::AmqpSink::new(
            flashgate::events::AmqpSettings {
                url: config.amqp_url.clone(),
                exchange: exchange.clone(),
                confirm_timeout: Duration::from_secs(10),
            },
        )?);
        confirmed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let before = received.load(std::sync::atomic::Ordering::Relaxed);
        let stop = tokio_util::sync::CancellationToken::new();
        let running = {
            let (relay, stop) = (relay, stop.clone());
            tokio::spawn(async move { relay.run(stop).await })
        };
        // Every 10 ms, that tick's share of the rate, as one committed batch with its
        // sequence numbers (as a settler's batch records them).
        let per_tick = (config.rate / 100).max(1);
        let ticks = config.seconds * 100;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let sku = flashgate::domain::Sku::parse("bench-1")?;
        for _ in 0..ticks {
            tick.tick().await;
            let drafts = (0..per_tick)
                .map(|_| flashgate::events::Draft {
                    facts: flashgate::events::Facts::SalePaused(flashgate::events::SaleFacts {
                        state: "open".into(),
                        stock: flashgate::events::Stock::default(),
                    }),
                    occurred_at: chrono::Utc::now(),
                    stream_event: None,
                })
                .collect();
            store.record_events(&sku, drafts).await?;
        }
        wait_until_published(&store).await?;
        stop.cancel();
        let _ = running.await;
        let expected = before + per_tick as u64 * ticks;
        while !config.unbound && received.load(std::sync::atomic::Ordering::Relaxed) < expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut lags: Vec<f64> = confirmed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        lags.sort_by(f64::total_cmp);
        let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize] * 1000.0;
        println!(
            "steady: {} events/s for {} s ({} events): decision to consumer lag ms p50 {:.1}, p99 {:.1}, max {:.1}",
            per_tick * 100,
            config.seconds,
            lags.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    let _ = channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(
            format!("{exchange}.dlx").as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    pool.close().await;
    Ok(())
}

/// Writes `events` committed-reservation events spread over the sales, sequences per sale
/// from 1, as settlement would have recorded them.
async fn record(pool: &sqlx::PgPool, events: usize, skus: usize) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO event_outbox (id, sku, sequence, kind, body, occurred_at) \
         SELECT gen_random_uuid(), 'bench-' || (n % $2 + 1), n / $2 + 1, 'reservation.committed', \
           json_build_object('id', gen_random_uuid(), 'kind', 'reservation.committed', \
             'sku', 'bench-' || (n % $2 + 1), 'sequence', n / $2 + 1, \
             'occurred_at', now(), 'recorded_at', now(), 'stream_event_id', '1-0', \
             'reservation_id', gen_random_uuid(), 'buyer_id', 'buyer-' || n, 'quantity', 1, \
             'unit_price', '19.99', 'currency', 'USD', 'amount', '19.99')::text, now() \
         FROM generate_series(0, $1 - 1) n",
    )
    .bind(events as i64)
    .bind(skus as i64)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE inventory i SET last_event_seq = c.n FROM \
         (SELECT sku, max(sequence) AS n FROM event_outbox GROUP BY sku) c WHERE c.sku = i.sku",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE event_outbox").execute(pool).await?;
    Ok(())
}

async fn wait_until_published(store: &flashgate::store::Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left = store.events_unsent(flashgate::store::Sink::Amqp).await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} events never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
