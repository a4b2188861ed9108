//! Processes the agent does not trace are never touched: while an agent
//! traces cgroup A, a client in cgroup B talks to the same server at the
//! same time and its bytes arrive unchanged, while A's requests get their
//! traceparent line.

use crate::plan::{changed, check_client_spans, verify, Plan};
use anyhow::{bail, ensure, Result};
use clew_e2e::bpf::sockhash_cookies;
use clew_e2e::recording::{recorded_for, RecordingServer, WireClient};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, SPAN_TIMEOUT};
use std::collections::HashSet;
use std::time::Duration;

const CLIENT_A: &str = "wire-client-a";
const CLIENT_B: &str = "wire-client-b";
/// Connections per client, all open at once.
const CONNS: usize = 24;
/// Long enough for a span that should not exist to have been exported.
const QUIET: Duration = Duration::from_secs(3);

/// The same kinds of keep-alive requests for both clients.
fn plan(port: u16, seed: u64) -> Plan {
    let mut p = Plan::new(port, seed);
    p.keepalive_only(CONNS);
    p
}

#[test]
fn untraced_traffic_untouched() -> Result<()> {
    let cg_a = Cgroup::new("untraced-a")?;
    let cg_b = Cgroup::new("untraced-b")?;
    let cg_server = Cgroup::new("untraced-server")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&cg_a, &rx.endpoint(), Protocol::Grpc, &[])?;
    let server = RecordingServer::start(&cg_server)?;
    let plan_a = plan(server.port, 1);
    let plan_b = plan(server.port, 2);

    // Both at once, every connection held open until both have sent everything.
    let mut a = WireClient::spawn(&cg_a, CLIENT_A, server.port, &plan_a.conns, CONNS, true)?;
    let mut b = WireClient::spawn(&cg_b, CLIENT_B, server.port, &plan_b.conns, CONNS, true)?;
    let b_pid = b.pid();
    let open_a = a.wait_all_open(Duration::from_secs(30))?;
    let open_b = b.wait_all_open(Duration::from_secs(30))?;

    // Only A's sockets may be in the agent's socket map.
    match sockhash_cookies("INJECT_SOCKS", agent.pid())? {
        Ok(keys) => {
            let keys: HashSet<u64> = keys.into_iter().collect();
            let a_missing: Vec<_> = open_a
                .iter()
                .filter(|o| !keys.contains(&o.cookie))
                .collect();
            let b_present: Vec<_> = open_b.iter().filter(|o| keys.contains(&o.cookie)).collect();
            println!(
                "untraced: INJECT_SOCKS holds {} sockets: {} of {CONNS} of A's, {} of {CONNS} of B's",
                keys.len(),
                CONNS - a_missing.len(),
                b_present.len()
            );
            ensure!(
                b_present.is_empty(),
                "sockets of the untraced client are in INJECT_SOCKS: {b_present:?}"
            );
            ensure!(
                a_missing.is_empty(),
                "sockets of the traced client are missing from INJECT_SOCKS: {a_missing:?} (map holds {keys:?})"
            );
        }
        Err(why) => println!("untraced: NOTE: socket map check skipped: {why}"),
    }

    let open_a = a.finish(Duration::from_secs(60))?;
    let open_b = b.finish(Duration::from_secs(60))?;

    // B: byte for byte what it sent.
    let changed = changed(&plan_b, &recorded_for(&server, &open_b)?);
    let b_requests: usize = plan_b.meta.iter().map(|m| m.1).sum();
    if !changed.is_empty() {
        bail!(
            "{} of {CONNS} connections of the untraced client were modified:\n{}",
            changed.len(),
            changed.join("\n")
        );
    }
    println!("untraced: {b_requests} requests of the untraced client arrived unchanged");

    // A: exactly the injection rules.
    let v = verify(&plan_a, &recorded_for(&server, &open_a)?);
    println!("untraced: traced client:\n{}", v.table());
    ensure!(
        v.failures.is_empty(),
        "connections of the traced client not as the rules say:\n{}",
        v.failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    ensure!(
        !v.injected.is_empty(),
        "nothing was injected into the traced client's requests"
    );
    let spans = check_client_spans(&rx, CLIENT_A, &v.injected, SPAN_TIMEOUT, |c| {
        plan_a.describe(c)
    })?;
    println!(
        "untraced: {} injected requests of the traced client have their CLIENT span with exactly the injected ids ({} without a span: {:?})",
        spans.matched,
        spans.missing.values().sum::<usize>(),
        spans.missing
    );
    ensure!(
        spans.matched > 0,
        "no CLIENT span of the traced client carries an injected id"
    );
    rx.expect_none_for(
        |s| {
            s.service() == Some(CLIENT_B)
                || s.resource.get("process.pid") == Some(&clew_e2e::Value::Int(b_pid.into()))
        },
        QUIET,
    )?;
    agent.ensure_healthy()?;
    agent.stop()
}
