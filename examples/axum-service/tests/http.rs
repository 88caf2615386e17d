//! Two instances of the service over real HTTP, on the real etcd and ZooKeeper: one ready
//! and one not; the leader stopped with SIGTERM resigns and the other becomes ready;
//! `/metrics` shows the leader gauge and the acquisitions.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(20);

struct Instance {
    child: Child,
    base: String,
}

impl Instance {
    /// Starts the service and waits for its `listening on ADDR` line.
    fn start(url: &str, id: &str) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_axum-service"))
            .args([url, id, "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the service");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().expect("service output").unwrap();
        let addr = line
            .rsplit_once("listening on ")
            .map(|(_, addr)| addr.to_owned())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        // Keep draining its output, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Instance {
            child,
            base: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn ready(&self) -> u16 {
        self.get("/ready").await.0
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the service did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually_ready(instance: &Instance, want: u16) {
    let deadline = Instant::now() + SOON;
    while instance.ready().await != want {
        assert!(Instant::now() < deadline, "/ready never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the Prometheus sample whose name and labels start as `series` says.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos:x}", std::process::id())
}

async fn failover(url: &str, backend: &str) {
    let first = Instance::start(url, "first");
    eventually_ready(&first, 200).await;
    let second = Instance::start(url, "second");
    // The second has campaigned (it shows its acquisition in progress) and is not ready.
    let deadline = Instant::now() + SOON;
    loop {
        let (_, metrics) = second.get("/metrics").await;
        if metrics.contains("fairlock_waiting") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second never campaigned:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.ready().await, 503);
    assert_eq!(first.ready().await, 200);
    assert_eq!(first.get("/health").await.0, 200);

    let leader = format!("fairlock_leader{{backend=\"{backend}\",election=\"axum-example\"}}");
    let acquired = format!(
        "fairlock_acquire_total{{backend=\"{backend}\",kind=\"election\",outcome=\"acquired\"}}"
    );
    let (_, metrics) = first.get("/metrics").await;
    assert_eq!(sample(&metrics, &leader), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, &acquired), Some(1.0), "{metrics}");
    let (_, metrics) = second.get("/metrics").await;
    assert_ne!(sample(&metrics, &leader), Some(1.0), "{metrics}");

    let status = first.terminate();
    assert!(
        status.success(),
        "the leader did not stop cleanly: {status}"
    );
    eventually_ready(&second, 200).await;
    let (_, metrics) = second.get("/metrics").await;
    assert_eq!(sample(&metrics, &leader), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, &acquired), Some(1.0), "{metrics}");
    assert!(second.terminate().success());
}

#[tokio::test]
async fn etcd_readiness_follows_leadership() {
    let endpoint = std::env::var("FAIRLOCK_TEST_ETCD").unwrap_or_else(|_| "127.0.0.1:2379".into());
    failover(&format!("etcd://{endpoint}/{}", unique("axum")), "etcd").await;
}

#[tokio::test]
async fn zookeeper_readiness_follows_leadership() {
    let endpoint = std::env::var("FAIRLOCK_TEST_ZK").unwrap_or_else(|_| "127.0.0.1:2181".into());
    failover(&format!("zk://{endpoint}/{}", unique("axum")), "zookeeper").await;
}
