//! What a buyer was told survives Redis losing, rolling back or failing over its data: the gate
//! stops selling a sale whose stream it can no longer trust, says so, and sells again only after
//! a resync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flashgate::domain::Sku;
use flashgate::settler::{FaultPoint, Faults, SettleError};
use flashgate::sweeper::SweeperSettings;
use redis::AsyncCommands as _;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, error_code, sale_body, spawn_app};

fn sku(code: &str) -> Sku {
    Sku::parse(code).expect("sku")
}

async fn hold_id(app: &TestApp, code: &str, buyer: &str) -> String {
    let response = app.reserve(code, buyer, &format!("{buyer}-key"), 1).await;
    assert_eq!(response.status(), 201, "{buyer}");
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

/// Replaces the SKU's stream by one whose only entry sorts below the settlement cursor, as a
/// replica that lagged (or an older AOF copy) has it.
async fn roll_back_stream(app: &TestApp, code: &str) {
    let events = app.namespace.sku(&sku(code)).events();
    let mut conn = app.redis_connection().await;
    let _: i64 = conn.del(&events).await.expect("DEL");
    let _: String = conn
        .xadd(&events, "1-1", &[("type", "fence")])
        .await
        .expect("XADD below the cursor");
}

#[sqlx::test]
async fn once_the_settler_finds_a_sales_stream_rolled_back_it_sells_nothing_until_a_resync(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    let _background = app.run_background(SweeperSettings {
        interval: Duration::from_millis(50),
        ..SweeperSettings::default()
    });
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    app.open_sale("boot", &sale_body(10, 1)).await;
    hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");

    roll_back_stream(&app, "sneaker").await;
    // The next decision lands on the rolled-back stream and wakes the settler, which finds
    // the stream no longer holding its cursor. From then on: 503 resync_required.
    let mut refused = None;
    for n in 0..100 {
        let response = app
            .reserve("sneaker", &format!("buyer-{n}"), &format!("k-{n}"), 1)
            .await;
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the rolled-back sale kept selling");
    assert_eq!(refused.headers()["retry-after"], "5");
    let (_, code, _) = error_code(refused).await;
    assert_eq!(code, "resync_required");
    // Other sales go on, and the gate stays ready, naming the sale.
    hold_id(&app, "boot", "carol").await;
    let mut ready = Value::Null;
    for _ in 0..50 {
        ready = app.get_json("/readyz", None).await;
        if ready["resync_required"] == serde_json::json!(["sneaker"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(
        ready["resync_required"],
        serde_json::json!(["sneaker"]),
        "{ready}"
    );
    let console = app
        .get_json("/v1/admin/console/sales", Some(crate::helpers::ADMIN_TOKEN))
        .await;
    let sale = console["sales"]
        .as_array()
        .expect("sales")
        .iter()
        .find(|s| s["sku"] == "sneaker")
        .expect("sneaker")
        .clone();
    assert!(sale["resync_required"].is_string(), "{sale}");

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    hold_id(&app, "sneaker", "dave").await;
    let mut ready = Value::Null;
    for _ in 0..50 {
        ready = app.get_json("/readyz", None).await;
        if ready["resync_required"] == serde_json::json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["resync_required"], serde_json::json!([]), "{ready}");
}

#[sqlx::test]
async fn a_live_sale_redis_lost_entirely_is_refused_until_a_resync_not_sold_afresh(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    hold_id(&app, "sneaker", "alice").await;
    app.flush_redis();
    let (status, code, _) = error_code(app.reserve("sneaker", "bob", "b", 1).await).await;
    assert_eq!((status, code.as_str()), (503, "resync_required"));
    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    hold_id(&app, "sneaker", "bob").await;
}

#[sqlx::test]
async fn holds_the_settler_read_reach_postgres_though_redis_lost_them_before_they_settled(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let mut told = Vec::new();
    for n in 0..5 {
        told.push(hold_id(&app, "sneaker", &format!("buyer-{n}")).await);
    }
    // The settler reads the five decisions, then Postgres refuses its batch for a while (on
    // main: a row lock past lock_timeout) — and meanwhile Redis loses everything.
    let refuse_once = Arc::new(AtomicBool::new(true));
    let settler = app.settler().with_faults(Faults::inject(move |point| {
        point == FaultPoint::AfterInserts && refuse_once.swap(false, Ordering::SeqCst)
    }));
    let refused = settler.settle_batch(&sku("sneaker")).await;
    assert!(
        matches!(refused, Err(SettleError::Injected(_))),
        "{refused:?}"
    );
    app.flush_redis();

    // The stream is gone, but what the settler read is still owed to Postgres.
    let drained = settler.drain(&sku("sneaker")).await;
    assert!(
        matches!(drained, Err(SettleError::StreamBroken { .. })),
        "{drained:?}"
    );
    let in_postgres: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservations WHERE sku = 'sneaker' AND status = 'held'",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("count");
    assert_eq!(in_postgres, 5, "holds told 201 vanished with Redis");

    // After the resync, a retry under the same key answers the same hold, never a new one.
    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let retry = app.reserve("sneaker", "buyer-0", "buyer-0-key", 1).await;
    assert!(retry.status().is_success(), "{}", retry.status());
    let body: Value = retry.json().await.expect("json");
    assert_eq!(body["id"].as_str(), Some(told[0].as_str()));
}

#[sqlx::test]
async fn a_statement_postgres_cancels_for_its_lock_timeout_is_answered_503_not_500(pool: PgPool) {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("lock_timeout", "200ms")]);
    let bounded = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("pool");
    let app = spawn_app(bounded).await;
    let created = app.put_sale("sneaker", &sale_body(10, 1)).await;
    assert_eq!(created.status(), 200);
    // Another session holds the sale's inventory row past the gate's lock_timeout.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM inventory WHERE sku = 'sneaker' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let changed = app.put_sale("sneaker", &sale_body(20, 1)).await;
    let retry_after = changed.headers().get("retry-after").cloned();
    let (status, code, _) = error_code(changed).await;
    assert_eq!((status, code.as_str()), (503, "service_unavailable"));
    assert!(retry_after.is_some());
    holder.rollback().await.expect("rollback");
    assert_eq!(
        app.put_sale("sneaker", &sale_body(20, 1)).await.status(),
        200
    );
}

#[sqlx::test]
async fn a_same_key_retry_is_answered_from_redis_at_once_while_postgres_hangs(pool: PgPool) {
    let (proxy, through_proxy) =
        crate::proxy::postgres_behind_proxy(&pool, Duration::from_secs(3)).await;
    let app = spawn_app(through_proxy).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let first = hold_id(&app, "sneaker", "alice").await;
    proxy.freeze();
    let started = std::time::Instant::now();
    let retry = app.reserve("sneaker", "alice", "alice-key", 1).await;
    let waited = started.elapsed();
    assert_eq!(retry.status(), 201);
    let body: Value = retry.json().await.expect("json");
    assert_eq!(body["id"].as_str(), Some(first.as_str()));
    assert_eq!(body["settled"], false);
    // Before, the retry waited out the pool (3 s) or the request deadline.
    assert!(
        waited < Duration::from_secs(2),
        "the retry waited {waited:?}"
    );
    proxy.thaw();
}

#[sqlx::test]
async fn a_hold_recorded_twice_in_one_batch_takes_its_units_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    let response = app.reserve("sneaker", "alice", "alice-key", 2).await;
    assert_eq!(response.status(), 201);
    // Two resyncs at once both re-record the hold: its event is in the stream twice.
    let events = app.namespace.sku(&sku("sneaker")).events();
    let mut conn = app.redis_connection().await;
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(&events).await.expect("XRANGE");
    let reserved = entries
        .ids
        .iter()
        .find(|entry| entry.get::<String>("type").as_deref() == Some("reserved"))
        .expect("the reserved event");
    let fields: Vec<(String, String)> = reserved
        .map
        .keys()
        .map(|field| (field.clone(), reserved.get::<String>(field).expect("field")))
        .collect();
    let _: String = conn.xadd(&events, "*", &fields).await.expect("XADD");

    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // (total, available, reserved, sold): two units held once, not four.
    assert_eq!(app.inventory("sneaker").await, (10, 8, 2, 0));
}

#[sqlx::test]
async fn two_resync_requests_at_once_answer_one_job(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    hold_id(&app, "sneaker", "alice").await;
    let start = || async {
        let response = app
            .client
            .post(app.url("/v1/admin/skus/sneaker/resync"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
            .await
            .expect("resync");
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.expect("json")
    };
    // A double click: the second answers the job the first started.
    let (first, second) = tokio::join!(start(), start());
    assert_eq!(first["job"], second["job"], "{first} {second}");
}

#[sqlx::test]
async fn a_resync_refuses_to_run_beside_another_of_the_same_sale(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    hold_id(&app, "sneaker", "alice").await;
    // Another process (the CLI's prewarm --resync, another gate) is resyncing the sale.
    let elsewhere = app
        .store
        .lock_resync(&sku("sneaker"))
        .await
        .expect("lock")
        .expect("free");
    let settler = app.settler();
    let refused =
        flashgate::app::resync::resync(&app.gate, &app.store, &settler, &sku("sneaker"), false)
            .await;
    assert!(
        matches!(
            refused,
            Err(flashgate::app::resync::ResyncError::AlreadyRunning(_))
        ),
        "{refused:?}"
    );
    // Refused before touching anything: the sale still sells.
    assert_eq!(
        app.reserve("sneaker", "bob", "bob-key", 1).await.status(),
        201
    );
    elsewhere.release().await;
    let report =
        flashgate::app::resync::resync(&app.gate, &app.store, &settler, &sku("sneaker"), false)
            .await
            .expect("resync");
    assert_eq!(report.stock, 8);
}

#[sqlx::test]
async fn a_stock_decrease_postgres_cannot_take_in_full_is_clamped_and_the_sku_settles_on(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    for n in 0..8 {
        hold_id(&app, "sneaker", &format!("buyer-{n}")).await;
    }
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // Redis had drifted above Postgres when an admin lowered the total by 5: its stream says
    // -5, while Postgres has 2 units left.
    let events = app.namespace.sku(&sku("sneaker")).events();
    let mut conn = app.redis_connection().await;
    let _: String = conn
        .xadd(
            &events,
            "*",
            &[("type", "stock"), ("q", "-5"), ("cause", "total")],
        )
        .await
        .expect("XADD");
    hold_id(&app, "sneaker", "late").await; // a later decision the SKU must still settle
    let drained = app.settler().drain(&sku("sneaker")).await;
    assert!(drained.is_ok(), "the SKU is stuck: {drained:?}");
    // Postgres took the 2 units it had; the later hold found none left and was refused.
    assert_eq!(app.inventory("sneaker").await, (8, 0, 8, 0));
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservations WHERE sku = 'sneaker' AND status = 'rejected'",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("count");
    assert_eq!(rejected, 1);
}

#[sqlx::test]
async fn a_failing_safety_net_scan_does_not_stop_settling_what_the_process_knows(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    // Every scan of this settler fails (a cluster master down, say).
    let settler = app
        .settler()
        .with_faults(Faults::inject(|point| point == FaultPoint::Scan));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = {
        let (settler, stop) = (settler.clone(), stop.clone());
        tokio::spawn(async move { settler.run(stop).await })
    };
    for n in 0..3 {
        hold_id(&app, "sneaker", &format!("buyer-{n}")).await;
    }
    // Its gate tells it of the SKU, as a reserve in the same process does.
    settler.hint(&sku("sneaker"));
    let settled = async {
        loop {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reservations WHERE sku = 'sneaker' AND status = 'held'",
            )
            .fetch_one(app.store.pool())
            .await
            .expect("count");
            if held == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), settled).await;
    stop.cancel();
    running.await.expect("settler");
    assert!(outcome.is_ok(), "nothing was settled while the scan failed");
}

#[sqlx::test]
async fn a_resync_past_the_idempotency_window_neither_recounts_buyers_nor_revives_old_holds(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    let id = hold_id(&app, "sneaker", "alice").await;
    let committed = app.act(&id, "commit", &app.token("alice")).await;
    assert_eq!(committed.status(), 200);
    // Past the idempotency window: Redis forgot the hold and its key, as their TTLs do, and
    // Postgres's row left `held` long ago.
    let keys = app.namespace.sku(&sku("sneaker"));
    let hold_key = keys.hold(flashgate::domain::ReservationId::parse(&id).expect("id"));
    let idem_key = keys.idempotency(
        &flashgate::domain::BuyerId::parse("alice").expect("buyer"),
        &flashgate::domain::IdempotencyKey::parse("alice-key").expect("key"),
    );
    let mut conn = app.redis_connection().await;
    let _: i64 = conn.del(&[&hold_key, &idem_key]).await.expect("DEL");
    sqlx::query(
        "UPDATE reservations SET updated_at = now() - interval '2 hours' WHERE sku = 'sneaker'",
    )
    .execute(app.store.pool())
    .await
    .expect("age the row");

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // Alice bought one of her two: she may hold one more (before: her count was 2).
    let second = app.reserve("sneaker", "alice", "alice-second", 1).await;
    assert_eq!(
        second.status(),
        201,
        "{}",
        second.text().await.unwrap_or_default()
    );
    let count: i64 = conn
        .get(keys.buyer(&flashgate::domain::BuyerId::parse("alice").expect("buyer")))
        .await
        .expect("GET");
    assert_eq!(count, 2);
    // The old committed hold was not brought back to life.
    let revived: bool = conn.exists(&hold_key).await.expect("EXISTS");
    assert!(!revived, "a terminal hold past its window was restored");
}

#[sqlx::test]
async fn a_resync_killed_with_the_sale_paused_is_undone_by_the_sweepers(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    hold_id(&app, "sneaker", "alice").await;
    // Another session holds the settlement cursor: the resync pauses the sale, then waits in
    // its drain — where it is killed.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM settlement_cursor WHERE sku = 'sneaker' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let running = {
        let (gate, store, settler) = (app.gate.clone(), app.store.clone(), app.settler());
        tokio::spawn(async move {
            flashgate::app::resync::resync(&gate, &store, &settler, &sku("sneaker"), false).await
        })
    };
    let mut paused = false;
    for n in 0..100 {
        let probe = app
            .reserve("sneaker", &format!("probe-{n}"), &format!("p-{n}"), 1)
            .await;
        if probe.status() == 409 {
            let (_, code, _) = error_code(probe).await;
            if code == "sale_paused" {
                paused = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(paused, "the resync never paused the sale");
    running.abort(); // kill -9
    let _ = running.await;
    holder.rollback().await.expect("rollback");
    // The audit says what is wrong while it lasts.
    let audit = app.audit("sneaker").await;
    assert!(!audit.ok(), "{audit:?}");
    assert!(
        audit
            .checks
            .iter()
            .any(|c| c.detail.contains("postgres records it open")),
        "{audit:?}"
    );

    // A sweeper's scan finds the sale a dead resync left paused and puts back Postgres's state.
    let _background = app.run_background(SweeperSettings {
        interval: Duration::from_millis(50),
        scan_interval: Duration::from_millis(200),
        ..SweeperSettings::default()
    });
    let mut reopened = false;
    for _ in 0..100 {
        if app.reserve("sneaker", "bob", "bob-key", 1).await.status() == 201 {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the sale stayed paused after its resync died");
}

#[sqlx::test]
async fn a_sweeper_that_listed_a_resync_which_has_since_ended_reports_no_dead_resync(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    // The sweeper read the list while a resync ran; by the time it takes the lock the resync
    // has ended and cleared its mark. Redis's paused state here is not a resync's to undo.
    app.gate
        .set_state(&sku("sneaker"), flashgate::domain::SaleState::Paused)
        .await
        .expect("pause");
    let sweeper = flashgate::sweeper::Sweeper::new(
        app.gate.clone(),
        app.store.clone(),
        app.settler().board(),
        SweeperSettings::default(),
    );
    let recovered = sweeper
        .recover_abandoned_pause(&sku("sneaker"))
        .await
        .expect("recover");
    assert!(!recovered, "no resync died");
    let probe = app.reserve("sneaker", "alice", "a", 1).await;
    assert_eq!(error_code(probe).await.1, "sale_paused");
}

#[sqlx::test]
async fn a_key_reused_after_redis_forgot_it_gives_its_units_back_when_postgres_refuses_it(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // Past the idempotency window Redis forgets the key; Postgres's unique key does not.
    let keys = app.namespace.sku(&sku("sneaker"));
    let idem_key = keys.idempotency(
        &flashgate::domain::BuyerId::parse("alice").expect("buyer"),
        &flashgate::domain::IdempotencyKey::parse("alice-key").expect("key"),
    );
    let mut conn = app.redis_connection().await;
    let deleted: i64 = conn.del(&idem_key).await.expect("DEL");
    assert_eq!(deleted, 1, "{idem_key}");
    let reused = app.reserve("sneaker", "alice", "alice-key", 1).await;
    assert_eq!(reused.status(), 201);
    assert!(reused.headers().get("idempotent-replayed").is_none());
    // Postgres refuses it as a duplicate key; its unit must come back to Redis, where it was
    // taken, since Postgres never gave it out.
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    let audit = app.audit("sneaker").await;
    assert_eq!(audit.pending_write_backs, 0);
    assert_eq!(audit.redis_stock, Some(audit.available), "{audit:?}");
    assert_eq!(audit.available, 9);
}

#[sqlx::test]
async fn a_buyers_count_expires_at_the_sales_end_plus_the_idempotency_window(pool: PgPool) {
    let app = spawn_app(pool).await;
    let ends = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut body = sale_body(10, 2);
    body["ends_at"] = serde_json::json!(ends.to_rfc3339());
    app.open_sale("sneaker", &body).await;
    hold_id(&app, "sneaker", "alice").await;
    let key = app
        .namespace
        .sku(&sku("sneaker"))
        .buyer(&flashgate::domain::BuyerId::parse("alice").expect("buyer"));
    let mut conn = app.redis_connection().await;
    let left_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    // The test gate's idempotency window is an hour: the count goes about two hours from now.
    let expected = (ends + chrono::Duration::hours(1) - chrono::Utc::now()).num_milliseconds();
    assert!(
        (left_ms - expected).abs() < 60_000,
        "the buyer's count lives {left_ms} ms, expected about {expected}"
    );
}

#[sqlx::test]
async fn a_hold_redis_lost_before_it_settled_is_answered_hold_lost_and_counted(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let lost = hold_id(&app, "sneaker", "alice").await;
    // Redis loses the hold before the settler read it: neither store has it now.
    app.flush_redis();
    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // On main: 404 reservation_not_found, as for an id nobody was ever given.
    let alice = app.token("alice");
    let (status, code, _) = error_code(
        app.get(&format!("/v1/reservations/{lost}"), Some(&alice))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (410, "hold_lost"));
    for action in ["commit", "release"] {
        let (status, code, _) =
            error_code(app.act(&lost, action, crate::helpers::ADMIN_TOKEN).await).await;
        assert_eq!((status, code.as_str()), (410, "hold_lost"), "{action}");
    }
    let audit = app.audit("sneaker").await;
    assert_eq!(
        audit.lost_holds, 1,
        "asked three times, lost once: {audit:?}"
    );
    assert!(
        !audit.ok(),
        "an audit that knows of a lost hold is not green"
    );
    let metrics = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");
    assert!(metrics.contains("flashgate_lost_holds_total"), "{metrics}");

    // An id this deployment never gave out stays unknown.
    let never_given = flashgate::domain::ReservationId::generate(lost_sku_number(&lost));
    let (status, code, _) = error_code(
        app.get(&format!("/v1/reservations/{never_given}"), Some(&alice))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "reservation_not_found"));
}

#[sqlx::test]
async fn a_refused_hold_redis_has_forgotten_is_not_taken_for_a_lost_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // The key comes back after Redis forgot it: Postgres refuses the second hold at settlement.
    let keys = app.namespace.sku(&sku("sneaker"));
    let alice = flashgate::domain::BuyerId::parse("alice").expect("buyer");
    let idem_key = keys.idempotency(
        &alice,
        &flashgate::domain::IdempotencyKey::parse("alice-key").expect("key"),
    );
    let mut conn = app.redis_connection().await;
    let _: i64 = conn.del(&idem_key).await.expect("DEL");
    let refused = hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // Past the window Redis forgets the refused hold too.
    let id = flashgate::domain::ReservationId::parse(&refused).expect("id");
    let _: i64 = conn.del(keys.hold(id)).await.expect("DEL");
    let (status, code, _) = error_code(
        app.get(
            &format!("/v1/reservations/{refused}"),
            Some(&app.token("alice")),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "reservation_not_found"));
    assert_eq!(app.audit("sneaker").await.lost_holds, 0);
}

fn lost_sku_number(id: &str) -> u32 {
    flashgate::domain::ReservationId::parse(id)
        .expect("id")
        .sku_number()
}

#[sqlx::test]
async fn a_sale_is_never_loaded_live_into_a_second_redis_namespace_unless_forced(pool: PgPool) {
    let live = spawn_app(pool.clone()).await;
    live.open_sale("sneaker", &sale_body(9, 1)).await;
    hold_id(&live, "sneaker", "alice").await;
    live.settler().drain(&sku("sneaker")).await.expect("drain");

    // A gate started with the wrong FLASHGATE_REDIS_NAMESPACE sees nothing of the sale and
    // says a resync is required. On main, following that advice loaded a second live copy
    // there: 18 told 201 for 9 units.
    let misconfigured = spawn_app(pool).await;
    let (status, code, _) =
        error_code(misconfigured.reserve("sneaker", "bob", "bob-key", 1).await).await;
    assert_eq!((status, code.as_str()), (503, "resync_required"));
    for refused in [
        misconfigured.start_resync("sneaker", false).await,
        misconfigured.prewarm("sneaker", false).await,
    ] {
        let (status, code, body) = error_code(refused).await;
        assert_eq!((status, code.as_str()), (409, "namespace_mismatch"));
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("FLASHGATE_REDIS_NAMESPACE"), "{message}");
        assert!(message.contains(live.namespace.as_str()), "{message}");
    }
    let (status, code, _) =
        error_code(misconfigured.reserve("sneaker", "bob", "bob-key", 1).await).await;
    assert_eq!(
        (status, code.as_str()),
        (503, "resync_required"),
        "no copy was made"
    );
    // The sale goes on where it was launched.
    hold_id(&live, "sneaker", "carol").await;

    // Forced — the operator moves the sale, once nothing serves it from the old namespace.
    let job = misconfigured.resync_with("sneaker", true).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    hold_id(&misconfigured, "sneaker", "bob").await;
    let (status, code, _) = error_code(live.prewarm("sneaker", false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "namespace_mismatch"),
        "the sale now lives in the other namespace"
    );
}

#[sqlx::test]
async fn a_commit_on_a_replaced_stream_answers_503_to_retry_never_held_or_500(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let id = hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // A failover replaced the stream: the commit's event lands on a stream that no longer holds
    // the settlement cursor, so Postgres cannot get it until a resync.
    roll_back_stream(&app, "sneaker").await;
    let answer = app.act(&id, "commit", &app.token("alice")).await;
    let retry_after = answer.headers().get("retry-after").cloned();
    let (status, code, body) = error_code(answer).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        code == "service_unavailable" || code == "resync_required",
        "{body}"
    );
    assert!(retry_after.is_some());
    // After the resync the same commit goes through.
    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let committed = app.act(&id, "commit", &app.token("alice")).await;
    assert_eq!(committed.status(), 200);
}

#[sqlx::test]
async fn a_commit_judged_settled_on_a_stream_replaced_under_the_cursor_answers_503(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let id = hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // The stream a failover left behind sorts below the cursor Postgres has: the commit's event
    // is judged settled and never applied. On main: 409 `held`, a refusal the payment service
    // would act on, though the commit stands in Redis.
    sqlx::query(
        "UPDATE settlement_cursor SET last_event_id = '99999999999999-0' WHERE sku = 'sneaker'",
    )
    .execute(app.store.pool())
    .await
    .expect("cursor");
    let answer = app.act(&id, "commit", &app.token("alice")).await;
    assert!(answer.headers().get("retry-after").is_some());
    let (status, code, body) = error_code(answer).await;
    assert_eq!(
        (status, code.as_str()),
        (503, "service_unavailable"),
        "{body}"
    );
}

#[sqlx::test]
async fn a_decision_whose_event_left_the_stream_is_retryable_not_an_internal_error(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // A commit's event that the stream no longer has (Redis replaced it after the decision):
    // on main "settlement invariant broken", answered 500.
    let gone = flashgate::domain::EventId::parse("99999999999999-0").expect("event id");
    let settled = app.settler().settle_through(&sku("sneaker"), gone).await;
    let Err(err) = settled else {
        panic!("an event the stream does not have was judged settled");
    };
    assert!(matches!(err, SettleError::EventMissing { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(flashgate::http::ApiError::from(err).status().as_u16(), 503);
}

#[sqlx::test]
async fn a_released_resync_lock_is_free_at_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    // Asked on a connection already open, so the question reaches Postgres right after the
    // release: a lock freed only when its connection's backend exits is still listed then.
    let mut onlooker = pool.acquire().await.expect("connection");
    for round in 0..200 {
        let lock = app
            .store
            .lock_resync(&sku("sneaker"))
            .await
            .expect("lock")
            .expect("free");
        lock.release().await;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND d.datname = current_database()",
        )
        .fetch_one(&mut *onlooker)
        .await
        .expect("pg_locks");
        assert_eq!(held, 0, "round {round}: the released lock is still held");
    }
}
