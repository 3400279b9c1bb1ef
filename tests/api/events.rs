//! Events out (docs/DESIGN.md §11): the outbox written by settlement and by the sale's own
//! changes, the pull API, the relay to RabbitMQ and the webhook.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashgate::domain::Sku;
use flashgate::events::{AmqpSink, EventFilter, WebhookSettings, WebhookSink};
use flashgate::settler::{FaultPoint, Faults, SettleError};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::broker::TestExchange;
use crate::helpers::{
    ADMIN_TOKEN, AppOptions, TestApp, database_url, error_code, sale_body, spawn_app,
    spawn_app_with,
};
use crate::proxy::Proxy;

fn sku(code: &str) -> Sku {
    Sku::parse(code).expect("sku")
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect()
}

/// The sequences are 1, 2, 3, ... with no gap and no repeat.
fn assert_gap_free(events: &[Value]) {
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("seq"))
        .collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(sequences, expected, "sequences");
}

async fn hold_id(app: &TestApp, code: &str, buyer: &str) -> String {
    let response = app.reserve(code, buyer, &format!("{buyer}-key"), 1).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

async fn post_admin(app: &TestApp, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("admin call")
}

/// A relay running in the background until dropped.
struct Running(CancellationToken);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn run(relay: flashgate::events::Relay) -> Running {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move { relay.run(token).await });
    Running(stop)
}

#[sqlx::test]
async fn every_decision_and_sale_change_is_recorded_once_in_sequence(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(2, 1)).await;
    let alice = hold_id(&app, "sneaker", "alice").await;
    let bob = hold_id(&app, "sneaker", "bob").await;
    let committed = app.act(&alice, "commit", &app.token("alice")).await;
    assert_eq!(committed.status(), 200);
    assert_eq!(
        app.act(&bob, "release", &app.token("bob")).await.status(),
        200
    );
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    assert_eq!(
        post_admin(&app, "/v1/admin/skus/sneaker/pause", None)
            .await
            .status(),
        200
    );
    // Pausing a paused sale changes nothing, so it records nothing.
    assert_eq!(
        post_admin(&app, "/v1/admin/skus/sneaker/pause", None)
            .await
            .status(),
        200
    );
    assert_eq!(
        post_admin(&app, "/v1/admin/skus/sneaker/resume", None)
            .await
            .status(),
        200
    );
    let restock = post_admin(
        &app,
        "/v1/admin/skus/sneaker/restock",
        Some(json!({"quantity": 3})),
    )
    .await;
    assert_eq!(restock.status(), 200);

    let events = app.events_of("sneaker").await;
    assert_eq!(
        kinds(&events),
        [
            "stock.changed",
            "sale.opened",
            "sale.sold_out",
            "reservation.committed",
            "reservation.released",
            "sale.back_in_stock",
            "sale.paused",
            "sale.resumed",
            "stock.changed",
        ]
    );
    assert_gap_free(&events);
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");

    assert_eq!(events[0]["cause"], "created");
    assert_eq!(events[0]["total"], 2);
    assert_eq!(events[2]["available"], 0);
    let commit = &events[3];
    assert_eq!(commit["reservation_id"], alice.as_str());
    assert_eq!(commit["buyer_id"], "alice");
    assert_eq!(commit["quantity"], 1);
    assert_eq!(commit["unit_price"], "19.99");
    assert_eq!(commit["amount"], "19.99");
    assert_eq!(commit["currency"], "USD");
    assert_eq!(commit["sku"], "sneaker");
    assert!(commit["stream_event_id"].is_string(), "{commit}");
    assert_eq!(events[4]["reservation_id"], bob.as_str());
    assert_eq!(events[5]["available"], 1);
    assert_eq!(events[6]["state"], "paused");
    assert_eq!(events[8]["cause"], "restock");
    assert_eq!(events[8]["delta"], 3);
    assert_eq!(events[8]["total"], 5);
    // Every body validates against its kind's schema, as a consumer's would.
    for event in &events {
        let kind = flashgate::events::EventKind::parse(event["kind"].as_str().expect("kind"))
            .expect("a kind");
        let schema = flashgate::events::contract::schema(kind);
        let validator = jsonschema::draft7::new(&schema).expect("schema");
        assert!(validator.is_valid(event), "{event}");
    }
}

