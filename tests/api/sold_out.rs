//! The in-process sold-out shortcut: new buyers of a sold-out SKU are answered without Redis,
//! holders still reach Redis (replays stay exact), and units coming back switch it off at once
//! in every gate instance.

use std::time::Duration;

use flashgate::domain::{BuyerId, IdempotencyKey, Quantity, Sku};
use flashgate::gate::{
    BuyerRate, Gate, GateSettings, RedisSettings, Refusal, ReserveOutcome, ReserveRequest,
};
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{AppOptions, TestApp, error_code, redis_url, sale_body, spawn_app_with};

/// Every attempt that reaches Redis leaves a rate-limit key behind.
fn counting_attempts() -> AppOptions {
    AppOptions {
        buyer_rate: Some(BuyerRate {
            per_second: 1000.0,
            burst: 1000,
        }),
        ..AppOptions::default()
    }
}

/// New buyers try until one is refused `sold_out` without reaching Redis: the shortcut is on
/// (the listener subscribes in the background, so the first refusals may still go to Redis).
async fn shortcut_answers(app: &TestApp, sku: &str, tag: &str) -> bool {
    for n in 0..100 {
        let buyer = format!("{tag}-{n}");
        let (status, code, _) = error_code(app.reserve(sku, &buyer, "k", 1).await).await;
        assert_eq!((status, code.as_str()), (409, "sold_out"));
        if !app.reached_redis(sku, &buyer).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[sqlx::test]
async fn a_sold_out_sku_answers_new_buyers_without_redis_but_holders_exactly(pool: PgPool) {
    let app = spawn_app_with(pool, counting_attempts()).await;
    app.open_sale("hot", &sale_body(1, 1)).await;
    let first: Value = app
        .reserve("hot", "alice", "k", 1)
        .await
        .json()
        .await
        .expect("json");

    assert!(
        shortcut_answers(&app, "hot", "new").await,
        "the shortcut never answered"
    );

    // The holder still reaches Redis: her retry replays, and a new key meets her limit.
    let replay = app.reserve("hot", "alice", "k", 1).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.json::<Value>().await.expect("json")["id"],
        first["id"]
    );
    assert_eq!(
        error_code(app.reserve("hot", "alice", "k-2", 1).await)
            .await
            .1,
        "buyer_limit_reached"
    );
    assert_eq!(app.redis_stock("hot").await, 0);
}

#[sqlx::test]
async fn units_coming_back_switch_the_shortcut_off_in_every_instance(pool: PgPool) {
    let app = spawn_app_with(pool, counting_attempts()).await;
    app.open_sale("hot", &sale_body(1, 1)).await;
    let held: Value = app
        .reserve("hot", "alice", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    // A second gate instance on the same Redis namespace, with its own shortcut.
    let other = Gate::connect(
        &RedisSettings {
            cluster: crate::helpers::on_cluster(),
            ..RedisSettings::new(&redis_url(), 4, Duration::from_secs(2))
        },
        GateSettings {
            namespace: app.namespace.clone(),
            idempotency_ttl: Duration::from_secs(3600),
            buyer_rate: Some(BuyerRate {
                per_second: 1000.0,
                burst: 1000,
            }),
            sold_out_shortcut: true,
            holds_per_client: Default::default(),
            hold_quota: None,
            durability: Default::default(),
            reservation_seal: None,
            waiting_room: Default::default(),
            reserve_batching: Default::default(),
        },
    )
    .expect("gate");
    let sku = Sku::parse("hot").expect("sku");
    let key = IdempotencyKey::parse("k").expect("key");
    let reserve = |buyer: &str| {
        let buyer = BuyerId::parse(buyer).expect("buyer");
        let (other, sku, key) = (&other, &sku, &key);
        async move {
            other
                .reserve(ReserveRequest {
                    sku,
                    buyer: &buyer,
                    quantity: Quantity::parse(1).expect("q"),
                    idempotency_key: key,
                    client: None,
                    reference: None,
                    metadata: None,
                    ticket: None,
                })
                .await
                .expect("reserve")
        }
    };
    // Both instances learn the SKU is sold out and answer new buyers without Redis.
    assert!(shortcut_answers(&app, "hot", "new").await);
    let mut other_on = false;
    for n in 0..100 {
        let buyer = format!("probe-{n}");
        assert_eq!(
            reserve(&buyer).await,
            ReserveOutcome::Refused(Refusal::SoldOut { available: 0 })
        );
        if !app.reached_redis("hot", &buyer).await {
            other_on = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(other_on, "the second instance's shortcut never answered");

    // The hold is released through the first instance; the second sells the unit again.
    let id = held["id"].as_str().expect("id");
    assert_eq!(
        app.act(id, "release", &app.token("alice")).await.status(),
        200
    );
    let mut sold = false;
    for n in 0..100 {
        match reserve(&format!("late-{n}")).await {
            ReserveOutcome::Created(_) => {
                sold = true;
                break;
            }
            ReserveOutcome::Refused(Refusal::SoldOut { .. }) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(sold, "the released unit was never sold again");
    assert_eq!(app.redis_stock("hot").await, 0);
}

#[sqlx::test]
async fn a_restock_switches_the_shortcut_off(pool: PgPool) {
    let app = spawn_app_with(pool, counting_attempts()).await;
    app.open_sale("hot", &sale_body(1, 1)).await;
    app.reserve("hot", "alice", "k", 1).await;
    assert!(shortcut_answers(&app, "hot", "new").await);

    let restock = app
        .client
        .post(app.url("/v1/admin/skus/hot/restock"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .expect("restock");
    assert_eq!(restock.status(), 200);

    let mut sold = false;
    for n in 0..100 {
        if app
            .reserve("hot", &format!("after-{n}"), "k", 1)
            .await
            .status()
            == 201
        {
            sold = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sold, "the restocked unit was never sold");
}

#[sqlx::test]
async fn a_lost_message_cannot_make_the_shortcut_lie_for_longer_than_its_max_age(pool: PgPool) {
    let app = spawn_app_with(pool, counting_attempts()).await;
    app.open_sale("hot", &sale_body(1, 1)).await;
    assert_eq!(app.reserve("hot", "alice", "k", 1).await.status(), 201);
    assert!(shortcut_answers(&app, "hot", "early").await, "shortcut on");

    // A unit comes back and the message that says so is lost (a silently dead subscription).
    app.set_redis_stock("hot", 1).await;

    tokio::time::sleep(Duration::from_millis(1_200)).await; // past the shortcut's max age
    let late = app.reserve("hot", "late-buyer", "k", 1).await;
    assert_eq!(
        late.status(),
        201,
        "the entry was re-confirmed from Redis, which has the unit"
    );
}

#[sqlx::test]
async fn a_release_through_this_gate_switches_its_own_shortcut_off_at_once(pool: PgPool) {
    let app = spawn_app_with(pool, counting_attempts()).await;
    app.open_sale("hot", &sale_body(1, 1)).await;
    let held: Value = app
        .reserve("hot", "alice", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    assert!(shortcut_answers(&app, "hot", "early").await, "shortcut on");

    let id = held["id"].as_str().expect("id");
    assert_eq!(
        app.act(id, "release", &app.token("alice")).await.status(),
        200
    );
    // No wait for the pub/sub message: the very next buyer reaches Redis and gets the unit.
    assert_eq!(app.reserve("hot", "next", "k", 1).await.status(), 201);
}

#[sqlx::test]
async fn a_killed_subscription_turns_the_shortcut_off_until_it_is_back(pool: PgPool) {
    // A Redis of this test's own: CLIENT KILL TYPE pubsub must not touch other tests' listeners.
    let redis = crate::helpers::PrivateRedis::start(&[])
        .expect("redis-server is not installed: run the suite through scripts/test.sh");
    let options = AppOptions {
        redis_url: redis.url.clone(),
        redis_cluster: false,
        ..counting_attempts()
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("hot", &sale_body(1, 1)).await;
    assert_eq!(app.reserve("hot", "alice", "k", 1).await.status(), 201);
    let mut direct = redis::Client::open(redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys = app.namespace.sku(&Sku::parse("hot").expect("sku"));
    // New buyers until one is refused without reaching Redis (no rate-limit key): the shortcut
    // is on before the subscription is killed.
    let mut shortcut_on = false;
    for n in 0..100 {
        let buyer = format!("early-{n}");
        let (_, code, _) = error_code(app.reserve("hot", &buyer, "k", 1).await).await;
        assert_eq!(code, "sold_out");
        let reached: bool = redis::cmd("EXISTS")
            .arg(keys.rate_limit(&BuyerId::parse(&buyer).expect("buyer")))
            .query_async(&mut direct)
            .await
            .expect("EXISTS");
        if !reached {
            shortcut_on = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shortcut_on, "the shortcut never turned on");
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut direct)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the gate's subscription was killed");
    // A unit comes back while the listener is down: its message cannot reach the gate.
    let _: () = redis::cmd("SET")
        .arg(keys.stock())
        .arg(1)
        .query_async(&mut direct)
        .await
        .expect("SET");

    // Well inside the entry's 1 s age: only the lost subscription can have turned it off.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.reserve("hot", "after-kill", "k", 1).await.status(), 201);
}

async fn post_floor(app: &TestApp) -> reqwest::Response {
    app.client
        .post(app.url("/v1/skus/gone/floor"))
        .send()
        .await
        .expect("floor")
}

/// The benchmarks' floor route answers what a sold-out reserve answers, byte for byte and
/// header for header (but the request id), and exists only when `FLASHGATE_FLOOR_ROUTE` is set.
#[sqlx::test]
async fn the_floor_route_answers_exactly_what_a_sold_out_reserve_answers(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            floor_route: true,
            ..AppOptions::default()
        },
    )
    .await;
    app.open_sale("gone", &sale_body(0, 1)).await;
    let sold_out = app.reserve("gone", "alice", "k", 1).await;
    let floor = post_floor(&app).await;
    assert_eq!(floor.status(), sold_out.status());
    assert_eq!(floor.status(), 409);
    let headers = |response: &reqwest::Response| {
        let mut named: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "x-request-id" | "date"))
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_owned()))
            .collect();
        named.sort();
        named
    };
    assert_eq!(headers(&floor), headers(&sold_out));
    assert_eq!(
        floor.bytes().await.expect("body"),
        sold_out.bytes().await.expect("body")
    );
}

#[sqlx::test]
async fn without_the_setting_there_is_no_floor_route(pool: PgPool) {
    let app = spawn_app_with(pool, AppOptions::default()).await;
    app.open_sale("gone", &sale_body(0, 1)).await;
    let floor = post_floor(&app).await;
    let (status, code, _) = error_code(floor).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}
