//! The OTLP exporter the way fleets configure it: mTLS with gzip over gRPC, a
//! collector that throttles with Retry-After over HTTP, a wrong CA; and the
//! agent never traces its own exports, even when its executable is selected.

use anyhow::{ensure, Result};
use clew_e2e::check::wait_for_each;
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::tls::TestPki;
use clew_e2e::{Agent, Cgroup, Expect, Export, Receiver, RecvSpan, Select, Value, SPAN_TIMEOUT};
use std::path::PathBuf;
use std::time::Duration;

const REQUESTS: usize = 5;

/// The agent's TLS variables for `pki`, trusting `ca`.
fn tls_env(pki: &TestPki, ca: &str) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path(ca)),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.path("client.pem"),
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client.key")),
    ]
}

fn launch(
    select: &[Select],
    rx: &Receiver,
    env: &[(&'static str, PathBuf)],
    more_env: &[(&str, &str)],
) -> Result<Agent> {
    let paths: Vec<(&str, String)> = env
        .iter()
        .map(|(k, v)| (*k, v.display().to_string()))
        .collect();
    let mut all: Vec<(&str, &str)> = paths.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(more_env);
    let export = Export::Otlp {
        endpoint: &rx.endpoint(),
        protocol: rx.protocol(),
    };
    Agent::launch_with_env(select, export, &[], &all)
}

fn requests(cg: &Cgroup, svc: &PyService, phase: &str) -> Result<Vec<String>> {
    let paths: Vec<String> = (0..REQUESTS)
        .map(|i| format!("/work/{phase}-{i}"))
        .collect();
    for path in &paths {
        curl_expect(cg, &svc.url(path), &[], 200)?;
    }
    Ok(paths)
}

/// Every request's SERVER span, waited for.
fn expect_all(rx: &Receiver, svc: &PyService, paths: &[String]) -> Result<Vec<RecvSpan>> {
    let expects: Vec<_> = paths
        .iter()
        .map(|p| Expect::server("backend", p, svc.port))
        .collect();
    wait_for_each(rx, &expects)
}

#[test]
fn grpc_mtls_with_gzip_delivers_every_span_and_the_agent_never_traces_itself() -> Result<()> {
    let pki = TestPki::new()?;
    let rx = Receiver::start_grpc_mtls(&pki)?;
    let cg = Cgroup::new("export-mtls")?;
    let svc = PyService::start(&cg, "backend", None)?;
    // Selecting the agent's own executable: its exports must still not be traced.
    let select = [Select::Cgroup(&cg), Select::Exe("clew")];
    let more = [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=e2e-cluster"),
    ];
    let mut agent = launch(&select, &rx, &tls_env(&pki, "ca.pem"), &more)?;

    let paths = requests(&cg, &svc, "mtls")?;
    for span in expect_all(&rx, &svc, &paths)? {
        ensure!(
            span.res_str("k8s.cluster.name") == Some("e2e-cluster"),
            "the agent's resource attributes are missing: {span}"
        );
    }
    let encodings = rx.encodings();
    ensure!(
        !encodings.is_empty() && encodings.iter().all(|e| e == "gzip"),
        "exports not gzip-compressed: {encodings:?}"
    );
    // Exports made so far would have been traced and sent by now.
    let (own_pid, port) = (i64::from(agent.pid()), i64::from(rx.port()));
    rx.expect_none_for(
        |s| {
            s.resource.get("process.pid") == Some(&Value::Int(own_pid))
                || s.attr_int("server.port") == Some(port)
        },
        Duration::from_secs(3),
    )?;
    agent.ensure_healthy()?;
    agent.stop()
}

#[test]
fn grpc_mtls_with_the_wrong_ca_exports_nothing_says_why_and_keeps_running() -> Result<()> {
    let pki = TestPki::new()?;
    let rx = Receiver::start_grpc_mtls(&pki)?;
    let cg = Cgroup::new("export-wrong-ca")?;
    let svc = PyService::start(&cg, "backend", None)?;
    let mut agent = launch(
        &[Select::Cgroup(&cg)],
        &rx,
        &tls_env(&pki, "other-ca.pem"),
        &[],
    )?;
    requests(&cg, &svc, "wrong-ca")?;
    let log = agent.wait_log(|log| log.contains("certificate"), SPAN_TIMEOUT)?;
    ensure!(
        log.contains("OTLP collector unreachable"),
        "no export warning in the log:\n{log}"
    );
    ensure!(rx.span_count() == 0, "spans arrived:\n{}", rx.dump());
    agent.ensure_healthy()?;
    agent.stop()
}

#[test]
fn http_collector_throttling_with_retry_after_is_waited_out_and_no_span_is_lost() -> Result<()> {
    let retry_after = Duration::from_secs(2);
    let rx = Receiver::start_http_throttled(1, retry_after)?;
    let cg = Cgroup::new("export-retry-after")?;
    let svc = PyService::start(&cg, "backend", None)?;
    let more = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
    let mut agent = launch(&[Select::Cgroup(&cg)], &rx, &[], &more)?;

    let paths = requests(&cg, &svc, "throttled")?;
    expect_all(&rx, &svc, &paths)?;
    let (refused, accepted) = rx.export_times();
    ensure!(
        refused.len() == 1,
        "refused {} exports, expected 1",
        refused.len()
    );
    let waited = accepted[0].duration_since(refused[0]);
    ensure!(
        waited >= retry_after,
        "the retry came {waited:?} after the 503, Retry-After said {retry_after:?}"
    );
    // Exactly once each: nothing lost, nothing sent twice.
    let servers = rx.spans().into_iter().filter(RecvSpan::is_server).count();
    ensure!(
        servers == REQUESTS,
        "{servers} SERVER spans:\n{}",
        rx.dump()
    );
    ensure!(
        rx.encodings().iter().all(|e| e == "gzip"),
        "{:?}",
        rx.encodings()
    );
    agent.ensure_healthy()?;
    agent.stop()
}
