//! Deterministic simulation support (feature `simulation`; not a stable API).
//!
//! fairlock's own etcd backend, unchanged, against a simulated etcd server ([`SimEtcd`])
//! behind a network that delays, loses, freezes and resets messages ([`SimConn`]), on
//! tokio's paused clock on one thread: a run follows from its seed alone. The runner, its
//! workload, nemesis and invariant checks are the `fairlock-sim` crate of this repository;
//! this module is what needs the library's insides:
//! - [`SimEtcd`], [`SimConn`]: the server model (`model.rs`) and the network (`net.rs`);
//!   [`Client::simulated`](crate::Client::simulated) connects a client through a `SimConn`.
//! - [`GoSession`], [`GoMutex`]: a foreign contender queueing as Go's Mutex does.
//! - [`install_clock`]: lease deadlines (the suspend-aware clock) follow tokio's clock on
//!   this thread, so that paused time moves them too.
//! - [`mutate`]: puts one past defect back ([`Mutant`]), to check that the simulator finds
//!   it.

mod go;
mod model;
mod net;

use std::cell::Cell;
use std::time::Duration;

pub use crate::mutant::Mutant;
pub use go::{GoMutex, GoSession};
pub use model::{Change, KeyInfo, MIN_TTL};
pub use net::{Faults, Observed, SimConn, SimEtcd, View, RESET_AFTER, SYNC_INTERVAL};

thread_local! {
    static CLOCK: Cell<Option<tokio::time::Instant>> = const { Cell::new(None) };
    static MUTANT: Cell<Option<Mutant>> = const { Cell::new(None) };
}

/// Makes the suspend-aware clock of this thread follow tokio's clock (from now), for a
/// simulation on a paused runtime. Call it inside the runtime.
pub fn install_clock() {
    CLOCK.with(|c| c.set(Some(tokio::time::Instant::now())));
}

/// The simulated clock's reading, if installed on this thread.
pub(crate) fn clock() -> Option<Duration> {
    // Offset so that the simulated origin is never at zero (deadlines subtract margins).
    CLOCK.with(|c| {
        c.get()
            .map(|origin| origin.elapsed() + Duration::from_secs(3600))
    })
}

/// Ends this thread's simulation: the real clock again, no mutant.
pub fn clear() {
    CLOCK.with(|c| c.set(None));
    MUTANT.with(|m| m.set(None));
}

/// Puts `mutant` back on this thread (`None`: the code as it is).
pub fn mutate(mutant: Option<Mutant>) {
    MUTANT.with(|m| m.set(mutant));
}

pub(crate) fn mutated() -> Option<Mutant> {
    MUTANT.with(|m| m.get())
}
