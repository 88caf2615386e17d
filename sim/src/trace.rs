//! The readable trace of a run: what each actor did and what the server saw, stamped with
//! simulated time. Kept only when asked (a failing seed is run again with it on: the run is
//! the same, so the trace is the failure's).

use std::fmt::Write;

use tokio::time::Instant;

pub struct Trace {
    start: Instant,
    on: bool,
    lines: Vec<String>,
    /// A digest of every line, kept whether or not the lines are: two runs of one seed
    /// must give the same digest.
    digest: u64,
}

impl Trace {
    pub fn new(on: bool) -> Trace {
        Trace {
            start: Instant::now(),
            on,
            lines: Vec::new(),
            digest: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Milliseconds of simulated time since the start.
    pub fn millis(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Records an event (`what` is only formatted when the trace is kept, or for the
    /// digest: always, so keep such events few; see [`Trace::step`]).
    pub fn event(&mut self, who: &str, what: impl FnOnce() -> String) {
        let line = format!("{:>10.3} ms  {who:<8} {}", self.millis(), what());
        self.fold(&line);
        if self.on {
            self.lines.push(line);
        }
    }

    /// Records a detail that only the kept trace shows (server changes, requests): not in
    /// the digest, so it costs nothing unless the trace is on.
    pub fn detail(&mut self, who: &str, what: impl FnOnce() -> String) {
        if self.on {
            let line = format!("{:>10.3} ms  {who:<8} {}", self.millis(), what());
            self.lines.push(line);
        }
    }

    fn fold(&mut self, line: &str) {
        // FNV-1a.
        for b in line.bytes() {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let mut out = String::new();
        let skip = self.lines.len().saturating_sub(n);
        if skip > 0 {
            let _ = writeln!(out, "  … {skip} earlier lines …");
        }
        for line in &self.lines[skip..] {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}
