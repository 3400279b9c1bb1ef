//! Configuration: one typed struct per concern, read from flags or environment variables
//! (docs/DESIGN.md §5). Secrets are `SecretString`s, so they never reach a log.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::domain::{ValidationError, WaitingRoom};
use crate::gate::{
    BreakerSettings, BuyerRate, ClientHoldCaps, Durability, GateSettings, HoldQuota, Namespace,
    RedisSettings, ReserveBatching, RoomSettings,
};

/// `FLASHGATE_DURABILITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityMode {
    Master,
    Replica,
}
use crate::http::{
    AdmissionSettings, ClientAddrPolicy, ForwardedHeader, ServerSettings, TrustedProxies,
};

/// Where Postgres is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Most Postgres connections this process opens.
    #[arg(long, env = "FLASHGATE_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,
    /// Postgres `statement_timeout` of `serve` and `settle`, in ms: a runaway statement is
    /// cancelled (and retried) instead of stalling settlement.
    #[arg(
        long,
        env = "FLASHGATE_DATABASE_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub database_statement_timeout_ms: u64,
    /// Postgres `lock_timeout` of `serve` and `settle`, in ms: a row locked by hand (or a stuck
    /// session) makes that SKU's batch fail and retry, while other SKUs go on.
    #[arg(
        long,
        env = "FLASHGATE_DATABASE_LOCK_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub database_lock_timeout_ms: u64,
    /// Which events the outbox records (and so every sink and the pull API see): a
    /// comma-separated list of kinds (`reservation.committed`), groups (`sale.*`), `all`,
    /// `none` and exclusions (`-reservation.held`), read left to right. Set the same value on
    /// every process that writes to this database.
    #[arg(long, env = "FLASHGATE_EVENTS", default_value = crate::events::EventFilter::DEFAULT)]
    pub events: String,
}

impl DatabaseConfig {
    pub fn event_filter(&self) -> Result<crate::events::EventFilter, ValidationError> {
        crate::events::EventFilter::parse(&self.events)
    }

    pub fn statement_limits(&self) -> crate::store::StatementLimits {
        crate::store::StatementLimits {
            statement_timeout: Duration::from_millis(self.database_statement_timeout_ms.max(1)),
            lock_timeout: Duration::from_millis(self.database_lock_timeout_ms.max(1)),
        }
    }
}

