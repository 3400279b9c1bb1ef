//! Hostile clients must not starve honest buyers: a slow body never holds a new buyer's place,
//! one client address or one buyer token holds only its cap of requests and connections, idle
//! connections make room for new clients, and the operators' listener answers whatever the
//! public one is going through.

use std::time::{Duration, Instant};

use flashgate::http::{AdmissionSettings, ServerSettings};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    ADMIN_TOKEN, AppOptions, TestApp, error_code, round_trip, sale_body, spawn_app, spawn_app_with,
};

/// Opens a connection that sends a reserve's headers and the first byte of its body, then
/// nothing more: a client trickling its body (or never finishing it).
async fn slow_body(app: &TestApp, buyer: &str, from: &str) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST /v1/skus/sneaker/reservations HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {}\r\nIdempotency-Key: slow-{buyer}\r\n\
         Content-Type: application/json\r\nContent-Length: 16\r\nX-Forwarded-For: {from}\r\n\r\n{{",
        app.token(buyer)
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

/// The status line's code of whatever the gate answered on `stream` within `within`.
async fn status_of(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(within, stream.read(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buffer[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn options(admission: AdmissionSettings) -> AppOptions {
    AppOptions {
        trusted_proxies: "127.0.0.1/32".into(),
        admission,
        ..AppOptions::default()
    }
}

#[sqlx::test]
async fn slow_bodies_never_hold_a_new_buyers_place(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        options(AdmissionSettings {
            new_buyer_limit: 8,
            new_buyer_queue: Duration::from_millis(100),
            per_client_in_flight: 0,
            per_buyer_in_flight: 0,
            body_read_timeout: Duration::from_millis(500),
            ..AdmissionSettings::default()
        }),
    )
    .await;
    app.open_sale("sneaker", &sale_body(100, 1)).await;
    // Thirty clients, each trickling a body: more than the lane has places.
    let mut slow = Vec::new();
    for n in 0..30 {
        slow.push(slow_body(&app, &format!("slow-{n}"), &format!("10.0.{n}.1")).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let honest = app
        .reserve_via("10.9.9.9", "sneaker", "honest", "honest-key")
        .await;
    assert_eq!(
        honest.status(),
        201,
        "{}",
        honest.text().await.unwrap_or_default()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The slow ones are answered when their body's deadline passes, without taking a place.
    for stream in &mut slow {
        assert_eq!(status_of(stream, Duration::from_secs(5)).await, Some(408));
    }
}

#[sqlx::test]
async fn one_buyer_token_on_many_connections_holds_only_its_cap(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        options(AdmissionSettings {
            new_buyer_limit: 8,
            new_buyer_queue: Duration::from_millis(100),
            per_client_in_flight: 64,
            per_buyer_in_flight: 4,
            // Long enough that the slow bodies are still in flight when the honest buyer comes.
            body_read_timeout: Duration::from_secs(5),
            ..AdmissionSettings::default()
        }),
    )
    .await;
    app.open_sale("sneaker", &sale_body(100, 1)).await;
    // One buyer token, twenty connections from twenty addresses.
    let mut slow = Vec::new();
    for n in 0..20 {
        slow.push(slow_body(&app, "scalper", &format!("10.1.{n}.1")).await);
    }
    // Past the buyer's cap, refused at once: 429 too_many_in_flight.
    let mut refused = 0;
    for stream in &mut slow {
        if status_of(stream, Duration::from_millis(300)).await == Some(429) {
            refused += 1;
        }
    }
    assert_eq!(refused, 16, "four in flight, sixteen refused");
    let honest = app
        .reserve_via("10.9.9.9", "sneaker", "honest", "honest-key")
        .await;
    assert_eq!(honest.status(), 201);
}

#[sqlx::test]
async fn one_client_address_holds_only_its_cap(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        options(AdmissionSettings {
            new_buyer_limit: 64,
            per_client_in_flight: 3,
            per_buyer_in_flight: 0,
            body_read_timeout: Duration::from_secs(5),
            ..AdmissionSettings::default()
        }),
    )
    .await;
    app.open_sale("sneaker", &sale_body(100, 1)).await;
    let mut slow = Vec::new();
    for n in 0..6 {
        slow.push(slow_body(&app, &format!("buyer-{n}"), "10.2.0.1").await);
    }
    let mut refused = 0;
    for stream in &mut slow {
        if status_of(stream, Duration::from_millis(300)).await == Some(429) {
            refused += 1;
        }
    }
    assert_eq!(refused, 3);
    let other = app
        .reserve_via("10.2.0.2", "sneaker", "someone", "someone-key")
        .await;
    assert_eq!(other.status(), 201);
}

/// A connection from `source` (any 127.x address is this machine) that has asked for
/// `/healthz` once and been answered: a kept-alive, idle connection.
async fn idle_connection(app: &TestApp, source: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind");
    let address = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut stream = socket.connect(address).await.expect("connect");
    assert!(
        round_trip(&mut stream, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    stream
}

/// Whether the gate closed `stream` within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn server(max_connections: usize, per_client: usize) -> ServerSettings {
    ServerSettings {
        max_connections,
        max_connections_per_client: per_client,
        ..ServerSettings::default()
    }
}

#[sqlx::test]
async fn one_address_past_its_connection_cap_loses_its_longest_idle_connection(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            server: server(1_000, 8),
            ..AppOptions::default()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(idle_connection(&app, "127.0.0.7").await);
    }
    // The ninth from the same address is served; the first (idle the longest) is closed.
    let _ninth = idle_connection(&app, "127.0.0.7").await;
    assert!(closed(&mut idle[0], Duration::from_secs(2)).await);
    for stream in &mut idle[1..] {
        assert!(!closed(stream, Duration::from_millis(50)).await);
    }
    // Another address is not charged for it.
    for _ in 0..8 {
        idle.push(idle_connection(&app, "127.0.0.8").await);
    }
}

#[sqlx::test]
async fn one_address_with_its_cap_busy_is_refused_a_new_connection(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            server: server(1_000, 4),
            admission: AdmissionSettings {
                per_client_in_flight: 0,
                per_buyer_in_flight: 0,
                body_read_timeout: Duration::from_secs(5),
                ..AdmissionSettings::default()
            },
            ..AppOptions::default()
        },
    )
    .await;
    app.open_sale("sneaker", &sale_body(100, 1)).await;
    // Four requests in flight (their bodies trickle) hold all four of this address's places.
    let mut busy = Vec::new();
    for n in 0..4 {
        busy.push(slow_body(&app, &format!("busy-{n}"), "10.3.0.1").await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("the kernel accepts");
    assert!(closed(&mut refused, Duration::from_secs(2)).await);
    for stream in &mut busy {
        assert!(!closed(stream, Duration::from_millis(50)).await);
    }
}

#[sqlx::test]
async fn a_full_gate_closes_its_longest_idle_connection_for_a_new_client(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            // Per-client cap off: the global cap alone must make room.
            server: server(40, 0),
            ..AppOptions::default()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(idle_connection(&app, "127.0.0.9").await);
    }
    // Before, a new client waited in the backlog until an idle connection's 75 s ran out.
    let started = Instant::now();
    let fresh =
        tokio::time::timeout(Duration::from_secs(3), idle_connection(&app, "127.0.0.10")).await;
    assert!(
        fresh.is_ok(),
        "a new client was not served while idle connections held the gate"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed(&mut idle[0], Duration::from_secs(2)).await);
}

#[sqlx::test]
async fn the_operators_listener_answers_while_the_public_one_is_full(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            server: server(4, 0),
            admission: AdmissionSettings {
                per_client_in_flight: 0,
                per_buyer_in_flight: 0,
                body_read_timeout: Duration::from_secs(10),
                ..AdmissionSettings::default()
            },
            operations_listener: true,
            ..AppOptions::default()
        },
    )
    .await;
    let operations = app.operations_address.clone().expect("operations listener");
    app.open_sale("sneaker", &sale_body(100, 1)).await;
    // Metrics and admin routes live on the operators' listener only.
    let on = |base: &str, path: &str| format!("{base}{path}");
    let client = reqwest::Client::new();
    for path in ["/metrics", "/v1/admin/console/sales", "/console"] {
        let public = client
            .get(on(&app.address, path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("public");
        assert_eq!(public.status(), 404, "{path} on the public listener");
    }
    let metrics = client
        .get(on(&operations, "/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    let sale = client
        .get(on(&operations, "/v1/admin/console/sales"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(sale.status(), 200);
    // The public listener is full: four requests in flight, none idle to close.
    let mut busy = Vec::new();
    for n in 0..4 {
        busy.push(slow_body(&app, &format!("busy-{n}"), "10.4.0.1").await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(on(&operations, "/healthz")).send(),
    )
    .await
    .expect("the probe was answered")
    .expect("healthz");
    assert_eq!(probe.status(), 200);
    let ready = client
        .get(on(&operations, "/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

#[sqlx::test]
async fn a_request_head_past_32_kib_is_refused_431_not_buffered(pool: PgPool) {
    let app = spawn_app(pool).await;
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    // 100 KB of one header, never finished: before, the gate buffered up to ~400 KB of it.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: gate\r\nX-Filler: {}",
        "a".repeat(100 * 1024)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    assert_eq!(
        status_of(&mut stream, Duration::from_secs(2)).await,
        Some(431)
    );
    // A head of ordinary size is served.
    let mut fresh = TcpStream::connect(address).await.expect("connect");
    assert!(
        round_trip(&mut fresh, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[sqlx::test]
async fn the_console_cannot_be_framed_and_runs_no_inline_code_but_its_own(pool: PgPool) {
    let app = spawn_app(pool).await;
    let page = app.get("/console", None).await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().expect("ascii");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    let html = page.text().await.expect("html");
    // Everything inline is in the one script and the one style the hashes allow.
    assert_eq!(html.matches("<script").count(), 1);
    assert_eq!(html.matches("<style").count(), 1);
    assert!(
        !html.contains(" style=\""),
        "an inline style attribute the policy would block"
    );
    assert!(
        !html.contains(" onclick="),
        "an inline handler the policy would block"
    );
}

#[sqlx::test]
async fn odd_requests_get_their_own_codes_never_a_500(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    // Two Idempotency-Key headers: which one was meant cannot be known.
    let twice = app
        .client
        .post(app.url("/v1/skus/sneaker/reservations"))
        .bearer_auth(app.token("alice"))
        .header("Idempotency-Key", "one")
        .header("Idempotency-Key", "two")
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .expect("reserve");
    let (status, code, _) = crate::helpers::error_code(twice).await;
    assert_eq!((status, code.as_str()), (400, "idempotency_key_invalid"));
    // A NUL in a sale's name: Postgres refuses it, so the gate must first (before: 500).
    let mut body = sale_body(10, 1);
    body["name"] = serde_json::json!("bad\u{0}name");
    let (status, code, _) = crate::helpers::error_code(app.put_sale("other", &body).await).await;
    assert_eq!(status, 422, "{code}");
}

#[sqlx::test]
async fn a_request_id_is_kept_only_from_a_trusted_proxy_and_only_when_well_formed(pool: PgPool) {
    let echoed = |app: &TestApp, id: &str| {
        let (client, url, id) = (app.client.clone(), app.url("/healthz"), id.to_owned());
        async move {
            let response = client
                .get(url)
                .header("x-request-id", &id)
                .send()
                .await
                .expect("healthz");
            response.headers()["x-request-id"]
                .to_str()
                .expect("ascii")
                .to_owned()
        }
    };
    // This machine is no proxy of the default app: its id is replaced.
    let untrusting = spawn_app(pool.clone()).await;
    assert_ne!(echoed(&untrusting, "forged-id").await, "forged-id");
    drop(untrusting);
    let trusting = spawn_app_with(pool, options(AdmissionSettings::default())).await;
    assert_eq!(echoed(&trusting, "req-42-abc").await, "req-42-abc");
    let long = "a".repeat(65);
    assert_ne!(echoed(&trusting, &long).await, long);
    assert_ne!(echoed(&trusting, "has space").await, "has space");
}

#[sqlx::test]
async fn the_sale_view_ignores_a_token_it_does_not_need(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 1)).await;
    // The admin token is no buyer token: the public view answers anyway, a reserve refuses it.
    assert_eq!(
        app.get("/v1/skus/sneaker", Some(ADMIN_TOKEN))
            .await
            .status(),
        200
    );
    let reserve = app
        .client
        .post(app.url("/v1/skus/sneaker/reservations"))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", "k")
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .expect("reserve");
    assert_eq!(reserve.status(), 401);
}

#[sqlx::test]
async fn admin_token_guessing_backs_off_per_client_and_compares_nothing_meanwhile(pool: PgPool) {
    use flashgate::http::{ADMIN_FAILURE_BURST, ADMIN_FAILURE_REFILL};
    let app = spawn_app_with(
        pool,
        AppOptions {
            trusted_proxies: "127.0.0.1/32".into(),
            ..AppOptions::default()
        },
    )
    .await;
    let admin_call = |from: &'static str, token: &'static str| {
        app.client
            .get(app.url("/v1/admin/console/sales"))
            .bearer_auth(token)
            .header("X-Forwarded-For", from)
            .send()
    };
    let wrong = "not-the-admin-token-but-long-enough-0000";
    // On main: 5,000 wrong tokens in 0.62 s, every one compared and answered 403.
    for n in 0..ADMIN_FAILURE_BURST {
        let answer = admin_call("203.0.113.7", wrong).await.expect("send");
        assert_eq!(answer.status(), 403, "guess {n}");
    }
    let throttled = admin_call("203.0.113.7", wrong).await.expect("send");
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1 && retry_after <= ADMIN_FAILURE_REFILL.as_secs());
    let (status, code, _) = error_code(throttled).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // While it waits even the right token is not compared: a guess that would be right gains
    // nothing from being sent fast.
    let (status, code, _) =
        error_code(admin_call("203.0.113.7", ADMIN_TOKEN).await.expect("send")).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // Other clients, and the operator with the right token, are untouched.
    let operator = admin_call("198.51.100.1", ADMIN_TOKEN).await.expect("send");
    assert_eq!(operator.status(), 200);
}

#[sqlx::test]
async fn reserve_release_churn_is_bounded_per_buyer_and_sale(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        AppOptions {
            hold_quota: Some(flashgate::gate::HoldQuota {
                holds: 5,
                window: Duration::from_secs(3600),
            }),
            ..AppOptions::default()
        },
    )
    .await;
    app.open_sale("sneaker", &sale_body(100, 1)).await;
    app.open_sale("boot", &sale_body(100, 1)).await;
    let alice = app.token("alice");
    // On main: 100 reserve→release cycles by one buyer in 20 s, each leaving ≈ 940 B in Redis
    // for a day and a row in Postgres.
    for cycle in 0..5 {
        let held = app
            .reserve("sneaker", "alice", &format!("cycle-{cycle}"), 1)
            .await;
        assert_eq!(held.status(), 201, "cycle {cycle}");
        let id = held.json::<serde_json::Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        assert_eq!(app.act(&id, "release", &alice).await.status(), 200);
    }
    let refused = app.reserve("sneaker", "alice", "cycle-5", 1).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after > 3000 && retry_after <= 3600, "{retry_after}");
    let (status, code, body) = error_code(refused).await;
    assert_eq!((status, code.as_str()), (429, "hold_quota_reached"));
    assert_eq!(body["limit"], 5);
    // A replay of a key the buyer used is still answered; other buyers and sales are untouched.
    let replay = app.reserve("sneaker", "alice", "cycle-4", 1).await;
    assert_eq!(replay.status(), 201);
    assert!(replay.headers().get("idempotent-replayed").is_some());
    assert_eq!(app.reserve("sneaker", "bob", "b", 1).await.status(), 201);
    assert_eq!(app.reserve("boot", "alice", "a", 1).await.status(), 201);
}

/// Everything the connection reads until the gate closes it (or 2 s pass).
async fn answer_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Requests hyper refuses before any handler runs (a head too large, bytes no header may hold,
/// a request line that is no request line) are answered in the same JSON error shape as every
/// other refusal; before, hyper answered them with an empty body.
#[sqlx::test]
async fn requests_refused_before_routing_get_the_json_error_shape(pool: PgPool) {
    let app = spawn_app(pool).await;
    let address = app.address.trim_start_matches("http://");
    let cases = [
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: gate\r\nX-Filler: {}\r\n\r\n",
                "a".repeat(100 * 1024)
            ),
            431,
            "header_too_large",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: gate\r\nX-Bad: a\u{1}b\r\n\r\n".to_owned(),
            400,
            "malformed_request",
        ),
        ("NONSENSE\r\n\r\n".to_owned(), 400, "malformed_request"),
    ];
    for (request, status, code) in cases {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = answer_until_closed(&mut stream).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let error: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(error["error"], code, "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The gate serves on.
    let mut fresh = TcpStream::connect(address).await.expect("connect");
    assert!(
        round_trip(&mut fresh, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// A released hold's record stayed in Redis for the whole idempotency window (328 B each for
/// 24 h, measured), so reserve→release churn grew Redis by a record per cycle. Once Postgres has
/// the release, Redis keeps it a minute; reads, retries and commits are then answered from
/// Postgres, and a same-key retry still replays the hold from its idempotency record.
#[sqlx::test]
async fn a_settled_released_hold_leaves_redis_and_is_answered_from_postgres(pool: PgPool) {
    use flashgate::domain::{BuyerId, IdempotencyKey, ReservationId, Sku};
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let id = app.hold("sneaker", "alice", "k1").await;
    let alice = app.token("alice");
    assert_eq!(app.act(&id, "release", &alice).await.status(), 200);
    let sku = Sku::parse("sneaker").expect("sku");
    app.settler().drain(&sku).await.expect("drain");

    let keys = app.namespace.sku(&sku);
    let hold_key = keys.hold(ReservationId::parse(&id).expect("id"));
    let idempotency_key = keys.idempotency(
        &BuyerId::parse("alice").expect("buyer"),
        &IdempotencyKey::parse("k1").expect("key"),
    );
    let mut conn = app.redis_connection().await;
    let ttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("TTL")
        }
    };
    let hold_ttl = ttl(hold_key.clone()).await;
    assert!(
        (1..=60).contains(&hold_ttl),
        "the hold's record lives {hold_ttl} s more"
    );
    assert!(
        ttl(idempotency_key).await > 3000,
        "the idempotency record keeps its window"
    );

    // As the minute's end would.
    let _: i64 = redis::cmd("DEL")
        .arg(&hold_key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let read = app
        .get(&format!("/v1/reservations/{id}"), Some(&alice))
        .await;
    assert_eq!(read.status(), 200);
    let read: serde_json::Value = read.json().await.expect("json");
    assert_eq!(
        (read["status"].as_str(), read["settled"].as_bool()),
        (Some("released"), Some(true))
    );
    assert_eq!(read["quantity"], 1);
    let again = app.act(&id, "release", &alice).await;
    assert_eq!(again.status(), 200, "a repeated release is answered");
    let commit = app.act(&id, "commit", &alice).await;
    let (status, code, _) = error_code(commit).await;
    assert_eq!((status, code.as_str()), (409, "released"));
    let stranger = app
        .get(&format!("/v1/reservations/{id}"), Some(&app.token("bob")))
        .await;
    assert_eq!(stranger.status(), 404, "another buyer's hold stays hidden");
    let replay = app.reserve("sneaker", "alice", "k1", 1).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: serde_json::Value = replay.json().await.expect("json");
    assert_eq!(
        (replay["id"].as_str(), replay["status"].as_str()),
        (Some(id.as_str()), Some("released"))
    );
}
