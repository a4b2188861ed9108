//! SIGKILL of an injecting agent in the middle of load: traffic keeps
//! flowing without a single error, and the kernel drops every program and
//! map with the agent's file descriptors, sockops and sk_msg included.

use anyhow::{bail, ensure, Result};
use clew_e2e::bpf::{cgroup_progs, prog_ids_of, programs, wait_progs_unloaded};
use clew_e2e::load::{stalled_seconds, unix_now, Wrk};
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::curl_expect;
use clew_e2e::{Agent, Cgroup, Protocol, Receiver};
use std::time::Duration;

const DURATION: Duration = Duration::from_secs(12);
/// When the agent is killed, into wrk's run.
const KILL_AFTER: Duration = Duration::from_secs(5);
/// How long the kernel may take to free the programs after the last reference.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn sigkill_under_load_leaves_traffic_working() -> Result<()> {
    let traced = Cgroup::new("sigkill-load")?;
    let load = Cgroup::new("sigkill-load-wrk")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;
    // Exactly this agent's programs, whatever other agents run here.
    let ours = prog_ids_of(agent.pid())?;
    let attached = cgroup_progs(traced.path())?;
    ensure!(
        !attached.is_empty(),
        "the injecting agent attached nothing to {} (expected its sockops program)",
        traced.path().display()
    );
    let names: Vec<String> = programs()?
        .into_iter()
        .filter(|p| ours.contains(&p.id))
        .map(|p| format!("{}:{}", p.kind, p.name))
        .collect();
    for want in ["sock_ops", "sk_msg"] {
        ensure!(
            names.iter().any(|n| n.starts_with(want)),
            "no {want} program among the agent's programs: {names:?}"
        );
    }
    println!(
        "sigkill: agent pid {} holds {} programs; attached to the cgroup: {attached:?}",
        agent.pid(),
        ours.len()
    );

    let upstream = Nginx::start(&traced)?;
    let proxy = Nginx::proxy(&traced, &upstream.addr(), true)?;
    let run = Wrk::spawn(&load, &proxy.url("/index.html"), 2, 32, DURATION)?;
    std::thread::sleep(KILL_AFTER);
    let killed_at = unix_now();
    agent.kill()?;
    let r = run.finish()?;
    let log = upstream.accesses()?;
    let before_kill = log.iter().filter(|a| a.time < killed_at).count();
    let after_kill = log.len() - before_kill;
    let injected_before = log
        .iter()
        .filter(|a| a.time < killed_at && a.traceparent.is_some())
        .count();
    println!(
        "sigkill: {} requests in {:.1} s ({:.0} req/s); upstream saw {before_kill} before the kill ({injected_before} with traceparent) and {after_kill} after",
        r.requests,
        r.seconds,
        r.rps()
    );
    r.ensure_clean("wrk through the proxy while the agent was SIGKILLed", 500)?;
    ensure!(
        injected_before > 0,
        "nothing was injected before the kill: the test did not exercise injection"
    );
    if let Err(stall) = stalled_seconds(
        &log.iter().map(|a| a.time).collect::<Vec<_>>(),
        r.started,
        r.ended,
    ) {
        bail!("traffic stalled around the kill (at {killed_at:.1}): {stall}");
    }
    ensure!(
        after_kill > 0,
        "no request reached the upstream after the kill"
    );
    let bad: Vec<_> = log.iter().filter(|a| a.status != 200).take(10).collect();
    ensure!(bad.is_empty(), "upstream answered non-200: {bad:?}");

    // A fresh connection, and one more through the proxy's kept-alive upstream connections.
    curl_expect(&traced, &proxy.url("/index.html"), &[], 200)?;
    curl_expect(&traced, &upstream.url("/index.html"), &[], 200)?;

    wait_progs_unloaded(&ours, RELEASE_TIMEOUT)?;
    let attached = cgroup_progs(traced.path())?;
    ensure!(
        attached.is_empty(),
        "after SIGKILL, still attached to {}: {attached:?}",
        traced.path().display()
    );
    Ok(())
}
