//! `POST /v1/skus/{sku}/reservations` and `GET /v1/reservations/{id}`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use flashgate::domain::{BuyerId, IdempotencyKey, ReservationId, Sku};
use flashgate::gate::BuyerRate;
use redis::AsyncCommands;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{AppOptions, error_code, sale_body, spawn_app, spawn_app_with};

#[sqlx::test]
async fn a_buyer_reserves_units_and_gets_the_exact_total(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;

    let response = app.reserve("sneaker", "alice", "k-1", 3).await;

    assert_eq!(response.status(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(response.headers().get("idempotent-replayed").is_none());
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        location,
        format!("/v1/reservations/{}", body["id"].as_str().expect("id"))
    );
    assert_eq!(body["sku"], "sneaker");
    assert_eq!(body["buyer_id"], "alice");
    assert_eq!(body["quantity"], 3);
    assert_eq!(body["status"], "held");
    assert_eq!(body["unit_price"], "19.99");
    assert_eq!(body["total"], "59.97");
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["settled"], false);
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires"))
            .expect("RFC 3339");
    let ttl = expires.with_timezone(&Utc) - Utc::now();
    assert!(
        ttl > chrono::Duration::seconds(290) && ttl <= chrono::Duration::seconds(301),
        "{ttl}"
    );
    assert_eq!(app.redis_stock("sneaker").await, 7);
}

#[sqlx::test]
async fn the_same_key_and_body_replays_the_stored_answer(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;

    let first: Value = app
        .reserve("sneaker", "alice", "k-1", 2)
        .await
        .json()
        .await
        .expect("json");
    let again = app
        .client
        .post(app.url("/v1/skus/sneaker/reservations"))
        .bearer_auth(app.token("alice"))
        // The structured-field (quoted) form names the same key.
        .header("Idempotency-Key", "\"k-1\"")
        .json(&json!({"quantity": 2}))
        .send()
        .await
        .expect("send");

    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again, first);
    assert_eq!(
        app.redis_stock("sneaker").await,
        8,
        "the replay took no stock"
    );
}

#[sqlx::test]
async fn the_same_key_with_another_body_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    app.reserve("sneaker", "alice", "k-1", 1).await;

    let (status, code, _) = error_code(app.reserve("sneaker", "alice", "k-1", 2).await).await;

    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
    assert_eq!(app.redis_stock("sneaker").await, 9);
}

#[sqlx::test]
async fn keys_are_scoped_per_buyer(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;

    let alice: Value = app
        .reserve("sneaker", "alice", "same", 1)
        .await
        .json()
        .await
        .expect("json");
    let bob = app.reserve("sneaker", "bob", "same", 1).await;

    assert_eq!(bob.status(), 201);
    assert!(bob.headers().get("idempotent-replayed").is_none());
    let bob: Value = bob.json().await.expect("json");
    assert_ne!(alice["id"], bob["id"]);
}

#[sqlx::test]
async fn twenty_concurrent_copies_of_one_request_make_one_hold(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(100, 5)).await;

    let responses =
        futures::future::join_all((0..20).map(|_| app.reserve("sneaker", "alice", "once", 2)))
            .await;

    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for response in responses {
        assert_eq!(response.status(), 201);
        if response.headers().get("idempotent-replayed").is_none() {
            fresh += 1;
        }
        let body: Value = response.json().await.expect("json");
        ids.insert(body["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(fresh, 1);
    assert_eq!(app.redis_stock("sneaker").await, 98);
}

#[sqlx::test]
async fn a_buyer_at_the_limit_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    assert_eq!(
        app.reserve("sneaker", "alice", "k-1", 2).await.status(),
        201
    );

    let (status, code, body) = error_code(app.reserve("sneaker", "alice", "k-2", 1).await).await;

    assert_eq!((status, code.as_str()), (409, "buyer_limit_reached"));
    assert_eq!(body["limit"], 2);
    assert_eq!(app.reserve("sneaker", "bob", "k-1", 2).await.status(), 201);
}

#[sqlx::test]
async fn a_refusal_is_not_stored_so_a_retry_is_decided_afresh(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(1, 5)).await;
    assert_eq!(app.reserve("sneaker", "bob", "b", 1).await.status(), 201);
    let (_, code, body) = error_code(app.reserve("sneaker", "alice", "k", 1).await).await;
    assert_eq!(code, "sold_out");
    assert_eq!(body["available"], 0);

    // Raising the live sale's total puts the unit on sale at once: the same key is now admitted.
    assert_eq!(
        app.put_sale("sneaker", &sale_body(2, 5)).await.status(),
        200
    );
    assert_eq!(app.reserve("sneaker", "alice", "k", 1).await.status(), 201);
}

