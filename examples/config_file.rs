//! Choosing the backend from a service's own config file: the `lock` section is a
//! [`fairlock::Config`], so switching from etcd to ZooKeeper (or to `memory` in tests) is
//! an edit to the file, not to the code.
//!
//! ```text
//! cargo run --example config_file -- examples/config/service.json
//! ```

use serde::Deserialize;

#[derive(Deserialize)]
struct ServiceConfig {
    service: Service,
    lock: fairlock::Config,
}

#[derive(Deserialize)]
struct Service {
    name: String,
    batch_size: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/config/service.json".into());
    let config: ServiceConfig = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    println!(
        "{}: locking through {}",
        config.service.name,
        config.lock.to_url()
    );

    let client = fairlock::Client::from_config(&config.lock).await?;
    let batch = client.mutex("nightly-batch")?; // Arc<dyn DistributedMutex>, any backend
    match batch.try_lock().await? {
        Some(guard) => {
            println!(
                "running a batch of {} with fencing token {}",
                config.service.batch_size,
                guard.fencing_token()
            );
            guard.release().await?;
        }
        None => println!("another instance runs the batch"),
    }
    client.close().await?;
    Ok(())
}
