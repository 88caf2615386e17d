//! Queue node names: Curator's protected names for our own nodes (kazoo's for a semaphore's
//! gate), the contenders of the Java (Curator) and Python (kazoo) peers recognised by their
//! sequence numbers, and a semaphore's leases (kazoo's `<uuid hex>`, no sequence number).
//!
//! Sequence numbers wrap: ZooKeeper numbers a sequential node with its parent's child
//! version, a signed 32-bit counter that counts every create and delete of a child and goes
//! from 2³¹−1 to −2³¹. Numbers are therefore compared in serial-number order (RFC 1982,
//! [`precedes`]) wherever the queue is ordered. That order is exact while the live entries
//! of one queue lie fewer than 2³¹ counter steps apart: fewer than 2³¹ live entries, and
//! the oldest of them (the holder) younger than about a billion acquisitions of the same
//! lock (each costs a create and a delete). Curator and kazoo compare the numbers as text,
//! which breaks at the wrap: at that moment, mutual exclusion with them is not assured.

use crate::backend::{QueueKind, Side};

/// The marker Curator's InterProcessMutex puts before the sequence number.
const CURATOR_LOCK: &str = "lock-";
/// The marker Curator's LeaderLatch puts before the sequence number.
const CURATOR_LATCH: &str = "latch-";
/// The markers of Curator's InterProcessReadWriteLock: readers, writers.
const CURATOR_READ: &str = "__READ__";
const CURATOR_WRITE: &str = "__WRIT__";
/// The markers kazoo's Lock (and WriteLock) and ReadLock put before the sequence number.
const KAZOO_LOCK: &str = "__lock__";
const KAZOO_READ: &str = "__rlock__";

/// Every marker of a lock contender, and whether its entries are shared (readers'). No
/// marker is found inside another's name followed by digits, so the order does not matter.
const LOCK_MARKERS: [(&str, bool); 5] = [
    (KAZOO_LOCK, false),
    (KAZOO_READ, true),
    (CURATOR_READ, true),
    (CURATOR_WRITE, false),
    (CURATOR_LOCK, false),
];

/// The protected prefix of a new node of `kind` on `side`, named as the peer that shares
/// such queues names its own nodes, so that the peer counts ours and, after a connection
/// loss during create, the uuid finds the node again:
/// - Curator's: `_c_<uuid>-lock-` (`-latch-` for elections, `-__READ__`, `-__WRIT__` for a
///   read-write lock's sides);
/// - a semaphore's gate entries, kazoo's: `<uuid hex>__lock__`, as the Lock of kazoo's
///   Semaphore names its contenders (and recognises only those: it is given no
///   `extra_lock_patterns`).
pub(crate) fn protected_prefix(uuid: &uuid::Uuid, kind: QueueKind, side: Side) -> String {
    let curator = |marker: &str| format!("_c_{}-{marker}", uuid.hyphenated());
    match (kind, side) {
        (QueueKind::Election, _) => curator(CURATOR_LATCH),
        (QueueKind::Lock, Side::Mutex) => curator(CURATOR_LOCK),
        (QueueKind::Lock, Side::Write) => curator(CURATOR_WRITE),
        (QueueKind::Lock, Side::Read) => curator(CURATOR_READ),
        // A lease is no queue node (it has a name of its own, see `is_lease`): it is
        // named here only for completeness, as the gate's entries are.
        (QueueKind::Lock, Side::Gate | Side::Lease) => format!("{}{KAZOO_LOCK}", uuid.simple()),
    }
}

/// The part of a protected name that identifies one attempt: Curator's `_c_<uuid>-`; for
/// kazoo's names (`<uuid hex>__lock__`, unique by its uuid) the whole prefix.
pub(crate) fn attempt_marker(prefix: &str) -> &str {
    let marker = [CURATOR_LOCK, CURATOR_LATCH, CURATOR_READ, CURATOR_WRITE]
        .into_iter()
        .find_map(|m| prefix.strip_suffix(m));
    marker.unwrap_or(prefix)
}

