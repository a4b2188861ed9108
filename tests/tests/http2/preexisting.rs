//! A gRPC channel opened before the agent started: the HPACK dynamic
//! tables of its connection were filled before capture began, so later
//! calls' headers may refer to entries the agent never saw. The agent
//! follows the connection from its first frames (the process's side of it
//! from its sockets): each call gives a span on each side, complete, or
//! marked degraded (`clew.http2.unknown_fields`): never a wrong method
//! name or status. A fresh channel afterwards is traced in full.

use anyhow::{bail, Context, Result};
use clew_e2e::check_h2::{is_degraded, RpcExpect};
use clew_e2e::grpc::{code, span_name, GrpcService, GrpcSession, GRPC_CLIENT, SERVICE};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};
use std::time::Duration;

/// Run on the old channel once the agent runs: (step, method, code).
const AFTER: &[(&str, &str, i64)] = &[
    ("unary", "Unary", code::OK),
    ("status:13", "Unary", code::INTERNAL),
    ("status:5", "Unary", code::NOT_FOUND),
    ("server-stream", "ServerStream", code::OK),
    ("unary", "Unary", code::OK),
];

#[test]
fn grpc_channel_opened_before_the_agent() -> Result<()> {
    let cg = Cgroup::new("h2-preexisting")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let svc = GrpcService::opts("grpc-svc").start(&cg)?;
    let mut session = GrpcSession::start(&cg, &svc.target())?;
    // The connection and both HPACK tables are in use before the agent.
    session.step("unary")?.expect(code::OK)?;
    session.step("status:13")?.expect(code::INTERNAL)?;

    let mut agent = Agent::start(&cg, &rx.endpoint(), Protocol::Grpc, &[])?;
    for &(step, _, c) in AFTER {
        session.step(step)?.expect(c)?;
    }
    // A new connection after those calls: traced in full, and its spans
    // arriving means the old connection's have been processed.
    session.step("sentinel")?.expect(code::OK)?;
    let sentinels = [
        RpcExpect::server("grpc-svc", SERVICE, "Sentinel", svc.port),
        RpcExpect::client(GRPC_CLIENT, SERVICE, "Sentinel", svc.port),
    ];
    let spans = rx
        .wait_for(
            |s| sentinels.iter().all(|e| !e.select(s).is_empty()),
            SPAN_TIMEOUT,
        )
        .context("waiting for the sentinel call on a fresh channel")?;
    for e in &sentinels {
        let got = e.select(&spans);
        anyhow::ensure!(got.len() == 1, "{} spans of {e:?}", got.len());
        e.check(got[0])?;
    }
    // Nothing wrong arrives late either.
    rx.expect_none_for(|s| judge(s, svc.port).is_err(), Duration::from_secs(2))?;

    let old: Vec<RecvSpan> = rx
        .spans()
        .into_iter()
        .filter(|s| ours(s) && s.name != span_name("Sentinel"))
        .collect();
    let mut complete = [0usize; 2];
    let mut degraded = [0usize; 2];
    for s in &old {
        let side = usize::from(s.is_client());
        match judge(s, svc.port)? {
            Verdict::Complete => complete[side] += 1,
            Verdict::Degraded => degraded[side] += 1,
        }
    }
    // Never more spans than calls, on either side.
    for side in 0..2 {
        if complete[side] + degraded[side] > AFTER.len() {
            bail!(
                "{} spans for {} calls:\n{}",
                complete[side] + degraded[side],
                AFTER.len(),
                rx.dump()
            );
        }
    }
    // Exact spans: each is one of the calls made, none twice.
    for &(_, method, c) in AFTER {
        let made = AFTER.iter().filter(|a| a.1 == method && a.2 == c).count();
        for e in [
            RpcExpect::server("grpc-svc", SERVICE, method, svc.port).code(c),
            RpcExpect::client(GRPC_CLIENT, SERVICE, method, svc.port).code(c),
        ] {
            let got = e
                .select_exact(&old)
                .into_iter()
                .filter(|s| !is_degraded(s))
                .count();
            if got > made {
                bail!(
                    "{got} complete spans of {e:?} for {made} calls:\n{}",
                    rx.dump()
                );
            }
        }
    }
    let absent = |side: usize| AFTER.len() - complete[side] - degraded[side];
    // The old connection is followed: every call has its span.
    for (side, name) in [(0, "SERVER"), (1, "CLIENT")] {
        if absent(side) > 0 {
            bail!(
                "{} of {} calls on the old channel gave no {name} span; agent: {}\n{}",
                absent(side),
                AFTER.len(),
                counters(&agent),
                rx.dump()
            );
        }
    }
    eprintln!(
        "old channel, {} calls: SERVER {} complete / {} degraded / {} absent; CLIENT {} complete / {} degraded / {} absent",
        AFTER.len(),
        complete[0], degraded[0], absent(0),
        complete[1], degraded[1], absent(1),
    );
    eprintln!("{}", counters(&agent));
    session.finish()?;
    agent.ensure_healthy()?;
    agent.stop()
}

fn ours(s: &RecvSpan) -> bool {
    [Some("grpc-svc"), Some(GRPC_CLIENT)].contains(&s.service())
}

enum Verdict {
    Complete,
    Degraded,
}

/// A span from the old channel: complete and exactly one of the calls
/// made, or marked degraded and claiming nothing false.
fn judge(s: &RecvSpan, port: u16) -> Result<Verdict> {
    if !ours(s) || s.name == span_name("Sentinel") {
        return Ok(Verdict::Complete);
    }
    let methods: Vec<&str> = AFTER.iter().map(|a| a.1).collect();
    if is_degraded(s) {
        // Whatever it does claim must be true of some call made.
        if let Some(m) = s.attr_str("rpc.method") {
            if !methods.contains(&m) {
                bail!("degraded span with a wrong rpc.method: {s}");
            }
        }
        if s.name.starts_with(SERVICE) && !methods.iter().any(|m| s.name == span_name(m)) {
            bail!("degraded span with a wrong name: {s}");
        }
        if let Some(c) = s.attr_int("rpc.grpc.status_code") {
            if !AFTER
                .iter()
                .any(|a| a.2 == c && s.attr_str("rpc.method").is_none_or(|m| m == a.1))
            {
                bail!("degraded span with a wrong status code: {s}");
            }
        }
        return Ok(Verdict::Degraded);
    }
    for &(_, method, c) in AFTER {
        let e = if s.is_server() {
            RpcExpect::server("grpc-svc", SERVICE, method, port)
        } else {
            RpcExpect::client(GRPC_CLIENT, SERVICE, method, port)
        }
        .code(c);
        if e.check(s).is_ok() {
            return Ok(Verdict::Complete);
        }
    }
    bail!("span from the old channel neither right nor marked degraded: {s}")
}

/// The agent's HTTP/2 counters, for the report.
fn counters(agent: &Agent) -> String {
    ["parse_errors", "unanswered", "orphan_responses", "spans"]
        .iter()
        .map(|c| {
            let name = format!("protocol_{c}{{protocol=\"http2\"}}");
            match agent.metric(&name) {
                Ok(v) => format!("{name}={v}"),
                Err(_) => format!("{name}=absent"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
