//! The checker: reads every log of one backend's run and decides.
//!
//! Safety (must hold under every fault):
//! - the final counter equals the acknowledged writes (plus at most the writes whose
//!   outcome was unknown, or that were in flight when their worker was killed);
//! - acknowledged writes, in the order of the values they wrote, carry strictly increasing
//!   fencing tokens, and no value was written twice (a lost update);
//! - no write was acknowledged that was sent after its guard's `lost()` fired;
//! - no two holds with acknowledged writes overlap. A hold whose write was acknowledged
//!   certainly held the lock from the moment `acquire` returned until the write was sent
//!   (its entry existed at the head all that time, since an entry never comes back and
//!   nobody queues ahead of an existing one), so these intervals of two such holds must be
//!   disjoint; all processes share one wall clock;
//! - no queue entry is left once every session has ended;
//! - no hang: every worker acquires, and every client completes an attempt, in the calm
//!   period after the last fault; every worker exits within 30 s of being told to stop;
//! - no panic.
//!
//! Fail-over targets: kill -9 of the leader or of a follower: 0 sessions lost, 0 errors
//! from lock/try_lock/lock_timeout/release/guarded_write/get, hand-offs resume within the
//! take-over target (3 s); the same for the workers not paused in the combined fault;
//! under a partition of a holder, its `lost()` fires before the next holder acquires.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::event::{read_all, Event};
use crate::run::{Phase, RunInfo};

/// One verdict.
#[derive(Serialize, Clone, Debug)]
pub struct Verdict {
    /// `safety` or `target`.
    pub class: &'static str,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What one fault did.
#[derive(Serialize, Clone, Debug, Default)]
pub struct PhaseStats {
    pub kind: String,
    pub note: String,
    /// The hit worker held the lock when the fault began (worker faults).
    pub held_at_fault: Option<bool>,
    /// Errors returned to the workers not hit by the fault, by operation and kind.
    pub errors: BTreeMap<String, usize>,
    /// Sessions lost (session_lost events) among workers not hit by the fault.
    pub sessions_lost: usize,
    /// Holds whose lost() fired among workers not hit.
    pub holds_lost: usize,
    /// Longest time from a release to the next acquisition in the window (ms).
    pub max_handoff_ms: Option<u64>,
    /// Longest time without any acquisition in the window, from the fault on (ms).
    pub unavailable_ms: u64,
    /// From the fault to the first acquisition by a worker not hit (ms).
    pub takeover_ms: Option<u64>,
    /// From the fault to the hit holder's lost() (ms).
    pub lost_after_ms: Option<u64>,
    /// Next holder's acquisition minus the hit holder's lost() (ms; > 0: lost() came first).
    pub lost_margin_ms: Option<i64>,
    /// Acquisitions in the window.
    pub acquisitions: usize,
    /// The hit holder had not sent its release when the next holder acquired.
    pub in_section_at_next: Option<bool>,
}

/// The outcome of one backend's run.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Summary {
    pub backend: String,
    pub ttl_ms: u64,
    pub workers: u32,
    pub clients: u32,
    pub duration_ms: u64,
    pub down_ms: u64,
    pub recover_ms: u64,
    pub label: String,
    pub seconds: f64,
    pub counts: BTreeMap<String, u64>,
    pub counter: Option<u64>,
    pub baseline_handoff_p50_ms: Option<u64>,
    pub baseline_handoff_max_ms: Option<u64>,
    pub verdicts: Vec<Verdict>,
    pub phases: Vec<PhaseStats>,
}

impl Summary {
    pub fn failed(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| !v.ok)
    }
}

#[derive(Default, Debug, Clone)]
struct Hold {
    w: u32,
    g: u32,
    c: u32,
    acquired: u64,
    token: u64,
    write_sent: Option<u64>,
    /// The write's outcome was logged (acknowledged, refused or unknown).
    write_answered: bool,
    ack: Option<(u64, u64)>,
    lost: Option<(u64, String)>,
    release_sent: Option<u64>,
    /// release() returned Ok.
    released: bool,
}

const REQUEST_OPS: [&str; 6] = [
    "lock",
    "try_lock",
    "lock_timeout",
    "release",
    "guarded_write",
    "get",
];

