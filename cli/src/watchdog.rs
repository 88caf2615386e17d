//! `fairlock __watch-group PGID` (internal, read before clap parses anything): the dead man's
//! switch for COMMAND's process group.
//!
//! `PR_SET_PDEATHSIG` kills COMMAND when fairlock dies, but not what COMMAND started: a
//! shell's background job, once its parent is gone, runs on. This process watches its stdin,
//! a pipe whose only writer is fairlock: end of file without a word first means fairlock
//! died (however: `kill -9`, a crash), and the whole group gets SIGKILL. Fairlock sends
//! [`DISARM`] when it has dealt with the group itself.

use std::ffi::OsString;
use std::io::Read;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::exit;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "__watch-group";
/// The byte that tells the watchdog to exit without killing the group.
pub const DISARM: u8 = b'd';

/// `fairlock __watch-group PGID`, given PGID (`None` if missing) and whether it was the last
/// argument: waits for fairlock's word or its death; SIGKILLs group PGID on the latter.
pub fn run(pgid: Option<OsString>, last: bool) -> u8 {
    let parsed = pgid
        .as_ref()
        .and_then(|pgid| pgid.to_str()?.parse::<i32>().ok());
    // killpg(0) would hit the watchdog's own group, and killpg(1) every process.
    let pgid = match parsed {
        Some(pgid) if pgid > 1 && last => pgid,
        _ => {
            eprintln!("fairlock: usage: fairlock {SUBCOMMAND} PGID (PGID > 1)");
            return exit::USAGE;
        }
    };
    let mut byte = [0u8; 1];
    let disarmed = loop {
        match std::io::stdin().read(&mut byte) {
            Ok(0) => break false,
            Ok(_) => break byte[0] == DISARM,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if !disarmed {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    0
}