#[sqlx::test]
async fn more_than_the_remaining_stock_is_sold_out(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(3, 5)).await;

    let (status, code, body) = error_code(app.reserve("sneaker", "alice", "k", 4).await).await;

    assert_eq!((status, code.as_str()), (409, "sold_out"));
    assert_eq!(body["available"], 3);
    assert_eq!(app.redis_stock("sneaker").await, 3);
}

#[sqlx::test]
async fn a_sale_that_has_not_started_is_not_open(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut sale = sale_body(10, 2);
    let opens = Utc::now() + chrono::Duration::hours(1);
    sale["starts_at"] = json!(opens.to_rfc3339());
    app.open_sale("later", &sale).await;

    let (status, code, body) = error_code(app.reserve("later", "alice", "k", 1).await).await;

    assert_eq!((status, code.as_str()), (409, "sale_not_open"));
    assert!(body["opens_at"].is_string());
    assert_eq!(app.redis_stock("later").await, 10);
}

#[sqlx::test]
async fn a_sale_that_has_ended_is_not_open(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut sale = sale_body(10, 2);
    sale["starts_at"] = json!((Utc::now() - chrono::Duration::hours(2)).to_rfc3339());
    sale["ends_at"] = json!((Utc::now() - chrono::Duration::hours(1)).to_rfc3339());
    app.open_sale("over", &sale).await;

    let (status, code, _) = error_code(app.reserve("over", "alice", "k", 1).await).await;

    assert_eq!((status, code.as_str()), (409, "sale_not_open"));
}

#[sqlx::test]
async fn an_unknown_sku_is_404_and_a_sku_not_prewarmed_says_so(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.put_sale("cold", &sale_body(10, 2)).await.status(), 200);

    let (status, code, _) = error_code(app.reserve("nope", "alice", "k", 1).await).await;
    assert_eq!((status, code.as_str()), (404, "unknown_sku"));
    // Not "sale_not_open": that is a window not yet started, which buyers wait for; this is an
    // operator's missing step.
    let (status, code, body) = error_code(app.reserve("cold", "alice", "k", 1).await).await;
    assert_eq!((status, code.as_str()), (409, "sale_not_prewarmed"));
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("prewarm")),
        "{body}"
    );
    let (status, code, _) = error_code(app.reserve("bad{sku}", "alice", "k", 1).await).await;
    assert_eq!((status, code.as_str()), (404, "unknown_sku"));
}

#[sqlx::test]
async fn a_buyer_over_the_rate_limit_gets_429_with_retry_after(pool: PgPool) {
    let options = AppOptions {
        buyer_rate: Some(BuyerRate {
            per_second: 1.0,
            burst: 2,
        }),
        ..AppOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(100, 50)).await;

    assert_eq!(
        app.reserve("sneaker", "alice", "k-1", 1).await.status(),
        201
    );
    assert_eq!(
        app.reserve("sneaker", "alice", "k-2", 1).await.status(),
        201
    );
    let limited = app.reserve("sneaker", "alice", "k-3", 1).await;

    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers()["ratelimit-policy"], "\"buyer\";q=2;w=2");
    assert!(
        limited.headers()["ratelimit"]
            .to_str()
            .expect("ascii")
            .starts_with("\"buyer\";r=0;t=")
    );
    let (_, code, _) = error_code(limited).await;
    assert_eq!(code, "rate_limited");
    // A replay is answered without spending the quota; another buyer has their own.
    assert_eq!(
        app.reserve("sneaker", "alice", "k-1", 1).await.status(),
        201
    );
    assert_eq!(app.reserve("sneaker", "bob", "k-1", 1).await.status(), 201);
    assert_eq!(app.redis_stock("sneaker").await, 97);
}

