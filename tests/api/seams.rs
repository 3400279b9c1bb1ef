//! The seams between Redis and Postgres (docs/DESIGN.md §10): one SKU's failure stays its own, and
//! neither store is trusted to be configured safely by default.

use std::time::{Duration, Instant};

use flashgate::domain::{ReservationId, Sku};
use flashgate::store::{StatementLimits, Store};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{database_url, sale_body, spawn_app};

#[sqlx::test]
async fn a_poison_sku_does_not_stop_the_settler_for_the_others(pool: PgPool) {
    let app = spawn_app(pool).await;
    // "a-poison" sorts before "b-fine": the settler meets it first on every pass.
    app.open_sale("a-poison", &sale_body(10, 1)).await;
    app.open_sale("b-fine", &sale_body(10, 1)).await;
    app.corrupt_stream("a-poison").await;
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
    let url = database_url(&pool).await;
    let limits = StatementLimits {
        statement_timeout: Duration::from_millis(7_000),
        lock_timeout: Duration::from_millis(1_500),
    };
    let store = Store::connect_lazy(&url, 1, Some(limits)).expect("store");
    let shown: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), \
         current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(store.pool())
    .await
    .expect("settings");
    assert_eq!(
        shown,
        ("7s".to_owned(), "1500ms".to_owned(), "7s".to_owned())
    );

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
    let mut redis = app.redis_connection().await;
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
    // The commit settled the stream through both: Postgres answers for the released hold once
    // its minute is over; the committed one stays for the window.
    let released = ttl(keys.hold(ids[0])).await;
    assert!((1..=60).contains(&released), "released hold ttl {released}");
    let committed = ttl(keys.hold(ids[1])).await;
    assert!(
        (3500..=3600).contains(&committed),
        "committed hold ttl {committed}"
    );
}

/// Two units held and not settled (no settler runs in these tests until asked).
async fn live_sale_with_unsettled_holds(app: &crate::helpers::TestApp) {
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    for buyer in ["alice", "bob"] {
        assert_eq!(app.reserve("sneaker", buyer, "k", 1).await.status(), 201);
    }
}

#[sqlx::test]
async fn a_live_total_moves_both_stores_and_never_below_what_is_held(pool: PgPool) {
    let app = spawn_app(pool).await;
    live_sale_with_unsettled_holds(&app).await;

    let below = app.put_sale("sneaker", &sale_body(1, 5)).await;
    let (status, code, _) = crate::helpers::error_code(below).await;
    assert_eq!((status, code.as_str()), (409, "stock_below_committed"));
    assert_eq!(
        app.redis_stock("sneaker").await,
        8,
        "a refusal changes nothing"
    );

    let lowered: Value = app
        .put_sale("sneaker", &sale_body(4, 5))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (lowered["total"].as_i64(), lowered["live"].as_bool()),
        (Some(4), Some(true))
    );
    assert_eq!(app.redis_stock("sneaker").await, 2);
    assert_eq!(
        app.inventory("sneaker").await,
        (4, 2, 2, 0),
        "settled through the change"
    );
    // The same PUT again moves nothing: an absolute target.
    assert_eq!(
        app.put_sale("sneaker", &sale_body(4, 5)).await.status(),
        200
    );
    assert_eq!(app.redis_stock("sneaker").await, 2);

    for buyer in ["carol", "dave"] {
        assert_eq!(app.reserve("sneaker", buyer, "k", 1).await.status(), 201);
    }
    let (_, code, _) =
        crate::helpers::error_code(app.reserve("sneaker", "erin", "k", 1).await).await;
    assert_eq!(code, "sold_out", "exactly the new total was sold");
    app.settler()
        .drain(&Sku::parse("sneaker").expect("sku"))
        .await
        .expect("drain");
    assert_eq!(app.inventory("sneaker").await, (4, 0, 4, 0));
    assert!(app.audit("sneaker").await.ok());
}

