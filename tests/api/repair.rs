//! Resync as a two-way repair (docs/DESIGN.md §10): holds only Redis knows are recorded in Postgres
//! (or rejected through the outbox), holds Redis lost or has behind follow Postgres, and a
//! stream that no longer continues from the settlement cursor is fenced, never skipped.

use flashgate::domain::{ReservationId, ReservationStatus, Sku};
use flashgate::settler::SettleError;
use redis::AsyncCommands;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, sale_body, spawn_app};

fn sku(code: &str) -> Sku {
    Sku::parse(code).expect("sku")
}

async fn hold_id(app: &TestApp, code: &str, buyer: &str, quantity: i64) -> String {
    let response = app.reserve(code, buyer, "k", quantity).await;
    assert_eq!(response.status(), 201, "{buyer}");
    response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

async fn redis_status(app: &TestApp, code: &str, id: &str) -> Option<String> {
    let key = app
        .namespace
        .sku(&sku(code))
        .hold(ReservationId::parse(id).expect("id"));
    app.redis_connection()
        .await
        .hget(key, "status")
        .await
        .expect("HGET")
}

async fn postgres_status(app: &TestApp, id: &str) -> Option<ReservationStatus> {
    app.store
        .reservation_status(ReservationId::parse(id).expect("id"))
        .await
        .expect("status")
}

async fn delete_stream(app: &TestApp, code: &str) {
    let _: i64 = app
        .redis_connection()
        .await
        .del(app.namespace.sku(&sku(code)).events())
        .await
        .expect("DEL");
}

async fn assert_audit_clean(app: &TestApp, code: &str) {
    app.settler().drain(&sku(code)).await.expect("drain");
    let audit = app.audit(code).await;
    assert!(audit.ok(), "{audit:?}");
}

/// The stream is lost (eviction, a partial restore) while the hold keys survive: before,
/// their commits answered 503 forever and resync loaded their units on sale a second time.
#[sqlx::test]
async fn holds_whose_stream_was_lost_are_recorded_again_by_resync(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 2)).await;
    hold_id(&app, "sneaker", "dave", 1).await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    let alice = hold_id(&app, "sneaker", "alice", 2).await;
    let bob = hold_id(&app, "sneaker", "bob", 1).await;
    let carol = hold_id(&app, "sneaker", "carol", 1).await;
    assert_eq!(
        app.act(&carol, "release", &app.token("carol"))
            .await
            .status(),
        200
    );
    delete_stream(&app, "sneaker").await;

    let broken = app.settler().drain(&sku("sneaker")).await;
    assert!(
        matches!(broken, Err(SettleError::StreamBroken { .. })),
        "{broken:?}"
    );
    let audit = app.audit("sneaker").await;
    assert!(
        audit
            .checks
            .iter()
            .any(|c| c.invariant == 7 && c.verdict == flashgate::audit::Verdict::Violated),
        "the audit reports the broken stream: {audit:?}"
    );
    // Redis decides the commit, but Postgres cannot get it: 503, to be retried.
    let (status, code, _) =
        crate::helpers::error_code(app.act(&alice, "commit", &app.token("alice")).await).await;
    assert_eq!((status, code.as_str()), (503, "service_unavailable"));

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let report = &job["report"];
    assert_eq!(report["rerecorded_holds"], 3, "{report}");
    assert_eq!(report["stream_fenced"], true, "{report}");
    // 5 on sale: dave 1 and bob 1 held, alice 2 committed; carol's unit came back.
    assert_eq!(report["stock"], 1, "{report}");
    assert_eq!(app.redis_stock("sneaker").await, 1);
    assert_eq!(app.inventory("sneaker").await, (5, 1, 2, 2));
    assert_eq!(
        postgres_status(&app, &carol).await,
        Some(ReservationStatus::Released)
    );

    assert_eq!(
        app.act(&alice, "commit", &app.token("alice"))
            .await
            .status(),
        200,
        "the retried commit"
    );
    assert_eq!(
        postgres_status(&app, &bob).await,
        Some(ReservationStatus::Held)
    );
    assert_eq!(hold_id(&app, "sneaker", "erin", 1).await.len(), 36);
    assert_eq!(
        crate::helpers::error_code(app.reserve("sneaker", "frank", "k", 1).await)
            .await
            .1,
        "sold_out"
    );
    assert_audit_clean(&app, "sneaker").await;
}

