//! Runs the command while a lock (or leadership) is held, and stops it if that is lost.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use fairlock::{LostReason, LostSignal};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::common::Signals;
use crate::exit;

pub enum Outcome {
    /// The command exited; this is the exit code to pass on.
    Exited(u8),
    /// The lock was lost; the command has been stopped.
    Lost(LostReason),
    /// The command could not be started; the code says why (126, 127).
    NotStarted(u8),
}

pub async fn run(
    command: &[OsString],
    env: &[(&str, String)],
    mut lost: LostSignal,
    grace: Duration,
    signals: &mut Signals,
) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::NotStarted(exit::USAGE);
    };
    let mut child = match Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("fairlock: cannot run {}: {e}", program.to_string_lossy());
            return Outcome::NotStarted(match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::NOT_EXECUTABLE,
            });
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => return Outcome::Exited(status.map_or(exit::SOFTWARE, code_of)),
            _ = signals.interrupt.recv() => forward(&child, NixSignal::SIGINT),
            _ = signals.terminate.recv() => forward(&child, NixSignal::SIGTERM),
            reason = &mut lost => {
                stop(&mut child, grace).await;
                return Outcome::Lost(reason);
            }
        }
    }
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
fn code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => exit::SOFTWARE,
    }
}

fn forward(child: &Child, signal: NixSignal) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
}

/// SIGTERM, then SIGKILL after `grace`; waits for the child to be gone.
async fn stop(child: &mut Child, grace: Duration) {
    forward(child, NixSignal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
