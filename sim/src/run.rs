//! One run: the server, the actors and the nemesis on a paused clock, then the end checks.
//!
//! 1. Fault phase: workers operate while the nemesis injects faults; every step is checked
//!    (`check.rs`).
//! 2. Faults stop, links heal. Every worker finishes its operation, then must acquire every
//!    name within the liveness bound (`actors.rs`); a worker still busy past the bound is
//!    stuck.
//! 3. Quiet: once crashed sessions have expired and background removals had their time, no
//!    queue entry may remain (cancelled or timed-out acquisitions leave nothing).
//! 4. Clients close: no key of theirs and no lease may remain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fairlock::sim::SimEtcd;
use fairlock::{BackendKind, Config};
use tokio::time::Instant;

use crate::actors::{self, Group, Shared};
use crate::check::Checker;
use crate::plan::{Plan, PREFIX};
use crate::trace::Trace;
use crate::{Options, Outcome};

pub async fn simulate(seed: u64, options: &Options) -> Outcome {
    fairlock::sim::install_clock();
    let started = Instant::now();
    let plan = Plan::draw(seed);
    let description = plan.describe();
    let etcd = SimEtcd::start(seed);
    etcd.set_tracing(options.trace);
    let mut trace = Trace::new(options.trace);
    trace.event("plan", || description.clone());
    let checker = Arc::new(Mutex::new(Checker::new(trace, PREFIX, plan.told_within())));
    let observer = checker.clone();
    etcd.observe(move |view, observed| {
        observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(view, observed)
    });
    let mut failed = checker.lock().unwrap_or_else(|e| e.into_inner()).failed();
    let config = Config::new(BackendKind::Etcd)
        .with_prefix(PREFIX)
        .with_ttl(Duration::from_secs(plan.ttl))
        .with_request_timeout(plan.request_timeout)
        .with_connect_timeout(plan.request_timeout);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        etcd: etcd.clone(),
        checker: checker.clone(),
        config,
        stopping,
        doing: Mutex::new(BTreeMap::new()),
        go_leases: Mutex::new(Vec::new()),
        plan,
    });
    let phases = phases(&shared, stop);
    tokio::select! {
        biased;
        _ = failed.wait_for(|f| *f) => {}
        () = phases => {}
    }
    let checker = checker.lock().unwrap_or_else(|e| e.into_inner());
    Outcome {
        seed,
        plan: description,
        violation: checker.violation().map(str::to_owned),
        digest: checker.trace.digest(),
        trace: if options.trace {
            checker.trace.tail(options.trace_lines)
        } else {
            String::new()
        },
        acquisitions: checker.acquisitions,
        writes: checker.applied_writes,
        simulated: started.elapsed(),
    }
}

async fn phases(shared: &Arc<Shared>, stop: tokio::sync::watch::Sender<bool>) {
    let plan = &shared.plan;
    let mut groups = Vec::new();
    let mut workers = Vec::new();
    let mut stream = 100;
    for (i, &tasks) in plan.clients.iter().enumerate() {
        let conn = shared.etcd.connect();
        conn.set_faults(plan.links[i]);
        let group = Arc::new(Group::new(conn, format!("c{i}")));
        for t in 0..tasks {
            stream += 1;
            let who = format!("c{i}.{t}");
            workers.push(tokio::spawn(actors::worker(
                shared.clone(),
                group.clone(),
                who,
                stream,
            )));
        }
        groups.push(group);
    }
    for p in 0..plan.go_peers {
        stream += 1;
        let conn = shared.etcd.connect();
        workers.push(tokio::spawn(actors::go_peer(
            shared.clone(),
            conn,
            format!("go{p}"),
            stream,
        )));
    }
    let links = groups.iter().map(|g| g.conn.clone()).collect();
    crate::nemesis::nemesis(shared.clone(), links).await;
    let _ = stop.send(true);

    // Liveness: every worker ends (its last operation, then a lock of every name) in time.
    let names = plan.locks.len() as u32 + 1;
    let bound = plan.max_freeze + plan.liveness_bound() * (names + 1);
    let all = futures::future::join_all(workers);
    if tokio::time::timeout(bound, all).await.is_err() {
        let doing = shared
            .doing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stuck: Vec<String> = doing
            .iter()
            .filter(|(_, what)| *what != "done")
            .map(|(who, what)| format!("{who}: {what}"))
            .collect();
        shared.check(|c| {
            c.violate(format!(
                "still busy {bound:?} after the faults stopped: {}",
                stuck.join("; ")
            ))
        });
        return;
    }

    // Quiet: nothing may remain in the queues.
    tokio::time::sleep(
        Duration::from_secs(plan.ttl) + 2 * plan.request_timeout + Duration::from_secs(3),
    )
    .await;
    let left = entries(shared, true);
    if !left.is_empty() {
        shared.check(|c| c.violate(format!("queue entries left behind: {}", left.join(", "))));
        return;
    }

    // Closed: no key and no lease of theirs.
    for group in &groups {
        if let Err(e) = group.close().await {
            shared.check(|c| c.trace.event("run", || format!("close failed: {e}")));
        }
    }
    tokio::time::sleep(Duration::from_secs(plan.ttl) + Duration::from_secs(2)).await;
    let left = entries(shared, false);
    let leases = shared.etcd.view(|v| v.leases());
    if !left.is_empty() || !leases.is_empty() {
        shared.check(|c| {
            c.violate(format!(
                "after every client closed: keys {left:?}, leases {leases:x?}"
            ))
        });
    }
    shared.check(|c| c.trace.event("run", || "all checks passed".into()));
}

/// The keys under the lock prefix: queue entries only, or every key (withdrawal markers
/// too).
fn entries(shared: &Shared, queue_only: bool) -> Vec<String> {
    let prefix = format!("{PREFIX}/");
    shared.etcd.view(|v| {
        v.keys()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()) && !(queue_only && k.contains(&0)))
            .map(|(k, info)| {
                format!(
                    "{} (lease {:x})",
                    String::from_utf8_lossy(k).replace('\0', "␀"),
                    info.lease
                )
            })
            .collect()
    })
}
