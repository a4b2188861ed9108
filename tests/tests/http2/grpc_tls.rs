//! gRPC over TLS on both hops (client -> A -> B): the HTTP/2 frames are
//! read through the OpenSSL probes, and the spans of each hop are linked
//! across services (one agent sees both ends of each connection).
//!
//! The peers are Node.js (`tests/peers/node_grpc.js`: gRPC on the wire from
//! the built-in `http2` and `tls`), not grpcio: grpcio's wheel links
//! BoringSSL statically with no exported symbols, so there is nothing for
//! Clew's OpenSSL uprobes to attach to and its plaintext is never seen (a
//! documented limit, which Clew counts and reports as unsupported TLS).
//! `node` links OpenSSL statically and exports its API, which Clew hooks.

use anyhow::{ensure, Result};
use clew_e2e::check_h2::RpcExpect;
use clew_e2e::grpc::{code, node_grpc_client, NodeGrpcService, NODE_GRPC_CLIENT, SERVICE};
use clew_e2e::tls::TestCert;
use clew_e2e::{Protocol, Traced};

use crate::{check_rpc_pairs, pair_one_to_one};

const N: usize = 5;

#[test]
fn grpc_over_tls_cross_service_parents() -> Result<()> {
    let cert = TestCert::new()?;
    let mut t = Traced::start("h2-grpc-tls", Protocol::Grpc)?;
    let b = NodeGrpcService::start(&t.cg, "grpc-tls-b", &cert, None)?;
    let a = NodeGrpcService::start(&t.cg, "grpc-tls-a", &cert, Some(&b.target()))?;
    // N sequential Chain calls, each its own step, on one connection.
    let steps = vec!["chain"; N];
    let results = node_grpc_client(&t.cg, &a.target(), &cert, &steps)?;
    for r in &results {
        r.expect(code::OK)?;
    }

    let a_srv = RpcExpect::server("grpc-tls-a", SERVICE, "Chain", a.port);
    let a_cli = RpcExpect::client("grpc-tls-a", SERVICE, "Unary", b.port);
    let spans = check_rpc_pairs(
        &t.rx,
        &[
            (
                a_srv.clone(),
                RpcExpect::client(NODE_GRPC_CLIENT, SERVICE, "Chain", a.port),
                N,
            ),
            (
                RpcExpect::server("grpc-tls-b", SERVICE, "Unary", b.port),
                a_cli.clone(),
                N,
            ),
        ],
    )?;
    for s in a_srv
        .select_exact(&spans)
        .iter()
        .chain(&a_cli.select_exact(&spans))
    {
        ensure!(
            s.attr_str("url.scheme").is_none_or(|v| v == "https"),
            "TLS call with url.scheme {:?}: {s}",
            s.attr_str("url.scheme")
        );
    }
    // Informational here (grpc_chain asserts it): A's calls to B under A's
    // SERVER spans, when the agent manages it through Node's event loop.
    let nested = pair_one_to_one(&a_cli.select_exact(&spans), &a_srv.select_exact(&spans));
    eprintln!(
        "A CLIENT spans nested under A SERVER spans: {}",
        nested.map_or_else(|e| format!("no: {e:#}"), |_| "yes".into())
    );
    let calls = b.received()?;
    eprintln!(
        "B calls received with a traceparent: {} of {}",
        calls
            .iter()
            .filter(|c| !c.get("traceparent").is_empty())
            .count(),
        calls.len()
    );
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
