//! The settler: every decision reaches Postgres exactly once, in order, whatever fails.

use std::time::Duration;

use flashgate::audit::{SkuAudit, Verdict};
use flashgate::domain::EventId;
use flashgate::domain::{BuyerId, IdempotencyKey, Quantity, Sku};
use flashgate::gate::StreamRead;
use flashgate::gate::{ReserveOutcome, ReserveRequest};
use flashgate::settler::{BatchOutcome, FaultPoint, Faults, SettleError};
use flashgate::store::Store;
use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, sale_body, settler_settings, spawn_app};

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).expect("sku")
}

/// Reserves straight through the gate (no HTTP): `buyers` buyers, one unit each.
async fn reserve_many(
    app: &TestApp,
    sku_code: &str,
    buyers: std::ops::Range<usize>,
    quantity: i64,
) -> usize {
    let sku = sku(sku_code);
    let created: Vec<bool> = futures::stream::iter(buyers)
        .map(|n| {
            let (gate, sku) = (&app.gate, &sku);
            async move {
                let buyer = BuyerId::parse(&format!("b{n}")).expect("buyer");
                let key = IdempotencyKey::parse("k").expect("key");
                let request = ReserveRequest {
                    sku,
                    buyer: &buyer,
                    quantity: Quantity::parse(quantity).expect("quantity"),
                    idempotency_key: &key,
                    client: None,
                    reference: None,
                    metadata: None,
                    ticket: None,
                };
                matches!(
                    gate.reserve(request).await.expect("reserve"),
                    ReserveOutcome::Created(_)
                )
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    created.into_iter().filter(|c| *c).count()
}

fn assert_all_held(audit: &SkuAudit) {
    for check in &audit.checks {
        assert_eq!(
            check.verdict,
            Verdict::Held,
            "invariant {} ({}): {}",
            check.invariant,
            check.name,
            check.detail
        );
    }
}

async fn reservation_count(app: &TestApp, sku: &str, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reservations WHERE sku = $1 AND status = $2")
        .bind(sku)
        .bind(status)
        .fetch_one(app.store.pool())
        .await
        .expect("count")
}

#[sqlx::test]
async fn settled_holds_are_in_postgres_and_show_settled(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 5)).await;
    let created: Value = app
        .reserve("sneaker", "alice", "k", 3)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(created["settled"], false);

    assert_eq!(
        app.settler().drain(&sku("sneaker")).await.expect("drain"),
        1
    );

    assert_eq!(app.inventory("sneaker").await, (10, 7, 3, 0));
    let path = format!("/v1/reservations/{}", created["id"].as_str().expect("id"));
    let shown: Value = app.get_json(&path, Some(&app.token("alice"))).await;
    assert_eq!(shown["settled"], true);
    let replay: Value = app
        .reserve("sneaker", "alice", "k", 3)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(replay["settled"], true);
    let (total, price): (rust_decimal::Decimal, rust_decimal::Decimal) =
        sqlx::query_as("SELECT total, unit_price FROM reservations WHERE id = $1::uuid")
            .bind(created["id"].as_str().expect("id"))
            .fetch_one(app.store.pool())
            .await
            .expect("row");
    assert_eq!(
        (total.to_string(), price.to_string()),
        ("59.97".into(), "19.99".into())
    );
    assert_all_held(&app.audit("sneaker").await);
}

#[sqlx::test]
async fn ten_thousand_holds_on_three_skus_settled_by_four_settlers(pool: PgPool) {
    let app = spawn_app(pool).await;
    // The third SKU sells out part-way: 3,000 buyers for 2,500 units.
    let skus = [
        ("a", 4_000, 0..4_000),
        ("b", 3_000, 4_000..7_000),
        ("c", 2_500, 7_000..10_000),
    ];
    for (code, stock, _) in &skus {
        app.open_sale(code, &sale_body(*stock, 1)).await;
    }
    let stop = CancellationToken::new();
    let settlers: Vec<_> = (0..4)
        .map(|_| {
            let (settler, stop) = (app.settler(), stop.clone());
            tokio::spawn(async move { settler.run(stop).await })
        })
        .collect();

    let mut created = 0;
    for (code, _, buyers) in skus.clone() {
        created += reserve_many(&app, code, buyers, 1).await;
    }
    assert_eq!(created, 4_000 + 3_000 + 2_500);

    let drained = async {
        loop {
            let mut backlog = 0;
            for (code, _, _) in &skus {
                backlog += app.audit(code).await.backlog;
            }
            if backlog == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), drained)
        .await
        .expect("settled in time");
    stop.cancel();
    for settler in settlers {
        settler.await.expect("settler task");
    }

    for (code, stock, _) in &skus {
        let stock = i64::from(*stock);
        assert_eq!(app.inventory(code).await, (stock, 0, stock, 0), "{code}");
        assert_eq!(reservation_count(&app, code, "held").await, stock, "{code}");
        assert_eq!(reservation_count(&app, code, "rejected").await, 0, "{code}");
        let audit = app.audit(code).await;
        assert_all_held(&audit);
        let cursor = app
            .store
            .settlement_cursor(&sku(code))
            .await
            .expect("cursor")
            .expect("row");
        let first = app
            .gate
            .events_after(&sku(code), EventId::START, 1)
            .await
            .expect("stream");
        // Trimmed below the cursor: the cursor's own entry remains, and nothing after it.
        let StreamRead::Events(first) = first else {
            panic!("{code}: a read from the start cannot be broken");
        };
        assert_eq!(
            first.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![cursor],
            "{code}: stream ends at the cursor"
        );
        assert_eq!(
            app.gate
                .events_after(&sku(code), cursor, 10)
                .await
                .expect("stream"),
            StreamRead::Events(Vec::new()),
            "{code}: nothing after the cursor"
        );
    }
}

#[sqlx::test]
async fn a_crash_at_any_fault_point_then_a_restart_reaches_the_same_state(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (n, point) in [
        FaultPoint::AfterInserts,
        FaultPoint::MidBatch,
        FaultPoint::AfterCommit,
    ]
    .into_iter()
    .enumerate()
    {
        let code = format!("sku-{n}");
        app.open_sale(&code, &sale_body(95, 1)).await;
        // Redis believes in 10 more units than Postgres has. 100 holds are exactly one batch,
        // so the crashing batch itself carries the 5 holds Postgres must refuse.
        app.set_redis_stock(&code, 105).await;
        assert_eq!(crate::helpers::settler_settings().batch_size, 100);
        assert_eq!(reserve_many(&app, &code, 0..100, 1).await, 100);

        let crashing = app
            .settler()
            .with_faults(Faults::inject(move |p| p == point));
        let crash = crashing.settle_batch(&sku(&code)).await;
        assert!(
            matches!(crash, Err(SettleError::Injected(p)) if p == point),
            "{point:?}: {crash:?}"
        );

        let restarted = app.settler();
        restarted
            .drain(&sku(&code))
            .await
            .expect("drain after restart");

        assert_eq!(app.inventory(&code).await, (95, 0, 95, 0), "{point:?}");
        assert_eq!(
            reservation_count(&app, &code, "held").await,
            95,
            "{point:?}"
        );
        assert_eq!(
            reservation_count(&app, &code, "rejected").await,
            5,
            "{point:?}"
        );
        let audit = app.audit(&code).await;
        assert_eq!(
            audit.pending_write_backs, 0,
            "{point:?}: the rejections reached redis"
        );
        assert_eq!(
            audit.redis_stock,
            Some(5),
            "{point:?}: the 5 surplus units stay in redis"
        );
        let broken: Vec<_> = audit
            .checks
            .iter()
            .filter(|c| c.verdict != Verdict::Held)
            .map(|c| c.invariant)
            .collect();
        assert_eq!(
            broken,
            vec![5],
            "{point:?}: only the drift itself is reported"
        );
    }
}

#[sqlx::test]
async fn postgres_down_during_a_burst_then_back_loses_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.open_sale("hot", &sale_body(300, 1)).await;
    // The settler reaches Postgres only through a proxy the test can cut.
    let (proxy, through_proxy) =
        crate::proxy::postgres_behind_proxy(&pool, Duration::from_millis(500)).await;
    let settler = flashgate::settler::Settler::new(
        app.gate.clone(),
        Store::from_pool(through_proxy),
        settler_settings(),
    );
    let stop = CancellationToken::new();
    let running = {
        let (settler, stop) = (settler.clone(), stop.clone());
        tokio::spawn(async move { settler.run(stop).await })
    };

    assert_eq!(reserve_many(&app, "hot", 0..100, 1).await, 100);
    proxy.cut();
    // The gate keeps admitting from Redis while Postgres is out of reach.
    assert_eq!(reserve_many(&app, "hot", 100..250, 1).await, 150);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    assert_eq!(reserve_many(&app, "hot", 250..300, 1).await, 50);

    let caught_up = async {
        while app.audit("hot").await.backlog > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), caught_up)
        .await
        .expect("caught up");
    stop.cancel();
    running.await.expect("settler task");

    assert_eq!(app.inventory("hot").await, (300, 0, 300, 0));
    assert_eq!(reservation_count(&app, "hot", "held").await, 300);
    assert_all_held(&app.audit("hot").await);
}

