//! The container image (`cargo xtask image`) run the way the Helm chart's
//! DaemonSet runs it: in the host's PID and network namespaces, with the
//! host's cgroup tree and tracefs mounted, and with exactly the capability
//! set the chart grants (read from the rendered chart), or privileged. It
//! must trace the host's processes as the binary does, and leave their
//! traffic flowing when it stops.

use anyhow::{ensure, Context, Result};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Access, Agent, Cgroup, Export, Protocol, Receiver, Select, SPAN_TIMEOUT};

use crate::chart;

fn traces_host_processes(access: Access) -> Result<()> {
    let cg = Cgroup::new("image")?;
    let svc = PyService::start(&cg, "shop", None)?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::launch_image(
        access,
        &[Select::Cgroup(&cg)],
        Export::Otlp {
            endpoint: &rx.endpoint(),
            protocol: Protocol::Grpc,
        },
        &[],
    )?;
    curl_expect(&cg, &svc.url("/work/in-image"), &[], 200)?;
    let spans = rx.wait_for(
        |s| {
            s.iter()
                .any(|x| x.is_server() && x.path() == Some("/work/in-image"))
                && s.iter().any(|x| x.is_client())
        },
        SPAN_TIMEOUT,
    )?;
    let server = spans
        .iter()
        .find(|x| x.is_server() && x.path() == Some("/work/in-image"))
        .unwrap();
    let client = spans.iter().find(|x| x.is_client()).unwrap();
    // Identity read through the host's /proc: the service's own name and
    // its host pid, not the container's view.
    ensure!(server.service() == Some("shop"), "service: {server}");
    ensure!(
        server.res_int("process.pid") == Some(i64::from(svc.pid())),
        "the service's host pid is {}: {server}",
        svc.pid()
    );
    // The propagation programs attached to the host's cgroup tree: curl's
    // context reached the service.
    ensure!(
        server.parent_span_id.as_deref() == Some(client.span_id.as_str())
            && server.trace_id == client.trace_id,
        "curl's CLIENT span is not the SERVER span's parent:\n{client}\n{server}"
    );
    agent.ensure_healthy()?;
    agent.stop()?;
    // The kernel programs went with the container: the service keeps serving.
    curl_expect(&cg, &svc.url("/work/after-stop"), &[], 200)
}

#[test]
fn image_with_the_charts_capabilities_traces_host_processes() -> Result<()> {
    let docs = chart::render(&serde_json::json!({}))?;
    let caps: Vec<&str> = chart::agent_container(&docs)?
        .pointer("/securityContext/capabilities/add")
        .and_then(|c| c.as_array())
        .context("the chart grants no capabilities")?
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    traces_host_processes(Access::Capabilities(&caps))
}

#[test]
fn image_privileged_traces_host_processes() -> Result<()> {
    traces_host_processes(Access::Privileged)
}
