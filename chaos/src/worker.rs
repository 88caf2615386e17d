//! A worker process: several clients, each looping acquire -> read the counter -> work ->
//! guarded write of counter+1 -> release, logging every step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fairlock::{Acquire, Client, Error, LostReason, WriteOp};
use tokio_util::sync::CancellationToken;

use crate::event::{Event, Log};

/// What a worker is told on its command line.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Backend URL (the cluster's endpoints, or proxies in front of them).
    #[arg(long)]
    pub url: String,
    /// Worker number.
    #[arg(long)]
    pub id: u32,
    /// Generation (replacements of a killed worker count up).
    #[arg(long, default_value_t = 0)]
    pub generation: u32,
    /// Clients (sessions) in this process.
    #[arg(long, default_value_t = 3)]
    pub clients: u32,
    /// The lock's name.
    #[arg(long)]
    pub lock: String,
    /// The counter's key (etcd key or ZooKeeper path).
    #[arg(long)]
    pub counter: String,
    /// Where to append the events.
    #[arg(long)]
    pub log: PathBuf,
    /// The worker stops when this file exists.
    #[arg(long)]
    pub stop_file: PathBuf,
}

/// A small xorshift generator: the mix of modes and work times needs no quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn error_kind(err: &Error) -> &'static str {
    match err {
        Error::SessionExpired => "SessionExpired",
        Error::LockLost(_) => "LockLost",
        Error::Closed => "Closed",
        Error::Timeout(_) => "Timeout",
        Error::OutcomeUnknown { .. } => "OutcomeUnknown",
        Error::Unreachable { .. } => "Unreachable",
        Error::Backend { .. } => "Backend",
        Error::InvalidConfig(_) => "InvalidConfig",
        Error::InvalidName { .. } => "InvalidName",
        _ => "Other",
    }
}

fn error_event(op: &str, err: &Error) -> Event {
    Event {
        op: Some(op.into()),
        kind: Some(error_kind(err).into()),
        err: Some(format!("{err:#}").chars().take(300).collect()),
        ..Event::new("error")
    }
}

