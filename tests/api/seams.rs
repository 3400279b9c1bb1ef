//! The seams between Redis and Postgres (DESIGN.md §10): one SKU's failure stays its own, and
//! neither store is trusted to be configured safely by default.

use std::time::{Duration, Instant};

use flashgate::domain::{ReservationId, Sku};
use flashgate::store::{StatementLimits, Store};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{redis_url, sale_body, spawn_app};

#[sqlx::test]
async fn a_poison_sku_does_not_stop_the_settler_for_the_others(pool: PgPool) {
    let app = spawn_app(pool).await;
    // "a-poison" sorts before "b-fine": the settler meets it first on every pass.
    app.open_sale("a-poison", &sale_body(10, 1)).await;
    app.open_sale("b-fine", &sale_body(10, 1)).await;
    let poison = app.namespace.sku(&Sku::parse("a-poison").expect("sku"));
    let mut redis = redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: String = redis::cmd("XADD")
        .arg(poison.events())
        .arg("*")
        .arg(&["type", "reserved", "id", "not-a-reservation-id"])
        .query_async(&mut redis)
        .await
        .expect("XADD a corrupt event");
    let held: Value = app
        .reserve("b-fine", "alice", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    let id = ReservationId::parse(held["id"].as_str().expect("id")).expect("reservation id");

    let stop = CancellationToken::new();
    let settler = app.settler();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { settler.run(stop).await }
    });
    let started = Instant::now();
    let settled = loop {
        if app
            .store
            .reservation_status(id)
            .await
            .expect("status")
            .is_some()
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    running.await.expect("settler");
    assert!(settled, "b-fine was never settled behind the poison SKU");
    assert_eq!(app.inventory("b-fine").await, (10, 9, 1, 0));
}

#[sqlx::test]
async fn serve_and_settle_pools_carry_statement_and_lock_timeouts(pool: PgPool) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("database");
    let server = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let server = server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s);
    let limits = StatementLimits {
        statement_timeout: Duration::from_millis(7_000),
        lock_timeout: Duration::from_millis(1_500),
    };
    let store =
        Store::connect_lazy(&format!("{server}/{database}"), 1, Some(limits)).expect("store");
    let shown: (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
    )
    .fetch_one(store.pool())
    .await
    .expect("settings");
    assert_eq!(shown, ("7s".to_owned(), "1500ms".to_owned()));

    // A row locked elsewhere now fails the statement after the lock timeout instead of hanging.
    sqlx::raw_sql(
        "CREATE TABLE lock_probe (id int PRIMARY KEY); INSERT INTO lock_probe VALUES (1)",
    )
    .execute(&pool)
    .await
    .expect("probe table");
    let mut holder = pool.begin().await.expect("tx");
    sqlx::query("SELECT id FROM lock_probe WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let started = Instant::now();
    let waited = sqlx::query("SELECT id FROM lock_probe WHERE id = 1 FOR UPDATE")
        .execute(store.pool())
        .await;
    assert!(waited.is_err(), "the lock timeout cancelled the statement");
    assert!(started.elapsed() < Duration::from_secs(6));
    holder.rollback().await.expect("rollback");
}

#[sqlx::test]
async fn terminal_holds_and_the_buyers_set_expire_with_the_idempotency_ttl(pool: PgPool) {
    let app = spawn_app(pool).await; // idempotency ttl: one hour
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    let keys = app.namespace.sku(&Sku::parse("sneaker").expect("sku"));
    let mut redis = redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut ttl = async |key: String| -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .expect("TTL")
    };
    let mut ids = Vec::new();
    for key in ["k1", "k2"] {
        let held: Value = app
            .reserve("sneaker", "alice", key, 1)
            .await
            .json()
            .await
            .expect("json");
        ids.push(ReservationId::parse(held["id"].as_str().expect("id")).expect("id"));
    }

    assert_eq!(
        ttl(keys.hold(ids[0])).await,
        -1,
        "a held hold lives until it leaves 'held'"
    );
    let buyers_ttl = ttl(keys.buyers()).await;
    assert!(
        (3500..=3600).contains(&buyers_ttl),
        "buyers set ttl {buyers_ttl}"
    );

    let alice = app.token("alice");
    assert_eq!(
        app.act(&ids[0].to_string(), "release", &alice)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.act(&ids[1].to_string(), "commit", &alice)
            .await
            .status(),
        200
    );
    for id in &ids {
        let left = ttl(keys.hold(*id)).await;
        assert!((3500..=3600).contains(&left), "terminal hold ttl {left}");
    }
}
