//! The connection layer: accepting, capping, timing out and draining client connections.
//!
//! `axum::serve` has no connection cap and no header-read or idle timeout, so a few thousand
//! idle sockets from one host could exhaust the file limit and take the gate offline. Here:
//!
//! - at most `max_connections` are open; past that the accept loop waits (new connections stay
//!   in the kernel's listen backlog) until one closes;
//! - a connection must deliver a request's headers within `header_read_timeout`, counted from
//!   its start or from the first byte after an idle spell, else it is closed (slowloris, or a
//!   socket opened and never used);
//! - a kept-alive connection idle for `idle_timeout` between requests is closed.
//!
//! hyper's own header timeout is not used: it starts whenever a connection waits for a request,
//! so it would also close kept-alive connections after the (short) header timeout, below a load
//! balancer's idle timeout. A per-connection watchdog enforces both clocks instead, from the
//! connection's own I/O and its requests in flight.
//!
//! HTTP/1.1 only: load balancers speak it to their backends, and it keeps the surface small.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// File descriptors kept free for everything but client connections: Redis and Postgres pools,
/// the listener, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

impl ServerSettings {
    /// These settings with the connection cap lowered, if need be, to fit the process's
    /// open-file limit: past it `accept` fails and no one is served, while below the cap new
    /// connections merely wait in the backlog until an idle one is closed.
    pub fn within_file_limit(self, open_files: u64) -> Self {
        let room = if open_files > 2 * RESERVED_DESCRIPTORS {
            open_files - RESERVED_DESCRIPTORS
        } else {
            open_files / 2
        };
        let room = usize::try_from(room.max(1)).unwrap_or(usize::MAX);
        if room < self.max_connections {
            tracing::warn!(
                configured = self.max_connections,
                open_file_limit = open_files,
                now = room,
                "FLASHGATE_MAX_CONNECTIONS does not fit the open-file limit; lowered"
            );
        }
        Self {
            max_connections: self.max_connections.min(room),
            ..self
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for the
/// open connections to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(
        settings.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    let epoch = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or a connection reset before accept: back off a
                    // little instead of spinning, and keep serving the connections we have.
                    tracing::warn!(error = %err, "accept failed");
                    metrics::counter!("flashgate_accept_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(epoch));
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let in_flight = activity.request_started();
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await;
                    drop(in_flight);
                    response
                }
            })
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .header_read_timeout(None)
            .serve_connection(io, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            metrics::gauge!("flashgate_connections_open").increment(1.0);
            tokio::select! {
                result = connection => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
                reason = watchdog(&activity, settings) => {
                    tracing::debug!(%peer, reason, "connection closed");
                    metrics::counter!("flashgate_connections_closed_total", "reason" => reason)
                        .increment(1);
                }
            }
            metrics::gauge!("flashgate_connections_open").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What the watchdog needs to know about one connection, in ms since the server started.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight and no byte of a new one.
    idle_since_ms: AtomicU64,
    /// When the current request's first byte arrived (or the connection opened), or `NONE`
    /// while idle between requests.
    head_since_ms: AtomicU64,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new(epoch: Instant) -> Self {
        let now = epoch.elapsed().as_millis() as u64;
        Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now),
            // A new connection owes us a request head: its header clock runs from the start.
            head_since_ms: AtomicU64::new(now),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let now = self.now_ms();
            let _ =
                self.head_since_ms
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }
}

/// A request in flight on a connection; the connection turns idle when the last one is done.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0
                .idle_since_ms
                .store(self.0.now_ms(), Ordering::Release);
        }
    }
}

/// Resolves with the reason when the connection has overstayed a clock.
async fn watchdog(activity: &Activity, settings: ServerSettings) -> &'static str {
    let tick = (settings.header_read_timeout.min(settings.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let header_ms = settings.header_read_timeout.as_millis() as u64;
    let idle_ms = settings.idle_timeout.as_millis() as u64;
    loop {
        tokio::time::sleep(tick).await;
        if activity.in_flight.load(Ordering::Acquire) > 0 {
            continue;
        }
        let now = activity.now_ms();
        let head_since = activity.head_since_ms.load(Ordering::Acquire);
        if head_since != NONE {
            if now.saturating_sub(head_since) >= header_ms {
                return "header_read_timeout";
            }
        } else if now.saturating_sub(activity.idle_since_ms.load(Ordering::Acquire)) >= idle_ms {
            return "idle_timeout";
        }
    }
}

/// A TCP stream that tells its [`Activity`] when bytes arrive.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_file_limit() {
        let settings = ServerSettings::default();
        assert_eq!(
            settings.within_file_limit(1_048_576).max_connections,
            10_000
        );
        assert_eq!(settings.within_file_limit(1_024).max_connections, 768);
        assert_eq!(settings.within_file_limit(256).max_connections, 128);
    }
}