#[sqlx::test]
async fn a_flooding_client_is_shed_before_redis(pool: PgPool) {
    let options = AppOptions {
        client_rate: 1,
        client_burst: 1,
        ..AppOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    // Admin calls are not new-buyer traffic: they spend none of the client's burst.
    app.open_sale("sneaker", &sale_body(100, 50)).await;

    assert_eq!(
        app.reserve("sneaker", "alice", "k-1", 1).await.status(),
        201
    );
    let shed = app.reserve("sneaker", "alice", "k-2", 1).await;

    assert_eq!(shed.status(), 429);
    assert!(shed.headers().contains_key("retry-after"));
    assert!(
        shed.headers()["ratelimit-policy"]
            .to_str()
            .expect("ascii")
            .starts_with("\"client\"")
    );
    assert_eq!(
        app.redis_stock("sneaker").await,
        99,
        "the shed request never reached Redis"
    );
}

#[sqlx::test]
async fn request_validation_uses_the_error_format(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let post = || {
        app.client
            .post(app.url("/v1/skus/sneaker/reservations"))
            .bearer_auth(app.token("alice"))
    };

    let missing_key = post()
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(missing_key).await.1, "idempotency_key_missing");
    let long_key = post()
        .header("Idempotency-Key", "k".repeat(256))
        .json(&json!({"quantity": 1}));
    let (status, code, _) = error_code(long_key.send().await.expect("send")).await;
    assert_eq!((status, code.as_str()), (400, "idempotency_key_invalid"));

    for (quantity, expected) in [
        (json!(0), 422),
        (json!(-1), 422),
        (json!("2"), 422),
        (json!(1.5), 422),
    ] {
        let response = post()
            .header("Idempotency-Key", "q")
            .json(&json!({"quantity": quantity}));
        assert_eq!(
            response.send().await.expect("send").status(),
            expected,
            "{quantity}"
        );
    }
    let malformed = post()
        .header("Idempotency-Key", "m")
        .header("content-type", "application/json")
        .body("{");
    let (status, code, _) = error_code(malformed.send().await.expect("send")).await;
    assert_eq!((status, code.as_str()), (400, "malformed_json"));
    let not_json = post().header("Idempotency-Key", "t").body("quantity=1");
    let (status, code, _) = error_code(not_json.send().await.expect("send")).await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    let huge = post()
        .header("Idempotency-Key", "h")
        .header("content-type", "application/json")
        .body(format!(
            "{{\"quantity\": 1, \"pad\": \"{}\"}}",
            "x".repeat(20 * 1024)
        ));
    let (status, code, _) = error_code(huge.send().await.expect("send")).await;
    assert_eq!((status, code.as_str()), (413, "body_too_large"));
    assert_eq!(app.redis_stock("sneaker").await, 10);
}

