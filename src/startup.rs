//! Wiring: builds the stores and the API from configuration and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settler::Settler;
use crate::sweeper::Sweeper;

use crate::auth::{AdminToken, BearerTokens};
use crate::config::{DatabaseConfig, HttpConfig, RedisConfig, RelayConfig};
use crate::domain::{ReservationSeal, TicketSeal};
use crate::events::{AmqpSink, Relay, RelayStatus, WebhookSink};
use crate::gate::{Gate, GateError};
use crate::http::{
    self, Admission, AppState, ClientShedder, Listeners, Readiness, ServerSettings, Services,
};
use crate::store::Store;

/// Connects to Postgres (lazily: a down Postgres does not stop the gate from starting), with
/// the configured statement and lock timeouts.
/// Refuses to run against a database that lacks migrations this build needs: it would start,
/// answer ready, and fail every write with 500. Postgres unreachable: checked no further (the
/// gate serves from Redis meanwhile).
pub async fn check_migrations(store: &Store) -> anyhow::Result<()> {
    match store.pending_migrations().await {
        Some(pending) if !pending.is_empty() => anyhow::bail!(
            "the database lacks {} migration(s) this build needs ({}): run `flashgate migrate` first",
            pending.len(),
            pending.join(", ")
        ),
        _ => Ok(()),
    }
}

pub fn store(config: &DatabaseConfig) -> anyhow::Result<Store> {
    let events = config.event_filter().context("invalid FLASHGATE_EVENTS")?;
    Ok(Store::connect_lazy(
        config.database_url.expose_secret(),
        config.database_pool_size,
        Some(config.statement_limits()),
    )
    .context("invalid DATABASE_URL")?
    .with_events(events))
}

/// Builds the relays of `config` (docs/DESIGN.md §11). A malformed URL or secret refuses to
/// start, and so does an exchange the broker has with another type; a broker that cannot be
/// reached now does not (the outbox keeps the events until it is back).
pub async fn relay(config: &RelayConfig, store: &Store) -> anyhow::Result<Relay> {
    let mut relay = Relay::new(store.clone(), config.settings());
    if let Some(settings) = config.amqp() {
        let mut sink = AmqpSink::new(settings)?;
        match sink.connect().await {
            Ok(_) => {}
            Err(err) if err.is_misconfiguration() => return Err(err.into()),
            Err(err) => tracing::warn!(error = %err,
                "the broker cannot be reached now; events wait in the outbox until it can"),
        }
        relay = relay.with_amqp(sink);
    }
    if let Some(settings) = config.webhook().context("invalid webhook settings")? {
        relay = relay.with_webhook(WebhookSink::new(settings).context("invalid webhook settings")?);
    }
    Ok(relay)
}

