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

/// Every operation the OpenAPI document describes reaches a handler: axum's own answers for an
/// unrouted request (an empty 404, or 405 for a wrong method) never come back.
#[sqlx::test]
async fn the_openapi_document_describes_routes_that_exist(pool: PgPool) {
    let app = spawn_app(pool).await;
    let spec: Value = app.get_json("/openapi.json", None).await;
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 16, "{}", paths.len());
    for (path, operations) in paths {
        let concrete = path
            .replace("{sku}", "sneaker")
            .replace("{id}", "00000001-0000-8000-8000-000000000000");
        for method in operations.as_object().expect("operations").keys() {
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .expect("send");
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("body");
            assert_ne!(status, 405, "{method} {path} is not routed");
            assert!(
                status != 404 || !body.is_empty(),
                "{method} {path} is not routed"
            );
        }
    }
}
