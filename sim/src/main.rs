//! The simulator's command line; see the library's docs.

use std::process::ExitCode;

use clap::Parser;
use fairlock_sim::{explore, mutant, report, run_traced_on_failure, Mutant, Options};

#[derive(Parser, Debug)]
#[command(
    name = "fairlock-sim",
    about = "Deterministic simulation of fairlock's queue algorithm"
)]
struct Cli {
    /// How many seeds to explore.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Threads running seeds.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Replay one seed, with its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Put a past defect back (reused-watch-ids, existence-only-checks,
    /// cleanup-disarmed-early, deadline-from-answer, no-post-wait-check, reader-try-puts-twice).
    #[arg(long, value_parser = parse_mutant)]
    mutant: Option<Mutant>,
    /// For every mutant: explore seeds until the simulator catches it (at most --seeds).
    #[arg(long)]
    mutants: bool,
    /// How many trace lines a failure shows.
    #[arg(long, default_value_t = 400)]
    trace_lines: usize,
}

fn parse_mutant(name: &str) -> Result<Mutant, String> {
    mutant(name).ok_or_else(|| format!("no mutant named {name}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = Options {
        mutant: cli.mutant,
        trace: cli.seed.is_some(),
        trace_lines: cli.trace_lines,
    };
    if let Some(seed) = cli.seed {
        let outcome = run_traced_on_failure(seed, &options);
        if outcome.violation.is_some() {
            println!("{}", report(&outcome, &options));
            return ExitCode::FAILURE;
        }
        println!("{}", outcome.trace);
        println!(
            "seed {seed}: all checks passed ({} acquisitions, {} writes, {:.1} s simulated)",
            outcome.acquisitions,
            outcome.writes,
            outcome.simulated.as_secs_f64()
        );
        return ExitCode::SUCCESS;
    }
    if cli.mutants {
        let mut missed = false;
        for m in Mutant::ALL {
            let options = Options {
                mutant: Some(m),
                ..options.clone()
            };
            let summary = explore(cli.from, cli.seeds, cli.threads, &options, true);
            match summary.failures.first() {
                Some(caught) => println!(
                    "{:<24} caught at seed {} ({} seeds run, {:.1} s): {}",
                    m.name(),
                    caught.seed,
                    summary.seeds,
                    summary.elapsed.as_secs_f64(),
                    caught.violation.as_deref().unwrap_or("?")
                ),
                None => {
                    missed = true;
                    println!("{:<24} NOT caught in {} seeds", m.name(), summary.seeds);
                }
            }
        }
        return if missed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let summary = explore(cli.from, cli.seeds, cli.threads, &options, false);
    for failure in &summary.failures {
        println!("{}", report(failure, &options));
    }
    println!(
        "{} seeds ({}..{}), {} failed; {} acquisitions, {} guarded writes applied; {:.0} s simulated in {:.1} s",
        summary.seeds,
        cli.from,
        cli.from + cli.seeds,
        summary.failures.len(),
        summary.acquisitions,
        summary.writes,
        summary.simulated.as_secs_f64(),
        summary.elapsed.as_secs_f64()
    );
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
