//! docs/RELIABILITY.md from the summaries of one `run`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::check::{PhaseStats, Summary};

fn stats(values: &mut [u64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_unstable();
    let median = values[(values.len() - 1) / 2];
    let max = values[values.len() - 1];
    if values.len() == 1 {
        format!("{max}")
    } else {
        format!("{median} / {max}")
    }
}

pub fn markdown(summaries: &[Summary]) -> String {
    let Some(first) = summaries.first() else {
        return "# Reliability: the chaos suite\n\nNo run.\n".into();
    };
    let ms = std::time::Duration::from_millis;
    let mut out = String::new();
    let _ = writeln!(out, "# Reliability: the chaos suite\n");
    let _ = writeln!(
        out,
        "Written by `scripts/chaos` (`fairlock-chaos run`), which starts a 3-node etcd cluster \
         and a 3-node ZooKeeper ensemble on loopback (`scripts/services cluster`), runs {} worker \
         processes with {} clients each against one lock, and injects faults one after another \
         for {} per backend (0 s: each fault once; member down for {:?}, {:?} of quiet after each fault). Each client \
         loops acquire (lock, try_lock or lock_timeout) -> read a counter -> work (2-20 ms, one \
         hold in ten 0.3-1.2 s) -> `guarded_write` counter+1 -> release. Worker 0 reaches the \
         cluster through TCP proxies that the partition fault freezes. How each check is decided \
         is documented in chaos/src/check.rs.\n",
        first.workers,
        first.clients,
        humantime::format_duration(ms(first.duration_ms)),
        ms(first.down_ms),
        ms(first.recover_ms)
    );
    if !first.label.is_empty() {
        let _ = writeln!(out, "Measured: {}.\n", first.label);
    }
    let _ = writeln!(out, "## Verdict\n");
    for s in summaries {
        let failed: Vec<_> = s.failed().collect();
        let count = |class: &str| failed.iter().filter(|v| v.class == class).count();
        let _ = writeln!(
            out,
            "- **{}**: {} checks: {} safety violations, {} missed fail-over targets, {} lost() \
             signal failures.",
            s.backend,
            s.verdicts.len(),
            count("safety"),
            count("target"),
            count("signal")
        );
    }
    for s in summaries {
        let c = |k: &str| s.counts.get(k).copied().unwrap_or(0);
        let _ = writeln!(out, "\n## {}\n", s.backend);
        let _ =
            writeln!(
            out,
            "Session TTL {} ms; {:.0} s of events; {} acquisition attempts, {} acquired, {} not \
             acquired (try_lock / timeout); {} writes acknowledged, {} refused (lock lost), {} \
             outcome unknown; final counter {}; {} errors returned in all (faulted workers \
             included); {} lost() signals; {} sessions lost. Hand-off (release -> next \
             acquisition) outside faults: median {} ms, max {} ms.\n",
            s.ttl_ms,
            s.seconds,
            c("attempt"),
            c("acquired"),
            c("not_acquired"),
            c("write_ack"),
            c("write_refused"),
            c("write_unknown"),
            s.counter.map_or("?".into(), |v| v.to_string()),
            c("error"),
            c("lost"),
            c("session_lost"),
            s.baseline_handoff_p50_ms.map_or("-".into(), |v| v.to_string()),
            s.baseline_handoff_max_ms.map_or("-".into(), |v| v.to_string()),
        );
        let _ = writeln!(
            out,
            "Per fault (times in ms, median / max over the faults of that kind; errors and \
             sessions count only the workers the fault did not hit). *Hit a holder*: the \
             paused, killed or cut-off worker held the lock at that moment. *Max hand-off*: \
             longest time from a release to the next acquisition. *Unavailable*: longest \
             time without any acquisition, from the fault on (for faults on a holder this is \
             close to the session TTL, by design). *Take-over*: from the fault to the \
             first acquisition by another worker. *Fault -> lost()*: when the hit holder's \
             `lost()` fired; *lost() before next holder by*: the next holder's acquisition \
             minus that moment (positive: the old holder knew first; a paused process can only \
             notice after SIGCONT, so it is negative there by nature).\n"
        );
        let _ = writeln!(
            out,
            "| fault | count | hit a holder | errors | sessions lost | holds lost | max hand-off | unavailable | take-over | fault -> lost() | lost() before next holder by |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        let mut by_kind: BTreeMap<&str, Vec<&PhaseStats>> = BTreeMap::new();
        for p in &s.phases {
            by_kind.entry(p.kind.as_str()).or_default().push(p);
        }
        for (kind, ps) in by_kind {
            let errors: usize = ps.iter().map(|p| p.errors.values().sum::<usize>()).sum();
            let held = ps.iter().filter(|p| p.held_at_fault == Some(true)).count();
            let held_text = if ps.iter().any(|p| p.held_at_fault.is_some()) {
                format!("{held}")
            } else {
                "-".into()
            };
            let mut handoff: Vec<u64> = ps.iter().filter_map(|p| p.max_handoff_ms).collect();
            let mut unavailable: Vec<u64> = ps.iter().map(|p| p.unavailable_ms).collect();
            let mut takeover: Vec<u64> = ps.iter().filter_map(|p| p.takeover_ms).collect();
            let mut lost: Vec<u64> = ps.iter().filter_map(|p| p.lost_after_ms).collect();
            let mut margins: Vec<i64> = ps.iter().filter_map(|p| p.lost_margin_ms).collect();
            margins.sort_unstable();
            let margin = match (
                margins.first(),
                margins.get(margins.len().saturating_sub(1) / 2),
            ) {
                (Some(min), Some(median)) => format!("min {min}, median {median}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {kind} | {} | {held_text} | {errors} | {} | {} | {} | {} | {} | {} | {margin} |",
                ps.len(),
                ps.iter().map(|p| p.sessions_lost).sum::<usize>(),
                ps.iter().map(|p| p.holds_lost).sum::<usize>(),
                stats(&mut handoff),
                stats(&mut unavailable),
                stats(&mut takeover),
                stats(&mut lost),
            );
        }
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for p in &s.phases {
            for (k, v) in &p.errors {
                *kinds.entry(format!("{} / {k}", p.kind)).or_default() += v;
            }
        }
        if !kinds.is_empty() {
            let _ = writeln!(out, "\nErrors by fault and operation:\n");
            for (k, v) in kinds {
                let _ = writeln!(out, "- {k}: {v}");
            }
        }
        // One line per check; a check made once per fault shows how often it held.
        let _ = writeln!(out, "\nChecks:\n");
        let mut order: Vec<&str> = Vec::new();
        let mut groups: BTreeMap<&str, Vec<&crate::check::Verdict>> = BTreeMap::new();
        for v in &s.verdicts {
            if !groups.contains_key(v.name.as_str()) {
                order.push(&v.name);
            }
            groups.entry(&v.name).or_default().push(v);
        }
        for name in order {
            let vs = &groups[name];
            let failed: Vec<_> = vs.iter().filter(|v| !v.ok).collect();
            let tally = if vs.len() > 1 {
                format!(" ({} of {} faults)", vs.len() - failed.len(), vs.len())
            } else {
                String::new()
            };
            let (mark, detail) = match failed.first() {
                None => ("ok", vs[0].detail.as_str()),
                Some(v) => ("**FAILED**", v.detail.as_str()),
            };
            let example = if failed.len() > 1 { "e.g. " } else { "" };
            let _ = writeln!(
                out,
                "- {mark} ({}) {name}{tally}: {example}{detail}",
                vs[0].class
            );
        }
    }
    out
}