/// Where Redis is, and how the gate uses it.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis connection URL; with `FLASHGATE_REDIS_CLUSTER=true`, a comma-separated list of
    /// cluster seed nodes (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: SecretString,
    /// Whether `REDIS_URL` names nodes of a Redis Cluster (the cluster client is used).
    #[arg(long, env = "FLASHGATE_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
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
    /// Most live holds one client address (IPv4, or IPv6 /64) may have on one SKU, decided in
    /// the reserve script; 0 turns the limit off. Against one client scalping with many buyer ids.
    #[arg(long, env = "FLASHGATE_HOLDS_PER_CLIENT", default_value_t = 0)]
    pub holds_per_client: u32,
    /// Most live holds one IPv6 /56 may have on one SKU (a household's usual delegation holds
    /// 256 /64s); default 4 × `FLASHGATE_HOLDS_PER_CLIENT`; 0 turns this tier off.
    #[arg(long, env = "FLASHGATE_HOLDS_PER_CLIENT_56")]
    pub holds_per_client_56: Option<u32>,
    /// Most live holds one IPv6 /48 may have on one SKU; default 16 ×
    /// `FLASHGATE_HOLDS_PER_CLIENT`; 0 turns this tier off.
    #[arg(long, env = "FLASHGATE_HOLDS_PER_CLIENT_48")]
    pub holds_per_client_48: Option<u32>,
    /// Most holds one buyer may take on one SKU per quota window, whatever became of them
    /// (released, expired, committed): reserve→release churn cannot grow Redis and Postgres
    /// without bound. Past it: 429 `hold_quota_reached` + Retry-After. 0 turns it off.
    #[arg(long, env = "FLASHGATE_BUYER_HOLD_QUOTA", default_value_t = 100)]
    pub buyer_hold_quota: u32,
    /// The window of FLASHGATE_BUYER_HOLD_QUOTA, in seconds.
    #[arg(
        long,
        env = "FLASHGATE_BUYER_HOLD_QUOTA_WINDOW_SECONDS",
        default_value_t = 3600
    )]
    pub buyer_hold_quota_window_seconds: u64,
    /// `master`: answer a hold as soon as Redis decided it. `replica`: only once `WAIT`
    /// confirms a replica has it (else 503 `not_replicated`; the retry replays it).
    #[arg(long, env = "FLASHGATE_DURABILITY", value_enum, default_value_t = DurabilityMode::Master)]
    pub durability: DurabilityMode,
    /// How long `WAIT` may take in `replica` mode, in ms.
    #[arg(long, env = "FLASHGATE_DURABILITY_TIMEOUT_MS", default_value_t = 200)]
    pub durability_timeout_ms: u64,
    /// Consecutive failed Redis calls that open the circuit breaker; 0 turns it off.
    #[arg(long, env = "FLASHGATE_REDIS_BREAKER_FAILURES", default_value_t = 5)]
    pub redis_breaker_failures: u32,
    /// How long the open breaker answers 503 before it lets one probe through, in ms.
    #[arg(long, env = "FLASHGATE_REDIS_BREAKER_OPEN_MS", default_value_t = 500)]
    pub redis_breaker_open_ms: u64,
    /// Most reserves of one SKU sent to Redis in one script call (`reserve_batch.lua`), decided
    /// in arrival order with exactly the single call's rules; 1 sends each alone.
    #[arg(long, env = "FLASHGATE_RESERVE_BATCH", default_value_t = 64)]
    pub reserve_batch: usize,
    /// How long a batch waits for more reserves, in µs; 0 sends only what is already queued
    /// (no added latency when the gate is idle).
    #[arg(long, env = "FLASHGATE_RESERVE_BATCH_WAIT_US", default_value_t = 0)]
    pub reserve_batch_wait_us: u64,
    /// Whether a new sale gets a waiting room (`PUT /v1/admin/skus/{sku}` without `waiting_room`
    /// gives a new sale this default, and leaves an existing sale's room as it is).
    #[arg(long = "waiting-room-default", env = "FLASHGATE_WAITING_ROOM", default_value_t = false, action = clap::ArgAction::Set)]
    pub waiting_room_default: bool,
    /// A new sale's waiting room admits this many places per second (1–100,000).
    #[arg(long, env = "FLASHGATE_WAITING_ROOM_ADMIT_PER_SECOND", default_value_t = WaitingRoom::DEFAULT_ADMIT_PER_SECOND)]
    pub waiting_room_admit_per_second: u32,
    /// How long an admitted place of a new sale's room may reserve, in seconds (1–86,400).
    #[arg(long, env = "FLASHGATE_WAITING_ROOM_WINDOW_SECONDS", default_value_t = WaitingRoom::DEFAULT_ADMISSION_WINDOW_SECONDS)]
    pub waiting_room_window_seconds: u32,
    /// Most places in one sale's line per client address (IPv4, or IPv6 /64); 0 = no cap.
    #[arg(long, env = "FLASHGATE_PLACES_PER_CLIENT", default_value_t = 0)]
    pub places_per_client: u32,
    /// Start even when Redis's `maxmemory-policy` may evict keys (anything but `noeviction`).
    /// Eviction silently breaks idempotency, buyer limits and the event stream: only for tests.
    #[arg(long, env = "FLASHGATE_ALLOW_EVICTING_REDIS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_evicting_redis: bool,
}

