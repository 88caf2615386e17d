//! A run's shape, drawn from its seed: how many clients and peers, the session TTL and
//! timeouts, how long faults last, how hostile each link is.

use std::time::Duration;

use fairlock::sim::Faults;

pub struct Plan {
    pub seed: u64,
    /// Session TTL, whole seconds (etcd's minimum is 2).
    pub ttl: u64,
    pub request_timeout: Duration,
    /// fairlock clients, and the worker tasks on each (sharing its session).
    pub clients: Vec<usize>,
    /// Foreign peers queueing as Go's Mutex does.
    pub go_peers: usize,
    /// The lock names workers contend for; the election's name is [`ELECTION`].
    pub locks: Vec<String>,
    /// How long the nemesis injects faults.
    pub fault_phase: Duration,
    /// The links' usual faults, per client.
    pub links: Vec<Faults>,
    /// The longest freeze the nemesis may cause.
    pub max_freeze: Duration,
}

/// The election every run also campaigns in.
pub const ELECTION: &str = "leader";

/// The lock prefix of every client.
pub const PREFIX: &str = "sim";

/// A generator for one purpose of one seed: runs with the same seed draw the same.
pub fn rng(seed: u64, purpose: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn between(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    low + (high - low).mul_f64(rng.f64())
}

impl Plan {
    pub fn draw(seed: u64) -> Plan {
        let mut rng = rng(seed, 1);
        let ttl = [2, 3, 3, 5][rng.usize(..4)];
        let clients = (0..rng.usize(2..=4))
            .map(|_| rng.usize(1..=2))
            .collect::<Vec<_>>();
        let mut links = clients
            .iter()
            .map(|_| {
                let mut faults = Faults::default();
                let low = Duration::from_micros(rng.u64(50..500));
                faults.latency = (low, low + Duration::from_micros(rng.u64(0..3000)));
                if rng.bool() {
                    faults.slow = 0.02;
                    faults.slow_latency = between(
                        &mut rng,
                        Duration::from_millis(50),
                        Duration::from_millis(1500),
                    );
                }
                if rng.u8(..3) == 0 {
                    faults.drop = 0.01;
                    faults.lose_reply = 0.01;
                    faults.hang = 0.002;
                }
                faults
            })
            .collect::<Vec<Faults>>();
        // Drawn apart, so that the other draws (and the seeds kept for their scenarios)
        // stay as they were before racing watches were modelled.
        let mut races = self::rng(seed, 3);
        for faults in &mut links {
            if races.bool() {
                // etcd's creation "from now" racing a write (unsynced, unannounced).
                faults.racing_watches = 0.2;
            }
        }
        Plan {
            seed,
            ttl,
            request_timeout: Duration::from_secs(rng.u64(2..=4)),
            go_peers: usize::from(rng.u8(..3) == 0),
            locks: (0..rng.usize(1..=2)).map(|i| format!("lock{i}")).collect(),
            fault_phase: between(&mut rng, Duration::from_secs(20), Duration::from_secs(45)),
            max_freeze: Duration::from_secs(ttl * 5 / 2),
            clients,
            links,
        }
    }

    /// How soon a holder must hear that its entry or session is gone: a frozen link holds
    /// the news at most `max_freeze`, the session's deadline passes at most a TTL after its
    /// last keep-alive, and requests and stream reopens take their timeouts.
    pub fn told_within(&self) -> Duration {
        self.max_freeze
            + Duration::from_secs(self.ttl)
            + 2 * self.request_timeout
            + Duration::from_secs(3)
    }

    /// How long a waiter may take once faults stopped: crashed sessions expire (a TTL),
    /// watches and streams resync (backoff up to 2 s), requests time out, and the queue
    /// drains (each holder lets go at once).
    pub fn liveness_bound(&self) -> Duration {
        Duration::from_secs(4 * self.ttl) + 4 * self.request_timeout + Duration::from_secs(10)
    }

    pub fn describe(&self) -> String {
        format!(
            "seed {}: ttl {}s, request timeout {:?}, clients {:?}, go peers {}, locks {:?}, faults for {:.1}s",
            self.seed,
            self.ttl,
            self.request_timeout,
            self.clients,
            self.go_peers,
            self.locks,
            self.fault_phase.as_secs_f64()
        )
    }
}
