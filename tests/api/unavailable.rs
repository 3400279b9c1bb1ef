//! Redis out of reach: the gate answers 503 with `Retry-After` within a bounded time.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::helpers::{AppOptions, error_code, spawn_app_with};

/// Generous: the point is "answers instead of hanging", not a speed goal.
const NO_HANG: Duration = Duration::from_secs(10);

async fn assert_503_without_hanging(app: &crate::helpers::TestApp) {
    let request = app
        .client
        .post(app.url("/v1/skus/sneaker/reservations"))
        .bearer_auth(app.token("alice"))
        .header("Idempotency-Key", "k")
        .json(&json!({"quantity": 1}))
        .send();
    let response = tokio::time::timeout(NO_HANG, request)
        .await
        .expect("answered in time")
        .expect("send");
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (503, "service_unavailable"));

    let ready = tokio::time::timeout(NO_HANG, app.client.get(app.url("/readyz")).send())
        .await
        .expect("answered in time")
        .expect("send");
    assert_eq!(ready.status(), 503);
}

/// An app whose Redis is at `port`, giving up on it after 300 ms.
async fn app_with_redis_on(pool: PgPool, port: u16) -> crate::helpers::TestApp {
    let options = AppOptions {
        redis_timeout: Duration::from_millis(300),
        ..AppOptions::on_server(format!("redis://127.0.0.1:{port}"))
    };
    spawn_app_with(pool, options).await
}

#[sqlx::test]
async fn redis_refusing_connections_is_503(pool: PgPool) {
    // Nothing listens on a port we bound and released.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let app = app_with_redis_on(pool, port).await;
    assert_503_without_hanging(&app).await;
}

#[sqlx::test]
async fn redis_that_never_answers_is_503(pool: PgPool) {
    // Accepts connections and never says a word, like a Redis stuck behind a dead network path.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = blackhole.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            held.push(socket);
        }
    });
    let app = app_with_redis_on(pool, port).await;
    assert_503_without_hanging(&app).await;
}