impl RedisConfig {
    pub fn redis_settings(&self) -> RedisSettings {
        use secrecy::ExposeSecret;
        let timeout = Duration::from_millis(self.redis_timeout_ms.max(1));
        RedisSettings {
            cluster: self.redis_cluster,
            breaker: BreakerSettings {
                failures: self.redis_breaker_failures,
                open_for: Duration::from_millis(self.redis_breaker_open_ms),
                probe_timeout: timeout,
            },
            ..RedisSettings::new(
                self.redis_url.expose_secret(),
                self.redis_pool_size.max(1),
                timeout,
            )
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
            holds_per_client: {
                let defaults = ClientHoldCaps::per_client(self.holds_per_client);
                ClientHoldCaps {
                    per_56: self.holds_per_client_56.unwrap_or(defaults.per_56),
                    per_48: self.holds_per_client_48.unwrap_or(defaults.per_48),
                    ..defaults
                }
            },
            hold_quota: (self.buyer_hold_quota > 0).then(|| HoldQuota {
                holds: self.buyer_hold_quota,
                window: Duration::from_secs(self.buyer_hold_quota_window_seconds.max(1)),
            }),
            durability: match self.durability {
                DurabilityMode::Master => Durability::Master,
                DurabilityMode::Replica => Durability::Replica {
                    timeout: Duration::from_millis(self.durability_timeout_ms.max(1)),
                },
            },
            reservation_seal: None,
            waiting_room: RoomSettings {
                default_room: WaitingRoom {
                    enabled: self.waiting_room_default,
                    admit_per_second: self.waiting_room_admit_per_second,
                    admission_window_seconds: self.waiting_room_window_seconds,
                }
                .validate()?,
                places_per_client: self.places_per_client,
                ticket_seal: None,
            },
            reserve_batching: ReserveBatching {
                max: self.reserve_batch.clamp(1, 1024),
                wait: Duration::from_micros(self.reserve_batch_wait_us),
            },
        })
    }
}

