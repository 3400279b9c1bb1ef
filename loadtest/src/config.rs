//! The command line.

use clap::{Parser, ValueEnum};
use secrecy::SecretString;

/// Drives virtual buyers at one SKU of a running gate, then checks invariants 1–7.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Base URL of the gate; repeat it (or separate with commas) for a fleet of gates on the
    /// same stores: buyers are spread over them, a double submit goes to two different gates,
    /// and a commit or release to another gate than the reserve. Admin calls go to the first.
    #[arg(long, env = "FLASHGATE_URL", default_value = "http://127.0.0.1:8080", num_args = 1.., value_delimiter = ',')]
    pub url: Vec<String>,
    /// The gate's admin token (creates the sale, reads the audit).
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: SecretString,
    /// The gate's buyer-token secret, to mint one token per virtual buyer.
    #[arg(long, env = "FLASHGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: SecretString,

    /// The SKU to drive (created with --create, else it must exist and be pre-warmed).
    #[arg(long, default_value = "loadtest")]
    pub sku: String,
    /// Create (or reset) the sale through the admin API and pre-warm it with --force first.
    #[arg(long)]
    pub create: bool,
    /// Units on sale (with --create; without it, the sale's units available at the start).
    #[arg(long, default_value_t = 100)]
    pub stock: u32,
    /// Per-buyer limit (with --create; without it, the sale's).
    #[arg(long, default_value_t = 1)]
    pub per_buyer_limit: u32,
    /// Hold TTL in seconds (with --create).
    #[arg(long, default_value_t = 300)]
    pub hold_ttl_seconds: u32,
    /// Unit price (with --create).
    #[arg(long, default_value = "19.99")]
    pub price: String,

    /// Virtual buyers; each wants one unit under its own idempotency key.
    #[arg(long, default_value_t = 5_000)]
    pub buyers: usize,
    /// Closed: `--concurrency` buyers in flight at once. Open: buyers arrive at `--rate` per
    /// second whatever the gate's answers, and latency counts from the scheduled arrival, so
    /// slow answers cannot hide latency (no coordinated omission).
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Buyers in flight at once (closed mode); default: all of them.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Arrivals per second (open mode).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// HTTP connections the load generator may open.
    #[arg(long, default_value_t = 512)]
    pub connections: usize,
    /// Client timeout per request, in ms; a timed-out reserve is retried with the same key.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Most tries of one call. A timeout, a 503 or a 429 is tried again with the same
    /// idempotency key after the answer's `Retry-After` (at most --max-retry-wait-ms), as a
    /// real client would.
    #[arg(long, default_value_t = 4)]
    pub attempts: u32,
    /// Longest wait before a retry, in ms, whatever `Retry-After` says.
    #[arg(long, default_value_t = 2_000)]
    pub max_retry_wait_ms: u64,
    /// Spread the buyers over this many client addresses, sent as `X-Forwarded-For` as a load
    /// balancer would (the gate must trust this machine: FLASHGATE_TRUSTED_PROXIES=127.0.0.1).
    /// 0: no header, every buyer is this machine.
    #[arg(long, default_value_t = 0)]
    pub clients: usize,

    /// Share of buyers who send the same reserve twice at once.
    #[arg(long, default_value_t = 0.1)]
    pub double_submit: f64,
    /// Share of buyers who send their reserve again with the same key after the first answer
    /// (as after a lost response).
    #[arg(long, default_value_t = 0.05)]
    pub retry: f64,
    /// Share of buyers with a hold who commit it (pay).
    #[arg(long, default_value_t = 0.6)]
    pub commit: f64,
    /// Share of buyers with a hold who release it; the rest let it expire.
    #[arg(long, default_value_t = 0.2)]
    pub release: f64,

    /// Instead of the usual drive: the waiting-room fairness run. `--buyers` arrive over
    /// `--arrival-seconds` at a sale of `--stock` units with its room on (SKU `<sku>-room`), then
    /// at the same sale without it (`<sku>-direct`); holds are paid at once. The verdict adds
    /// that holds went in arrival order and nobody told `sold_out` held later; then a burst of
    /// places against a burst of holds.
    #[arg(long)]
    pub waiting_room: bool,
    /// With --waiting-room: the window the arrivals are spread over, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub arrival_seconds: f64,
    /// With --waiting-room: the room's admit rate.
    #[arg(long, default_value_t = 500)]
    pub admit_per_second: u32,
    /// With --waiting-room: the room's admission window, in seconds.
    #[arg(long, default_value_t = 30)]
    pub admission_window_seconds: u32,

    /// The gate's Postgres: the verdict then checks that every hold a buyer was told about
    /// (201) is in Postgres, and compares the events with it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Bind a private queue to the gate's exchange before the run and add the events to the
    /// verdict (needs --database-url): one `reservation.committed` per committed hold, one
    /// `reservation.rejected` per rejected one, no gap in the SKU's sequences, and the last
    /// `sale.sold_out`/`sale.back_in_stock` saying what Postgres says.
    #[arg(long)]
    pub consume_events: bool,
    /// The broker the gate publishes to (with --consume-events).
    #[arg(long, env = "FLASHGATE_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<SecretString>,
    /// The gate's exchange (with --consume-events).
    #[arg(
        long,
        env = "FLASHGATE_AMQP_EXCHANGE",
        default_value = "flashgate.events"
    )]
    pub amqp_exchange: String,

    /// Longest wait for the settler to drain after the drive, in seconds.
    #[arg(long, default_value_t = 120)]
    pub settle_timeout_seconds: u64,
    /// Accept 5xx answers (they fail the verdict by default).
    #[arg(long)]
    pub allow_5xx: bool,
    /// The gate's process id, to report its peak memory (VmHWM).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON here ("" for none).
    #[arg(long, default_value = "target/loadtest/report.json")]
    pub report_json: String,
    /// Write the report as a self-contained HTML page here ("" for none).
    #[arg(long, default_value = "target/loadtest/report.html")]
    pub report_html: String,
    /// No progress bar (for CI logs).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Closed,
    Open,
}
