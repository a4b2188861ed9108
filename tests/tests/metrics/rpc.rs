//! gRPC calls are measured as `rpc.server.duration` and
//! `rpc.client.duration` (milliseconds, semantic conventions v1.37.0),
//! counted per method and status code.

use anyhow::{ensure, Result};
use clew_e2e::grpc::{code, grpc_client, GrpcService, GRPC_CLIENT, SERVICE};
use clew_e2e::receiver::RecvPoint;
use clew_e2e::{Protocol, Traced, SPAN_TIMEOUT};

#[test]
fn grpc_calls_are_counted_per_method_and_status() -> Result<()> {
    let t = Traced::start_with_env(
        "metrics-rpc",
        Protocol::Grpc,
        &[],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")],
    )?;
    let svc = GrpcService::opts("grpc-svc").start(&t.cg)?;
    let steps = ["unary", "unary", "status:13", "server-stream"];
    for r in grpc_client(&t.cg, &svc.target(), None, &steps)? {
        ensure!(
            r.codes
                .iter()
                .all(|c| [code::OK, code::INTERNAL].contains(c)),
            "{r:?}"
        );
    }
    // (service, metric, method, status code, calls)
    let want = [
        ("grpc-svc", "rpc.server.duration", "Unary", code::OK, 2),
        (
            "grpc-svc",
            "rpc.server.duration",
            "Unary",
            code::INTERNAL,
            1,
        ),
        (
            "grpc-svc",
            "rpc.server.duration",
            "ServerStream",
            code::OK,
            1,
        ),
        (GRPC_CLIENT, "rpc.client.duration", "Unary", code::OK, 2),
        (
            GRPC_CLIENT,
            "rpc.client.duration",
            "Unary",
            code::INTERNAL,
            1,
        ),
        (
            GRPC_CLIENT,
            "rpc.client.duration",
            "ServerStream",
            code::OK,
            1,
        ),
    ];
    let count = |p: &[RecvPoint],
                 (service, metric, method, status, _): (&str, &str, &str, i64, u64)|
     -> u64 {
        p.iter()
            .filter(|p| p.service == service && p.metric == metric)
            .filter(|p| p.attr_str("rpc.method") == Some(method))
            .filter(|p| p.attr_int("rpc.grpc.status_code") == Some(status))
            .filter(|p| {
                p.attr_str("rpc.service") == Some(SERVICE)
                    && p.attr_str("rpc.system") == Some("grpc")
            })
            .map(|p| p.count)
            .sum()
    };
    let points =
        t.rx.wait_for_metrics(|p| want.iter().all(|w| count(p, *w) == w.4), SPAN_TIMEOUT)?;
    let server = points
        .iter()
        .find(|p| p.metric == "rpc.server.duration")
        .expect("waited for");
    ensure!(
        server.unit == "ms" && server.bounds.len() == 15 && server.bounds[1] == 5.0,
        "{server:?}"
    );
    // The server fails on INTERNAL (the conventions' server error codes).
    let failed = points
        .iter()
        .any(|p| p.metric == "rpc.server.duration" && p.attr_str("error.type") == Some("INTERNAL"));
    ensure!(failed, "no error.type=INTERNAL on the failed call's series");
    t.agent.stop()
}
