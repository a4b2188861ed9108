//! Export resilience: the collector is down when the agent starts, comes up, goes away and returns.

use anyhow::{Context, Result};
use clew_e2e::check::wait_for_each;
use clew_e2e::net::free_port;
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Agent, Cgroup, Expect, Protocol, Receiver};
use std::time::Duration;

/// Long enough for the agent to try (and fail) to export what it has seen.
/// There is nothing to poll while the collector is down, hence a plain wait.
const OUTAGE: Duration = Duration::from_secs(3);
const PER_PHASE: usize = 5;

#[test]
fn collector_down_then_up_grpc() -> Result<()> {
    collector_outages(Protocol::Grpc)
}

#[test]
fn collector_down_then_up_http_protobuf() -> Result<()> {
    collector_outages(Protocol::HttpProtobuf)
}

fn collector_outages(protocol: Protocol) -> Result<()> {
    let cg = Cgroup::new(&format!("outage-{}", protocol.as_arg().replace('/', "-")))?;
    let port = free_port()?;
    let svc = PyService::start(&cg, "backend", None)?;
    let mut agent = Agent::start(&cg, &format!("http://127.0.0.1:{port}"), protocol, &[])
        .context("the agent should become ready even while its collector is down")?;

    requests(&cg, &svc, "down")?;
    std::thread::sleep(OUTAGE);
    agent.ensure_healthy()?;

    let mut rx = Receiver::start_on(protocol, port)?;
    requests(&cg, &svc, "up")?;
    expect_phase(&rx, &svc, "up").context("spans made after the collector came up")?;
    agent.ensure_healthy()?;

    // Now an outage that cuts the agent's established connections.
    rx.stop();
    requests(&cg, &svc, "cut")?;
    std::thread::sleep(OUTAGE);
    agent.ensure_healthy()?;
    rx.restart()?;
    requests(&cg, &svc, "back")?;
    expect_phase(&rx, &svc, "back").context("spans made after the collector came back")?;

    agent.ensure_healthy()?;
    agent.stop()
}

fn requests(cg: &Cgroup, svc: &PyService, phase: &str) -> Result<()> {
    (0..PER_PHASE)
        .try_for_each(|i| curl_expect(cg, &svc.url(&format!("/work/{phase}-{i}")), &[], 200))
}

/// All SERVER spans of `phase` arrive, whatever became of earlier phases.
fn expect_phase(rx: &Receiver, svc: &PyService, phase: &str) -> Result<()> {
    let paths: Vec<String> = (0..PER_PHASE)
        .map(|i| format!("/work/{phase}-{i}"))
        .collect();
    let expects: Vec<_> = paths
        .iter()
        .map(|p| Expect::server("backend", p, svc.port).user_agent("curl"))
        .collect();
    wait_for_each(rx, &expects).map(drop)
}
