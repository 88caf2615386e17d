//! Queue node names: Curator's protected names for our own nodes, and the contenders of the
//! Java (Curator) and Python (kazoo) peers recognised by their sequence numbers.

use crate::client::QueueKind;

/// The marker Curator's InterProcessMutex puts before the sequence number.
const CURATOR_LOCK: &str = "lock-";
/// The marker Curator's LeaderLatch puts before the sequence number.
const CURATOR_LATCH: &str = "latch-";
/// The markers kazoo's Lock and ReadLock put before the sequence number.
const KAZOO_LOCKS: [&str; 2] = ["__lock__", "__rlock__"];

/// Curator's marker for the nodes of `kind`.
fn curator_marker(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Lock => CURATOR_LOCK,
        QueueKind::Election => CURATOR_LATCH,
    }
}

/// The protected prefix of a new node: `_c_<uuid>-lock-` (or `-latch-` for elections),
/// exactly as Curator names its nodes, so Curator counts ours and, after a connection loss
/// during create, the uuid finds the node again.
pub(crate) fn protected_prefix(uuid: &uuid::Uuid, kind: QueueKind) -> String {
    format!("_c_{}-{}", uuid.hyphenated(), curator_marker(kind))
}

/// The part of a protected name that identifies one attempt: `_c_<uuid>-`.
pub(crate) fn attempt_marker(prefix: &str) -> &str {
    let marker = [CURATOR_LOCK, CURATOR_LATCH]
        .into_iter()
        .find_map(|m| prefix.strip_suffix(m));
    marker.unwrap_or(prefix)
}

/// The sequence number of a contender of `kind`, or `None` for other children. Lock
/// contenders are named by Curator (`…lock-<seq>`) or kazoo (`…__lock__<seq>`); election
/// candidates by Curator's LeaderLatch (`…latch-<seq>`). The number is parsed as signed:
/// ZooKeeper prints sequences past 2³¹−1 as negative.
pub(crate) fn sequence(child: &str, kind: QueueKind) -> Option<i64> {
    let after = |marker: &str| child.rfind(marker).map(|i| &child[i + marker.len()..]);
    let digits = match kind {
        // kazoo first: "__lock__" ends in "lock__", never in "lock-".
        QueueKind::Lock => KAZOO_LOCKS
            .iter()
            .find_map(|marker| after(marker))
            .or_else(|| after(CURATOR_LOCK))?,
        QueueKind::Election => after(CURATOR_LATCH)?,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    digits.parse::<i32>().ok().map(i64::from)
}

/// The contenders of `kind` among `children`, sorted by sequence number.
pub(crate) fn contenders(children: &[String], kind: QueueKind) -> Vec<(i64, &str)> {
    let mut found: Vec<(i64, &str)> = children
        .iter()
        .filter_map(|c| sequence(c, kind).map(|s| (s, c.as_str())))
        .collect();
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: QueueKind = QueueKind::Lock;
    const ELECTION: QueueKind = QueueKind::Election;

    #[test]
    fn parses_curator_and_kazoo_names() {
        let curator = "_c_0f5a6c1e-3a4b-4c5d-8e9f-001122334455-lock-0000000042";
        assert_eq!(sequence(curator, LOCK), Some(42));
        let kazoo = "bf2e9d4f1a2b4c3d8e7f6a5b4c3d2e1f__lock__0000000007";
        assert_eq!(sequence(kazoo, LOCK), Some(7));
        assert_eq!(sequence("x__rlock__0000000008", LOCK), Some(8));
        assert_eq!(
            sequence("_c_abc-lock--2147483648", LOCK),
            Some(-2_147_483_648)
        );
        assert_eq!(sequence("lease-0000000001", LOCK), None);
        assert_eq!(sequence("_c_abc-latch-0000000001", LOCK), None);
        assert_eq!(sequence("lock-", LOCK), None);
        assert_eq!(sequence("lock-12x", LOCK), None);
    }

    #[test]
    fn parses_leader_latch_names() {
        assert_eq!(sequence("_c_abc-latch-0000000003", ELECTION), Some(3));
        assert_eq!(sequence("_c_abc-lock-0000000003", ELECTION), None);
        assert_eq!(sequence("x__lock__0000000003", ELECTION), None);
    }

    #[test]
    fn sorts_mixed_contenders_by_sequence() {
        let children: Vec<String> = [
            "b__lock__0000000003",
            "_c_a-lock-0000000001",
            "other",
            "_c_d-latch-0000000004",
            "_c_c-lock-0000000002",
        ]
        .map(String::from)
        .to_vec();
        let order: Vec<i64> = contenders(&children, LOCK)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(order, [1, 2, 3]);
        let order: Vec<i64> = contenders(&children, ELECTION)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(order, [4]);
    }

    #[test]
    fn protected_names_match_curator() {
        let uuid = uuid::Uuid::nil();
        let prefix = protected_prefix(&uuid, LOCK);
        assert_eq!(prefix, "_c_00000000-0000-0000-0000-000000000000-lock-");
        assert_eq!(
            attempt_marker(&prefix),
            "_c_00000000-0000-0000-0000-000000000000-"
        );
        assert_eq!(sequence(&format!("{prefix}0000000009"), LOCK), Some(9));
        let latch = protected_prefix(&uuid, ELECTION);
        assert_eq!(latch, "_c_00000000-0000-0000-0000-000000000000-latch-");
        assert_eq!(attempt_marker(&latch), attempt_marker(&prefix));
    }
}
