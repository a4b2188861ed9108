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

use anyhow::{Context, Result};
use clew_e2e::check::expect_count;
pub use clew_e2e::check::{ensure_parent, parent_among};
use clew_e2e::{Expect, Receiver, SPAN_TIMEOUT};

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
