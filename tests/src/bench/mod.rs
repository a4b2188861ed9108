//! `clew-bench` (run by `cargo xtask bench`): what the agent costs the
//! services it traces, measured side by side with a baseline. Modes are
//! interleaved within each round so that machine noise spreads over all
//! of them alike.

pub mod bpf_stats;
pub mod machine;
pub mod measure;
pub mod metrics;
pub mod mode;
pub mod pacer;
pub mod procfs;
pub mod produce;
pub mod report;
pub mod scenario;

use crate::{Cgroup, Protocol, Receiver};
use anyhow::{Context, Result};
use measure::{Cpus, Sample, Window};
use mode::Mode;
use scenario::{Load, Scenario, Target};
use std::time::{Duration, Instant};

/// How long the agent gets to export the spans of a run before its share
/// of exported spans is read.
const SETTLE: Duration = Duration::from_secs(5);

pub struct Plan {
    pub scenarios: Vec<Scenario>,
    pub modes: Vec<Mode>,
    pub rounds: usize,
    pub duration: Duration,
    pub quick: bool,
    pub cpus: Cpus,
}

impl Plan {
    fn modes_for(&self, s: Scenario) -> Vec<Mode> {
        let wanted = |m: &Mode| match s {
            // Overload is about shedding, not about the features' costs.
            Scenario::Overload => matches!(m, Mode::Baseline | Mode::Clew),
            // Log capture off and on, on a server that logs.
            Scenario::NginxLogging => matches!(m, Mode::Baseline | Mode::Clew | Mode::Logs),
            _ => *m != Mode::Logs,
        };
        self.modes.iter().copied().filter(wanted).collect()
    }
}

/// Runs every round of the plan and returns the samples.
pub fn run(plan: &Plan) -> Result<Vec<Sample>> {
    crate::env::require_root().context("clew-bench loads eBPF programs and creates cgroups")?;
    // On for the whole run, so that every mode pays its (small) cost alike.
    let _stats = bpf_stats::enable()?;
    let started = Instant::now();
    let load_cg = Cgroup::new("bench-load")?;
    let idle_cg = Cgroup::new("bench-idle")?;
    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        for &scenario in &plan.scenarios {
            let traced = Cgroup::new(&format!("bench-{}", scenario.name()))?;
            let target = Target::start(scenario, &traced, plan.cpus.server)
                .with_context(|| format!("starting {}", scenario.name()))?;
            warm_up(&target, scenario, &load_cg, plan)?;
            let mut modes = plan.modes_for(scenario);
            // A different mode goes first each round, so none always runs
            // on a cold (or warm) server.
            let len = modes.len();
            modes.rotate_left(round % len.max(1));
            for mode in modes {
                eprintln!(
                    "[bench] round {}/{} {} / {} ({:.0}s)",
                    round + 1,
                    plan.rounds,
                    scenario.name(),
                    mode.name(),
                    started.elapsed().as_secs_f64()
                );
                let window = Window {
                    scenario,
                    mode,
                    round,
                    target: &target,
                    load_cg: &load_cg,
                    cpus: plan.cpus,
                    duration: plan.duration,
                };
                let run = agent_run(&window, &traced, &idle_cg, scenario.loads(plan.quick))
                    .with_context(|| format!("{} / {}", scenario.name(), mode.name()))?;
                samples.extend(run);
            }
        }
    }
    Ok(samples)
}

/// One agent (or none) for every load of a scenario, then its export check.
fn agent_run(
    window: &Window,
    traced: &Cgroup,
    idle: &Cgroup,
    loads: Vec<Load>,
) -> Result<Vec<Sample>> {
    let rx = Receiver::start_counting(Protocol::Grpc)?;
    let agent = window
        .mode
        .start(traced, idle, &rx, window.scenario.agent_args())?;
    let mut samples = Vec::new();
    for load in loads {
        let s = window.measure(load, agent.as_ref())?;
        eprintln!("[bench]   {:>6}: {}", load.label(), report::one_line(&s));
        samples.push(s);
    }
    if let Some(agent) = agent {
        let share = settle(&agent, &rx)?;
        for a in samples.iter_mut().filter_map(|s| s.agent.as_mut()) {
            a.exported = share;
        }
        agent.stop()?;
    }
    Ok(samples)
}

/// Waits (at most `SETTLE`) for an agent that fell behind the load to
/// finish its spans and for them to reach the receiver; returns the share
/// of the run's kept spans that arrived.
fn settle(agent: &crate::Agent, rx: &Receiver) -> Result<Option<f64>> {
    let deadline = Instant::now() + SETTLE;
    let mut last_kept = None;
    loop {
        let c = metrics::Counters::fetch(&agent.health_url("/metrics"))?;
        let kept = (c.get("spans_created") - c.get("spans_unsampled")).max(0.0) as u64;
        let done = last_kept == Some(kept) && rx.span_count() >= kept;
        if done || Instant::now() > deadline {
            return Ok((kept > 0).then(|| rx.span_count() as f64 / kept as f64));
        }
        last_kept = Some(kept);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A short unmeasured run so that the servers (Node's JIT above all) are warm.
fn warm_up(target: &Target, scenario: Scenario, load_cg: &Cgroup, plan: &Plan) -> Result<()> {
    let window = Window {
        scenario,
        mode: Mode::Baseline,
        round: 0,
        target,
        load_cg,
        cpus: plan.cpus,
        duration: Duration::from_secs(1),
    };
    window.measure(Load::Max, None).map(drop)
}