/// Logs this process's share of Postgres `max_connections` (its pool is a budget: N gates and
/// settlers use up to N × FLASHGATE_DATABASE_POOL_SIZE), and warns when few processes like it
/// would fit. Best effort: an unreachable Postgres is reported by the settler.
pub async fn report_postgres_budget(store: &Store, pool_size: u32) {
    match store.max_connections().await {
        Ok(max) => {
            let fits = max / i64::from(pool_size.max(1));
            if fits < 4 {
                tracing::warn!(
                    pool_size,
                    max_connections = max,
                    processes_that_fit = fits,
                    "each gate or settler may open FLASHGATE_DATABASE_POOL_SIZE connections: few fit; lower it or put PgBouncer in front"
                );
            } else {
                tracing::info!(
                    pool_size,
                    max_connections = max,
                    processes_that_fit = fits,
                    "postgres connection budget"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot read postgres max_connections"),
    }
}

/// Builds the Redis gate (connections are made on first use). A gate that answers buyers seals
/// the ids it mints and the tickets it hands out with keys derived from the buyer-token
/// `secret`, so that a hold Redis lost is answered `hold_lost` and any gate can check a ticket.
pub fn gate(config: &RedisConfig, secret: Option<&[u8]>) -> anyhow::Result<Gate> {
    let mut settings = config.gate_settings().context("invalid Redis settings")?;
    if let Some(secret) = secret {
        settings.reservation_seal = Some(ReservationSeal::derive(secret));
        settings.waiting_room.ticket_seal = Some(TicketSeal::derive(secret));
    }
    Gate::connect(&config.redis_settings(), settings).context("invalid REDIS_URL")
}

/// Checks at start that Redis is what the settings say and keeps what the gate writes: refuses
/// a cluster node behind a single-node client (or a single server behind the cluster client)
/// and an evicting `maxmemory-policy` (unless `allow_evicting`), warns when Redis does not
/// persist. A Redis that cannot be reached now is not a reason not to start: the gate answers
/// 503 until it is back, and the check is owed — [`RedisCheckOwed`] makes it when Redis first
/// answers (run it with the process's [`Tasks`]).
pub async fn check_redis(
    gate: &Gate,
    allow_evicting: bool,
) -> anyhow::Result<Option<RedisCheckOwed>> {
    if inspect_redis(gate, allow_evicting).await? {
        return Ok(None);
    }
    tracing::warn!("cannot reach redis to check it at start; checking it when it answers");
    Ok(Some(RedisCheckOwed {
        gate: gate.clone(),
        allow_evicting,
    }))
}

/// The start-up check of a Redis that could not be reached at start.
#[derive(Debug)]
pub struct RedisCheckOwed {
    gate: Gate,
    allow_evicting: bool,
}

impl RedisCheckOwed {
    /// Asks every [`REDIS_CHECK_RETRY`] until Redis answers, then checks it as at start: a
    /// Redis that would have stopped the process at start stops it now (the error), before it
    /// decided anything there.
    async fn when_redis_answers(self) -> anyhow::Result<()> {
        loop {
            tokio::time::sleep(REDIS_CHECK_RETRY).await;
            if inspect_redis(&self.gate, self.allow_evicting).await? {
                tracing::info!("redis answers; the start-up check it owed has passed");
                return Ok(());
            }
        }
    }
}

/// How often a check owed since start asks Redis again.
const REDIS_CHECK_RETRY: Duration = Duration::from_secs(1);

/// The start-up check: `Ok(true)` when made, `Ok(false)` when Redis could not be reached, an
/// error when Redis is not fit to run the gate.
async fn inspect_redis(gate: &Gate, allow_evicting: bool) -> anyhow::Result<bool> {
    let facts = match gate.server_facts().await {
        Ok(facts) => facts,
        Err(err @ GateError::Misconfigured(_)) => anyhow::bail!("{err}"),
        Err(err) => {
            tracing::debug!(error = %err, "cannot reach redis to check it");
            return Ok(false);
        }
    };
    if facts.cluster_enabled == Some(true) && !gate.is_cluster() {
        anyhow::bail!(
            "REDIS_URL is a Redis Cluster node: set FLASHGATE_REDIS_CLUSTER=true and list the \
             cluster's nodes in REDIS_URL (comma-separated)"
        );
    }
    if facts.evicts() {
        let policy = facts.maxmemory_policy.clone().unwrap_or_default();
        if !allow_evicting {
            anyhow::bail!(
                "redis maxmemory-policy is {policy}: under memory pressure it would silently drop \
                 holds, idempotency records and the event stream. Run \
                 `CONFIG SET maxmemory-policy noeviction` (and keep it in redis.conf), or set \
                 FLASHGATE_ALLOW_EVICTING_REDIS=true to start anyway"
            );
        }
        tracing::warn!(%policy, "redis may evict keys; starting because FLASHGATE_ALLOW_EVICTING_REDIS=true");
    }
    match facts.appendonly {
        Some(false) => tracing::warn!(
            "redis appendonly is off: a redis restart loses the holds it admitted and the \
             settler had not yet applied (see the README on durability)"
        ),
        Some(true) => tracing::info!(policy = ?facts.maxmemory_policy, "redis appendonly is on"),
        None => tracing::info!("redis refused CONFIG GET; its persistence is unknown"),
    }
    Ok(true)
}

/// A bound, ready-to-run API server.
#[derive(Debug)]
pub struct Application {
    listeners: Listeners,
    state: AppState,
    server: ServerSettings,
}

impl Application {
    /// Checks the secrets (a short one refuses to start), binds the listener and builds the
    /// state every handler shares.
    pub async fn build(
        http: &HttpConfig,
        gate: Gate,
        store: Store,
        settler: Settler,
        events: RelayStatus,
    ) -> anyhow::Result<Self> {
        crate::auth::check_jwt_secret(&http.tokens.jwt_secret)?;
        crate::auth::check_admin_token(&http.admin_token)?;
        let client_addr = http
            .client_addr_policy()
            .context("invalid FLASHGATE_TRUSTED_PROXIES")?;
        let listener = TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", http.listen))?;
        let operations =
            match http.admin_listen {
                Some(address) => Some(TcpListener::bind(address).await.with_context(|| {
                    format!("cannot listen on {address} (FLASHGATE_ADMIN_LISTEN)")
                })?),
                None => None,
            };
        let mut tokens = BearerTokens::with_policy(&http.tokens.jwt_secret, http.tokens.policy());
        if let Some(source) = http.jwks.source() {
            let policy = http.tokens.policy();
            if policy.issuer.is_none() || policy.audience.is_none() {
                anyhow::bail!(
                    "FLASHGATE_JWKS_URL / FLASHGATE_JWKS_FILE need FLASHGATE_JWT_ISSUER and \
                     FLASHGATE_JWT_AUDIENCE: an identity provider's keys sign tokens for every \
                     application it serves, so the gate must check that a token is meant for it"
                );
            }
            let jwks = crate::auth::Jwks::load(source, http.jwks.timing())
                .await
                .context("cannot load the identity provider's keys")?;
            tokens = tokens.with_jwks(jwks);
        }
        let state = AppState::from(Services {
            gate,
            store,
            settler,
            tokens,
            admin: AdminToken::new(http.admin_token.clone()),
            admission: Admission::new(
                http.admission(),
                ClientShedder::new(http.client_rate, http.client_burst),
            ),
            client_addr: std::sync::Arc::new(client_addr),
            readiness: Readiness::default(),
            events,
            request_timeout: Duration::from_millis(http.request_timeout_ms.max(1)),
            metrics: crate::telemetry::metrics(),
            floor_route: http.floor_route,
        });
        let server = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _)) => http.server().within_file_limit(soft),
            Err(_) => http.server(),
        };
        Ok(Self {
            listeners: Listeners {
                public: listener,
                operations,
            },
            state,
            server,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.public.local_addr()
    }

    /// The operators' listener's address, when it has one of its own.
    pub fn operations_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.listeners
            .operations
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
    }

    /// What `/readyz` answers; shutdown turns it to `draining` first.
    pub fn readiness(&self) -> Readiness {
        self.state.readiness.clone()
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        http::serve(self.listeners, self.state, self.server, shutdown).await
    }
}

/// How the process stops.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownSettings {
    /// How long `/readyz` says `draining` while requests are still served.
    pub drain_delay: Duration,
    /// Longest the whole shutdown may take before the remaining tasks are abandoned.
    pub deadline: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            deadline: Duration::from_secs(20),
        }
    }
}

