//! `GET /v1/skus/{sku}` and the probes.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{error_code, sale_body, spawn_app};

#[sqlx::test]
async fn a_sku_shows_live_availability(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.put_sale("sneaker", &sale_body(10, 5)).await;

    let cold: Value = app.get_json("/v1/skus/sneaker", None).await;
    assert_eq!(
        (cold["live"].clone(), cold["open"].clone()),
        (false.into(), false.into())
    );

    app.prewarm("sneaker", false).await;
    app.reserve("sneaker", "alice", "k", 3).await;
    let live: Value = app.get_json("/v1/skus/sneaker", None).await;
    assert_eq!(live["available"], 7);
    assert_eq!(live["live"], true);
    assert_eq!(live["open"], true);
    assert_eq!(live["price"], "19.99");
    assert_eq!(live["state"], "open");

    let missing = app.get("/v1/skus/nope", None).await;
    assert_eq!(error_code(missing).await.0, 404);
}

#[sqlx::test]
async fn probes_answer(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let ready: Value = app.get_json("/readyz", None).await;
    assert_eq!(ready["redis"], "ok");
    assert_eq!(ready["postgres"], "ok");
}
