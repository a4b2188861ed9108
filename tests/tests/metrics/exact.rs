//! Counts stay exact when head sampling keeps 1% of traces, and every
//! exemplar names a span that was exported.

use anyhow::{ensure, Result};
use clew_e2e::metrics::{scrape, Rig, Series, ROUTE_CLIENT};
use clew_e2e::receiver::RecvPoint;
use clew_e2e::{Protocol, SPAN_TIMEOUT};
use std::collections::{BTreeMap, HashSet};

/// (path, route, status, requests): 1,000 requests in all.
const MIX: [(&str, &str, u16, usize); 3] = [
    ("/work/", "/work/{id}", 200, 600),
    ("/fail", "/fail", 500, 250),
    ("/users/", "/users/{id}", 404, 150),
];
const TOTAL: u64 = 1000;
const SERVER: &str = "http.server.request.duration";
const CLIENT: &str = "http.client.request.duration";

#[test]
fn counts_are_exact_at_one_percent_sampling() -> Result<()> {
    let rig = Rig::start(
        "metrics-exact",
        Protocol::Grpc,
        &[],
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ],
    )?;

    // Interleaved, so that every kind of request meets every connection.
    let mut paths = Vec::new();
    for i in 0..600 {
        for (prefix, _, _, n) in MIX {
            if i < n {
                let id = if prefix.ends_with('/') {
                    i.to_string()
                } else {
                    String::new()
                };
                paths.push(format!("{prefix}{id}"));
            }
        }
    }
    let answered = rig.requests(&paths, 4)?;
    let wanted: BTreeMap<u16, usize> = MIX.iter().map(|m| (m.2, m.3)).collect();
    ensure!(answered == wanted, "the service answered {answered:?}");

    // OTLP: cumulative points, exact per route and status.
    let total = |p: &[RecvPoint], service: &str, metric: &str| -> u64 {
        p.iter()
            .filter(|p| p.service == service && p.metric == metric)
            .map(|p| p.count)
            .sum()
    };
    let points = rig.rx.wait_for_metrics(
        |p| total(p, "backend", SERVER) == TOTAL && total(p, ROUTE_CLIENT, CLIENT) == TOTAL,
        SPAN_TIMEOUT,
    )?;
    for (_, route, status, n) in MIX {
        let server: Vec<_> = points
            .iter()
            .filter(|p| p.service == "backend" && p.metric == SERVER)
            .filter(|p| p.attr_str("http.route") == Some(route))
            .collect();
        ensure!(
            server.len() == 1 && server[0].count == n as u64,
            "OTLP {SERVER} for {route}: {server:?}, expected one series of {n}"
        );
        let p = server[0];
        ensure!(p.attr_int("http.response.status_code") == Some(i64::from(status)));
        ensure!(p.attr_str("http.request.method") == Some("GET"));
        ensure!(p.unit == "s" && p.bounds.first() == Some(&0.005) && p.bounds.len() == 14);
        let client: u64 = points
            .iter()
            .filter(|p| p.service == ROUTE_CLIENT && p.metric == CLIENT)
            .filter(|p| p.attr_int("http.response.status_code") == Some(i64::from(status)))
            .map(|p| p.count)
            .sum();
        ensure!(
            client == n as u64,
            "OTLP {CLIENT} for status {status}: {client}, expected {n}"
        );
    }

    // Prometheus: the same counts, parsed from OpenMetrics.
    let scraped = scrape(&rig.agent)?;
    let family = |name: &str| scraped.get(name).cloned().unwrap_or_default();
    let server = family("http_server_request_duration_seconds");
    for (_, route, status, n) in MIX {
        let series: Vec<&Series> = server
            .iter()
            .filter(|s| s.label("service_name") == "backend" && s.label("http_route") == route)
            .collect();
        ensure!(
            series.len() == 1
                && series[0].count == n as u64
                && series[0].label("http_response_status_code") == status.to_string(),
            "/metrics {route}: {series:?}, expected one series of {n} with status {status}"
        );
    }

    // The service graph: both ends are traced, every call is an edge.
    let edge = |name: &str| {
        family(name)
            .into_iter()
            .find(|s| s.label("client") == ROUTE_CLIENT && s.label("server") == "backend")
            .map(|s| s.count)
    };
    ensure!(
        edge("traces_service_graph_request") == Some(TOTAL),
        "service graph requests: {:?}",
        family("traces_service_graph_request")
    );
    // The client fails on 4xx and 5xx.
    ensure!(edge("traces_service_graph_request_failed") == Some(400));

    // Every exemplar, from either endpoint, names an exported span.
    let mut exemplars: HashSet<(String, String)> = server
        .iter()
        .flat_map(|s| s.exemplars.iter().cloned())
        .collect();
    let otlp_points = rig.rx.metrics();
    exemplars.extend(otlp_points.iter().flat_map(|p| p.exemplars.iter().cloned()));
    ensure!(!exemplars.is_empty(), "no exemplars at all");
    let spans = rig.rx.wait_for(
        |spans| {
            exemplars
                .iter()
                .all(|(t, s)| spans.iter().any(|x| &x.trace_id == t && &x.span_id == s))
        },
        SPAN_TIMEOUT,
    )?;
    // Sampling kept few: the counts above did not come from spans.
    let servers = spans
        .iter()
        .filter(|s| s.service() == Some("backend"))
        .count();
    ensure!(servers < 100, "{servers} backend spans exported at 1%");
    eprintln!(
        "{servers} backend spans exported for {TOTAL} requests; {} exemplars, all exported",
        exemplars.len()
    );
    rig.stop()
}
