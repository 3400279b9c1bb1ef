//! The waiting room: places in line, admission at the sale's rate and as the stock allows,
//! tickets checked in the reserve script, `sold_out` told as soon as a place cannot be served
//! and never taken back.

use std::time::{Duration, Instant};

use reqwest::Response;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{AppOptions, TestApp, error_code, sale_body, spawn_app, spawn_app_with};

fn room_sale(stock: u32, admit_per_second: u32, window_seconds: u32) -> Value {
    let mut body = sale_body(stock, 1);
    body["waiting_room"] = json!({
        "enabled": true,
        "admit_per_second": admit_per_second,
        "admission_window_seconds": window_seconds,
    });
    body
}

async fn take_place(app: &TestApp, sku: &str, buyer: &str) -> Response {
    app.client
        .post(app.url(&format!("/v1/skus/{sku}/queue")))
        .bearer_auth(app.token(buyer))
        .send()
        .await
        .expect("take a place")
}

/// A new place's answer (asserted 202).
async fn place(app: &TestApp, sku: &str, buyer: &str) -> Value {
    let response = take_place(app, sku, buyer).await;
    assert_eq!(response.status(), 202, "{buyer}");
    assert!(response.headers().contains_key("location"));
    response.json().await.expect("json")
}

async fn poll_raw(app: &TestApp, sku: &str, buyer: &str, ticket: &str) -> Response {
    app.client
        .get(app.url(&format!("/v1/skus/{sku}/queue/{ticket}")))
        .bearer_auth(app.token(buyer))
        .send()
        .await
        .expect("poll")
}

