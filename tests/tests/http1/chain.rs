//! curl → frontend → backend: SERVER/CLIENT spans, their nesting, errors and an incoming traceparent.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::check::{children, expect_count};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{
    Agent, Cgroup, Expect, Export, Protocol, Receiver, RecvSpan, Select, AGENT_CAPABILITIES,
    SPAN_TIMEOUT,
};
use std::collections::HashSet;

/// Plain requests through the chain.
const N: usize = 20;
/// Those plus the one carrying a traceparent.
const TOTAL: usize = N + 1;
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[test]
fn chain_over_grpc() -> Result<()> {
    run_chain(Protocol::Grpc)
}

#[test]
fn chain_over_http_protobuf() -> Result<()> {
    run_chain(Protocol::HttpProtobuf)
}

/// The agent with exactly the capabilities the Helm chart grants, every
/// other one dropped: the chain and its propagation work the same.
#[test]
fn chain_with_only_the_documented_capabilities() -> Result<()> {
    run_chain_as(Protocol::Grpc, Some(&AGENT_CAPABILITIES), &[])
}

/// The chain where a program at each socket call's entry keeps its
/// arguments (kernels before 5.15) instead of the return reading them.
#[test]
fn chain_with_arguments_kept_at_entry() -> Result<()> {
    run_chain_as(Protocol::Grpc, None, &["--syscall-arguments", "enter"])
}

/// The whole chain scenario, exported over `protocol`.
pub fn run_chain(protocol: Protocol) -> Result<()> {
    run_chain_as(protocol, None, &[])
}

