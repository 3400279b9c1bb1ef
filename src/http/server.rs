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
//! - a kept-alive connection idle for `idle_timeout` between requests is closed;
//! - at the cap, the connection idle the longest is closed to make room (an idle connection costs
//!   its client a reconnect; a full gate costs everyone else an answer), and only when none is
//!   idle does the accept loop wait;
//! - one client address (IPv4, or IPv6 /64) holds at most `max_connections_per_client`: past it
//!   that client's longest-idle connection is closed, or — none idle — the new one is refused.
//!   Trusted proxies are exempt: the clients behind them are capped per request instead.
//!
//! hyper's own header timeout is not used: it starts whenever a connection waits for a request,
//! so it would also close kept-alive connections after the (short) header timeout, below a load
//! balancer's idle timeout. A per-connection watchdog enforces both clocks instead, from the
//! connection's own I/O and its requests in flight.
//!
//! HTTP/1.1 only: load balancers speak it to their backends, and it keeps the surface small.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

use super::client_addr::{ClientAddr, TrustedProxies};

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub max_connections: usize,
    /// Open connections one client address may hold (0: no cap); trusted proxies are exempt.
    pub max_connections_per_client: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The most a connection buffers of a request head: past it hyper answers 431 and closes. The
/// default (~400 KB) let 1,500 unfinished connections grow the gate by half a gigabyte; every
/// real request head here (a bearer token, an idempotency key, forwarded headers) fits in 8 KiB.
const MAX_HEAD_BYTES: usize = 32 * 1024;

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
            max_connections_per_client: 256,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for the
/// open connections to finish their requests (the caller bounds that wait). Connections from
/// `trusted` peers are exempt from the per-client cap.
pub async fn serve(
    listener: TcpListener,
    app: super::Api,
    settings: ServerSettings,
    trusted: TrustedProxies,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(
        settings.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let connections = Arc::new(Connections::new(
        settings.max_connections_per_client,
        trusted,
    ));
    let graceful = GracefulShutdown::new();
    let epoch = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Full: make room by closing the longest-idle connections, then wait for a slot
                // (at once when one was idle; else until a connection ends).
                connections.evict_longest_idle();
                tokio::select! {
                    () = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break, // the semaphore is never closed
                    },
                }
            }
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
        let activity = Arc::new(Activity::new(epoch));
        let Some(registered) = connections.register(peer.ip(), activity.clone()) else {
            // Dropping the stream closes it: a refused connection holds no descriptor and no
            // task, however many the client opens.
            tracing::debug!(%peer, "connection refused: the client holds its cap");
            metrics::counter!("flashgate_connections_refused_total", "reason" => "per_client")
                .increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            rewritten: None,
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
            .max_buf_size(MAX_HEAD_BYTES)
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
                () = registered.evicted() => {
                    tracing::debug!(%peer, "idle connection closed to make room");
                    metrics::counter!("flashgate_connections_closed_total", "reason" => "evicted_idle")
                        .increment(1);
                }
            }
            metrics::gauge!("flashgate_connections_open").decrement(1.0);
            drop(registered);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Every open connection, by client, so that the longest-idle ones can be closed when a client or
/// the whole server is at its cap.
#[derive(Debug)]
struct Connections {
    per_client_cap: usize,
    trusted: TrustedProxies,
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Open>,
    by_client: HashMap<ClientAddr, Vec<u64>>,
}

#[derive(Debug)]
struct Open {
    /// `None` for a trusted proxy's connection: it is not charged to a client.
    client: Option<ClientAddr>,
    activity: Arc<Activity>,
    evict: Arc<Notify>,
}

/// A connection's place in [`Connections`]; it leaves when dropped.
struct Registered {
    id: u64,
    connections: Arc<Connections>,
    evict: Arc<Notify>,
}

impl Registered {
    /// Resolves when the connection is chosen to make room.
    async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(self.id);
    }
}

/// Of the whole server's connections, at most one in this many is closed per eviction pass: a
/// pass costs a scan of all of them, so it is shared among the accepts that follow.
const EVICTION_BATCH_DIVISOR: usize = 64;

