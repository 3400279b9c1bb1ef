//! Settlement and expiry cost O(work): the background loops act on what their own process
//! posts at once, scan only as a safety net (over the share of the catalogue the live settlers
//! give them), and commits waiting on one SKU settle as a group.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flashgate::domain::Sku;
use flashgate::settler::{Settler, SettlerSettings};
use flashgate::store::Share;
use flashgate::sweeper::{Sweeper, SweeperSettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    AppOptions, Background, TestApp, sale_body, settler_settings, spawn_app, spawn_app_with,
};

/// Scans so rare that a test passing within seconds cannot have relied on one.
const NO_SCAN: Duration = Duration::from_secs(600);

fn without_scans() -> AppOptions {
    AppOptions {
        settler: SettlerSettings {
            scan_interval: NO_SCAN,
            ..settler_settings()
        },
        ..AppOptions::default()
    }
}

fn sweeper_without_scans() -> SweeperSettings {
    SweeperSettings {
        interval: Duration::from_millis(50),
        scan_interval: NO_SCAN,
        ..SweeperSettings::default()
    }
}

async fn hold(app: &TestApp, sku: &str, buyer: &str) -> String {
    let created = app.reserve(sku, buyer, "k", 1).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

/// Reads the hold until `done` says yes, for at most `within`; the last read.
async fn read_until(
    app: &TestApp,
    id: &str,
    buyer: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let read = app
            .get_json(&format!("/v1/reservations/{id}"), Some(&app.token(buyer)))
            .await;
        if done(&read) || started.elapsed() > within {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[sqlx::test]
async fn a_release_is_settled_by_its_own_process_without_waiting_for_a_scan(pool: PgPool) {
    let app = spawn_app_with(pool, without_scans()).await;
    app.open_sale("shoe", &sale_body(10, 1)).await;
    let _background = app.run_background(sweeper_without_scans());
    // The settler's first scan runs at its start; let it pass so only posts are left.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let id = hold(&app, "shoe", "alice").await;
    let released = app.act(&id, "release", &app.token("alice")).await;
    assert_eq!(released.status(), 200);
    let read = read_until(&app, &id, "alice", Duration::from_secs(5), |r| {
        r["settled"] == true
    })
    .await;
    assert_eq!(read["status"], "released");
    assert_eq!(read["settled"], true, "{read}");
    assert_eq!(app.inventory("shoe").await, (10, 10, 0, 0));
}

#[sqlx::test]
async fn a_hold_expires_on_time_without_a_scan(pool: PgPool) {
    let app = spawn_app_with(pool, without_scans()).await;
    let mut body = sale_body(10, 1);
    body["hold_ttl_seconds"] = json!(1);
    app.open_sale("shoe", &body).await;
    let _background = app.run_background(sweeper_without_scans());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let id = hold(&app, "shoe", "alice").await;
    let read = read_until(&app, &id, "alice", Duration::from_secs(5), |r| {
        r["status"] == "expired" && r["settled"] == true
    })
    .await;
    assert_eq!(read["status"], "expired", "{read}");
    assert_eq!(read["settled"], true, "{read}");
    assert_eq!(app.inventory("shoe").await, (10, 10, 0, 0));
}

#[sqlx::test]
async fn what_another_process_decided_is_found_by_the_scans(pool: PgPool) {
    // The app's own settler never runs: another process's settler and sweeper must find its
    // hold (to settle it) and its deadline (to expire it) by scanning.
    let app = spawn_app(pool).await;
    let mut body = sale_body(10, 1);
    body["hold_ttl_seconds"] = json!(1);
    app.open_sale("shoe", &body).await;
    let id = hold(&app, "shoe", "alice").await;

    let other = app.settler();
    let sweeper = Sweeper::new(
        app.gate.clone(),
        app.store.clone(),
        other.board(),
        SweeperSettings {
            interval: Duration::from_millis(50),
            scan_interval: Duration::from_millis(200),
            ..SweeperSettings::default()
        },
    );
    let _background = Background::start(other, sweeper);
    let read = read_until(&app, &id, "alice", Duration::from_secs(10), |r| {
        r["status"] == "expired" && r["settled"] == true
    })
    .await;
    assert_eq!(read["status"], "expired", "{read}");
    assert_eq!(read["settled"], true, "{read}");
    assert_eq!(app.inventory("shoe").await, (10, 10, 0, 0));
}

async fn share_of(settler: &Settler, within: Duration, wanted: impl Fn(Share) -> bool) -> Share {
    let started = Instant::now();
    loop {
        let share = settler.board().share();
        if wanted(share) || started.elapsed() > within {
            return share;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test]
async fn live_settlers_split_the_catalogue_and_take_over_a_stopped_ones_share(pool: PgPool) {
    let app = spawn_app(pool).await;
    for n in 0..20 {
        app.open_sale(&format!("sale-{n}"), &sale_body(5, 1)).await;
    }
    let (first, second) = (app.settler(), app.settler());
    let stop_first = CancellationToken::new();
    let stop_second = CancellationToken::new();
    let running_first = tokio::spawn({
        let (settler, stop) = (first.clone(), stop_first.clone());
        async move { settler.run(stop).await }
    });
    let running_second = tokio::spawn({
        let (settler, stop) = (second.clone(), stop_second.clone());
        async move { settler.run(stop).await }
    });

    let halves = |s: Share| s.of == 2;
    let (a, b) = (
        share_of(&first, Duration::from_secs(5), halves).await,
        share_of(&second, Duration::from_secs(5), halves).await,
    );
    assert_eq!((a.of, b.of), (2, 2), "{a:?} {b:?}");
    assert_ne!(a.index, b.index, "each settler has its own half");
    let scanned = |share: Share| {
        let store = app.store.clone();
        async move {
            store
                .settlement_cursors(share)
                .await
                .expect("cursors")
                .into_iter()
                .map(|(sku, _)| sku)
                .collect::<HashSet<Sku>>()
        }
    };
    let (mine, theirs) = (scanned(a).await, scanned(b).await);
    assert!(
        !mine.is_empty() && !theirs.is_empty(),
        "{mine:?} {theirs:?}"
    );
    assert!(mine.is_disjoint(&theirs), "no SKU is scanned twice");
    assert_eq!(mine.len() + theirs.len(), 20, "every SKU is scanned");

    stop_second.cancel();
    running_second.await.expect("second settler");
    let alone = share_of(&first, Duration::from_secs(5), |s| s == Share::ALL).await;
    assert_eq!(alone, Share::ALL, "the remaining settler scans everything");
    stop_first.cancel();
    running_first.await.expect("first settler");
}

#[sqlx::test]
async fn commits_waiting_on_one_sku_are_answered_together_each_with_its_own_outcome(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("shoe", &sale_body(300, 1)).await;
    let mut holds = Vec::new();
    for n in 0..200 {
        let buyer = format!("payer-{n}");
        holds.push((hold(&app, "shoe", &buyer).await, buyer));
    }
    // A quarter of the payers send their commit twice at once: both answers must be the same.
    let commits = holds.iter().enumerate().flat_map(|(n, (id, buyer))| {
        let times = if n % 4 == 0 { 2 } else { 1 };
        (0..times).map(move |_| (id.clone(), buyer.clone()))
    });
    let answers = futures::future::join_all(commits.map(|(id, buyer)| {
        let app = &app;
        async move {
            let answer = app.act(&id, "commit", &app.token(&buyer)).await;
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.expect("json");
            (id, status, body)
        }
    }))
    .await;
    assert_eq!(answers.len(), 250);
    for (id, status, body) in &answers {
        assert_eq!(*status, 200, "{id}: {body}");
        assert_eq!(body["status"], "committed", "{id}: {body}");
    }
    assert_eq!(app.inventory("shoe").await, (300, 100, 0, 200));
}

#[sqlx::test]
async fn a_commit_whose_caller_gave_up_still_settles_and_the_others_are_answered(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.open_sale("shoe", &sale_body(20, 1)).await;
    let mut holds = Vec::new();
    for n in 0..20 {
        let buyer = format!("payer-{n}");
        holds.push((hold(&app, "shoe", &buyer).await, buyer));
    }
    // The first payer's client hangs up at once; its request is dropped mid-commit.
    let (gone_id, gone_buyer) = holds[0].clone();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1))
        .build()
        .expect("client");
    let _ = impatient
        .post(app.url(&format!("/v1/reservations/{gone_id}/commit")))
        .bearer_auth(app.token(&gone_buyer))
        .send()
        .await;
    let answers = futures::future::join_all(
        holds[1..]
            .iter()
            .map(|(id, buyer)| async { app.act(id, "commit", &app.token(buyer)).await }),
    )
    .await;
    assert!(answers.iter().all(|a| a.status() == 200));
    // The abandoned commit is decided in Redis; committing again answers it.
    let again = app.act(&gone_id, "commit", &app.token(&gone_buyer)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(app.inventory("shoe").await, (20, 0, 0, 20));
}
