//! The caller's `reference` and `metadata` on a hold: kept through Redis, Postgres, every answer
//! and every event, and part of the idempotency check.

use flashgate::domain::{ReservationId, Sku};
use flashgate::events::EventFilter;
use reqwest::Response;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{AppOptions, TestApp, error_code, sale_body, spawn_app, spawn_app_with};

async fn reserve_with(app: &TestApp, buyer: &str, key: &str, body: Value) -> Response {
    app.reserve_body("sneaker", buyer, key, &body).await
}

async fn created(app: &TestApp, buyer: &str, key: &str, body: Value) -> Value {
    let response = reserve_with(app, buyer, key, body).await;
    assert_eq!(response.status(), 201);
    response.json().await.expect("json")
}

/// Deletes the hold's Redis record, as the grace period after settlement eventually does.
async fn forget_in_redis(app: &TestApp, id: &str) {
    let key = app
        .namespace
        .sku(&Sku::parse("sneaker").expect("sku"))
        .hold(ReservationId::parse(id).expect("id"));
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut app.redis_connection().await)
        .await
        .expect("DEL");
}

#[sqlx::test]
async fn a_hold_keeps_the_callers_reference_and_metadata_in_every_answer_and_event(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            events: EventFilter::parse("reservation.*").expect("filter"),
            ..AppOptions::default()
        },
    )
    .await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    // A newline inside a value: the scripts answer one newline-separated string, which holds
    // only because the stored metadata is compact JSON (the newline escaped).
    let metadata = json!({"cart": 42, "channel": "app", "note": "gift\nwrap",
        "lines": [{"sku": "sneaker", "n": 1}]});
    let alice = created(
        &app,
        "alice",
        "a-1",
        json!({"quantity": 1, "reference": "order-7", "metadata": metadata}),
    )
    .await;
    assert_eq!(alice["reference"], "order-7");
    assert_eq!(alice["metadata"], metadata);
    let bob = created(&app, "bob", "b-1", json!({"quantity": 1})).await;
    assert_eq!(bob["reference"], Value::Null);
    assert_eq!(bob["metadata"], Value::Null);
    let alice_id = alice["id"].as_str().expect("id");
    let bob_id = bob["id"].as_str().expect("id");

    let shown = app
        .get_json(
            &format!("/v1/reservations/{alice_id}"),
            Some(&app.token("alice")),
        )
        .await;
    assert_eq!(shown["reference"], "order-7");
    assert_eq!(shown["metadata"], metadata);

    let committed = app.act(alice_id, "commit", &app.token("alice")).await;
    assert_eq!(committed.status(), 200);
    let committed: Value = committed.json().await.expect("json");
    assert_eq!(committed["reference"], "order-7");
    assert_eq!(committed["metadata"], metadata);
    assert_eq!(
        app.act(bob_id, "release", &app.token("bob")).await.status(),
        200
    );
    app.settler()
        .drain(&Sku::parse("sneaker").expect("sku"))
        .await
        .expect("drain");

    let events = app.events_of("sneaker").await;
    let of = |id: &str, kind: &str| -> Value {
        events
            .iter()
            .find(|e| e["reservation_id"] == id && e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} for {id} in {events:?}"))
            .clone()
    };
    for kind in ["reservation.held", "reservation.committed"] {
        let event = of(alice_id, kind);
        assert_eq!(event["reference"], "order-7", "{event}");
        assert_eq!(event["metadata"], metadata, "{event}");
    }
    for kind in ["reservation.held", "reservation.released"] {
        let event = of(bob_id, kind);
        assert_eq!(event["reference"], Value::Null, "{event}");
        assert_eq!(event["metadata"], Value::Null, "{event}");
    }
    for event in &events {
        let kind = flashgate::events::EventKind::parse(event["kind"].as_str().expect("kind"))
            .expect("a kind");
        let schema = flashgate::events::contract::schema(kind);
        let validator = jsonschema::draft7::new(&schema).expect("schema");
        assert!(validator.is_valid(event), "{event}");
    }

    // Once Redis has let the settled hold go, Postgres answers, with the same fields.
    forget_in_redis(&app, alice_id).await;
    let from_postgres = app
        .get(
            &format!("/v1/reservations/{alice_id}"),
            Some(&app.token("alice")),
        )
        .await;
    assert_eq!(from_postgres.status(), 200);
    let from_postgres: Value = from_postgres.json().await.expect("json");
    assert_eq!(from_postgres["status"], "committed");
    assert_eq!(from_postgres["reference"], "order-7");
    assert_eq!(from_postgres["metadata"], metadata);
}

