//! A service that exports its own spans through the OpenTelemetry SDK
//! (from PyPI), to the same receiver as Clew, between a traced curl and a
//! traced plain service: every span id arrives once, and the trace is one
//! connected chain curl → SDK SERVER → SDK CLIENT → backend SERVER.

use anyhow::{ensure, Context, Result};
use clew_e2e::env::{peers_dir, python};
use clew_e2e::net::{free_port, wait_listening_local};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::process::{Supervised, TempDir};
use clew_e2e::receiver::{KIND_CLIENT, KIND_SERVER};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const SDK_SERVICE: &str = "sdk-svc";
const REQUESTS: usize = 5;

fn from_sdk(s: &RecvSpan) -> bool {
    s.res_str("telemetry.sdk.name") == Some("opentelemetry")
}

#[test]
fn sdk_service_spans_are_not_duplicated() -> Result<()> {
    let cg = Cgroup::new("sdk")?;
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    let mut agent = Agent::start(&cg, &rx.endpoint(), Protocol::HttpProtobuf, &[])?;
    let backend = PyService::start(&cg, "backend", None)?;
    let port = free_port()?;
    let dir = TempDir::new("sdk-svc")?;
    let mut cmd = Command::new(python()?.path);
    cmd.arg(peers_dir().join("sdk_service.py"))
        .args(["--port", &port.to_string()])
        .args(["--downstream", &backend.url("")])
        .env("OTEL_SERVICE_NAME", SDK_SERVICE)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("PYTHONUNBUFFERED", "1");
    let svc = Supervised::start(SDK_SERVICE, &mut cmd, dir.join("sdk.log"), |c| cg.spawn(c))?;
    wait_listening_local(port, Duration::from_secs(30), || svc.log_tail(40))?;

    for i in 0..REQUESTS {
        curl_expect(&cg, &format!("http://127.0.0.1:{port}/sdk/r{i}"), &[], 200)?;
    }
    let path = |i: usize, prefix: &str| format!("/{prefix}/r{i}");
    rx.wait_for(
        |s| {
            (0..REQUESTS).all(|i| {
                s.iter()
                    .any(|x| x.is(KIND_SERVER, "backend", &path(i, "work")))
                    && s.iter().any(|x| {
                        x.kind == KIND_CLIENT
                            && x.service() == Some("curl")
                            && x.path() == Some(path(i, "sdk").as_str())
                    })
                    && s.iter().any(|x| {
                        from_sdk(x)
                            && x.kind == KIND_SERVER
                            && x.attr_str("url.path") == Some(path(i, "sdk").as_str())
                    })
                    && s.iter().any(|x| {
                        from_sdk(x)
                            && x.kind == KIND_CLIENT
                            && x.attr_str("url.full")
                                .is_some_and(|u| u.ends_with(&path(i, "work")))
                    })
            })
        },
        SPAN_TIMEOUT,
    )?;
    // A negative check needs a window: any late duplicate arrives in it.
    std::thread::sleep(Duration::from_secs(2));
    let spans = rx.spans();

    let mut ids: HashMap<&str, usize> = HashMap::new();
    for s in &spans {
        *ids.entry(&s.span_id).or_default() += 1;
    }
    let dups: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| ids[s.span_id.as_str()] > 1)
        .collect();
    ensure!(
        dups.is_empty(),
        "{} spans share their span id with another:\n{}",
        dups.len(),
        dups.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let clew_in_sdk = spans
        .iter()
        .filter(|s| s.service() == Some(SDK_SERVICE) && !from_sdk(s))
        .count();
    ensure!(
        clew_in_sdk == 0,
        "Clew exported {clew_in_sdk} spans of the SDK service\n{}",
        rx.dump()
    );

    let by_id: HashMap<&str, &RecvSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for i in 0..REQUESTS {
        let backend_server = spans
            .iter()
            .find(|x| x.is(KIND_SERVER, "backend", &path(i, "work")))
            .context("backend SERVER")?;
        // Walk up: backend SERVER → SDK CLIENT → SDK SERVER → curl CLIENT.
        let mut chain = vec![backend_server];
        while let Some(p) = chain.last().and_then(|s| s.parent_span_id.as_deref()) {
            let parent = by_id.get(p).with_context(|| {
                format!(
                    "request {i}: parent {p} of {} was never exported\n{}",
                    chain.last().map(|s| s.to_string()).unwrap_or_default(),
                    rx.dump()
                )
            })?;
            chain.push(parent);
        }
        let shape: Vec<String> = chain
            .iter()
            .map(|s| format!("{}:{}:{}", s.service().unwrap_or("?"), s.kind, from_sdk(s)))
            .collect();
        let want = [
            "backend:2:false",
            "sdk-svc:3:true",
            "sdk-svc:2:true",
            "curl:3:false",
        ];
        ensure!(
            shape == want,
            "request {i}: chain {shape:?}, expected {want:?}\n{}",
            rx.dump()
        );
        ensure!(
            chain.iter().all(|s| s.trace_id == chain[0].trace_id),
            "request {i}: more than one trace id in the chain"
        );
    }
    println!(
        "{REQUESTS} requests: {} spans, unique ids, each chain curl → SDK SERVER → SDK CLIENT → backend connected",
        spans.len()
    );
    agent.ensure_healthy()?;
    agent.stop()
}
