//! `flashgate-redis-scale` — how many holds a second the Redis tier decides, on one Redis or on a
//! Redis Cluster, for one SKU and for several, and what each Redis node's CPU did meanwhile.
//!
//! It drives `Gate::reserve` in process (no HTTP, no settler: the gate's own Redis path, the Lua
//! script included), each call a new buyer taking one unit, `--concurrency` calls in flight
//! spread round-robin over `--skus` sales, for `--seconds`. Redis CPU per node is the change of
//! `used_cpu_sys + used_cpu_user` (`INFO cpu`) over the run, as a share of one core. It prints
//! one JSON line. Each run has its own database and namespace, removed at the end.
//!
//!   flashgate-redis-scale --skus 8 --seconds 10                       # REDIS_URL, one server
//!   FLASHGATE_REDIS_CLUSTER=true REDIS_URL=redis://...:37001,... flashgate-redis-scale --skus 8

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flashgate::domain::{BuyerId, Currency, IdempotencyKey, Money, Quantity, SaleDefinition, Sku};
use flashgate::gate::{
    Gate, GateSettings, Namespace, RedisSettings, ReserveOutcome, ReserveRequest,
};
use flashgate::store::Store;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "FLASHGATE_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    redis_cluster: bool,
    /// A Postgres URL; the run creates its own database beside it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Sales the calls are spread over.
    #[arg(long, default_value_t = 1)]
    skus: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let run = format!("scale_{}_{}", std::process::id(), rand::random::<u32>());
    let base = config
        .database_url
        .rsplit_once('/')
        .map_or(config.database_url.as_str(), |(server, _)| server);
    let database_url = format!("{base}/flashgate_{run}");
    Store::create_database_if_missing(&database_url)
        .await
        .context("create the run's database")?;
    let store = Store::connect_lazy(&database_url, 4, None)?;
    store.migrate().await.context("migrate")?;
    let namespace = Namespace::parse(&run.replace('_', "-"))?;
    let gate = Gate::connect(
        &RedisSettings {
            cluster: config.redis_cluster,
            ..RedisSettings::new(&config.redis_url, 64, Duration::from_secs(2))
        },
        GateSettings {
            namespace: namespace.clone(),
            idempotency_ttl: Duration::from_secs(600),
            buyer_rate: None,
            sold_out_shortcut: false,
            holds_per_client: Default::default(),
            hold_quota: None,
            durability: Default::default(),
            reservation_seal: None,
            waiting_room: Default::default(),
            reserve_batching: Default::default(),
        },
    )?;
    let result = measure(&config, &store, &gate).await;
    cleanup(&config, &namespace).await;
    store.pool().close().await;
    let _ = <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::force_drop_database(&database_url)
        .await;
    println!("{}", result?);
    Ok(())
}

async fn measure(config: &Config, store: &Store, gate: &Gate) -> anyhow::Result<serde_json::Value> {
    let mut skus = Vec::new();
    for n in 0..config.skus.max(1) {
        let sku = Sku::parse(&format!("scale-{n}"))?;
        let sale = SaleDefinition {
            name: "Scale".into(),
            price: Money::parse("9.99")?,
            currency: Currency::parse("USD")?,
            stock: 1_000_000_000,
            per_buyer_limit: 1,
            hold_ttl_seconds: 3600,
            starts_at: None,
            ends_at: None,
            waiting_room: None,
        };
        let record = store.upsert_sku(&sku, &sale, true).await?;
        gate.prewarm(&record, true).await?;
        skus.push(sku);
    }
    let nodes: Vec<String> = config
        .redis_url
        .split(',')
        .map(|url| url.trim().to_owned())
        .collect();
    let cpu_before = cpu_seconds(&nodes).await?;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let skus = Arc::new(skus);
    let workers: Vec<_> = (0..config.concurrency)
        .map(|_| {
            let (gate, skus, stop) = (gate.clone(), skus.clone(), stop.clone());
            let (next, created, failed) = (next.clone(), created.clone(), failed.clone());
            tokio::spawn(async move {
                let key = IdempotencyKey::parse("k").expect("a valid key");
                let one = Quantity::parse(1).expect("a valid quantity");
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Ok(buyer) = BuyerId::parse(&format!("b{n}")) else {
                        continue;
                    };
                    let request = ReserveRequest {
                        sku: &skus[n as usize % skus.len()],
                        buyer: &buyer,
                        quantity: one,
                        idempotency_key: &key,
                        client: None,
                        reference: None,
                        metadata: None,
                        ticket: None,
                    };
                    match gate.reserve(request).await {
                        Ok(ReserveOutcome::Created(_)) => created.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(config.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(&nodes).await?;
    let cpu: Vec<serde_json::Value> = nodes
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|(node, (before, after))| {
            json!({ "node": node, "cpu_percent": ((after - before) / elapsed * 1000.0).round() / 10.0 })
        })
        .collect();
    let created = created.load(Ordering::Relaxed);
    Ok(json!({
        "redis": if config.redis_cluster { "cluster" } else { "single" },
        "nodes": nodes.len(),
        "skus": config.skus,
        "concurrency": config.concurrency,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "holds": created,
        "failed": failed.load(Ordering::Relaxed),
        "holds_per_second": (created as f64 / elapsed).round(),
        "redis_cpu": cpu,
    }))
}

/// `used_cpu_sys + used_cpu_user` of each node, in seconds.
async fn cpu_seconds(nodes: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut seconds = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut conn = redis::Client::open(node.as_str())?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connect to {node}"))?;
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        seconds.push(field("used_cpu_sys:") + field("used_cpu_user:"));
    }
    Ok(seconds)
}

/// Deletes the run's keys from every node: one `DEL` per key (keys of several slots may not
/// share one `DEL` on a cluster).
async fn cleanup(config: &Config, namespace: &Namespace) {
    for node in config.redis_url.split(',') {
        let Ok(client) = redis::Client::open(node.trim()) else {
            continue;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let mut cursor: u64 = 0;
        loop {
            let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(namespace.pattern())
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut conn)
                .await;
            let Ok((next, keys)) = page else { break };
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.del(key).ignore();
            }
            let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}