pub async fn run(args: WorkerArgs) -> std::process::ExitCode {
    let log = match Log::create(&args.log, args.id, args.generation) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("cannot open {}: {e}", args.log.display());
            return std::process::ExitCode::from(2);
        }
    };
    let panic_log = log.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        panic_log.write(Event {
            err: Some(info.to_string()),
            ..Event::new("panic")
        });
        default_hook(info);
    }));
    log.write(Event {
        pid: Some(std::process::id()),
        ..Event::new("start")
    });

    let stop = CancellationToken::new();
    // Stop when told (the stop file) or when the runner is gone (re-parented).
    let parent = std::os::unix::process::parent_id();
    let (stop2, stop_file) = (stop.clone(), args.stop_file.clone());
    tokio::spawn(async move {
        loop {
            if stop_file.exists() || std::os::unix::process::parent_id() != parent {
                stop2.cancel();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let args = Arc::new(args);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let seed = crate::event::now_us() ^ ((std::process::id() as u64) << 20) ^ (c as u64 * 7919);
        tasks.push(tokio::spawn(client_loop(
            args.clone(),
            c,
            log.clone(),
            stop.clone(),
            Rng::new(seed),
        )));
    }
    let mut code = 0;
    for task in tasks {
        if task.await.is_err() {
            code = 1; // a panic: logged by the hook
        }
    }
    log.write(Event::new("exit"));
    std::process::ExitCode::from(code)
}

async fn connect(args: &WorkerArgs, c: u32, log: &Log, stop: &CancellationToken) -> Option<Client> {
    loop {
        let started = std::time::Instant::now();
        match Client::connect(&args.url).await {
            Ok(client) => {
                log.write(Event {
                    c,
                    session: Some(client.session_id()),
                    ms: Some(started.elapsed().as_millis() as u64),
                    ..Event::new("connected")
                });
                return Some(client);
            }
            Err(e) => log.write(Event {
                c,
                ..error_event("connect", &e)
            }),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Logs each loss of the client's session and each new session after it.
async fn watch_session(client: Client, c: u32, log: Log, stop: CancellationToken) {
    loop {
        let id = client.session_id();
        let signal = client.session_lost();
        let reason = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            reason = signal => reason,
        };
        if stop.is_cancelled() {
            return;
        }
        log.write(Event {
            c,
            session: Some(id.clone()),
            kind: Some(format!("{reason:?}")),
            ..Event::new("session_lost")
        });
        // The next request opens a new session; wait for it before re-arming.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let now = client.session_id();
            if now != id {
                log.write(Event {
                    c,
                    session: Some(now),
                    ..Event::new("session_changed")
                });
                break;
            }
        }
    }
}

async fn client_loop(
    args: Arc<WorkerArgs>,
    c: u32,
    log: Log,
    stop: CancellationToken,
    mut rng: Rng,
) {
    let Some(client) = connect(&args, c, &log, &stop).await else {
        return;
    };
    tokio::spawn(watch_session(client.clone(), c, log.clone(), stop.clone()));
    let mutex = match client.mutex(&args.lock) {
        Ok(m) => m,
        Err(e) => {
            log.write(Event {
                c,
                ..error_event("mutex", &e)
            });
            return;
        }
    };
    let mut hold = 0u64;
    while !stop.is_cancelled() {
        let (mode, name) = match rng.range(0, 9) {
            0..=5 => (Acquire::Wait, "lock"),
            6 | 7 => (Acquire::Try, "try_lock"),
            _ => (
                Acquire::Timeout(Duration::from_millis(rng.range(500, 3000))),
                "lock_timeout",
            ),
        };
        log.write(Event {
            c,
            mode: Some(name.into()),
            ..Event::new("attempt")
        });
        let started = std::time::Instant::now();
        let result = tokio::select! {
            result = mutex.acquire(mode) => result,
            _ = stop.cancelled() => break,
        };
        let guard = match result {
            Ok(Some(guard)) => guard,
            Ok(None) => {
                log.write(Event {
                    c,
                    mode: Some(name.into()),
                    ms: Some(started.elapsed().as_millis() as u64),
                    ..Event::new("not_acquired")
                });
                tokio::time::sleep(Duration::from_millis(rng.range(20, 100))).await;
                continue;
            }
            Err(e) => {
                log.write(Event {
                    c,
                    ..error_event(name, &e)
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        hold += 1;
        let h = Some(hold);
        log.write(Event {
            c,
            h,
            mode: Some(name.into()),
            token: Some(guard.fencing_token()),
            key: Some(guard.key().to_owned()),
            session: Some(client.session_id()),
            ms: Some(started.elapsed().as_millis() as u64),
            ..Event::new("acquired")
        });
        let lost = guard.lost();
        let lost_log = log.clone();
        tokio::spawn(async move {
            let reason = lost.await;
            if reason != LostReason::Released {
                lost_log.write(Event {
                    c,
                    h,
                    kind: Some(format!("{reason:?}")),
                    ..Event::new("lost")
                });
            }
        });

        let value = match client.get(&args.counter).await {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).trim().parse::<u64>().ok(),
            Ok(None) => None,
            Err(e) => {
                log.write(Event {
                    c,
                    h,
                    ..error_event("get", &e)
                });
                release(guard, c, h, &log).await;
                continue;
            }
        };
        let Some(value) = value else {
            log.write(Event {
                c,
                h,
                op: Some("get".into()),
                kind: Some("BadCounter".into()),
                ..Event::new("error")
            });
            release(guard, c, h, &log).await;
            continue;
        };
        log.write(Event {
            c,
            h,
            value: Some(value),
            ..Event::new("read")
        });
        // Work: usually short, one in ten holds much longer.
        let work = if rng.range(0, 9) == 0 {
            rng.range(300, 1200)
        } else {
            rng.range(2, 20)
        };
        tokio::time::sleep(Duration::from_millis(work)).await;

        let next = value + 1;
        log.write(Event {
            c,
            h,
            value: Some(next),
            token: Some(guard.fencing_token()),
            ..Event::new("write_sent")
        });
        let started = std::time::Instant::now();
        let op = WriteOp::put(args.counter.clone(), next.to_string());
        let outcome = guard.guarded_write(&[op]).await;
        let ms = Some(started.elapsed().as_millis() as u64);
        let mut event = match &outcome {
            Ok(()) => Event::new("write_ack"),
            Err(Error::LockLost(reason)) => Event {
                kind: Some(format!("{reason:?}")),
                ..Event::new("write_refused")
            },
            Err(Error::SessionExpired) => Event {
                kind: Some("SessionExpired".into()),
                ..Event::new("write_refused")
            },
            // Anything else was (or may have been) sent: its outcome is unknown.
            Err(e) => Event {
                kind: Some(error_kind(e).into()),
                err: Some(format!("{e:#}").chars().take(300).collect()),
                ..Event::new("write_unknown")
            },
        };
        event.c = c;
        event.h = h;
        event.value = Some(next);
        event.token = Some(guard.fencing_token());
        event.ms = ms;
        log.write(event);
        release(guard, c, h, &log).await;
    }
    // Ending the session releases whatever is left; bounded, so a stop never hangs here.
    match tokio::time::timeout(Duration::from_secs(15), client.close()).await {
        Ok(Ok(())) => log.write(Event {
            c,
            ..Event::new("closed")
        }),
        Ok(Err(e)) => log.write(Event {
            c,
            ..error_event("close", &e)
        }),
        Err(_) => log.write(Event {
            c,
            op: Some("close".into()),
            kind: Some("Hang".into()),
            ..Event::new("error")
        }),
    }
}

async fn release(guard: fairlock::LockGuard, c: u32, h: Option<u64>, log: &Log) {
    log.write(Event {
        c,
        h,
        ..Event::new("release_sent")
    });
    let started = std::time::Instant::now();
    match guard.release().await {
        Ok(()) => log.write(Event {
            c,
            h,
            ms: Some(started.elapsed().as_millis() as u64),
            ..Event::new("released")
        }),
        Err(e) => log.write(Event {
            c,
            h,
            ..error_event("release", &e)
        }),
    }
}