#[sqlx::test]
async fn price_limit_ttl_and_window_of_a_live_sale_change_in_the_gate(pool: PgPool) {
    let app = spawn_app(pool).await;
    live_sale_with_unsettled_holds(&app).await;
    let mut changed = sale_body(10, 1);
    changed["price"] = "29.99".into();
    changed["hold_ttl_seconds"] = 60.into();
    assert_eq!(app.put_sale("sneaker", &changed).await.status(), 200);

    let view = app.get_json("/v1/skus/sneaker", None).await;
    assert_eq!(
        (view["price"].as_str(), view["per_buyer_limit"].as_u64()),
        (Some("29.99"), Some(1))
    );
    let held: Value = app
        .reserve("sneaker", "carol", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(held["unit_price"], "29.99");
    let ttl = chrono::DateTime::parse_from_rfc3339(held["expires_at"].as_str().expect("expires"))
        .expect("rfc3339")
        - chrono::DateTime::parse_from_rfc3339(held["created_at"].as_str().expect("created"))
            .expect("rfc3339");
    assert_eq!(ttl.num_seconds(), 60);
    let (_, code, _) =
        crate::helpers::error_code(app.reserve("sneaker", "carol", "k2", 1).await).await;
    assert_eq!(code, "buyer_limit_reached", "the new limit of 1");

    let mut closed = sale_body(10, 1);
    closed["ends_at"] = "2020-01-01T00:00:00Z".into();
    closed["starts_at"] = "2019-01-01T00:00:00Z".into();
    assert_eq!(app.put_sale("sneaker", &closed).await.status(), 200);
    let (_, code, _) =
        crate::helpers::error_code(app.reserve("sneaker", "dave", "k", 1).await).await;
    assert_eq!(code, "sale_not_open", "the new window");
    app.settler()
        .drain(&Sku::parse("sneaker").expect("sku"))
        .await
        .expect("drain");
    assert!(app.audit("sneaker").await.ok());
}

#[sqlx::test]
async fn a_restock_retried_under_its_key_adds_the_units_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    live_sale_with_unsettled_holds(&app).await;
    let restock = || {
        app.client
            .post(app.url("/v1/admin/skus/sneaker/restock"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .header("Idempotency-Key", "restock-1")
            .json(&serde_json::json!({"quantity": 5}))
            .send()
    };
    for _ in 0..2 {
        let answer: Value = restock()
            .await
            .expect("restock")
            .json()
            .await
            .expect("json");
        assert_eq!(
            (answer["total"].as_i64(), answer["live"].as_bool()),
            (Some(15), Some(true))
        );
    }
    assert_eq!(app.redis_stock("sneaker").await, 13);
    assert_eq!(app.inventory("sneaker").await, (15, 13, 2, 0));
    assert!(app.audit("sneaker").await.ok());
}

#[sqlx::test]
async fn a_forced_prewarm_of_a_live_sale_never_resells_unsettled_units(pool: PgPool) {
    let app = spawn_app(pool).await;
    live_sale_with_unsettled_holds(&app).await;
    assert_eq!(
        app.inventory("sneaker").await,
        (10, 10, 0, 0),
        "nothing settled yet"
    );

    assert_eq!(app.prewarm("sneaker", true).await.status(), 200);
    assert_eq!(
        app.redis_stock("sneaker").await,
        8,
        "not reset to postgres available"
    );
    for n in 0..8 {
        assert_eq!(
            app.reserve("sneaker", &format!("b{n}"), "k", 1)
                .await
                .status(),
            201
        );
    }
    let (_, code, _) =
        crate::helpers::error_code(app.reserve("sneaker", "late", "k", 1).await).await;
    assert_eq!(code, "sold_out");
    app.settler()
        .drain(&Sku::parse("sneaker").expect("sku"))
        .await
        .expect("drain");
    assert_eq!(app.inventory("sneaker").await, (10, 0, 10, 0));
    assert!(app.audit("sneaker").await.ok());
}

#[sqlx::test]
async fn resync_never_loads_stock_that_misses_an_event_appended_after_the_drain(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let held: Value = app
        .reserve("sneaker", "alice", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    let sku = Sku::parse("sneaker").expect("sku");
    app.settler().drain(&sku).await.expect("drain");

    // A release lands after the drain: Redis has the unit back, Postgres not yet.
    let id = held["id"].as_str().expect("id");
    assert_eq!(
        app.act(id, "release", &app.token("alice")).await.status(),
        200
    );
    assert_eq!(app.redis_stock("sneaker").await, 10);

    let loaded = flashgate::app::resync::load_if_settled(&app.gate, &app.store, &sku)
        .await
        .expect("load");
    assert!(
        loaded.is_none(),
        "available (9) misses the release: it must not be loaded"
    );
    assert_eq!(app.redis_stock("sneaker").await, 10);

    app.settler().drain(&sku).await.expect("drain");
    let loaded = flashgate::app::resync::load_if_settled(&app.gate, &app.store, &sku)
        .await
        .expect("load");
    assert_eq!(loaded.map(|r| r.available), Some(10), "settled: now it may");
    assert!(app.audit("sneaker").await.ok());
}

/// A smoke run of resync under concurrent releases; the exact race it guards against is pinned
/// down by the test above.
#[sqlx::test]
async fn resync_racing_releases_leaves_both_stores_agreeing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(60, 1)).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let held: Value = app
            .reserve("sneaker", &format!("b{n}"), "k", 1)
            .await
            .json()
            .await
            .expect("json");
        ids.push((format!("b{n}"), held["id"].as_str().expect("id").to_owned()));
    }
    let sku = Sku::parse("sneaker").expect("sku");
    let releases = async {
        for (buyer, id) in &ids {
            assert_eq!(
                app.act(id, "release", &app.token(buyer)).await.status(),
                200
            );
            tokio::task::yield_now().await;
        }
    };
    let settler = app.settler();
    let resync = async {
        for _ in 0..5 {
            let resynced =
                flashgate::app::resync::resync(&app.gate, &app.store, &settler, &sku, false).await;
            assert!(resynced.is_ok(), "{resynced:?}");
        }
    };
    tokio::join!(releases, resync);

    settler.drain(&sku).await.expect("drain");
    assert_eq!(
        app.redis_stock("sneaker").await,
        60,
        "every released unit is on sale again"
    );
    assert_eq!(app.inventory("sneaker").await, (60, 60, 0, 0));
    assert!(app.audit("sneaker").await.ok());
}

