//! A hold's whole life: commit, release, expiry, pause, restock, resync (docs/DESIGN.md §3).

use std::time::Duration;

use chrono::Utc;
use flashgate::audit::Verdict;
use flashgate::domain::{ReservationId, Sku};
use flashgate::gate::{Mover, Transition, TransitionOutcome};
use flashgate::sweeper::{Sweeper, SweeperSettings};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ADMIN_TOKEN, TestApp, error_code, sale_body, spawn_app};

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).expect("sku")
}

async fn hold_id(app: &TestApp, sku: &str, buyer: &str, key: &str, quantity: i64) -> String {
    let response = app.reserve(sku, buyer, key, quantity).await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

async fn assert_audit_clean(app: &TestApp, sku_code: &str) {
    app.settler().drain(&sku(sku_code)).await.expect("drain");
    let audit = app.audit(sku_code).await;
    for check in &audit.checks {
        assert_eq!(
            check.verdict,
            Verdict::Held,
            "{sku_code}: invariant {}: {}",
            check.invariant,
            check.detail
        );
    }
}

fn short_lived(stock: u32, limit: u32) -> Value {
    let mut body = sale_body(stock, limit);
    body["hold_ttl_seconds"] = json!(1);
    body
}

#[sqlx::test]
async fn commit_answers_once_postgres_has_it_and_again_when_repeated(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let id = hold_id(&app, "sneaker", "alice", "k", 2).await;

    let committed = app.act(&id, "commit", &app.token("alice")).await;
    assert_eq!(committed.status(), 200);
    let body: Value = committed.json().await.expect("json");
    assert_eq!(
        (body["status"].as_str(), body["settled"].as_bool()),
        (Some("committed"), Some(true))
    );
    assert_eq!(
        app.inventory("sneaker").await,
        (10, 8, 0, 2),
        "postgres had it before the 200"
    );

    let again: Value = app
        .act(&id, "commit", &app.token("alice"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again, body);
    let (status, code, _) = error_code(app.act(&id, "release", &app.token("alice")).await).await;
    assert_eq!((status, code.as_str()), (409, "committed"));
    assert_eq!(app.redis_stock("sneaker").await, 8);
    assert_audit_clean(&app, "sneaker").await;
}

#[sqlx::test]
async fn release_returns_the_units_and_the_buyer_limit(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(2, 2)).await;
    let id = hold_id(&app, "sneaker", "alice", "k-1", 2).await;
    assert_eq!(
        error_code(app.reserve("sneaker", "bob", "k", 1).await)
            .await
            .1,
        "sold_out"
    );

    let released = app.act(&id, "release", &app.token("alice")).await;
    assert_eq!(released.status(), 200);
    assert_eq!(
        released.json::<Value>().await.expect("json")["status"],
        "released"
    );
    assert_eq!(
        app.act(&id, "release", &app.token("alice")).await.status(),
        200,
        "idempotent"
    );
    let (status, code, _) = error_code(app.act(&id, "commit", &app.token("alice")).await).await;
    assert_eq!((status, code.as_str()), (409, "released"));

    assert_eq!(app.redis_stock("sneaker").await, 2);
    // The units can be held again, and alice's limit is free again.
    hold_id(&app, "sneaker", "alice", "k-2", 1).await;
    hold_id(&app, "sneaker", "bob", "k", 1).await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    assert_eq!(app.inventory("sneaker").await, (2, 0, 2, 0));
    let shown: Value = app
        .get_json(&format!("/v1/reservations/{id}"), Some(&app.token("alice")))
        .await;
    assert_eq!(
        (shown["status"].as_str(), shown["settled"].as_bool()),
        (Some("released"), Some(true))
    );
    assert_audit_clean(&app, "sneaker").await;
}

#[sqlx::test]
async fn only_the_owner_or_the_admin_may_commit_or_release(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let first = hold_id(&app, "sneaker", "alice", "k-1", 1).await;
    let second = hold_id(&app, "sneaker", "alice", "k-2", 1).await;

    for action in ["commit", "release"] {
        let (status, code, _) =
            error_code(app.act(&first, action, &app.token("mallory")).await).await;
        assert_eq!(
            (status, code.as_str()),
            (404, "reservation_not_found"),
            "{action}"
        );
    }
    // transition.lua checks the owner before any write: mallory moved nothing.
    let shown = app
        .get_json(
            &format!("/v1/reservations/{first}"),
            Some(&app.token("alice")),
        )
        .await;
    assert_eq!(shown["status"], "held");
    assert_eq!(app.redis_stock("sneaker").await, 8);
    assert_eq!(app.act(&first, "commit", ADMIN_TOKEN).await.status(), 200);
    assert_eq!(app.act(&second, "release", ADMIN_TOKEN).await.status(), 200);
    assert_eq!(app.act(&first, "commit", "not-a-token").await.status(), 401);
    let unknown = ReservationId::generate(1).to_string();
    assert_eq!(
        app.act(&unknown, "commit", &app.token("alice"))
            .await
            .status(),
        404
    );
}

#[sqlx::test]
async fn a_late_commit_is_refused_as_expired_and_the_units_come_back(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &short_lived(5, 5)).await;
    let id = hold_id(&app, "sneaker", "alice", "k", 2).await;
    assert_eq!(app.redis_stock("sneaker").await, 3);
    tokio::time::sleep(Duration::from_millis(1_100)).await; // the TTL is one second

    let (status, code, _) = error_code(app.act(&id, "commit", &app.token("alice")).await).await;

    assert_eq!((status, code.as_str()), (409, "expired"));
    assert_eq!(app.redis_stock("sneaker").await, 5);
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    assert_eq!(app.inventory("sneaker").await, (5, 5, 0, 0));
    assert_audit_clean(&app, "sneaker").await;
}

