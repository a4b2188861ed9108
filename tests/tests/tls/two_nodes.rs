//! Context across a TLS hop between two "nodes" (network namespaces joined
//! by a veth pair), each with its own agent: A's plaintext service calls B's
//! HTTPS service with Python's `ssl`. The payload cannot carry a header, so
//! the TCP option does, per request (new connections and one kept-alive
//! connection alike).

use anyhow::{bail, Context, Result};
use clew_e2e::node_pair::{NodePair, NodePairOpts};
use clew_e2e::tls::TestCert;
use clew_e2e::{Expect, RecvSpan, SPAN_TIMEOUT};

use crate::ensure_parent;

const ADDR_A: &str = "10.233.0.1";
const ADDR_B: &str = "10.233.0.2";

#[test]
fn tls_context_across_nodes() -> Result<()> {
    let cert = TestCert::new()?;
    let pair = NodePair::start(NodePairOpts {
        tag: "tls-node",
        addr_a: ADDR_A,
        addr_b: ADDR_B,
        agent_args: &[],
        tls_b: Some(&cert),
    })?;

    // (A's SERVER path, B's SERVER path)
    let mut pairs = Vec::new();
    for i in 0..4 {
        pairs.push((format!("/chain/tls-{i}"), format!("/work/tls-{i}")));
        pair.get(&format!("/chain/tls-{i}"))?;
    }
    pair.get("/keepalive/ka")?;
    for j in 0..3 {
        pairs.push(("/keepalive/ka".to_string(), format!("/work/ka-{j}")));
    }
    let (rx_a, rx_b, svc_b) = (&pair.rx_a, &pair.rx_b, &pair.svc_b);

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
    pair.stop()
}
