//! The `probability` sampler keeps exactly the traces the specification's
//! consistent-probability rule keeps, so SDKs that use it agree with Clew:
//! in the kernel (server spans joining an incoming trace, and the ids it
//! makes for requests that carry none). Kept spans carry the threshold in
//! `tracestate`; metrics still count every request. (A request that
//! carries its application's own `traceparent` is that application's span,
//! kept as its sampled flag says.)

use anyhow::{ensure, Result};
use clew_e2e::metrics::{Rig, ROUTE_CLIENT};
use clew_e2e::receiver::{RecvPoint, KIND_SERVER};
use clew_e2e::{Protocol, SPAN_TIMEOUT};
use std::collections::HashSet;
use std::time::Duration;

const PER_KIND: usize = 200;
/// `th:c`: the rejection threshold of probability 0.25 (2^56 * 0.75).
const THRESHOLD: u64 = 0xc0_0000_0000_0000;

/// The specification's randomness: the trace id's low 7 bytes.
fn randomness(trace_id: &str) -> u64 {
    u64::from_str_radix(&trace_id[18..], 16).expect("hex trace id")
}

#[test]
fn probability_sampler_keeps_what_the_specification_keeps() -> Result<()> {
    let rig = Rig::start(
        "metrics-probability",
        Protocol::Grpc,
        &[],
        &[
            ("OTEL_TRACES_SAMPLER", "probability"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ],
    )?;

    // Requests with trace ids the test chose (sampled flag set: the rule
    // must ignore it), then as many whose ids the kernel makes.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let known: Vec<String> = (0..PER_KIND)
        .map(|_| format!("{:016x}{:016x}", next() | 1, next()))
        .collect();
    let mut paths: Vec<String> = known
        .iter()
        .enumerate()
        .map(|(i, t)| format!("/work/known-{i} 00-{t}-{:016x}-01", next() | 1))
        .collect();
    paths.extend((0..PER_KIND).map(|i| format!("/work/fresh-{i}")));
    rig.requests(&paths, 2)?;

    let server_count = |p: &[RecvPoint]| -> u64 {
        p.iter()
            .filter(|p| p.service == "backend" && p.metric == "http.server.request.duration")
            .map(|p| p.count)
            .sum()
    };
    rig.rx
        .wait_for_metrics(|p| server_count(p) == 2 * PER_KIND as u64, SPAN_TIMEOUT)?;

    let kept: HashSet<&str> = known
        .iter()
        .filter(|t| randomness(t) >= THRESHOLD)
        .map(String::as_str)
        .collect();
    ensure!(
        !kept.is_empty() && kept.len() < PER_KIND,
        "{} of {PER_KIND} chosen ids kept by the rule: the test needs both outcomes",
        kept.len()
    );
    let is_server =
        |s: &clew_e2e::RecvSpan| s.kind == KIND_SERVER && s.service() == Some("backend");
    let spans = rig.rx.wait_for(
        |spans| {
            let got: HashSet<&str> = spans
                .iter()
                .filter(|s| is_server(s))
                .map(|s| s.trace_id.as_str())
                .collect();
            kept.iter().all(|t| got.contains(t))
        },
        SPAN_TIMEOUT,
    )?;
    // No server span the rule drops arrives.
    let dropped: HashSet<&str> = known
        .iter()
        .map(String::as_str)
        .filter(|t| !kept.contains(t))
        .collect();
    rig.rx.expect_none_for(
        |s| is_server(s) && dropped.contains(s.trace_id.as_str()),
        Duration::from_secs(3),
    )?;
    for s in rig.rx.spans() {
        let has_th = s.trace_state.split(',').any(|m| m == "ot=th:c");
        if randomness(&s.trace_id) >= THRESHOLD {
            ensure!(has_th, "no th in the tracestate {:?} of {s}", s.trace_state);
        } else {
            // Only the client's own spans (it sent sampled traceparents).
            let own = s.service() == Some(ROUTE_CLIENT) && dropped.contains(s.trace_id.as_str());
            ensure!(own && !has_th, "exported a span the rule drops: {s}");
        }
    }
    let fresh = spans
        .iter()
        .filter(|s| is_server(s) && !known.contains(&s.trace_id))
        .count();
    ensure!(fresh > 0, "no trace the kernel started was kept");
    eprintln!(
        "kept {} of {PER_KIND} chosen traces and {fresh} of {PER_KIND} fresh ones",
        kept.len()
    );
    rig.stop()
}
