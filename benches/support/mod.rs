//! What every benchmark needs: real Redis and Postgres, a private database and namespace, and a
//! clear skip when the services are not reachable.

#![allow(dead_code)] // each bench binary uses its own part

use std::time::Duration;

use flashgate::domain::{BuyerId, Currency, IdempotencyKey, Money, Quantity, SaleDefinition, Sku};
use flashgate::gate::{
    BuyerRate, Gate, GateSettings, Namespace, RedisSettings, ReserveOutcome, ReserveRequest,
};
use flashgate::store::Store;
use futures::StreamExt;
use sqlx::migrate::MigrateDatabase;

/// Runs `count` calls of `call`, at most `concurrency` at a time.
pub async fn concurrently<F, Fut>(count: u64, concurrency: usize, call: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures::stream::iter(0..count)
        .map(call)
        .buffer_unordered(concurrency)
        .for_each(|()| async {})
        .await;
}

pub struct BenchEnv {
    pub gate: Gate,
    pub store: Store,
    pub sku: Sku,
    database_url: String,
    redis_url: String,
    namespace: Namespace,
    next_buyer: std::sync::atomic::AtomicU64,
}

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

impl BenchEnv {
    /// A fresh database and Redis namespace with one open sale of `stock` units, or `None` (after
    /// saying why) when Redis or Postgres cannot be reached.
    pub async fn connect(name: &str, stock: u32, buyer_rate: Option<BuyerRate>) -> Option<Self> {
        let base = server_url(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let redis_url = server_url("REDIS_URL", "redis://127.0.0.1:6379");
        let database_url = format!(
            "{}/flashgate_bench_{name}_{}",
            base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s),
            std::process::id()
        );
        let skip = |why: String| {
            eprintln!(
                "skipping the {name} benchmarks: {why} (set DATABASE_URL and REDIS_URL, or run scripts/services.sh)"
            );
            None
        };
        if let Err(err) = sqlx::Postgres::create_database(&database_url).await {
            return skip(format!("cannot create a database next to {base}: {err}"));
        }
        let store = match Store::connect_lazy(&database_url, 16, None) {
            Ok(store) => store,
            Err(err) => return skip(err.to_string()),
        };
        if let Err(err) = store.migrate().await {
            return skip(format!("cannot migrate: {err}"));
        }
        let namespace = Namespace::parse(&format!("fgbench-{name}-{}", std::process::id())).ok()?;
        let gate = Gate::connect(
            &RedisSettings::new(&redis_url, 64, Duration::from_secs(2)),
            GateSettings {
                namespace: namespace.clone(),
                idempotency_ttl: Duration::from_secs(3600),
                buyer_rate,
                sold_out_shortcut: true,
                holds_per_client: Default::default(),
                hold_quota: None,
                durability: Default::default(),
                reservation_seal: None,
                waiting_room: Default::default(),
                reserve_batching: Default::default(),
            },
        )
        .ok()?;
        if let Err(err) = gate.ping().await {
            return skip(format!("redis at {redis_url} does not answer: {err}"));
        }
        let sku = Sku::parse("bench").ok()?;
        let sale = SaleDefinition {
            name: "Bench".into(),
            price: Money::parse("9.99").ok()?,
            currency: Currency::parse("USD").ok()?,
            stock,
            per_buyer_limit: 1_000_000,
            hold_ttl_seconds: 3600,
            starts_at: None,
            ends_at: None,
            waiting_room: None,
        };
        let record = store.upsert_sku(&sku, &sale, true).await.ok()?;
        gate.prewarm(&record, true).await.ok()?;
        Some(Self {
            gate,
            store,
            sku,
            database_url,
            redis_url,
            namespace,
            next_buyer: 0.into(),
        })
    }

    /// Creates `count` holds of one unit, each for a new buyer, `concurrency` at a time.
    pub async fn make_holds(&self, count: u64, concurrency: usize) -> u64 {
        let first = self
            .next_buyer
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let key = IdempotencyKey::parse("k").expect("key");
        let created = futures::stream::iter(first..first + count)
            .map(|n| {
                let key = &key;
                async move {
                    let buyer = BuyerId::parse(&format!("b{n}")).expect("buyer");
                    let request = ReserveRequest {
                        sku: &self.sku,
                        buyer: &buyer,
                        quantity: Quantity::parse(1).expect("quantity"),
                        idempotency_key: key,
                        client: None,
                        reference: None,
                        metadata: None,
                        ticket: None,
                    };
                    matches!(
                        self.gate.reserve(request).await,
                        Ok(ReserveOutcome::Created(_))
                    )
                }
            })
            .buffer_unordered(concurrency)
            .filter(|created| futures::future::ready(*created))
            .count()
            .await;
        created as u64
    }

    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Deletes the namespace's keys and the database. One `DEL` per key, pipelined: a `DEL` of
    /// many keys would be refused where they span cluster slots.
    pub async fn cleanup(self) {
        if let Ok(client) = redis::Client::open(self.redis_url.as_str())
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> =
                redis::Commands::scan_match(&mut conn, self.namespace.pattern())
                    .map(|iter| iter.filter_map(Result::ok).collect())
                    .unwrap_or_default();
            for chunk in keys.chunks(1000) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.del(key).ignore();
                }
                let _: redis::RedisResult<()> = pipe.exec(&mut conn);
            }
        }
        self.store.pool().close().await;
        let _ = sqlx::Postgres::force_drop_database(&self.database_url).await;
    }
}
