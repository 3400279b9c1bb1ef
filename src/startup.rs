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

use crate::auth::{AdminToken, BuyerTokens};
use crate::config::{DatabaseConfig, HttpConfig, RedisConfig};
use crate::gate::Gate;
use crate::http::{self, AppState, ClientShedder};
use crate::store::Store;

/// Connects to Postgres (lazily: a down Postgres does not stop the gate from starting).
pub fn store(config: &DatabaseConfig) -> anyhow::Result<Store> {
    Store::connect_lazy(
        config.database_url.expose_secret(),
        config.database_pool_size,
    )
    .context("invalid DATABASE_URL")
}

/// Builds the Redis gate (connections are made on first use).
pub fn gate(config: &RedisConfig) -> anyhow::Result<Gate> {
    let settings = config.gate_settings().context("invalid Redis settings")?;
    Gate::connect(&config.redis_settings(), settings).context("invalid REDIS_URL")
}

/// A bound, ready-to-run API server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(
        http: &HttpConfig,
        gate: Gate,
        store: Store,
        settler: Settler,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", http.listen))?;
        let state = AppState {
            gate,
            store,
            settler,
            tokens: BuyerTokens::new(&http.jwt_secret),
            admin: AdminToken::new(http.admin_token.clone()),
            shedder: ClientShedder::new(http.client_rate, http.client_burst),
            request_timeout: Duration::from_millis(http.request_timeout_ms.max(1)),
            metrics: crate::telemetry::metrics(),
        };
        if http.jwt_secret.expose_secret().len() < 16 {
            tracing::warn!(
                "FLASHGATE_JWT_SECRET is shorter than 16 bytes; use a long random secret"
            );
        }
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        http::serve(self.listener, self.state, shutdown).await
    }
}

/// Runs the API (when given), the settler and the expiry sweeper side by side until `shutdown`
/// is cancelled or one of them stops. Says which one stopped and why, stops the others (the
/// API drains its requests, the settler finishes its batch), and returns the first failure.
pub async fn run(
    app: Option<Application>,
    settler: Settler,
    sweeper: Sweeper,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    if let Some(app) = app {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = app.run_until(stop.cancelled_owned()).await;
            ("http server", served.context("http server failed"))
        });
    }
    let stop = shutdown.clone();
    tasks.spawn(async move {
        settler.run(stop).await;
        ("settler", Ok(()))
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        sweeper.run(stop).await;
        ("sweeper", Ok(()))
    });

    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
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
        if let (Err(err), None) = (result, &first_failure) {
            first_failure = Some(err);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
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