/// Raises the soft open-file limit to the hard limit, so the connection cap — not the kernel —
/// decides how many clients are served, and logs both. Returns the soft limit now in force.
pub fn raise_file_limit() -> Option<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => {
            tracing::info!(before = soft, now = raised, hard, "open-file limit");
            Some(raised)
        }
        Err(err) => {
            tracing::warn!(soft, hard, error = %err, "cannot raise the open-file limit");
            Some(soft)
        }
    }
}

/// What one process runs: the API (`serve`), the settler and the sweeper (`serve`, `settle`),
/// the relay (all three and `relay`).
#[derive(Debug, Default)]
pub struct Tasks {
    pub app: Option<Application>,
    pub settler: Option<Settler>,
    pub sweeper: Option<Sweeper>,
    pub relay: Option<Relay>,
    /// The start-up check of Redis, when Redis could not be reached at start.
    pub redis_check: Option<RedisCheckOwed>,
}

/// Runs the API (when given), the settler, the expiry sweeper and the relay side by side until
/// `shutdown` is cancelled or one of them stops. Says which one stopped and why, and returns
/// the first failure.
///
/// Shutdown, in order: `/readyz` turns `draining` (load balancers stop sending) while requests
/// are still served for `drain_delay`; then the listener closes, in-flight requests finish and
/// the settler finishes its batch. Whatever still runs at `deadline` (counted from the signal)
/// is abandoned, so the process always exits in bounded time.
pub async fn run(
    tasks_to_run: Tasks,
    shutdown: CancellationToken,
    settings: ShutdownSettings,
) -> anyhow::Result<()> {
    let Tasks {
        app,
        settler,
        sweeper,
        relay,
        redis_check,
    } = tasks_to_run;
    let stop = CancellationToken::new();
    let readiness = app.as_ref().map(Application::readiness);
    {
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            if let Some(readiness) = readiness {
                readiness.start_draining();
                tracing::info!(
                    drain_delay_ms = settings.drain_delay.as_millis() as u64,
                    "draining: /readyz answers 503 before the listener closes"
                );
                tokio::time::sleep(settings.drain_delay).await;
            }
            stop.cancel();
        });
    }
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    if let Some(app) = app {
        let stop = stop.clone();
        tasks.spawn(async move {
            let served = app.run_until(stop.cancelled_owned()).await;
            ("http server", served.context("http server failed"))
        });
    }
    if let Some(settler) = settler {
        let stopping = stop.clone();
        tasks.spawn(async move {
            settler.run(stopping).await;
            ("settler", Ok(()))
        });
    }
    if let Some(sweeper) = sweeper {
        let stopping = stop.clone();
        tasks.spawn(async move {
            sweeper.run(stopping).await;
            ("sweeper", Ok(()))
        });
    }
    if let Some(relay) = relay {
        let stopping = stop.clone();
        tasks.spawn(async move {
            relay.run(stopping).await;
            ("relay", Ok(()))
        });
    }
    if let Some(owed) = redis_check {
        let stopping = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                checked = owed.when_redis_answers() => match checked {
                    // Passed: nothing more to do, but a finished task stops the process.
                    Ok(()) => stopping.cancelled().await,
                    Err(err) => return ("redis check", Err(err)),
                },
                () = stopping.cancelled() => {}
            }
            ("redis check", Ok(()))
        });
    }

    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(settings.deadline).await;
        }
    };
    tokio::pin!(deadline);
    let mut first_failure = None;
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(joined) => joined,
                None => break,
            },
            () = &mut deadline => {
                tracing::error!(
                    deadline_ms = settings.deadline.as_millis() as u64,
                    still_running = tasks.len(),
                    "shutdown deadline passed; abandoning what still runs"
                );
                tasks.abort_all();
                break;
            }
        };
        let (name, result) = match joined {
            Ok(done) => done,
            Err(join) => (
                "a task",
                Err(anyhow::Error::new(join).context("task panicked")),
            ),
        };
        match &result {
            Ok(()) if shutdown.is_cancelled() => tracing::info!(task = name, "stopped"),
            Ok(()) => tracing::warn!(task = name, "stopped on its own; stopping the others"),
            Err(err) => {
                tracing::error!(task = name, error = %format!("{err:#}"), "failed; stopping the others")
            }
        }
        shutdown.cancel();
        stop.cancel();
        if let (Err(err), None) = (result, &first_failure) {
            first_failure = Some(err);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Cancels `token` on Ctrl-C or SIGTERM; a second signal exits the process at once.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
        shutdown_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
