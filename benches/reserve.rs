//! Reserving one unit on one hot SKU at 256 concurrent buyers, side by side in one run:
//!
//! - `gate_reserve_lua` — the gate's own client code running `lua/reserve.lua` (every check,
//!   every write, the stream append) against a real Redis;
//! - `evalsha_trivial_floor` — the same number of `EVALSHA`s of a script that returns at once,
//!   over the same connection: the floor any Redis-script gate pays;
//! - `postgres_hot_row_update` — "what people do instead": one conditional
//!   `UPDATE inventory SET available = available - 1 WHERE sku = $1 AND available >= 1` per
//!   buyer, 256 buyers at once over a pool of 64 connections (Postgres allows 100 here).
//!
//! `reservation_ids` (no store needed): minting a plain random id against a sealed one (the
//! HMAC that lets a gate answer `hold_lost`), and checking a seal.
//!
//! `cargo bench --bench reserve` (needs Redis and Postgres; skips with a message otherwise).

mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sqlx::postgres::PgPoolOptions;

const CONCURRENCY: usize = 256;
const PER_ITERATION: u64 = 5_000;

fn reserve(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let Some(env) = runtime.block_on(support::BenchEnv::connect("reserve", 100_000_000, None))
    else {
        return;
    };
    let redis = redis::Client::open(env.redis_url()).expect("redis url");
    let conn = runtime
        .block_on(redis.get_multiplexed_async_connection())
        .expect("redis connection");
    let trivial = redis::Script::new("return 1");
    let hot_row = runtime
        .block_on(
            PgPoolOptions::new()
                .max_connections(64)
                .connect(env.database_url()),
        )
        .expect("postgres pool");

    let mut group = c.benchmark_group("reserve_one_hot_sku_256_concurrent");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(PER_ITERATION));

    group.bench_function("gate_reserve_lua", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    let created = env.make_holds(PER_ITERATION, CONCURRENCY).await;
                    assert_eq!(created, PER_ITERATION);
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("evalsha_trivial_floor", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(timed(iterations, || {
                support::concurrently(PER_ITERATION, CONCURRENCY, |_| {
                    let (mut conn, trivial) = (conn.clone(), &trivial);
                    async move {
                        let _: i64 = trivial.invoke_async(&mut conn).await.expect("EVALSHA");
                    }
                })
            }))
        })
    });

    group.bench_function("postgres_hot_row_update", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(timed(iterations, || {
                support::concurrently(PER_ITERATION, CONCURRENCY, |_| async {
                    let taken = sqlx::query(
                        "UPDATE inventory SET available = available - 1, reserved = reserved + 1 \
                         WHERE sku = $1 AND available >= 1",
                    )
                    .bind("bench")
                    .execute(&hot_row)
                    .await
                    .expect("UPDATE")
                    .rows_affected();
                    assert_eq!(taken, 1);
                })
            }))
        })
    });
    group.finish();
    runtime.block_on(hot_row.close());
    runtime.block_on(env.cleanup());
}

/// Runs `iteration` `iterations` times and returns the time it took.
async fn timed<F, Fut>(iterations: u64, iteration: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for _ in 0..iterations {
        iteration().await;
    }
    start.elapsed()
}

fn reservation_ids(c: &mut Criterion) {
    use flashgate::domain::{ReservationId, ReservationSeal};
    let seal = ReservationSeal::derive(b"a benchmark's buyer-token secret, 32+ bytes");
    let sealed = seal.mint(7);
    let mut group = c.benchmark_group("reservation_ids");
    group.bench_function("generate_unsealed", |b| {
        b.iter(|| ReservationId::generate(std::hint::black_box(7)))
    });
    group.bench_function("mint_sealed", |b| {
        b.iter(|| seal.mint(std::hint::black_box(7)))
    });
    group.bench_function("check_seal", |b| {
        b.iter(|| seal.minted(std::hint::black_box(sealed)))
    });
}

criterion_group!(benches, reservation_ids, reserve);
criterion_main!(benches);