/// The HTTP server.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Address to listen on.
    #[arg(long, env = "FLASHGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// When set, a second listener for the operators: `/metrics`, the admin API, the console
    /// and the documents move there (off FLASHGATE_LISTEN), and the probes answer on both, so
    /// no crowd on the public port can starve health checks or an operator's pause.
    #[arg(long, env = "FLASHGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Buyer tokens: secret, issuer, audience, lifetime.
    #[command(flatten)]
    pub tokens: TokenConfig,
    /// Your identity provider's signing keys.
    #[command(flatten)]
    pub jwks: JwksConfig,
    /// Bearer token for `/v1/admin/...`: at least 32 characters.
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: SecretString,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` is believed: comma-separated CIDRs or
    /// addresses (e.g. `10.0.0.0/8,::1`). Default: none, so the client is the socket peer.
    #[arg(long, env = "FLASHGATE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Which forwarded header the trusted proxies write. `auto`: whichever is present (a
    /// request with both is keyed on the proxy itself).
    #[arg(long, env = "FLASHGATE_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::Auto)]
    pub forwarded_header: ForwardedHeader,
    /// New-buyer requests per second one client address may send before it is shed with 429;
    /// 0 turns it off. Payment calls (commit, release, reading one's hold) are never shed.
    #[arg(long, env = "FLASHGATE_CLIENT_RATE", default_value_t = 500)]
    pub client_rate: u32,
    /// New-buyer requests one client address may send at once before the rate applies.
    #[arg(long, env = "FLASHGATE_CLIENT_BURST", default_value_t = 1000)]
    pub client_burst: u32,
    /// New-buyer requests (reserve, sale view) in flight at once in this process; past it a
    /// request waits at most FLASHGATE_ADMISSION_QUEUE_MS, then is answered 503 `overloaded`.
    #[arg(long, env = "FLASHGATE_ADMISSION_LIMIT", default_value_t = 256)]
    pub admission_limit: usize,
    /// Longest a new-buyer request waits for a place, in ms (0: refuse at once).
    #[arg(long, env = "FLASHGATE_ADMISSION_QUEUE_MS", default_value_t = 100)]
    pub admission_queue_ms: u64,
    /// New-buyer requests one client address (behind trusted proxies: the forwarded client)
    /// may have in flight at once; past it 429 `too_many_in_flight`. 0 turns it off.
    #[arg(long, env = "FLASHGATE_REQUESTS_PER_CLIENT", default_value_t = 64)]
    pub requests_per_client: usize,
    /// New-buyer requests one buyer (token) may have in flight at once; past it 429
    /// `too_many_in_flight`. 0 turns it off.
    #[arg(long, env = "FLASHGATE_REQUESTS_PER_BUYER", default_value_t = 4)]
    pub requests_per_buyer: usize,
    /// Longest a new-buyer request's body may take to arrive, in ms, read before the request
    /// takes an admission place; past it 408 `body_read_timeout`.
    #[arg(long, env = "FLASHGATE_BODY_READ_TIMEOUT_MS", default_value_t = 2_000)]
    pub body_read_timeout_ms: u64,
    /// Payment requests (commit, release, reading one's hold) in flight at once: a budget of
    /// their own, never shared with new buyers.
    #[arg(long, env = "FLASHGATE_PAYMENT_LIMIT", default_value_t = 1024)]
    pub payment_limit: usize,
    /// Longest a payment request waits for a place, in ms (keep it below the request
    /// timeout: a payer should wait, not be refused).
    #[arg(long, env = "FLASHGATE_PAYMENT_QUEUE_MS", default_value_t = 8_000)]
    pub payment_queue_ms: u64,
    /// Longest a request may take before it is answered 503 `request_timeout`, in ms.
    #[arg(long, env = "FLASHGATE_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Serves `POST /v1/skus/{sku}/floor`, a route for benchmarks only: it answers exactly what a
    /// sold-out reserve answers without reading the request, behind every layer a reserve
    /// passes, so `scripts/perf.sh` can measure the HTTP floor a sold-out answer is held to.
    #[arg(long, env = "FLASHGATE_FLOOR_ROUTE", default_value_t = false, action = clap::ArgAction::Set)]
    pub floor_route: bool,
    /// Most open client connections; past it new connections wait in the listen backlog.
    #[arg(long, env = "FLASHGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most open connections one client address (IPv4, or IPv6 /64) may hold; past it the
    /// client's longest-idle connection is closed, or the new one refused when none is idle.
    /// Trusted proxies are exempt. 0 turns it off.
    #[arg(
        long,
        env = "FLASHGATE_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 256
    )]
    pub max_connections_per_client: usize,
    /// Longest a client may take to send a request's headers, from the connection's start or
    /// its first byte after an idle spell, in ms. A connection that sends nothing is closed
    /// after this too.
    #[arg(
        long,
        env = "FLASHGATE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub header_read_timeout_ms: u64,
    /// Longest a kept-alive connection may stay idle between requests, in ms. Keep it above
    /// the idle timeout of the load balancer in front (60 s on most), so the balancer closes
    /// first and never sends on a connection the gate is closing.
    #[arg(long, env = "FLASHGATE_IDLE_TIMEOUT_MS", default_value_t = 75_000)]
    pub idle_timeout_ms: u64,
}

impl HttpConfig {
    pub fn client_addr_policy(&self) -> Result<ClientAddrPolicy, ValidationError> {
        Ok(ClientAddrPolicy {
            trusted: TrustedProxies::parse(&self.trusted_proxies)?,
            header: self.forwarded_header,
        })
    }

    pub fn admission(&self) -> AdmissionSettings {
        AdmissionSettings {
            new_buyer_limit: self.admission_limit.max(1),
            new_buyer_queue: Duration::from_millis(self.admission_queue_ms),
            payer_limit: self.payment_limit.max(1),
            payer_queue: Duration::from_millis(self.payment_queue_ms),
            per_client_in_flight: self.requests_per_client,
            per_buyer_in_flight: self.requests_per_buyer,
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms.max(1)),
        }
    }

    pub fn server(&self) -> ServerSettings {
        ServerSettings {
            max_connections: self.max_connections.max(1),
            max_connections_per_client: self.max_connections_per_client,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
        }
    }
}

/// Buyer tokens (JWT, HS256).
#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    /// HS256 secret that signs buyer tokens: at least 32 bytes (`flashgate secret` makes one).
    #[arg(long, env = "FLASHGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: SecretString,
    /// When set, tokens must carry this `iss` (and `flashgate token` writes it).
    #[arg(long, env = "FLASHGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud` (and `flashgate token` writes it).
    #[arg(long, env = "FLASHGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Longest lifetime a token may have (`exp` − `iat`, or `exp` − now without `iat`), in
    /// seconds: a stolen token with `exp` in the year 3000 is refused.
    #[arg(
        long,
        env = "FLASHGATE_JWT_MAX_LIFETIME_SECONDS",
        default_value_t = 86_400
    )]
    pub jwt_max_lifetime_seconds: u64,
}

