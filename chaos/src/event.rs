//! The event log: one JSON object per line, one file per worker process (and one for the
//! nemesis), every event stamped with the wall clock. All processes run on one machine, so
//! their timestamps are comparable.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One logged event. `ev` says what happened; the other fields depend on it.
///
/// Worker events: `start`, `connected`, `attempt`, `acquired`, `not_acquired`, `error`,
/// `lost`, `read`, `write_sent`, `write_ack`, `write_refused`, `write_unknown`,
/// `release_sent`, `released`, `session_lost`, `session_changed`, `closed`, `exit`, `panic`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Event {
    /// Wall clock, µs since the epoch.
    pub t: u64,
    /// Worker number.
    pub w: u32,
    /// Worker generation (a replacement of a killed worker has the next one).
    pub g: u32,
    /// Client number within the worker.
    #[serde(default)]
    pub c: u32,
    /// What happened.
    pub ev: String,
    /// Hold number within the client (events of one acquisition share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<u64>,
    /// Acquisition mode: lock, try_lock, lock_timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// Queue key of the hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Counter value read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// The operation that failed (`error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// Error variant or lost reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    /// A duration in ms (how long an operation took).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Process id (`start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Event {
    pub fn new(ev: &str) -> Event {
        Event {
            t: now_us(),
            ev: ev.to_owned(),
            ..Event::default()
        }
    }
}

/// An append-only JSON-lines file. Each event is one `write` call on an unbuffered file, so
/// a `kill -9` loses at most the event being written.
#[derive(Clone)]
pub struct Log {
    file: Arc<Mutex<File>>,
    w: u32,
    g: u32,
}

impl Log {
    pub fn create(path: &Path, w: u32, g: u32) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Log {
            file: Arc::new(Mutex::new(file)),
            w,
            g,
        })
    }

    pub fn write(&self, mut event: Event) {
        event.w = self.w;
        event.g = self.g;
        if event.t == 0 {
            event.t = now_us();
        }
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        if let Ok(mut file) = self.file.lock() {
            let _ = file.write_all(&line);
        }
    }
}

/// Reads all events of a JSON-lines file; a torn last line (kill -9) is skipped.
pub fn read_all(path: &Path) -> std::io::Result<Vec<Event>> {
    let file = File::open(path)?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect())
}

/// Follows a growing log file: each call returns the complete lines added since the last.
pub struct Tail {
    path: std::path::PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
        }
    }

    pub fn read_new(&mut self) -> Vec<Event> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        let Ok(n) = std::io::Read::read_to_string(&mut file, &mut text) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.push_str(&text);
        let mut events = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            if let Ok(event) = serde_json::from_str(line.trim_end()) {
                events.push(event);
            }
        }
        events
    }
}