#[sqlx::test]
async fn a_buyer_reads_their_own_reservation_and_nobody_elses(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let created: Value = app
        .reserve("sneaker", "alice", "k", 2)
        .await
        .json()
        .await
        .expect("json");
    let path = format!("/v1/reservations/{}", created["id"].as_str().expect("id"));

    let own = app.get(&path, Some(&app.token("alice"))).await;
    assert_eq!(own.status(), 200);
    let own: Value = own.json().await.expect("json");
    assert_eq!(own, created);

    let other = app.get(&path, Some(&app.token("mallory"))).await;
    assert_eq!(error_code(other).await.1, "reservation_not_found");
    let missing = app
        .get(
            &format!("/v1/reservations/{}", uuid::Uuid::new_v4()),
            Some(&app.token("alice")),
        )
        .await;
    assert_eq!(missing.status(), 404);
    let garbage = app
        .get("/v1/reservations/nope", Some(&app.token("alice")))
        .await;
    assert_eq!(garbage.status(), 404);
}

#[sqlx::test]
async fn the_gate_reloads_its_script_after_script_flush(pool: PgPool) {
    // After SCRIPT FLUSH (or a Redis restart) EVALSHA answers NOSCRIPT; the gate reloads.
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    assert_eq!(
        app.reserve("sneaker", "alice", "k-1", 1).await.status(),
        201
    );

    // On a cluster the client sends SCRIPT FLUSH to every node.
    let mut conn = app.redis_connection().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    tokio::time::sleep(Duration::from_millis(10)).await;

    assert_eq!(
        app.reserve("sneaker", "alice", "k-2", 1).await.status(),
        201
    );
    assert_eq!(app.redis_stock("sneaker").await, 8);
}

#[sqlx::test]
async fn a_quantity_written_as_a_whole_float_is_a_quantity(pool: PgPool) {
    // JSON Schema calls 1.0 an integer, so a client generated from the OpenAPI document may
    // send it; on main it was refused 422 invalid_body.
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    let send = |quantity: serde_json::Value, key: &'static str| {
        app.client
            .post(app.url("/v1/skus/sneaker/reservations"))
            .bearer_auth(app.token("alice"))
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "quantity": quantity }))
            .send()
    };
    let held = send(serde_json::json!(1.0), "whole").await.expect("send");
    assert_eq!(held.status(), 201);
    for (bad, key) in [
        (serde_json::json!(1.5), "fraction"),
        (serde_json::json!("1"), "string"),
    ] {
        let refused = send(bad.clone(), key).await.expect("send");
        assert_eq!(refused.status(), 422, "{bad}");
    }
}

/// A gate of an earlier version wrote idempotency records as hashes; those still answer a
/// retry and follow their hold's transitions until their TTL ends (a rolling upgrade during a
/// sale must not turn retries into errors or second holds).
#[sqlx::test]
async fn an_idempotency_record_written_as_a_hash_still_answers_retries(pool: PgPool) {
    use flashgate::domain::{BuyerId, IdempotencyKey, Sku};
    use redis::AsyncCommands;

    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let first: Value = app
        .reserve("sneaker", "alice", "k1", 2)
        .await
        .json()
        .await
        .expect("json");

    // Rewrite the record as the earlier version wrote it.
    let keys = app.namespace.sku(&Sku::parse("sneaker").expect("sku"));
    let record_key = keys.idempotency(
        &BuyerId::parse("alice").expect("buyer"),
        &IdempotencyKey::parse("k1").expect("key"),
    );
    let mut conn = app.redis_connection().await;
    let record: String = conn.get(&record_key).await.expect("GET");
    let fields: Vec<&str> = record.split('\n').collect();
    assert_eq!(fields.len(), 8, "{record}");
    let _: i64 = conn.del(&record_key).await.expect("DEL");
    let names = [
        "status", "id", "q", "price", "cur", "created", "expires", "fp",
    ];
    let pairs: Vec<(&str, &str)> = names.iter().copied().zip(fields.iter().copied()).collect();
    let _: () = conn.hset_multiple(&record_key, &pairs).await.expect("HSET");
    let _: bool = conn.expire(&record_key, 3600).await.expect("EXPIRE");

    let retry = app.reserve("sneaker", "alice", "k1", 2).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let replayed: Value = retry.json().await.expect("json");
    assert_eq!(replayed["id"], first["id"]);
    assert_eq!(replayed["status"], "held");
    let (status, code, _) = error_code(app.reserve("sneaker", "alice", "k1", 3).await).await;
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));

    let id = first["id"].as_str().expect("id");
    let released = app.act(id, "release", &app.token("alice")).await;
    assert_eq!(released.status(), 200);
    let status: String = conn.hget(&record_key, "status").await.expect("HGET");
    assert_eq!(status, "released");
    let replayed: Value = app
        .reserve("sneaker", "alice", "k1", 2)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(replayed["status"], "released");
    assert_eq!(replayed["id"], first["id"]);
}

