//! Diagnostics on stderr through `tracing`: the library's events and fairlock's own.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber: errors only by default (the command reports what went wrong
/// itself, in one line; the library's warnings say the same at length), `-v` warnings and
/// info, `-vv` debug (for
/// fairlock's targets: the library's and this binary's both start with `fairlock`); a
/// non-empty `RUST_LOG` decides instead. Other crates' events show from level error only:
/// the ZooKeeper client warns of a lost connection when a session is closed on purpose,
/// and the library reports what matters of theirs itself.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "error",
        1 => "error,fairlock=info",
        _ => "error,fairlock=debug",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|e| {
                eprintln!("fairlock: ignoring RUST_LOG ({e})");
                EnvFilter::new(default)
            }),
        _ => EnvFilter::new(default),
    };
    // Fails only if a subscriber is installed already: then that one is used.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}
