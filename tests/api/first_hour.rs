//! What an operator meets in the first hour (issue "The first hour"): the admin view tells the
//! truth about `open`, prices fit their currency, every timestamp has one format, and `PUT`
//! defaults what the CLI defaults.

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ADMIN_TOKEN, error_code, sale_body, spawn_app};

/// RFC 3339, UTC, milliseconds, `Z`.
fn assert_timestamp(value: &Value, what: &str) {
    let text = value.as_str().unwrap_or_else(|| panic!("{what}: {value}"));
    let bytes = text.as_bytes();
    assert!(
        text.len() == 24
            && bytes[10] == b'T'
            && bytes[19] == b'.'
            && text.ends_with('Z')
            && chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "{what}: {text}"
    );
}

#[sqlx::test]
async fn admin_answers_say_open_for_an_open_sale(pool: PgPool) {
    let app = spawn_app(pool).await;
    let put: Value = app
        .put_sale("sneaker", &sale_body(10, 2))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (put["live"].as_bool(), put["open"].as_bool()),
        (Some(false), Some(false))
    );

    let warm = app.prewarm("sneaker", false).await;
    assert_eq!(warm.status(), 200);
    let warm: Value = warm.json().await.expect("json");
    assert_eq!(
        (warm["live"].as_bool(), warm["open"].as_bool()),
        (Some(true), Some(true)),
        "{warm}"
    );

    let changed: Value = app
        .put_sale("sneaker", &sale_body(12, 2))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(changed["open"], true, "{changed}");

    let paused: Value = app
        .client
        .post(app.url("/v1/admin/skus/sneaker/pause"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("pause")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (paused["state"].as_str(), paused["open"].as_bool()),
        (Some("paused"), Some(false))
    );

    let mut later = sale_body(12, 2);
    later["starts_at"] = json!((Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let resumed: Value = app
        .put_sale("sneaker", &later)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        resumed["open"], false,
        "a window not started is not open: {resumed}"
    );
}

#[sqlx::test]
async fn prices_must_fit_the_currency_and_be_positive(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (price, currency) in [
        ("0.333", "USD"),
        ("0", "USD"),
        ("0.00", "USD"),
        ("1500.5", "JPY"),
    ] {
        let mut body = sale_body(10, 2);
        body["price"] = json!(price);
        body["currency"] = json!(currency);
        let (status, code, _) = error_code(app.put_sale("sneaker", &body).await).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "invalid_request"),
            "{currency} {price}"
        );
    }
    let mut body = sale_body(10, 2);
    body["currency"] = json!("ABC");
    let (status, _, _) = error_code(app.put_sale("sneaker", &body).await).await;
    assert_eq!(status, 422, "not an ISO 4217 code");

    for (price, currency) in [("1500", "JPY"), ("1.234", "BHD"), ("19.90", "USD")] {
        let mut body = sale_body(10, 2);
        body["price"] = json!(price);
        body["currency"] = json!(currency);
        assert_eq!(
            app.put_sale("sneaker", &body).await.status(),
            200,
            "{currency} {price}"
        );
    }
}

#[sqlx::test]
async fn put_defaults_the_fields_the_cli_defaults(pool: PgPool) {
    let app = spawn_app(pool).await;
    let body = json!({"name": "Sneaker", "price": "19.99", "stock": 10});
    let response = app.put_sale("sneaker", &body).await;
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.expect("json");
    assert_eq!(
        (
            view["currency"].as_str(),
            view["per_buyer_limit"].as_u64(),
            view["hold_ttl_seconds"].as_u64()
        ),
        (Some("USD"), Some(1), Some(300)),
        "{view}"
    );
}

#[sqlx::test]
async fn every_timestamp_has_one_format(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut later = sale_body(10, 2);
    later["starts_at"] = json!("2099-01-01T00:00:00+01:00");
    app.open_sale("later", &later).await;
    let (_, code, refused) = error_code(app.reserve("later", "alice", "k", 1).await).await;
    assert_eq!(code, "sale_not_open");
    assert_timestamp(&refused["opens_at"], "opens_at");
    let sale = app.get_json("/v1/skus/later", None).await;
    assert_timestamp(&sale["starts_at"], "starts_at");
    assert_eq!(sale["starts_at"], "2098-12-31T23:00:00.000Z");

    app.open_sale("now", &sale_body(10, 2)).await;
    let hold: Value = app
        .reserve("now", "alice", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    assert_timestamp(&hold["created_at"], "created_at");
    assert_timestamp(&hold["expires_at"], "expires_at");

    let job = app.resync("now").await;
    assert_timestamp(&job["started_at"], "started_at");
    assert_timestamp(&job["finished_at"], "finished_at");
}
