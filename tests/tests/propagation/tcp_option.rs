//! Trace context in a TCP header option, with header injection off
//! (`--propagation tcp-option`): two "nodes" (network namespaces joined by
//! a veth pair), an agent each. Node B's service must join node A's trace
//! although no `traceparent` ever reaches it (its own header log proves
//! that), per request on a kept-alive connection, and the option must also
//! reach B on a connection whose bytes are not HTTP at all, and reach a
//! Node.js server (which accepts without asking for the peer's address) on
//! the first request of every connection.

use crate::two_nodes::{wait_hops, Hop};
use anyhow::{bail, ensure, Result};
use clew_e2e::load::{NodeOpts, NodeService};
use clew_e2e::node_pair::{NodePair, NodePairOpts};
use clew_e2e::peers::curl_in;
use clew_e2e::{RecvSpan, SPAN_TIMEOUT};
use std::time::{Duration, Instant};

const ADDR_A: &str = "10.232.0.1";
const ADDR_B: &str = "10.232.0.2";
const ONLY_OPTION: &[&str] = &["--propagation", "tcp-option"];

/// The two-node pair with only the TCP option on.
struct Setup(NodePair);

impl Setup {
    fn start(tag: &str) -> Result<Setup> {
        NodePair::start(NodePairOpts {
            tag,
            addr_a: ADDR_A,
            addr_b: ADDR_B,
            agent_args: ONLY_OPTION,
            tls_b: None,
        })
        .map(Setup)
    }