#[sqlx::test]
async fn redis_drift_surplus_holds_are_rejected_and_the_audit_reports_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(5, 1)).await;
    app.set_redis_stock("sneaker", 10).await; // a failover brought back a stale, higher count

    let mut ids = Vec::new();
    for n in 0..8 {
        let response = app.reserve("sneaker", &format!("buyer-{n}"), "k", 1).await;
        assert_eq!(response.status(), 201);
        ids.push(
            response.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let outcome = app
        .settler()
        .settle_batch(&sku("sneaker"))
        .await
        .expect("settle");
    assert!(
        matches!(
            outcome,
            BatchOutcome::Applied {
                events: 8,
                rejected: 3,
                ..
            }
        ),
        "{outcome:?}"
    );
    app.settler().drain(&sku("sneaker")).await.expect("drain");

    assert_eq!(
        app.inventory("sneaker").await,
        (5, 0, 5, 0),
        "postgres never went negative"
    );
    // The first five in stream order won; the last three were refused and told so.
    for (n, id) in ids.iter().enumerate() {
        let shown: Value = app
            .get_json(
                &format!("/v1/reservations/{id}"),
                Some(&app.token(&format!("buyer-{n}"))),
            )
            .await;
        let expected = if n < 5 { "held" } else { "rejected" };
        assert_eq!(shown["status"], expected, "hold {n}");
        assert_eq!(shown["settled"], true, "hold {n}");
    }
    let replay: Value = app
        .reserve("sneaker", "buyer-7", "k", 1)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        replay["status"], "rejected",
        "the idempotent answer was updated"
    );
    // The refused buyer's limit is free again, but the units are not given back to Redis.
    assert_eq!(app.redis_stock("sneaker").await, 2);

    let audit = app.audit("sneaker").await;
    assert_eq!(audit.rejected, 3);
    let drift = audit
        .checks
        .iter()
        .find(|c| c.invariant == 5)
        .expect("check 5");
    assert_eq!(drift.verdict, Verdict::Violated);
    assert!(
        drift
            .detail
            .contains("redis stock 2 != postgres available 0"),
        "{}",
        drift.detail
    );
    assert!(!audit.ok());
}