/// Holds only Redis knows about that Postgres stock cannot cover are rejected through the
/// outbox, as any hold Postgres refuses.
#[sqlx::test]
async fn redis_only_holds_beyond_postgres_stock_are_rejected(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(3, 1)).await;
    hold_id(&app, "sneaker", "dave", 1).await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // Redis drifted: it believes in two more units than Postgres has.
    app.set_redis_stock("sneaker", 4).await;
    let mut only_in_redis = Vec::new();
    for buyer in ["alice", "bob", "carol", "erin"] {
        only_in_redis.push(hold_id(&app, "sneaker", buyer, 1).await);
    }
    delete_stream(&app, "sneaker").await;

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["report"]["rerecorded_holds"], 4, "{job}");
    assert_eq!(job["report"]["stock"], 0, "{job}");

    let mut rejected = 0;
    for id in &only_in_redis {
        match postgres_status(&app, id).await {
            Some(ReservationStatus::Held) => {
                assert_eq!(
                    redis_status(&app, "sneaker", id).await.as_deref(),
                    Some("held")
                );
            }
            Some(ReservationStatus::Rejected) => {
                rejected += 1;
                assert_eq!(
                    redis_status(&app, "sneaker", id).await.as_deref(),
                    Some("rejected"),
                    "written back"
                );
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(rejected, 2);
    assert_eq!(app.inventory("sneaker").await, (3, 0, 3, 0));
    assert_eq!(app.redis_stock("sneaker").await, 0);
    assert_audit_clean(&app, "sneaker").await;
}

/// A failover to a replica whose clock ran behind: the new stream's entries sort below the
/// settlement cursor. Before, the settler read nothing after its cursor, trimmed the new
/// entries away and the hold never reached Postgres.
#[sqlx::test]
async fn a_stream_replaced_below_the_cursor_is_fenced_not_skipped(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    hold_id(&app, "sneaker", "dave", 1).await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    let alice = hold_id(&app, "sneaker", "alice", 1).await;

    // The stream as the replica has it: alice's decision under an id below the cursor.
    let events = app.namespace.sku(&sku("sneaker")).events();
    let mut conn = app.redis_connection().await;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(&events).await.expect("XRANGE");
    let entry = reply.ids.last().expect("alice's event").clone();
    let _: i64 = conn.del(&events).await.expect("DEL");
    let fields: Vec<(String, String)> = entry
        .map
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                redis::from_redis_value_ref::<String>(v).expect("field"),
            )
        })
        .collect();
    let _: String = conn
        .xadd(&events, "1-1", &fields)
        .await
        .expect("XADD below the cursor");

    let broken = app.settler().settle_batch(&sku("sneaker")).await;
    assert!(
        matches!(broken, Err(SettleError::StreamBroken { .. })),
        "{broken:?}"
    );
    let kept: usize = conn.xlen(&events).await.expect("XLEN");
    assert_eq!(kept, 1, "a broken stream is never trimmed");

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["report"]["stream_fenced"], true, "{job}");
    assert_eq!(job["report"]["dropped_events"], 1, "{job}");
    assert_eq!(job["report"]["rerecorded_holds"], 1, "{job}");
    assert_eq!(
        postgres_status(&app, &alice).await,
        Some(ReservationStatus::Held)
    );
    assert_eq!(app.inventory("sneaker").await, (5, 3, 2, 0));

    // New decisions sort above the fence and settle as usual.
    let bob = hold_id(&app, "sneaker", "bob", 1).await;
    assert_eq!(
        app.act(&bob, "commit", &app.token("bob")).await.status(),
        200
    );
    assert_audit_clean(&app, "sneaker").await;
}

