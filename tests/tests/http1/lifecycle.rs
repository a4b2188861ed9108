//! Shutdown: SIGTERM and SIGINT end the agent with status 0 and leave no BPF program behind.

use anyhow::{ensure, Context, Result};
use clew_e2e::bpf::{cgroup_progs, prog_ids_of, wait_progs_unloaded};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Expect, Protocol, Traced, SPAN_TIMEOUT};
use std::time::Duration;

#[test]
fn sigterm_exits_cleanly() -> Result<()> {
    stop_cleanly(libc::SIGTERM)
}

#[test]
fn sigint_exits_cleanly() -> Result<()> {
    stop_cleanly(libc::SIGINT)
}

fn stop_cleanly(signal: i32) -> Result<()> {
    clew_e2e::env::require_root()?;
    let t = Traced::start(&format!("signal{signal}"), Protocol::Grpc)?;
    // Exactly this agent's programs, whatever other agents run here.
    let ours = prog_ids_of(t.agent.pid())?;
    ensure!(!ours.is_empty(), "the running agent holds no BPF program");
    let svc = PyService::start(&t.cg, "backend", None)?;
    curl_expect(&t.cg, &svc.url("/work/before-stop"), &[], 200)?;
    let e = Expect::server("backend", "/work/before-stop", svc.port);
    t.rx.wait_for(|s| !e.select(s).is_empty(), SPAN_TIMEOUT)
        .context("the agent should trace before it is stopped")?;

    let Traced { agent, rx: _rx, cg } = t;
    agent.stop_with(signal)?;
    wait_progs_unloaded(&ours, Duration::from_secs(5))?;
    let attached = cgroup_progs(cg.path())?;
    ensure!(
        attached.is_empty(),
        "programs still attached to the cgroup: {attached:?}"
    );
    // The traced service must keep working once the agent is gone.
    curl_expect(&cg, &svc.url("/work/after-stop"), &[], 200)
}
