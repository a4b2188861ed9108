//! Two "nodes" (network namespaces joined by a veth pair), each with its
//! own agent: the traceparent the first node's kernel writes carries the
//! trace to the second node's agent.
//!
//! The agents export to receivers on the root namespace's 127.0.0.1 (see
//! `clew_e2e::node_pair`); no traffic goes anywhere but 10.231.0.1,
//! 10.231.0.2 and loopback.

use anyhow::{bail, Context, Result};
use clew_e2e::node_pair::{NodePair, NodePairOpts};
use clew_e2e::{Receiver, RecvSpan, SPAN_TIMEOUT};

const N: usize = 10;
const ADDR_A: &str = "10.231.0.1";
const ADDR_B: &str = "10.231.0.2";

#[test]
fn two_nodes_over_veth() -> Result<()> {
    let pair = NodePair::start(NodePairOpts {
        tag: "node",
        addr_a: ADDR_A,
        addr_b: ADDR_B,
        agent_args: &[],
        tls_b: None,
    })?;
    for i in 0..N {
        pair.get(&format!("/chain/veth-{i}"))?;
    }
    let (rx_a, rx_b, svc_b) = (&pair.rx_a, &pair.rx_b, &pair.svc_b);

    let pairs: Vec<(String, String)> = (0..N)
        .map(|i| (format!("/chain/veth-{i}"), format!("/work/veth-{i}")))
        .collect();
    let (spans_a, spans_b) = wait_hops(rx_a, rx_b, &pairs)?;
    let received = svc_b.received()?;

    let mut bad = Vec::new();
    for (chain, work) in &pairs {
        let hop = Hop::find(&spans_a, &spans_b, chain, work)?;
        let header: Vec<String> = received
            .iter()
            .filter(|r| r.path == *work)
            .flat_map(|r| r.header("traceparent").into_iter().map(String::from))
            .collect();
        let want_header = format!("00-{}-{}-01", hop.a_client.trace_id, hop.a_client.span_id);
        let mut why = hop.problems();
        if header != [want_header.clone()] {
            why.push("B did not receive exactly one traceparent naming A's CLIENT span");
        }
        if !why.is_empty() {
            bad.push(format!(
                "{work}: {}\n{hop}\n  B received traceparent {header:?}, wanted [{want_header:?}]",
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
    pair.stop()
}

fn is(s: &RecvSpan, server: bool, service: &str, path: &str) -> bool {
    s.is_server() == server && s.service() == Some(service) && s.path() == Some(path)
}

/// Waits for svc-a's SERVER span of each pair's first path and CLIENT span
/// of its second (agent A), and svc-b's SERVER span of the second (agent B).
pub(crate) fn wait_hops(
    rx_a: &Receiver,
    rx_b: &Receiver,
    pairs: &[(String, String)],
) -> Result<(Vec<RecvSpan>, Vec<RecvSpan>)> {
    let spans_a = rx_a
        .wait_for(
            |s| {
                pairs.iter().all(|(outer, work)| {
                    s.iter().any(|x| is(x, true, "svc-a", outer))
                        && s.iter().any(|x| is(x, false, "svc-a", work))
                })
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for node A's SERVER and CLIENT spans (agent A)")?;
    let spans_b = rx_b
        .wait_for(
            |s| {
                pairs
                    .iter()
                    .all(|(_, work)| s.iter().any(|x| is(x, true, "svc-b", work)))
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for node B's SERVER spans (agent B)")?;
    Ok((spans_a, spans_b))
}

/// One call from svc-a (serving `outer`) to svc-b (`work`): the three spans
/// that must form one trace.
pub(crate) struct Hop {
    pub a_server: RecvSpan,
    pub a_client: RecvSpan,
    pub b_server: RecvSpan,
}

impl Hop {
    pub fn find(a: &[RecvSpan], b: &[RecvSpan], outer: &str, work: &str) -> Result<Hop> {
        let one = |spans: &[RecvSpan], server: bool, service: &str, path: &str| {
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
        Ok(Hop {
            a_server: one(a, true, "svc-a", outer)?,
            a_client: one(a, false, "svc-a", work)?,
            b_server: one(b, true, "svc-b", work)?,
        })
    }

    /// What keeps the three spans from being one trace, A's CLIENT span the
    /// parent of B's SERVER span.
    pub fn problems(&self) -> Vec<&'static str> {
        let (a_server, a_client, b_server) = (&self.a_server, &self.a_client, &self.b_server);
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
        why
    }
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  A SERVER {}\n  A CLIENT {}\n  B SERVER {}",
            self.a_server, self.a_client, self.b_server
        )
    }
}