#[sqlx::test]
async fn the_reference_and_metadata_are_part_of_the_idempotency_check(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let first = created(
        &app,
        "alice",
        "k-1",
        json!({"quantity": 1, "reference": "cart-9", "metadata": {"a": 1, "b": [2, 3]}}),
    )
    .await;

    // The same request, its metadata's keys in another order: the stored answer.
    let again = reserve_with(
        &app,
        "alice",
        "k-1",
        json!({"metadata": {"b": [2, 3], "a": 1}, "reference": "cart-9", "quantity": 1}),
    )
    .await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.expect("json"), first);

    for changed in [
        json!({"quantity": 1, "reference": "cart-10", "metadata": {"a": 1, "b": [2, 3]}}),
        json!({"quantity": 1, "reference": "cart-9", "metadata": {"a": 2, "b": [2, 3]}}),
        json!({"quantity": 1, "reference": "cart-9"}),
        json!({"quantity": 1}),
    ] {
        let (status, code, _) =
            error_code(reserve_with(&app, "alice", "k-1", changed.clone()).await).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "idempotency_key_reused"),
            "{changed}"
        );
    }

    // A key first used without either stays matched by a request without either.
    let plain = created(&app, "alice", "k-2", json!({"quantity": 1})).await;
    let replayed = reserve_with(&app, "alice", "k-2", json!({"quantity": 1})).await;
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.json::<Value>().await.expect("json"), plain);
    let (status, code, _) = error_code(
        reserve_with(
            &app,
            "alice",
            "k-2",
            json!({"quantity": 1, "reference": "late"}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
    assert_eq!(app.redis_stock("sneaker").await, 8);
}

#[sqlx::test]
async fn a_reference_or_metadata_out_of_bounds_is_refused_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let cases = [
        (
            json!({"quantity": 1, "reference": "x".repeat(129)}),
            "reference",
        ),
        (json!({"quantity": 1, "reference": ""}), "reference"),
        (
            json!({"quantity": 1, "reference": "line\nbreak"}),
            "reference",
        ),
        (json!({"quantity": 1, "metadata": [1, 2]}), "metadata"),
        (json!({"quantity": 1, "metadata": "text"}), "metadata"),
        (
            json!({"quantity": 1, "metadata": {"note": "x".repeat(1024)}}),
            "metadata",
        ),
    ];
    for (n, (body, field)) in cases.into_iter().enumerate() {
        let (status, code, error) =
            error_code(reserve_with(&app, "alice", &format!("k-{n}"), body.clone()).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_request"), "{body}");
        assert_eq!(error["field"], field, "{body}");
    }
    let (status, code, _) = error_code(
        reserve_with(
            &app,
            "alice",
            "k-type",
            json!({"quantity": 1, "reference": 7}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "invalid_body"));
    assert_eq!(
        app.redis_stock("sneaker").await,
        10,
        "no refusal took stock"
    );
    // 128 characters, not bytes: a reference in any script fits.
    created(
        &app,
        "alice",
        "k-ok",
        json!({"quantity": 1, "reference": "é".repeat(128)}),
    )
    .await;
}

#[sqlx::test]
async fn a_hold_restored_by_a_resync_keeps_its_reference_and_its_idempotency_match(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let body = json!({"quantity": 1, "reference": "order-1", "metadata": {"cart": "c-1"}});
    let first = created(&app, "alice", "k-1", body.clone()).await;
    app.settler()
        .drain(&Sku::parse("sneaker").expect("sku"))
        .await
        .expect("drain");
    app.flush_redis();
    let job = app.resync("sneaker").await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let id = first["id"].as_str().expect("id");
    let shown = app
        .get_json(&format!("/v1/reservations/{id}"), Some(&app.token("alice")))
        .await;
    assert_eq!(shown["status"], "held");
    assert_eq!(shown["reference"], "order-1");
    assert_eq!(shown["metadata"], json!({"cart": "c-1"}));
    let replayed = reserve_with(&app, "alice", "k-1", body).await;
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let (status, code, _) = error_code(
        reserve_with(
            &app,
            "alice",
            "k-1",
            json!({"quantity": 1, "reference": "order-2"}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
}
