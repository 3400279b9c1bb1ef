//! The edge (docs/DESIGN.md §9): proxies, overload, hostile clients and a hanging Redis never cost a
//! paying buyer, and every refusal speaks the API's error format.

use std::time::{Duration, Instant};

use flashgate::http::{AdmissionSettings, ServerSettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::{
    ADMIN_TOKEN, AppOptions, error_code, redis_socket_addr, round_trip, sale_body, spawn_app_with,
};
use crate::proxy::Proxy;

fn shedding_one_request_per_client(trusted_proxies: &str) -> AppOptions {
    AppOptions {
        client_rate: 1,
        client_burst: 1,
        trusted_proxies: trusted_proxies.to_owned(),
        ..AppOptions::default()
    }
}

#[sqlx::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota(pool: PgPool) {
    let app = spawn_app_with(pool, shedding_one_request_per_client("127.0.0.1/32")).await;
    app.open_sale("sneaker", &sale_body(100, 5)).await;

    let a = app
        .reserve_via("198.51.100.1", "sneaker", "alice", "k1")
        .await;
    let b = app
        .reserve_via("198.51.100.2", "sneaker", "bob", "k1")
        .await;
    // A client forging a hop to the left cannot pick its key: the proxy's hop counts.
    let forged = app
        .reserve_via("203.0.113.50, 198.51.100.1", "sneaker", "carol", "k1")
        .await;

    assert_eq!(a.status(), 201);
    assert_eq!(b.status(), 201, "another client behind the same proxy");
    let (status, code, _) = error_code(forged).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
}

#[sqlx::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored(pool: PgPool) {
    let app = spawn_app_with(pool, shedding_one_request_per_client("10.0.0.0/8")).await;
    app.open_sale("sneaker", &sale_body(100, 5)).await;

    let a = app
        .reserve_via("198.51.100.1", "sneaker", "alice", "k1")
        .await;
    let b = app
        .reserve_via("198.51.100.2", "sneaker", "bob", "k1")
        .await;

    assert_eq!(a.status(), 201);
    let (status, code, _) = error_code(b).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "rate_limited"),
        "both are the peer 127.0.0.1, whatever they claim"
    );
}

#[sqlx::test]
async fn commits_and_releases_succeed_while_new_buyers_are_shed(pool: PgPool) {
    let app = spawn_app_with(pool, shedding_one_request_per_client("")).await;
    app.open_sale("sneaker", &sale_body(100, 5)).await;
    let held: Value = app
        .reserve("sneaker", "alice", "k1", 1)
        .await
        .json()
        .await
        .expect("json");
    // The same client, its burst spent, keeps flooding new reservations ...
    let bots: Vec<String> = (0..50).map(|n| format!("bot-{n}")).collect();
    let flood = futures::future::join_all(bots.iter().map(|b| app.reserve("sneaker", b, "k", 1)));
    // ... and alice still reads, commits; nothing of hers is shed.
    let alice = app.token("alice");
    let id = held["id"].as_str().expect("id");
    let paying = async {
        let read = app
            .get(&format!("/v1/reservations/{id}"), Some(&alice))
            .await;
        let commit = app.act(id, "commit", &alice).await;
        (read.status().as_u16(), commit.status().as_u16())
    };
    let (flood, (read, commit)) = tokio::join!(flood, paying);
    assert!(flood.iter().all(|r| r.status() == 429));
    assert_eq!((read, commit), (200, 200));
    assert_eq!(app.inventory("sneaker").await, (100, 99, 0, 1));
}

#[sqlx::test]
async fn overload_is_refused_fast_with_retry_after_and_payers_keep_their_lane(pool: PgPool) {
    if crate::helpers::single_server_test(
        "overload_is_refused_fast_with_retry_after_and_payers_keep_their_lane",
    ) {
        return;
    }
    // Every Redis answer takes 300 ms; two new-buyer places and no queue.
    let slow = Proxy::start_with_delay(redis_socket_addr().await, Duration::from_millis(300)).await;
    let options = AppOptions {
        admission: AdmissionSettings {
            new_buyer_limit: 2,
            new_buyer_queue: Duration::ZERO,
            ..AdmissionSettings::default()
        },
        ..AppOptions::on_server(format!("redis://{}", slow.addr))
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(100, 5)).await;
    let held: Value = app
        .reserve("sneaker", "alice", "k1", 1)
        .await
        .json()
        .await
        .expect("json");
    let id = held["id"].as_str().expect("id").to_owned();

    let buyers: Vec<String> = (0..20).map(|n| format!("buyer-{n}")).collect();
    let burst = futures::future::join_all(buyers.iter().map(|b| app.reserve("sneaker", b, "k", 1)));
    let commit = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.act(&id, "commit", &app.token("alice")).await
    };
    let (burst, commit) = tokio::join!(burst, commit);

    let mut overloaded = 0;
    for response in burst {
        if response.status() == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
            let (_, code, _) = error_code(response).await;
            assert_eq!(code, "overloaded");
            overloaded += 1;
        } else {
            assert_eq!(response.status(), 201);
        }
    }
    assert!(overloaded >= 15, "only {overloaded} of 20 were refused");
    assert_eq!(commit.status(), 200, "the payer was not behind new buyers");
}

