//! Connections opened before the agent started: their later requests are traced.

use anyhow::{Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::peers::{KeepAliveSession, PyService, RAW_CLIENT};
use clew_e2e::{Agent, Cgroup, Expect, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};
use std::time::Duration;

/// Sent on the old connection once the agent runs: (path, status).
const AFTER: &[(&str, u16)] = &[
    ("/work/after-1", 200),
    ("/fail", 500),
    ("/missing-after", 404),
];

#[test]
fn connections_opened_before_the_agent() -> Result<()> {
    let cg = Cgroup::new("preexisting")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let svc = PyService::start(&cg, "backend", None)?;
    // One keep-alive connection, already used once, before any agent runs.
    let mut session = KeepAliveSession::start(&cg, svc.port)?;
    session.get_expect("/work/before", 200)?;

    let mut agent = Agent::start(&cg, &rx.endpoint(), Protocol::Grpc, &[])?;
    for &(path, status) in AFTER {
        session.get_expect(path, status)?;
    }

    let expects: Vec<Expect> = AFTER
        .iter()
        .flat_map(|&(path, status)| {
            [
                Expect::server("backend", path, svc.port),
                Expect::client(RAW_CLIENT, path, svc.port),
            ]
            .map(|e| e.status(status.into()).user_agent("clew-e2e-raw"))
        })
        .collect();
    let spans = rx
        .wait_for(
            |s| expects.iter().all(|e| !e.select(s).is_empty()),
            SPAN_TIMEOUT,
        )
        .context("waiting for the SERVER and CLIENT spans of the requests on the old connection")?;
    for e in &expects {
        e.one(&spans)?;
    }
    // Exactly those: 3 SERVER spans and 3 CLIENT spans, nothing else.
    let ours = |s: &RecvSpan| [Some("backend"), Some(RAW_CLIENT)].contains(&s.service());
    rx.expect_none_for(
        |s| ours(s) && !expects.iter().any(|e| e.matches(s)),
        Duration::from_secs(2),
    )?;
    expect_count(&rx.spans(), "SERVER spans", AFTER.len(), |s| {
        ours(s) && s.is_server()
    })?;
    expect_count(&rx.spans(), "CLIENT spans", AFTER.len(), |s| {
        ours(s) && s.is_client()
    })?;

    session.finish()?;
    agent.ensure_healthy()?;
    agent.stop()
}
