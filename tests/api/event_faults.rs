//! Events survive every fault (docs/DESIGN.md §11): the relay killed mid-batch, Postgres gone
//! mid-relay, the broker stopped during a run. In each, a consumer that deduplicates on the
//! event id has one `reservation.committed` per committed reservation in Postgres, and every
//! SKU's sequences without a gap; duplicates are counted, never a loss.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashgate::events::AmqpSink;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::broker::{Message, PrivateRabbit, TestExchange};
use crate::helpers::{TestApp, database_url, sale_body, spawn_app};
use crate::proxy::Proxy;

/// What a deduplicating consumer made of the messages.
#[derive(Debug, Default)]
struct Tally {
    /// Distinct `reservation.committed` reservation ids.
    committed: HashSet<String>,
    /// Distinct event ids.
    ids: HashSet<String>,
    /// Messages whose id had been received already.
    duplicates: usize,
    /// Per SKU, the distinct sequences received.
    sequences: HashMap<String, BTreeSet<i64>>,
}

fn tally(messages: &[Message]) -> Tally {
    let mut tally = Tally::default();
    for message in messages {
        let body = &message.body;
        let id = body["id"].as_str().expect("id").to_owned();
        if !tally.ids.insert(id) {
            tally.duplicates += 1;
            continue;
        }
        if body["kind"] == "reservation.committed" {
            tally
                .committed
                .insert(body["reservation_id"].as_str().expect("id").to_owned());
        }
        tally
            .sequences
            .entry(body["sku"].as_str().expect("sku").to_owned())
            .or_default()
            .insert(body["sequence"].as_i64().expect("sequence"));
    }
    tally
}

async fn outbox_size(app: &TestApp) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_outbox")
        .fetch_one(app.store.pool())
        .await
        .expect("count") as usize
}

async fn committed_in_postgres(app: &TestApp) -> HashSet<String> {
    sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM reservations WHERE status = 'committed'")
        .fetch_all(app.store.pool())
        .await
        .expect("committed")
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

/// The verdict of every fault test: nothing lost, nothing out of sequence.
async fn assert_nothing_lost(app: &TestApp, tally: &Tally, what: &str) {
    let committed = committed_in_postgres(app).await;
    assert!(!committed.is_empty(), "{what}: the run committed nothing");
    assert_eq!(
        tally.committed, committed,
        "{what}: the committed events received are exactly Postgres's committed reservations"
    );
    assert_eq!(
        tally.ids.len(),
        outbox_size(app).await,
        "{what}: every event"
    );
    for (sku, sequences) in &tally.sequences {
        let expected: BTreeSet<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, &expected, "{what}: {sku} has a gap");
    }
    let unsent = app
        .store
        .events_unsent(flashgate::store::Sink::Amqp)
        .await
        .expect("unsent");
    assert_eq!(unsent, 0, "{what}: every SKU's cursor past its last event");
    eprintln!(
        "{what}: {} events, {} committed, {} duplicates received",
        tally.ids.len(),
        tally.committed.len(),
        tally.duplicates
    );
}

/// Reserves and commits one unit for each buyer, `parallel` at a time; the ids committed.
async fn commit_buyers(app: &TestApp, code: &str, buyers: std::ops::Range<usize>, parallel: usize) {
    let buyers: Vec<usize> = buyers.collect();
    for chunk in buyers.chunks(parallel) {
        let calls = chunk.iter().map(|n| async move {
            let buyer = format!("buyer-{n}");
            let reserved = app.reserve(code, &buyer, &format!("key-{n}"), 1).await;
            if reserved.status() != 201 {
                return;
            }
            let body: serde_json::Value = reserved.json().await.expect("json");
            let id = body["id"].as_str().expect("id").to_owned();
            let _ = app.act(&id, "commit", &app.token(&buyer)).await;
        });
        futures::future::join_all(calls).await;
    }
}

/// `flashgate relay` on the test's database, publishing to `url`/`exchange` in small batches.
fn relay_process(database_url: &str, url: &str, exchange: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .arg("relay")
        .env("DATABASE_URL", database_url)
        .env("FLASHGATE_AMQP_URL", url)
        .env("FLASHGATE_AMQP_EXCHANGE", exchange)
        .env("FLASHGATE_RELAY_BATCH", "20")
        .env("FLASHGATE_RELAY_POLL_MS", "100")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn flashgate relay")
}

async fn broker_addr(url: &str) -> std::net::SocketAddr {
    let host_port = url
        .trim_start_matches("amqp://")
        .split('@')
        .next_back()
        .and_then(|rest| rest.split('/').next())
        .expect("host:port");
    tokio::net::lookup_host(host_port)
        .await
        .expect("resolve")
        .next()
        .expect("address")
}

