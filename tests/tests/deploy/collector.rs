//! The gateway tier's OpenTelemetry Collector configurations
//! (deploy/collector/). No collector binary installs on these machines, so
//! what is checked is what a typo breaks: every component a pipeline names
//! is defined, traces are routed by trace id to the tier that samples them,
//! and the sampling keeps errors.

use anyhow::{ensure, Context, Result};
use clew_e2e::env::{python, workspace_dir};
use serde_json::Value;
use std::process::Command;

fn load(name: &str) -> Result<Value> {
    let path = workspace_dir().join("deploy/collector").join(name);
    let out = Command::new(python()?.path)
        .arg(workspace_dir().join("tests/peers/chart_values.py"))
        .arg("documents")
        .arg(&path)
        .output()?;
    ensure!(
        out.status.success(),
        "{name} does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    docs.into_iter().next().context("empty")
}

/// Every receiver, processor and exporter a pipeline names is configured.
fn pipelines_resolve(name: &str, config: &Value) -> Result<()> {
    let pipelines = config["service"]["pipelines"]
        .as_object()
        .with_context(|| format!("{name}: no pipelines"))?;
    for (pipeline, p) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            for component in p[section].as_array().into_iter().flatten() {
                let component = component.as_str().unwrap_or_default();
                ensure!(
                    config[section].get(component).is_some(),
                    "{name}: pipeline {pipeline} names {section} `{component}`, which is not configured"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn collector_tiers_route_by_trace_id_then_keep_errors() -> Result<()> {
    let lb = load("loadbalancer.yaml")?;
    pipelines_resolve("loadbalancer.yaml", &lb)?;
    ensure!(
        lb["exporters"]["loadbalancing"]["routing_key"] == "traceID",
        "{}",
        lb["exporters"]
    );
    ensure!(
        lb["service"]["pipelines"]["traces"]["exporters"] == serde_json::json!(["loadbalancing"])
    );

    let gw = load("gateway.yaml")?;
    pipelines_resolve("gateway.yaml", &gw)?;
    let policies = gw["processors"]["tail_sampling"]["policies"]
        .as_array()
        .context("no tail sampling policies")?;
    ensure!(
        policies.iter().any(|p| p["type"] == "status_code"
            && p["status_code"]["status_codes"] == serde_json::json!(["ERROR"])),
        "errors are not kept: {policies:?}"
    );
    for p in policies {
        let kind = p["type"].as_str().unwrap_or_default();
        ensure!(
            p.get(kind).is_some(),
            "policy {} of type {kind} has no `{kind}` settings",
            p["name"]
        );
    }
    let traces = &gw["service"]["pipelines"]["traces"]["processors"];
    ensure!(
        traces[0] == "memory_limiter" && traces[1] == "tail_sampling",
        "sampling must see the spans before batching: {traces}"
    );
    Ok(())
}
