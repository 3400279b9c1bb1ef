//! An order service's consumer of flashgate's events: one order per committed reservation,
//! created idempotently, whatever the broker delivers twice.
//!
//! It codes against the published contract (`docs/asyncapi.json`), not against flashgate's
//! crate or tables: a durable queue bound to `reservation.committed.#`, manual acknowledgements
//! after the order is stored, and `INSERT ... ON CONFLICT (reservation_id) DO NOTHING`, so a
//! redelivered or re-sent event (same `id`, same reservation) creates nothing twice. The price
//! comes from the event: the order never asks flashgate's catalogue.
//!
//! ```sh
//! cargo run --example order_consumer -- \
//!   --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --exchange flashgate.events \
//!   --database-url postgres://postgres@127.0.0.1:5432/orders
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use sqlx::PgPool;

/// Creates orders from flashgate's `reservation.committed` events.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "FLASHGATE_AMQP_URL")]
    amqp_url: String,
    #[arg(long, default_value = "flashgate.events")]
    exchange: String,
    /// The order service's own database (its `orders` table is created if missing).
    #[arg(long)]
    database_url: String,
    /// The service's durable queue: events wait there while the service is down.
    #[arg(long, default_value = "orders.flashgate")]
    queue: String,
    /// Stop after this many seconds without a message (0: run until stopped).
    #[arg(long, default_value_t = 0)]
    exit_when_idle_seconds: u64,
}

/// The fields of `reservation.committed` the order needs (see
/// docs/events/reservation.committed.schema.json); anything else is ignored.
#[derive(Debug, Deserialize)]
struct Committed {
    id: uuid::Uuid,
    kind: String,
    sku: String,
    reservation_id: uuid::Uuid,
    buyer_id: String,
    quantity: i32,
    unit_price: rust_decimal::Decimal,
    currency: String,
    amount: rust_decimal::Decimal,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let orders = PgPool::connect(&args.database_url)
        .await
        .context("the order database")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
            reservation_id UUID PRIMARY KEY,
            event_id       UUID NOT NULL,
            sku            TEXT NOT NULL,
            buyer_id       TEXT NOT NULL,
            quantity       INTEGER NOT NULL,
            unit_price     NUMERIC NOT NULL,
            currency       CHAR(3) NOT NULL,
            amount         NUMERIC NOT NULL,
            created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(&orders)
    .await?;

    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("the broker")?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            args.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            args.queue.as_str().into(),
            args.exchange.as_str().into(),
            "reservation.committed.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            args.queue.as_str().into(),
            "order-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("consuming {} from {}", args.queue, args.exchange);

    let (mut created, mut already) = (0u64, 0u64);
    loop {
        let next = if args.exit_when_idle_seconds > 0 {
            match tokio::time::timeout(
                Duration::from_secs(args.exit_when_idle_seconds),
                deliveries.next(),
            )
            .await
            {
                Ok(next) => next,
                Err(_) => break,
            }
        } else {
            deliveries.next().await
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let event: Committed = match serde_json::from_slice(&delivery.data) {
            Ok(event) => event,
            Err(err) => {
                // Not ours to understand: never requeue it forever.
                eprintln!("dropping a message that is not a reservation.committed: {err}");
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await?;
                continue;
            }
        };
        if event.kind != "reservation.committed" {
            delivery.ack(BasicAckOptions::default()).await?;
            continue;
        }
        let inserted = sqlx::query(
            "INSERT INTO orders (reservation_id, event_id, sku, buyer_id, quantity, unit_price, \
               currency, amount) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (reservation_id) DO NOTHING",
        )
        .bind(event.reservation_id)
        .bind(event.id)
        .bind(&event.sku)
        .bind(&event.buyer_id)
        .bind(event.quantity)
        .bind(event.unit_price)
        .bind(&event.currency)
        .bind(event.amount)
        .execute(&orders)
        .await;
        match inserted {
            Ok(done) if done.rows_affected() == 1 => created += 1,
            Ok(_) => already += 1,
            Err(err) => {
                // The order database is down: leave the event on the queue for later.
                eprintln!("cannot store the order of {}: {err}", event.reservation_id);
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // Acknowledged only once the order is stored: a crash before this redelivers it.
        delivery.ack(BasicAckOptions::default()).await?;
    }
    println!("orders created: {created}, duplicates ignored: {already}");
    Ok(())
}