impl TokenConfig {
    pub fn policy(&self) -> crate::auth::TokenPolicy {
        crate::auth::TokenPolicy {
            issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
            max_lifetime: Duration::from_secs(self.jwt_max_lifetime_seconds.max(1)),
        }
    }
}

/// Your identity provider's keys, for the tokens it signs (RS256, ES256, EdDSA).
#[derive(Debug, Clone, Args)]
pub struct JwksConfig {
    /// URL of the provider's JSON Web Key Set (its `jwks_uri`). Requires FLASHGATE_JWT_ISSUER
    /// and FLASHGATE_JWT_AUDIENCE: a provider's keys sign tokens for every application it serves.
    #[arg(long, env = "FLASHGATE_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// A JSON Web Key Set in a file instead (re-read like the URL).
    #[arg(long, env = "FLASHGATE_JWKS_FILE")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// How often the key set is read again, in seconds.
    #[arg(long, env = "FLASHGATE_JWKS_REFRESH_SECONDS", default_value_t = 300)]
    pub jwks_refresh_seconds: u64,
    /// Least time between two reads asked for by tokens naming an unknown `kid` (rotation), in
    /// seconds: forged `kid`s cannot make the gate hammer the provider.
    #[arg(long, env = "FLASHGATE_JWKS_MIN_REFRESH_SECONDS", default_value_t = 30)]
    pub jwks_min_refresh_seconds: u64,
    /// How long the last keys read stay in use while the provider cannot be read, in seconds;
    /// past it, the provider's tokens are refused.
    #[arg(long, env = "FLASHGATE_JWKS_MAX_STALE_SECONDS", default_value_t = 3600)]
    pub jwks_max_stale_seconds: u64,
}

impl JwksConfig {
    /// Where the key set comes from, if one is configured (an empty value is none).
    pub fn source(&self) -> Option<crate::auth::JwksSource> {
        if let Some(url) = self.jwks_url.as_ref().filter(|u| !u.is_empty()) {
            return Some(crate::auth::JwksSource::Url(url.clone()));
        }
        self.jwks_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| crate::auth::JwksSource::File(p.clone()))
    }

    pub fn timing(&self) -> crate::auth::JwksTiming {
        crate::auth::JwksTiming {
            refresh: Duration::from_secs(self.jwks_refresh_seconds.max(1)),
            min_refresh: Duration::from_secs(self.jwks_min_refresh_seconds),
            max_stale: Duration::from_secs(self.jwks_max_stale_seconds.max(1)),
        }
    }
}

