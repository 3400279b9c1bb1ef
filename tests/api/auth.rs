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

/// A JWT under the test secret naming `sub` with these `roles`.
fn credential(sub: &str, roles: serde_json::Value) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    signed(
        json!({"sub": sub, "iat": now, "exp": now + 600, "roles": roles}),
        JWT_SECRET,
    )
}

/// The payment service needed the buyer's token or the all-powerful admin token to commit. A
/// `payments` credential reads, commits and releases any hold, and can never take a hold or
/// change a sale; an `admin` credential acts as the admin token.
#[sqlx::test]
async fn a_payments_credential_settles_any_hold_and_does_nothing_else(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let ids = [
        app.hold("sneaker", "alice", "k1").await,
        app.hold("sneaker", "bob", "k1").await,
    ];
    let payments = credential("checkout-svc", json!(["payments"]));

    let read = app
        .get(&format!("/v1/reservations/{}", ids[0]), Some(&payments))
        .await;
    assert_eq!(read.status(), 200, "reads another buyer's hold");
    let committed = app.act(&ids[0], "commit", &payments).await;
    assert_eq!(committed.status(), 200);
    let committed: serde_json::Value = committed.json().await.expect("json");
    assert_eq!(committed["status"], "committed");
    let released = app.act(&ids[1], "release", &payments).await;
    assert_eq!(released.status(), 200);

    // Never a hold, never a sale.
    let reserve = app
        .reserve_with_token(&payments, "sneaker", "svc-1", 1)
        .await;
    let (status, code, _) = error_code(reserve).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let change = app
        .client
        .put(app.url("/v1/admin/skus/sneaker"))
        .bearer_auth(&payments)
        .json(&sale_body(1000, 5))
        .send()
        .await
        .expect("put");
    let (status, code, _) = error_code(change).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    for action in ["pause", "prewarm?force=true"] {
        let refused = app
            .client
            .post(app.url(&format!("/v1/admin/skus/sneaker/{action}")))
            .bearer_auth(&payments)
            .send()
            .await
            .expect("admin call");
        assert_eq!(refused.status(), 403, "{action}");
    }
    let view: serde_json::Value = app.get_json("/v1/skus/sneaker", None).await;
    assert_eq!(
        (view["state"].as_str(), view["available"].as_i64()),
        (Some("open"), Some(9))
    );

    // An admin credential is the admin token's equal; a token naming two of our roles is none.
    let admin = credential("ops-1", json!(["admin"]));
    let paused = app
        .client
        .post(app.url("/v1/admin/skus/sneaker/pause"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    let both = credential("svc-2", json!(["payments", "admin"]));
    let refused = app
        .get(&format!("/v1/reservations/{}", ids[0]), Some(&both))
        .await;
    assert_eq!(refused.status(), 401);
}
