//! The usual per-test setup: a fresh cgroup, a receiver and an agent already tracing it.

use crate::{Agent, Cgroup, Protocol, Receiver};
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
        let cg = Cgroup::new(name)?;
        let rx = Receiver::start(protocol)?;
        let agent = Agent::start(&cg, &rx.endpoint(), protocol, args)?;
        Ok(Traced { agent, rx, cg })
    }
}
