//! How the agent runs (or does not) while a scenario is measured.

use crate::{Agent, Cgroup, Export, Receiver, Select};
use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No agent.
    Baseline,
    /// Default configuration: 100% sampling, `traceparent` injection.
    Clew,
    /// Head sampling at 1% (`parentbased_traceidratio`, 0.01).
    Sampled,
    /// `--propagation none`: observe only.
    NoInjection,
    /// The agent selects another (empty) cgroup: the tax on untraced processes.
    Untraced,
    /// Log capture on (`--logs stdout,stderr` and every `*.log` under /tmp,
    /// where the servers' logs are).
    Logs,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Baseline,
        Mode::Clew,
        Mode::Sampled,
        Mode::NoInjection,
        Mode::Untraced,
        Mode::Logs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Clew => "clew",
            Mode::Sampled => "clew 1% sampled",
            Mode::NoInjection => "clew no injection",
            Mode::Untraced => "clew other cgroup",
            Mode::Logs => "clew + logs",
        }
    }

    /// Starts the agent for this mode (none for the baseline), exporting to
    /// `rx`; `traced` holds the servers, `idle` nothing.
    pub fn start(
        self,
        traced: &Cgroup,
        idle: &Cgroup,
        rx: &Receiver,
        extra: &[&str],
    ) -> Result<Option<Agent>> {
        let endpoint = rx.endpoint();
        let export = Export::Otlp {
            endpoint: &endpoint,
            protocol: rx.protocol(),
        };
        let (select, args, env): (_, &[&str], &[(&str, &str)]) = match self {
            Mode::Baseline => return Ok(None),
            Mode::Clew => (traced, &[], &[]),
            Mode::Sampled => (
                traced,
                &[],
                &[
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ],
            ),
            Mode::NoInjection => (traced, &["--propagation", "none"], &[]),
            Mode::Untraced => (idle, &[], &[]),
            Mode::Logs => (traced, &["--logs", "stdout,stderr,/tmp/**/*.log"], &[]),
        };
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        let agent = Agent::launch_with_env(&[Select::Cgroup(select)], export, &args, env)?;
        Ok(Some(agent))
    }
}
