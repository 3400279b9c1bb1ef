//! The RabbitMQ sink: publishes outbox rows to a durable topic exchange with publisher confirms
//! (lapin), so a row is marked published only after the broker took responsibility for it.
//!
//! Each message is persistent and `mandatory`, routed by `<kind>.<sku>`, with `message_id` =
//! the event id, `content_type: application/json`, and headers `sku`, `kind` and `sequence`.
//! A batch is published at once and its confirms awaited together. Per SKU only the prefix up
//! to the first message the broker did not confirm is marked, so the relay sends the rest again,
//! in order, after a reconnect. A message the broker returns as unroutable (no queue bound for its
//! routing key) is published to the dead-letter exchange `<exchange>.dlx` (with a durable queue
//! of the same name) and counted: it never holds up the SKU behind it.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::{ExposeSecret, SecretString};

use super::relay::Delivered;
use crate::store::OutboxRow;

/// Where and how the sink publishes (`FLASHGATE_AMQP_*`).
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub url: SecretString,
    pub exchange: String,
    /// Longest a batch waits for its confirms (and a connection attempt for the broker).
    pub confirm_timeout: Duration,
}

/// Why the sink could not publish.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("FLASHGATE_AMQP_URL is not an AMQP URL (amqp://user:password@host:5672/vhost): {0}")]
    BadUrl(String),
    /// The exchange exists with another type or durability: fixed only by changing a setting.
    #[error(
        "the broker refused exchange {exchange:?} ({reason}): FLASHGATE_AMQP_EXCHANGE must name a \
         durable topic exchange, or one that does not exist yet"
    )]
    ExchangeMismatch { exchange: String, reason: String },
    #[error("the broker did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

impl AmqpError {
    /// Whether only a change of settings can cure it.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, Self::BadUrl(_) | Self::ExchangeMismatch { .. })
    }
}

/// The RabbitMQ sink; one connection and one confirm channel, made again after any failure.
#[derive(Debug)]
pub struct AmqpSink {
    settings: AmqpSettings,
    dead_letters: String,
    link: Option<Link>,
}

#[derive(Debug)]
struct Link {
    connection: Connection,
    channel: Channel,
}

impl AmqpSink {
    /// Checks the URL: a malformed one is refused here, at start, naming the setting.
    pub fn new(settings: AmqpSettings) -> Result<Self, AmqpError> {
        lapin::uri::AMQPUri::from_str(settings.url.expose_secret()).map_err(AmqpError::BadUrl)?;
        if settings.exchange.is_empty() || settings.exchange.len() > 200 {
            return Err(AmqpError::ExchangeMismatch {
                exchange: settings.exchange.clone(),
                reason: "an exchange name is 1 to 200 characters".into(),
            });
        }
        Ok(Self {
            dead_letters: format!("{}.dlx", settings.exchange),
            settings,
            link: None,
        })
    }

    pub fn exchange(&self) -> &str {
        &self.settings.exchange
    }

    /// Connects (when not connected), opens a confirm channel and declares the exchanges.
    pub async fn connect(&mut self) -> Result<&Channel, AmqpError> {
        let alive = self
            .link
            .as_ref()
            .is_some_and(|l| l.connection.status().connected() && l.channel.status().connected());
        if !alive {
            if let Some(old) = self.link.take() {
                let _ = old.connection.close(200, "reconnecting".into()).await;
            }
            let timeout = self.settings.confirm_timeout;
            let link = tokio::time::timeout(timeout, self.open())
                .await
                .map_err(|_| AmqpError::TimedOut(timeout))??;
            self.link = Some(link);
        }
        match &self.link {
            Some(link) => Ok(&link.channel),
            None => Err(AmqpError::TimedOut(self.settings.confirm_timeout)),
        }
    }

