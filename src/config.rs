//! Configuration: one typed struct per concern, read from flags or environment variables
//! (DESIGN.md §5). Secrets are `SecretString`s, so they never reach a log.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::domain::ValidationError;
use crate::gate::{BuyerRate, GateSettings, Namespace, RedisSettings};

/// Where Postgres is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Most Postgres connections this process opens.
    #[arg(long, env = "FLASHGATE_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,
}

/// Where Redis is, and how the gate uses it.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis connection URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: SecretString,
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    #[arg(long, env = "FLASHGATE_REDIS_NAMESPACE", default_value = "flashgate")]
    pub redis_namespace: String,
    /// Most Redis connections; requests are pipelined over them (multiplexed).
    #[arg(long, env = "FLASHGATE_REDIS_POOL_SIZE", default_value_t = 64)]
    pub redis_pool_size: usize,
    /// Bound on connecting to Redis, waiting for a pooled connection and each command, in ms:
    /// past it the request is answered 503 instead of hanging.
    #[arg(long, env = "FLASHGATE_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// How long a created hold is remembered under its idempotency key, in seconds.
    #[arg(
        long,
        env = "FLASHGATE_IDEMPOTENCY_TTL_SECONDS",
        default_value_t = 86_400
    )]
    pub idempotency_ttl_seconds: u64,
    /// Per-buyer, per-SKU reserve attempts per second (GCRA in Lua); 0 turns the limit off.
    #[arg(long, env = "FLASHGATE_BUYER_RATE", default_value_t = 5.0)]
    pub buyer_rate: f64,
    /// Per-buyer burst: attempts allowed at once before the rate applies.
    #[arg(long, env = "FLASHGATE_BUYER_BURST", default_value_t = 10)]
    pub buyer_burst: u32,
    /// Answer `sold_out` in process once a SKU is sold out, for buyers who never held a unit of
    /// it (turned off everywhere the moment units come back).
    #[arg(long, env = "FLASHGATE_SOLD_OUT_SHORTCUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub sold_out_shortcut: bool,
}

impl RedisConfig {
    pub fn redis_settings(&self) -> RedisSettings {
        use secrecy::ExposeSecret;
        RedisSettings {
            url: self.redis_url.expose_secret().to_owned(),
            pool_size: self.redis_pool_size.max(1),
            timeout: Duration::from_millis(self.redis_timeout_ms.max(1)),
        }
    }

    pub fn gate_settings(&self) -> Result<GateSettings, ValidationError> {
        let buyer_rate = if self.buyer_rate > 0.0 {
            Some(BuyerRate {
                per_second: self.buyer_rate,
                burst: self.buyer_burst.max(1),
            })
        } else {
            None
        };
        Ok(GateSettings {
            namespace: Namespace::parse(&self.redis_namespace)?,
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_seconds.max(1)),
            buyer_rate,
            sold_out_shortcut: self.sold_out_shortcut,
        })
    }
}

/// The HTTP server.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Address to listen on.
    #[arg(long, env = "FLASHGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// HS256 secret that signs buyer tokens.
    #[arg(long, env = "FLASHGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: SecretString,
    /// Bearer token for `/v1/admin/...`.
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: SecretString,
    /// Requests per second one client IP may send before it is shed with 429; 0 turns it off.
    #[arg(long, env = "FLASHGATE_CLIENT_RATE", default_value_t = 500)]
    pub client_rate: u32,
    /// Requests one client IP may send at once before the rate applies.
    #[arg(long, env = "FLASHGATE_CLIENT_BURST", default_value_t = 1000)]
    pub client_burst: u32,
    /// Longest a request may take before it is answered 503, in ms.
    #[arg(long, env = "FLASHGATE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
}

/// The settler's pace (see `settler::SettlerSettings`).
#[derive(Debug, Clone, Args)]
pub struct SettlerConfig {
    /// Most events applied to Postgres in one transaction.
    #[arg(long, env = "FLASHGATE_SETTLER_BATCH_SIZE", default_value_t = 500)]
    pub settler_batch_size: usize,
    /// Pause between passes when there is nothing to settle, in ms.
    #[arg(long, env = "FLASHGATE_SETTLER_IDLE_MS", default_value_t = 50)]
    pub settler_idle_ms: u64,
    /// Longest retry pause while Postgres or Redis is down, in ms.
    #[arg(long, env = "FLASHGATE_SETTLER_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub settler_max_backoff_ms: u64,
    /// Pause between expiry sweeps, in ms.
    #[arg(long, env = "FLASHGATE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// Most holds expired per SKU per Redis query.
    #[arg(long, env = "FLASHGATE_SWEEP_BATCH", default_value_t = 500)]
    pub sweep_batch: usize,
}

impl SettlerConfig {
    pub fn sweeper(
        &self,
        gate: crate::gate::Gate,
        store: crate::store::Store,
    ) -> crate::sweeper::Sweeper {
        crate::sweeper::Sweeper::new(
            gate,
            store,
            Duration::from_millis(self.sweep_interval_ms.max(1)),
            self.sweep_batch,
        )
    }

    pub fn settings(&self) -> crate::settler::SettlerSettings {
        crate::settler::SettlerSettings {
            batch_size: self.settler_batch_size.clamp(1, 10_000),
            idle_interval: Duration::from_millis(self.settler_idle_ms.max(1)),
            max_backoff: Duration::from_millis(self.settler_max_backoff_ms.max(1)),
            ..crate::settler::SettlerSettings::default()
        }
    }
}
