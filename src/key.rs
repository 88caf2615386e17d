//! Data keys: the backend-neutral names of the values that [`Client::get`],
//! [`Client::put`] and guarded writes touch, and their mapping onto each backend.
//!
//! [`Client::get`]: crate::Client::get
//! [`Client::put`]: crate::Client::put

use crate::config::{BackendKind, Config};
use crate::error::{Error, Result};
use crate::guard::WriteOp;
use crate::name::segment_problem;

/// The longest accepted data key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

/// The lock prefix the memory backend uses inside its store.
pub(crate) const MEMORY_LOCK_ROOT: &str = "fairlock";
/// The etcd key prefix used when the config names none.
pub(crate) const ETCD_DEFAULT_PREFIX: &str = "fairlock";
/// The ZooKeeper base path used when the config names none.
pub(crate) const ZOOKEEPER_DEFAULT_PATH: &str = "/fairlock";

/// Checks that `key` can name a data value on every backend.
///
/// A data key is a path of `/`-separated segments, relative to the root of the backend's
/// key space: `shop/stock` is the etcd key `shop/stock`, the ZooKeeper node
/// `/shop/stock` (parents are created as needed) and the memory store's key `shop/stock`.
/// So the same program reads and writes the same data on every backend. Each segment
/// follows the rules of [`validate_name`](crate::validate_name) (not empty, not `.` or
/// `..`, no control characters, nothing ZooKeeper refuses); no leading or trailing `/`;
/// at most [`MAX_KEY_LEN`] bytes.
///
/// A client also refuses keys inside its lock prefix (the prefix itself or below it, where
/// the lock queues live): see [`Client::get`](crate::Client::get).
///
/// # Errors
/// [`Error::InvalidKey`] saying which rule the key breaks.
///
/// ```
/// assert!(fairlock::validate_key("shop/stock").is_ok());
/// assert!(fairlock::validate_key("/shop/stock").is_err());
/// assert!(fairlock::validate_key("shop//stock").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("longer than 4096 bytes")
    } else if key.starts_with('/') {
        Some("starts with `/` (keys are relative to the backend's root)")
    } else if key.ends_with('/') {
        Some("ends with `/`")
    } else {
        key.split('/').find_map(segment_problem)
    };
    match reason {
        Some(reason) => Err(Error::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// How one client maps data keys onto its backend.
#[derive(Clone, Debug)]
pub(crate) struct KeyMap {
    /// The lock prefix in data-key form (no leading `/` on ZooKeeper): data keys may not be
    /// in it.
    lock_root: String,
    /// ZooKeeper paths are absolute: a `/` goes in front.
    absolute: bool,
}

impl KeyMap {
    pub(crate) fn new(config: &Config) -> Self {
        let (lock_root, absolute) = match config.backend {
            BackendKind::Etcd => (config.prefix_or(ETCD_DEFAULT_PREFIX), false),
            BackendKind::Zookeeper => (config.prefix_or(ZOOKEEPER_DEFAULT_PATH), true),
            BackendKind::Memory => (MEMORY_LOCK_ROOT.to_owned(), false),
        };
        let lock_root = match absolute {
            true => lock_root.trim_start_matches('/').to_owned(),
            false => lock_root,
        };
        KeyMap {
            lock_root,
            absolute,
        }
    }

    /// The backend's key or path for the data key `key`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]: see [`validate_key`]; or the key is inside the lock prefix.
    pub(crate) fn path(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        let root = &self.lock_root;
        let inside = key
            .strip_prefix(root.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if inside {
            return Err(Error::InvalidKey {
                key: key.to_owned(),
                reason: "inside the lock prefix, where the lock queues live",
            });
        }
        Ok(if self.absolute {
            format!("/{key}")
        } else {
            key.to_owned()
        })
    }

    /// `ops` with their keys mapped by [`path`](Self::path).
    pub(crate) fn ops(&self, ops: &[WriteOp]) -> Result<Vec<WriteOp>> {
        ops.iter()
            .map(|op| {
                Ok(match op {
                    WriteOp::Put { key, value } => WriteOp::Put {
                        key: self.path(key)?,
                        value: value.clone(),
                    },
                    WriteOp::Delete { key } => WriteOp::Delete {
                        key: self.path(key)?,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(url: &str) -> KeyMap {
        KeyMap::new(&Config::from_url(url).unwrap())
    }

    #[test]
    fn maps_keys_per_backend() {
        assert_eq!(map("etcd://h:1/shop").path("a/b").unwrap(), "a/b");
        assert_eq!(map("zk://h:1/shop").path("a/b").unwrap(), "/a/b");
        assert_eq!(map("memory://x").path("a/b").unwrap(), "a/b");
    }

    #[test]
    fn refuses_keys_inside_the_lock_prefix() {
        for (url, key) in [
            ("etcd://h:1/shop", "shop"),
            ("etcd://h:1/shop", "shop/stock"),
            ("etcd://h:1", "fairlock/x"),
            ("zk://h:1/a/b", "a/b/c"),
            ("zk://h:1", "fairlock"),
            ("memory://x", "fairlock/x"),
        ] {
            assert!(
                matches!(map(url).path(key), Err(Error::InvalidKey { .. })),
                "{url} accepted {key}"
            );
        }
        // Neighbours of the prefix are outside it.
        assert!(map("etcd://h:1/shop").path("shopping/cart").is_ok());
        assert!(map("zk://h:1/a/b").path("a/bc").is_ok());
        assert!(map("zk://h:1/a/b").path("a").is_ok());
    }

    #[test]
    fn refuses_malformed_keys() {
        for key in ["", "/a", "a/", "a//b", "a/./b", "..", "a\0b", "a/\u{E000}"] {
            assert!(validate_key(key).is_err(), "{key:?} accepted");
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(validate_key("shop/stock-2/ünïcode").is_ok());
    }
}
