//! Creating, updating and pre-warming sales.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{error_code, sale_body, spawn_app};

#[sqlx::test]
async fn upserting_a_sale_creates_then_updates_it(pool: PgPool) {
    let app = spawn_app(pool).await;

    let created: Value = app
        .put_sale("sneaker", &sale_body(10, 2))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(created["available"], 10);
    assert_eq!(created["price"], "19.99");
    assert_eq!(created["live"], false);

    let mut changed = sale_body(25, 3);
    changed["price"] = json!("24.50");
    let updated: Value = app
        .put_sale("sneaker", &changed)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(updated["available"], 25);
    assert_eq!(updated["price"], "24.50");
    assert_eq!(updated["per_buyer_limit"], 3);
}

#[sqlx::test]
async fn an_invalid_sale_is_refused_with_the_field_named(pool: PgPool) {
    let app = spawn_app(pool).await;
    let cases = [
        ("price", json!("-1")),
        ("price", json!("1.23456")),
        ("currency", json!("dollars")),
        ("per_buyer_limit", json!(0)),
        ("hold_ttl_seconds", json!(0)),
    ];
    for (field, value) in cases {
        let mut body = sale_body(10, 2);
        body[field] = value.clone();
        let (status, code, error) = error_code(app.put_sale("sneaker", &body).await).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "invalid_request"),
            "{field}={value}"
        );
        assert_eq!(error["field"], field);
    }
    let mut window = sale_body(10, 2);
    window["starts_at"] = json!("2030-01-02T00:00:00Z");
    window["ends_at"] = json!("2030-01-01T00:00:00Z");
    assert_eq!(
        error_code(app.put_sale("sneaker", &window).await).await.2["field"],
        "ends_at"
    );
    let mut float_price = sale_body(10, 2);
    float_price["price"] = json!(19.99);
    assert_eq!(
        error_code(app.put_sale("sneaker", &float_price).await)
            .await
            .1,
        "invalid_body"
    );
    let (status, _, _) = error_code(app.put_sale("bad:sku", &sale_body(1, 1)).await).await;
    assert_eq!(status, 422);
}

#[sqlx::test]
async fn prewarm_refuses_to_overwrite_a_live_sale_unless_forced(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    assert_eq!(app.reserve("sneaker", "alice", "k", 2).await.status(), 201);

    let (status, code, _) = error_code(app.prewarm("sneaker", false).await).await;
    assert_eq!((status, code.as_str()), (409, "sale_live"));
    assert_eq!(
        app.redis_stock("sneaker").await,
        8,
        "the live stock was left alone"
    );

    // Forced, a live sale is refreshed from Postgres but its stock is never reset: the two
    // units held and not yet settled are still in Postgres `available` and would be sold twice.
    assert_eq!(app.prewarm("sneaker", true).await.status(), 200);
    assert_eq!(app.redis_stock("sneaker").await, 8);
    let (status, code, _) = error_code(app.prewarm("nope", false).await).await;
    assert_eq!((status, code.as_str()), (404, "unknown_sku"));
}