    /// Waits until agent `which`'s counter reaches `at_least` (counters are
    /// refreshed from the kernel once a second).
    fn wait_metric(&self, a: bool, name: &str, at_least: u64) -> Result<u64> {
        let agent = if a { &self.0.agent_a } else { &self.0.agent_b };
        let deadline = Instant::now() + SPAN_TIMEOUT;
        loop {
            let v = agent.metric(name)?;
            if v >= at_least {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {}: clew_{name} is {v}, wanted at least {at_least}\n{}",
                    if a { "A" } else { "B" },
                    agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl std::ops::Deref for Setup {
    type Target = NodePair;
    fn deref(&self) -> &NodePair {
        &self.0
    }
}

#[test]
fn tcp_option_joins_nodes_per_request() -> Result<()> {
    let s = Setup::start("tcpopt")?;
    // (A's SERVER path, B's SERVER path): a new connection per call for
    // /chain, three requests on one kept-alive connection for /keepalive.
    let mut pairs = Vec::new();
    for i in 0..4 {
        s.get(&format!("/chain/opt-{i}"))?;
        pairs.push((format!("/chain/opt-{i}"), format!("/work/opt-{i}")));
    }
    for k in 0..2 {
        s.get(&format!("/keepalive/ka-{k}"))?;
        for j in 0..3 {
            pairs.push((format!("/keepalive/ka-{k}"), format!("/work/ka-{k}-{j}")));
        }
    }

    let (spans_a, spans_b) = wait_hops(&s.rx_a, &s.rx_b, &pairs)?;
    let received = s.svc_b.received()?;

    let mut bad = Vec::new();
    for (outer, work) in &pairs {
        let hop = Hop::find(&spans_a, &spans_b, outer, work)?;
        let headers: Vec<&str> = received
            .iter()
            .filter(|r| r.path == *work)
            .flat_map(|r| r.header("traceparent"))
            .collect();
        let mut why = hop.problems();
        if !headers.is_empty() {
            why.push("B received a traceparent (headers are off)");
        }
        if !why.is_empty() {
            bad.push(format!(
                "{work}: {}\n{hop}\n  B received traceparent {headers:?}",
                why.join("; ")
            ));
        }
    }
    println!(
        "tcp_option: {}/{} requests form one trace across both agents through the TCP option",
        pairs.len() - bad.len(),
        pairs.len()
    );
    if !bad.is_empty() {
        bail!(
            "{} of {} requests did not join across the nodes:\n{}\n{}\n{}",
            bad.len(),
            pairs.len(),
            bad.join("\n"),
            s.rx_a.dump(),
            s.rx_b.dump()
        );
    }
    let n = pairs.len() as u64;
    let written = s.wait_metric(true, "tcp_options_written", n)?;
    let read = s.wait_metric(false, "tcp_options_read", n)?;
    println!("tcp_option: agent A wrote {written} options, agent B read {read}");
    s.0.stop()
}

#[test]
fn tcp_option_reaches_non_http_connections() -> Result<()> {
    let s = Setup::start("tcpopt-opaque")?;
    // A's handler (serving a traced request) opens a raw connection to B
    // and sends bytes that are not HTTP: only the connection's option
    // (on the handshake's last ACK) can carry the context.
    s.get("/opaque")?;
    let written = s.wait_metric(true, "tcp_options_written", 1)?;
    let read = s.wait_metric(false, "tcp_options_read", 1)?;
    println!("tcp_option (non-HTTP): agent A wrote {written} options, agent B read {read}");
    let got: Vec<_> = s.svc_b.received()?.into_iter().map(|r| r.path).collect();
    if !got.is_empty() {
        bail!("B parsed HTTP requests out of opaque bytes: {got:?}");
    }
    s.0.stop()
}

/// Node.js (libuv) calls `accept4(fd, NULL, NULL)`: the kernel must read the
/// client's endpoint off the new socket at once, or the first request of
/// the connection cannot find the option its client sent. Every request
/// here is the first of its connection (one curl each, from node A).
#[test]
fn tcp_option_reaches_first_request_into_node() -> Result<()> {
    first_requests_into_node("tcpopt-node", ADDR_B)
}

/// The same through an IPv6 socket: Node listening on `::` accepts node
/// A's IPv4 connections as IPv4-mapped IPv6 peers.
#[test]
fn tcp_option_reaches_first_request_into_node_on_ipv6_socket() -> Result<()> {
    first_requests_into_node("tcpopt-node6", "::")
}

fn first_requests_into_node(tag: &str, listen: &str) -> Result<()> {
    const N: usize = 8;
    let s = Setup::start(tag)?;
    let opts = NodeOpts {
        netns: Some((&s.nodes.b, listen)),
        ..NodeOpts::default()
    };
    let node = NodeService::start_with(&s.cg_b, "node-b", &s.svc_b.url("/work/node"), opts)?;
    let url = |path: &str| format!("http://{ADDR_B}:{}{path}", node.port);
    let paths: Vec<String> = (0..N).map(|i| format!("/first-{i}")).collect();
    for p in &paths {
        let status = curl_in(&s.cg_a, Some(&s.nodes.a), &url(p), &[])?;
        ensure!(status == 200, "curl {}: status {status}", url(p));
    }

    let paths = &paths;
    let every =
        |f: Is| move |spans: &[RecvSpan]| paths.iter().all(|p| spans.iter().any(|x| f(x, p)));
    let spans_a = s.rx_a.wait_for(every(curl_client), SPAN_TIMEOUT)?;
    let spans_b = s.rx_b.wait_for(every(node_server), SPAN_TIMEOUT)?;

    let (mut bad, mut joined) = (Vec::new(), 0);
    for p in paths {
        let one = |spans: &[RecvSpan], f: Is| {
            let found: Vec<&RecvSpan> = spans.iter().filter(|x| f(x, p)).collect();
            match found[..] {
                [x] => Ok(x.clone()),
                _ => Err(format!("{p}: {} matching spans: {found:?}", found.len())),
            }
        };
        let (c, sv) = match (one(&spans_a, curl_client), one(&spans_b, node_server)) {
            (Ok(c), Ok(sv)) => (c, sv),
            (c, sv) => {
                bad.extend(c.err().into_iter().chain(sv.err()));
                continue;
            }
        };
        let mut why = Vec::new();
        if sv.trace_id == c.trace_id && sv.parent_span_id.as_deref() == Some(&c.span_id) {
            joined += 1;
        } else {
            why.push("node's SERVER span's parent is not curl's CLIENT span");
        }
        let peer = ["network.peer.address", "client.address"].map(|a| sv.attr_str(a));
        if peer != [Some(ADDR_A); 2] {
            why.push("node's SERVER span does not name node A as its peer");
        }
        if !why.is_empty() {
            bad.push(format!(
                "{p}: {}\n  CLIENT {c}\n  SERVER {sv}",
                why.join("; ")
            ));
        }
    }
    println!(
        "tcp_option (Node.js on {listen}): {joined}/{N} first requests of a connection joined the caller's trace"
    );
    if !bad.is_empty() {
        bail!(
            "{} of {N} first requests went wrong:\n{}\n{}\n{}",
            bad.len(),
            bad.join("\n"),
            s.rx_a.dump(),
            s.rx_b.dump()
        );
    }
    drop(node);
    s.0.stop()
}

/// Whether a span is the one of a request path.
type Is = fn(&RecvSpan, &str) -> bool;

fn curl_client(x: &RecvSpan, path: &str) -> bool {
    x.is_client() && x.path() == Some(path)
}

fn node_server(x: &RecvSpan, path: &str) -> bool {
    x.is_server() && x.service() == Some("node-b") && x.path() == Some(path)
}