/// reserve.lua reads its optional groups by the letters in ARGV[9]: a letter it does not know
/// would shift every group after it, so it is an error before any write.
#[sqlx::test]
async fn reserve_lua_refuses_an_unknown_argument_group_before_any_write(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let keys = app.namespace.sku(&Sku::parse("sneaker").expect("sku"));
    let buyer = BuyerId::parse("alice").expect("buyer");
    let key = IdempotencyKey::parse("k-1").expect("key");
    let id = ReservationId::generate(1);
    let script = redis::Script::new(concat!(
        include_str!("../../lua/idempotency.lua"),
        include_str!("../../lua/sale.lua"),
        include_str!("../../lua/hold.lua"),
        include_str!("../../lua/room.lua"),
        include_str!("../../lua/reserve.lua")
    ));
    let mut conn = app.redis_connection().await;
    let events_before: u64 = conn.xlen(keys.events()).await.expect("XLEN");
    let mut call = script.prepare_invoke();
    for k in [
        keys.meta(),
        keys.stock(),
        keys.buyer(&buyer),
        keys.idempotency(&buyer, &key),
        keys.hold(id),
        keys.holds(),
        keys.events(),
        keys.buyers(),
    ] {
        call.key(k);
    }
    // The fixed arguments, then a group 'x' no script version defines.
    for arg in [
        &id.to_string(),
        "alice",
        "1",
        "sneaker|1",
        "86400",
        "k-1",
        "sneaker",
        "0",
        "x",
    ] {
        call.arg(arg);
    }
    let answer: redis::RedisResult<String> = call.invoke_async(&mut conn).await;
    let err = answer.expect_err("an unknown group is an error");
    assert!(
        err.to_string().contains("unknown argument group x"),
        "{err}"
    );
    let stock: i64 = conn.get(keys.stock()).await.expect("GET");
    assert_eq!(stock, 10);
    let events_after: u64 = conn.xlen(keys.events()).await.expect("XLEN");
    assert_eq!(events_after, events_before);
    let held: bool = conn.exists(keys.hold(id)).await.expect("EXISTS");
    assert!(!held);
}

/// A sale an earlier version loaded has no packed `decide` field in its meta hash (lua/sale.lua):
/// reserve.lua reads its fields one by one, so the sale keeps selling, and keeps following its
/// fields, through an upgrade.
#[sqlx::test]
async fn a_sale_loaded_before_its_fields_were_packed_is_still_decided(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let keys = app.namespace.sku(&Sku::parse("sneaker").expect("sku"));
    let mut conn = app.redis_connection().await;
    let removed: u64 = conn.hdel(keys.meta(), "decide").await.expect("HDEL");
    assert_eq!(removed, 1, "load_sale.lua packs the sale's fields");

    let response = app.reserve("sneaker", "alice", "k-1", 2).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["unit_price"], "19.99");
    assert_eq!(app.redis_stock("sneaker").await, 8);

    // An earlier version's admin wrote the field alone.
    let _: () = conn
        .hset(keys.meta(), "state", "paused")
        .await
        .expect("HSET");
    let response = app.reserve("sneaker", "bob", "k-1", 1).await;
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (409, "sale_paused"));
}