#[sqlx::test]
async fn held_is_recorded_only_when_asked_for(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            events: EventFilter::parse("reservation.*").expect("filter"),
            ..AppOptions::default()
        },
    )
    .await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    let alice = hold_id(&app, "sneaker", "alice").await;
    app.settler().drain(&sku("sneaker")).await.expect("drain");
    let events = app.events_of("sneaker").await;
    assert_eq!(kinds(&events), ["reservation.held"]);
    assert_eq!(events[0]["reservation_id"], alice.as_str());
    // The sequence counts only what is recorded: no gap for the kinds left out.
    assert_gap_free(&events);
}

#[sqlx::test]
async fn a_settlement_that_rolls_back_records_nothing_and_its_retry_records_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (n, point) in [FaultPoint::AfterInserts, FaultPoint::MidBatch]
        .into_iter()
        .enumerate()
    {
        let code = format!("crash-{n}");
        app.open_sale(&code, &sale_body(3, 1)).await;
        // Redis believes in 2 more units than Postgres has: 2 of the 5 holds are refused.
        app.set_redis_stock(&code, 5).await;
        for buyer in 0..5 {
            hold_id(&app, &code, &format!("buyer-{buyer}")).await;
        }
        let before = app.events_of(&code).await.len();
        let crashing = app
            .settler()
            .with_faults(Faults::inject(move |p| p == point));
        let crash = crashing.settle_batch(&sku(&code)).await;
        assert!(matches!(crash, Err(SettleError::Injected(_))), "{crash:?}");
        assert_eq!(
            app.events_of(&code).await.len(),
            before,
            "{point:?}: a batch that rolled back recorded no event"
        );

        app.settler().drain(&sku(&code)).await.expect("drain");
        let events = app.events_of(&code).await;
        let after: Vec<&str> = kinds(&events)[before..].to_vec();
        assert_eq!(
            after,
            [
                "sale.sold_out",
                "reservation.rejected",
                "reservation.rejected"
            ],
            "{point:?}"
        );
        for rejected in &events[before + 1..] {
            assert_eq!(rejected["reason"], "out_of_stock");
        }
        assert_gap_free(&events);
    }
}

