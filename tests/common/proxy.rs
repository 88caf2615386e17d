//! A loopback TCP proxy that can be cut silently, to play a network partition between a
//! client and its server without touching the server, and that can delay each direction,
//! to play a slow network.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The delays applied to bytes travelling each way.
#[derive(Clone, Copy, Default)]
struct Delays {
    to_server: Duration,
    to_client: Duration,
}

pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    delays: Arc<Mutex<Delays>>,
    held: Arc<Mutex<Vec<Box<dyn Send>>>>,
}

impl Proxy {
    /// Starts forwarding a new loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let held: Arc<Mutex<Vec<Box<dyn Send>>>> = Arc::new(Mutex::new(Vec::new()));
        let delays = Arc::new(Mutex::new(Delays::default()));
        let (upstream, held2, delays2) = (upstream.to_owned(), held.clone(), delays.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    held2.lock().unwrap().push(Box::new(client)); // accepted, never answered
                    continue;
                }
                let (upstream, cut_rx, held, delays) = (
                    upstream.clone(),
                    cut_rx.clone(),
                    held2.clone(),
                    delays2.clone(),
                );
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let to_server = |d: Delays| d.to_server;
                    let to_client = |d: Delays| d.to_client;
                    tokio::spawn(pipe(
                        client_read,
                        server_write,
                        delays.clone(),
                        to_server,
                        cut_rx.clone(),
                        held.clone(),
                    ));
                    tokio::spawn(pipe(
                        server_read,
                        client_write,
                        delays,
                        to_client,
                        cut_rx,
                        held,
                    ));
                });
            }
        });
        Proxy {
            addr,
            cut,
            delays,
            held,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Stops forwarding: open connections go silent, new ones are accepted and ignored.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again; silenced connections are closed, so clients reconnect.
    pub fn restore(&self) {
        self.cut.send_replace(false);
        self.held.lock().unwrap().clear();
    }

    /// Delays every byte read from now on by `to_server` (client to server) and `to_client`
    /// (server to client) before forwarding it, preserving order: a slow line, not a
    /// narrow one.
    pub fn delay(&self, to_server: Duration, to_client: Duration) {
        *self.delays.lock().unwrap() = Delays {
            to_server,
            to_client,
        };
    }
}

/// Forwards `from` to `to`, each chunk `delay` after it was read, until either side closes
/// or the proxy is cut (then both halves are kept open and silent).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delays: Arc<Mutex<Delays>>,
    delay: fn(Delays) -> Duration,
    mut cut: watch::Receiver<bool>,
    held: Arc<Mutex<Vec<Box<dyn Send>>>>,
) {
    let (chunks, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let due = Instant::now() + delay(*delays.lock().unwrap());
            if chunks.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // Closed by its peer: the writer passes the remaining bytes and the close on.
        drop(chunks);
        std::future::pending::<()>().await
    };
    let mut writer = Box::pin(async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return None;
            }
        }
        let _ = to.shutdown().await;
        Some(to)
    });
    tokio::select! {
        _ = reader => {}
        _ = &mut writer => {}
        _ = cut.wait_for(|cut| *cut) => {
            // Silence: keep the sockets open, forward nothing. (The other direction's pipe
            // keeps the other halves.)
            held.lock().unwrap().push(Box::new(writer));
        }
    }
}