#[sqlx::test]
async fn holds_are_applied_in_stream_order_and_only_those_that_do_not_fit_are_refused(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(3, 5)).await;
    app.set_redis_stock("sneaker", 100).await;
    // Stream order: 2 units (fits, 1 left), 2 units (does not fit), 1 unit (fits).
    for (buyer, quantity) in [("first", 2), ("second", 2), ("third", 1)] {
        assert_eq!(
            app.reserve("sneaker", buyer, "k", quantity).await.status(),
            201
        );
    }

    app.settler().drain(&sku("sneaker")).await.expect("drain");

    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT buyer_id, status FROM reservations WHERE sku = 'sneaker' ORDER BY created_event",
    )
    .fetch_all(app.store.pool())
    .await
    .expect("rows");
    let expected = [("first", "held"), ("second", "rejected"), ("third", "held")];
    assert_eq!(
        statuses,
        expected.map(|(b, s)| (b.to_owned(), s.to_owned())).to_vec()
    );
    assert_eq!(app.inventory("sneaker").await, (3, 0, 3, 0));
}

#[sqlx::test]
async fn the_audit_endpoint_reports_every_invariant(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("sneaker", &sale_body(10, 2)).await;
    app.reserve("sneaker", "alice", "k", 2).await;

    let before: Value = app
        .get_json(
            "/v1/admin/skus/sneaker/audit",
            Some(crate::helpers::ADMIN_TOKEN),
        )
        .await;
    assert_eq!(before["backlog"], 1);
    assert_eq!(before["checks"][4]["verdict"], "pending");
    assert_eq!(before["ok"], true);

    app.settler().drain(&sku("sneaker")).await.expect("drain");
    let after: Value = app
        .get_json(
            "/v1/admin/skus/sneaker/audit",
            Some(crate::helpers::ADMIN_TOKEN),
        )
        .await;
    assert_eq!(after["backlog"], 0);
    assert_eq!(after["checks"].as_array().expect("checks").len(), 7);
    assert!(
        after["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["verdict"] == "held"),
        "{after}"
    );
}
