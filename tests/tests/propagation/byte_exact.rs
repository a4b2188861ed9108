//! What the kernel writes into traced clients' requests, byte for byte: a
//! traced raw-socket client replays thousands of planned sends, an
//! untraced server records every byte, and the test requires exactly the
//! traceparent lines the injection rules call for and nothing else.

use crate::plan::{changed, check_client_spans, verify, Plan, SpanCheck};
use anyhow::{bail, ensure, Result};
use clew_e2e::recording::{recorded_for, RecordingServer, WireClient};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, SPAN_TIMEOUT};
use std::time::Duration;

const CLIENT: &str = "wire-client";
/// Connections replayed at once.
const THREADS: usize = 4;
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the plan `build` makes through a traced client against an untraced
/// recording server, prints the per-case table, checks every byte, and
/// checks the CLIENT spans of the injected requests.
fn run(name: &str, build: impl FnOnce(&mut Plan), min_requests: usize) -> Result<SpanCheck> {
    let traced = Cgroup::new(name)?;
    // The witness must not be traced: its own cgroup, which no agent selects.
    let untraced = Cgroup::new(&format!("{name}-server"))?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;
    let server = RecordingServer::start(&untraced)?;
    let mut plan = Plan::new(server.port, 0x5eed_c1e3);
    build(&mut plan);

    let client = WireClient::spawn(&traced, CLIENT, server.port, &plan.conns, THREADS, false)?;
    let opened = client.finish(RUN_TIMEOUT)?;
    let recorded = recorded_for(&server, &opened)?;
    let v = verify(&plan, &recorded);
    println!(
        "{name}: per case (requests sent; lines the rules call for; connections that end hands-off; connections received exactly as expected)\n{}",
        v.table()
    );
    ensure!(
        v.failures.is_empty(),
        "{} of {} connections were not received as the injection rules say (first 10):\n{}\n\nall failed connections (case: first request line):\n  {}",
        v.failures.len(),
        plan.conns.len(),
        v.failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n\n"),
        v.failed.join("\n  ")
    );
    ensure!(
        v.total_requests() >= min_requests,
        "the plan has only {} requests",
        v.total_requests()
    );
    println!(
        "{name}: {} connections, {} requests byte-exact, {} lines injected",
        plan.conns.len(),
        v.total_requests(),
        v.injected.len()
    );
    // The default sampler (parentbased_always_on) samples every new trace.
    let unsampled = v.injected.iter().filter(|(_, l)| l.flags != "01").count();
    ensure!(
        unsampled == 0,
        "{unsampled} injected lines are not sampled (flags 00)"
    );
    let spans = check_client_spans(&rx, CLIENT, &v.injected, SPAN_TIMEOUT, |c| plan.describe(c))?;
    let lost: usize = spans.missing.values().sum();
    println!(
        "{name}: {} injected requests have a CLIENT span with exactly the injected ids; {lost} have no CLIENT span at all (on {} connections: {:?})",
        spans.matched,
        spans.missing.len(),
        spans.missing
    );
    agent.ensure_healthy()?;
    agent.stop()?;
    Ok(spans)
}

#[test]
fn byte_exact_injection() -> Result<()> {
    let spans = run("byte-exact", |p| p.all_cases(1), 2000)?;
    if !spans.missing.is_empty() {
        // Asserted by `client_span_for_every_injected_request`.
        println!(
            "byte_exact_injection: NOTE: {} connections lost CLIENT spans (see client_span_for_every_injected_request)",
            spans.missing.len()
        );
    }
    Ok(())
}

/// Heads of 990 to 1040 bytes: the line goes in exactly when the whole
/// head lies within the first 1024 bytes of the send.
#[test]
fn byte_exact_injection_head_size_limit() -> Result<()> {
    run("byte-exact-sizes", |p| p.head_sizes(990, 1040), 0).map(|_| ())
}

/// With only the TCP option on, the same plan arrives exactly as sent:
/// the option rides in TCP headers and never changes a payload byte.
#[test]
fn byte_exact_with_tcp_option_only() -> Result<()> {
    let traced = Cgroup::new("byte-exact-tcpopt")?;
    let untraced = Cgroup::new("byte-exact-tcpopt-server")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let only_option = &["--propagation", "tcp-option"];
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, only_option)?;
    let server = RecordingServer::start(&untraced)?;
    let mut plan = Plan::new(server.port, 0x0b7_c0de);
    plan.all_cases(1);
    let client = WireClient::spawn(&traced, CLIENT, server.port, &plan.conns, THREADS, false)?;
    let opened = client.finish(RUN_TIMEOUT)?;
    let changed = changed(&plan, &recorded_for(&server, &opened)?);
    ensure!(
        changed.is_empty(),
        "{} of {} connections did not arrive as sent (first 10):\n{}",
        changed.len(),
        plan.conns.len(),
        changed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The option was in use: counters are refreshed once a second.
    let deadline = std::time::Instant::now() + SPAN_TIMEOUT;
    let written = loop {
        let n = agent.metric("tcp_options_written")?;
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(written > 0, "no TCP option was written");
    println!(
        "byte-exact-tcpopt: {} connections arrived byte for byte as sent; {written} TCP options written",
        plan.conns.len()
    );
    agent.ensure_healthy()?;
    agent.stop()
}

/// Every injected request of the byte-exact plan has its CLIENT span.
#[test]
fn client_span_for_every_injected_request() -> Result<()> {
    let spans = run("span-per-injection", |p| p.all_cases(1), 2000)?;
    if !spans.missing.is_empty() {
        bail!(
            "{} injected requests on {} connections have no CLIENT span: {:?}",
            spans.missing.values().sum::<usize>(),
            spans.missing.len(),
            spans.missing
        );
    }
    Ok(())
}
