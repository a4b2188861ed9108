//! A real container: a Go service alone in its own root filesystem under
//! podman, traced by the agent run from its own image the way the
//! DaemonSet runs it; its spans carry podman's container id, its
//! downstream on the host none.

use anyhow::{ensure, Result};
use clew_e2e::container::Container;
use clew_e2e::go_peer::{build_once, Symbols};
use clew_e2e::net::{free_port, wait_listening};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::receiver::{KIND_CLIENT, KIND_SERVER};
use clew_e2e::{Access, Agent, Cgroup, Export, Protocol, Receiver, Select, SPAN_TIMEOUT};
use std::time::Duration;

use super::resource_is;

#[test]
fn podman_container_spans_carry_its_id() -> Result<()> {
    let cg = Cgroup::new("k8s-podman")?;
    let backend = PyService::start(&cg, "backend", None)?;
    let port = free_port()?;
    let frontend = build_once("go_nesting", Symbols::Static)?;
    let container = Container::run(&frontend, &[&format!("127.0.0.1:{port}"), &backend.url("")])?;
    wait_listening(port, Duration::from_secs(20), || {
        format!("the container {} never listened", container.id)
    })?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let endpoint = rx.endpoint();
    let in_container = container.cgroup()?;
    let mut agent = Agent::launch_image(
        Access::Privileged,
        &[Select::Cgroup(&cg)],
        Export::Otlp {
            endpoint: &endpoint,
            protocol: Protocol::Grpc,
        },
        &["--cgroup", &in_container],
    )?;
    curl_expect(&cg, &format!("http://127.0.0.1:{port}/chain/3"), &[], 200)?;
    let spans = rx.wait_for(
        |s| {
            s.iter()
                .any(|x| x.kind == KIND_SERVER && x.path() == Some("/chain/3"))
                && s.iter().any(|x| {
                    x.kind == KIND_CLIENT
                        && x.path() == Some("/work/3")
                        && x.service() != Some("curl")
                })
                && s.iter().any(|x| x.is(KIND_SERVER, "backend", "/work/3"))
        },
        SPAN_TIMEOUT,
    )?;
    let go_server = spans
        .iter()
        .find(|x| x.kind == KIND_SERVER && x.path() == Some("/chain/3"))
        .expect("waited for");
    let go_client = spans
        .iter()
        .find(|x| {
            x.kind == KIND_CLIENT && x.path() == Some("/work/3") && x.service() != Some("curl")
        })
        .expect("waited for");
    for s in [go_server, go_client] {
        resource_is(s, "container.id", Some(&container.id))?;
        resource_is(s, "container.runtime.name", Some("podman"))?;
        resource_is(s, "service.name", Some("go_nesting_static"))?;
        ensure!(
            s.res_int("process.pid") == Some(i64::from(container.pid)),
            "the container's host pid is {}: {s}",
            container.pid
        );
    }
    let backend_server = spans
        .iter()
        .find(|x| x.is(KIND_SERVER, "backend", "/work/3"))
        .expect("waited for");
    resource_is(backend_server, "container.id", None)?;
    ensure!(
        backend_server.parent_span_id.as_deref() == Some(go_client.span_id.as_str()),
        "the container's CLIENT span is not the backend SERVER span's parent:\n{go_client}\n{backend_server}"
    );
    agent.ensure_healthy()?;
    agent.stop()
}
