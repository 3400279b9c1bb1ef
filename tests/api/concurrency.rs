//! Thousands of buyers at one SKU: exactly the stock is handed out.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{sale_body, spawn_app};

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
