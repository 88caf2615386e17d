//! The simulator as tests (debug build, a few seeds; `scripts/simulate` runs thousands, and
//! checks the mutants, on a release build).
//!
//! - `SIM_SEED=S cargo test -p fairlock-sim --test seeds replay -- --nocapture` replays seed
//!   S with its trace (`SIM_MUTANT=NAME` puts a past defect back).
//! - `SIM_SEEDS=N SIM_FROM=S cargo test -p fairlock-sim --test seeds explore` explores more.

use fairlock_sim::{explore, mutant, report, run, Options};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn options() -> Options {
    Options {
        mutant: std::env::var("SIM_MUTANT").ok().map(|name| {
            mutant(&name).unwrap_or_else(|| panic!("SIM_MUTANT: no mutant named {name}"))
        }),
        ..Options::default()
    }
}

#[test]
fn explore_seeds() {
    let (from, count) = (env("SIM_FROM").unwrap_or(0), env("SIM_SEEDS").unwrap_or(40));
    let options = options();
    let summary = explore(from, count, 2, &options, false);
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|f| report(f, &options))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(summary.seeds, count);
    // Not vacuous: the runs did lock and write.
    assert!(summary.acquisitions > count * 20, "{summary:?}");
    assert!(summary.writes > count * 20, "{summary:?}");
}

#[test]
fn replay() {
    let seed = env("SIM_SEED").unwrap_or(0);
    let options = Options {
        trace: true,
        trace_lines: env("SIM_TRACE_LINES").unwrap_or(400),
        ..options()
    };
    let outcome = run(seed, &options);
    println!("{}", outcome.trace);
    assert!(
        outcome.violation.is_none(),
        "{}",
        report(&outcome, &options)
    );
    assert!(outcome.trace.contains("all checks passed"));
}

/// A seed is a run: twice the same digest, with the trace kept or not.
#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 1491] {
        let quiet = run(seed, &Options::default());
        let again = run(seed, &Options::default());
        let traced = run(
            seed,
            &Options {
                trace: true,
                ..Options::default()
            },
        );
        assert_eq!(quiet.digest, again.digest, "seed {seed}");
        assert_eq!(quiet.digest, traced.digest, "seed {seed} traced");
        assert_eq!(quiet.acquisitions, traced.acquisitions, "seed {seed}");
    }
}

/// The seeds that found the defects fixed with the simulator, kept as regressions (each
/// failed before its fix; see the commit that fixed it).
#[test]
fn seeds_that_found_defects() {
    for seed in [17, 34, 40, 50, 65] {
        let outcome = run(seed, &Options::default());
        assert!(
            outcome.violation.is_none(),
            "{}",
            report(
                &fairlock_sim::run_traced_on_failure(seed, &Options::default()),
                &Options::default()
            )
        );
    }
}