/// Redis lost a transition Postgres already has (the replica that took over lagged): the hold
/// follows Postgres instead of staying held in Redis.
#[sqlx::test]
async fn a_hold_redis_has_behind_postgres_follows_postgres(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 2)).await;
    let alice = hold_id(&app, "sneaker", "alice", 2).await;
    assert_eq!(
        app.act(&alice, "release", &app.token("alice"))
            .await
            .status(),
        200
    );
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    // Redis as a lagging replica has it: alice still holds both units.
    let keys = app.namespace.sku(&sku("sneaker"));
    let id = ReservationId::parse(&alice).expect("id");
    let mut conn = app.redis_connection().await;
    let _: () = redis::pipe()
        .hset(keys.hold(id), "status", "held")
        .persist(keys.hold(id))
        .zadd(keys.holds(), &alice, i64::MAX / 2)
        .set(
            keys.buyer(&flashgate::domain::BuyerId::parse("alice").expect("buyer")),
            2,
        )
        .decr(keys.stock(), 2)
        .query_async(&mut conn)
        .await
        .expect("rewind");
    assert_eq!(
        crate::helpers::error_code(app.reserve("sneaker", "alice", "k2", 1).await)
            .await
            .1,
        "buyer_limit_reached"
    );

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["report"]["followed_holds"], 1, "{job}");
    assert_eq!(
        redis_status(&app, "sneaker", &alice).await.as_deref(),
        Some("released")
    );
    assert_eq!(app.redis_stock("sneaker").await, 5);
    assert_eq!(
        hold_id(&app, "sneaker", "alice", 2).await.len(),
        36,
        "limit freed"
    );
    assert_audit_clean(&app, "sneaker").await;
}

/// An audit that finds no sale in Redis for a SKU Postgres has settled events for is looking at
/// the wrong namespace (or at a Redis that lost the sale): red, not "not loaded".
#[sqlx::test]
async fn an_audit_under_the_wrong_namespace_is_not_green(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 2)).await;
    let alice = hold_id(&app, "sneaker", "alice", 1).await;
    assert_eq!(
        app.act(&alice, "commit", &app.token("alice"))
            .await
            .status(),
        200
    );
    assert!(app.audit("sneaker").await.ok());

    let elsewhere = flashgate::gate::Gate::connect(
        &flashgate::gate::RedisSettings {
            cluster: crate::helpers::on_cluster(),
            ..flashgate::gate::RedisSettings::new(
                &crate::helpers::redis_url(),
                2,
                std::time::Duration::from_secs(2),
            )
        },
        flashgate::gate::GateSettings {
            namespace: flashgate::gate::Namespace::parse(&format!(
                "fgtest-{}",
                uuid::Uuid::new_v4().simple()
            ))
            .expect("namespace"),
            idempotency_ttl: std::time::Duration::from_secs(3600),
            buyer_rate: None,
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
    let audit = flashgate::audit::audit_sku(&elsewhere, &app.store, &sku("sneaker"))
        .await
        .expect("audit");
    assert!(!audit.ok(), "{audit:?}");
}

/// Settlers racing on one SKU: one reads the cursor, another commits past it and trims the
/// entries below its new cursor — the first then finds its cursor's entry gone. That is a moved
/// cursor, not a lost stream (it was reported as a broken stream and failed a commit with 503 in
/// a two-gate load run).
#[sqlx::test]
async fn a_cursor_trimmed_by_a_faster_settler_is_moved_not_broken(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    hold_id(&app, "sneaker", "alice", 1).await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    let stale = app
        .store
        .settlement_cursor(&sku("sneaker"))
        .await
        .expect("cursor")
        .expect("row");
    // Another settler moves on and trims below its new cursor.
    hold_id(&app, "sneaker", "bob", 1).await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");

    let late = app
        .settler()
        .settle_batch_after(&sku("sneaker"), stale)
        .await;
    assert!(
        matches!(late, Ok(flashgate::settler::BatchOutcome::Moved)),
        "{late:?}"
    );
    assert_audit_clean(&app, "sneaker").await;
}