#[sqlx::test]
async fn the_pull_api_pages_through_a_sku_in_sequence_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    for n in 0..3 {
        assert_eq!(
            post_admin(&app, "/v1/admin/skus/sneaker/pause", None)
                .await
                .status(),
            200
        );
        assert_eq!(
            post_admin(&app, "/v1/admin/skus/sneaker/resume", None)
                .await
                .status(),
            200
        );
        let _ = n;
    }
    let all = app.events_of("sneaker").await;
    assert_eq!(all.len(), 8);
    let page = app
        .get_json(
            "/v1/admin/events?sku=sneaker&after=2&limit=3",
            Some(ADMIN_TOKEN),
        )
        .await;
    let sequences: Vec<i64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["sequence"].as_i64().expect("seq"))
        .collect();
    assert_eq!(sequences, [3, 4, 5]);
    assert_eq!(page["next_after"], 5);
    assert_eq!(page["more"], true);
    let last = app
        .get_json(
            "/v1/admin/events?sku=sneaker&after=5&limit=3",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(last["next_after"], 8);
    assert_eq!(last["more"], false);
    let past = app
        .get_json("/v1/admin/events?sku=sneaker&after=8", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(past["events"], json!([]));
    assert_eq!(past["next_after"], 8);

    let (status, code, _) = error_code(
        app.get("/v1/admin/events?sku=nope", Some(ADMIN_TOKEN))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "unknown_sku"));
    let (status, code, _) = error_code(app.get("/v1/admin/events", Some(ADMIN_TOKEN)).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    let (status, code, _) = error_code(
        app.get("/v1/admin/events?sku=sneaker&limit=0", Some(ADMIN_TOKEN))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    let (status, _, _) = error_code(app.get("/v1/admin/events?sku=sneaker", None).await).await;
    assert_eq!(status, 401);
    let (status, _, _) = error_code(
        app.get("/v1/admin/events?sku=sneaker", Some(&app.token("alice")))
            .await,
    )
    .await;
    assert_eq!(status, 403);
}

/// Commits `buyers` holds on the SKU; their reservation ids.
async fn commit_many(app: &TestApp, code: &str, buyers: std::ops::Range<usize>) -> Vec<String> {
    let mut committed = Vec::new();
    for n in buyers {
        let buyer = format!("buyer-{n}");
        let id = hold_id(app, code, &buyer).await;
        let answer = app.act(&id, "commit", &app.token(&buyer)).await;
        assert_eq!(answer.status(), 200);
        committed.push(id);
    }
    committed
}

async fn unpublished(app: &TestApp) -> i64 {
    app.store
        .events_unsent(flashgate::store::Sink::Amqp)
        .await
        .expect("unsent")
}

#[sqlx::test]
async fn the_relay_publishes_every_event_with_its_id_in_per_sku_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    let mut everything = exchange.queue("#").await;
    let relay = run(app
        .relay()
        .with_amqp(AmqpSink::new(exchange.settings()).expect("sink")));

    app.open_sale("sneaker", &sale_body(10, 1)).await;
    app.open_sale("boot", &sale_body(10, 1)).await;
    commit_many(&app, "sneaker", 0..5).await;
    commit_many(&app, "boot", 0..3).await;
    let expected = app.events_of("sneaker").await.len() + app.events_of("boot").await.len();
    assert!(
        everything
            .until(Duration::from_secs(20), |m| m.len() >= expected)
            .await,
        "received {} of {expected}",
        everything.messages.len()
    );
    let messages = everything.settle(Duration::from_millis(300)).await.to_vec();
    assert_eq!(
        messages.len(),
        expected,
        "nothing sent twice in normal operation"
    );
    let mut last: HashMap<String, i64> = HashMap::new();
    for message in &messages {
        let body = &message.body;
        assert_eq!(message.message_id.as_deref(), body["id"].as_str());
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(message.delivery_mode, Some(2), "persistent");
        assert_eq!(
            message.routing_key,
            format!(
                "{}.{}",
                body["kind"].as_str().expect("kind"),
                body["sku"].as_str().expect("sku")
            )
        );
        assert_eq!(message.sequence_header, body["sequence"].as_i64());
        let sku = body["sku"].as_str().expect("sku").to_owned();
        let sequence = body["sequence"].as_i64().expect("sequence");
        let previous = last.insert(sku.clone(), sequence).unwrap_or(0);
        assert_eq!(sequence, previous + 1, "{sku}: in order, no gap");
    }
    for _ in 0..50 {
        if unpublished(&app).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        unpublished(&app).await,
        0,
        "every row is marked once the broker confirmed"
    );
    let ready = app.get_json("/readyz", None).await;
    assert_eq!(ready["events"]["broker"], "up", "{ready}");
    drop(relay);
    exchange.delete().await;
}

#[sqlx::test]
async fn an_unroutable_event_goes_to_the_dead_letter_exchange_and_the_sku_goes_on(pool: PgPool) {
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    let mut orders = exchange.queue("reservation.committed.#").await;
    let mut dead = exchange.dead_letters().await;
    let relay = run(app
        .relay()
        .with_amqp(AmqpSink::new(exchange.settings()).expect("sink")));
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let committed = commit_many(&app, "sneaker", 0..3).await;
    assert!(
        orders
            .until(Duration::from_secs(20), |m| m.len() >= 3)
            .await
    );
    let ids: Vec<&str> = orders
        .messages
        .iter()
        .map(|m| m.body["reservation_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        committed.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // No queue is bound for stock.changed and sale.opened: both went to `<exchange>.dlx`.
    assert!(dead.until(Duration::from_secs(10), |m| m.len() >= 2).await);
    let dead_kinds: Vec<&str> = dead
        .messages
        .iter()
        .map(|m| m.body["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(dead_kinds, ["stock.changed", "sale.opened"]);
    for _ in 0..50 {
        if unpublished(&app).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unpublished(&app).await, 0);
    drop(relay);
    exchange.delete().await;
}

#[sqlx::test]
async fn while_the_broker_is_unreachable_buyers_are_served_and_the_outbox_waits(pool: PgPool) {
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    let mut everything = exchange.queue("#").await;
    let broker: std::net::SocketAddr = tokio::net::lookup_host(
        exchange
            .url
            .trim_start_matches("amqp://")
            .split('@')
            .next_back()
            .and_then(|rest| rest.split('/').next())
            .expect("broker address"),
    )
    .await
    .expect("resolve")
    .next()
    .expect("address");
    let proxy = Proxy::start(broker).await;
    proxy.cut();
    let through_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.addr.port());
    let relay = run(app.relay().with_amqp(
        AmqpSink::new(flashgate::events::AmqpSettings {
            url: SecretString::from(through_proxy),
            ..exchange.settings()
        })
        .expect("sink"),
    ));
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    commit_many(&app, "sneaker", 0..3).await;
    let mut down = Value::Null;
    for _ in 0..100 {
        down = app.get_json("/readyz", None).await;
        if down["events"]["broker"] == "down" && down["events"]["pending"].as_i64() >= Some(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(down["status"], "ok", "the gate stays ready: {down}");
    assert_eq!(down["events"]["broker"], "down", "{down}");
    assert_eq!(down["events"]["pending"], 5, "{down}");
    assert!(down["events"]["oldest_ms"].as_i64() > Some(0), "{down}");

    proxy.restore();
    assert!(
        everything
            .until(Duration::from_secs(30), |m| m.len() >= 5)
            .await,
        "received {} after the broker came back",
        everything.messages.len()
    );
    let mut up = Value::Null;
    for _ in 0..50 {
        up = app.get_json("/readyz", None).await;
        if up["events"]["pending"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up["events"]["broker"], "up", "{up}");
    assert_eq!(up["events"]["pending"], 0, "{up}");
    drop(relay);
    exchange.delete().await;
}

fn relay_config(url: &str, exchange: &str) -> flashgate::config::RelayConfig {
    flashgate::config::RelayConfig {
        amqp_url: Some(SecretString::from(url.to_owned())),
        amqp_exchange: exchange.to_owned(),
        amqp_confirm_timeout_ms: 3_000,
        outbox_retention: Duration::from_secs(3600),
        relay_batch: 100,
        relay_poll_ms: 100,
        webhook_url: None,
        webhook_secret: None,
        webhook_timeout_ms: 1_000,
        webhook_retry_for: Duration::from_secs(60),
    }
}

#[sqlx::test]
async fn an_exchange_of_another_type_refuses_to_start_naming_the_setting(pool: PgPool) {
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    // Someone declared the name as a fanout exchange: publishing by routing key would be wrong.
    let _ = exchange.dead_letters().await; // declares `<name>.dlx` as fanout
    let taken = format!("{}.dlx", exchange.name);
    let refused = flashgate::startup::relay(&relay_config(&exchange.url, &taken), &app.store).await;
    let message = format!("{:#}", refused.expect_err("refused"));
    assert!(message.contains("FLASHGATE_AMQP_EXCHANGE"), "{message}");

    let malformed =
        flashgate::startup::relay(&relay_config("http://not-amqp", &exchange.name), &app.store)
            .await;
    let message = format!("{:#}", malformed.expect_err("refused"));
    assert!(message.contains("FLASHGATE_AMQP_URL"), "{message}");
    exchange.delete().await;
}

#[sqlx::test]
async fn wrong_credentials_are_reported_in_readyz_and_the_gate_starts(pool: PgPool) {
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    let wrong = exchange
        .url
        .replacen("guest:guest", "guest:wrong-password", 1);
    let relay = flashgate::startup::relay(&relay_config(&wrong, &exchange.name), &app.store)
        .await
        .expect("an unreachable broker does not stop the gate");
    let running = run(relay.reporting_to(app.events.clone()));
    let mut ready = Value::Null;
    for _ in 0..50 {
        ready = app.get_json("/readyz", None).await;
        if ready["events"]["broker"] == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(ready["events"]["broker"], "down", "{ready}");
    drop(running);
    exchange.delete().await;
}

/// A webhook receiver: checks every signature, answers 500 to the calls `fail` picks.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<usize>>,
}

async fn receiver(
    secret: &str,
    fail: impl Fn(usize, &Value) -> bool + Send + Sync + 'static,
) -> Receiver {
    use axum::http::{HeaderMap, StatusCode};
    let key = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("key")
    };
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls: Arc<Mutex<usize>> = Arc::default();
    let fail = Arc::new(fail);
    let handler = {
        let (bodies, calls) = (bodies.clone(), calls.clone());
        move |headers: HeaderMap, body: String| {
            let (bodies, calls, fail, key) =
                (bodies.clone(), calls.clone(), fail.clone(), key.clone());
            async move {
                let header = |name: &str| headers[name].to_str().expect("header").to_owned();
                let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
                let expected = flashgate::events::sign_webhook(
                    &key,
                    &id,
                    timestamp.parse().expect("timestamp"),
                    &body,
                );
                assert_eq!(header("webhook-signature"), expected, "signature");
                let value: Value = serde_json::from_str(&body).expect("json");
                assert_eq!(value["id"], id.as_str());
                let call = {
                    let mut calls = calls.lock().expect("calls");
                    *calls += 1;
                    *calls
                };
                if fail(call, &value) {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                bodies.lock().expect("bodies").push(value);
                StatusCode::NO_CONTENT
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/hooks/flashgate",
        listener.local_addr().expect("addr")
    );
    let app = axum::Router::new().route("/hooks/flashgate", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, bodies, calls }
}

#[sqlx::test]
async fn the_webhook_gets_signed_events_in_order_and_a_failed_call_is_retried(pool: PgPool) {
    let app = spawn_app(pool).await;
    let secret = flashgate::events::generate_webhook_secret();
    // The first two calls fail: the SKU is retried from the event that failed.
    let hook = receiver(&secret, |call, _| call <= 2).await;
    let relay = run(app.relay().with_webhook(
        WebhookSink::new(WebhookSettings {
            url: hook.url.clone(),
            secret: SecretString::from(secret.clone()),
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(60),
        })
        .expect("sink"),
    ));
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    commit_many(&app, "sneaker", 0..3).await;
    let expected = app.events_of("sneaker").await;
    for _ in 0..100 {
        if hook.bodies.lock().expect("bodies").len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = hook.bodies.lock().expect("bodies").clone();
    assert_eq!(received, expected, "every event, once, in sequence order");
    assert!(*hook.calls.lock().expect("calls") >= expected.len() + 2);
    drop(relay);
}

#[sqlx::test]
async fn a_webhook_event_that_keeps_failing_is_given_up_after_its_period(pool: PgPool) {
    let app = spawn_app(pool).await;
    let secret = flashgate::events::generate_webhook_secret();
    // sale.opened is refused every time; everything else is taken.
    let hook = receiver(&secret, |_, body| body["kind"] == "sale.opened").await;
    let relay = run(app.relay().with_webhook(
        WebhookSink::new(WebhookSettings {
            url: hook.url.clone(),
            secret: SecretString::from(secret),
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_millis(700),
        })
        .expect("sink"),
    ));
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    commit_many(&app, "sneaker", 0..2).await;
    let expected = app.events_of("sneaker").await;
    for _ in 0..100 {
        if hook.bodies.lock().expect("bodies").len() >= expected.len() - 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received: Vec<Value> = hook.bodies.lock().expect("bodies").clone();
    let without_opened: Vec<Value> = expected
        .iter()
        .filter(|e| e["kind"] != "sale.opened")
        .cloned()
        .collect();
    assert_eq!(
        received, without_opened,
        "the SKU went on after the given-up event"
    );
    // The claim that gave it up commits after the webhook's last answer.
    let mut gave_up: Vec<String> = Vec::new();
    for _ in 0..100 {
        gave_up = sqlx::query_scalar(
            "SELECT e.kind FROM webhook_given_up g \
             JOIN event_outbox e ON e.sku = g.sku AND e.sequence = g.sequence ORDER BY g.sequence",
        )
        .fetch_all(app.store.pool())
        .await
        .expect("given up");
        if !gave_up.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gave_up, ["sale.opened"]);
    // Still there for a replay.
    assert_eq!(app.events_of("sneaker").await, expected);
    drop(relay);
}

/// The example consumer, as `cargo test` builds it beside this test binary.
fn order_consumer() -> std::path::PathBuf {
    let deps = std::env::current_exe().expect("test binary");
    let examples = deps
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/debug")
        .join("examples")
        .join("order_consumer");
    assert!(
        examples.exists(),
        "{} is missing: `cargo test --workspace` builds the examples",
        examples.display()
    );
    examples
}

#[sqlx::test]
async fn the_example_consumer_creates_one_order_per_commit_however_often_it_is_sent(pool: PgPool) {
    let database = database_url(&pool).await;
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    let queue = format!("{}.orders", exchange.name);
    let consume = |queue: &str| {
        std::process::Command::new(order_consumer())
            .args(["--amqp-url", &exchange.url, "--exchange", &exchange.name])
            .args(["--database-url", &database])
            .args(["--queue", queue, "--exit-when-idle-seconds", "3"])
            .output()
            .expect("run the example consumer")
    };
    // A first run declares its durable queue, as a deployed service has.
    let first = consume(&queue);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    app.open_sale("sneaker", &sale_body(10, 1)).await;
    let committed = commit_many(&app, "sneaker", 0..4).await;
    let relay = run(app
        .relay()
        .with_amqp(AmqpSink::new(exchange.settings()).expect("sink")));
    for _ in 0..100 {
        if unpublished(&app).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every event is sent again, as after a relay died between the confirm and the mark.
    sqlx::query("UPDATE outbox_cursor SET sent_through = 0")
        .execute(app.store.pool())
        .await
        .expect("send again");
    for _ in 0..100 {
        if unpublished(&app).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(relay);

    let output = consume(&queue);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("orders created: 4, duplicates ignored: 4"),
        "{printed}"
    );
    let mut orders: Vec<String> =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT reservation_id FROM orders")
            .fetch_all(app.store.pool())
            .await
            .expect("orders")
            .into_iter()
            .map(|id| id.to_string())
            .collect();
    orders.sort();
    let mut expected = committed;
    expected.sort();
    assert_eq!(orders, expected);
    let amounts: Vec<String> = sqlx::query_scalar("SELECT amount::text FROM orders")
        .fetch_all(app.store.pool())
        .await
        .expect("amounts");
    assert!(amounts.iter().all(|a| a == "19.99"), "{amounts:?}");
    // The service's queue is the test's to remove.
    let connection =
        lapin::Connection::connect(&exchange.url, lapin::ConnectionProperties::default())
            .await
            .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let _ = channel
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    exchange.delete().await;
}

#[sqlx::test]
async fn pruning_deletes_only_old_events_every_sink_has(pool: PgPool) {
    use flashgate::store::Sink;
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    for _ in 0..2 {
        assert_eq!(
            post_admin(&app, "/v1/admin/skus/sneaker/pause", None)
                .await
                .status(),
            200
        );
        assert_eq!(
            post_admin(&app, "/v1/admin/skus/sneaker/resume", None)
                .await
                .status(),
            200
        );
    }
    assert_eq!(app.events_of("sneaker").await.len(), 6);
    // The broker has the first four; the webhook none.
    sqlx::query(
        "INSERT INTO outbox_cursor (sku, sink, sent_through) VALUES ('sneaker', 'amqp', 4)",
    )
    .execute(app.store.pool())
    .await
    .expect("cursor");
    let week = Duration::from_secs(7 * 24 * 3600);
    let store = &app.store;
    assert_eq!(
        store
            .prune_events(week, &[Sink::Amqp], 1000)
            .await
            .expect("prune"),
        0,
        "too young"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = Duration::ZERO;
    assert_eq!(
        store
            .prune_events(now, &[Sink::Amqp, Sink::Webhook], 1000)
            .await
            .expect("prune"),
        0
    );
    assert_eq!(
        store
            .prune_events(now, &[Sink::Amqp], 3)
            .await
            .expect("prune"),
        3,
        "bounded"
    );
    assert_eq!(
        store
            .prune_events(now, &[Sink::Amqp], 1000)
            .await
            .expect("prune"),
        1
    );
    let left: Vec<i64> = app
        .events_of("sneaker")
        .await
        .iter()
        .map(|e| e["sequence"].as_i64().expect("seq"))
        .collect();
    assert_eq!(left, [5, 6], "what the broker has not confirmed stays");
    // Pull-only (no sink): kept for the retention period, then pruned.
    assert_eq!(store.prune_events(now, &[], 1000).await.expect("prune"), 2);
}