    async fn open(&self) -> Result<Link, AmqpError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("flashgate relay ({})", std::process::id()).into());
        let connection = Connection::connect(self.settings.url.expose_secret(), properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let mismatch = |exchange: &str, err: lapin::Error| match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp)
                if *amqp.kind()
                    == lapin::protocol::AMQPErrorKind::Soft(
                        lapin::protocol::AMQPSoftError::PRECONDITIONFAILED,
                    ) =>
            {
                AmqpError::ExchangeMismatch {
                    exchange: exchange.to_owned(),
                    reason: amqp.get_message().to_string(),
                }
            }
            _ => AmqpError::Broker(err),
        };
        channel
            .exchange_declare(
                self.settings.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| mismatch(&self.settings.exchange, e))?;
        // Declaring on a channel the broker closed would fail: a mismatch closes the channel.
        channel
            .exchange_declare(
                self.dead_letters.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| mismatch(&self.dead_letters, e))?;
        channel
            .queue_declare(
                self.dead_letters.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letters.as_str().into(),
                self.dead_letters.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        metrics::counter!("flashgate_outbox_reconnects_total").increment(1);
        tracing::info!(exchange = %self.settings.exchange, "relay connected to the broker");
        Ok(Link {
            connection,
            channel,
        })
    }

    /// Publishes `rows` (per SKU in sequence order) and waits for their confirms. Returns the
    /// rows the broker confirmed, per SKU only up to the first it did not.
    pub async fn deliver(&mut self, rows: &[OutboxRow]) -> Delivered {
        let channel = match self.connect().await {
            Ok(channel) => channel.clone(),
            Err(err) => return Delivered::broken(err.to_string()),
        };
        let timeout = self.settings.confirm_timeout;
        match tokio::time::timeout(timeout, self.publish(&channel, rows)).await {
            Ok(delivered) => {
                if delivered.broken.is_some() {
                    self.link = None;
                }
                delivered
            }
            Err(_) => {
                // Unconfirmed: sent again after a reconnect (a consumer may see them twice).
                self.link = None;
                Delivered::broken(AmqpError::TimedOut(timeout).to_string())
            }
        }
    }

    async fn publish(&self, channel: &Channel, rows: &[OutboxRow]) -> Delivered {
        let mut confirms = Vec::with_capacity(rows.len());
        let mut broken = None;
        for row in rows {
            match channel
                .basic_publish(
                    self.settings.exchange.as_str().into(),
                    routing_key(row).as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    row.body.as_bytes(),
                    properties(row),
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(err) => {
                    broken = Some(format!("publish: {err}"));
                    break;
                }
            }
        }
        let published = confirms.len();
        metrics::counter!("flashgate_outbox_published_total").increment(published as u64);
        // Every confirm, in order. An event returned as unroutable is published to the
        // dead-letter exchange at once; those confirms are awaited together afterwards, so a
        // batch nobody is bound for costs two round trips, not one per event.
        let mut confirmed = vec![false; rows.len()];
        let mut dead_letters = Vec::new();
        for (n, (row, confirm)) in rows.iter().zip(confirms).enumerate() {
            match confirm.await {
                Ok(Confirmation::Ack(None)) => confirmed[n] = true,
                Ok(Confirmation::Ack(Some(returned))) => {
                    tracing::debug!(event = %row.id, kind = %row.kind, sku = %row.sku,
                        reply = %returned.reply_text,
                        "the broker could not route an event; sending it to the dead-letter exchange");
                    match channel
                        .basic_publish(
                            self.dead_letters.as_str().into(),
                            routing_key(row).as_str().into(),
                            BasicPublishOptions::default(),
                            row.body.as_bytes(),
                            properties(row),
                        )
                        .await
                    {
                        Ok(confirm) => dead_letters.push((n, confirm)),
                        Err(err) => {
                            broken.get_or_insert_with(|| format!("dead letter: {err}"));
                        }
                    }
                }
                Ok(Confirmation::Nack(_)) => {
                    metrics::counter!("flashgate_outbox_nacks_total").increment(1);
                }
                Ok(Confirmation::NotRequested) => {}
                Err(err) => {
                    broken.get_or_insert_with(|| format!("confirm: {err}"));
                }
            }
        }
        for (n, confirm) in dead_letters {
            if matches!(confirm.await, Ok(Confirmation::Ack(_))) {
                confirmed[n] = true;
                metrics::counter!("flashgate_outbox_dead_lettered_total", "kind" => rows[n].kind.clone())
                    .increment(1);
            }
        }
        // Per SKU, only the prefix up to the first event not confirmed counts as sent; a row
        // never published (the channel broke first) is not confirmed either.
        let mut delivered = Delivered::default();
        let mut failed_skus: HashSet<&str> = HashSet::new();
        for (row, confirmed) in rows.iter().zip(confirmed) {
            if confirmed && !failed_skus.contains(row.sku.as_str()) {
                metrics::counter!("flashgate_outbox_confirms_total").increment(1);
                delivered.confirmed(row);
            } else {
                failed_skus.insert(&row.sku);
            }
        }
        delivered.failed_skus = failed_skus.into_iter().map(str::to_owned).collect();
        delivered.broken = broken;
        delivered
    }
}

fn routing_key(row: &OutboxRow) -> String {
    format!("{}.{}", row.kind, row.sku)
}

fn properties(row: &OutboxRow) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("sku".into(), AMQPValue::LongString(row.sku.as_str().into()));
    headers.insert(
        "kind".into(),
        AMQPValue::LongString(row.kind.as_str().into()),
    );
    headers.insert("sequence".into(), AMQPValue::LongLongInt(row.sequence));
    BasicProperties::default()
        .with_message_id(row.id.to_string().into())
        .with_content_type("application/json".into())
        .with_type(row.kind.as_str().into())
        .with_app_id("flashgate".into())
        // Persistent: kept by a durable queue across a broker restart.
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(row.occurred_at.timestamp()).unwrap_or_default())
        .with_headers(headers)
}