/// A hold an earlier version recorded with its fields one by one, where reserve.lua now packs
/// them into `hold` (lua/hold.lua), as an upgrade in the middle of a sale finds it.
async fn unpack_hold(conn: &mut flashgate::gate::RedisConnection, key: String) {
    let packed: String = conn.hget(&key, "hold").await.expect("the hold is packed");
    let values: Vec<&str> = packed.split('\n').collect();
    let names = [
        "id", "buyer", "idem", "q", "price", "cur", "created", "expires",
    ];
    assert_eq!(values.len(), names.len(), "{packed:?}");
    let fields: Vec<(&str, &str)> = names.into_iter().zip(values).skip(1).collect();
    let _: () = redis::pipe()
        .atomic()
        .hdel(&key, "hold")
        .ignore()
        .hset_multiple(&key, &fields)
        .ignore()
        .query_async(conn)
        .await
        .expect("rewrite the hold");
}

/// Holds recorded before their fields were packed (an earlier version's, still live when the
/// gate is upgraded) are read, audited, recorded again, released and committed as before.
#[sqlx::test]
async fn a_hold_recorded_before_its_fields_were_packed_is_still_read_and_moved(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let sku = Sku::parse("sneaker").expect("sku");
    let keys = app.namespace.sku(&sku);
    let kept = app.hold("sneaker", "alice", "k-1").await;
    let given_back = app.hold("sneaker", "bob", "k-1").await;
    let show = || async {
        let mut shown = app
            .get_json(
                &format!("/v1/reservations/{kept}"),
                Some(&app.token("alice")),
            )
            .await;
        // Whether Postgres has it yet is the settler's pace, not the hold's record.
        shown
            .as_object_mut()
            .expect("a reservation")
            .remove("settled");
        shown
    };
    let shown_before = show().await;
    let mut conn = app.redis_connection().await;
    let entry_of = |entries: &[(String, HashMap<String, String>)]| {
        entries
            .iter()
            .rev()
            .find_map(|(_, fields)| fields.get("hold").filter(|h| h.starts_with(&kept)).cloned())
    };
    let recorded: Vec<(String, HashMap<String, String>)> =
        conn.xrange_all(keys.events()).await.expect("XRANGE");
    let recorded = entry_of(&recorded).expect("the hold's reserved entry");
    let kept_id = ReservationId::parse(&kept).expect("id");
    for id in [&kept, &given_back] {
        unpack_hold(&mut conn, keys.hold(ReservationId::parse(id).expect("id"))).await;
    }

    assert_eq!(show().await, shown_before);
    let mut audited: Vec<(String, u32, String)> = app
        .gate
        .hold_summaries(&sku)
        .await
        .expect("audit scan")
        .into_iter()
        .map(|hold| (hold.buyer, hold.quantity, hold.idempotency_key))
        .collect();
    audited.sort();
    assert_eq!(
        audited,
        [
            ("alice".into(), 1, "k-1".into()),
            ("bob".into(), 1, "k-1".into())
        ]
    );
    app.gate
        .rerecord_hold(&sku, kept_id, true)
        .await
        .expect("rerecord");
    let entries: Vec<(String, HashMap<String, String>)> =
        conn.xrange_all(keys.events()).await.expect("XRANGE");
    assert_eq!(
        entry_of(&entries),
        Some(recorded),
        "recorded again as reserve.lua packs it"
    );

    let released = app.act(&given_back, "release", &app.token("bob")).await;
    assert_eq!(released.status(), 200);
    assert_eq!(
        app.redis_stock("sneaker").await,
        9,
        "the released unit is back on sale"
    );
    let again = app.reserve("sneaker", "bob", "k-2", 5).await;
    assert_eq!(
        again.status(),
        201,
        "bob's count gave the released unit back"
    );
    let committed = app.act(&kept, "commit", &app.token("alice")).await;
    assert_eq!(committed.status(), 200);
    let body: Value = committed.json().await.expect("json");
    assert_eq!(body["status"], "committed");
    assert_eq!(body["buyer_id"], "alice");
}