/// [`run_chain`], the agent holding only `caps` when given.
fn run_chain_as(protocol: Protocol, caps: Option<&[&str]>, extra_args: &[&str]) -> Result<()> {
    let cg = Cgroup::new(&format!("chain-{}", protocol.as_arg().replace('/', "-")))?;
    let rx = Receiver::start(protocol)?;
    let backend = PyService::start(&cg, "backend", None)?;
    let frontend = PyService::start(&cg, "frontend", Some(&backend.url("")))?;
    // The peers start first: the agent must also pick up processes already running.
    let mut agent = match caps {
        None => Agent::start(&cg, &rx.endpoint(), protocol, extra_args)?,
        Some(caps) => {
            let export = Export::Otlp {
                endpoint: &rx.endpoint(),
                protocol,
            };
            let agent =
                Agent::launch_with_capabilities(caps, &[Select::Cgroup(&cg)], export, extra_args)?;
            ensure_capabilities(agent.pid(), caps)?;
            agent
        }
    };

    for _ in 0..N {
        curl_expect(&cg, &frontend.url("/chain"), &[], 200)?;
    }
    curl_expect(&cg, &frontend.url("/chain-fail"), &[], 500)?;
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    curl_expect(&cg, &frontend.url("/chain"), &["-H", &traceparent], 200)?;

    let exe = frontend.python.exe_name.as_str();
    let fe_ua = "clew-e2e-frontend";
    let fe_server = Expect::server("frontend", "/chain", frontend.port)
        .user_agent("curl")
        .process(frontend.pid(), exe);
    let fe_client = Expect::client("frontend", "/work", backend.port)
        .user_agent(fe_ua)
        .process(frontend.pid(), exe);
    let be_server = Expect::server("backend", "/work", backend.port)
        .user_agent(fe_ua)
        .process(backend.pid(), exe);
    let fail = [
        fe_server.clone().path("/chain-fail").status(500),
        fe_client.clone().path("/fail").status(500),
        be_server.clone().path("/fail").status(500),
    ];
    let ok = [&fe_server, &fe_client, &be_server];

    let spans = rx
        .wait_for(
            |s| {
                ok.iter().all(|e| e.select(s).len() >= TOTAL)
                    && fail.iter().all(|e| !e.select(s).is_empty())
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for the chain's spans")?;

    for e in ok {
        expect_count(&spans, &format!("{e:?} spans"), TOTAL, |s| e.matches(s))?;
    }
    for e in &fail {
        expect_count(&spans, &format!("{e:?} spans"), 1, |s| e.matches(s))?;
    }
    for srv in fe_server.select(&spans) {
        check_server_with_client(&spans, srv, &fe_server, &fe_client)?;
    }
    for s in be_server.select(&spans) {
        be_server.check(s)?;
    }
    check_server_with_client(&spans, fail[0].select(&spans)[0], &fail[0], &fail[1])?;
    fail[2].check(fail[2].select(&spans)[0])?;

    let traces: HashSet<_> = fe_server
        .select(&spans)
        .iter()
        .map(|s| &s.trace_id)
        .collect();
    ensure!(
        traces.len() == TOTAL,
        "frontend SERVER spans share trace ids: {traces:?}"
    );
    check_incoming_traceparent(&spans, &fe_server, &frontend, &traceparent[13..])?;

    agent.ensure_healthy()?;
    agent.stop()
}

/// `srv` matches `server` and has exactly one CLIENT child, matching `client`
/// and lying within it in time.
fn check_server_with_client(
    spans: &[RecvSpan],
    srv: &RecvSpan,
    server: &Expect,
    client: &Expect,
) -> Result<()> {
    server.check(srv)?;
    let kids: Vec<_> = children(spans, srv)
        .into_iter()
        .filter(|s| s.is_client())
        .collect();
    let [kid] = kids[..] else {
        bail!(
            "SERVER span should have exactly one CLIENT child, has {}:\n  server: {srv}\n{}",
            kids.len(),
            kids.iter()
                .map(|k| format!("  child: {k}\n"))
                .collect::<String>()
        );
    };
    client.check(kid)?;
    ensure!(
        srv.start_ns <= kid.start_ns && kid.end_ns <= srv.end_ns,
        "CLIENT span not within its SERVER span in time:\n  server: {srv}\n  client: {kid}"
    );
    Ok(())
}

/// The request sent with a traceparent joined that trace, and reached the
/// frontend with the header unchanged.
fn check_incoming_traceparent(
    spans: &[RecvSpan],
    fe_server: &Expect,
    frontend: &PyService,
    header: &str,
) -> Result<()> {
    let joined: Vec<_> = fe_server
        .select(spans)
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();
    let [srv] = joined[..] else {
        bail!(
            "expected one frontend SERVER span in trace {TRACE_ID}, got {}:\n{}",
            joined.len(),
            fe_server
                .select(spans)
                .iter()
                .map(|s| format!("  {s}\n"))
                .collect::<String>()
        );
    };
    ensure!(
        srv.parent_span_id.as_deref() == Some(PARENT_ID),
        "SERVER span joined the trace but its parent is not {PARENT_ID}: {srv}"
    );
    let with_header: Vec<_> = frontend
        .received()?
        .into_iter()
        .filter(|r| r.header("traceparent").iter().any(|v| v.contains(TRACE_ID)))
        .collect();
    ensure!(
        with_header.len() == 1 && with_header[0].header("traceparent") == [header],
        "frontend should have received traceparent {header:?} once, unchanged; got {with_header:?}"
    );
    Ok(())
}

/// The agent's effective capabilities are exactly `caps` (as far as this
/// machine has them: one its root lacks cannot be granted).
fn ensure_capabilities(pid: u32, caps: &[&str]) -> Result<()> {
    let eff = |pid: &str| -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .context("no CapEff")?;
        Ok(u64::from_str_radix(hex.trim(), 16)?)
    };
    let number = |name: &str| -> Result<u64> {
        Ok(match name {
            "DAC_READ_SEARCH" => 2,
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_RESOURCE" => 24,
            "PERFMON" => 38,
            "BPF" => 39,
            other => bail!("capability {other} has no number here"),
        })
    };
    let mut want = 0u64;
    for c in caps {
        want |= 1 << number(c)?;
    }
    let available = eff("self")?;
    let got = eff(&pid.to_string())?;
    ensure!(
        got == want & available,
        "agent CapEff {got:#x}, want {:#x}",
        want & available
    );
    Ok(())
}
