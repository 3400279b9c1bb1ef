//! Wiring: builds the stores and the API from configuration and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    pub async fn build(http: &HttpConfig, gate: Gate, store: Store) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", http.listen))?;
        let state = AppState {
            gate,
            store,
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

/// Runs the API and the settler side by side until `shutdown` is cancelled or one of them stops;
/// says which one stopped and why, and stops the other.
pub async fn serve_and_settle(
    app: Application,
    settler: crate::settler::Settler,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = tokio::spawn(app.run_until(shutdown.clone().cancelled_owned()));
    let settling = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { settler.run(shutdown).await })
    };
    tokio::pin!(api, settling);
    let result = tokio::select! {
        api_result = &mut api => {
            shutdown.cancel();
            let _ = settling.await;
            match api_result {
                Ok(Ok(())) => { tracing::info!("http server stopped"); Ok(()) }
                Ok(Err(err)) => Err(anyhow::Error::new(err).context("http server failed")),
                Err(join) => Err(anyhow::Error::new(join).context("http server task panicked")),
            }
        }
        settled = &mut settling => {
            shutdown.cancel();
            let _ = api.await;
            match settled {
                Ok(()) => { tracing::info!("settler stopped"); Ok(()) }
                Err(join) => Err(anyhow::Error::new(join).context("settler task panicked")),
            }
        }
    };
    result
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