impl Connections {
    fn new(per_client_cap: usize, trusted: TrustedProxies) -> Self {
        Self {
            per_client_cap,
            trusted,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection from `peer`, first closing the client's longest-idle connection
    /// when it holds its cap; `None` when it holds its cap and none of them is idle.
    fn register(
        self: &Arc<Self>,
        peer: std::net::IpAddr,
        activity: Arc<Activity>,
    ) -> Option<Registered> {
        let client = (self.per_client_cap > 0 && !self.trusted.trusts(peer.to_canonical()))
            .then(|| ClientAddr::of(peer));
        let mut registry = self.lock();
        if let Some(client) = client {
            let held = registry.by_client.get(&client).map_or(0, Vec::len);
            if held >= self.per_client_cap {
                let now = activity.now_ms();
                let longest_idle = registry.by_client.get(&client).and_then(|ids| {
                    ids.iter()
                        .filter_map(|id| {
                            Some((*id, registry.open.get(id)?.activity.idle_for(now)?))
                        })
                        .max_by_key(|(id, idle)| (*idle, std::cmp::Reverse(*id)))
                        .map(|(id, _)| id)
                });
                registry.evict(longest_idle?);
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let evict = Arc::new(Notify::new());
        registry.open.insert(
            id,
            Open {
                client,
                activity,
                evict: evict.clone(),
            },
        );
        if let Some(client) = client {
            registry.by_client.entry(client).or_default().push(id);
        }
        Some(Registered {
            id,
            connections: self.clone(),
            evict,
        })
    }

    /// Closes the longest-idle connections of the whole server: one in
    /// [`EVICTION_BATCH_DIVISOR`] of those open, at least one, if any is idle.
    fn evict_longest_idle(&self) {
        let mut registry = self.lock();
        let Some(now) = registry
            .open
            .values()
            .next()
            .map(|open| open.activity.now_ms())
        else {
            return;
        };
        let mut idle: Vec<(u64, u64)> = registry
            .open
            .iter()
            .filter_map(|(id, open)| Some((*id, open.activity.idle_for(now)?)))
            .collect();
        let batch = (registry.open.len() / EVICTION_BATCH_DIVISOR)
            .max(1)
            .min(idle.len());
        if batch == 0 {
            return;
        }
        if batch < idle.len() {
            // Idle the longest first; of equals, the oldest connection.
            idle.select_nth_unstable_by_key(batch - 1, |(id, for_ms)| {
                (std::cmp::Reverse(*for_ms), *id)
            });
        }
        for (id, _) in idle.into_iter().take(batch) {
            registry.evict(id);
        }
    }
}

impl Registry {
    /// Tells connection `id` to close and forgets it now, so the next decision counts without it.
    fn evict(&mut self, id: u64) {
        if let Some(open) = self.remove(id) {
            open.evict.notify_one();
        }
    }

    fn remove(&mut self, id: u64) -> Option<Open> {
        let open = self.open.remove(&id)?;
        if let Some(client) = open.client
            && let Some(ids) = self.by_client.get_mut(&client)
        {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_client.remove(&client);
            }
        }
        Some(open)
    }
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
    /// Whether any byte has arrived: a connection that has sent nothing is idle since it opened.
    spoken: AtomicBool,
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
            spoken: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn bytes_read(&self) {
        if !self.spoken.load(Ordering::Relaxed) {
            self.spoken.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let now = self.now_ms();
            let _ =
                self.head_since_ms
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// How long the connection has been idle at `now`: no request in flight and no byte of a
    /// new one (or nothing at all since it opened). `None` while it is busy.
    fn idle_for(&self, now: u64) -> Option<u64> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head_since = self.head_since_ms.load(Ordering::Acquire);
        if head_since == NONE {
            Some(now.saturating_sub(self.idle_since_ms.load(Ordering::Acquire)))
        } else if !self.spoken.load(Ordering::Relaxed) {
            Some(now.saturating_sub(head_since))
        } else {
            None // a request's head is arriving
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
    /// hyper's answer to a head it could not parse, rewritten, while it is being written.
    rewritten: Option<Rewritten>,
}

/// The answer hyper wrote itself, in the gate's error shape: its bytes, how many are written,
/// and how many of hyper's bytes they stand for.
struct Rewritten {
    bytes: Vec<u8>,
    written: usize,
    stands_for: usize,
}

/// hyper answers a request head it cannot parse (400, 414, 431) itself, with an empty body, and
/// has no hook to change that answer. It is the only answer on this server without a content
/// type, written as one head with nothing after it, and the last on its connection; given such a
/// head, this returns it with the JSON error body every other refusal has.
fn rewrite_parse_refusal(head: &[u8]) -> Option<Vec<u8>> {
    let status: u16 = std::str::from_utf8(head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?)
        .ok()?
        .parse()
        .ok()?;
    let error = super::error::ApiError::refused_before_routing(status)?;
    let text = std::str::from_utf8(head.strip_suffix(b"\r\n\r\n")?).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let fields: Vec<&str> = lines.collect();
    let is = |line: &&str, name: &str| {
        line.split_once(':')
            .is_some_and(|(field, _)| field.trim().eq_ignore_ascii_case(name))
    };
    let empty = fields.iter().any(|line| {
        is(line, "content-length") && line.split_once(':').is_some_and(|(_, v)| v.trim() == "0")
    });
    if !empty || fields.iter().any(|line| is(line, "content-type")) {
        return None;
    }
    let body = error.plain_body();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for line in fields.iter().filter(|line| !is(line, "content-length")) {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    let mut bytes = answer.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes)
}

impl Tracked {
    /// Writes `buf`, rewritten first if it is hyper's answer to a head it could not parse.
    fn write_answer(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.rewritten.is_none()
            && let Some(bytes) = rewrite_parse_refusal(buf)
        {
            self.rewritten = Some(Rewritten {
                bytes,
                written: 0,
                stands_for: buf.len(),
            });
        }
        let Some(rewritten) = self.rewritten.as_mut() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        // hyper offers the same bytes again after `Pending`: they are answered from the rewrite.
        while rewritten.written < rewritten.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &rewritten.bytes[rewritten.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => rewritten.written += n,
                other => return other,
            }
        }
        let stands_for = rewritten.stands_for;
        self.rewritten = None;
        Poll::Ready(Ok(stands_for))
    }
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
        self.write_answer(cx, buf)
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
        // hyper's own answer is a head alone: one slice.
        let mut filled = bufs.iter().filter(|buf| !buf.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next())
            && (self.rewritten.is_some() || only.starts_with(b"HTTP/1.1 4"))
        {
            return self.write_answer(cx, only);
        }
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
    fn only_hypers_own_empty_refusals_are_rewritten() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 16:36:13 GMT\r\n\r\n";
        let rewritten =
            String::from_utf8(rewrite_parse_refusal(hyper).expect("rewritten")).expect("utf-8");
        let (head, body) = rewritten.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("connection: close") && head.contains("date: Sat"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(!head.contains("content-length: 0"));
        assert!(body.contains("\"header_too_large\""), "{body}");
        // The gate's own answers carry a content type (and usually a body): left alone.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_parse_refusal(ours).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert!(rewrite_parse_refusal(with_body).is_none());
        let other_status = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_parse_refusal(other_status).is_none());
    }

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
