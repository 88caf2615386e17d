//! Runs the command while a lock (or leadership) is held, and stops it if that is lost.
//!
//! COMMAND runs as the leader of its own process group, so that everything it starts (a
//! shell's background jobs included) can be signalled together: on loss the group gets
//! SIGTERM, then SIGKILL after the grace period, and fairlock returns only once no process
//! of the group is left. For that to be observable fairlock makes itself a child subreaper
//! (Linux): group members orphaned by their parent's death are reparented to it and reaped
//! here, instead of lingering as zombies (which still count as group members) until init
//! gets to them, if it ever does.
//!
//! Two mechanisms cover fairlock's own death, even by `kill -9`: COMMAND gets
//! `PR_SET_PDEATHSIG` (SIGKILL) on Linux, and a small watchdog process
//! ([`crate::watchdog`]) SIGKILLs the whole group when its pipe from fairlock closes before
//! fairlock disarmed it.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use fairlock::{LostReason, LostSignal};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::common::Signals;
use crate::{exit, watchdog};

/// How long to wait for the group to vanish after SIGKILL before giving up on it (a process
/// in uninterruptible sleep, or a zombie whose parent is outside the group and never reaps).
const AFTER_SIGKILL: Duration = Duration::from_secs(5);
/// How often to look whether the group is gone while nothing signals it.
const POLL: Duration = Duration::from_millis(50);

pub enum Outcome {
    /// The command exited; this is the exit code to pass on.
    Exited(u8),
    /// The lock was lost; the command's process group has been stopped.
    Lost(LostReason),
    /// The lock was lost before the command could start; it was not started.
    LostBeforeStart(LostReason),
    /// The command was not started; the code says why (126, 127; 129, 130, 143 for a
    /// signal that came in before it could start).
    NotStarted(u8),
}

pub async fn run(
    command: &[OsString],
    env: &[(&str, String)],
    lost: &[LostSignal],
    grace: Duration,
    signals: &mut Signals,
) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::NotStarted(exit::USAGE);
    };
    // Acquiring and spawning are not atomic: a signal or a loss may have come in after the
    // acquisition completed. Looked at here, explicitly, so that COMMAND is not started
    // then; the caller releases. A signal is seen here once tokio's signal driver (on a
    // worker thread) has taken it in; one arriving later is forwarded to COMMAND.
    if let Some(received) = signals.pending() {
        return Outcome::NotStarted(received.exit_code());
    }
    if let Some(reason) = lost.iter().find_map(LostSignal::reason) {
        return Outcome::LostBeforeStart(reason);
    }
    become_subreaper();
    // Registered before the spawn so that no child's exit is missed. Without it, reaping
    // still happens on the polls of `Group::wait_gone`.
    let mut child_exits = signal(SignalKind::child()).ok();
    let mut group = match Group::spawn(program, args, env) {
        Ok(group) => group,
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
            status = group.leader.wait() => match status {
                Ok(status) => {
                    // Background processes COMMAND left in its group are left running, as
                    // a shell would; the lock is released now that COMMAND itself ended.
                    group.disarm();
                    group.reap_orphans();
                    return Outcome::Exited(code_of(status));
                }
                Err(e) => {
                    // Whether COMMAND still runs is unknown: stop its group before the
                    // release, as on a loss.
                    eprintln!("fairlock: cannot wait for the command: {e}");
                    group.stop(grace, signals, &mut child_exits).await;
                    return Outcome::Exited(exit::SOFTWARE);
                }
            },
            received = signals.next() => group.signal(received.signal()),
            Some(()) = recv(&mut child_exits) => group.reap_orphans(),
            reason = any_lost(lost) => {
                group.stop(grace, signals, &mut child_exits).await;
                return Outcome::Lost(reason);
            }
        }
    }
}

/// The first loss among `lost` (every lock held for the command). Cancel safe: it waits on
/// clones of the signals.
async fn any_lost(lost: &[LostSignal]) -> LostReason {
    match lost {
        [] => std::future::pending().await,
        [one] => one.wait().await,
        many => futures::future::select_all(many.iter().cloned()).await.0,
    }
}

/// The next SIGCHLD; never, if it could not be registered.
async fn recv(child_exits: &mut Option<Signal>) -> Option<()> {
    match child_exits {
        Some(child_exits) => child_exits.recv().await,
        None => std::future::pending().await,
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

/// Makes fairlock the reaper of the command's orphaned descendants (Linux), so that they
/// leave no zombies in the group: their parent dying reparents them to the nearest
/// subreaper, and init may reap slowly or, in some containers, never.
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("fairlock: cannot become a child subreaper: {e}");
    }
}

/// COMMAND's process group: its leader (COMMAND) and the watchdog that kills the group if
/// fairlock dies.
struct Group {
    leader: Child,
    /// The group's id: the leader's pid. The number stays reserved for the group while any
    /// member (zombies included) exists, so signalling it cannot hit an unrelated process
    /// until [`is_gone`](Self::is_gone) said so; after that it is not signalled again.
    pgid: Pid,
    leader_exited: bool,
    /// The write end of the watchdog's stdin; `None` if it could not be started.
    watchdog: Option<std::process::ChildStdin>,
}

