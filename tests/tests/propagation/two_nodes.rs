//! Two "nodes" (network namespaces joined by a veth pair), each with its
//! own agent: the traceparent the first node's kernel writes carries the
//! trace to the second node's agent.
//!
//! The agents themselves run in the root network namespace and export to
//! receivers on its 127.0.0.1: an agent observes through syscall
//! tracepoints and cgroup programs, which do not depend on the network
//! namespace of the processes it traces. Only the services, curl and the
//! request between them live in the two namespaces; no traffic goes
//! anywhere but 10.231.0.1, 10.231.0.2 and loopback.

use anyhow::{bail, Context, Result};
use clew_e2e::netns::TwoNodes;
use clew_e2e::peers::{curl_in, PyService};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};

const N: usize = 10;
const ADDR_A: &str = "10.231.0.1";
const ADDR_B: &str = "10.231.0.2";

#[test]
fn two_nodes_over_veth() -> Result<()> {
    // Declared first, dropped last: the namespaces outlive every process in them.
    let nodes = TwoNodes::create(ADDR_A, ADDR_B)?;
    let cg_a = Cgroup::new("node-a")?;
    let cg_b = Cgroup::new("node-b")?;
    let rx_a = Receiver::start(Protocol::Grpc)?;
    let rx_b = Receiver::start(Protocol::Grpc)?;
    let mut agent_a = Agent::start(&cg_a, &rx_a.endpoint(), Protocol::Grpc, &[])?;
    let mut agent_b = Agent::start(&cg_b, &rx_b.endpoint(), Protocol::Grpc, &[])?;
    let svc_b = PyService::opts("svc-b")
        .bind(ADDR_B)
        .netns(&nodes.b)
        .start(&cg_b)?;
    let svc_a = PyService::opts("svc-a")
        .bind(ADDR_A)
        .netns(&nodes.a)
        .downstream(&svc_b.url(""))
        .start(&cg_a)?;

    for i in 0..N {
        let url = svc_a.url(&format!("/chain/veth-{i}"));
        let status = curl_in(&cg_a, Some(&nodes.a), &url, &[])?;
        if status != 200 {
            bail!(
                "curl {url} in {}: status {status}\n{}\n{}",
                nodes.a.name(),
                svc_a.log(),
                svc_b.log()
            );
        }
    }

    let is = |s: &RecvSpan, server: bool, service: &str, path: &str| {
        s.is_server() == server && s.service() == Some(service) && s.path() == Some(path)
    };
    let paths: Vec<(String, String)> = (0..N)
        .map(|i| (format!("/chain/veth-{i}"), format!("/work/veth-{i}")))
        .collect();
    let spans_a = rx_a
        .wait_for(
            |s| {
                paths.iter().all(|(chain, work)| {
                    s.iter().any(|x| is(x, true, "svc-a", chain))
                        && s.iter().any(|x| is(x, false, "svc-a", work))
                })
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for node A's SERVER and CLIENT spans (agent A)")?;
    let spans_b = rx_b
        .wait_for(
            |s| {
                paths
                    .iter()
                    .all(|(_, work)| s.iter().any(|x| is(x, true, "svc-b", work)))
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for node B's SERVER spans (agent B)")?;
    let received = svc_b.received()?;

    let mut bad = Vec::new();
    for (chain, work) in &paths {
        let one =
            |spans: &[RecvSpan], server: bool, service: &str, path: &str| -> Result<RecvSpan> {
                let found: Vec<&RecvSpan> = spans
                    .iter()
                    .filter(|s| is(s, server, service, path))
                    .collect();
                match found[..] {
                    [s] => Ok(s.clone()),
                    _ => bail!(
                        "expected one {} span of {service} for {path}, got {}: {found:?}",
                        if server { "SERVER" } else { "CLIENT" },
                        found.len()
                    ),
                }
            };
        let a_server = one(&spans_a, true, "svc-a", chain)?;
        let a_client = one(&spans_a, false, "svc-a", work)?;
        let b_server = one(&spans_b, true, "svc-b", work)?;
        let header: Vec<String> = received
            .iter()
            .filter(|r| r.path == *work)
            .flat_map(|r| r.header("traceparent").into_iter().map(String::from))
            .collect();
        let want_header = format!("00-{}-{}-01", a_client.trace_id, a_client.span_id);
        let mut why = Vec::new();
        if a_client.trace_id != a_server.trace_id
            || a_client.parent_span_id.as_deref() != Some(&a_server.span_id)
        {
            why.push("A's CLIENT span is not a child of A's SERVER span");
        }
        if b_server.trace_id != a_client.trace_id {
            why.push("B's SERVER span is not in A's trace");
        }
        if b_server.parent_span_id.as_deref() != Some(&a_client.span_id) {
            why.push("B's SERVER span's parent is not A's CLIENT span");
        }
        if header != [want_header.clone()] {
            why.push("B did not receive exactly one traceparent naming A's CLIENT span");
        }
        if !why.is_empty() {
            bad.push(format!(
                "{work}: {}\n  A SERVER {a_server}\n  A CLIENT {a_client}\n  B SERVER {b_server}\n  B received traceparent {header:?}, wanted [{want_header:?}]",
                why.join("; ")
            ));
        }
    }
    println!(
        "two_nodes: {}/{N} requests form one trace across both agents",
        N - bad.len()
    );
    if !bad.is_empty() {
        bail!(
            "{} of {N} requests did not join across the nodes:\n{}\n{}\n{}",
            bad.len(),
            bad.join("\n"),
            rx_a.dump(),
            rx_b.dump()
        );
    }
    // Each agent exports only its own node's processes.
    let strays_a: Vec<_> = spans_a
        .iter()
        .filter(|s| s.service() == Some("svc-b"))
        .collect();
    let strays_b: Vec<_> = spans_b
        .iter()
        .filter(|s| s.service() != Some("svc-b"))
        .collect();
    if !strays_a.is_empty() || !strays_b.is_empty() {
        bail!("spans reached the other node's receiver: A got {strays_a:?}, B got {strays_b:?}");
    }
    agent_a.ensure_healthy()?;
    agent_b.ensure_healthy()?;
    agent_a.stop()?;
    agent_b.stop()
}
