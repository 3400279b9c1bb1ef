//! Hostile clients must not starve honest buyers: a slow body never holds a new buyer's place,
//! and one client address or one buyer token holds only its cap of requests.

use std::time::{Duration, Instant};

use flashgate::http::AdmissionSettings;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{AppOptions, TestApp, sale_body, spawn_app_with};

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
    assert_eq!(honest.status(), 201, "{}", honest.text().await.unwrap_or_default());
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