#[sqlx::test]
async fn sweepers_expire_each_overdue_hold_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("short", &short_lived(10, 5)).await;
    app.open_sale("long", &sale_body(10, 5)).await;
    for n in 0..4 {
        hold_id(&app, "short", &format!("buyer-{n}"), "k", 2).await;
    }
    let keeps = hold_id(&app, "long", "alice", "k", 1).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let sweepers: Vec<Sweeper> = (0..3)
        .map(|_| {
            Sweeper::new(
                app.gate.clone(),
                app.store.clone(),
                Default::default(),
                SweeperSettings {
                    interval: Duration::from_millis(10),
                    batch: 1,
                    ..SweeperSettings::default()
                },
            )
        })
        .collect();
    let short = sku("short");
    let expired: Vec<usize> = futures::future::join_all(sweepers.iter().map(|s| s.sweep(&short)))
        .await
        .into_iter()
        .map(|r| r.expect("sweep"))
        .collect();

    assert_eq!(
        expired.iter().sum::<usize>(),
        4,
        "{expired:?}: every hold expired exactly once"
    );
    assert_eq!(app.redis_stock("short").await, 10);
    assert_eq!(sweepers[0].sweep(&sku("long")).await.expect("sweep"), 0);
    assert_eq!(
        app.act(&keeps, "commit", &app.token("alice"))
            .await
            .status(),
        200
    );
    app.settler().drain(&sku("short")).await.expect("drain");
    assert_eq!(app.inventory("short").await, (10, 10, 0, 0));
    assert_audit_clean(&app, "short").await;
    assert_audit_clean(&app, "long").await;
}