async fn poll(app: &TestApp, sku: &str, buyer: &str, ticket: &str) -> Value {
    let response = poll_raw(app, sku, buyer, ticket).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// Polls until the place is no longer waiting (at most `within`).
async fn settled(app: &TestApp, sku: &str, buyer: &str, ticket: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let view = poll(app, sku, buyer, ticket).await;
        if view["status"] != "waiting" || started.elapsed() > within {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reserve_with_ticket(
    app: &TestApp,
    sku: &str,
    buyer: &str,
    key: &str,
    ticket: &str,
) -> Response {
    app.client
        .post(app.url(&format!("/v1/skus/{sku}/reservations")))
        .bearer_auth(app.token(buyer))
        .header("Idempotency-Key", key)
        .header("Queue-Ticket", ticket)
        .json(&json!({ "quantity": 1 }))
        .send()
        .await
        .expect("reserve")
}

fn ticket_of(view: &Value) -> String {
    view["ticket"].as_str().expect("ticket").to_owned()
}

#[sqlx::test]
async fn with_the_room_off_nothing_changes(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    let sale = app.get_json("/v1/skus/sneaker", None).await;
    assert_eq!(sale["waiting_room"]["enabled"], false);
    assert_eq!(app.reserve("sneaker", "alice", "k1", 1).await.status(), 201);
    let (status, code, _) = error_code(take_place(&app, "sneaker", "bob").await).await;
    assert_eq!((status, code.as_str()), (409, "waiting_room_off"));
}

#[sqlx::test]
async fn a_place_is_one_per_buyer_and_a_reserve_needs_its_admitted_ticket_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(3, 1000, 60)).await;
    let sale = app.get_json("/v1/skus/sneaker", None).await;
    assert_eq!(sale["waiting_room"]["enabled"], true);
    assert_eq!(sale["waiting_room"]["admit_per_second"], 1000);

    let (status, code, _) = error_code(app.reserve("sneaker", "alice", "k0", 1).await).await;
    assert_eq!((status, code.as_str()), (409, "not_your_turn"));

    let alice = place(&app, "sneaker", "alice").await;
    assert_eq!(alice["position"], 1);
    assert_eq!(alice["buyer_id"], "alice");
    let again = place(&app, "sneaker", "alice").await;
    assert_eq!(again["ticket"], alice["ticket"], "the same place again");
    let ticket = ticket_of(&alice);

    let admitted = settled(&app, "sneaker", "alice", &ticket, Duration::from_secs(5)).await;
    assert_eq!(admitted["status"], "admitted", "{admitted}");
    assert!(admitted["admitted_until"].is_string());

    let held = reserve_with_ticket(&app, "sneaker", "alice", "k1", &ticket).await;
    assert_eq!(held.status(), 201);
    // The same request again replays; a new one finds the ticket spent.
    let replay = reserve_with_ticket(&app, "sneaker", "alice", "k1", &ticket).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let (status, code, _) =
        error_code(reserve_with_ticket(&app, "sneaker", "alice", "k2", &ticket).await).await;
    assert_eq!((status, code.as_str()), (409, "ticket_used"));
    assert_eq!(app.redis_stock("sneaker").await, 2);
}

#[sqlx::test]
async fn places_are_admitted_at_the_rate_in_arrival_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(10, 1, 60)).await;
    let mut tickets = Vec::new();
    for buyer in ["a", "b", "c"] {
        tickets.push(ticket_of(&place(&app, "sneaker", buyer).await));
    }
    // One place per second: the third is at least two seconds away.
    let (status, code, body) =
        error_code(reserve_with_ticket(&app, "sneaker", "c", "c1", &tickets[2]).await).await;
    assert_eq!((status, code.as_str()), (409, "not_your_turn"), "{body}");
    let waiting = poll_raw(&app, "sneaker", "c", &tickets[2]).await;
    assert!(waiting.headers().contains_key("retry-after"));
    let waiting: Value = waiting.json().await.expect("json");
    assert_eq!(waiting["status"], "waiting");
    assert!(waiting["ahead"].as_u64().expect("ahead") >= 1, "{waiting}");

    let first = settled(&app, "sneaker", "a", &tickets[0], Duration::from_secs(5)).await;
    assert_eq!(first["status"], "admitted");
    assert_eq!(
        reserve_with_ticket(&app, "sneaker", "a", "a1", &tickets[0])
            .await
            .status(),
        201
    );
    let second = settled(&app, "sneaker", "b", &tickets[1], Duration::from_secs(5)).await;
    assert_eq!(second["status"], "admitted");
    let third = poll(&app, "sneaker", "c", &tickets[2]).await;
    let frontier = third["frontier"].as_u64().expect("frontier");
    assert!(frontier >= 2, "{third}");
}

/// Takes a place for `buyer`, waits for its admission and reserves one unit: the hold's id.
async fn admitted_hold(app: &TestApp, sku: &str, buyer: &str) -> String {
    let ticket = ticket_of(&place(app, sku, buyer).await);
    let view = settled(app, sku, buyer, &ticket, Duration::from_secs(5)).await;
    assert_eq!(view["status"], "admitted", "{view}");
    let held = reserve_with_ticket(app, sku, buyer, "k", &ticket).await;
    assert_eq!(held.status(), 201);
    let body: Value = held.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

#[sqlx::test]
async fn a_new_place_the_stock_cannot_serve_is_refused_without_a_ticket(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(2, 1000, 60)).await;
    place(&app, "sneaker", "a").await;
    place(&app, "sneaker", "b").await;
    // Two units, and two places ahead that may take one each: a third could get nothing.
    let (status, code, _) = error_code(take_place(&app, "sneaker", "c").await).await;
    assert_eq!((status, code.as_str()), (409, "sold_out"));
}

