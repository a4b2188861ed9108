//! Node.js `http2` as server and client, plaintext (h2c with prior
//! knowledge) and TLS (ALPN h2, OpenSSL linked statically into `node`):
//! client -> front -> back, spans with `network.protocol.version=2`.

use anyhow::{Context, Result};
use clew_e2e::check_h2::H2Expect;
use clew_e2e::h2::{node_h2_client, NodeH2, NODE_H2_CLIENT};
use clew_e2e::tls::TestCert;
use clew_e2e::{Protocol, Traced, SPAN_TIMEOUT};

use crate::pair_one_to_one;

const N: usize = 10;

#[test]
fn node_http2_plaintext() -> Result<()> {
    run("h2-node", None)
}

#[test]
fn node_http2_tls() -> Result<()> {
    let cert = TestCert::new()?;
    run("h2-node-tls", Some(&cert))
}

fn run(name: &str, tls: Option<&TestCert>) -> Result<()> {
    let mut t = Traced::start(name, Protocol::Grpc)?;
    let back = NodeH2::start(&t.cg, "node-h2-back", None, tls)?;
    let front = NodeH2::start(&t.cg, "node-h2-front", Some(&back.url("/work")), tls)?;
    // One at a time: the front's call to the back is made while serving
    // exactly one request, so nesting has one answer.
    node_h2_client(&t.cg, &front.url("/front"), N, 1)?;

    let https = |e: H2Expect<'static>| if tls.is_some() { e.https() } else { e };
    let client = https(H2Expect::client(NODE_H2_CLIENT, "/front", front.port));
    let front_srv = https(H2Expect::server("node-h2-front", "/front", front.port));
    let front_cli = https(H2Expect::client("node-h2-front", "/work", back.port));
    let back_srv = https(H2Expect::server("node-h2-back", "/work", back.port));
    let all = [&client, &front_srv, &front_cli, &back_srv];
    let spans =
        t.rx.wait_for(|s| all.iter().all(|e| e.select(s).len() >= N), SPAN_TIMEOUT)
            .context("waiting for the Node.js http2 spans")?;
    for e in all {
        let got = e.select(&spans);
        anyhow::ensure!(got.len() == N, "{} spans of {e:?}, expected {N}", got.len());
        for s in got {
            e.check(s)?;
        }
    }
    pair_one_to_one(&front_srv.select(&spans), &client.select(&spans))
        .context("front SERVER spans under the client's CLIENT spans")?;
    pair_one_to_one(&back_srv.select(&spans), &front_cli.select(&spans))
        .context("back SERVER spans under the front's CLIENT spans")?;
    pair_one_to_one(&front_cli.select(&spans), &front_srv.select(&spans))
        .context("the front's CLIENT spans nested under its SERVER spans")?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
