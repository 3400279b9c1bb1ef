//! The operator's console and what it reads: the page, its admin-only data, per-SKU outcomes
//! and latencies on `/metrics`, and a request id on every answer.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{ADMIN_TOKEN, sale_body, spawn_app};

#[sqlx::test]
async fn the_page_loads_without_a_token_and_its_data_needs_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    let page = app.get("/console", None).await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/html")
    );
    let html = page.text().await.expect("html");
    assert!(html.contains("Admin token") && html.contains("sessionStorage"));
    assert!(!html.contains(ADMIN_TOKEN));

    assert_eq!(app.get("/v1/admin/console/sales", None).await.status(), 401);
    assert_eq!(
        app.get(
            "/v1/admin/console/sales",
            Some("wrong-token-0123456789-0123456789")
        )
        .await
        .status(),
        403
    );
}

#[sqlx::test]
async fn the_console_data_shows_both_stores_and_this_gates_outcomes(pool: PgPool) {
    let app = spawn_app(pool).await;
    // A SKU no other test uses: the outcome counters are per process.
    let sku = format!(
        "console-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    app.open_sale(&sku, &sale_body(2, 1)).await;
    let mut ids = Vec::new();
    for buyer in ["alice", "bob"] {
        let held: Value = app
            .reserve(&sku, buyer, "k", 1)
            .await
            .json()
            .await
            .expect("json");
        ids.push((buyer, held["id"].as_str().expect("id").to_owned()));
    }
    assert_eq!(app.reserve(&sku, "carol", "k", 1).await.status(), 409);
    assert_eq!(
        app.reserve(&sku, "alice", "k", 1).await.status(),
        201,
        "a replay"
    );
    let (buyer, id) = &ids[0];
    assert_eq!(app.act(id, "commit", &app.token(buyer)).await.status(), 200);
    let (buyer, id) = &ids[1];
    assert_eq!(
        app.act(id, "release", &app.token(buyer)).await.status(),
        200
    );

    let now = app
        .get_json("/v1/admin/console/sales", Some(ADMIN_TOKEN))
        .await;
    let sale = now["sales"]
        .as_array()
        .expect("sales")
        .iter()
        .find(|s| s["sku"] == sku.as_str())
        .expect("the sale")
        .clone();
    assert_eq!(sale["redis_stock"], 1, "{sale}");
    assert_eq!(sale["sold"], 1, "{sale}");
    assert_eq!(sale["total"], 2);
    assert_eq!(sale["live_state"], "open");
    let counts = &sale["pulse"]["counts"];
    assert_eq!(
        (
            counts["held"].as_u64(),
            counts["replayed"].as_u64(),
            counts["sold_out"].as_u64(),
            counts["committed"].as_u64(),
            counts["released"].as_u64()
        ),
        (Some(2), Some(1), Some(1), Some(1), Some(1)),
        "{sale}"
    );
    assert!(
        sale["pulse"]["reserve_ms"]["p99"]
            .as_f64()
            .is_some_and(|p| p > 0.0),
        "{sale}"
    );
    assert!(
        sale["pulse"]["commit_ms"]["count"].as_u64() == Some(1),
        "{sale}"
    );
    assert_eq!(sale["audit"]["ok"], true, "{sale}");

    let metrics = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("metrics");
    let outcome = format!("flashgate_sale_outcomes_total{{sku=\"{sku}\",outcome=\"held\"}} 2");
    assert!(metrics.contains(&outcome), "no {outcome}");
    assert!(metrics.contains(
        "flashgate_http_request_duration_seconds_count{route=\"/v1/skus/{sku}/reservations\",method=\"POST\",outcome=\"201\"}"
    ));
    assert!(metrics.contains("flashgate_sale_call_duration_seconds_bucket{call=\"reserve\""));
    assert!(metrics.contains("flashgate_redis_call_duration_seconds_bucket{"));
    assert!(
        metrics.contains(
            "flashgate_postgres_call_duration_seconds_bucket{call=\"reservation_status\""
        )
    );
}

#[sqlx::test]
async fn every_answer_carries_a_request_id_kept_from_a_proxy(pool: PgPool) {
    // This machine is the gate's trusted proxy: only a proxy's id is kept (hostile.rs checks
    // that a client's is not).
    let app = crate::helpers::spawn_app_with(
        pool,
        crate::helpers::AppOptions {
            trusted_proxies: "127.0.0.1/32".into(),
            ..crate::helpers::AppOptions::default()
        },
    )
    .await;
    let fresh = app.get("/healthz", None).await;
    let id = fresh.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).map(|_| ()), Ok(()), "{id}");
    let error = app.get("/no/such/route", None).await;
    assert!(error.headers().contains_key("x-request-id"));

    let kept = app
        .client
        .get(app.url("/v1/skus/nothing"))
        .header("x-request-id", "from-the-balancer-42")
        .send()
        .await
        .expect("request");
    assert_eq!(kept.status(), 404);
    assert_eq!(kept.headers()["x-request-id"], "from-the-balancer-42");
}
