//! RabbitMQ for the event tests: the machine's broker with an exchange of the test's own (so
//! tests run in parallel and a consumer sees only its test's events), or a private broker node
//! that a fault test stops and starts (scripts/test.sh installs `rabbitmq-server`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashgate::events::AmqpSettings;
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use secrecy::SecretString;
use serde_json::Value;

/// The test broker: `FLASHGATE_AMQP_URL` (scripts/services.sh exports it), else RabbitMQ's
/// default guest account on this machine.
pub fn amqp_url() -> String {
    std::env::var("FLASHGATE_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// An exchange of the test's own on a broker, deleted (with its dead-letter exchange) by
/// [`TestExchange::delete`].
pub struct TestExchange {
    pub name: String,
    pub url: String,
    _connection: Connection,
    channel: Channel,
}

impl TestExchange {
    pub async fn new() -> Self {
        Self::on(&amqp_url()).await
    }

    pub async fn on(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the test broker (scripts/services.sh starts one)");
        let channel = connection.create_channel().await.expect("channel");
        Self {
            name: format!("fgtest-{}.events", uuid::Uuid::new_v4().simple()),
            url: url.to_owned(),
            _connection: connection,
            channel,
        }
    }

    /// What a relay publishing to this exchange is configured with.
    pub fn settings(&self) -> AmqpSettings {
        AmqpSettings {
            url: SecretString::from(self.url.clone()),
            exchange: self.name.clone(),
            confirm_timeout: Duration::from_secs(5),
        }
    }

    /// A durable queue of the test's own bound to the exchange with `binding` (declaring the
    /// exchange as the relay does, so binding first works); deleted with the exchange... or by
    /// the broker once the test's connection closes when `exclusive`.
    pub async fn queue(&self, binding: &str) -> Received {
        self.queue_on(&self.name, ExchangeKind::Topic, binding)
            .await
    }

    /// A queue bound to the dead-letter exchange `<exchange>.dlx`.
    pub async fn dead_letters(&self) -> Received {
        self.queue_on(&format!("{}.dlx", self.name), ExchangeKind::Fanout, "#")
            .await
    }

    async fn queue_on(&self, exchange: &str, kind: ExchangeKind, binding: &str) -> Received {
        self.channel
            .exchange_declare(
                exchange.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = format!("{exchange}.{}", uuid::Uuid::new_v4().simple());
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    // Survives a broker restart with its persistent messages; deleted by
                    // `delete` (auto_delete once its consumer is gone).
                    durable: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
        Received::consume(&self.url, &queue).await
    }

    /// Deletes the exchange and its dead-letter exchange.
    pub async fn delete(self) {
        for name in [self.name.clone(), format!("{}.dlx", self.name)] {
            let _ = self
                .channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// One message as a consumer received it.
#[derive(Debug, Clone)]
pub struct Message {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub sequence_header: Option<i64>,
    pub body: Value,
}

/// A consumer of one queue, on a connection of its own that it opens again when the broker
/// restarts.
pub struct Received {
    url: String,
    queue: String,
    _connection: Option<Connection>,
    consumer: Option<Consumer>,
    /// Every message received so far, in arrival order.
    pub messages: Vec<Message>,
}

impl Received {
    async fn consume(url: &str, queue: &str) -> Self {
        let mut received = Self {
            url: url.to_owned(),
            queue: queue.to_owned(),
            _connection: None,
            consumer: None,
            messages: Vec::new(),
        };
        received.reconnect().await;
        received
    }

    async fn reconnect(&mut self) {
        let Ok(connection) = Connection::connect(&self.url, ConnectionProperties::default()).await
        else {
            self.consumer = None;
            return;
        };
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("test-{}", uuid::Uuid::new_v4().simple())
                    .as_str()
                    .into(),
                // Acknowledged one by one after it is read: a message in flight when the broker
                // dies is delivered again (and counted as a duplicate), never lost.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .ok();
        self.consumer = consumer;
        self._connection = Some(connection);
    }

    /// Receives until `done` holds for what was received, or `within` passes; reconnects when
    /// the broker went away meanwhile. Returns whether `done` held.
    pub async fn until(&mut self, within: Duration, done: impl Fn(&[Message]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done(&self.messages) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let Some(consumer) = self.consumer.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.reconnect().await;
                continue;
            };
            match tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.next()).await
            {
                Ok(Some(Ok(delivery))) => {
                    let acker = delivery.acker.clone();
                    self.messages.push(message(delivery));
                    let _ = acker.ack(lapin::options::BasicAckOptions::default()).await;
                }
                Ok(Some(Err(_)) | None) => {
                    self.consumer = None;
                }
                Err(_) => {}
            }
        }
        true
    }

    /// Waits `quiet` for anything more, then returns what was received.
    pub async fn settle(&mut self, quiet: Duration) -> &[Message] {
        let before = self.messages.len();
        let _ = self
            .until(quiet, |messages| messages.len() > before + 1_000_000)
            .await;
        &self.messages
    }
}

fn message(delivery: lapin::message::Delivery) -> Message {
    let properties = &delivery.properties;
    let sequence_header = properties.headers().as_ref().and_then(|headers| {
        headers
            .inner()
            .get("sequence")
            .and_then(|value| match value {
                AMQPValue::LongLongInt(n) => Some(*n),
                _ => None,
            })
    });
    Message {
        routing_key: delivery.routing_key.to_string(),
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
        content_type: properties.content_type().as_ref().map(|s| s.to_string()),
        delivery_mode: *properties.delivery_mode(),
        sequence_header,
        body: serde_json::from_slice(&delivery.data).expect("a JSON body"),
    }
}

/// A RabbitMQ node of the test's own, on its own ports and data folder, that the test can kill
/// and start again (its durable exchanges, queues and persistent messages survive, as on a
/// real broker's restart). Its ports lie below the kernel's ephemeral range: inside it, another
/// test's connection (or the readiness probe itself, retrying a closed port) can take the node's
/// port as its source port before the node binds it, and the node never comes up.
pub struct PrivateRabbit {
    pub url: String,
    port: u16,
    dist_port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

const RABBIT_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// How long a node may take to take connections; it takes ~5 s on an idle development machine.
const RABBIT_BOOT: Duration = Duration::from_secs(90);

impl PrivateRabbit {
    /// A running node, or why there is none: not installed, or it did not come up (with the
    /// end of what it printed).
    pub async fn start() -> Result<Self, String> {
        if !std::path::Path::new(RABBIT_SERVER).exists() {
            return Err(format!(
                "{RABBIT_SERVER} is not installed (scripts/test.sh installs rabbitmq-server)"
            ));
        }
        let port = crate::helpers::free_port();
        let dir = std::env::temp_dir().join(format!(
            "flashgate-rabbit-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut node = Self {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            port,
            dist_port: crate::helpers::free_port(),
            dir,
            child: None,
        };
        node.boot().await?;
        Ok(node)
    }

    /// Starts the node and waits until it takes connections; on failure, why, with the end of
    /// what the node printed.
    pub async fn boot(&mut self) -> Result<(), String> {
        let dir = &self.dir;
        let output = dir.join(format!("node-{}.out", uuid::Uuid::new_v4().simple()));
        let printed = |why: String| {
            let text = std::fs::read_to_string(&output).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            format!(
                "the private rabbitmq node (port {}, distribution port {}) {why}; it printed:\n{tail}",
                self.port, self.dist_port
            )
        };
        let log = std::fs::File::create(&output).map_err(|e| printed(e.to_string()))?;
        let log_too = log.try_clone().map_err(|e| printed(e.to_string()))?;
        let child = Command::new(RABBIT_SERVER)
            .env(
                "RABBITMQ_NODENAME",
                format!("fgtest{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
            // Its own process group: `kill` takes the script and the Erlang VM together.
            .process_group(0)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_too))
            .spawn()
            .map_err(|e| printed(format!("did not start: {e}")))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < RABBIT_BOOT {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(printed(format!(
                    "exited ({status}) before taking connections"
                )));
            }
            if let Ok(Ok(connection)) = tokio::time::timeout(
                Duration::from_secs(2),
                Connection::connect(&self.url, ConnectionProperties::default()),
            )
            .await
            {
                let _ = connection.close(200, "ready".into()).await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(printed(format!(
            "took no connection in {} s",
            RABBIT_BOOT.as_secs()
        )))
    }

    /// Kills the node at once (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

use std::os::unix::process::CommandExt as _;

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
