//! The Helm chart (deploy/helm/clew), rendered with Go's text/template (the
//! engine Helm uses; tests/peers/chart_render) and validated against the
//! Kubernetes schemas (`kubernetes-validate --strict`), with its defaults
//! and with the options a fleet turns on. What a cluster operator relies on
//! is checked field by field: the capability set, host access, probes, RBAC.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::env::{python, workspace_dir};
use clew_e2e::go_peer;
use clew_e2e::process::TempDir;
use clew_e2e::AGENT_CAPABILITIES;
use serde_json::{json, Value};
use std::process::Command;

/// The chart rendered with `overrides` merged into its values, one JSON
/// value per manifest, after the Kubernetes schemas accepted every one.
pub fn render(overrides: &Value) -> Result<Vec<Value>> {
    let chart = workspace_dir().join("deploy/helm/clew");
    let script = workspace_dir().join("tests/peers/chart_values.py");
    let py = python()?;
    let dir = TempDir::new("chart")?;
    let run = |cmd: &mut Command, what: &str| -> Result<String> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    let context = run(
        Command::new(&py.path)
            .arg(&script)
            .arg("context")
            .arg(&chart)
            .arg(overrides.to_string()),
        "chart_values.py context",
    )?;
    let context_file = dir.join("context.json");
    std::fs::write(&context_file, context)?;
    let rendered = run(
        Command::new(go_peer::binary("chart_render")?)
            .arg(&chart)
            .arg(&context_file),
        "chart_render",
    )?;
    let rendered_file = dir.join("rendered.yaml");
    std::fs::write(&rendered_file, &rendered)?;
    run(
        Command::new(&py.path)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(&rendered_file),
        &format!("kubernetes-validate on\n{rendered}\n"),
    )?;
    let docs = run(
        Command::new(&py.path)
            .arg(&script)
            .arg("documents")
            .arg(&rendered_file),
        "chart_values.py documents",
    )?;
    Ok(serde_json::from_str::<Vec<Value>>(&docs)?)
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// The DaemonSet's one container.
pub fn agent_container(docs: &[Value]) -> Result<&Value> {
    kind(docs, "DaemonSet")
        .context("no DaemonSet")?
        .pointer("/spec/template/spec/containers/0")
        .context("no container")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn chart_defaults_grant_exactly_the_agents_capabilities() -> Result<()> {
    let docs = render(&json!({}))?;
    let ds = kind(&docs, "DaemonSet").context("no DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"] == true, "hostPID: {pod}");
    ensure!(
        pod["tolerations"] == json!([{"operator": "Exists"}]),
        "every node, tainted or not: {pod}"
    );
    let c = agent_container(&docs)?;
    let sec = &c["securityContext"];
    ensure!(sec["privileged"] == false, "{sec}");
    ensure!(strings(&sec["capabilities"]["drop"]) == ["ALL"], "{sec}");
    ensure!(
        strings(&sec["capabilities"]["add"]) == AGENT_CAPABILITIES,
        "{sec}"
    );
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_array()
        .context("no mounts")?
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap_or_default(),
                m["readOnly"] == true,
            )
        })
        .collect();
    ensure!(
        mounts == [("/sys/fs/cgroup", true), ("/sys/kernel/tracing", false)],
        "mounts: {mounts:?}"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        ensure!(c[probe]["httpGet"]["path"] == path, "{probe}: {c}");
    }
    ensure!(
        strings(&c["args"]) == ["run", "--health-listen", "0.0.0.0:9464"],
        "args: {c}"
    );
    ensure!(
        c["resources"]["limits"].get("cpu").is_none(),
        "a CPU limit throttles the agent into dropping events: {c}"
    );
    let env = &c["env"];
    ensure!(
        env.as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "NODE_NAME"
                && v["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")),
        "NODE_NAME from the downward API: {env}"
    );
    let role = kind(&docs, "ClusterRole").context("no ClusterRole")?;
    ensure!(
        role["rules"]
            == json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
        "read-only access to pods, nothing else: {role}"
    );
    for optional in ["ServiceMonitor", "ConfigMap"] {
        ensure!(
            kind(&docs, optional).is_none(),
            "no {optional} unless asked"
        );
    }
    Ok(())
}

#[test]
fn chart_options_privileged_mtls_config_file_resource_attributes_and_service_monitor() -> Result<()>
{
    let example = std::fs::read_to_string(workspace_dir().join("deploy/clew.example.toml"))?;
    let docs = render(&json!({
        "config": example,
        "privileged": true,
        "otlp": {"endpoint": "https://gateway.observability:4317", "tlsSecret": "clew-otlp"},
        "resourceAttributes": {"k8s.cluster.name": "prod-eu", "deployment.environment.name": "production"},
        "extraArgs": ["--propagation", "headers"],
        "serviceMonitor": {"enabled": true, "interval": "15s"},
    }))?;
    let c = agent_container(&docs)?;
    ensure!(
        c["securityContext"] == json!({"privileged": true}),
        "{}",
        c["securityContext"]
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .context("no env")?
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["value"].as_str()?)))
        .collect();
    for want in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://gateway.observability:4317",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/etc/clew/otlp-tls/ca.crt",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "/etc/clew/otlp-tls/tls.crt",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "/etc/clew/otlp-tls/tls.key",
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=production,k8s.cluster.name=prod-eu",
        ),
    ] {
        ensure!(env.contains(&want), "{want:?} not in {env:?}");
    }
    ensure!(
        strings(&c["args"]).ends_with(&["--propagation", "headers"]),
        "{c}"
    );
    let ds = kind(&docs, "DaemonSet").unwrap();
    ensure!(
        ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["secret"]["secretName"] == "clew-otlp")),
        "the TLS secret is mounted: {ds}"
    );
    // The file reaches the agent whole: the ConfigMap holds it byte for
    // byte, mounted where CLEW_CONFIG points.
    let cm = kind(&docs, "ConfigMap").context("no ConfigMap")?;
    ensure!(
        cm["data"]["clew.toml"].as_str().map(str::trim_end) == Some(example.trim_end()),
        "the ConfigMap does not hold the example file as it is:\n{}",
        cm["data"]["clew.toml"]
    );
    ensure!(
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == "/etc/clew/config")),
        "{c}"
    );
    ensure!(
        ds["spec"]["template"]["metadata"]["annotations"]["clew.dev/config-sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64),
        "a changed configuration must roll the pods: {ds}"
    );
    let sm = kind(&docs, "ServiceMonitor").context("no ServiceMonitor")?;
    ensure!(
        sm["spec"]["endpoints"]
            == json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}]),
        "{sm}"
    );
    Ok(())
}