impl Group {
    fn spawn(
        program: &OsString,
        args: &[OsString],
        env: &[(&str, String)],
    ) -> std::io::Result<Self> {
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        die_with_fairlock(&mut command);
        // PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits, not the
        // process. This runs inside `Runtime::block_on` on the main thread, which lives as
        // long as fairlock. A tokio worker thread would do too, but a blocking-pool thread
        // (spawn_blocking) ends after some idle seconds and would take COMMAND with it.
        debug_assert_eq!(
            std::thread::current().name(),
            Some("main"),
            "COMMAND must be spawned from the main thread (PR_SET_PDEATHSIG)"
        );
        let leader = command.spawn()?;
        let pgid = Pid::from_raw(leader.id().map_or(0, |id| id as i32));
        let watchdog = match spawn_watchdog(pgid) {
            Ok(stdin) => Some(stdin),
            Err(e) => {
                eprintln!(
                    "fairlock: cannot start the watchdog ({e}): if fairlock is killed, \
                     COMMAND's background processes may survive it"
                );
                None
            }
        };
        Ok(Group {
            leader,
            pgid,
            leader_exited: false,
            watchdog,
        })
    }

    /// Sends `signal` to every process of the group, unless it is known to be gone.
    fn signal(&self, signal: NixSignal) {
        if self.pgid.as_raw() > 1 {
            let _ = killpg(self.pgid, signal);
        }
    }

    /// No process (running or zombie) is left in the group.
    fn is_gone(&self) -> bool {
        self.pgid.as_raw() <= 1 || killpg(self.pgid, None) == Err(Errno::ESRCH)
    }

    /// Reaps fairlock's exited children other than COMMAND itself: orphans reparented to
    /// fairlock as subreaper, and the watchdog. COMMAND's status is tokio's to collect, so
    /// each zombie is looked at first (WNOWAIT) and only then reaped by its pid.
    fn reap_orphans(&self) {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
            let leader = self.pgid;
            let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            // Bounded: each turn reaps one zombie, unless waitpid keeps failing.
            for _ in 0..1024 {
                match waitid(Id::All, peek) {
                    Ok(status) => match status.pid() {
                        // The first zombie is COMMAND: others wait until tokio reaped it.
                        Some(pid) if pid != leader => {
                            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                        }
                        _ => return,
                    },
                    Err(Errno::EINTR) => continue,
                    Err(_) => return, // ECHILD: no children at all
                }
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns once the group is gone (or
    /// [`AFTER_SIGKILL`] after the SIGKILL). Signals received meanwhile are forwarded.
    async fn stop(
        &mut self,
        grace: Duration,
        signals: &mut Signals,
        child_exits: &mut Option<Signal>,
    ) {
        self.signal(NixSignal::SIGTERM);
        if self
            .wait_gone(Instant::now() + grace, signals, child_exits)
            .await
        {
            self.disarm();
            return;
        }
        self.signal(NixSignal::SIGKILL);
        let deadline = Instant::now() + AFTER_SIGKILL;
        if self.wait_gone(deadline, signals, child_exits).await {
            self.disarm();
        } else {
            // Left armed: the watchdog SIGKILLs the group once more when fairlock exits.
            eprintln!(
                "fairlock: process group {} of the command still exists {AFTER_SIGKILL:?} \
                 after SIGKILL",
                self.pgid
            );
        }
    }

    /// Waits until the group is gone (true) or `deadline` passes (false), reaping orphans and
    /// forwarding SIGINT, SIGTERM and SIGHUP to the group as they arrive.
    async fn wait_gone(
        &mut self,
        deadline: Instant,
        signals: &mut Signals,
        child_exits: &mut Option<Signal>,
    ) -> bool {
        loop {
            self.reap_orphans();
            if self.leader_exited && self.is_gone() {
                return true;
            }
            tokio::select! {
                _ = self.leader.wait(), if !self.leader_exited => self.leader_exited = true,
                received = signals.next() => self.signal(received.signal()),
                Some(()) = recv(child_exits) => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Tells the watchdog to exit without killing the group.
    fn disarm(&mut self) {
        if let Some(mut stdin) = self.watchdog.take() {
            // The watchdog may be gone already (killed): nothing to tell then.
            let _ = stdin.write_all(&[watchdog::DISARM]);
        }
    }
}

/// On Linux: COMMAND gets SIGKILL when fairlock dies (`PR_SET_PDEATHSIG`), including when
/// fairlock died before the prctl ran (then COMMAND is not started at all).
fn die_with_fairlock(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let fairlock = nix::unistd::getpid();
        let set_pdeathsig = move || -> std::io::Result<()> {
            // Only async-signal-safe calls here: this runs between fork and exec.
            nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL)?;
            if nix::unistd::getppid() != fairlock {
                // Reparented already: fairlock died before the prctl could take effect.
                return Err(std::io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        };
        // SAFETY: the closure only calls prctl and getppid, both async-signal-safe, and
        // builds an io::Error from a raw code, which does not allocate.
        unsafe {
            command.pre_exec(set_pdeathsig);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Starts `fairlock __watch-group PGID` in a process group of its own (so that terminal
/// signals or a kill of fairlock's group do not reach it) and returns its stdin.
fn spawn_watchdog(pgid: Pid) -> std::io::Result<std::process::ChildStdin> {
    use std::os::unix::process::CommandExt;
    // /proc/self/exe still runs this binary if its file was replaced or deleted since.
    let exe = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let mut child = std::process::Command::new(exe)
        .arg0("fairlock")
        .arg(watchdog::SUBCOMMAND)
        .arg(pgid.as_raw().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    // Not waited for: it ends when fairlock does; the subreaper loop or init reaps it.
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin pipe"))
}
