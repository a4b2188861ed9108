//! End-to-end tests of HTTPS tracing through the OpenSSL and Go crypto/tls
//! probes: real agent, real TLS peers (curl, nginx, Python's ssl, Node.js
//! with its static OpenSSL, a Go server and client), real OTLP receiver.
//!
//! Run as root, one test at a time (`cargo xtask test`).

mod go;
mod late_start;
mod nginx_proxy;
mod node;
mod python_ssl;
mod two_nodes;

use anyhow::{ensure, Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::{Expect, Receiver, RecvSpan, SPAN_TIMEOUT};

/// `child`'s parent is `parent`, in the same trace.
pub fn ensure_parent(child: &RecvSpan, parent: &RecvSpan) -> Result<()> {
    ensure!(
        child.trace_id == parent.trace_id
            && child.parent_span_id.as_deref() == Some(parent.span_id.as_str()),
        "wrong parent:\n  child:    {child}\n  expected: {parent}"
    );
    Ok(())
}

/// The one span among `candidates` that is `child`'s parent.
pub fn parent_among<'s>(child: &RecvSpan, candidates: &[&'s RecvSpan]) -> Result<&'s RecvSpan> {
    let found: Vec<_> = candidates
        .iter()
        .filter(|p| child.parent_span_id.as_deref() == Some(p.span_id.as_str()))
        .collect();
    ensure!(
        found.len() == 1,
        "expected one parent for {child} among {} candidates, found {}",
        candidates.len(),
        found.len()
    );
    Ok(found[0])
}

/// Waits for `n` spans of each (server, client) expectation, checks them
/// all against the contract, and that every server span's parent is one of
/// its client spans.
pub fn check_pairs(rx: &Receiver, pairs: &[(Expect, Expect, usize)], what: &str) -> Result<()> {
    let spans = rx
        .wait_for(
            |s| {
                pairs
                    .iter()
                    .all(|(a, b, n)| a.select(s).len() >= *n && b.select(s).len() >= *n)
            },
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for {what}"))?;
    for (srv, cli, n) in pairs {
        expect_count(&spans, &format!("{srv:?}"), *n, |s| srv.matches(s))?;
        expect_count(&spans, &format!("{cli:?}"), *n, |s| cli.matches(s))?;
        let clients = cli.select(&spans);
        for s in srv.select(&spans) {
            srv.check(s)?;
            let c = parent_among(s, &clients)?;
            cli.check(c)?;
            ensure_parent(s, c)?;
        }
    }
    Ok(())
}
