//! The synthetic probe: the agent's own request to a traced service comes
//! back as that service's SERVER span, parented on the probe's context and
//! acknowledged by the collector; with the collector gone the probe says
//! the export failed, and the agent keeps running.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::net::{http_status, http_text};
use clew_e2e::peers::PyService;
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, Value, SPAN_TIMEOUT};

/// Polls the agent until `what` of /metrics is at least 1 and returns /readyz.
fn wait_for_verdict(agent: &Agent, series: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if agent.metric(series)? >= 1 {
            return http_text(&agent.health_url("/readyz"));
        }
        if Instant::now() > deadline {
            bail!(
                "clew_{series} stayed 0 for {timeout:?}\n/readyz: {}\n{}",
                http_text(&agent.health_url("/readyz")).unwrap_or_default(),
                agent.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn synthetic_probe_proves_tracing_then_reports_the_export_failure() -> Result<()> {
    let cg = Cgroup::new("synthetic")?;
    let svc = PyService::start(&cg, "backend", None)?;
    let mut rx = Receiver::start(Protocol::Grpc)?;
    let target = svc.url("/work/healthz");
    let mut agent = Agent::start(
        &cg,
        &rx.endpoint(),
        Protocol::Grpc,
        &["--synthetic-probe", &target, "--synthetic-interval", "2s"],
    )?;

    let ready = wait_for_verdict(
        &agent,
        &format!("synthetic_probe_success{{target=\"{target}\"}}"),
        SPAN_TIMEOUT,
    )?;
    // The verdict names the trace; the collector holds its SERVER span.
    let trace_id = ready
        .split("(trace ")
        .nth(1)
        .and_then(|rest| rest.get(..32))
        .with_context(|| format!("no verified trace on /readyz:\n{ready}"))?
        .to_owned();
    let spans = rx.wait_for(
        |s| s.iter().any(|s| s.trace_id == trace_id && s.is_server()),
        SPAN_TIMEOUT,
    )?;
    let server = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.is_server())
        .expect("waited for");
    ensure!(
        server.is(clew_e2e::receiver::KIND_SERVER, "backend", "/work/healthz")
            && server.attrs.get("clew.synthetic") == Some(&Value::Bool(true))
            && server.parent_span_id.is_some(),
        "the probe's span: {server}"
    );
    // Only the probe's traces carry the mark.
    ensure!(
        spans
            .iter()
            .filter(|s| s.attrs.contains_key("clew.synthetic"))
            .all(|s| s.path() == Some("/work/healthz")),
        "clew.synthetic on other spans:\n{}",
        rx.dump()
    );

    // The collector goes away: the next probes' spans are built but not
    // acknowledged, and the probe says so.
    rx.stop();
    let ready = wait_for_verdict(
        &agent,
        &format!("synthetic_probe_failures{{target=\"{target}\",reason=\"export_failed\"}}"),
        Duration::from_secs(60),
    )?;
    ensure!(
        ready.starts_with("ready\n")
            && ready.contains(&format!("synthetic probe {target}: FAILING: export_failed")),
        "/readyz after the collector stopped:\n{ready}"
    );
    ensure!(
        agent.metric(&format!("synthetic_probe_healthy{{target=\"{target}\"}}"))? == 0,
        "the probe still reads healthy"
    );
    // Tracing itself is fine: the agent stays up and ready.
    agent.ensure_healthy()?;
    ensure!(http_status(&agent.health_url("/readyz"))? == 200);
    agent.stop()
}