/// Whether `child` is named as a semaphore's lease: kazoo's `<uuid hex>` (32 lowercase
/// hexadecimal digits, no sequence number), a child of the semaphore's pool.
pub(crate) fn is_lease(child: &str) -> bool {
    child.len() == 32
        && child
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A sequence number after `marker` at the end of `child`. Parsed as signed: ZooKeeper
/// prints sequences past 2³¹−1 as negative.
fn number_after(child: &str, marker: &str) -> Option<i32> {
    let digits = &child[child.rfind(marker)? + marker.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    digits.parse::<i32>().ok()
}

/// The sequence number of a contender of `kind`, and whether it is shared (a reader's),
/// or `None` for other children. Lock contenders are named by Curator (`…lock-<seq>`,
/// `…__READ__<seq>`, `…__WRIT__<seq>`) or kazoo (`…__lock__<seq>`, `…__rlock__<seq>`);
/// election candidates by Curator's LeaderLatch (`…latch-<seq>`).
pub(crate) fn contender(child: &str, kind: QueueKind) -> Option<(i32, bool)> {
    match kind {
        QueueKind::Lock => LOCK_MARKERS
            .iter()
            .find_map(|&(marker, shared)| Some((number_after(child, marker)?, shared))),
        QueueKind::Election => Some((number_after(child, CURATOR_LATCH)?, false)),
    }
}

/// The sequence number of a contender of `kind`; see [`contender`].
pub(crate) fn sequence(child: &str, kind: QueueKind) -> Option<i32> {
    contender(child, kind).map(|(sequence, _)| sequence)
}

/// The sequence numbers of the contenders of `kind` among `children` that an entry on
/// `side` waits for when they are ahead of it: all of them, or for a reader the exclusive
/// ones.
pub(crate) fn blocking<'a>(
    children: &'a [String],
    kind: QueueKind,
    side: Side,
) -> impl Iterator<Item = (i32, &'a str)> + 'a {
    children
        .iter()
        .filter_map(move |c| match contender(c, kind)? {
            (_, true) if side.is_shared() => None,
            (sequence, _) => Some((sequence, c.as_str())),
        })
}

/// Whether sequence number `a` was issued before `b`: `b` lies less than 2³¹ steps after
/// `a` on the wrapping counter (see the module docs for the bound this relies on).
pub(crate) fn precedes(a: i32, b: i32) -> bool {
    b.wrapping_sub(a) > 0
}

/// The contender of `kind` directly ahead of sequence number `own` among `children` that
/// an entry on `side` waits for (see [`blocking`]): the nearest one that [`precedes`] it.
pub(crate) fn predecessor(
    own: i32,
    children: &[String],
    kind: QueueKind,
    side: Side,
) -> Option<&str> {
    // One pass, no sorted copy: many waiters may share one large listing.
    blocking(children, kind, side)
        .filter(|(sequence, _)| precedes(*sequence, own))
        .min_by_key(|(sequence, _)| own.wrapping_sub(*sequence))
        .map(|(_, child)| child)
}

/// The contenders of `kind` among `children`, in queue order (the head first).
pub(crate) fn contenders(children: &[String], kind: QueueKind) -> Vec<(i32, &str)> {
    let mut found: Vec<(i32, &str)> = children
        .iter()
        .filter_map(|c| sequence(c, kind).map(|s| (s, c.as_str())))
        .collect();
    found.sort_unstable();
    // Numerically sorted, the queue may have wrapped: its newest entries first (just past
    // −2³¹), its oldest last (just below 2³¹). Within the bound on live entries, the widest
    // gap between neighbours (the one from the last back to the first counts too) is the
    // one outside the queue: the head follows it. (Rotating keeps the sort a total order;
    // sorting with `precedes` as comparator would not be one.)
    let n = found.len();
    let gap_before = |i: usize| found[i].0.wrapping_sub(found[(i + n - 1) % n].0) as u32;
    if let Some(head) = (0..n).max_by_key(|&i| gap_before(i)) {
        found.rotate_left(head);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: QueueKind = QueueKind::Lock;
    const ELECTION: QueueKind = QueueKind::Election;
    const MUTEX: Side = Side::Mutex;

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
    fn parses_read_write_lock_names_of_both_peers() {
        let reader = "_c_0f5a6c1e-3a4b-4c5d-8e9f-001122334455-__READ__0000000011";
        let writer = "_c_0f5a6c1e-3a4b-4c5d-8e9f-001122334455-__WRIT__0000000012";
        assert_eq!(contender(reader, LOCK), Some((11, true)));
        assert_eq!(contender(writer, LOCK), Some((12, false)));
        assert_eq!(contender("ab__rlock__0000000013", LOCK), Some((13, true)));
        assert_eq!(contender("ab__lock__0000000014", LOCK), Some((14, false)));
        assert_eq!(contender("_c_a-lock-0000000015", LOCK), Some((15, false)));
        assert_eq!(contender(reader, ELECTION), None);
        let uuid = uuid::Uuid::nil();
        let read = protected_prefix(&uuid, LOCK, Side::Read);
        assert!(read.ends_with("-__READ__"), "{read}");
        assert_eq!(
            attempt_marker(&read),
            attempt_marker(&protected_prefix(&uuid, LOCK, Side::Write))
        );
    }

    /// A reader waits for the nearest writer (of either peer) ahead of it, never for a
    /// reader; a writer waits for whatever is directly ahead.
    #[test]
    fn readers_wait_for_the_nearest_writer_only() {
        let children: Vec<String> = [
            "_c_a-__WRIT__0000000001",
            "_c_b-__READ__0000000002",
            "k__lock__0000000003",
            "k__rlock__0000000004",
            "_c_c-__READ__0000000005",
        ]
        .map(String::from)
        .to_vec();
        let read = Side::Read;
        assert_eq!(
            predecessor(5, &children, LOCK, read),
            Some("k__lock__0000000003")
        );
        assert_eq!(
            predecessor(2, &children, LOCK, read),
            Some("_c_a-__WRIT__0000000001")
        );
        assert_eq!(predecessor(1, &children, LOCK, read), None);
        assert_eq!(
            predecessor(5, &children, LOCK, Side::Write),
            Some("k__rlock__0000000004")
        );
        assert_eq!(
            predecessor(3, &children, LOCK, MUTEX),
            Some("_c_b-__READ__0000000002")
        );
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
        let order: Vec<i32> = contenders(&children, LOCK)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(order, [1, 2, 3]);
        let order: Vec<i32> = contenders(&children, ELECTION)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(order, [4]);
    }

    fn lock_children(sequences: &[i32]) -> Vec<String> {
        sequences
            .iter()
            .map(|s| format!("_c_{s}-lock-{s:010}"))
            .collect()
    }

    #[test]
    fn contenders_sort_across_the_wrap() {
        let (max, min) = (i32::MAX, i32::MIN);
        let children = lock_children(&[min + 1, max, min, max - 1]);
        let order: Vec<i32> = contenders(&children, LOCK)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(order, [max - 1, max, min, min + 1]);
        // No wrap: plain order, negative numbers included.
        let children = lock_children(&[3, -5, 0]);
        let order: Vec<i32> = contenders(&children, LOCK)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(order, [-5, 0, 3]);
    }

    #[test]
    fn predecessor_across_the_wrap() {
        let (max, min) = (i32::MAX, i32::MIN);
        let children = lock_children(&[max - 1, max, min, min + 1]);
        let name = |s: i32| format!("_c_{s}-lock-{s:010}");
        // The first number after the wrap waits for the last one before it.
        assert_eq!(
            predecessor(min, &children, LOCK, MUTEX),
            Some(name(max).as_str())
        );
        assert_eq!(
            predecessor(min + 1, &children, LOCK, MUTEX),
            Some(name(min).as_str())
        );
        assert_eq!(
            predecessor(max, &children, LOCK, MUTEX),
            Some(name(max - 1).as_str())
        );
        // The oldest holds: nothing ahead of it, even though later numbers are smaller.
        assert_eq!(predecessor(max - 1, &children, LOCK, MUTEX), None);
        // Away from the wrap, plain order.
        let children = lock_children(&[5, 9, 7]);
        assert_eq!(
            predecessor(9, &children, LOCK, MUTEX),
            Some(name(7).as_str())
        );
        assert_eq!(predecessor(5, &children, LOCK, MUTEX), None);
    }

    #[test]
    fn precedes_in_serial_number_order() {
        assert!(precedes(1, 2) && !precedes(2, 1) && !precedes(2, 2));
        assert!(precedes(-1, 0) && precedes(-7, 5));
        assert!(precedes(i32::MAX, i32::MIN));
        assert!(!precedes(i32::MIN, i32::MAX));
        assert!(precedes(i32::MAX - 10, i32::MIN + 10));
        assert!(precedes(0, i32::MAX) && !precedes(i32::MAX, 0));
    }

    /// For windows of live entries anywhere on the counter (across the wrap, across zero),
    /// listed in any order and named by either peer: the sorted order is the issue order,
    /// and each entry's predecessor is the one before it in that order.
    #[test]
    fn predecessor_agrees_with_queue_order_everywhere() {
        for start in [0, -3, i32::MAX - 4, i32::MAX, i32::MIN, 1 << 30] {
            let issued: Vec<i32> = (0..7).map(|i| start.wrapping_add(i * 2)).collect();
            let names: Vec<String> = issued
                .iter()
                .enumerate()
                .map(|(i, s)| match i % 2 {
                    0 => format!("_c_{i}-lock-{s:010}"),
                    _ => format!("k{i}__lock__{s:010}"),
                })
                .collect();
            let mut listed = names.clone();
            listed.reverse();
            listed.swap(1, 4);
            let order: Vec<i32> = contenders(&listed, LOCK).iter().map(|(s, _)| *s).collect();
            assert_eq!(order, issued, "window from {start}");
            for (i, s) in issued.iter().enumerate() {
                let expected = i.checked_sub(1).map(|p| names[p].as_str());
                assert_eq!(
                    predecessor(*s, &listed, LOCK, MUTEX),
                    expected,
                    "{s} from {start}"
                );
            }
        }
    }

    /// A semaphore's gate entries are named as kazoo's Lock names its contenders; the
    /// whole prefix finds the node again; they are exclusive contenders of either peer's
    /// kind; leases are no contenders.
    #[test]
    fn gate_names_match_kazoo() {
        let uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let prefix = protected_prefix(&uuid, LOCK, Side::Gate);
        assert_eq!(prefix, "0123456789abcdef0123456789abcdef__lock__");
        assert_eq!(attempt_marker(&prefix), prefix);
        let node = format!("{prefix}0000000004");
        assert_eq!(contender(&node, LOCK), Some((4, false)));
        assert!(node.starts_with(attempt_marker(&prefix)));
        let other = protected_prefix(&uuid::Uuid::new_v4(), LOCK, Side::Gate);
        assert!(!node.starts_with(attempt_marker(&other)));
        let lease = uuid.simple().to_string();
        assert!(is_lease(&lease));
        assert_eq!(contender(&lease, LOCK), None);
        assert!(!is_lease(&node) && !is_lease("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_lease("fairlock-holder-lock"));
    }

    #[test]
    fn protected_names_match_curator() {
        let uuid = uuid::Uuid::nil();
        let prefix = protected_prefix(&uuid, LOCK, MUTEX);
        assert_eq!(prefix, "_c_00000000-0000-0000-0000-000000000000-lock-");
        assert_eq!(
            attempt_marker(&prefix),
            "_c_00000000-0000-0000-0000-000000000000-"
        );
        assert_eq!(sequence(&format!("{prefix}0000000009"), LOCK), Some(9));
        let latch = protected_prefix(&uuid, ELECTION, MUTEX);
        assert_eq!(latch, "_c_00000000-0000-0000-0000-000000000000-latch-");
        assert_eq!(attempt_marker(&latch), attempt_marker(&prefix));
    }
}
