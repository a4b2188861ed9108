//! Injection under concurrent load, against `--propagation none` on the
//! same machine right after: no errors, no stalls, in either mode. Timing
//! is not asserted (the benchmarks measure that); throughput is printed.
//!
//! wrk itself runs in a cgroup of its own that no agent traces: the
//! requests it sends stay as they are, and what is traced (and injected
//! into) are the proxies' and Node's outgoing requests.

use anyhow::{ensure, Result};
use clew_e2e::load::{stalled_seconds, wrk, NodeService, WrkResult};
use clew_e2e::nginx::Nginx;
use clew_e2e::{Agent, Cgroup, Protocol, Receiver};
use std::time::Duration;

const DURATION: Duration = Duration::from_secs(10);
const CONNECTIONS: usize = 32;
const THREADS: usize = 2;
/// A floor far below any machine that works (tens of thousands of requests
/// in 10 s here): what it catches is a stall, not slowness.
const MIN_REQUESTS: u64 = 500;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Injecting,
    Off,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Injecting => &[],
            Mode::Off => &["--propagation", "none"],
        }
    }
}

/// The static upstream's log: every request completed in every second of
/// wrk's run, and traceparent present on all (injecting) or none (off).
fn check_upstream(what: &str, mode: Mode, upstream: &Nginx, r: &WrkResult) -> Result<f64> {
    let log = upstream.accesses()?;
    let times: Vec<f64> = log.iter().map(|a| a.time).collect();
    if let Err(stall) = stalled_seconds(&times, r.started, r.ended) {
        anyhow::bail!("{what} ({mode:?}): {stall}\n---- wrk ----\n{}", r.output);
    }
    let bad: Vec<_> = log.iter().filter(|a| a.status != 200).take(10).collect();
    ensure!(
        bad.is_empty(),
        "{what} ({mode:?}): upstream answered non-200: {bad:?}"
    );
    let with_tp = log.iter().filter(|a| a.traceparent.is_some()).count();
    let share = with_tp as f64 / log.len().max(1) as f64;
    match mode {
        Mode::Off => ensure!(
            with_tp == 0,
            "{what}: with --propagation none, {with_tp} of {} upstream requests carried a traceparent: {:?}",
            log.len(),
            log.iter().find(|a| a.traceparent.is_some())
        ),
        Mode::Injecting => ensure!(
            with_tp == log.len() && !log.is_empty(),
            "{what}: only {with_tp} of {} upstream requests carried a traceparent; first without: {:?}",
            log.len(),
            log.iter().find(|a| a.traceparent.is_none())
        ),
    }
    Ok(share)
}

/// wrk → nginx proxy (traced) → nginx static (traced).
fn nginx_proxy(mode: Mode) -> Result<WrkResult> {
    through("nginx", "nginx proxy", mode, |traced, upstream| {
        let proxy = Nginx::proxy(traced, &upstream.addr(), true)?;
        let url = proxy.url("/index.html");
        Ok((proxy, url))
    })
}

/// wrk → Node.js (traced, one downstream request each, keep-alive agent) → nginx static (traced).
fn node_fanout(mode: Mode) -> Result<WrkResult> {
    through("node", "node", mode, |traced, upstream| {
        let node = NodeService::start(traced, "node-svc", &upstream.url("/index.html"))?;
        let url = node.url("/");
        Ok((node, url))
    })
}

/// Loads a traced front service (kept alive by `F`) in front of a traced
/// nginx upstream, then checks errors, stalls and upstream headers.
fn through<F>(
    slug: &str,
    what: &str,
    mode: Mode,
    front: impl FnOnce(&Cgroup, &Nginx) -> Result<(F, String)>,
) -> Result<WrkResult> {
    let traced = Cgroup::new(&format!("load-{slug}"))?;
    let load = Cgroup::new(&format!("load-{slug}-wrk"))?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, mode.args())?;
    let upstream = Nginx::start(&traced)?;
    let (_front, url) = front(&traced, &upstream)?;
    let r = wrk(&load, &url, THREADS, CONNECTIONS, DURATION)?;
    r.ensure_clean(&format!("wrk → {what} → nginx ({mode:?})"), MIN_REQUESTS)?;
    let share = check_upstream(what, mode, &upstream, &r)?;
    println!(
        "load {what} ({mode:?}): {} requests, {:.0} req/s, {:.1}% of upstream requests with traceparent, {} spans exported",
        r.requests,
        r.rps(),
        share * 100.0,
        rx.spans().len()
    );
    agent.ensure_healthy()?;
    agent.stop()?;
    Ok(r)
}

#[test]
fn load_with_injection_nginx_and_node() -> Result<()> {
    let nginx_on = nginx_proxy(Mode::Injecting)?;
    let nginx_off = nginx_proxy(Mode::Off)?;
    let node_on = node_fanout(Mode::Injecting)?;
    let node_off = node_fanout(Mode::Off)?;
    println!(
        "load: nginx proxy {:.0} req/s injecting vs {:.0} req/s with --propagation none ({:+.1}%)",
        nginx_on.rps(),
        nginx_off.rps(),
        100.0 * (nginx_on.rps() / nginx_off.rps() - 1.0)
    );
    println!(
        "load: node {:.0} req/s injecting vs {:.0} req/s with --propagation none ({:+.1}%)",
        node_on.rps(),
        node_off.rps(),
        100.0 * (node_on.rps() / node_off.rps() - 1.0)
    );
    Ok(())
}
