//! Lock node names: Curator's protected names for our own nodes, and the contenders of the
//! Java (Curator) and Python (kazoo) peers recognised by their sequence numbers.

/// The marker Curator's InterProcessMutex puts before the sequence number.
pub(crate) const CURATOR_LOCK: &str = "lock-";
/// The markers kazoo's Lock and ReadLock put before the sequence number.
const KAZOO_LOCKS: [&str; 2] = ["__lock__", "__rlock__"];

/// The protected prefix of a new node: `_c_<uuid>-lock-`, exactly as Curator names its
/// nodes, so Curator counts ours and, after a connection loss during create, the uuid finds
/// the node again.
pub(crate) fn protected_prefix(uuid: &uuid::Uuid) -> String {
    format!("_c_{}-{CURATOR_LOCK}", uuid.hyphenated())
}

/// The part of a protected name that identifies one attempt: `_c_<uuid>-`.
pub(crate) fn attempt_marker(prefix: &str) -> &str {
    prefix.strip_suffix(CURATOR_LOCK).unwrap_or(prefix)
}

/// The sequence number of a lock contender named by Curator (`…lock-<seq>`) or by kazoo
/// (`…__lock__<seq>`), or `None` for other children. The number is parsed as signed:
/// ZooKeeper prints sequences past 2³¹−1 as negative.
pub(crate) fn sequence(child: &str) -> Option<i64> {
    // kazoo first: "__lock__" also ends in "lock__", never in "lock-".
    let digits = KAZOO_LOCKS
        .iter()
        .find_map(|marker| child.rfind(marker).map(|i| &child[i + marker.len()..]))
        .or_else(|| {
            child
                .rfind(CURATOR_LOCK)
                .map(|i| &child[i + CURATOR_LOCK.len()..])
        })?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    digits.parse::<i32>().ok().map(i64::from)
}

/// The contenders among `children`, sorted by sequence number.
pub(crate) fn contenders(children: &[String]) -> Vec<(i64, &str)> {
    let mut found: Vec<(i64, &str)> = children
        .iter()
        .filter_map(|c| sequence(c).map(|s| (s, c.as_str())))
        .collect();
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curator_and_kazoo_names() {
        let curator = "_c_0f5a6c1e-3a4b-4c5d-8e9f-001122334455-lock-0000000042";
        assert_eq!(sequence(curator), Some(42));
        assert_eq!(
            sequence("bf2e9d4f1a2b4c3d8e7f6a5b4c3d2e1f__lock__0000000007"),
            Some(7)
        );
        assert_eq!(sequence("x__rlock__0000000008"), Some(8));
        assert_eq!(sequence("_c_abc-lock--2147483648"), Some(-2_147_483_648));
        assert_eq!(sequence("lease-0000000001"), None);
        assert_eq!(sequence("_c_abc-latch-0000000001"), None);
        assert_eq!(sequence("lock-"), None);
        assert_eq!(sequence("lock-12x"), None);
    }

    #[test]
    fn sorts_mixed_contenders_by_sequence() {
        let children: Vec<String> = [
            "b__lock__0000000003",
            "_c_a-lock-0000000001",
            "other",
            "_c_c-lock-0000000002",
        ]
        .map(String::from)
        .to_vec();
        let order: Vec<i64> = contenders(&children).iter().map(|(s, _)| *s).collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn protected_names_match_curator() {
        let uuid = uuid::Uuid::nil();
        let prefix = protected_prefix(&uuid);
        assert_eq!(prefix, "_c_00000000-0000-0000-0000-000000000000-lock-");
        assert_eq!(
            attempt_marker(&prefix),
            "_c_00000000-0000-0000-0000-000000000000-"
        );
        assert_eq!(sequence(&format!("{prefix}0000000009")), Some(9));
    }
}