/// How the process stops on SIGTERM or Ctrl-C.
#[derive(Debug, Clone, Args)]
pub struct ShutdownConfig {
    /// After the first signal, how long `/readyz` answers 503 while requests are still served,
    /// so load balancers stop sending before the listener closes, in ms.
    #[arg(
        long,
        env = "FLASHGATE_SHUTDOWN_DRAIN_DELAY_MS",
        default_value_t = 1_000
    )]
    pub shutdown_drain_delay_ms: u64,
    /// Longest the whole shutdown may take (drain delay, in-flight requests, the settler's
    /// batch) before the process exits anyway, in ms. A second signal exits at once.
    #[arg(long, env = "FLASHGATE_SHUTDOWN_TIMEOUT_MS", default_value_t = 20_000)]
    pub shutdown_timeout_ms: u64,
}

impl ShutdownConfig {
    pub fn settings(&self) -> crate::startup::ShutdownSettings {
        crate::startup::ShutdownSettings {
            drain_delay: Duration::from_millis(self.shutdown_drain_delay_ms),
            deadline: Duration::from_millis(self.shutdown_timeout_ms.max(1)),
        }
    }
}

/// The settler's pace (see `settler::SettlerSettings`).
#[derive(Debug, Clone, Args)]
pub struct SettlerConfig {
    /// Most events applied to Postgres in one transaction.
    #[arg(long, env = "FLASHGATE_SETTLER_BATCH_SIZE", default_value_t = 500)]
    pub settler_batch_size: usize,
    /// Pause before looking again at a SKU another settler is settling, in ms; also the first
    /// pause of a benched SKU and of the backoff while the stores are down. A settler with
    /// nothing to do sleeps until its gate posts work or its next scan.
    #[arg(long, env = "FLASHGATE_SETTLER_IDLE_MS", default_value_t = 50)]
    pub settler_idle_ms: u64,
    /// How often the settler scans its share of the catalogue for events other processes
    /// appended (the safety net; what this process decides is settled at once), in ms. The live
    /// settlers split the catalogue between them.
    #[arg(
        long,
        env = "FLASHGATE_SETTLER_SCAN_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub settler_scan_interval_ms: u64,
    /// Longest retry pause while Postgres or Redis is down, in ms.
    #[arg(long, env = "FLASHGATE_SETTLER_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub settler_max_backoff_ms: u64,
    /// How often the sweeper expires the holds that are due, in ms: a hold expires at most this
    /// late.
    #[arg(long, env = "FLASHGATE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// How often the sweeper scans its share of the catalogue for holds other processes
    /// created (the safety net; this process's own holds are swept on time), in ms.
    #[arg(
        long,
        env = "FLASHGATE_SWEEP_SCAN_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub sweep_scan_interval_ms: u64,
    /// Most holds expired per SKU per Redis query.
    #[arg(long, env = "FLASHGATE_SWEEP_BATCH", default_value_t = 500)]
    pub sweep_batch: usize,
}

impl SettlerConfig {
    /// The sweeper of the process whose settler is `settler` (it reads the settler's board).
    pub fn sweeper(
        &self,
        gate: crate::gate::Gate,
        store: crate::store::Store,
        settler: &crate::settler::Settler,
    ) -> crate::sweeper::Sweeper {
        crate::sweeper::Sweeper::new(
            gate,
            store,
            settler.board(),
            crate::sweeper::SweeperSettings {
                interval: Duration::from_millis(self.sweep_interval_ms.max(1)),
                scan_interval: Duration::from_millis(self.sweep_scan_interval_ms.max(1)),
                batch: self.sweep_batch,
            },
        )
    }

    pub fn settings(&self) -> crate::settler::SettlerSettings {
        crate::settler::SettlerSettings {
            batch_size: self.settler_batch_size.clamp(1, 10_000),
            idle_interval: Duration::from_millis(self.settler_idle_ms.max(1)),
            max_backoff: Duration::from_millis(self.settler_max_backoff_ms.max(1)),
            scan_interval: Duration::from_millis(self.settler_scan_interval_ms.max(1)),
            ..crate::settler::SettlerSettings::default()
        }
    }
}