#[sqlx::test]
async fn a_failed_resync_job_does_not_leave_the_sale_paused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    // A corrupt event: the drain cannot get past it, so the resync fails.
    app.corrupt_stream("sneaker").await;

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].is_string() && job["finished_at"].is_string(),
        "{job}"
    );
    assert_eq!(
        app.get_json("/v1/skus/sneaker", None).await["state"],
        "open"
    );
    assert_eq!(
        app.reserve("sneaker", "alice", "k", 1).await.status(),
        201,
        "not paused"
    );

    let unknown = app
        .get(
            &format!("/v1/admin/skus/sneaker/resync/{}", uuid::Uuid::new_v4()),
            Some(crate::helpers::ADMIN_TOKEN),
        )
        .await;
    let (status, code, _) = crate::helpers::error_code(unknown).await;
    assert_eq!((status, code.as_str()), (404, "job_not_found"));
}

/// Waits until `master` reports `replicas` replicas online.
async fn replicas_online(master: &str, replicas: usize) {
    let client = redis::Client::open(master).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for _ in 0..200 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        if info.matches("state=online").count() == replicas {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replicas never came online");
}

#[sqlx::test]
async fn with_replica_durability_a_hold_is_answered_only_once_a_replica_has_it(pool: PgPool) {
    use crate::helpers::{AppOptions, PrivateRedis, error_code, spawn_app_with};
    let master = PrivateRedis::start(&[]).expect("redis-server");
    let port = master.url.rsplit(':').next().expect("port").to_owned();
    let replica = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    replicas_online(&master.url, 1).await;
    let options = AppOptions {
        durability: flashgate::gate::Durability::Replica {
            timeout: Duration::from_millis(300),
        },
        ..AppOptions::on_server(master.url.clone())
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    // As a client does: a 503 not_replicated is retried under the same key, which replays. On a
    // busy machine the replica may miss the 300 ms deadline once or twice.
    let confirmed = |key: &'static str| {
        let app = &app;
        async move {
            for _ in 0..20 {
                let response = app.reserve("sneaker", "alice", key, 1).await;
                if response.status() != 503 {
                    return response;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{key}: no replica confirmed in 20 tries");
        }
    };
    assert_eq!(confirmed("k1").await.status(), 201);

    drop(replica);
    replicas_online(&master.url, 0).await;
    let unconfirmed = app.reserve("sneaker", "alice", "k2", 1).await;
    assert_eq!(unconfirmed.headers()["retry-after"], "1");
    let (status, code, _) = error_code(unconfirmed).await;
    assert_eq!((status, code.as_str()), (503, "not_replicated"));

    // A replica again: the retry replays the hold the master kept, now confirmed.
    let _replica = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    replicas_online(&master.url, 1).await;
    let replayed = confirmed("k2").await;
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let mut conn = redis::Client::open(master.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stock: i64 = redis::cmd("GET")
        .arg(
            app.namespace
                .sku(&Sku::parse("sneaker").expect("sku"))
                .stock(),
        )
        .query_async(&mut conn)
        .await
        .expect("stock");
    assert_eq!(stock, 8, "two holds, each taken once");
}

/// A request deadline or a cancelled commit can drop a future while its `BEGIN` is on the wire.
/// With sqlx 0.8.6 nothing then ends that transaction: the pool hands the connection on, and
/// the next borrower's autocommit writes (a pause, a heartbeat) run inside it and are lost with it.
#[sqlx::test]
async fn a_begin_cancelled_on_the_wire_leaves_no_transaction_open_on_the_pooled_connection(
    pool: PgPool,
) {
    let url = database_url(&pool).await;
    // One connection, so every borrower gets the one a cancelled begin touched.
    let store = Store::connect_lazy(&url, 1, None).expect("store");
    // Two autocommit statements get two transaction ids; inside a stale transaction, one.
    let inside_a_transaction = async || {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let id: i64 = sqlx::query_scalar("SELECT txid_current()")
                .fetch_one(store.pool())
                .await
                .expect("probe");
            ids.push(id);
        }
        ids[0] == ids[1]
    };
    assert!(!inside_a_transaction().await);
    let mut cancelled_on_the_wire = 0;
    for attempt in 0..300 {
        // Let the begin run for a few turns of the runtime — each one polls the socket — and
        // drop it wherever it got to, as a deadline would: before its connection, with BEGIN
        // on the wire, or done.
        let turns = attempt % 30;
        let outrun = async {
            for _ in 0..turns {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            tx = store.pool().begin() => drop(tx),
            () = outrun => cancelled_on_the_wire += 1,
        }
        assert!(
            !inside_a_transaction().await,
            "attempt {attempt}: the pool handed out a connection inside a transaction nobody owns"
        );
    }
    assert!(
        cancelled_on_the_wire > 0,
        "no begin was cancelled in flight"
    );
}

/// A sale's change racing its prewarm: on main the prewarm could load the total it read before
/// the change committed in Postgres, leaving Redis selling units Postgres no longer has (or
/// missing ones it added). Changes and prewarms of one sale are now serialised.
#[sqlx::test]
async fn a_change_racing_the_prewarm_leaves_both_stores_with_the_same_total(pool: PgPool) {
    let app = spawn_app(pool).await;
    let skus: Vec<String> = (0..40).map(|n| format!("race-{n}")).collect();
    for sku in &skus {
        let created = app.put_sale(sku, &sale_body(10, 1)).await;
        assert_eq!(created.status(), 200);
    }
    let races = skus.iter().map(|sku| {
        let app = &app;
        async move {
            let smaller = sale_body(4, 1);
            let (warmed, changed) =
                tokio::join!(app.prewarm(sku, false), app.put_sale(sku, &smaller));
            assert_eq!(warmed.status(), 200, "{sku}");
            assert_eq!(changed.status(), 200, "{sku}");
        }
    });
    futures::future::join_all(races).await;
    let mut apart = Vec::new();
    for sku in &skus {
        let sku = Sku::parse(sku).expect("sku");
        app.settler().drain(&sku).await.expect("drain");
        let audit = app.audit(sku.as_str()).await;
        if audit.redis_stock != Some(audit.available) || audit.total != 4 {
            apart.push(format!(
                "{sku}: postgres total {} available {}, redis stock {:?}",
                audit.total, audit.available, audit.redis_stock
            ));
        }
    }
    assert!(apart.is_empty(), "{apart:#?}");
}

/// `WAIT` blocks the connection it is sent on until replicas confirm or its timeout passes, so
/// it must not be sent on the connection every request of the gate shares: one buyer's reserve
/// waiting on a lost replica held every read and commit of the gate behind it (1.4 s of a 1.5 s
/// timeout, measured).
#[sqlx::test]
async fn a_reserve_waiting_for_a_replica_holds_up_no_other_request(pool: PgPool) {
    use crate::helpers::{AppOptions, PrivateRedis, spawn_app_with};
    let master = PrivateRedis::start(&[]).expect("redis-server");
    let port = master.url.rsplit(':').next().expect("port").to_owned();
    let replica = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    replicas_online(&master.url, 1).await;
    let wait = Duration::from_secs(8);
    let options = AppOptions {
        durability: flashgate::gate::Durability::Replica { timeout: wait },
        ..AppOptions::on_server(master.url.clone())
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let ids = [
        app.hold("sneaker", "alice", "k1").await,
        app.hold("sneaker", "alice", "k2").await,
    ];
    drop(replica);
    replicas_online(&master.url, 0).await;

    let mut probe = redis::Client::open(master.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let blocked_clients = async |probe: &mut redis::aio::MultiplexedConnection| {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(probe)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|line| line.strip_prefix("blocked_clients:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .expect("blocked_clients")
    };
    let waiting = app.reserve("sneaker", "bob", "b1", 1);
    let others = async {
        while blocked_clients(&mut probe).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let alice = app.token("alice");
        let path = format!("/v1/reservations/{}", ids[0]);
        let read = tokio::time::timeout(wait / 2, app.get(&path, Some(&alice))).await;
        let commit = tokio::time::timeout(wait / 2, app.act(&ids[1], "commit", &alice)).await;
        let still_waiting = blocked_clients(&mut probe).await;
        (
            read.map(|r| r.status()),
            commit.map(|r| r.status()),
            still_waiting,
        )
    };
    let (waited, (read, commit, still_waiting)) = tokio::join!(waiting, others);
    assert_eq!(
        read.ok(),
        Some(reqwest::StatusCode::OK),
        "a read waited behind WAIT"
    );
    assert_eq!(
        commit.ok(),
        Some(reqwest::StatusCode::OK),
        "a commit waited behind WAIT"
    );
    assert_eq!(
        still_waiting, 1,
        "bob's reserve was still waiting for a replica"
    );
    assert_eq!(waited.status(), 503, "no replica confirmed bob's hold");
}
