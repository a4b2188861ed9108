//! End-to-end tests of HTTP/2 and gRPC tracing: real agent, real peers
//! (grpcio, Node.js `http2`, nghttp2's nghttpd and h2load), real OTLP
//! receiver, each test in its own cgroup.
//!
//! Run as root, one test at a time (`cargo xtask test -- <filter>`).

mod grpc_calls;
mod grpc_chain;
mod grpc_tls;
mod nghttp2;
mod node;
mod preexisting;

use anyhow::{ensure, Context, Result};
pub use clew_e2e::check::{ensure_parent, parent_among};
use clew_e2e::check_h2::RpcExpect;
use clew_e2e::{Receiver, RecvSpan, SPAN_TIMEOUT};
use std::collections::HashSet;

/// Every child's parent is one of `parents`, each parent used once:
/// one-to-one pairs, as one call gives one span on each side.
pub fn pair_one_to_one<'s>(
    children: &[&'s RecvSpan],
    parents: &[&'s RecvSpan],
) -> Result<Vec<(&'s RecvSpan, &'s RecvSpan)>> {
    let mut used = HashSet::new();
    let mut pairs = Vec::new();
    for c in children {
        let p = parent_among(c, parents)?;
        ensure!(
            used.insert(p.span_id.clone()),
            "two spans have the same parent {p}"
        );
        pairs.push((*c, p));
    }
    Ok(pairs)
}

/// Waits until every (server, client, n) has n spans of each side with
/// the expected status code, then checks: exactly n, every span against
/// the contract, and every server span the child of its own client span.
pub fn check_rpc_pairs(
    rx: &Receiver,
    pairs: &[(RpcExpect, RpcExpect, usize)],
) -> Result<Vec<RecvSpan>> {
    let spans = rx
        .wait_for(
            |s| {
                pairs
                    .iter()
                    .all(|(a, b, n)| a.select_exact(s).len() >= *n && b.select_exact(s).len() >= *n)
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for the gRPC SERVER and CLIENT spans")?;
    for (srv, cli, n) in pairs {
        let servers = srv.select_exact(&spans);
        let clients = cli.select_exact(&spans);
        ensure!(
            servers.len() == *n && clients.len() == *n,
            "{srv:?}: {} server and {} client spans, expected {n} each\n{}",
            servers.len(),
            clients.len(),
            rx.dump()
        );
        for s in &servers {
            srv.check(s)?;
        }
        for c in &clients {
            cli.check(c)?;
        }
        pair_one_to_one(&servers, &clients)?;
    }
    Ok(spans)
}

/// Shows a list of spans, one per line, for reports.
pub fn show(spans: &[&RecvSpan]) -> String {
    spans
        .iter()
        .map(|s| format!("    {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}
