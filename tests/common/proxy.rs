//! A loopback TCP proxy that can be cut silently, to play a network partition between a
//! client and its server without touching the server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Starts forwarding a new loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let held = Arc::new(Mutex::new(Vec::new()));
        let (upstream, held2) = (upstream.to_owned(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    held2.lock().unwrap().push(client); // accepted, never answered
                    continue;
                }
                let (upstream, mut cut_rx, held) =
                    (upstream.clone(), cut_rx.clone(), held2.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {
                            // Silence: keep both sockets open, forward nothing.
                            held.lock().unwrap().extend([client, server]);
                        }
                    }
                });
            }
        });
        Proxy { addr, cut, held }
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
}