fn ms(us: u64) -> u64 {
    us / 1000
}

pub fn check_dir(dir: &Path) -> Result<Summary, String> {
    let info: RunInfo = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run.json")).map_err(|e| format!("run.json: {e}"))?,
    )
    .map_err(|e| format!("run.json: {e}"))?;
    let phases: Vec<Phase> = std::fs::read_to_string(dir.join("nemesis.jsonl"))
        .map_err(|e| format!("nemesis.jsonl: {e}"))?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("worker-") && name.ends_with(".jsonl") {
            events.extend(read_all(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    events.sort_by_key(|e| e.t);
    Ok(check(&info, &phases, &events))
}

pub fn check(info: &RunInfo, phases: &[Phase], events: &[Event]) -> Summary {
    let mut s = Summary {
        backend: info.backend.clone(),
        ttl_ms: info.ttl_ms,
        workers: info.workers,
        clients: info.clients,
        duration_ms: info.duration_ms,
        down_ms: info.down_ms,
        recover_ms: info.recover_ms,
        label: info.label.clone(),
        counter: info.counter,
        seconds: events
            .last()
            .zip(events.first())
            .map(|(l, f)| (l.t - f.t) as f64 / 1e6)
            .unwrap_or(0.0),
        ..Summary::default()
    };
    for e in events {
        *s.counts.entry(e.ev.clone()).or_default() += 1;
    }
    let mut verdict = |class: &'static str, name: &str, ok: bool, detail: String| {
        s.verdicts.push(Verdict {
            class,
            name: name.to_owned(),
            ok,
            detail,
        })
    };

    // Holds, keyed by (worker, generation, client, hold).
    let mut holds: HashMap<(u32, u32, u32, u64), Hold> = HashMap::new();
    for e in events {
        let Some(h) = e.h else { continue };
        let k = (e.w, e.g, e.c, h);
        match e.ev.as_str() {
            "acquired" => {
                holds.insert(
                    k,
                    Hold {
                        w: e.w,
                        g: e.g,
                        c: e.c,
                        acquired: e.t,
                        token: e.token.unwrap_or(0),
                        ..Hold::default()
                    },
                );
            }
            "write_sent" => {
                if let Some(hold) = holds.get_mut(&k) {
                    hold.write_sent = Some(e.t);
                }
            }
            "write_ack" => {
                if let Some(hold) = holds.get_mut(&k) {
                    hold.ack = Some((e.t, e.value.unwrap_or(0)));
                    hold.write_answered = true;
                }
            }
            "write_refused" | "write_unknown" => {
                if let Some(hold) = holds.get_mut(&k) {
                    hold.write_answered = true;
                }
            }
            "lost" => {
                if let Some(hold) = holds.get_mut(&k) {
                    hold.lost = Some((e.t, e.kind.clone().unwrap_or_default()));
                }
            }
            "release_sent" => {
                if let Some(hold) = holds.get_mut(&k) {
                    hold.release_sent = Some(e.t);
                }
            }
            "released" => {
                if let Some(hold) = holds.get_mut(&k) {
                    hold.released = true;
                }
            }
            _ => {}
        }
    }
    let mut acked: Vec<&Hold> = holds.values().filter(|h| h.ack.is_some()).collect();
    let n_acked = acked.len() as u64;
    // Writes sent by a worker killed before it logged their outcome: unknown too (the
    // server may have applied them).
    let n_in_flight = holds
        .values()
        .filter(|h| h.write_sent.is_some() && !h.write_answered)
        .count() as u64;
    let n_unknown = *s.counts.get("write_unknown").unwrap_or(&0) + n_in_flight;

    // Counter.
    match info.counter {
        Some(counter) => verdict(
            "safety",
            "final counter == acknowledged writes",
            n_acked <= counter && counter <= n_acked + n_unknown,
            format!(
                "counter {counter}, acknowledged {n_acked}, outcome unknown {n_unknown} \
                 ({n_in_flight} in flight when their worker died)"
            ),
        ),
        None => verdict(
            "safety",
            "final counter == acknowledged writes",
            false,
            "counter not read".into(),
        ),
    }

    // Tokens in write order; no value written twice.
    acked.sort_by_key(|h| h.ack.map(|a| a.1));
    let mut bad = Vec::new();
    for pair in acked.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (va, vb) = (a.ack.unwrap().1, b.ack.unwrap().1);
        if va == vb {
            bad.push(format!(
                "value {va} written twice (tokens {} and {})",
                a.token, b.token
            ));
        } else if b.token <= a.token {
            bad.push(format!(
                "value {va} by token {} then value {vb} by token {}",
                a.token, b.token
            ));
        }
    }
    verdict(
        "safety",
        "tokens of acknowledged writes strictly increase",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{n_acked} writes in order")
        } else {
            format!(
                "{} violations, e.g. {}",
                bad.len(),
                bad[..bad.len().min(3)].join("; ")
            )
        },
    );

    // No acknowledged write sent after lost().
    let late: Vec<String> = acked
        .iter()
        .filter_map(|h| {
            let (lost_t, reason) = h.lost.as_ref()?;
            let sent = h.write_sent?;
            (*lost_t < sent).then(|| {
                format!(
                    "worker {}-{} client {} token {}: lost ({reason}) {} ms before the write was sent",
                    h.w,
                    h.g,
                    h.c,
                    h.token,
                    ms(sent - lost_t)
                )
            })
        })
        .collect();
    verdict(
        "safety",
        "no write acknowledged after lost() fired",
        late.is_empty(),
        if late.is_empty() {
            "none".into()
        } else {
            late[..late.len().min(3)].join("; ")
        },
    );

    // No overlapping certain holds.
    let mut intervals: Vec<(u64, u64, &Hold)> = acked
        .iter()
        .filter_map(|h| Some((h.acquired, h.write_sent?, *h)))
        .collect();
    intervals.sort_by_key(|i| i.0);
    let mut overlaps = Vec::new();
    let mut latest: Option<(u64, &Hold)> = None;
    for (start, end, h) in &intervals {
        if let Some((prev_end, prev)) = latest {
            if *start < prev_end {
                overlaps.push(format!(
                    "token {} (worker {}-{}) held until {} while token {} (worker {}-{}) acquired at {}",
                    prev.token, prev.w, prev.g, prev_end, h.token, h.w, h.g, start
                ));
            }
        }
        if latest.is_none_or(|(e, _)| *end > e) {
            latest = Some((*end, h));
        }
    }
    verdict(
        "safety",
        "no overlapping holds with acknowledged writes",
        overlaps.is_empty(),
        if overlaps.is_empty() {
            format!("{} holds checked", intervals.len())
        } else {
            format!(
                "{} overlaps, e.g. {}",
                overlaps.len(),
                overlaps[..overlaps.len().min(2)].join("; ")
            )
        },
    );

    verdict(
        "safety",
        "no queue entry left once sessions end",
        info.queue_left.is_empty(),
        if info.queue_left.is_empty() {
            "queue empty".into()
        } else {
            info.queue_left.join(", ")
        },
    );

    // Progress in the calm period.
    let mut final_gen: BTreeMap<u32, u32> = BTreeMap::new();
    for e in events {
        let g = final_gen.entry(e.w).or_default();
        *g = (*g).max(e.g);
    }
    let calm: Vec<&Event> = events
        .iter()
        .filter(|e| e.t >= info.calm_start && e.t <= info.calm_end)
        .collect();
    let mut stuck = Vec::new();
    for w in 0..info.workers {
        let g = final_gen.get(&w).copied().unwrap_or(0);
        if !calm
            .iter()
            .any(|e| e.w == w && e.g == g && e.ev == "acquired")
        {
            stuck.push(format!("worker {w}-{g} acquired nothing"));
        }
        for c in 0..info.clients {
            if !calm.iter().any(|e| {
                e.w == w && e.g == g && e.c == c && (e.ev == "acquired" || e.ev == "not_acquired")
            }) {
                stuck.push(format!("worker {w}-{g} client {c} completed no attempt"));
            }
        }
    }
    for (w, g) in &info.hung {
        stuck.push(format!(
            "worker {w}-{g} did not exit within 30 s of the stop"
        ));
    }
    for e in events
        .iter()
        .filter(|e| e.ev == "error" && e.kind.as_deref() == Some("Hang"))
    {
        stuck.push(format!(
            "worker {}-{} client {}: close() hung",
            e.w, e.g, e.c
        ));
    }
    verdict(
        "safety",
        "no hang (progress after the faults, clean exit)",
        stuck.is_empty(),
        if stuck.is_empty() {
            format!(
                "every worker acquired in the last {:.0} s",
                (info.calm_end - info.calm_start) as f64 / 1e6
            )
        } else {
            stuck.join("; ")
        },
    );

    let mut panics: Vec<String> = events
        .iter()
        .filter(|e| e.ev == "panic")
        .map(|e| {
            format!(
                "worker {}-{}: {}",
                e.w,
                e.g,
                e.err.clone().unwrap_or_default()
            )
        })
        .collect();
    panics.extend(info.panics.iter().cloned());
    for (w, g, status, killed) in &info.exits {
        if !killed && !status.contains("exit status: 0") {
            panics.push(format!("worker {w}-{g} ended with {status}"));
        }
    }
    verdict(
        "safety",
        "no panic",
        panics.is_empty(),
        if panics.is_empty() {
            "none".into()
        } else {
            panics[..panics.len().min(3)].join("; ")
        },
    );
    // lost() must not report the holder's own release as a loss.
    let misreported: Vec<&Hold> = holds
        .values()
        .filter(|h| match (&h.lost, h.release_sent) {
            (Some((lost_t, _)), Some(sent)) => h.released && sent <= *lost_t,
            _ => false,
        })
        .collect();
    verdict(
        "signal",
        "lost() never fires for the holder's own release",
        misreported.is_empty(),
        format!(
            "{} of {} releases reported as lost ({})",
            misreported.len(),
            holds.values().filter(|h| h.release_sent.is_some()).count(),
            {
                let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
                for h in &misreported {
                    *reasons
                        .entry(h.lost.as_ref().map_or("", |l| l.1.as_str()))
                        .or_default() += 1;
                }
                reasons
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    );
    if !info.harness_errors.is_empty() {
        verdict(
            "safety",
            "harness ran to completion",
            false,
            info.harness_errors.join("; "),
        );
    }

    // Per fault.
    let acquisitions: Vec<&Event> = events.iter().filter(|e| e.ev == "acquired").collect();
    let next_acquired_after = |t: u64, skip_worker: Option<u32>| {
        acquisitions
            .iter()
            .find(|e| e.t > t && Some(e.w) != skip_worker)
            .map(|e| e.t)
    };
    let handoffs = |from: u64, to: u64| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e.ev == "release_sent" && e.t >= from && e.t <= to)
            .filter_map(|e| next_acquired_after(e.t, None).map(|a| a - e.t))
            .collect()
    };
    let target_ms = info.takeover_target_ms;
    for p in phases {
        let hit = p.worker.map(|(w, _)| w);
        let in_window = |e: &&Event| e.t >= p.t_fault && e.t <= p.t_end && Some(e.w) != hit;
        let mut st = PhaseStats {
            kind: p.kind.clone(),
            note: p.note.clone(),
            ..PhaseStats::default()
        };
        for e in events.iter().filter(in_window) {
            match e.ev.as_str() {
                "error" if REQUEST_OPS.contains(&e.op.as_deref().unwrap_or("")) => {
                    *st.errors
                        .entry(format!(
                            "{} {}",
                            e.op.as_deref().unwrap_or("?"),
                            e.kind.as_deref().unwrap_or("?")
                        ))
                        .or_default() += 1;
                }
                "write_refused" | "write_unknown" => {
                    *st.errors
                        .entry(format!(
                            "guarded_write {}",
                            e.kind.as_deref().unwrap_or("?")
                        ))
                        .or_default() += 1;
                }
                "session_lost" if e.kind.as_deref() != Some("SessionClosed") => {
                    st.sessions_lost += 1
                }
                "lost" => {
                    let own_release = e
                        .h
                        .and_then(|h| holds.get(&(e.w, e.g, e.c, h)))
                        .is_some_and(|h| h.released && h.release_sent.is_some_and(|s| s <= e.t));
                    if !own_release {
                        st.holds_lost += 1;
                    }
                }
                "acquired" => st.acquisitions += 1,
                _ => {}
            }
        }
        st.max_handoff_ms = handoffs(p.t_fault, p.t_end).into_iter().max().map(ms);
        let mut last = p.t_fault;
        let mut gap = 0;
        for e in acquisitions
            .iter()
            .filter(|e| e.t > p.t_fault && e.t <= p.t_end)
        {
            gap = gap.max(e.t - last);
            last = e.t;
        }
        st.unavailable_ms = ms(gap.max(p.t_end - last));
        st.takeover_ms = next_acquired_after(p.t_fault, hit).map(|t| ms(t - p.t_fault));
        if let Some((w, g)) = p.worker {
            let held = holds
                .values()
                .filter(|h| {
                    h.w == w
                        && h.g == g
                        && h.acquired <= p.t_fault
                        && h.release_sent.is_none_or(|t| t > p.t_fault)
                        && h.lost.as_ref().is_none_or(|(t, _)| *t > p.t_fault)
                })
                .max_by_key(|h| h.acquired);
            st.held_at_fault = Some(held.is_some());
            let next = next_acquired_after(p.t_fault, Some(w));
            if let Some(h) = held {
                // Still in its critical section when the next holder came in: it had not
                // started its release by then (one already sent ends the section).
                st.in_section_at_next = Some(
                    h.release_sent
                        .is_none_or(|sent| next.is_none_or(|next| sent > next)),
                );
            }
            if let Some((lost_t, _)) = held.and_then(|h| h.lost.as_ref()) {
                st.lost_after_ms = Some(ms(lost_t - p.t_fault));
                if let Some(next) = next {
                    st.lost_margin_ms = Some((next as i64 - *lost_t as i64) / 1000);
                }
            }
        }
        let errors: usize = st.errors.values().sum();
        let errors_text = if errors == 0 {
            "0 errors".to_owned()
        } else {
            format!(
                "{errors} errors ({})",
                st.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let at = p.kind.clone();
        let when = format!("at +{:.1} s: ", (p.t_fault - info.t_start) as f64 / 1e6);
        match p.kind.as_str() {
            "leader-kill" | "follower-kill" | "pause+leader-kill" => {
                let who = if p.kind == "pause+leader-kill" {
                    " (workers not paused)"
                } else {
                    ""
                };
                verdict(
                    "target",
                    &format!("{at}: 0 errors{who}"),
                    errors == 0,
                    format!("{when}{errors_text}"),
                );
                verdict(
                    "target",
                    &format!("{at}: 0 sessions lost{who}"),
                    st.sessions_lost == 0 && st.holds_lost == 0,
                    format!(
                        "{when}{} sessions lost, {} holds lost",
                        st.sessions_lost, st.holds_lost
                    ),
                );
                if p.kind != "pause+leader-kill" {
                    let ok = st.max_handoff_ms.is_some_and(|m| m <= target_ms)
                        && st.unavailable_ms <= target_ms + 1200;
                    verdict(
                        "target",
                        &format!(
                            "{at}: hand-offs resume within {:.1} s",
                            target_ms as f64 / 1e3
                        ),
                        ok,
                        format!(
                            "{when}longest hand-off {} ms, longest time without acquisition {} ms \
                             (bound: target + 1.2 s, the longest planned work)",
                            st.max_handoff_ms.map_or("none".into(), |m| m.to_string()),
                            st.unavailable_ms
                        ),
                    );
                }
            }
            // Applies when the cut-off holder's lost() fired (it must not be late), or when
            // the holder was still in its critical section as the next one came in (it must
            // have fired). A holder cut off after sending its release, whose lost() never
            // reported a loss, had left its critical section: nothing to check.
            "partition"
                if st.in_section_at_next == Some(true)
                    || (st.held_at_fault == Some(true) && st.lost_after_ms.is_some()) =>
            {
                let ok = st
                    .lost_margin_ms
                    .is_some_and(|m| m >= info.lost_margin_ms as i64);
                verdict(
                    "target",
                    &format!("{at}: lost() fired before the next holder acquired"),
                    ok,
                    when.clone() + &match (st.lost_after_ms, st.lost_margin_ms) {
                        (Some(after), Some(margin)) => format!(
                            "lost() {after} ms after the cut, {margin} ms before the next holder (need >= {} ms)",
                            info.lost_margin_ms
                        ),
                        (Some(after), None) => format!("lost() {after} ms after the cut; no next holder"),
                        _ => "lost() never fired for the cut-off holder".into(),
                    },
                );
            }
            _ => {}
        }
        s.phases.push(st);
    }

    // Hand-offs outside every fault window, for comparison.
    let mut base: Vec<u64> = events
        .iter()
        .filter(|e| e.ev == "release_sent")
        .filter(|e| !phases.iter().any(|p| e.t >= p.t_fault && e.t <= p.t_end))
        .filter(|e| e.t < info.t_stop)
        .filter_map(|e| next_acquired_after(e.t, None).map(|a| a - e.t))
        .collect();
    base.sort_unstable();
    s.baseline_handoff_p50_ms = base.get(base.len() / 2).copied().map(ms);
    s.baseline_handoff_max_ms = base.last().copied().map(ms);
    s
}

/// Plain-text summary for the terminal.
pub fn print(s: &Summary) {
    let c = |k: &str| s.counts.get(k).copied().unwrap_or(0);
    println!(
        "== {}: {} workers x {} clients, TTL {} ms, {:.0} s: {} acquisitions, {} writes acknowledged, \
         {} refused, {} outcome unknown, {} errors, counter {}",
        s.backend,
        s.workers,
        s.clients,
        s.ttl_ms,
        s.seconds,
        c("acquired"),
        c("write_ack"),
        c("write_refused"),
        c("write_unknown"),
        c("error"),
        s.counter.map_or("?".into(), |v| v.to_string())
    );
    for p in &s.phases {
        println!(
            "   {:<18} held {:<5} errors {:>3} sessions lost {:>2} holds lost {:>2} max hand-off {:>6} ms \
             unavailable {:>6} ms take-over {:>6} ms lost() +{} ms margin {} ms",
            p.kind,
            p.held_at_fault.map_or("-".into(), |b| b.to_string()),
            p.errors.values().sum::<usize>(),
            p.sessions_lost,
            p.holds_lost,
            p.max_handoff_ms.map_or("-".into(), |v| v.to_string()),
            p.unavailable_ms,
            p.takeover_ms.map_or("-".into(), |v| v.to_string()),
            p.lost_after_ms.map_or("-".into(), |v| v.to_string()),
            p.lost_margin_ms.map_or("-".into(), |v| v.to_string()),
        );
    }
    for v in &s.verdicts {
        println!(
            "   [{}] {:<6} {}: {}",
            if v.ok { " ok " } else { "FAIL" },
            v.class,
            v.name,
            v.detail
        );
    }
}

#[cfg(test)]
mod tests {
    //! The checker on small made-up histories: a clean one passes, each kind of violation
    //! is caught.
    use super::*;

    const S: u64 = 1_000_000; // one second in µs

    fn ev(t: u64, w: u32, c: u32, name: &str, h: Option<u64>) -> Event {
        Event {
            t,
            w,
            c,
            h,
            ev: name.into(),
            ..Event::default()
        }
    }

    /// A hold: acquired at `t`, write of `value` with `token` sent at t+1 ms, acked at
    /// t+2 ms, released at t+3 ms.
    fn hold(t: u64, w: u32, h: u64, token: u64, value: u64) -> Vec<Event> {
        let mut acquired = ev(t, w, 0, "acquired", Some(h));
        acquired.token = Some(token);
        let mut sent = ev(t + 1000, w, 0, "write_sent", Some(h));
        sent.value = Some(value);
        let mut ack = ev(t + 2000, w, 0, "write_ack", Some(h));
        ack.value = Some(value);
        ack.token = Some(token);
        vec![
            acquired,
            sent,
            ack,
            ev(t + 3000, w, 0, "release_sent", Some(h)),
            ev(t + 3500, w, 0, "released", Some(h)),
        ]
    }

    fn info(counter: u64) -> RunInfo {
        RunInfo {
            backend: "test".into(),
            workers: 2,
            clients: 1,
            ttl_ms: 5000,
            takeover_target_ms: 3000,
            t_start: 0,
            calm_start: 10 * S,
            calm_end: 20 * S,
            t_stop: 20 * S,
            counter: Some(counter),
            ..RunInfo::default()
        }
    }

    /// Progress of both workers in the calm period, writing `after`+1 and `after`+2.
    fn calm(after: u64) -> Vec<Event> {
        let mut events = hold(11 * S, 0, 100, 1000, after + 1);
        events.extend(hold(12 * S, 1, 100, 1001, after + 2));
        events
    }

    /// Checks `events` plus the calm period; `counter` is the final counter value.
    fn run(counter: u64, phases: &[Phase], mut events: Vec<Event>) -> Summary {
        let last = events
            .iter()
            .filter(|e| e.ev == "write_ack")
            .filter_map(|e| e.value)
            .max()
            .unwrap_or(0);
        events.extend(calm(last));
        events.sort_by_key(|e| e.t);
        check(&info(counter), phases, &events)
    }

    fn failed(s: &Summary) -> Vec<String> {
        s.failed().map(|v| v.name.clone()).collect()
    }

    fn clean() -> Vec<Event> {
        let mut events = hold(S, 0, 1, 10, 1);
        events.extend(hold(2 * S, 1, 1, 20, 2));
        events
    }

    #[test]
    fn clean_history_passes() {
        let s = run(4, &[], clean());
        assert!(failed(&s).is_empty(), "{:?}", s.verdicts);
    }

    #[test]
    fn counter_mismatch_is_caught() {
        let s = run(3, &[], clean());
        assert_eq!(failed(&s), ["final counter == acknowledged writes"]);
        // An unknown-outcome write may explain one more increment, not two.
        let mut events = clean();
        events.push(ev(3 * S, 0, 0, "write_unknown", Some(9)));
        assert!(failed(&run(5, &[], events.clone())).is_empty());
        assert!(!failed(&run(6, &[], events)).is_empty());
        // So may a write whose worker was killed after sending it, before its answer.
        let mut events = clean();
        events.push(ev(3 * S, 0, 0, "acquired", Some(9)));
        events.push(ev(3 * S + 10, 0, 0, "write_sent", Some(9)));
        assert!(failed(&run(5, &[], events.clone())).is_empty());
        assert!(!failed(&run(6, &[], events)).is_empty());
    }

    #[test]
    fn stale_token_and_lost_update_are_caught() {
        let mut events = hold(S, 0, 1, 20, 1);
        events.extend(hold(2 * S, 1, 1, 10, 2)); // later write, older token
        let s = run(4, &[], events);
        assert_eq!(
            failed(&s),
            ["tokens of acknowledged writes strictly increase"]
        );

        let mut events = hold(S, 0, 1, 10, 1);
        events.extend(hold(2 * S, 1, 1, 20, 1)); // same value twice: a lost update
        let s = run(3, &[], events);
        assert_eq!(
            failed(&s),
            [
                "final counter == acknowledged writes",
                "tokens of acknowledged writes strictly increase"
            ]
        );
    }

    #[test]
    fn overlapping_holds_are_caught() {
        let mut events = hold(S, 0, 1, 10, 1);
        // Worker 1 acquires before worker 0 has sent its write.
        events.extend(hold(S + 500, 1, 1, 20, 2));
        let s = run(4, &[], events);
        assert_eq!(
            failed(&s),
            ["no overlapping holds with acknowledged writes"]
        );
    }

    #[test]
    fn write_acked_after_lost_is_caught() {
        let mut events = clean();
        let mut lost = ev(S + 500, 0, 0, "lost", Some(1));
        lost.kind = Some("SessionExpired".into());
        events.push(lost);
        let s = run(4, &[], events);
        assert_eq!(failed(&s), ["no write acknowledged after lost() fired"]);
    }

    #[test]
    fn own_release_reported_as_lost_is_caught() {
        let mut events = clean();
        let mut lost = ev(S + 3200, 0, 0, "lost", Some(1));
        lost.kind = Some("Deleted".into());
        events.push(lost);
        let s = run(4, &[], events);
        assert_eq!(
            failed(&s),
            ["lost() never fires for the holder's own release"]
        );
    }

    #[test]
    fn stuck_worker_and_leftover_entry_are_caught() {
        let mut events = clean();
        events.extend(calm(2).into_iter().filter(|e| e.w == 0));
        events.sort_by_key(|e| e.t);
        let mut i = info(3);
        i.queue_left = vec!["k".into()];
        let s = check(&i, &[], &events);
        assert_eq!(
            failed(&s),
            [
                "no queue entry left once sessions end",
                "no hang (progress after the faults, clean exit)"
            ]
        );
    }

    #[test]
    fn member_kill_targets() {
        let phase = Phase {
            kind: "follower-kill".into(),
            t_fault: 3 * S,
            t_heal: 5 * S,
            t_end: 8 * S,
            ..Phase::default()
        };
        // Hand-offs every 500 ms through the fault and on: all targets met.
        let mut events = clean();
        for i in 0..16 {
            events.extend(hold(3 * S + i * S / 2, 1, 10 + i, 30 + i, 3 + i));
        }
        let counter = 20;
        let s = run(counter, std::slice::from_ref(&phase), events.clone());
        assert!(failed(&s).is_empty(), "{:?}", s.verdicts);

        // One error inside the window, one outside: only the inside one counts.
        let mut with_errors = events.clone();
        let mut error = ev(4 * S, 0, 0, "error", None);
        error.op = Some("lock".into());
        error.kind = Some("Backend".into());
        with_errors.push(error.clone());
        error.t = 9 * S;
        with_errors.push(error);
        let s = run(counter, std::slice::from_ref(&phase), with_errors);
        assert_eq!(failed(&s), ["follower-kill: 0 errors"]);
        assert_eq!(s.phases[0].errors.values().sum::<usize>(), 1);

        // A lost session, and a 4 s hand-off.
        let mut slow = clean();
        slow.extend(hold(3 * S, 1, 10, 30, 3));
        slow.extend(hold(7 * S + 3000, 1, 11, 31, 4));
        let mut lost = ev(4 * S, 0, 0, "session_lost", None);
        lost.kind = Some("SessionExpired".into());
        slow.push(lost);
        let s = run(6, &[phase], slow);
        assert_eq!(
            failed(&s),
            [
                "follower-kill: 0 sessions lost",
                "follower-kill: hand-offs resume within 3.0 s"
            ]
        );
    }

    #[test]
    fn partition_lost_before_next_holder() {
        let phase = Phase {
            kind: "partition".into(),
            t_fault: 3 * S,
            t_heal: 8 * S,
            t_end: 9 * S,
            worker: Some((0, 0)),
            ..Phase::default()
        };
        // Worker 0 holds when cut off; worker 1 takes over at +5 s.
        let history = |lost_at: Option<u64>, release_at: Option<u64>| {
            let mut events = clean();
            let mut acquired = ev(3 * S - 10_000, 0, 0, "acquired", Some(2));
            acquired.token = Some(25);
            events.push(acquired);
            if let Some(t) = lost_at {
                let mut lost = ev(t, 0, 0, "lost", Some(2));
                lost.kind = Some("SessionExpired".into());
                events.push(lost);
            }
            if let Some(t) = release_at {
                events.push(ev(t, 0, 0, "release_sent", Some(2)));
            }
            events.extend(hold(8 * S, 1, 2, 30, 3));
            run(5, std::slice::from_ref(&phase), events)
        };
        let name = "partition: lost() fired before the next holder acquired";
        let s = history(Some(7 * S), None);
        assert!(failed(&s).is_empty(), "{:?}", s.verdicts);
        assert_eq!(s.phases[0].lost_margin_ms, Some(1000));
        assert_eq!(failed(&history(Some(8 * S + 1000), None)), [name]);
        assert_eq!(failed(&history(None, None)), [name]);
        // Cut off with its release already sent: its critical section was over...
        let s = history(None, Some(3 * S + 1000));
        assert!(failed(&s).is_empty(), "{:?}", s.verdicts);
        // ... but a lost() that does fire must still come first.
        let s = history(Some(7 * S), Some(3 * S + 1000));
        assert!(failed(&s).is_empty(), "{:?}", s.verdicts);
        assert_eq!(
            failed(&history(Some(8 * S + 1000), Some(3 * S + 1000))),
            [name]
        );
    }
}