/// Events out: the relay to RabbitMQ and the webhook (docs/DESIGN.md §11). Without
/// `FLASHGATE_AMQP_URL` and `FLASHGATE_WEBHOOK_URL` the outbox is still written and readable
/// through `GET /v1/admin/events`.
#[derive(Debug, Clone, Args)]
pub struct RelayConfig {
    /// The broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`. A malformed URL refuses to
    /// start; an unreachable broker does not (the outbox waits for it).
    #[arg(long, env = "FLASHGATE_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<SecretString>,
    /// The durable topic exchange events are published to (declared if missing; one of
    /// another type refuses to start). Unroutable events go to `<exchange>.dlx`.
    #[arg(
        long,
        env = "FLASHGATE_AMQP_EXCHANGE",
        default_value = "flashgate.events"
    )]
    pub amqp_exchange: String,
    /// Longest a batch waits for the broker's confirms (and a connection attempt), in ms.
    #[arg(
        long,
        env = "FLASHGATE_AMQP_CONFIRM_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub amqp_confirm_timeout_ms: u64,
    /// How long events are kept after every configured sink has them (without a sink: after
    /// they were recorded), e.g. `7d`, `12h`, `30m`.
    #[arg(long, env = "FLASHGATE_OUTBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,
    /// Most events a relay claims and sends at once.
    #[arg(long, env = "FLASHGATE_RELAY_BATCH", default_value_t = 1000)]
    pub relay_batch: usize,
    /// How often a relay looks for events other processes recorded, in ms (this process's own
    /// are sent as soon as they commit).
    #[arg(long, env = "FLASHGATE_RELAY_POLL_MS", default_value_t = 1000)]
    pub relay_poll_ms: u64,
    /// Where to POST every event (Standard Webhooks), for a system without a broker.
    #[arg(long, env = "FLASHGATE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The webhook's signing secret, `whsec_` + base64 (`flashgate secret --webhook`).
    #[arg(long, env = "FLASHGATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
    /// Longest one webhook call may take, in ms.
    #[arg(long, env = "FLASHGATE_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// How long a failing event is retried before it is given up (and left for the pull API),
    /// e.g. `1h`.
    #[arg(long, env = "FLASHGATE_WEBHOOK_RETRY_FOR", default_value = "1h", value_parser = humantime::parse_duration)]
    pub webhook_retry_for: Duration,
}

impl RelayConfig {
    pub fn settings(&self) -> crate::events::RelaySettings {
        crate::events::RelaySettings {
            batch: self.relay_batch.clamp(1, 10_000),
            poll_interval: Duration::from_millis(self.relay_poll_ms.max(1)),
            retention: self.outbox_retention,
            ..crate::events::RelaySettings::default()
        }
    }

    pub fn amqp(&self) -> Option<crate::events::AmqpSettings> {
        use secrecy::ExposeSecret;
        self.amqp_url
            .clone()
            .filter(|url| !url.expose_secret().is_empty())
            .map(|url| crate::events::AmqpSettings {
                url,
                exchange: self.amqp_exchange.clone(),
                confirm_timeout: Duration::from_millis(self.amqp_confirm_timeout_ms.max(1)),
            })
    }

    pub fn webhook(&self) -> Result<Option<crate::events::WebhookSettings>, ValidationError> {
        let Some(url) = self.webhook_url.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let secret = self.webhook_secret.clone().ok_or_else(|| {
            ValidationError::new(
                "FLASHGATE_WEBHOOK_SECRET",
                "is required with FLASHGATE_WEBHOOK_URL (flashgate secret --webhook makes one)",
            )
        })?;
        Ok(Some(crate::events::WebhookSettings {
            url,
            secret,
            timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
            retry_for: self.webhook_retry_for,
        }))
    }
}