#[sqlx::test]
async fn idle_connections_do_not_lock_out_other_clients(pool: PgPool) {
    flashgate::startup::raise_file_limit();
    let options = AppOptions {
        server: ServerSettings {
            max_connections: 1_000,
            max_connections_per_client: 0,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    // 1,100 sockets that never send a byte: more than the cap.
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }

    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(15), async {
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("healthz")
    })
    .await
    .expect("a second client is answered while idle sockets wait");
    assert_eq!(answered.status(), 200);
    eprintln!("answered after {:?}", started.elapsed());

    // The idle sockets were closed by the header-read timeout, not left to pile up.
    let mut closed = 0;
    for mut socket in idle.into_iter().take(50) {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 50);
}

#[sqlx::test]
async fn a_kept_alive_connection_lives_past_the_header_timeout_until_its_idle_timeout(
    pool: PgPool,
) {
    let options = AppOptions {
        server: ServerSettings {
            max_connections: 100,
            max_connections_per_client: 0,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(1_500),
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&addr).await.expect("connect");
    assert!(
        round_trip(&mut socket, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    tokio::time::sleep(Duration::from_millis(700)).await; // past the header timeout
    assert!(
        round_trip(&mut socket, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "closed by the idle timeout"
    );
}

#[sqlx::test]
async fn a_frozen_redis_is_answered_503_within_the_deadline_and_recovered_from(pool: PgPool) {
    if crate::helpers::single_server_test(
        "a_frozen_redis_is_answered_503_within_the_deadline_and_recovered_from",
    ) {
        return;
    }
    let proxy = Proxy::start(redis_socket_addr().await).await;
    let options = AppOptions {
        redis_timeout: Duration::from_millis(300),
        ..AppOptions::on_server(format!("redis://{}", proxy.addr))
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(100, 100)).await;
    assert_eq!(app.reserve("sneaker", "alice", "k0", 1).await.status(), 201);

    proxy.freeze();
    let mut slowest = Duration::ZERO;
    let mut last = Duration::ZERO;
    for n in 0..12 {
        let started = Instant::now();
        let response = app
            .reserve("sneaker", "alice", &format!("frozen-{n}"), 1)
            .await;
        last = started.elapsed();
        slowest = slowest.max(last);
        assert_eq!(response.headers()["retry-after"], "1");
        let (status, code, _) = error_code(response).await;
        assert_eq!((status, code.as_str()), (503, "service_unavailable"));
    }
    // Bounded by the 300 ms Redis deadline (with slack for a loaded machine), never hanging.
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    // Once open, the breaker answers without waiting for Redis at all.
    assert!(last < Duration::from_millis(250), "last {last:?}");

    proxy.thaw();
    let thawed = Instant::now();
    let recovered = loop {
        let response = app.reserve("sneaker", "alice", "after", 1).await;
        if response.status() == 201 {
            break thawed.elapsed();
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("recovered {recovered:?} after the thaw");
    assert!(app.audit("sneaker").await.ok());
}

#[sqlx::test]
async fn every_error_answers_the_json_error_shape(pool: PgPool) {
    if crate::helpers::single_server_test("every_error_answers_the_json_error_shape") {
        return;
    }
    let slow = Proxy::start_with_delay(redis_socket_addr().await, Duration::from_millis(400)).await;
    let options = AppOptions {
        request_timeout: Duration::from_millis(300),
        ..AppOptions::on_server(format!("redis://{}", slow.addr))
    };
    let app = spawn_app_with(pool, options).await;

    let unknown = app.get("/v1/nothing/here", None).await;
    let (status, code, _) = error_code(unknown).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));

    let wrong_method = app
        .client
        .delete(app.url("/v1/skus/sneaker/reservations"))
        .send()
        .await
        .expect("delete");
    assert!(wrong_method.headers().contains_key("allow"));
    let (status, code, _) = error_code(wrong_method).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));

    let bad_path = app.get("/v1/skus/%FF%FE/reservations", None).await;
    let bad_path = app
        .client
        .post(bad_path.url().clone())
        .bearer_auth(app.token("alice"))
        .header("Idempotency-Key", "k")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .expect("post");
    let (status, code, _) = error_code(bad_path).await;
    assert_eq!((status, code.as_str()), (400, "invalid_path"));

    let bad_query = app
        .client
        .post(app.url("/v1/admin/skus/sneaker/prewarm?force=perhaps"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("prewarm");
    let (status, code, _) = error_code(bad_query).await;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));

    // Redis answers after 400 ms; the request deadline is 300 ms.
    let timed_out = app.get("/v1/skus/sneaker", None).await;
    assert_eq!(timed_out.headers()["retry-after"], "1");
    let (status, code, _) = error_code(timed_out).await;
    assert_eq!((status, code.as_str()), (503, "request_timeout"));
}

#[sqlx::test]
async fn one_client_address_cannot_sweep_a_sale_with_many_buyer_ids(pool: PgPool) {
    let options = AppOptions {
        holds_per_client: 2,
        trusted_proxies: "127.0.0.1/32".into(),
        ..AppOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(20, 1)).await;
    let scalper = "2001:db8:7:7::1";

    let first: Value = app
        .reserve_via(scalper, "sneaker", "s-1", "k")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["status"], "held");
    assert_eq!(
        app.reserve_via("2001:db8:7:7::99", "sneaker", "s-2", "k")
            .await
            .status(),
        201,
        "the same /64"
    );
    let third = app.reserve_via(scalper, "sneaker", "s-3", "k").await;
    let (status, code, body) = error_code(third).await;
    assert_eq!((status, code.as_str()), (409, "client_limit_reached"));
    assert_eq!(body["limit"], 2);
    assert_eq!(
        app.reserve_via("2001:db8:7:8::1", "sneaker", "other", "k")
            .await
            .status(),
        201,
        "another /64 is another client"
    );

    // A hold that leaves 'held' (here: released) frees its place.
    let id = first["id"].as_str().expect("id");
    assert_eq!(
        app.act(id, "release", &app.token("s-1")).await.status(),
        200
    );
    assert_eq!(
        app.reserve_via(scalper, "sneaker", "s-3", "k2")
            .await
            .status(),
        201
    );
    let sku = flashgate::domain::Sku::parse("sneaker").expect("sku");
    app.settler().drain(&sku).await.expect("drain");
    assert!(app.audit("sneaker").await.ok());
}

/// One subscriber usually has a whole IPv6 /56 (or /48): with a cap per /64 only, six /64s of one
/// /56 got six holds under a cap of 2. Each client is also counted at its /56 (4× the cap by
/// default) and /48 (16×), and a hold that leaves `held` frees its place at every tier.
#[sqlx::test]
async fn one_subscriber_cannot_rotate_through_its_ipv6_prefix(pool: PgPool) {
    let options = AppOptions {
        holds_per_client: 1,
        trusted_proxies: "127.0.0.1/32".into(),
        ..AppOptions::default()
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("sneaker", &sale_body(40, 1)).await;
    let reserve = async |address: String, buyer: String| {
        app.reserve_via(&address, "sneaker", &buyer, "k").await
    };

    // Four /64s of one /56: one hold each; the fifth /64 finds the /56 full.
    let mut first_hold = None;
    for net in 0..4 {
        let held = reserve(format!("2001:db8:5:1{net}::1"), format!("h-{net}")).await;
        assert_eq!(held.status(), 201, "/64 number {net}");
        let body: Value = held.json().await.expect("json");
        first_hold.get_or_insert(body["id"].as_str().expect("id").to_owned());
    }
    let fifth = reserve("2001:db8:5:14::1".into(), "h-4".into()).await;
    let (status, code, body) = error_code(fifth).await;
    assert_eq!((status, code.as_str()), (409, "client_limit_reached"));
    assert_eq!(body["limit"], 4, "the /56's cap");

    // Other /56s of the same /48 fill it to 16 holds; the 17th /64 finds the /48 full.
    for net in 1..4 {
        for sub in 0..4 {
            let address = format!("2001:db8:5:{net}{sub:02x}::1");
            let held = reserve(address.clone(), format!("h-{net}-{sub}")).await;
            assert_eq!(held.status(), 201, "{address}");
        }
    }
    let seventeenth = reserve("2001:db8:5:400::1".into(), "h-17".into()).await;
    let (status, code, body) = error_code(seventeenth).await;
    assert_eq!((status, code.as_str()), (409, "client_limit_reached"));
    assert_eq!(body["limit"], 16, "the /48's cap");
    assert_eq!(
        reserve("2001:db8:6::1".into(), "elsewhere".into())
            .await
            .status(),
        201,
        "another /48 is another site"
    );

    // A released hold frees its /64, its /56 and its /48 alike.
    let id = first_hold.expect("a hold");
    assert_eq!(
        app.act(&id, "release", &app.token("h-0")).await.status(),
        200
    );
    assert_eq!(
        reserve("2001:db8:5:14::1".into(), "h-4".into())
            .await
            .status(),
        201
    );
    let sku = flashgate::domain::Sku::parse("sneaker").expect("sku");
    app.settler().drain(&sku).await.expect("drain");
    assert!(app.audit("sneaker").await.ok());
}
