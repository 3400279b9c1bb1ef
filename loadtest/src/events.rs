//! `--consume-events`: a private queue bound to the gate's exchange before the run, whose
//! messages the verdict compares with Postgres (every committed hold has exactly one distinct
//! `reservation.committed`, every rejected one a `reservation.rejected`, the SKU's sequences have
//! no gap, and the sale's last availability event says what Postgres says).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

/// One message as the queue delivered it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub at: DateTime<Utc>,
}

/// The consumer, running until the report is written.
pub struct EventWatch {
    received: Arc<Mutex<Vec<Received>>>,
    _connection: Connection,
    sku: String,
}

impl EventWatch {
    /// Binds an exclusive queue to every routing key of `exchange` (the body says the SKU: a
    /// SKU may contain dots, which routing-key patterns would split).
    pub async fn start(url: &str, exchange: &str, sku: &str) -> anyhow::Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| "cannot reach the broker of --amqp-url")?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!("cannot bind to exchange {exchange:?}: does the gate publish there (FLASHGATE_AMQP_URL set on the gate)?")
            })?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "flashgate-loadtest".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        let wanted = sku.to_owned();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let at = Utc::now();
                let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
                    continue;
                };
                if body["sku"] == wanted.as_str() {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Received { body, at });
                }
            }
        });
        Ok(Self {
            received,
            _connection: connection,
            sku: sku.to_owned(),
        })
    }

    /// Waits until every sequence up to `last` arrived, or `within` passed; what arrived.
    pub async fn wait_for(&self, last: i64, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            let distinct: BTreeSet<i64> = received
                .iter()
                .filter_map(|r| r.body["sequence"].as_i64())
                .collect();
            if distinct.len() as i64 >= last || Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn sku(&self) -> &str {
        &self.sku
    }
}

/// What the events received say, deduplicated by event id.
#[derive(Debug, Default)]
pub struct EventTally {
    /// Messages received (duplicates included).
    pub messages: usize,
    /// Event ids received more than once, with how many times.
    pub duplicates: Vec<(String, usize)>,
    /// Per reservation, the distinct committed events.
    pub committed: HashMap<String, BTreeSet<String>>,
    /// Per reservation, the distinct rejected events.
    pub rejected: HashMap<String, BTreeSet<String>>,
    pub sequences: BTreeSet<i64>,
    /// The last availability event (`sale.sold_out` or `sale.back_in_stock`) by sequence.
    pub last_availability: Option<String>,
    /// (occurred since the first event, settlement lag, event lag), seconds.
    pub lags: Vec<(f64, f64, f64)>,
}

pub fn tally(received: &[Received]) -> EventTally {
    let mut tally = EventTally {
        messages: received.len(),
        ..EventTally::default()
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let time = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let first = received
        .iter()
        .filter_map(|r| time(&r.body["occurred_at"]))
        .min();
    let mut availability: Option<(i64, String)> = None;
    for r in received {
        let body = &r.body;
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        let count = seen.entry(id.clone()).or_default();
        *count += 1;
        if *count > 1 {
            continue;
        }
        let kind = body["kind"].as_str().unwrap_or_default();
        let sequence = body["sequence"].as_i64().unwrap_or_default();
        tally.sequences.insert(sequence);
        let reservation = body["reservation_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match kind {
            "reservation.committed" => {
                tally.committed.entry(reservation).or_default().insert(id);
            }
            "reservation.rejected" => {
                tally.rejected.entry(reservation).or_default().insert(id);
            }
            "sale.sold_out" | "sale.back_in_stock"
                if availability.as_ref().is_none_or(|(s, _)| *s < sequence) =>
            {
                availability = Some((sequence, kind.to_owned()));
            }
            _ => {}
        }
        if let (Some(first), Some(occurred), Some(recorded)) = (
            first,
            time(&body["occurred_at"]),
            time(&body["recorded_at"]),
        ) {
            let seconds = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1e6;
            tally.lags.push((
                seconds(occurred - first),
                seconds(recorded - occurred).max(0.0),
                seconds(r.at - occurred).max(0.0),
            ));
        }
    }
    tally.duplicates = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    tally.duplicates.sort();
    tally.last_availability = availability.map(|(_, kind)| kind);
    tally
}
