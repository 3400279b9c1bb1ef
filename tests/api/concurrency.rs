//! Thousands of buyers at one SKU: exactly the stock is handed out.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{AppOptions, sale_body, spawn_app, spawn_app_with};

#[sqlx::test]
async fn two_thousand_buyers_double_submitting_get_exactly_the_stock(pool: PgPool) {
    const BUYERS: usize = 2_000;
    const STOCK: u32 = 100;
    let app = spawn_app(pool).await;
    app.open_sale("hot", &sale_body(STOCK, 1)).await;

    // Each buyer sends the same request twice at once; 256 buyers are in flight at a time.
    let outcomes: Vec<(usize, Vec<(u16, Value)>)> = futures::stream::iter(0..BUYERS)
        .map(|n| {
            let app = &app;
            async move {
                let buyer = format!("buyer-{n}");
                let (a, b) = tokio::join!(
                    app.reserve("hot", &buyer, "buy", 1),
                    app.reserve("hot", &buyer, "buy", 1)
                );
                let mut answers = Vec::new();
                for response in [a, b] {
                    let status = response.status().as_u16();
                    answers.push((status, response.json::<Value>().await.expect("json")));
                }
                (n, answers)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;

    let mut holds = HashSet::new();
    let mut holds_per_buyer: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut codes: HashMap<String, usize> = HashMap::new();
    for (buyer, answers) in outcomes {
        for (status, body) in answers {
            assert!(status < 500, "buyer {buyer} got {status}: {body}");
            if status == 201 {
                let id = body["id"].as_str().expect("id").to_owned();
                holds_per_buyer.entry(buyer).or_default().insert(id.clone());
                holds.insert(id);
            } else {
                *codes
                    .entry(body["error"].as_str().expect("code").to_owned())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(holds.len(), STOCK as usize, "refusals: {codes:?}");
    assert!(
        holds_per_buyer.values().all(|ids| ids.len() == 1),
        "a buyer got two holds"
    );
    assert_eq!(
        codes.keys().collect::<Vec<_>>(),
        vec!["sold_out"],
        "{codes:?}"
    );
    assert_eq!(app.redis_stock("hot").await, 0);
}

/// Regression: each request used to hold a pooled Redis connection for its whole duration, so a
/// burst larger than the pool queued for a connection and was answered 503 after the timeout.
#[sqlx::test]
async fn a_burst_far_larger_than_the_redis_pool_is_served(pool: PgPool) {
    if crate::helpers::single_server_test("a_burst_far_larger_than_the_redis_pool_is_served") {
        return;
    }
    // Every answer from Redis takes 20 ms more: 200 requests in turn over one pooled connection
    // would take 4 s, far past the 1 s timeout; pipelined, they share the delay.
    let upstream = crate::helpers::redis_socket_addr().await;
    let slow =
        crate::proxy::Proxy::start_with_delay(upstream, std::time::Duration::from_millis(20)).await;
    let options = AppOptions {
        redis_pool_size: 1,
        redis_timeout: std::time::Duration::from_secs(1),
        ..AppOptions::on_server(format!("redis://{}", slow.addr))
    };
    let app = spawn_app_with(pool, options).await;
    app.open_sale("hot", &sale_body(100, 1)).await;

    let buyers: Vec<String> = (0..200).map(|n| format!("buyer-{n}")).collect();
    let statuses: Vec<u16> =
        futures::future::join_all(buyers.iter().map(|b| app.reserve("hot", b, "k", 1)))
            .await
            .into_iter()
            .map(|r| r.status().as_u16())
            .collect();

    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{:?}",
        statuses.iter().filter(|s| **s >= 500).count()
    );
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 100);
}

/// Regression: a commit's synchronous settle compared a cursor read before another settler
/// advanced it, found nothing left in the stream, and answered 500; and hundreds of commits
/// polling Postgres at once starved the settler of the test's five connections (503).
#[sqlx::test]
async fn many_concurrent_commits_all_succeed(pool: PgPool) {
    const HOLDS: usize = 500;
    let app = spawn_app(pool).await;
    app.open_sale("hot", &sale_body(HOLDS as u32, 1)).await;
    let mut holds = Vec::new();
    for n in 0..HOLDS {
        let body: Value = app
            .reserve("hot", &format!("buyer-{n}"), "k", 1)
            .await
            .json()
            .await
            .expect("json");
        holds.push((n, body["id"].as_str().expect("id").to_owned()));
    }

    let statuses: Vec<u16> = futures::stream::iter(holds)
        .map(|(n, id)| {
            let app = &app;
            async move {
                app.act(&id, "commit", &app.token(&format!("buyer-{n}")))
                    .await
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(HOLDS)
        .collect()
        .await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        app.inventory("hot").await,
        (HOLDS as i64, 0, 0, HOLDS as i64)
    );
}
