//! Node.js `https` as server and client: OpenSSL linked statically into the
//! `node` executable, found by symbol lookup, and fed through memory BIOs.

use anyhow::{Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::load::{NodeOpts, NodeService};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::tls::TestCert;
use clew_e2e::{Expect, Protocol, Traced, SPAN_TIMEOUT};

use crate::{ensure_parent, parent_among};

const N: usize = 10;

#[test]
fn node_https_server_and_client() -> Result<()> {
    let cert = TestCert::new()?;
    let mut t = Traced::start("tls-node", Protocol::Grpc)?;
    let backend = PyService::opts("backend").tls(&cert).start(&t.cg)?;
    let opts = NodeOpts {
        tls: Some(&cert),
        ..NodeOpts::default()
    };
    let node = NodeService::start_with(&t.cg, "node", &backend.url("/work"), opts)?;
    let url = format!("https://127.0.0.1:{}/front", node.port);
    for _ in 0..N {
        curl_expect(&t.cg, &url, &["-k"], 200)?;
    }

    let node_server = Expect::server("node", "/front", node.port)
        .https()
        .user_agent("curl");
    let node_client = Expect::client("node", "/work", backend.port)
        .https()
        .user_agent("clew-e2e-node");
    let be_server = Expect::server("backend", "/work", backend.port)
        .https()
        .user_agent("clew-e2e-node");
    let all = [&node_server, &node_client, &be_server];
    let spans =
        t.rx.wait_for(|s| all.iter().all(|e| e.select(s).len() >= N), SPAN_TIMEOUT)
            .context("waiting for node and backend spans")?;
    for e in all {
        expect_count(&spans, &format!("{e:?} spans"), N, |s| e.matches(s))?;
        for s in e.select(&spans) {
            e.check(s)?;
        }
    }
    let servers = node_server.select(&spans);
    let clients = node_client.select(&spans);
    for be in be_server.select(&spans) {
        // Same agent on both ends of the TLS hop: linked by connection.
        let nc = parent_among(be, &clients)?;
        let ns = parent_among(nc, &servers)?;
        ensure_parent(nc, ns)?;
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
