//! The nemesis: faults at random moments of the fault phase, drawn from the seed.
//!
//! Per fairlock client's link: freezes (a partition or a paused process; long ones reset
//! the connection), connection resets, broken watch streams, a watch cancelled by the
//! server, periods of slow or lossy messages. On the server: compaction, a lease revoked
//! from outside (an expiry the client did not see coming), a queue entry deleted from
//! outside.

use std::sync::Arc;
use std::time::Duration;

use fairlock::sim::{Faults, SimConn};
use tokio::time::Instant;

use crate::actors::Shared;
use crate::plan::{self, PREFIX};

fn between(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    low + (high - low).mul_f64(rng.f64())
}

/// Injects faults into `links` (the fairlock clients') until the fault phase ends, then
/// heals every link.
pub async fn nemesis(shared: Arc<Shared>, links: Vec<SimConn>) {
    let plan = &shared.plan;
    let mut rng = plan::rng(plan.seed, 2);
    let end = Instant::now() + plan.fault_phase;
    // Periods of bad links, and when each ends.
    let mut periods: Vec<(Instant, usize)> = Vec::new();
    let say = |what: String| shared.check(|c| c.trace.event("nemesis", || what));
    loop {
        let pause = between(
            &mut rng,
            Duration::from_millis(100),
            Duration::from_millis(2500),
        );
        tokio::time::sleep(pause).await;
        let now = Instant::now();
        periods.retain(|&(until, i)| {
            if until <= now {
                links[i].set_faults(plan.links[i]);
            }
            until > now
        });
        if now >= end {
            break;
        }
        let i = rng.usize(..links.len());
        let link = &links[i];
        match rng.u8(..100) {
            0..=19 => {
                let d = between(&mut rng, Duration::from_millis(100), plan.max_freeze);
                say(format!("freezes conn{} for {d:?}", link.id()));
                link.freeze(d);
            }
            20..=27 => {
                say(format!("resets conn{}", link.id()));
                link.reset();
            }
            28..=42 => {
                say(format!("breaks the watch streams of conn{}", link.id()));
                link.break_watches();
            }
            43..=50 => {
                let cancelled = link.cancel_a_watch(rng.usize(..1000));
                say(format!("cancels a watch of conn{}: {cancelled}", link.id()));
            }
            51..=65 => {
                say("compacts".into());
                shared.etcd.compact();
            }
            66..=72 => {
                let go = shared
                    .go_leases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let leases = shared.etcd.view(|v| {
                    v.leases()
                        .into_iter()
                        .filter(|l| !go.contains(l))
                        .collect::<Vec<_>>()
                });
                if !leases.is_empty() {
                    let lease = leases[rng.usize(..leases.len())];
                    say(format!("revokes lease {lease:x} from outside"));
                    shared.check(|c| c.revoked_from_outside(lease));
                    shared.etcd.revoke(lease);
                }
            }
            73..=79 => {
                let prefix = format!("{PREFIX}/");
                let entries = shared.etcd.view(|v| {
                    v.keys()
                        .filter(|(k, _)| k.starts_with(prefix.as_bytes()) && !k.contains(&0))
                        .map(|(k, info)| (k.to_vec(), info.create_revision))
                        .collect::<Vec<_>>()
                });
                if !entries.is_empty() {
                    let (key, revision) = entries[rng.usize(..entries.len())].clone();
                    say(format!(
                        "deletes {} from outside",
                        String::from_utf8_lossy(&key)
                    ));
                    shared.check(|c| c.deleted_from_outside(&key, revision));
                    shared.etcd.delete(&key);
                }
            }
            80..=89 => {
                let d = between(&mut rng, Duration::from_secs(1), Duration::from_secs(8));
                let mut faults = plan.links[i];
                faults.slow = 0.3;
                faults.slow_latency =
                    between(&mut rng, Duration::from_millis(200), Duration::from_secs(2));
                say(format!("slows conn{} for {d:?} ({faults:?})", link.id()));
                link.set_faults(faults);
                periods.push((now + d, i));
            }
            _ => {
                let d = between(&mut rng, Duration::from_millis(500), Duration::from_secs(5));
                let mut faults = plan.links[i];
                faults.drop = 0.1;
                faults.lose_reply = 0.1;
                faults.hang = 0.02;
                say(format!("makes conn{} lossy for {d:?}", link.id()));
                link.set_faults(faults);
                periods.push((now + d, i));
            }
        }
    }
    for link in &links {
        link.set_faults(Faults::default());
    }
    say("faults stop: every link healthy (freezes thaw by themselves)".into());
}
