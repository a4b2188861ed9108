//! `clew-bench`: what Clew costs the services it traces. Run it through
//! `cargo xtask bench`, which builds the agent and installs the peers; as
//! root (it loads eBPF programs and creates cgroups).

use anyhow::{Context, Result};
use clap::Parser;
use clew_e2e::bench::{
    self,
    machine::Machine,
    measure::{Cpus, Sample},
    mode::Mode,
    report::{self, Header},
    scenario::Scenario,
    Plan,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "clew-bench", about = "Side-by-side cost of the Clew agent")]
struct Args {
    /// One round, 2 s per load, fewer fixed rates: under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (repeatable; default all).
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Modes to run (repeatable; default all). The baseline is always run.
    #[arg(long, value_enum)]
    mode: Vec<Mode>,
    /// Rounds (default 3, quick 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per load window (default 3, quick 2).
    #[arg(long)]
    duration: Option<u64>,
    /// CPU for the servers and CPU for the load generators; the agent is
    /// not pinned. Pinning is skipped on a single-CPU machine.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// The criterion pipeline benchmark's result, for the table.
    #[arg(long)]
    pipeline_spans_per_sec: Option<f64>,
    /// Where bench.json and bench.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    clew_e2e::process::silence_log_dumps();
    let scenarios = if args.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenario.clone()
    };
    let mut modes = Mode::ALL.to_vec();
    if !args.mode.is_empty() {
        modes.retain(|m| *m == Mode::Baseline || args.mode.contains(m));
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = cores > args.server_cpu.max(args.load_cpu) && args.server_cpu != args.load_cpu;
    let plan = Plan {
        scenarios: scenarios.clone(),
        modes,
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
        duration: Duration::from_secs(args.duration.unwrap_or(if args.quick { 2 } else { 3 })),
        quick: args.quick,
        cpus: Cpus {
            server: pin.then_some(args.server_cpu),
            load: pin.then_some(args.load_cpu),
        },
    };
    let samples = bench::run(&plan)?;
    write(&args, &plan, &scenarios, &samples)
}

fn write(args: &Args, plan: &Plan, scenarios: &[Scenario], samples: &[Sample]) -> Result<()> {
    let machine = Machine::detect(&clew_e2e::env::workspace_dir());
    let header = Header {
        machine: &machine,
        rounds: plan.rounds,
        duration_s: plan.duration.as_secs(),
        cpus: plan.cpus,
        pipeline_spans_per_s: args.pipeline_spans_per_sec,
    };
    let rows = report::rows(samples, scenarios);
    let md = report::markdown(&header, &rows);
    let json = report::json(&header, &rows, samples);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("bench.md"), &md)?;
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    eprintln!(
        "[bench] wrote {0}/bench.md and {0}/bench.json",
        args.out.display()
    );
    Ok(())
}
