//! An HTTP service that runs its singleton work only while it leads an election, on
//! fairlock's leader loop:
//!
//! - `GET /ready`: 200 while this instance leads, 503 otherwise. Point the load balancer
//!   (or a Kubernetes readiness probe) at it, and only the leader receives traffic.
//! - `GET /health`: 200 unless the leader loop is stuck (work ignoring its cancellation, a
//!   campaign failing for longer than the grace): a liveness probe.
//! - `GET /metrics`: fairlock's metrics (and any of your own) in Prometheus format.
//!
//! SIGTERM or Ctrl-C: stop the work and resign (the next instance leads at once; this one
//! answers 503 on `/ready` from then on), then stop serving.
//!
//! ```text
//! cargo run -p fairlock-example-axum -- etcd://127.0.0.1:2379/services worker-1 127.0.0.1:8081
//! cargo run -p fairlock-example-axum -- zk://127.0.0.1:2181/services worker-2 127.0.0.1:8082
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use fairlock::leader::{LeaderLoop, LeaderStatus, Leading};
use fairlock::{Client, WriteOp};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::signal::unix::{signal, SignalKind};

struct App {
    leader: LeaderStatus,
    prometheus: PrometheusHandle,
}

async fn ready(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    match app.leader.is_leading() {
        true => (StatusCode::OK, "leading\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "standby\n"),
    }
}

async fn health(State(app): State<Arc<App>>) -> (StatusCode, String) {
    let health = app.leader.health();
    match health.is_stuck() {
        true => (StatusCode::INTERNAL_SERVER_ERROR, format!("{health:?}\n")),
        false => (StatusCode::OK, format!("{health:?}\n")),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> String {
    app.prometheus.render()
}

/// The singleton work: a heartbeat written once a second, fenced by the leadership (a
/// deposed leader's late write is refused), until the loop cancels it.
async fn work(leading: Leading, id: String) -> fairlock::Result<()> {
    let key = "fairlock-example/axum-heartbeat";
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = leading.cancelled() => return Ok(()),
            _ = ticks.tick() => {
                let note = format!("{id} term {} token {}", leading.term(), leading.fencing_token());
                leading.guarded_write(&[WriteOp::put(key, note)]).await?;
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "etcd://127.0.0.1:2379/services".into());
    let id = args
        .next()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());

    // Installed first, so that fairlock's metrics from the first campaign on are recorded.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let client = Client::connect(&url).await?;
    let worker = id.clone();
    let (leader, _events) = LeaderLoop::new(&client, "axum-example", id.as_bytes())?
        .spawn(move |leading| work(leading, worker.clone()));
    let app = Arc::new(App {
        leader: leader.status(),
        prometheus,
    });
    let router = Router::new()
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("{id}: listening on {}", listener.local_addr()?);

    let mut terminate = signal(SignalKind::terminate())?;
    let (stopped, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = stopped_rx.await;
        };
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stop the work and resign first: the next instance leads now, not after the
    // session's TTL, while this one keeps answering (503 on /ready) until it stops.
    leader.shutdown().await?;
    println!("{id}: resigned");
    let _ = stopped.send(());
    server.await??;
    client.close().await?;
    Ok(())
}
