//! A TCP proxy a test can cut and restore: an outage of one server for one test, while every
//! other test keeps using the same server directly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
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
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (up, links) = (up.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let link = tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        if delay.is_zero() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                        let (mut client_read, mut client_write) = client.split();
                        let (mut server_read, mut server_write) = server.split();
                        let upstream_leg = tokio::io::copy(&mut client_read, &mut server_write);
                        let delayed_leg = async {
                            let mut buffer = vec![0u8; 64 * 1024];
                            loop {
                                let n = server_read.read(&mut buffer).await?;
                                if n == 0 {
                                    return Ok::<_, std::io::Error>(());
                                }
                                tokio::time::sleep(delay).await;
                                client_write.write_all(&buffer[..n]).await?;
                            }
                        };
                        let _ = tokio::join!(upstream_leg, delayed_leg);
                    });
                    links.lock().expect("links").push(link);
                }
            })
        };
        Self {
            addr,
            up,
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}
