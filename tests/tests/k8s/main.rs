//! End-to-end tests of Kubernetes and container identity: processes in
//! cgroups named the way the kubelet and containerd name them, a fake API
//! server serving their pods (list and a streaming watch over HTTPS with a
//! bearer token), selection by namespace and pod label, and tenants.
//!
//! Run as root, one test at a time (`cargo xtask test`, or `cargo test -p
//! clew-e2e -- --test-threads=1` with CLEW_BIN set or `target/release/clew` built).

mod api;
mod identity;
mod podman;
mod selection;
mod tenants;

use anyhow::{Context, Result};
use clew_e2e::kube::FakeApi;
use clew_e2e::peers::curl_expect;
use clew_e2e::{Agent, Cgroup, Export, Receiver, RecvSpan, Select, SPAN_TIMEOUT};

/// An agent exporting to `rx`, configured for `api` as if in its cluster.
fn kube_agent(select: &[Select], rx: &Receiver, api: &FakeApi, extra: &[&str]) -> Result<Agent> {
    let endpoint = rx.endpoint();
    let export = Export::Otlp {
        endpoint: &endpoint,
        protocol: rx.protocol(),
    };
    let env = api.agent_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Agent::launch_with_env(select, export, extra, &env)
}

/// One curl from `cg` to `url` (200 expected), then its service's SERVER span.
fn served(rx: &Receiver, cg: &Cgroup, port: u16, path: &str) -> Result<RecvSpan> {
    curl_expect(cg, &format!("http://127.0.0.1:{port}{path}"), &[], 200)?;
    let is = |s: &RecvSpan| {
        s.is_server() && s.path() == Some(path) && s.attr_int("server.port") == Some(port.into())
    };
    let spans = rx
        .wait_for(|s| s.iter().any(is), SPAN_TIMEOUT)
        .with_context(|| format!("waiting for the SERVER span of {path}"))?;
    Ok(spans.into_iter().find(is).expect("found above"))
}

/// Fails unless the span's resource has `key` = `want` (`None`: absent).
fn resource_is(s: &RecvSpan, key: &str, want: Option<&str>) -> Result<()> {
    anyhow::ensure!(
        s.res_str(key) == want,
        "resource {key} = {:?}, expected {want:?}\nspan: {s}",
        s.res_str(key)
    );
    Ok(())
}
