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

use anyhow::{ensure, Result};
use clew_e2e::RecvSpan;

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
