//! grpcio on both ends, plaintext: every kind of call gives one SERVER and
//! one CLIENT span with the method's name and the call's status, and 50
//! calls in flight at once on one channel give 50 pairs.

use anyhow::{ensure, Result};
use clew_e2e::check::max_overlap;
use clew_e2e::check_h2::RpcExpect;
use clew_e2e::grpc::{code, grpc_client, GrpcService, GRPC_CLIENT, SERVICE};
use clew_e2e::{Protocol, Traced};

use crate::check_rpc_pairs;

#[test]
fn grpc_unary_and_streaming_calls() -> Result<()> {
    let mut t = Traced::start("h2-grpc-calls", Protocol::Grpc)?;
    let svc = GrpcService::opts("grpc-svc").start(&t.cg)?;
    let steps = [
        ("unary", "Unary", code::OK),
        ("status:13", "Unary", code::INTERNAL),
        ("status:5", "Unary", code::NOT_FOUND),
        ("server-stream", "ServerStream", code::OK),
        ("client-stream:4", "ClientStream", code::OK),
        ("bidi:3", "Bidi", code::OK),
    ];
    let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
    let results = grpc_client(&t.cg, &svc.target(), None, &names)?;
    for ((_, _, c), r) in steps.iter().zip(&results) {
        r.expect(*c)?;
    }
    ensure!(
        results[3].messages == 5 && results[5].messages == 3,
        "streams not read in full: {results:?}"
    );

    let pairs: Vec<_> = steps
        .iter()
        .map(|&(_, method, c)| {
            (
                RpcExpect::server("grpc-svc", SERVICE, method, svc.port).code(c),
                RpcExpect::client(GRPC_CLIENT, SERVICE, method, svc.port).code(c),
                1,
            )
        })
        .collect();
    let spans = check_rpc_pairs(&t.rx, &pairs)?;
    // One span per call, streaming ones included: nothing else.
    let ours =
        |s: &clew_e2e::RecvSpan| [Some("grpc-svc"), Some(GRPC_CLIENT)].contains(&s.service());
    let n = spans.iter().filter(|s| ours(s)).count();
    ensure!(
        n == 2 * steps.len(),
        "{n} spans from the client and service, expected {}\n{}",
        2 * steps.len(),
        t.rx.dump()
    );
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

#[test]
fn grpc_50_concurrent_calls_on_one_channel() -> Result<()> {
    const N: usize = 50;
    let mut t = Traced::start("h2-grpc-concurrent", Protocol::Grpc)?;
    // Enough handler threads that all calls are in flight together.
    let svc = GrpcService::opts("grpc-svc").workers(64).start(&t.cg)?;
    let results = grpc_client(&t.cg, &svc.target(), None, &["concurrent:50"])?;
    results[0].expect(code::OK)?;
    ensure!(results[0].codes.len() == N, "{results:?}");

    let srv = RpcExpect::server("grpc-svc", SERVICE, "Unary", svc.port);
    let cli = RpcExpect::client(GRPC_CLIENT, SERVICE, "Unary", svc.port);
    let spans = check_rpc_pairs(&t.rx, &[(srv.clone(), cli, N)])?;
    // The calls really overlapped (each holds its answer 300 ms).
    let servers = srv.select_exact(&spans);
    let overlap = max_overlap(&servers);
    ensure!(overlap >= 10, "only {overlap} server spans overlapped");
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
