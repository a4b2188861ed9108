//! The usual per-test setup: a fresh cgroup, a receiver and an agent already tracing it.

use crate::{Agent, Cgroup, Export, Protocol, Receiver, Select};
use anyhow::Result;

pub struct Traced {
    // Field order is drop order: the agent (printing its log) goes first, the cgroup last.
    pub agent: Agent,
    pub rx: Receiver,
    pub cg: Cgroup,
}

impl Traced {
    /// Cgroup `name`, a receiver speaking `protocol`, and an agent that is ready.
    pub fn start(name: &str, protocol: Protocol) -> Result<Self> {
        Self::start_with(name, protocol, &[])
    }

    /// `start`, with extra `clew run` arguments.
    pub fn start_with(name: &str, protocol: Protocol, args: &[&str]) -> Result<Self> {
        Self::start_with_env(name, protocol, args, &[])
    }

    /// `start_with`, with environment variables for the agent (e.g. `OTEL_TRACES_SAMPLER`).
    pub fn start_with_env(
        name: &str,
        protocol: Protocol,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let cg = Cgroup::new(name)?;
        let rx = Receiver::start(protocol)?;
        let export = Export::Otlp {
            endpoint: &rx.endpoint(),
            protocol,
        };
        let agent = Agent::launch_with_env(&[Select::Cgroup(&cg)], export, args, env)?;
        Ok(Traced { agent, rx, cg })
    }
}