#[sqlx::test]
async fn a_place_is_told_sold_out_once_nothing_can_come_back_and_it_stays_so(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(2, 1000, 60)).await;
    let holds = [
        admitted_hold(&app, "sneaker", "a").await,
        admitted_hold(&app, "sneaker", "b").await,
    ];
    // Nothing in stock, but both held units may come back: c waits.
    let c = ticket_of(&place(&app, "sneaker", "c").await);
    assert_eq!(poll(&app, "sneaker", "c", &c).await["status"], "waiting");
    for (hold, buyer) in holds.iter().zip(["a", "b"]) {
        let committed = app.act(hold, "commit", &app.token(buyer)).await;
        assert_eq!(committed.status(), 200);
    }
    let told = settled(&app, "sneaker", "c", &c, Duration::from_secs(3)).await;
    assert_eq!(told["status"], "sold_out", "{told}");
    let (status, code, _) = error_code(take_place(&app, "sneaker", "d").await).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "sold_out"),
        "no ticket for d"
    );

    // More stock later does not take the verdict back.
    let restock = app
        .client
        .post(app.url("/v1/admin/skus/sneaker/restock"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&json!({ "quantity": 5 }))
        .send()
        .await
        .expect("restock");
    assert_eq!(restock.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(poll(&app, "sneaker", "c", &c).await["status"], "sold_out");
    let (status, code, _) =
        error_code(reserve_with_ticket(&app, "sneaker", "c", "c1", &c).await).await;
    assert_eq!((status, code.as_str()), (409, "sold_out"));
}

#[sqlx::test]
async fn held_units_that_come_back_admit_the_next_place(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(2, 1000, 60)).await;
    let first = admitted_hold(&app, "sneaker", "a").await;
    admitted_hold(&app, "sneaker", "b").await;
    // Nothing in stock, but two held units may come back: c waits instead of being sent away.
    let c = ticket_of(&place(&app, "sneaker", "c").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(poll(&app, "sneaker", "c", &c).await["status"], "waiting");

    let released = app.act(&first, "release", &app.token("a")).await;
    assert_eq!(released.status(), 200);
    let view = settled(&app, "sneaker", "c", &c, Duration::from_secs(5)).await;
    assert_eq!(view["status"], "admitted", "{view}");
    assert_eq!(
        reserve_with_ticket(&app, "sneaker", "c", "k", &c)
            .await
            .status(),
        201
    );
}

#[sqlx::test]
async fn an_admitted_place_that_does_not_reserve_in_its_window_expires(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(5, 1000, 1)).await;
    let ticket = ticket_of(&place(&app, "sneaker", "a").await);
    assert_eq!(
        settled(&app, "sneaker", "a", &ticket, Duration::from_secs(5)).await["status"],
        "admitted"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        poll(&app, "sneaker", "a", &ticket).await["status"],
        "expired"
    );
    let (status, code, _) =
        error_code(reserve_with_ticket(&app, "sneaker", "a", "k", &ticket).await).await;
    assert_eq!((status, code.as_str()), (409, "ticket_expired"));
    assert_eq!(app.redis_stock("sneaker").await, 5);
}

#[sqlx::test]
async fn forged_truncated_foreign_and_misplaced_tickets_are_refused_403(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(5, 1000, 60)).await;
    app.open_sale("boot", &room_sale(5, 1000, 60)).await;
    let ticket = ticket_of(&place(&app, "sneaker", "alice").await);
    let other_sku = ticket_of(&place(&app, "boot", "mallory").await);
    assert_eq!(
        settled(&app, "sneaker", "alice", &ticket, Duration::from_secs(5)).await["status"],
        "admitted"
    );
    let (position, rest) = ticket.split_once('.').expect("ticket");
    let forged = format!("{}.{rest}", position.parse::<u64>().expect("position") + 1);
    let truncated = ticket[..ticket.len() - 3].to_owned();
    let cases = [
        ("mallory", forged.as_str()),
        ("alice", forged.as_str()),
        ("alice", truncated.as_str()),
        ("mallory", ticket.as_str()),
        ("mallory", other_sku.as_str()),
        ("alice", "1.2.3"),
        ("alice", "not-a-ticket"),
    ];
    for (i, (buyer, bad)) in cases.into_iter().enumerate() {
        let key = format!("bad-{i}");
        let (status, code, _) =
            error_code(reserve_with_ticket(&app, "sneaker", buyer, &key, bad).await).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "ticket_invalid"),
            "{buyer} {bad}"
        );
        let (status, code, _) = error_code(poll_raw(&app, "sneaker", buyer, bad).await).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "ticket_invalid"),
            "poll {buyer} {bad}"
        );
    }
    assert_eq!(app.redis_stock("sneaker").await, 5, "no hold was given");
    // The real ticket still works for its buyer.
    assert_eq!(
        reserve_with_ticket(&app, "sneaker", "alice", "good", &ticket)
            .await
            .status(),
        201
    );
}

