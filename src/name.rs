//! Lock and election names.

use crate::error::{Error, Result};

/// The longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Checks that `name` can name a lock or an election on every backend.
///
/// A name becomes one segment of an etcd key (`PREFIX/NAME/…`) or of a ZooKeeper path
/// (`/PATH/NAME/…`), so it must be a single, ordinary path segment:
/// 1 to [`MAX_NAME_LEN`] bytes; no `/` (nested names would share etcd key prefixes and
/// so each other's queues); not `.` or `..`; no control characters (NUL included); none of
/// the characters ZooKeeper refuses in paths (U+D800–U+F8FF, U+FFF0–U+FFFF).
///
/// # Errors
/// [`Error::InvalidName`] saying which rule the name breaks.
///
/// ```
/// assert!(fairlock::validate_name("nightly-report").is_ok());
/// assert!(fairlock::validate_name("a/../b").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.contains('/') {
        Some("contains `/`")
    } else {
        segment_problem(name)
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What makes `segment` unusable as one segment of an etcd key or ZooKeeper path, if
/// anything (`/` aside).
pub(crate) fn segment_problem(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        Some("empty")
    } else if segment.len() > MAX_NAME_LEN {
        Some("longer than 256 bytes")
    } else if segment == "." || segment == ".." {
        Some("`.` and `..` are not names")
    } else if segment.chars().any(char::is_control) {
        Some("contains a control character")
    } else if segment
        .chars()
        .any(|c| ('\u{E000}'..='\u{F8FF}').contains(&c) || ('\u{FFF0}'..='\u{FFFF}').contains(&c))
    {
        Some("contains a character ZooKeeper refuses")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "a",
            "stock-42",
            "job.nightly",
            "Ünïcode name",
            &"x".repeat(256),
        ] {
            validate_name(name).unwrap();
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "x".repeat(257);
        for name in [
            "", ".", "..", "a/b", "a/../b", "/a", "nul\0", "tab\t", "\u{E000}", &long,
        ] {
            assert!(
                matches!(validate_name(name), Err(Error::InvalidName { .. })),
                "{name:?} was accepted"
            );
        }
    }
}
