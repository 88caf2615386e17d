use fairlock::{Client, WriteOp};

#[tokio::main]
async fn main() -> fairlock::Result<()> {
    // etcd://h1:2379,h2:2379/locks  |  zk://h1:2181,h2:2181/locks  |  memory://name:
    // the same program runs unchanged on each.
    let url = std::env::var("FAIRLOCK_URL").unwrap_or_else(|_| "memory://quickstart".into());
    let client = Client::connect(&url).await?;
    client.put("shop/stock", "3").await?; // a data key: the same on every backend

    let stock = client.mutex("stock")?; // Arc<dyn DistributedMutex>
    let guard = stock.lock().await?;
    let left: u64 = match client.get("shop/stock").await? {
        Some(value) => String::from_utf8_lossy(&value).parse().unwrap_or(0),
        None => 0,
    };
    if left > 0 {
        // Applied only while this guard still holds the lock (etcd: a Txn comparing the
        // lock key's create revision; ZooKeeper: a multi-op checking the lock node), so a
        // paused, expired holder cannot oversell.
        let sold = WriteOp::put("shop/stock", (left - 1).to_string());
        guard.guarded_write(&[sold]).await?;
    }
    println!(
        "sold one; {} left (token {})",
        left.saturating_sub(1),
        guard.fencing_token()
    );
    guard.release().await?;
    client.close().await
}
