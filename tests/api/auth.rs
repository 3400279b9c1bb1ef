//! Buyer tokens and the admin token.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{JWT_SECRET, error_code, sale_body, spawn_app};

fn signed(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[sqlx::test]
async fn reserving_needs_a_valid_unexpired_buyer_token(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let now = jsonwebtoken::get_current_timestamp();
    let bad_tokens = [
        None,
        Some("not-a-jwt".to_owned()),
        Some(signed(
            json!({"sub": "alice", "exp": now + 600}),
            "another-secret",
        )),
        Some(signed(
            json!({"sub": "alice", "exp": now - 3600}),
            JWT_SECRET,
        )),
        Some(signed(json!({"sub": "alice"}), JWT_SECRET)),
        // alg "none", no signature
        Some(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
                .to_owned(),
        ),
        Some(app.token("alice").replace('.', "").to_owned()),
    ];
    for token in bad_tokens {
        let mut request = app
            .client
            .post(app.url("/v1/skus/sneaker/reservations"))
            .header("Idempotency-Key", "k")
            .json(&json!({"quantity": 1}));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let (status, code, _) = error_code(request.send().await.expect("send")).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{token:?}");
    }
    assert_eq!(app.redis_stock("sneaker").await, 10);
}

#[sqlx::test]
async fn admin_calls_need_the_admin_token(pool: PgPool) {
    let app = spawn_app(pool).await;
    let url = app.url("/v1/admin/skus/sneaker");

    let anonymous = app
        .client
        .put(&url)
        .json(&sale_body(1, 1))
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(anonymous).await.0, 401);
    let wrong = app
        .client
        .put(&url)
        .bearer_auth("guess")
        .json(&sale_body(1, 1))
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(wrong).await.0, 403);
    let buyer = app
        .client
        .put(&url)
        .bearer_auth(app.token("alice"))
        .json(&sale_body(1, 1));
    assert_eq!(error_code(buyer.send().await.expect("send")).await.0, 403);
    let prewarm = app
        .client
        .post(app.url("/v1/admin/skus/sneaker/prewarm"))
        .send()
        .await
        .expect("send");
    assert_eq!(prewarm.status(), 401);
}
