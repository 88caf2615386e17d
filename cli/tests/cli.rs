//! The `fairlock lock` command line: exit codes, environment, signals, lost locks.
#![cfg(any(feature = "etcd", feature = "zookeeper"))]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{eventually, soon, unique, Harness};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn fairlock(backend: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairlock"));
    cmd.env("FAIRLOCK_BACKEND", backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn output(mut cmd: Command) -> Output {
    soon("fairlock exits", cmd.output()).await.unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code, and stderr is a single line without a panic.
fn assert_one_line_failure(out: &Output, code: i32) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id().unwrap() as i32), signal).unwrap();
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts `fairlock lock NAME -- sh -c SCRIPT` holding the lock; returns once SCRIPT has
/// printed "started" (after installing any traps), with the rest of its output.
async fn hold(h: &dyn Harness, name: &str, script: &str) -> (Child, Lines) {
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["lock", name, "--", "sh", "-c", script]);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = soon("holder starts", lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    (child, lines)
}

/// `fairlock status --json ARGS`: the document's kind and each entry's `role:side`.
async fn status_roles(h: &dyn Harness, args: &[&str]) -> (String, Vec<String>) {
    let out = run_cli(h, &[&["status", "--json"], args].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    let roles = (doc["entries"].as_array().unwrap().iter())
        .map(|e| format!("{}:{}", text(&e["role"]), text(&e["side"])))
        .collect();
    (text(&doc["kind"]), roles)
}

/// Starts `fairlock lock ARGS -- sh -c "echo started; sleep 60"` and returns once the
/// command runs.
async fn holding(h: &dyn Harness, args: &[&str]) -> (Child, Lines) {
    let mut cmd = fairlock(&h.url(10));
    cmd.arg("lock")
        .args(args)
        .args(["--", "sh", "-c", "echo started; sleep 60"]);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = soon("the holder starts", lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    (child, lines)
}

/// `lock --limit N`: N commands run at once, the next waits (or, with --try, exits 75); a
/// different N is refused with one line; `status --semaphore` shows the leases and the
/// waiter.
async fn semaphore_runs_up_to_limit_commands(h: &dyn Harness) {
    let name = unique("cli-semaphore");
    let (mut first, _l1) = holding(h, &["--limit", "2", &name]).await;
    let (mut second, _l2) = holding(h, &["-l", "2", &name]).await;
    let out = run_cli(h, &["lock", "--try", "-l", "2", &name, "--", "true"]).await;
    assert_one_line_failure(&out, 75);
    let out = run_cli(h, &["lock", "-l", "3", &name, "--", "true"]).await;
    let err = stderr(&out);
    assert!(err.contains("limit of 2, not 3"), "{err}");
    assert_one_line_failure(&out, 2);

    let mut cmd = fairlock(&h.url(10));
    cmd.args(["lock", "-l", "2", &name, "--", "sh", "-c", "echo third"]);
    let third = cmd.spawn().unwrap();
    let gate = format!("{name}-__lock__");
    eventually("the third waits at the gate", || async {
        h.entries(&gate).await.len() == 1
    })
    .await;
    let (kind, seen) = status_roles(h, &["--semaphore", &name]).await;
    assert_eq!(kind, "semaphore");
    assert_eq!(seen, ["holder:lease", "holder:lease", "waiting:"]);
    first.kill().await.unwrap();
    let out = soon(
        "the third runs once a lease is free",
        third.wait_with_output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "third");
    second.kill().await.unwrap();
    eventually("nothing left", || async {
        h.entries(&name).await.is_empty() && h.entries(&gate).await.is_empty()
    })
    .await;
}

/// `lock --shared`: readers hold together, a plain (exclusive) lock waits for them, and
/// `status` shows them both as holders, on the read side.
async fn shared_locks_hold_together_and_exclude_a_plain_lock(h: &dyn Harness) {
    let name = unique("cli-shared");
    let mut cmd = fairlock(&h.url(10));
    cmd.args([
        "lock",
        "--shared",
        &name,
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]);
    let mut reader = cmd.spawn().unwrap();
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    let line = soon("reader starts", lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    let mut second = fairlock(&h.url(10));
    second.args([
        "lock",
        "-s",
        "--try",
        &name,
        "--",
        "sh",
        "-c",
        "echo $FAIRLOCK_TOKEN",
    ]);
    let out = output(second).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "a second reader: {}",
        stderr(&out)
    );
    let mut exclusive = fairlock(&h.url(10));
    exclusive.args(["lock", "--try", &name, "--", "true"]);
    assert_one_line_failure(&output(exclusive).await, 75);

    let mut cmd = fairlock(&h.url(10));
    cmd.args([
        "lock",
        "-s",
        &name,
        "--",
        "sh",
        "-c",
        "echo started; sleep 60",
    ]);
    let mut other_reader = cmd.spawn().unwrap();
    let mut other_lines = BufReader::new(other_reader.stdout.take().unwrap()).lines();
    let line = soon("another reader starts", other_lines.next_line())
        .await
        .unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["lock", &name, "--", "true"]);
    let writer = cmd.spawn().unwrap();
    eventually("the writer queued", || async {
        h.entries(&name).await.len() == 3
    })
    .await;
    let (_, seen) = status_roles(h, &[&name]).await;
    assert_eq!(seen, ["holder:read", "holder:read", "waiting:write"]);
    reader.kill().await.unwrap();
    other_reader.kill().await.unwrap();
    let out = soon(
        "the writer runs after the readers",
        writer.wait_with_output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Several names: all or nothing. A run that cannot have one of them takes none (and
/// leaves no entry); one that gets them all sees every name, token and key.
async fn several_names_are_taken_all_or_nothing(h: &dyn Harness) {
    let (a, b, c) = (
        unique("cli-multi-a"),
        unique("cli-multi-b"),
        unique("cli-multi-c"),
    );
    let (mut holder, _) = hold(h, &b, "echo started; sleep 60").await;
    let mut refused = fairlock(&h.url(10));
    refused.args(["lock", "--timeout", "300ms", &c, &b, &a, "--", "true"]);
    assert_one_line_failure(&output(refused).await, 75);
    assert!(
        h.entries(&a).await.is_empty(),
        "the first lock stayed taken"
    );
    assert!(h.entries(&c).await.is_empty(), "an entry stayed");
    holder.kill().await.unwrap();
    eventually("the holder's entry expired or went", || async {
        h.entries(&b).await.is_empty()
    })
    .await;
    let mut cmd = fairlock(&h.url(10));
    cmd.args([
        "lock",
        &c,
        &a,
        "--",
        "sh",
        "-c",
        "echo $FAIRLOCK_NAME; echo $FAIRLOCK_TOKEN; echo $FAIRLOCK_KEY",
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{a} {c}"), "taken in name order");
    assert_eq!(lines[1].split(' ').count(), 2);
    assert_eq!(lines[2].split(' ').count(), 2);
    assert!(h.entries(&a).await.is_empty() && h.entries(&c).await.is_empty());
    let out = run_cli(h, &["lock", &a, &a, "--", "true"]).await;
    assert_one_line_failure(&out, 2);
}

async fn runs_command_with_env_and_passes_its_exit_code(h: &dyn Harness) {
    let name = unique("cli-env");
    let mut cmd = fairlock(&h.url(10));
    cmd.args([
        "lock",
        &name,
        "--",
        "sh",
        "-c",
        "echo $FAIRLOCK_NAME $FAIRLOCK_TOKEN $FAIRLOCK_KEY; exit 7",
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields[0], name);
    assert!(fields[1].parse::<u64>().unwrap() > 0);
    assert!(h.entries_prefix_of(&name, fields[2]), "key {}", fields[2]);
    assert!(h.entries(&name).await.is_empty(), "lock not released");
}

async fn try_and_timeout_exit_75_and_leave_no_entry(h: &dyn Harness) {
    let name = unique("cli-busy");
    let (mut holder, _) = hold(h, &name, "echo started; sleep 60").await;

    let mut try_cmd = fairlock(&h.url(10));
    try_cmd.args(["lock", "--try", &name, "--", "true"]);
    assert_one_line_failure(&output(try_cmd).await, 75);

    let mut timeout_cmd = fairlock(&h.url(10));
    timeout_cmd.args(["lock", "--timeout", "300ms", &name, "--", "true"]);
    assert_one_line_failure(&output(timeout_cmd).await, 75);

    assert_eq!(
        h.entries(&name).await.len(),
        1,
        "a refused attempt left an entry"
    );
    holder.kill().await.unwrap();
}

async fn signals_while_waiting_leave_the_queue(h: &dyn Harness) {
    let name = unique("cli-sig");
    let (mut holder, _) = hold(h, &name, "echo started; sleep 60").await;
    for (sig, code) in [
        (Signal::SIGINT, 130),
        (Signal::SIGTERM, 143),
        (Signal::SIGHUP, 129),
    ] {
        let mut cmd = fairlock(&h.url(10));
        cmd.args(["lock", &name, "--", "true"]);
        let waiter = cmd.spawn().unwrap();
        eventually("waiter queued", || async {
            h.entries(&name).await.len() == 2
        })
        .await;
        signal(&waiter, sig);
        let out = soon("waiter exits", waiter.wait_with_output())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert_eq!(h.entries(&name).await.len(), 1, "the waiter's entry stayed");
    }
    holder.kill().await.unwrap();
}

async fn signals_while_holding_go_to_the_command(h: &dyn Harness) {
    let name = unique("cli-forward");
    let (holder, _) = hold(
        h,
        &name,
        "trap 'exit 42' TERM; echo started; while true; do sleep 0.1; done",
    )
    .await;
    signal(&holder, Signal::SIGTERM);
    let out = soon("holder exits", holder.wait_with_output())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    assert!(h.entries(&name).await.is_empty(), "lock not released");
}

async fn lost_lock_stops_the_command_and_exits_74(h: &dyn Harness) {
    let name = unique("cli-lost");
    // The whole group gets SIGTERM, `sleep` too: the shell's "Terminated" report of it goes
    // to /dev/null so that stderr is fairlock's alone.
    let (holder, mut lines) = hold(
        h,
        &name,
        "exec 2>/dev/null; trap 'echo got-term; exit 0' TERM; echo started; \
         while true; do sleep 0.1; done",
    )
    .await;
    let entries = h.entries(&name).await;
    h.delete_entry(&entries[0]).await;
    let out = soon("holder exits", holder.wait_with_output())
        .await
        .unwrap();
    assert_one_line_failure(&out, 74);
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("got-term")
    );
}

async fn command_that_ignores_sigterm_is_killed_after_grace(h: &dyn Harness) {
    let name = unique("cli-grace");
    let mut cmd = fairlock(&h.url(10));
    cmd.args([
        "lock",
        "--grace",
        "500ms",
        &name,
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo started; sleep 60",
    ]);
    let mut holder = cmd.spawn().unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    soon("holder starts", lines.next_line()).await.unwrap();
    let entries = h.entries(&name).await;
    h.delete_entry(&entries[0]).await;
    let status = soon("holder exits", holder.wait()).await.unwrap();
    assert_eq!(status.code(), Some(74));
}

async fn bad_input_exits_2_with_one_line(h: &dyn Harness) {
    let url = h.url(10);
    let long = "n".repeat(300);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (url.clone(), vec!["lock", "", "--", "true"]),
        (url.clone(), vec!["lock", "a/../b", "--", "true"]),
        (url.clone(), vec!["lock", "a\u{1}b", "--", "true"]),
        (url.clone(), vec!["lock", &long, "--", "true"]),
        (url.clone(), vec!["lock", "--ttl", "0", "x", "--", "true"]),
        (url.clone(), vec!["lock", "--ttl", "1", "x", "--", "true"]),
        (url.clone(), vec!["status", "a/b"]),
        (url.clone(), vec!["leader", ""]),
        (
            "redis://127.0.0.1:6379".into(),
            vec!["lock", "x", "--", "true"],
        ),
        ("etcd://".into(), vec!["lock", "x", "--", "true"]),
        (
            "etcd://127.0.0.1:notaport/x".into(),
            vec!["lock", "x", "--", "true"],
        ),
        ("not a url".into(), vec!["lock", "x", "--", "true"]),
        ("not a url".into(), vec!["status", "x"]),
    ];
    for (backend, args) in cases {
        let mut cmd = fairlock(&backend);
        cmd.args(&args);
        let out = output(cmd).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{backend} {args:?}: {err}");
        assert_one_line_failure(&out, 2);
    }
}

/// Exit 2 with clap's own message: the error, its tips, the usage.
fn assert_clap_error(out: &Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("try '--help'"), "{err}");
    assert!(err.contains(expected), "{expected:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Bad arguments get clap's whole message (with its tips), not a line cut out of it.
#[tokio::test]
async fn bad_arguments_get_clap_messages_with_tips() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["lock", "x", "true"],
            "tip: to run 'true' as COMMAND, put '--' before it: '-- true'",
        ),
        (
            &["lock", "x", "-x"],
            "tip: to pass '-x' as a value, use '-- -x'",
        ),
        (&["lock", "--ttl", "-5", "x", "--", "true"], "-5"),
        (&["lock", "--timeout", "soon", "x", "--", "true"], "soon"),
        (&["lock", "--ttl", "NaN", "x", "--", "true"], "NaN"),
        (
            &["lock", "--try", "--timeout", "1s", "x", "--", "true"],
            "'--try' cannot be used with '--timeout <DURATION>'",
        ),
        (
            &["lock", "-c", "true", "x", "--", "true"],
            "cannot be used with",
        ),
        (&["elect", "--value", "v", "x"], "required"),
        (&["lock"], "<NAME>"),
        (
            &["lock", "x", "y", "true"],
            "tip: to run 'true' as COMMAND, put '--' before it: '-- true'",
        ),
        (&["unlock", "x"], "unrecognized subcommand 'unlock'"),
        (&["lock", "-E", "300", "x", "--", "true"], "300"),
    ];
    for (args, expected) in cases {
        let mut cmd = fairlock("memory://");
        cmd.args(*args);
        assert_clap_error(&output(cmd).await, expected);
    }
}

/// The write end of a pipe whose read end is closed.
fn closed_pipe() -> std::os::fd::OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

/// Bare `fairlock` shows the usage (exit 2); `--help` lists the exit codes and where each
/// option's environment variable is, but not the backend URL from the environment (it may
/// carry a password).
#[tokio::test]
async fn bare_fairlock_prints_usage_and_help_lists_exit_codes() {
    let out = output(fairlock("memory://")).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for expected in [
        "Usage: fairlock",
        "Commands:",
        "lock",
        "status",
        "Exit codes:",
    ] {
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }

    let mut cmd = fairlock("etcd://root:hunter2secret@127.0.0.1:2379/x");
    cmd.args(["lock", "--help"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "Exit codes:",
        "70 ",
        "74 ",
        "75 ",
        "[env: FAIRLOCK_BACKEND]",
        "[env: FAIRLOCK_TTL=]",
        "[env: FAIRLOCK_TIMEOUT=]",
        "[env: FAIRLOCK_GRACE=]",
        "[env: FAIRLOCK_LOCK_DELAY=]",
        "[env: FAIRLOCK_CONFLICT_EXIT_CODE=]",
    ] {
        assert!(help.contains(expected), "{expected:?} not in {help}");
    }
    assert!(!help.contains("hunter2secret"), "{help}");
}

/// `completions SHELL` prints a script that knows the subcommands; `man` prints roff pages
/// with the exit status and environment.
#[tokio::test]
async fn completions_and_man_pages() {
    for (shell, marker) in [
        ("bash", "_fairlock()"),
        ("zsh", "#compdef fairlock"),
        ("fish", "complete -c fairlock"),
    ] {
        let mut cmd = fairlock("memory://");
        cmd.args(["completions", shell]);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("conflict-exit-code"), "{shell}: {script}");
        assert!(
            !script.contains("__watch-group"),
            "{shell}: hidden command listed"
        );
    }
    for (page, title) in [
        (None, ".TH fairlock 1"),
        (Some("lock"), ".TH fairlock-lock 1"),
    ] {
        let mut cmd = fairlock("memory://");
        cmd.arg("man").args(page);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let roff = String::from_utf8_lossy(&out.stdout);
        assert!(roff.contains(title), "{roff}");
        for section in [
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH \"EXIT STATUS\"",
            ".SH \"ENVIRONMENT\"",
        ] {
            assert!(roff.contains(section), "{section} not in {roff}");
        }
        assert!(roff.contains("FAIRLOCK_TTL"), "{roff}");
    }
    // A closed stdout (`| head -1`) is no panic.
    for args in [&["completions", "bash"][..], &["man"]] {
        let mut cmd = fairlock("memory://");
        cmd.args(args).stdout(Stdio::from(closed_pipe()));
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let mut cmd = fairlock("memory://");
    cmd.args(["man", "nope"]);
    assert_one_line_failure(&output(cmd).await, 2);
}

#[cfg(all(feature = "etcd", feature = "zookeeper"))]
#[tokio::test]
async fn unreachable_backend_exits_69_with_one_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!(
        "etcd://{}/x?connect_timeout=1s",
        listener.local_addr().unwrap()
    );
    let silent_zk = silent.replace("etcd://", "zk://");
    for backend in [
        "etcd://127.0.0.1:1/x?connect_timeout=1s",
        "zk://127.0.0.1:1/x?connect_timeout=1s",
        silent.as_str(),
        silent_zk.as_str(),
    ] {
        let started = std::time::Instant::now();
        let mut cmd = fairlock(backend);
        cmd.args(["lock", "x", "--", "true"]);
        let out = output(cmd).await;
        assert_one_line_failure(&out, 69);
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

async fn missing_command_exits_127(h: &dyn Harness) {
    let name = unique("cli-missing");
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["lock", &name, "--", "/nonexistent/command"]);
    assert_one_line_failure(&output(cmd).await, 127);
    assert!(h.entries(&name).await.is_empty());
}

#[tokio::test]
async fn memory_backend_works_without_servers() {
    let mut cmd = fairlock("memory://");
    cmd.args(["lock", "x", "--", "sh", "-c", "exit 5"]);
    assert_eq!(output(cmd).await.status.code(), Some(5));
}

/// Starts `fairlock elect --value VALUE NAME -- sh -c SCRIPT`; returns once SCRIPT has
/// printed "started".
async fn lead(h: &dyn Harness, name: &str, value: &str, script: &str) -> (Child, Lines) {
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["elect", "--value", value, name, "--", "sh", "-c"])
        .arg(script);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = soon("leader starts", lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    (child, lines)
}

async fn run_cli(h: &dyn Harness, args: &[&str]) -> Output {
    let mut cmd = fairlock(&h.url(10));
    cmd.args(args);
    output(cmd).await
}

async fn elect_runs_command_while_leading(h: &dyn Harness) {
    let name = unique("cli-elect");
    let out = run_cli(
        h,
        &[
            "elect",
            "--value",
            "v1",
            &name,
            "--",
            "sh",
            "-c",
            "echo $FAIRLOCK_NAME $FAIRLOCK_TOKEN; exit 9",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields[0], name);
    assert!(fields[1].parse::<u64>().unwrap() > 0);
    assert!(h.entries(&name).await.is_empty(), "did not resign");
}

async fn leader_and_status_report_the_queue(h: &dyn Harness) {
    let name = unique("cli-leader");
    let out = run_cli(h, &["leader", &name]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let (mut first, _) = lead(h, &name, "alpha", "echo started; exec sleep 60").await;
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["elect", "--value", "beta", &name, "--", "true"]);
    let mut second = cmd.spawn().unwrap();
    eventually("second candidate", || async {
        h.entries(&name).await.len() == 2
    })
    .await;

    let out = run_cli(h, &["leader", &name]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alpha");

    let out = run_cli(h, &["status", "--election", "--json", &name]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    let values: Vec<&str> = entries
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["alpha", "beta"]);
    assert_eq!(entries[0]["role"], "leader");
    assert!(entries[0]["fencing_token"].as_u64() < entries[1]["fencing_token"].as_u64());

    let out = run_cli(h, &["status", "--election", &name]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains("leader") && lines[1].contains("alpha"),
        "{table}"
    );
    assert!(
        lines[2].contains("candidate") && lines[2].contains("beta"),
        "{table}"
    );

    first.kill().await.unwrap(); // crash: beta leads after the TTL, runs `true`, resigns
    let status = soon("second leads and ends", second.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

async fn observe_prints_each_leader(h: &dyn Harness) {
    let name = unique("cli-observe");
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["observe", &name]);
    let mut observer = cmd.spawn().unwrap();
    let mut seen = BufReader::new(observer.stdout.take().unwrap()).lines();
    let (mut alpha, _) = lead(h, &name, "alpha", "echo started; exec sleep 60").await;
    let line = soon("alpha observed", seen.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("alpha"));
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["elect", "--value", "beta", &name, "--", "sleep", "60"]);
    let mut beta = cmd.spawn().unwrap();
    eventually("beta queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    signal(&alpha, Signal::SIGTERM); // passed on: alpha's command ends, alpha resigns
    soon("alpha exits", alpha.wait()).await.unwrap();
    let line = soon("beta observed", seen.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("beta"));
    signal(&observer, Signal::SIGINT);
    let status = soon("observer exits", observer.wait()).await.unwrap();
    assert_eq!(status.code(), Some(130));
    signal(&beta, Signal::SIGTERM);
    soon("beta exits", beta.wait()).await.unwrap();
}

async fn elect_interrupted_while_campaigning_withdraws(h: &dyn Harness) {
    let name = unique("cli-elect-int");
    let (mut leader, _) = lead(h, &name, "alpha", "echo started; exec sleep 60").await;
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGHUP, 129)] {
        let mut cmd = fairlock(&h.url(10));
        cmd.args(["elect", "--value", "beta", &name, "--", "true"]);
        let candidate = cmd.spawn().unwrap();
        eventually("candidate queued", || async {
            h.entries(&name).await.len() == 2
        })
        .await;
        signal(&candidate, sig);
        let out = soon("candidate exits", candidate.wait_with_output())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert_eq!(h.entries(&name).await.len(), 1, "the candidacy stayed");
    }
    leader.kill().await.unwrap();
}

async fn lost_leadership_exits_74(h: &dyn Harness) {
    let name = unique("cli-elect-lost");
    let (leader, _) = lead(h, &name, "alpha", "echo started; exec sleep 60").await;
    let entries = h.entries(&name).await;
    h.delete_entry(&entries[0]).await;
    let out = soon("leader exits", leader.wait_with_output())
        .await
        .unwrap();
    assert_one_line_failure(&out, 74);
}

/// A file path unique to this test, for a script to write a pid into.
fn pid_file(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(unique(tag))
}

/// The pid a script wrote into `path` (it writes it before printing "started").
fn read_pid(path: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    text.trim().parse().unwrap()
}

/// Whether process `pid` runs (not a zombie) the program named `comm`: a reused pid or a
/// zombie waiting for its (possibly non-reaping) new parent counts as gone.
fn running(pid: i32, comm: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next();
    &stat[open + 1..close] == comm && !matches!(state, Some("Z" | "X" | "x"))
}

/// The pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if ppid.and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// Waits (up to `SOON`) until none of `processes` runs; SIGKILLs those still running then
/// (they are this test's) and returns them.
async fn left_running_after_soon<'a>(processes: &[(i32, &'a str)]) -> Vec<(i32, &'a str)> {
    let deadline = tokio::time::Instant::now() + common::SOON;
    loop {
        let left: Vec<(i32, &str)> = processes
            .iter()
            .copied()
            .filter(|&(pid, comm)| running(pid, comm))
            .collect();
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            for &(pid, _) in &left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `fairlock ARGS -- sh -c SCRIPT`; returns once SCRIPT has printed "started".
async fn start(h: &dyn Harness, args: &[&str], script: &str) -> (Child, Lines) {
    let mut cmd = fairlock(&h.url(10));
    cmd.args(args).args(["--", "sh", "-c", script]);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = soon("command starts", lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    (child, lines)
}

/// Deleting the held entry stops COMMAND's whole process group, including a background
/// child that the shell leaves behind when SIGTERM ends it, before fairlock exits 74.
async fn lost_hold_stops_the_whole_group(h: &dyn Harness, args: &[&str], name: &str) {
    let background = pid_file("cli-bg");
    let script = format!(
        "sleep 777 & echo $! > {}; echo started; wait",
        background.display()
    );
    let (mut holder, _) = start(h, args, &script).await;
    let sleep = read_pid(&background);
    let entries = h.entries(name).await;
    h.delete_entry(&entries[0]).await;
    // Its status only: a surviving `sleep` would keep the output pipes open.
    let status = soon("holder exits", holder.wait()).await.unwrap();
    let survived = running(sleep, "sleep");
    if survived {
        let _ = kill(Pid::from_raw(sleep), Signal::SIGKILL);
    }
    assert_eq!(status.code(), Some(74));
    assert!(!survived, "the background `sleep 777` outlived the lock");
}

async fn lost_lock_stops_the_whole_group(h: &dyn Harness) {
    let name = unique("cli-group");
    lost_hold_stops_the_whole_group(h, &["lock", "--grace", "1s", &name], &name).await;
}

async fn lost_leadership_stops_the_whole_group(h: &dyn Harness) {
    let name = unique("cli-elect-group");
    let args = ["elect", "--grace", "1s", "--value", "v", &name];
    lost_hold_stops_the_whole_group(h, &args, &name).await;
}

/// A process of the group that ignores SIGTERM and outlives COMMAND (reparented to
/// fairlock) still gets SIGKILL after the grace period, and fairlock exits 74 only after.
async fn lost_lock_kills_a_group_member_that_ignores_sigterm(h: &dyn Harness) {
    let name = unique("cli-group-kill");
    let background = pid_file("cli-bg");
    let script = format!(
        "sh -c 'trap \"\" TERM; while true; do sleep 0.1; done' & echo $! > {}; \
         echo started; wait",
        background.display()
    );
    let (mut holder, _) = start(h, &["lock", "--grace", "1s", &name], &script).await;
    let stubborn = read_pid(&background);
    let entries = h.entries(&name).await;
    h.delete_entry(&entries[0]).await;
    let status = soon("holder exits", holder.wait()).await.unwrap();
    let survived = running(stubborn, "sh");
    if survived {
        let _ = kill(Pid::from_raw(stubborn), Signal::SIGKILL);
    }
    assert_eq!(status.code(), Some(74));
    assert!(
        !survived,
        "a group member ignoring SIGTERM outlived the lock"
    );
}

/// Writes the shell's pid and its background child's pid, then waits.
fn leader_and_background_script(leader: &std::path::Path, background: &std::path::Path) -> String {
    format!(
        "echo $$ > {}; sleep 777 & echo $! > {}; echo started; wait",
        leader.display(),
        background.display()
    )
}

/// `kill -9` of fairlock ends COMMAND and its process group: nothing runs on unprotected
/// while the lock frees itself after the TTL.
async fn killed_fairlock_takes_the_command_group_along(h: &dyn Harness) {
    let name = unique("cli-kill9");
    let (leader_file, background_file) = (pid_file("cli-leader"), pid_file("cli-bg"));
    let script = leader_and_background_script(&leader_file, &background_file);
    let (mut holder, _) = start(h, &["lock", &name], &script).await;
    let (leader, sleep) = (read_pid(&leader_file), read_pid(&background_file));
    holder.kill().await.unwrap();
    let left = left_running_after_soon(&[(leader, "sh"), (sleep, "sleep")]).await;
    assert!(
        left.is_empty(),
        "still running after kill -9 of fairlock: {left:?}"
    );
}

/// Without fairlock's group watchdog (killed first), `PR_SET_PDEATHSIG` alone still ends
/// COMMAND itself when fairlock is killed (its background children are not covered).
async fn killed_fairlock_ends_the_command_by_pdeathsig(h: &dyn Harness) {
    let name = unique("cli-pdeath");
    let (leader_file, background_file) = (pid_file("cli-leader"), pid_file("cli-bg"));
    let script = leader_and_background_script(&leader_file, &background_file);
    let (mut holder, _) = start(h, &["lock", &name], &script).await;
    let (leader, sleep) = (read_pid(&leader_file), read_pid(&background_file));
    let fairlock_pid = holder.id().unwrap() as i32;
    for other in children_of(fairlock_pid) {
        if other != leader {
            let _ = kill(Pid::from_raw(other), Signal::SIGKILL);
        }
    }
    holder.kill().await.unwrap();
    let left = left_running_after_soon(&[(leader, "sh")]).await;
    if running(sleep, "sleep") {
        let _ = kill(Pid::from_raw(sleep), Signal::SIGKILL); // not covered: see the README
    }
    assert!(left.is_empty(), "the command outlived fairlock: {left:?}");
}

async fn sighup_while_holding_reaches_the_command(h: &dyn Harness) {
    let name = unique("cli-hup");
    let (mut holder, _) = hold(
        h,
        &name,
        "trap 'exit 41' HUP; echo started; while true; do sleep 0.1; done",
    )
    .await;
    signal(&holder, Signal::SIGHUP);
    let status = soon("holder exits", holder.wait()).await.unwrap();
    assert_eq!(status.code(), Some(41));
    assert!(h.entries(&name).await.is_empty(), "lock not released");
}

/// After a loss, during the grace period, a signal to fairlock is still passed on: here the
/// command ignores SIGTERM but ends on SIGINT, long before the grace period would end.
async fn signal_during_grace_is_honoured(h: &dyn Harness) {
    let name = unique("cli-grace-sig");
    let script = "exec 2>/dev/null; trap 'echo got-term' TERM; trap 'echo got-int; exit 0' INT; \
                  echo started; while true; do sleep 0.1; done";
    let (holder, mut lines) = start(h, &["lock", "--grace", "300s", &name], script).await;
    let entries = h.entries(&name).await;
    h.delete_entry(&entries[0]).await;
    let line = soon("command gets SIGTERM", lines.next_line())
        .await
        .unwrap();
    assert_eq!(line.as_deref(), Some("got-term"));
    signal(&holder, Signal::SIGINT);
    let line = soon("command gets SIGINT", lines.next_line())
        .await
        .unwrap();
    assert_eq!(line.as_deref(), Some("got-int"));
    let out = soon("holder exits", holder.wait_with_output())
        .await
        .unwrap();
    assert_one_line_failure(&out, 74);
}

/// Not a test: the command of `terminal_ctrl_c_reaches_the_command_once`, which runs this
/// test binary with `--ignored --exact sigint_counter_helper`. Until a SIGTERM ends it, it
/// writes into the file named by `FAIRLOCK_TEST_SIGINT_COUNT` how many SIGINTs it got, and
/// how many of them did not come from its parent (fairlock) by kill(2): a terminal's come
/// from the kernel. (Two SIGINTs that arrive together are counted once; the sender of the
/// first is kept.)
#[test]
#[ignore = "a helper process of terminal_ctrl_c_reaches_the_command_once"]
fn sigint_counter_helper() {
    use nix::libc::{c_int, c_void, siginfo_t, SI_USER};
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

    static PARENT: AtomicI32 = AtomicI32::new(0);
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static NOT_FROM_PARENT: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn on_sigint(_: c_int, info: *mut siginfo_t, _: *mut c_void) {
        // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO.
        let (code, pid) = unsafe { ((*info).si_code, (*info).si_pid()) };
        if code != SI_USER || pid != PARENT.load(Ordering::Relaxed) {
            NOT_FROM_PARENT.fetch_add(1, Ordering::Relaxed);
        }
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
    let Ok(path) = std::env::var("FAIRLOCK_TEST_SIGINT_COUNT") else {
        return;
    };
    let write = |counts: (usize, usize)| {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{} {}", counts.0, counts.1)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    PARENT.store(nix::unistd::getppid().as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::SigAction(on_sigint),
        SaFlags::SA_RESTART | SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only reads its siginfo and updates atomics.
    unsafe { sigaction(Signal::SIGINT, &action) }.unwrap();
    write((0, 0));
    let mut seen = (0, 0);
    for _ in 0..3000 {
        let counts = (
            COUNT.load(Ordering::Relaxed),
            NOT_FROM_PARENT.load(Ordering::Relaxed),
        );
        if counts != seen {
            seen = counts;
            write(counts);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A terminal's Ctrl-C reaches COMMAND once, passed on by fairlock: only fairlock is in the
/// terminal's foreground process group (before, COMMAND got it from the terminal, and again
/// from fairlock).
async fn terminal_ctrl_c_reaches_the_command_once(h: &dyn Harness) {
    use std::io::Write;
    use std::os::unix::process::CommandExt as _;

    let name = unique("cli-tty");
    let count_file = pid_file("cli-sigint-count");
    // (SIGINTs, of which not sent by fairlock)
    let counts = || -> Option<(usize, usize)> {
        let text = std::fs::read_to_string(&count_file).ok()?;
        let (all, others) = text.split_once(' ')?;
        Some((all.parse().ok()?, others.parse().ok()?))
    };
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = fairlock(&h.url(10));
    cmd.env("FAIRLOCK_TEST_SIGINT_COUNT", &count_file)
        .args(["lock", &name, "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "sigint_counter_helper"])
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave));
    // fairlock leads a new session whose controlling terminal is the pty: its process
    // group is the terminal's foreground group, as when started from an interactive shell.
    let become_terminal_session = || -> std::io::Result<()> {
        nix::unistd::setsid()?;
        // SAFETY: ioctl on fd 0 (the pty's slave side), async-signal-safe.
        if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.as_std_mut().pre_exec(become_terminal_session);
    }
    let holder = cmd.spawn().unwrap();
    let mut master = std::fs::File::from(pty.master);
    let drain = master.try_clone().unwrap();
    // Keeps the terminal's output flowing; ends at EIO once no process has the slave open.
    std::thread::spawn(move || std::io::copy(&mut &drain, &mut std::io::sink()));
    eventually("the command runs", || async { counts() == Some((0, 0)) }).await;

    master.write_all(b"\x03").unwrap(); // VINTR: SIGINT to the foreground process group
    eventually("the command gets SIGINT", || async {
        counts().is_some_and(|(all, _)| all >= 1)
    })
    .await;
    // A second delivery, if any, follows within milliseconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        counts(),
        Some((1, 0)),
        "(SIGINTs, of which not from fairlock)"
    );

    signal(&holder, Signal::SIGTERM);
    let out = soon("holder exits", holder.wait_with_output())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(143), "the helper's end by SIGTERM");
    assert!(h.entries(&name).await.is_empty(), "lock not released");
    let _ = std::fs::remove_file(&count_file);
}

/// `--timeout 0` (`-w 0`) is `--try`: a free lock is taken and COMMAND runs (flock -w 0);
/// a taken one is refused at once. Bare numbers are seconds, fractions too.
async fn timeout_zero_means_try(h: &dyn Harness) {
    let name = unique("cli-w0");
    for timeout in ["0", "0s", "0.0"] {
        let out = run_cli(
            h,
            &[
                "lock",
                "--timeout",
                timeout,
                &name,
                "--",
                "sh",
                "-c",
                "exit 4",
            ],
        )
        .await;
        assert_eq!(out.status.code(), Some(4), "-w {timeout}: {}", stderr(&out));
    }
    let (mut holder, _) = hold(h, &name, "echo started; sleep 60").await;
    for args in [
        &["-w", "0"][..],
        &["--timeout", "0.25"],
        &["--timeout", "0.3s"],
    ] {
        let mut cmd = fairlock(&h.url(10));
        cmd.arg("lock").args(args).args([&name, "--", "true"]);
        assert_one_line_failure(&output(cmd).await, 75);
    }
    assert_eq!(
        h.entries(&name).await.len(),
        1,
        "a refused attempt left an entry"
    );
    holder.kill().await.unwrap();
}

/// `--ttl` takes durations (`4.5s`) and bare seconds (`5.5`) on every backend.
async fn ttl_takes_durations(h: &dyn Harness) {
    let name = unique("cli-ttl");
    for ttl in ["4.5s", "5.5", "6", "1m"] {
        let out = run_cli(h, &["lock", "--ttl", ttl, &name, "--", "true"]).await;
        assert_eq!(out.status.code(), Some(0), "--ttl {ttl}: {}", stderr(&out));
    }
    let mut cmd = fairlock(&h.url(10));
    cmd.env("FAIRLOCK_TTL", "4.5s")
        .args(["lock", &name, "--", "true"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "FAIRLOCK_TTL: {}", stderr(&out));
}

/// The etcd lease of a `lock` gets the TTL from `--ttl` (rounded up to seconds), else from
/// `FAIRLOCK_TTL`, over the URL's.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_lease_ttl_comes_from_the_flag_or_the_environment() {
    let h = common::EtcdHarness::new().await;
    for (flag, env, expected) in [
        (Some("6.5s"), None, 7),
        (Some("8"), Some("30"), 8),
        (None, Some("9"), 9),
        (None, None, 10), // the URL's
    ] {
        let name = unique("cli-lease-ttl");
        let mut cmd = fairlock(&h.url(10));
        if let Some(env) = env {
            cmd.env("FAIRLOCK_TTL", env);
        }
        cmd.arg("lock")
            .args(flag.map(|ttl| ["--ttl", ttl]).into_iter().flatten());
        cmd.args([&name, "--", "sh", "-c", "echo started; exec sleep 60"]);
        let mut holder = cmd.spawn().unwrap();
        let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
        let line = soon("holder starts", lines.next_line()).await.unwrap();
        assert_eq!(line.as_deref(), Some("started"));
        let key = h.entries(&name).await.remove(0);
        let raw = h.raw();
        let got = raw.kv_client().get(key, None).await.unwrap();
        let lease = got.kvs()[0].lease();
        let ttl = raw.lease_client().time_to_live(lease, None).await.unwrap();
        assert_eq!(
            ttl.granted_ttl(),
            expected,
            "--ttl {flag:?}, FAIRLOCK_TTL {env:?}"
        );
        holder.kill().await.unwrap();
    }
}

/// Options from the environment: FAIRLOCK_TIMEOUT and FAIRLOCK_CONFLICT_EXIT_CODE (a flag
/// wins over each), and --try over FAIRLOCK_TIMEOUT; a bad value is clap's error.
async fn options_come_from_the_environment(h: &dyn Harness) {
    let name = unique("cli-env-opts");
    let (mut holder, _) = hold(h, &name, "echo started; sleep 60").await;
    let attempt = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = fairlock(&h.url(10));
        cmd.envs(env.iter().copied())
            .arg("lock")
            .args(args)
            .args([&name, "--", "true"]);
        cmd
    };
    // Without FAIRLOCK_TIMEOUT these would wait for the holder's 60 s (beyond `SOON`).
    let out = output(attempt(&[("FAIRLOCK_TIMEOUT", "300ms")], &[])).await;
    assert_one_line_failure(&out, 75);
    let out = output(attempt(&[("FAIRLOCK_TIMEOUT", "600s")], &["--try"])).await;
    assert_one_line_failure(&out, 75);
    let out = output(attempt(&[("FAIRLOCK_TIMEOUT", "600s")], &["-w", "0.2"])).await;
    assert_one_line_failure(&out, 75);

    let code = [("FAIRLOCK_CONFLICT_EXIT_CODE", "9")];
    assert_one_line_failure(&output(attempt(&code, &["--try"])).await, 9);
    assert_one_line_failure(&output(attempt(&code, &["-n", "-E", "0"])).await, 0);
    assert_one_line_failure(
        &output(attempt(&[], &["-n", "--conflict-exit-code", "1"])).await,
        1,
    );

    for (var, value) in [
        ("FAIRLOCK_TIMEOUT", "soon"),
        ("FAIRLOCK_TTL", "-1"),
        ("FAIRLOCK_GRACE", "never"),
        ("FAIRLOCK_LOCK_DELAY", "later"),
        ("FAIRLOCK_CONFLICT_EXIT_CODE", "256"),
    ] {
        let out = output(attempt(&[(var, value)], &["--try"])).await;
        assert_clap_error(&out, value);
    }
    assert_eq!(
        h.entries(&name).await.len(),
        1,
        "a refused attempt left an entry"
    );
    holder.kill().await.unwrap();
}

/// `--lock-delay` (here from FAIRLOCK_LOCK_DELAY): after a holder was killed -9, the next
/// command starts no sooner than the delay after the holder's session ended (without it:
/// at the session's 2 s TTL); an out-of-range delay is refused with exit 2.
async fn lock_delay_follows_a_killed_holder(h: &dyn Harness) {
    let name = unique("cli-lock-delay");
    let mut cmd = fairlock(&h.url(2));
    cmd.args(["lock", "--lock-delay", "4s", &name, "--", "sh", "-c"]);
    let mut holder = cmd.arg("echo started; exec sleep 60").spawn().unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let line = soon("holder starts", lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));
    holder.kill().await.unwrap(); // SIGKILL: no release
    let killed = std::time::Instant::now();
    let mut next = fairlock(&h.url(10));
    next.env("FAIRLOCK_LOCK_DELAY", "4s")
        .args(["lock", &name, "--", "true"]);
    let out = output(next).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "started {waited:?} after the kill"
    );
    // A clean release: no delay for the next one (the lock-delay is 60 s).
    let mut again = fairlock(&h.url(10));
    again.args(["lock", "--try", "--lock-delay", "60s", &name, "--", "true"]);
    let out = output(again).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut bad = fairlock(&h.url(10));
    bad.args(["lock", "--lock-delay", "61s", &name, "--", "true"]);
    assert_one_line_failure(&output(bad).await, 2);
}

/// `-c SHELL_COMMAND` runs through `sh -c` with the FAIRLOCK_* variables, for lock and elect.
async fn shell_command_runs_through_sh(h: &dyn Harness) {
    let name = unique("cli-c");
    for sub in [&["lock"][..], &["elect", "--value", "v"]] {
        let mut cmd = fairlock(&h.url(10));
        cmd.args(sub).args([
            &name,
            "-c",
            "echo \"$FAIRLOCK_NAME\" $FAIRLOCK_TOKEN | tr a-z A-Z; exit 6",
        ]);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(6), "{sub:?}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(fields[0], name.to_uppercase(), "{sub:?}");
        assert!(fields[1].parse::<u64>().unwrap() > 0, "{sub:?}");
        assert!(h.entries(&name).await.is_empty(), "{sub:?}: not released");
    }
}

/// The holder's identity (host, pid, user, start time) is the lock entry's value, and
/// `status` shows it (`--json` also parsed).
async fn status_shows_who_holds(h: &dyn Harness) {
    let name = unique("cli-who");
    let (mut holder, _) = hold(h, &name, "echo started; sleep 60").await;
    let pid = holder.id().unwrap();
    let out = run_cli(h, &["status", "--json", &name]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = &doc["entries"][0];
    let who = &entry["holder"];
    assert_eq!(who["pid"], pid, "{doc}");
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(who["host"], host.to_string_lossy().as_ref(), "{doc}");
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap();
    assert_eq!(who["user"], user.name, "{doc}");
    let started = humantime::parse_rfc3339(who["started"].as_str().unwrap()).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap();
    assert!(age < Duration::from_secs(3600), "{doc}");
    let value = entry["value"].as_str().unwrap();
    assert!(
        value.starts_with("host=") && value.contains(&format!(" pid={pid} ")),
        "{doc}"
    );

    let out = run_cli(h, &["status", &name]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().nth(1).unwrap().ends_with(value), "{table}");
    holder.kill().await.unwrap();
}

/// What `fairlock lock NAME` without a command printed: key, token, sequencer.
struct Printed {
    key: String,
    token: u64,
    sequencer: String,
}

/// Starts `fairlock lock NAME` without a command; returns it with what it printed.
async fn hold_without_command(h: &dyn Harness, name: &str) -> (Child, Printed, Lines) {
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["lock", name]);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let key = soon("key printed", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let token = soon("token printed", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let sequencer = soon("sequencer printed", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let token = token.parse().unwrap();
    let printed = Printed {
        key,
        token,
        sequencer,
    };
    (child, printed, lines)
}

/// `fairlock lock NAME` holds the lock until SIGINT, SIGTERM or SIGHUP, printing the key,
/// the fencing token and the sequencer first; then releases it and exits 0.
async fn lock_without_command_holds_until_signalled(h: &dyn Harness) {
    let name = unique("cli-hold");
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let (holder, printed, mut lines) = hold_without_command(h, &name).await;
        let Printed {
            key,
            token,
            sequencer,
        } = printed;
        let parsed: fairlock::Sequencer = sequencer.parse().unwrap();
        assert_eq!(
            (parsed.key(), parsed.fencing_token()),
            (key.as_str(), token)
        );
        let out = run_cli(h, &["check", &sequencer]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(h.entries(&name).await, std::slice::from_ref(&key), "{sig}");
        assert!(h.entries_prefix_of(&name, &key), "{key}");
        assert!(token > 0);
        let out = run_cli(h, &["lock", "--try", &name, "--", "true"]).await;
        assert_one_line_failure(&out, 75);
        let out = run_cli(h, &["status", "--json", &name]).await;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["entries"][0]["fencing_token"], token, "{doc}");
        assert_eq!(doc["entries"][0]["key"], key.as_str(), "{doc}");

        signal(&holder, sig);
        assert_eq!(lines.next_line().await.unwrap(), None, "{sig}: more output");
        let out = soon("holder exits", holder.wait_with_output())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sig}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{sig}: {}", stderr(&out));
        assert!(h.entries(&name).await.is_empty(), "{sig}: not released");
    }
}

/// Without a command, a lost lock ends the hold with exit 74 and one line.
async fn lock_without_command_exits_74_when_lost(h: &dyn Harness) {
    let name = unique("cli-hold-lost");
    let (holder, printed, _) = hold_without_command(h, &name).await;
    h.delete_entry(&printed.key).await;
    let out = soon("holder exits", holder.wait_with_output())
        .await
        .unwrap();
    assert_one_line_failure(&out, 74);
}

/// Diagnostics: nothing by default, info with -v, debug with -vv; RUST_LOG decides when set.
#[tokio::test]
async fn verbosity_and_rust_log() {
    let run = |args: &[&str], rust_log: Option<&str>| {
        let mut cmd = fairlock("memory://");
        cmd.env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.args(args).args(["lock", "x", "--", "true"]);
        output(cmd)
    };
    let quiet = run(&[], None).await;
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(stderr(&quiet), "");
    let info = stderr(&run(&["-v"], None).await);
    assert!(
        info.contains("INFO") && info.contains("lock acquired"),
        "{info}"
    );
    assert!(!info.contains("DEBUG"), "{info}");
    let debug = stderr(&run(&["-vv"], None).await);
    assert!(
        debug.contains("DEBUG") && debug.contains("connecting"),
        "{debug}"
    );
    let from_env = stderr(&run(&[], Some("fairlock=debug")).await);
    assert!(from_env.contains("DEBUG"), "{from_env}");
    let off = run(&["-vv"], Some("off")).await;
    assert_eq!(off.status.code(), Some(0));
    assert_eq!(stderr(&off), "");
}

/// The backend password never reaches stderr: not in diagnostics (-vv, RUST_LOG=trace), not
/// in error messages, not even for a malformed URL.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn the_backend_password_is_never_printed() {
    let secret = "hunter2secret";
    for (url, args, rust_log) in [
        (
            format!("etcd://root:{secret}@{}/x", common::etcd_endpoint()),
            &["-vv", "status", "x"][..],
            None,
        ),
        (
            format!("etcd://root:{secret}@{}/x", common::etcd_endpoint()),
            &["lock", "x", "--", "true"],
            Some("trace"),
        ),
        (
            format!("etcd://root:{secret}@127.0.0.1:notaport/x"),
            &["-vv", "lock", "x", "--", "true"],
            None,
        ),
        (
            format!("etcd//root:{secret}@127.0.0.1:2379/x"),
            &["-vv", "lock", "x", "--", "true"],
            None,
        ),
        (
            format!("etcd://root:{secret}@127.0.0.1:2379/x?ttl=zz"),
            &["leader", "x"],
            None,
        ),
    ] {
        let mut cmd = fairlock(&url);
        cmd.env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.args(args);
        let out = output(cmd).await;
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{url} {args:?}: {err}"); // auth is not enabled
        assert!(!err.contains(secret), "{url} {args:?}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    }
}

/// `observe | head -1`: once nobody reads its output, `observe` ends (exit 0) at the next
/// leader instead of panicking on the closed pipe.
async fn observe_ends_when_its_reader_goes(h: &dyn Harness) {
    let name = unique("cli-observe-pipe");
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["observe", &name]);
    let mut observer = cmd.spawn().unwrap();
    let mut seen = BufReader::new(observer.stdout.take().unwrap()).lines();
    let (alpha, _) = lead(h, &name, "alpha", "echo started; exec sleep 60").await;
    let line = soon("alpha observed", seen.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("alpha"));
    drop(seen); // the reader goes, like `head -1`
    let mut cmd = fairlock(&h.url(10));
    cmd.args(["elect", "--value", "beta", &name, "--", "sleep", "60"]);
    let mut beta = cmd.spawn().unwrap();
    eventually("beta queued", || async {
        h.entries(&name).await.len() == 2
    })
    .await;
    signal(&alpha, Signal::SIGTERM);
    let out = soon("observer exits", observer.wait_with_output())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    soon("alpha exits", alpha.wait_with_output()).await.unwrap();
    signal(&beta, Signal::SIGTERM);
    soon("beta exits", beta.wait()).await.unwrap();
}

/// `status`, `leader` and `observe` read without a session: no etcd lease while `observe`
/// runs (its URL asks for a TTL no other test uses, to tell its lease from others').
#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_readers_open_no_lease() {
    let h = common::EtcdHarness::new().await;
    let name = unique("cli-lazy");
    let url = h.url(10).replace("ttl=10", "ttl=3671");
    for args in [&["status", &name][..], &["leader", &name]] {
        let mut cmd = fairlock(&url);
        cmd.args(args);
        let out = output(cmd).await;
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let mut cmd = fairlock(&url);
    cmd.args(["observe", &name]);
    let mut observer = cmd.spawn().unwrap();
    let mut seen = BufReader::new(observer.stdout.take().unwrap()).lines();
    let (mut leader, _) = lead(&h, &name, "alpha", "echo started; exec sleep 60").await;
    let line = soon("alpha observed", seen.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("alpha"));
    let raw = h.raw();
    let leases = raw.lease_client().leases().await.unwrap();
    let mut ours = 0;
    for lease in leases.leases() {
        if let Ok(ttl) = raw.lease_client().time_to_live(lease.id(), None).await {
            ours += usize::from(ttl.granted_ttl() == 3671);
        }
    }
    signal(&observer, Signal::SIGINT);
    let status = soon("observer exits", observer.wait()).await.unwrap();
    assert_eq!(status.code(), Some(130));
    leader.kill().await.unwrap();
    assert_eq!(ours, 0, "the observer opened a lease");
}

/// COMMAND gets `FAIRLOCK_SEQUENCER`, and `fairlock check` (which reads it by default)
/// answers current (exit 0) while the lock is held, lost (5) once it is released, and
/// superseded (4) once a newer holder holds it; bad sequencers exit 2 with one line.
async fn check_exit_codes_follow_the_holder(h: &dyn Harness) {
    let name = unique("cli-check");
    let bin = env!("CARGO_BIN_EXE_fairlock");
    let script = format!(
        "echo \"$FAIRLOCK_SEQUENCER\"; {bin} check; echo \"check $?\"; \
         {bin} check \"$FAIRLOCK_SEQUENCER\"; echo \"check $?\""
    );
    let out = run_cli(h, &["lock", &name, "--", "sh", "-c", &script]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[1..],
        ["current", "check 0", "current", "check 0"],
        "{stdout}"
    );
    let sequencer: fairlock::Sequencer = lines[0].parse().unwrap();
    assert_eq!(
        (sequencer.name(), sequencer.kind()),
        (name.as_str(), fairlock::QueueKind::Lock)
    );
    assert!(h.entries_prefix_of(&name, sequencer.key()), "{sequencer}");

    let out = run_cli(h, &["check", lines[0]]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lost\n");
    let (mut holder, _) = hold(h, &name, "echo started; sleep 60").await;
    let out = run_cli(h, &["check", lines[0]]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "superseded\n");
    holder.kill().await.unwrap();

    let other = lines[0].replacen(&format!(":{}:", sequencer.backend()), ":memory:", 1);
    for bad in ["fl1:etcd", "", &other] {
        let out = run_cli(h, &["check", bad]).await;
        assert_one_line_failure(&out, 2);
        assert!(
            stderr(&out).contains("invalid sequencer"),
            "{}",
            stderr(&out)
        );
    }
}

/// `fairlock elect` gives COMMAND the leader's sequencer, of kind election.
async fn elect_exports_its_sequencer(h: &dyn Harness) {
    let name = unique("cli-elect-seq");
    let bin = env!("CARGO_BIN_EXE_fairlock");
    let script = format!("echo \"$FAIRLOCK_SEQUENCER\"; {bin} check");
    let out = run_cli(
        h,
        &["elect", "--value", "v", &name, "--", "sh", "-c", &script],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.get(1), Some(&"current"), "{stdout}");
    let sequencer: fairlock::Sequencer = lines[0].parse().unwrap();
    assert_eq!(sequencer.kind(), fairlock::QueueKind::Election);
    let out = run_cli(h, &["check", lines[0]]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

macro_rules! cli_tests {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            cli_tests!(@tests $harness;
                runs_command_with_env_and_passes_its_exit_code,
                try_and_timeout_exit_75_and_leave_no_entry, signals_while_waiting_leave_the_queue,
                signals_while_holding_go_to_the_command, lost_lock_stops_the_command_and_exits_74,
                command_that_ignores_sigterm_is_killed_after_grace, bad_input_exits_2_with_one_line,
                missing_command_exits_127, elect_runs_command_while_leading,
                leader_and_status_report_the_queue, observe_prints_each_leader,
                elect_interrupted_while_campaigning_withdraws, lost_leadership_exits_74,
                lost_lock_stops_the_whole_group, lost_leadership_stops_the_whole_group,
                killed_fairlock_takes_the_command_group_along,
                killed_fairlock_ends_the_command_by_pdeathsig,
                sighup_while_holding_reaches_the_command, signal_during_grace_is_honoured,
                terminal_ctrl_c_reaches_the_command_once,
                lost_lock_kills_a_group_member_that_ignores_sigterm, timeout_zero_means_try,
                ttl_takes_durations, options_come_from_the_environment,
                shell_command_runs_through_sh, status_shows_who_holds,
                lock_without_command_holds_until_signalled,
                lock_without_command_exits_74_when_lost, observe_ends_when_its_reader_goes,
                check_exit_codes_follow_the_holder, elect_exports_its_sequencer,
                lock_delay_follows_a_killed_holder,
                shared_locks_hold_together_and_exclude_a_plain_lock,
                several_names_are_taken_all_or_nothing, semaphore_runs_up_to_limit_commands);
        }
    };
    (@tests $harness:expr; $($test:ident),*) => {
        $(
            #[tokio::test]
            async fn $test() {
                super::$test(&$harness).await;
            }
        )*
    };
}

#[cfg(feature = "etcd")]
cli_tests!(etcd, common::EtcdHarness::new().await);
#[cfg(feature = "zookeeper")]
cli_tests!(zookeeper, common::ZkHarness::new().await);

/// `fairlock` on the etcd that requires mutual TLS and a password (scripts/secure-etcd.sh):
/// the URL carries no secret; the password comes from the environment or a file.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_over_tls_with_password_from_the_environment() {
    let h = common::SecureEtcdHarness::new().await;
    let url = format!(
        "etcd://{}/{}?{}",
        common::secure_etcd_endpoint(),
        h.prefix(),
        common::SecureEtcdHarness::tls_query("other")
    );
    let name = unique("cli-tls");
    // The password itself, then a file with it.
    let password = common::secure_etcd_password("fairlock");
    let file = common::secure_etcd_password_file("fairlock");
    for (var, value) in [
        ("FAIRLOCK_PASSWORD", password.as_str()),
        ("FAIRLOCK_PASSWORD_FILE", file.as_str()),
    ] {
        let mut cmd = fairlock(&url);
        cmd.env("FAIRLOCK_USER", "fairlock").env(var, value).args([
            "lock",
            &name,
            "--",
            "sh",
            "-c",
            "echo \"$FAIRLOCK_TOKEN\"; exit 7",
        ]);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(7), "{var}: {}", stderr(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    }
    // A reader (status) takes the same credentials.
    let mut cmd = fairlock(&url);
    cmd.env("FAIRLOCK_USER", "fairlock")
        .env("FAIRLOCK_PASSWORD_FILE", &file)
        .args(["status", &name]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "status: {}", stderr(&out));
    assert!(h.entries(&name).await.is_empty());

    // A wrong password: exit 77 (EX_NOPERM), one line, and the password is not in it.
    let mut cmd = fairlock(&url);
    cmd.env("FAIRLOCK_USER", "fairlock")
        .env("FAIRLOCK_PASSWORD", "not-the-password")
        .args(["lock", &name, "--", "true"]);
    let out = output(cmd).await;
    assert_one_line_failure(&out, 77);
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("not-the-password"));
    // A user without permission: 77 as well.
    let mut cmd = fairlock(&url);
    cmd.env("FAIRLOCK_USER", "other")
        .env(
            "FAIRLOCK_PASSWORD_FILE",
            common::secure_etcd_password_file("other"),
        )
        .args(["lock", &name, "--", "true"]);
    let out = output(cmd).await;
    assert_one_line_failure(&out, 77);
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
}
