//! Who holds or waits for a lock: the value `fairlock lock` stores in its queue entry.
//!
//! The format is one line of space-separated `key=value` fields, in this order:
//! `host=HOSTNAME pid=PID user=USER started=RFC3339` (e.g. `host=web-1 pid=4242
//! user=deploy started=2026-11-28T20:07:50Z`), where `started` is when this fairlock
//! process started (to the second, UTC). Values never contain spaces or `=` (replaced by
//! `_`). Peers ignore entry values, and entries written by others (empty for etcdctl and Go,
//! an address for Curator) are simply not in this form.

use std::time::SystemTime;

/// The fields of a holder value, in their order.
const FIELDS: [&str; 4] = ["host", "pid", "user", "started"];

/// The holder value of this process.
pub fn value(started: SystemTime) -> String {
    let host = nix::unistd::gethostname()
        .map(|host| host.to_string_lossy().into_owned())
        .unwrap_or_default();
    let uid = nix::unistd::getuid();
    let user = match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    };
    let started = humantime::format_rfc3339_seconds(started).to_string();
    let values = [host, std::process::id().to_string(), user, started];
    let fields: Vec<String> = FIELDS
        .iter()
        .zip(values)
        .map(|(key, value)| format!("{key}={}", clean(&value)))
        .collect();
    fields.join(" ")
}

/// `value` usable as a field value: not empty, no whitespace or `=`.
fn clean(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '=' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if cleaned.is_empty() {
        "?".to_owned()
    } else {
        cleaned
    }
}

/// The fields of `value` as a JSON object (`pid` a number) if it is a holder value in this
/// form; else `None`.
pub fn parse(value: &[u8]) -> Option<serde_json::Value> {
    let text = std::str::from_utf8(value).ok()?;
    let pairs: Vec<(&str, &str)> = text
        .split(' ')
        .map(|field| field.split_once('='))
        .collect::<Option<_>>()?;
    if pairs.len() != FIELDS.len() || pairs.iter().zip(FIELDS).any(|((k, _), f)| *k != f) {
        return None;
    }
    let mut object = serde_json::Map::new();
    for (key, value) in pairs {
        let value = match key {
            "pid" => serde_json::Value::from(value.parse::<u64>().ok()?),
            _ => serde_json::Value::from(value),
        };
        object.insert(key.to_owned(), value);
    }
    Some(serde_json::Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_parses_back() {
        let value = value(SystemTime::UNIX_EPOCH);
        let parsed = parse(value.as_bytes()).expect(&value);
        assert_eq!(parsed["pid"], std::process::id());
        assert_eq!(parsed["started"], "1970-01-01T00:00:00Z");
        assert!(!parsed["host"].as_str().unwrap().is_empty());
        assert!(!parsed["user"].as_str().unwrap().is_empty());
    }

    #[test]
    fn other_values_are_not_holders() {
        for other in [
            &b""[..],
            b"10.0.0.7",
            b"alpha",
            b"host=a pid=x user=u started=t",
            b"host=a pid=1 user=u",
            b"pid=1 host=a user=u started=t",
            b"\xff",
        ] {
            assert_eq!(parse(other), None, "{other:?}");
        }
        assert_eq!(clean("a b=c"), "a_b_c");
        assert_eq!(clean(""), "?");
    }
}