#[sqlx::test]
async fn room_settings_out_of_range_are_refused_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (room, field) in [
        (
            json!({"enabled": true, "admit_per_second": 0, "admission_window_seconds": 60}),
            "admit_per_second",
        ),
        (
            json!({"enabled": true, "admit_per_second": 10_000_000, "admission_window_seconds": 60}),
            "admit_per_second",
        ),
        (
            json!({"enabled": true, "admit_per_second": 10, "admission_window_seconds": 0}),
            "admission_window_seconds",
        ),
    ] {
        let mut body = sale_body(5, 1);
        body["waiting_room"] = room;
        let (status, code, body) = error_code(app.put_sale("sneaker", &body).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_request"));
        assert!(
            body["field"].as_str().expect("field").ends_with(field),
            "{body}"
        );
    }
}

#[sqlx::test]
async fn the_room_is_switched_live_and_kept_by_a_put_that_leaves_it_out(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    assert_eq!(app.reserve("sneaker", "a", "k", 1).await.status(), 201);
    let put = app.put_sale("sneaker", &room_sale(5, 50, 30)).await;
    assert_eq!(put.status(), 200);
    let (status, code, _) = error_code(app.reserve("sneaker", "b", "k", 1).await).await;
    assert_eq!((status, code.as_str()), (409, "not_your_turn"));
    // A PUT without the room keeps it.
    assert_eq!(
        app.put_sale("sneaker", &sale_body(6, 1)).await.status(),
        200
    );
    let sale = app
        .get_json("/v1/admin/skus/sneaker", Some(crate::helpers::ADMIN_TOKEN))
        .await;
    assert_eq!(sale["waiting_room"]["enabled"], true, "{sale}");
    assert_eq!(sale["waiting_room"]["admit_per_second"], 50);
    assert_eq!(sale["waiting_room"]["admission_window_seconds"], 30);

    // The console's switch: off at once, reserves need no ticket again.
    let set = |room: Value| {
        app.client
            .put(app.url("/v1/admin/skus/sneaker/waiting-room"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .json(&room)
            .send()
    };
    let (status, code, body) = error_code(
        set(json!({"enabled": true, "admit_per_second": 0, "admission_window_seconds": 30}))
            .await
            .expect("put"),
    )
    .await;
    assert_eq!((status, code.as_str()), (422, "invalid_request"), "{body}");
    let off =
        set(json!({"enabled": false, "admit_per_second": 50, "admission_window_seconds": 30}))
            .await
            .expect("put");
    assert_eq!(off.status(), 200);
    let off: Value = off.json().await.expect("json");
    assert_eq!(off["waiting_room"]["enabled"], false);
    assert_eq!(app.reserve("sneaker", "b", "k2", 1).await.status(), 201);
}

#[sqlx::test]
async fn the_console_shows_the_line(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(1, 1, 60)).await;
    place(&app, "sneaker", "a").await;
    tokio::time::sleep(flashgate::gate::LINE_REFRESH).await;
    let console = app
        .get_json("/v1/admin/console/sales", Some(crate::helpers::ADMIN_TOKEN))
        .await;
    let sale = &console["sales"][0];
    assert_eq!(sale["waiting_room"]["enabled"], true);
    assert_eq!(sale["line"]["issued"], 1, "{sale}");
    assert_eq!(sale["line"]["admit_per_second"], 1);
    assert!(sale["line"]["sell_out_eta_seconds"].as_f64().expect("eta") >= 0.0);
}

#[sqlx::test]
async fn places_per_client_are_capped(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            places_per_client: 2,
            ..AppOptions::default()
        },
    )
    .await;
    app.open_sale("sneaker", &room_sale(50, 1000, 60)).await;
    place(&app, "sneaker", "a").await;
    place(&app, "sneaker", "b").await;
    place(&app, "sneaker", "a").await;
    let (status, code, _) = error_code(take_place(&app, "sneaker", "c").await).await;
    assert_eq!((status, code.as_str()), (409, "client_limit_reached"));
}

