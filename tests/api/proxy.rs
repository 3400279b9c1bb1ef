//! A TCP proxy a test can cut, freeze and restore: an outage of one server for one test, while
//! every other test keeps using the same server directly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    frozen: watch::Sender<bool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

/// Copies `from` → `to`, holding each chunk for `delay`, and standing still (neither reading nor
/// writing, the sockets left open) while `frozen` says so — like a server stopped with SIGSTOP.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: Duration,
    mut frozen: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let _ = frozen.wait_for(|f| !*f).await;
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let _ = frozen.wait_for(|f| !*f).await;
        to.write_all(&buffer[..n]).await?;
    }
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_with_delay(upstream, Duration::ZERO).await
    }

    /// A proxy that holds every chunk the server sends for `delay`, like a slow network path.
    pub async fn start_with_delay(upstream: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let (frozen, _) = watch::channel(false);
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (up, links, frozen) = (up.clone(), links.clone(), frozen.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let frozen = frozen.subscribe();
                    let link = tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (client_read, client_write) = client.split();
                        let (server_read, server_write) = server.split();
                        let _ = tokio::join!(
                            pump(client_read, server_write, Duration::ZERO, frozen.clone()),
                            pump(server_read, client_write, delay, frozen),
                        );
                    });
                    links.lock().expect("links").push(link);
                }
            })
        };
        Self {
            addr,
            up,
            frozen,
            links,
            acceptor,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Stops forwarding in both directions, connections left open: a frozen server.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again: the frozen server woke up and answers everything it was sent.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

/// A proxy in front of the test's Postgres, and a pool of at most four connections that reaches
/// Postgres only through it (waiting at most `acquire_timeout` for one).
pub async fn postgres_behind_proxy(
    pool: &sqlx::PgPool,
    acquire_timeout: Duration,
) -> (Proxy, sqlx::PgPool) {
    let options = pool.connect_options();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let upstream = tokio::net::lookup_host(upstream)
        .await
        .expect("resolve")
        .next()
        .expect("address");
    let proxy = Proxy::start(upstream).await;
    let through_proxy = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with((*options).clone().host("127.0.0.1").port(proxy.addr.port()));
    (proxy, through_proxy)
}
