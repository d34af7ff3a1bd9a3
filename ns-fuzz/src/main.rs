//! `ns-fuzz`: runs the fuzz targets and prints one line per target; exits 1 on any panic,
//! printing the input that caused it, which `--replay` runs again.

// A CLI's report goes to standard output.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ns_fuzz::targets::{self, Ctx};
use ns_fuzz::{Budget, Outcome};

/// Fuzzes the parsers that see untrusted input, deterministically from a seed.
#[derive(Parser, Debug)]
#[command(name = "ns-fuzz")]
struct Cli {
    /// Inputs per target.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Seed of the generators: the same seed gives the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A target's name, or `all`.
    #[arg(long, default_value = "all")]
    target: String,
    /// Stop each target after this many seconds, whatever its count.
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Targets run at the same time, one thread each.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Run one input (hex, as a failure prints it) through `--target` and report.
    #[arg(long, value_name = "HEX")]
    replay: Option<String>,
    /// List the targets and what each calls.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let all = targets::all();
    if cli.list {
        for t in &all {
            println!("{:<13} {}", t.name, t.calls);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|t| cli.target == "all" || t.name == cli.target)
        .collect();
    if chosen.is_empty() {
        eprintln!("ns-fuzz: no target named {:?} (see --list)", cli.target);
        return ExitCode::from(64);
    }
    let ctx = Ctx::new();

    if let Some(hex_input) = &cli.replay {
        let Ok(input) = hex::decode(hex_input.trim()) else {
            eprintln!("ns-fuzz: --replay takes hex");
            return ExitCode::from(64);
        };
        let mut failed = false;
        for target in &chosen {
            match ns_fuzz::call(target, &ctx, &input) {
                Ok(accepted) => println!("{}: no panic (accepted: {accepted})", target.name),
                Err(message) => {
                    failed = true;
                    println!("{}: PANIC: {message}", target.name);
                }
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }

    let budget = Budget {
        iterations: cli.iterations,
        max_time: cli.max_seconds.map(Duration::from_secs),
        seed: cli.seed,
    };
    println!(
        "ns-fuzz: seed {}, up to {} inputs per target{}, {} job(s)",
        budget.seed,
        budget.iterations,
        cli.max_seconds
            .map(|s| format!(" or {s} s"))
            .unwrap_or_default(),
        cli.jobs
    );
    let print = |o: &Outcome| {
        println!("{}", o.line());
        let _ = std::io::stdout().flush();
    };
    let outcomes = ns_fuzz::run_all(&chosen, &ctx, budget, cli.jobs, &print);

    let (inputs, panics): (u64, u64) = outcomes
        .iter()
        .fold((0, 0), |(i, p), o| (i + o.inputs, p + o.panics));
    println!("total         inputs {inputs:>10}  panics {panics}");
    for o in &outcomes {
        if let Some(f) = &o.failure {
            println!(
                "\nPANIC in {} ({} of {} inputs): {}\n  input ({} bytes): b\"{}\"\n  replay: ns-fuzz --target {} --replay {}",
                o.target,
                o.panics,
                o.inputs,
                f.message,
                f.input.len(),
                ns_fuzz::escape(&f.input),
                o.target,
                hex::encode(&f.input)
            );
        }
    }
    if panics > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