#[sqlx::test]
async fn a_relay_killed_with_sigkill_mid_batch_loses_nothing(pool: PgPool) {
    let database = database_url(&pool).await;
    let app = spawn_app(pool).await;
    let exchange = TestExchange::new().await;
    let mut received = exchange.queue("#").await;
    app.open_sale("sneaker", &sale_body(400, 1)).await;
    commit_buyers(&app, "sneaker", 0..300, 50).await;
    let total = outbox_size(&app).await;

    // Every confirm comes back 20 ms late, so the kill lands with a batch in flight.
    let slow =
        Proxy::start_with_delay(broker_addr(&exchange.url).await, Duration::from_millis(20)).await;
    let through_slow = format!("amqp://guest:guest@127.0.0.1:{}/%2f", slow.addr.port());
    let mut first = relay_process(&database, &through_slow, &exchange.name);
    assert!(
        received
            .until(Duration::from_secs(60), |m| m.len() >= 40)
            .await,
        "the first relay published nothing"
    );
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let before_restart = received.messages.len();
    assert!(
        before_restart < total,
        "the kill came after everything was sent"
    );

    let mut second = relay_process(&database, &exchange.url, &exchange.name);
    let done = received
        .until(Duration::from_secs(60), |m| tally(m).ids.len() >= total)
        .await;
    second.kill().expect("stop");
    second.wait().expect("reaped");
    assert!(
        done,
        "received {} of {total}",
        tally(&received.messages).ids.len()
    );
    let messages = received.settle(Duration::from_millis(300)).await.to_vec();
    assert_nothing_lost(&app, &tally(&messages), "relay killed mid-batch").await;
    exchange.delete().await;
}

#[sqlx::test]
async fn postgres_gone_mid_relay_loses_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let exchange = TestExchange::new().await;
    let mut received = exchange.queue("#").await;
    // The relay reaches Postgres only through a proxy the test cuts, as a restart would.
    let (proxy, through_proxy) =
        crate::proxy::postgres_behind_proxy(&pool, Duration::from_millis(500)).await;
    let relay = flashgate::events::Relay::new(
        flashgate::store::Store::from_pool(through_proxy),
        flashgate::events::RelaySettings {
            batch: 20,
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .with_amqp(AmqpSink::new(exchange.settings()).expect("sink"));
    let stop = CancellationToken::new();
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { relay.run(stop).await })
    };
    app.open_sale("sneaker", &sale_body(400, 1)).await;
    let buying = commit_buyers(&app, "sneaker", 0..200, 10);
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
    };
    tokio::join!(buying, outage);
    let total = outbox_size(&app).await;
    let done = received
        .until(Duration::from_secs(60), |m| tally(m).ids.len() >= total)
        .await;
    stop.cancel();
    let _ = running.await;
    assert!(
        done,
        "received {} of {total}",
        tally(&received.messages).ids.len()
    );
    let messages = received.settle(Duration::from_millis(300)).await.to_vec();
    assert_nothing_lost(&app, &tally(&messages), "postgres gone mid-relay").await;
    exchange.delete().await;
}

#[sqlx::test]
async fn the_broker_stopped_for_ten_seconds_during_a_run_loses_nothing(pool: PgPool) {
    let mut broker = PrivateRabbit::start()
        .await
        .unwrap_or_else(|why| panic!("{why}"));
    let app = spawn_app(pool).await;
    let exchange = TestExchange::on(&broker.url).await;
    let mut received = exchange.queue("#").await;
    let relay = app.relay().with_amqp(
        AmqpSink::new(flashgate::events::AmqpSettings {
            url: SecretString::from(broker.url.clone()),
            ..exchange.settings()
        })
        .expect("sink"),
    );
    let stop = CancellationToken::new();
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { relay.run(stop).await })
    };
    app.open_sale("sneaker", &sale_body(2_000, 1)).await;
    let started = Instant::now();
    let buying = async {
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(14) {
            commit_buyers(&app, "sneaker", n..n + 10, 10).await;
            n += 10;
        }
    };
    let mut during = Vec::new();
    let outage = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.kill();
        // Buyers are served while the broker is gone.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            during.push(app.get_json("/readyz", None).await);
        }
        if let Err(why) = broker.boot().await {
            panic!("the broker did not come back: {why}");
        }
    };
    tokio::join!(buying, outage);
    assert!(
        during.iter().all(|r| r["status"] == "ok"),
        "the gate stayed ready"
    );
    assert!(
        during.iter().any(|r| r["events"]["broker"] == "down"),
        "readyz saw the broker down: {during:?}"
    );
    let total = outbox_size(&app).await;
    let done = received
        .until(Duration::from_secs(90), |m| tally(m).ids.len() >= total)
        .await;
    stop.cancel();
    let _ = running.await;
    assert!(
        done,
        "received {} of {total}",
        tally(&received.messages).ids.len()
    );
    let messages = received.settle(Duration::from_millis(300)).await.to_vec();
    assert_nothing_lost(&app, &tally(&messages), "broker stopped for 10 s").await;
}
