//! Context across a TLS hop between two "nodes" (network namespaces joined
//! by a veth pair), each with its own agent: A's plaintext service calls B's
//! HTTPS service with Python's `ssl`. The payload cannot carry a header, so
//! the TCP option does, per request (new connections and one kept-alive
//! connection alike).

use anyhow::{bail, Context, Result};
use clew_e2e::netns::TwoNodes;
use clew_e2e::peers::{curl_in, PyService};
use clew_e2e::tls::TestCert;
use clew_e2e::{Agent, Cgroup, Expect, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};

use crate::ensure_parent;

const ADDR_A: &str = "10.233.0.1";
const ADDR_B: &str = "10.233.0.2";

#[test]
fn tls_context_across_nodes() -> Result<()> {
    let cert = TestCert::new()?;
    let nodes = TwoNodes::create(ADDR_A, ADDR_B)?;
    let cg_a = Cgroup::new("tls-node-a")?;
    let cg_b = Cgroup::new("tls-node-b")?;
    let rx_a = Receiver::start(Protocol::Grpc)?;
    let rx_b = Receiver::start(Protocol::Grpc)?;
    let mut agent_a = Agent::start(&cg_a, &rx_a.endpoint(), Protocol::Grpc, &[])?;
    let mut agent_b = Agent::start(&cg_b, &rx_b.endpoint(), Protocol::Grpc, &[])?;
    let svc_b = PyService::opts("svc-b")
        .bind(ADDR_B)
        .netns(&nodes.b)
        .tls(&cert)
        .start(&cg_b)?;
    let svc_a = PyService::opts("svc-a")
        .bind(ADDR_A)
        .netns(&nodes.a)
        .downstream(&svc_b.url(""))
        .start(&cg_a)?;

    // (A's SERVER path, B's SERVER path)
    let mut pairs = Vec::new();
    for i in 0..4 {
        pairs.push((format!("/chain/tls-{i}"), format!("/work/tls-{i}")));
    }
    for j in 0..3 {
        pairs.push(("/keepalive/ka".to_string(), format!("/work/ka-{j}")));
    }
    for path in [
        "/chain/tls-0",
        "/chain/tls-1",
        "/chain/tls-2",
        "/chain/tls-3",
        "/keepalive/ka",
    ] {
        let status = curl_in(&cg_a, Some(&nodes.a), &svc_a.url(path), &[])?;
        if status != 200 {
            bail!("curl {path}: {status}\n{}\n{}", svc_a.log(), svc_b.log());
        }
    }

    let port_b = svc_b.port;
    let want_b = |s: &[RecvSpan]| {
        pairs
            .iter()
            .all(|(_, w)| !Expect::server("svc-b", w, port_b).select(s).is_empty())
    };
    let spans_b = rx_b
        .wait_for(want_b, SPAN_TIMEOUT)
        .context("waiting for B's HTTPS SERVER spans")?;
    let spans_a = rx_a
        .wait_for(
            |s| {
                pairs
                    .iter()
                    .all(|(_, w)| s.iter().any(|x| x.is_client() && x.path() == Some(w)))
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for A's HTTPS CLIENT spans")?;

    for (outer, work) in &pairs {
        let a_server = spans_a
            .iter()
            .find(|s| s.is_server() && s.path() == Some(outer.as_str()))
            .with_context(|| format!("no SERVER span for {outer} on A"))?;
        let a_client = spans_a
            .iter()
            .find(|s| s.is_client() && s.path() == Some(work.as_str()))
            .with_context(|| format!("no CLIENT span for {work} on A"))?;
        // (Expect's contract assumes loopback addresses: checked by hand.)
        let b_server = Expect::server("svc-b", work, port_b).select(&spans_b);
        let [b_server] = b_server[..] else {
            bail!("{work}: {} SERVER spans on B, wanted 1", b_server.len());
        };
        for (k, v) in [("url.scheme", "https"), ("client.address", ADDR_A)] {
            if b_server.attr_str(k) != Some(v) {
                bail!("{work}: B's SERVER span lacks {k}={v}: {b_server}");
            }
        }
        ensure_parent(a_client, a_server)?;
        ensure_parent(b_server, a_client)
            .with_context(|| format!("{work}: B did not join A's trace through the TCP option"))?;
        if a_client
            .attr_str("url.full")
            .is_none_or(|u| !u.starts_with("https://"))
        {
            bail!("A's CLIENT span is not https: {a_client}");
        }
    }
    // B's application never saw a traceparent: TLS payloads are not rewritten.
    let headers: Vec<_> = svc_b
        .received()?
        .into_iter()
        .filter(|r| !r.header("traceparent").is_empty())
        .collect();
    if !headers.is_empty() {
        bail!("B received traceparent headers over TLS: {headers:?}");
    }
    agent_a.ensure_healthy()?;
    agent_b.ensure_healthy()?;
    agent_a.stop()?;
    agent_b.stop()
}
