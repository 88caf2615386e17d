//! What the leader loop is doing, and whether it is stuck: kept by the loop, read by the
//! handle. Stuck states are computed when asked, from timestamps, so no timer runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::election::Leadership;

/// The state of a leader loop, from [`LeaderHandle::health`](super::LeaderHandle::health).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Campaigning (or waiting to campaign again after a failure, within the grace).
    Campaigning,
    /// Leading: the work of term `term` runs.
    Leading {
        /// The term's number.
        term: u64,
        /// The leadership's fencing token.
        fencing_token: u64,
    },
    /// The work was told to stop and has not yet (within the grace), or the loop is
    /// resigning.
    Stopping {
        /// The term's number.
        term: u64,
    },
    /// The loop has ended.
    Stopped,
    /// The loop is stuck; a health endpoint should fail.
    Stuck(Stuck),
}

impl Health {
    /// Whether the loop is stuck.
    pub fn is_stuck(&self) -> bool {
        matches!(self, Health::Stuck(_))
    }
}

/// How a leader loop is stuck.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stuck {
    /// The work was cancelled (leadership lost, session suspended, shutdown) more than the
    /// grace period ago and still runs: it may be acting without leadership, and the loop
    /// cannot resign or campaign again until it stops.
    CancellationIgnored {
        /// The term's number.
        term: u64,
        /// How long since the cancellation.
        waited: Duration,
    },
    /// Every campaign for longer than the grace period failed.
    CampaignFailing {
        /// Failed campaigns in a row.
        attempts: u32,
        /// Since the first of them.
        failing_for: Duration,
        /// The last one's error.
        last_error: String,
    },
    /// Campaigning for longer than the grace period while the election's observer saw
    /// nobody leading: the candidacy should have won (or been written) long ago.
    CampaignStalled {
        /// How long.
        waited: Duration,
    },
}

enum Phase {
    Campaigning {
        since: Instant,
        failures: u32,
        failing_since: Option<Instant>,
        last_error: String,
    },
    Leading {
        term: u64,
        leadership: Arc<Leadership>,
        cancel: CancellationToken,
    },
    Stopping {
        term: u64,
        since: Instant,
        work_done: bool,
    },
    Stopped,
}

pub(crate) struct Shared {
    grace: Duration,
    phase: Mutex<Phase>,
    /// Since when the observer has seen nobody leading (`None`: someone leads, or not
    /// known yet).
    nobody_leads: Mutex<Option<Instant>>,
}

impl Shared {
    pub(crate) fn new(grace: Duration) -> Self {
        Shared {
            grace,
            phase: Mutex::new(Phase::Campaigning {
                since: Instant::now(),
                failures: 0,
                failing_since: None,
                last_error: String::new(),
            }),
            nobody_leads: Mutex::new(None),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn campaigning(&self) {
        let mut phase = self.phase();
        if !matches!(*phase, Phase::Campaigning { .. }) {
            *phase = Phase::Campaigning {
                since: Instant::now(),
                failures: 0,
                failing_since: None,
                last_error: String::new(),
            };
        }
    }

    pub(crate) fn campaign_failed(&self, error: &crate::Error) {
        let mut phase = self.phase();
        if let Phase::Campaigning {
            failures,
            failing_since,
            last_error,
            ..
        } = &mut *phase
        {
            *failures += 1;
            failing_since.get_or_insert_with(Instant::now);
            *last_error = error.to_string();
        }
    }

    pub(crate) fn leading(
        &self,
        term: u64,
        leadership: Arc<Leadership>,
        cancel: CancellationToken,
    ) {
        *self.phase() = Phase::Leading {
            term,
            leadership,
            cancel,
        };
    }

    pub(crate) fn stopping(&self, term: u64) {
        *self.phase() = Phase::Stopping {
            term,
            since: Instant::now(),
            work_done: false,
        };
    }

    pub(crate) fn work_done(&self) {
        if let Phase::Stopping { work_done, .. } = &mut *self.phase() {
            *work_done = true;
        }
    }

    pub(crate) fn stopped(&self) {
        *self.phase() = Phase::Stopped;
    }

    pub(crate) fn observed(&self, somebody_leads: bool) {
        let mut since = self.nobody_leads.lock().unwrap_or_else(|e| e.into_inner());
        match somebody_leads {
            true => *since = None,
            false => {
                since.get_or_insert_with(Instant::now);
            }
        }
    }

    pub(crate) fn is_leading(&self) -> bool {
        match &*self.phase() {
            Phase::Leading {
                leadership, cancel, ..
            } => !cancel.is_cancelled() && !leadership.is_lost(),
            _ => false,
        }
    }

    pub(crate) fn health(&self) -> Health {
        let grace = self.grace;
        let nobody_leads = *self.nobody_leads.lock().unwrap_or_else(|e| e.into_inner());
        match &*self.phase() {
            Phase::Campaigning {
                since,
                failures,
                failing_since,
                last_error,
            } => {
                if let Some(failing) = failing_since.filter(|t| t.elapsed() > grace) {
                    return Health::Stuck(Stuck::CampaignFailing {
                        attempts: *failures,
                        failing_for: failing.elapsed(),
                        last_error: last_error.clone(),
                    });
                }
                match nobody_leads.map(|t| t.max(*since)) {
                    Some(t) if t.elapsed() > grace => Health::Stuck(Stuck::CampaignStalled {
                        waited: t.elapsed(),
                    }),
                    _ => Health::Campaigning,
                }
            }
            Phase::Leading {
                term,
                leadership,
                cancel,
            } => match cancel.is_cancelled() || leadership.is_lost() {
                true => Health::Stopping { term: *term },
                false => Health::Leading {
                    term: *term,
                    fencing_token: leadership.fencing_token(),
                },
            },
            Phase::Stopping {
                term,
                since,
                work_done,
            } => match !work_done && since.elapsed() > grace {
                true => Health::Stuck(Stuck::CancellationIgnored {
                    term: *term,
                    waited: since.elapsed(),
                }),
                false => Health::Stopping { term: *term },
            },
            Phase::Stopped => Health::Stopped,
        }
    }
}
