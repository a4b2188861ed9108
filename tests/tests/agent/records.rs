//! How many ring-buffer records a request costs. Every record is a ring
//! write in the kernel and a pass in the agent; a call's iovec segments
//! are gathered into one record, so Node.js answering with a five-segment
//! `writev` (its chunked response's head, chunk size, body and ends) makes
//! one record for it, not five.

use anyhow::{ensure, Context, Result};
use clew_e2e::load::NodeService;
use clew_e2e::metrics::scrape;
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::curl_keepalive;
use clew_e2e::{Agent, Cgroup, Expect, Protocol, Traced, SPAN_TIMEOUT};

/// Records the agent has read (`clew_events`).
fn records(agent: &Agent) -> Result<u64> {
    let metrics = scrape(agent)?;
    let series = metrics
        .get("clew_events")
        .context("/metrics has no clew_events")?;
    Ok(series.iter().map(|s| s.count).sum())
}

#[test]
fn node_forwarding_to_nginx_costs_at_most_ten_records_a_request() -> Result<()> {
    const REQUESTS: usize = 50;
    let mut t = Traced::start("records", Protocol::Grpc)?;
    let nginx = Nginx::start(&t.cg)?;
    let node = NodeService::start(&t.cg, "front", &nginx.url("/index.html"))?;
    // The client is not traced: only the two services' records count.
    let client = Cgroup::new("records-client")?;
    // Warm up the kept-alive connection from Node to nginx.
    curl_keepalive(&client, &node.url("/warm"), 1, &[])?;
    let nginx_spans = Expect::server("nginx", "/index.html", nginx.port);
    t.rx.wait_for(|s| !nginx_spans.select(s).is_empty(), SPAN_TIMEOUT)
        .context("waiting for the warm-up request's spans")?;

    let before = records(&t.agent)?;
    let statuses = curl_keepalive(&client, &node.url("/records"), REQUESTS, &[])?;
    ensure!(
        statuses.iter().all(|&s| s == 200),
        "node answered {statuses:?}"
    );
    let front = Expect::server("front", "/records", node.port);
    t.rx.wait_for(
        |s| front.select(s).len() >= REQUESTS && nginx_spans.select(s).len() > REQUESTS,
        SPAN_TIMEOUT,
    )
    .context("waiting for every request's spans")?;
    let per_request = (records(&t.agent)? - before) as f64 / REQUESTS as f64;
    // Node: the request read, its downstream request written, the answer
    // read, its own answer written (five segments); nginx: the request
    // read, its head written, the file sent; with the span records, 8.2
    // in two runs. One record per segment made 12.4.
    ensure!(
        per_request <= 10.0,
        "{per_request:.2} ring-buffer records a request, expected at most 10"
    );
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