#[sqlx::test]
async fn commit_racing_the_expiry_has_exactly_one_winner_every_time(pool: PgPool) {
    const HOLDS: usize = 500;
    let app = spawn_app(pool).await;
    let mut sale = sale_body(HOLDS as u32, 1);
    sale["hold_ttl_seconds"] = json!(3); // long enough to create the holds, short enough to wait for
    app.open_sale("race", &sale).await;
    let holds: Vec<_> = futures::stream::iter(0..HOLDS)
        .map(|n| {
            let app = &app;
            async move {
                let token = app.token(&format!("b{n}"));
                let body: Value = app
                    .reserve("race", &format!("b{n}"), "k", 1)
                    .await
                    .json()
                    .await
                    .expect("json");
                let id = ReservationId::parse(body["id"].as_str().expect("id")).expect("uuid");
                let hold = app.gate.hold(id).await.expect("hold").expect("exists");
                (n, token, hold)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    // Each hold: a commit and the sweeper's expiry at once, fired between 400 ms before and
    // 100 ms after its deadline, so some commits win, some lose, and many meet the expiry.
    let outcomes: Vec<(u16, String, bool)> = futures::stream::iter(holds)
        .map(|(n, token, hold)| {
            let app = &app;
            async move {
                let offset = chrono::Duration::milliseconds((n % 501) as i64 - 400);
                if let Ok(wait) = (hold.expires_at + offset - Utc::now()).to_std() {
                    tokio::time::sleep(wait).await;
                }
                let id = hold.id.to_string();
                let (commit, expire) = tokio::join!(
                    app.act(&id, "commit", &token),
                    app.gate
                        .transition(hold.id, Transition::Expire, Mover::Anyone)
                );
                let swept = matches!(expire.expect("expire"), TransitionOutcome::Changed { .. });
                let status = commit.status().as_u16();
                let body: serde_json::Value = commit.json().await.expect("JSON body");
                let code = body["error"].as_str().unwrap_or_default().to_owned();
                (status, code, swept)
            }
        })
        .buffer_unordered(HOLDS)
        .collect()
        .await;

    let committed = outcomes
        .iter()
        .filter(|(status, ..)| *status == 200)
        .count();
    for (status, code, swept) in &outcomes {
        match (status, code.as_str()) {
            (200, _) => assert!(!swept, "a committed hold was also expired"),
            // Expired: by the sweeper, or by the late commit itself. Nothing else may lose.
            (409, "expired") => {}
            (other, code) => panic!("commit answered {other} {code}"),
        }
    }
    let expired = HOLDS - committed;
    assert!(
        committed > 0 && expired > 0,
        "the race was not run: {committed} committed, {expired} expired"
    );
    assert_eq!(
        app.redis_stock("race").await,
        expired as i64,
        "every expired unit came back once"
    );
    app.settler().drain(&sku("race")).await.expect("drain");
    let (total, available, reserved, sold) = app.inventory("race").await;
    assert_eq!(
        (total, available, reserved, sold),
        (HOLDS as i64, expired as i64, 0, committed as i64)
    );
    assert_audit_clean(&app, "race").await;
}

#[sqlx::test]
async fn a_paused_sale_refuses_new_holds_but_keeps_existing_ones(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let id = hold_id(&app, "sneaker", "alice", "k-1", 1).await;
    let admin = |path: &str| {
        app.client
            .post(app.url(&format!("/v1/admin/skus/sneaker/{path}")))
            .bearer_auth(ADMIN_TOKEN)
    };

    let paused: Value = admin("pause")
        .send()
        .await
        .expect("pause")
        .json()
        .await
        .expect("json");
    assert_eq!(paused["state"], "paused");
    let (status, code, _) = error_code(app.reserve("sneaker", "bob", "k", 1).await).await;
    assert_eq!((status, code.as_str()), (409, "sale_paused"));
    assert_eq!(
        app.act(&id, "commit", &app.token("alice")).await.status(),
        200
    );

    assert_eq!(admin("resume").send().await.expect("resume").status(), 200);
    assert_eq!(app.reserve("sneaker", "bob", "k", 1).await.status(), 201);

    let restocked: Value = admin("restock")
        .json(&json!({"quantity": 5}))
        .send()
        .await
        .expect("restock")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (restocked["total"].as_i64(), restocked["live"].as_bool()),
        (Some(15), Some(true))
    );
    assert_eq!(app.redis_stock("sneaker").await, 13);
    let bad = admin("restock")
        .json(&json!({"quantity": 0}))
        .send()
        .await
        .expect("restock");
    assert_eq!(bad.status(), 422);
    assert_audit_clean(&app, "sneaker").await;
}

#[sqlx::test]
async fn a_release_between_two_reserves_is_applied_in_stream_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("last", &sale_body(1, 1)).await;
    let first = hold_id(&app, "last", "alice", "k", 1).await;
    assert_eq!(
        app.act(&first, "release", &app.token("alice"))
            .await
            .status(),
        200
    );
    hold_id(&app, "last", "bob", "k", 1).await;

    // All three events in one batch: applied out of order, bob's hold would not fit.
    app.settler().drain(&sku("last")).await.expect("drain");

    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT buyer_id, status FROM reservations WHERE sku = 'last' ORDER BY created_event",
    )
    .fetch_all(app.store.pool())
    .await
    .expect("rows");
    assert_eq!(
        statuses,
        vec![
            ("alice".into(), "released".into()),
            ("bob".into(), "held".into())
        ]
    );
    assert_eq!(app.inventory("last").await, (1, 0, 1, 0));
    assert_audit_clean(&app, "last").await;
}

#[sqlx::test]
async fn after_redis_loses_everything_resync_restores_the_sale_without_selling_twice(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    let alice = hold_id(&app, "sneaker", "alice", "a", 2).await;
    let bob = hold_id(&app, "sneaker", "bob", "b", 1).await;
    let carol = hold_id(&app, "sneaker", "carol", "c", 1).await;
    assert_eq!(
        app.act(&bob, "commit", &app.token("bob")).await.status(),
        200
    );
    app.settler().drain(&sku("sneaker")).await.expect("drain");

    app.flush_redis();

    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let report = &job["report"];
    assert_eq!(report["restored_holds"], 3, "{report}");
    assert_eq!(report["stock"], 6);
    assert_eq!(report["stream_fenced"], true);
    assert_eq!(report["state"], "open");

    // Retries replay the restored holds instead of taking units again.
    let replay = app.reserve("sneaker", "alice", "a", 2).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.json::<Value>().await.expect("json")["id"],
        alice.as_str()
    );
    assert_eq!(
        error_code(app.reserve("sneaker", "alice", "a-2", 1).await)
            .await
            .1,
        "buyer_limit_reached"
    );
    // Exactly the six units Postgres still has are sold, then the sale is sold out.
    for n in 0..6 {
        hold_id(&app, "sneaker", &format!("new-{n}"), "k", 1).await;
    }
    assert_eq!(
        error_code(app.reserve("sneaker", "late", "k", 1).await)
            .await
            .1,
        "sold_out"
    );
    assert_eq!(
        app.act(&carol, "commit", &app.token("carol"))
            .await
            .status(),
        200
    );

    app.settler().drain(&sku("sneaker")).await.expect("drain");
    assert_eq!(app.inventory("sneaker").await, (10, 0, 8, 2));
    assert_audit_clean(&app, "sneaker").await;
}
