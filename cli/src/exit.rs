//! Exit codes (sysexits.h where one fits), the mapping of library errors to them, and the
//! one-line error messages (with the backend password kept out).

use std::sync::OnceLock;

use fairlock::Error;

/// Bad arguments, URL, or lock name.
pub const USAGE: u8 = 2;
/// `leader`: nobody leads.
pub const NO_LEADER: u8 = 3;
/// `check`: the sequencer's holder was superseded by a newer one.
pub const SUPERSEDED: u8 = 4;
/// `check`: the sequencer's holder lost the lock, and nobody newer holds it.
pub const SEQUENCER_LOST: u8 = 5;
/// Backend unreachable or failing (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Internal error (EX_SOFTWARE): the async runtime or the signal handlers could not be set
/// up, COMMAND could not be waited for, or `observe`'s stream of leaders ended.
pub const SOFTWARE: u8 = 70;
/// Authentication failed, permission denied, or TLS refused (EX_NOPERM).
pub const NO_PERMISSION: u8 = 77;
/// The lock was lost while the command ran (EX_IOERR).
pub const LOST: u8 = 74;
/// Not acquired: held by someone else, or the timeout expired (EX_TEMPFAIL); the default of
/// `--conflict-exit-code`.
pub const NOT_ACQUIRED: u8 = 75;
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// Hung up (SIGHUP) while waiting.
pub const SIGHUP: u8 = 129;
/// Interrupted by SIGINT while waiting.
pub const SIGINT: u8 = 130;
/// Terminated by SIGTERM while waiting.
pub const SIGTERM: u8 = 143;

/// Every exit code and its meaning, for `--help` and the man page (the README has the same
/// table).
pub const TABLE: &[(&str, &str)] = &[
    (
        "COMMAND's",
        "lock, elect: COMMAND ran and exited (128+N if killed by signal N); released",
    ),
    (
        "0",
        "lock without COMMAND: held, then released on SIGINT/SIGTERM/SIGHUP; leader, status; \
         check: current",
    ),
    (
        "2",
        "bad arguments, URL, name or sequencer; a semaphore limit other than the one stored",
    ),
    ("3", "leader: nobody leads"),
    ("4", "check: superseded (a newer holder holds the lock)"),
    (
        "5",
        "check: lost (the holder's entry is gone; nobody newer holds)",
    ),
    ("69", "backend unreachable or failing"),
    (
        "77",
        "authentication failed, permission denied, or the TLS handshake failed",
    ),
    (
        "70",
        "internal error: no async runtime or signal handlers, COMMAND could not be waited \
         for, or observe's watch ended",
    ),
    (
        "74",
        "lock or leadership lost (COMMAND's process group stopped first)",
    ),
    (
        "75",
        "lock not acquired: --try found it taken or --timeout expired (see \
         --conflict-exit-code)",
    ),
    ("126, 127", "COMMAND not executable, not found"),
    (
        "129, 130, 143",
        "SIGHUP, SIGINT, SIGTERM while waiting or before COMMAND started",
    ),
];

/// The exit codes as `--help` shows them.
pub fn help_text() -> String {
    let width = TABLE.iter().map(|(code, _)| code.len()).max().unwrap_or(0);
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in TABLE {
        text.push_str(&format!("  {code:<width$}  {meaning}\n"));
    }
    text.trim_end().to_owned()
}

/// The backend URL's user info as written (`user:password@`) and as printed instead.
static SECRET: OnceLock<(String, String)> = OnceLock::new();

/// Remembers the password in `url`, if any, so that messages never show it.
pub fn keep_secret(url: &str) {
    if let Some((raw, redacted)) = userinfo(url) {
        let _ = SECRET.set((raw, redacted));
    }
}

/// `url` with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    fairlock::redact_url(url)
}

/// The user info `user:password@` of `url` and its redacted form `user:***@`; `None`
/// without a password. Also for text that is not quite a URL (`etcd//user:pw@host`): its
/// error messages quote it.
fn userinfo(url: &str) -> Option<(String, String)> {
    let info = match url.split_once("://") {
        Some((_, rest)) => rest.split(['/', '?', '#']).next()?.rsplit_once('@')?.0,
        None => {
            let (before, _) = url.rsplit_once('@')?;
            before.rsplit('/').next()?
        }
    };
    let (user, password) = info.split_once(':')?;
    (!password.is_empty()).then(|| (format!("{info}@"), format!("{user}:***@")))
}

/// `text` without the backend password.
pub fn scrub(text: &str) -> String {
    match SECRET.get() {
        Some((raw, redacted)) => text.replace(raw.as_str(), redacted),
        None => text.to_owned(),
    }
}

/// Prints `error` as one line and returns the exit code for it.
pub fn report(error: &Error) -> u8 {
    eprintln!("fairlock: {}", one_line(error));
    match error {
        Error::InvalidName { .. }
        | Error::InvalidConfig(_)
        | Error::InvalidSequencer { .. }
        | Error::LimitMismatch { .. } => USAGE,
        Error::LockLost(_) => LOST,
        Error::AuthenticationFailed { .. } | Error::PermissionDenied { .. } | Error::Tls { .. } => {
            NO_PERMISSION
        }
        _ => UNAVAILABLE,
    }
}

/// The error and its sources, joined on one line, without the backend password.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    scrub(&text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("etcd://root:s3cr@t@10.0.0.1:2379/x?ttl=5"),
            "etcd://root:***@10.0.0.1:2379/x?ttl=5"
        );
        assert_eq!(
            redact_url("etcd://10.0.0.1:2379/a@b"),
            "etcd://10.0.0.1:2379/a@b"
        );
        assert_eq!(redact_url("etcd://root@h:1/x"), "etcd://root@h:1/x");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("etcd//root:pw@h:1/x"), "etcd//root:***@h:1/x");
        assert_eq!(redact_url("etcd//h:1/a@b"), "etcd//h:1/a@b");
    }

    #[test]
    fn every_code_is_in_the_table() {
        let text = help_text();
        for code in [
            USAGE,
            NO_LEADER,
            SUPERSEDED,
            SEQUENCER_LOST,
            UNAVAILABLE,
            NO_PERMISSION,
            SOFTWARE,
            LOST,
            NOT_ACQUIRED,
            NOT_EXECUTABLE,
            NOT_FOUND,
            SIGHUP,
            SIGINT,
            SIGTERM,
        ] {
            assert!(text.contains(&code.to_string()), "{code} missing");
        }
    }
}
