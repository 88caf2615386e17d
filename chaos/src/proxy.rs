//! A loopback TCP proxy that can be frozen: the nemesis's silent partition of one worker
//! from every cluster member, without touching the servers. (The same idea as
//! tests/common/proxy.rs, which test code cannot share with a binary.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Starts forwarding a new loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, frozen_rx) = watch::channel(false);
        let held = Arc::new(Mutex::new(Vec::new()));
        let (upstream, held2) = (upstream.to_owned(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *frozen_rx.borrow() {
                    held2.lock().unwrap().push(client); // accepted, never answered
                    continue;
                }
                let (upstream, mut frozen_rx, held) =
                    (upstream.clone(), frozen_rx.clone(), held2.clone());
                tokio::spawn(async move {
                    // A dead member: close the client's connection, as a refused connect would.
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = frozen_rx.wait_for(|frozen| *frozen) => {
                            // Silence: keep both sockets open, forward nothing.
                            held.lock().unwrap().extend([client, server]);
                        }
                    }
                });
            }
        });
        Ok(Proxy { addr, frozen, held })
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Stops forwarding: open connections go silent, new ones are accepted and ignored.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again; silenced connections are closed, so clients reconnect.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
        self.held.lock().unwrap().clear();
    }
}
