//! `GET /v1/skus/{sku}` and the probes.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{error_code, sale_body, spawn_app};

#[sqlx::test]
async fn a_sku_shows_live_availability(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.put_sale("sneaker", &sale_body(10, 5)).await;

    // Created, not launched: buyers learn nothing of it (price, stock, start) until the
    // prewarm; before, it answered 200 with all three. Operators see it.
    let cold = app.get("/v1/skus/sneaker", None).await;
    let (status, code, _) = error_code(cold).await;
    assert_eq!((status, code.as_str()), (404, "unknown_sku"));
    let draft: Value = app
        .get_json("/v1/admin/skus/sneaker", Some(crate::helpers::ADMIN_TOKEN))
        .await;
    assert_eq!(
        (
            draft["live"].clone(),
            draft["open"].clone(),
            draft["total"].clone()
        ),
        (false.into(), false.into(), 10.into())
    );
    let anonymous = app.get("/v1/admin/skus/sneaker", None).await;
    assert_eq!(anonymous.status(), 401);

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

/// The document is generated from the handlers: every operation it describes reaches a handler
/// (never the router's own `not_found` or `method_not_allowed`), and it lists every error code.
/// The other direction — every route is documented — holds by construction: routes are only
/// registered with `routes!` (checked by a unit test in `src/http/mod.rs`).
#[sqlx::test]
async fn the_openapi_document_describes_routes_that_exist(pool: PgPool) {
    let app = spawn_app(pool).await;
    let spec: Value = app.get_json("/openapi.json", None).await;
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        spec["openapi"]
    );
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 18, "{}", paths.len());
    for (path, operations) in paths {
        let concrete = path
            .replace("{sku}", "sneaker")
            .replace("{id}", "00000001-0000-8000-8000-000000000000")
            .replace("{job}", "00000000-0000-4000-8000-000000000000");
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
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path} is not routed");
            assert_ne!(body["error"], "not_found", "{method} {path} is not routed");
        }
    }
    let codes: Vec<&str> =
        spec["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"]
            .as_array()
            .expect("the error codes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
    for code in [
        "sold_out",
        "sale_not_prewarmed",
        "overloaded",
        "job_not_found",
        "not_found",
    ] {
        assert!(codes.contains(&code), "{code} is not documented");
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["adminToken"]["scheme"],
        "bearer"
    );
}
