//! Exit codes (sysexits.h where one fits) and the mapping of library errors to them.

use fairlock::Error;

/// Bad arguments, URL, or lock name.
pub const USAGE: u8 = 2;
/// Backend unreachable or failing (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Internal error (EX_SOFTWARE).
pub const SOFTWARE: u8 = 70;
/// The lock was lost while the command ran (EX_IOERR).
pub const LOST: u8 = 74;
/// Not acquired: held by someone else, or the timeout expired (EX_TEMPFAIL).
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

/// Prints `error` as one line and returns the exit code for it.
pub fn report(error: &Error) -> u8 {
    eprintln!("fairlock: {}", one_line(error));
    match error {
        Error::InvalidName { .. } | Error::InvalidConfig(_) => USAGE,
        Error::LockLost(_) => LOST,
        _ => UNAVAILABLE,
    }
}

/// The error and its sources, joined on one line.
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
    text.replace('\n', " ")
}