#[sqlx::test]
async fn a_place_is_pushed_as_server_sent_events_until_admitted(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(5, 2, 60)).await;
    let tickets = [
        ticket_of(&place(&app, "sneaker", "a").await),
        ticket_of(&place(&app, "sneaker", "b").await),
    ];
    let mut stream = app
        .client
        .get(app.url(&format!("/v1/skus/sneaker/queue/{}", tickets[1])))
        .bearer_auth(app.token("b"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/event-stream")
    );
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    let statuses: Vec<String> = seen
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| {
            let view: Value = serde_json::from_str(data.trim()).expect("event json");
            view["status"].as_str().expect("status").to_owned()
        })
        .collect();
    assert!(seen.contains("event: place"), "{seen}");
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("waiting"),
        "{seen}"
    );
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("admitted"),
        "{seen}"
    );
}

#[sqlx::test]
async fn polls_are_answered_from_the_line_the_gate_read_last(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(5, 1000, 60)).await;
    place(&app, "sneaker", "a").await;
    let sku = flashgate::domain::Sku::parse("sneaker").expect("sku");
    let first = app.gate.line(&sku).await.expect("line").expect("known");
    let polls = futures::future::join_all((0..50).map(|_| app.gate.line(&sku))).await;
    let same = polls
        .into_iter()
        .map(|line| line.expect("line").expect("known"))
        .filter(|line| std::sync::Arc::ptr_eq(line, &first))
        .count();
    // Fifty polls inside 100 ms: every one answered from the line read once.
    assert!(same >= 45, "{same} of 50 polls used the cached line");
    tokio::time::sleep(flashgate::gate::LINE_REFRESH + Duration::from_millis(20)).await;
    let later = app.gate.line(&sku).await.expect("line").expect("known");
    assert!(
        !std::sync::Arc::ptr_eq(&later, &first),
        "a stale line is read again"
    );
}

/// A ticket told `sold_out` that tries to reserve anyway is refused — and that refusal must not
/// look like the stock running out: it once turned on the gate's sold-out shortcut, and every
/// admitted buyer after it was refused `sold_out` with units still in stock.
#[sqlx::test]
async fn a_sold_out_place_trying_its_ticket_does_not_stop_admitted_buyers(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &room_sale(2, 1000, 60)).await;
    let first = admitted_hold(&app, "sneaker", "a").await;
    let b = ticket_of(&place(&app, "sneaker", "b").await);
    assert_eq!(
        settled(&app, "sneaker", "b", &b, Duration::from_secs(5)).await["status"],
        "admitted"
    );
    // a's unit may come back and b may take the other: c waits.
    let c = ticket_of(&place(&app, "sneaker", "c").await);
    assert_eq!(poll(&app, "sneaker", "c", &c).await["status"], "waiting");
    // a pays: nothing can come back, and b may take the last unit: c is sold out.
    assert_eq!(
        app.act(&first, "commit", &app.token("a")).await.status(),
        200
    );
    let told = settled(&app, "sneaker", "c", &c, Duration::from_secs(3)).await;
    assert_eq!(told["status"], "sold_out", "{told}");
    let (status, code, _) =
        error_code(reserve_with_ticket(&app, "sneaker", "c", "c1", &c).await).await;
    assert_eq!((status, code.as_str()), (409, "sold_out"));
    // b's unit is still there.
    assert_eq!(
        reserve_with_ticket(&app, "sneaker", "b", "b1", &b)
            .await
            .status(),
        201
    );
}
