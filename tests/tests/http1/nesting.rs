//! Nesting under concurrency: thread-per-request servers get every CLIENT span under the right SERVER span.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::check::{is_child_within, max_overlap};
use clew_e2e::peers::{concurrent_gets, curl_expect, PyService, RAW_CLIENT};
use clew_e2e::{Expect, Protocol, RecvSpan, Traced, SPAN_TIMEOUT};

const REQUESTS: usize = 200;
const CLIENTS: usize = 8;
/// How long the backend holds each answer, so that frontend requests overlap.
const BACKEND_DELAY_MS: u32 = 20;

#[test]
fn nesting_under_concurrency() -> Result<()> {
    let mut t = Traced::start("nesting", Protocol::Grpc)?;
    let backend = PyService::opts("backend")
        .work_delay_ms(BACKEND_DELAY_MS)
        .start(&t.cg)?;
    let frontend = PyService::opts("frontend")
        .downstream(&backend.url(""))
        .start(&t.cg)?;
    // Request i goes to /chain/i, which the frontend forwards as /work/i: the
    // paths tell which CLIENT span belongs to which SERVER span.
    concurrent_gets(&t.cg, frontend.port, "/chain/", REQUESTS, CLIENTS, 200)?;

    let exe = frontend.python.exe_name.as_str();
    let count = |spans: &[RecvSpan], kind: fn(&RecvSpan) -> bool, service: &str, prefix: &str| {
        spans
            .iter()
            .filter(|s| {
                kind(s)
                    && s.service() == Some(service)
                    && s.path().is_some_and(|p| p.starts_with(prefix))
            })
            .count()
    };
    let spans =
        t.rx.wait_for(
            |s| {
                count(s, RecvSpan::is_server, "frontend", "/chain/") >= REQUESTS
                    && count(s, RecvSpan::is_client, "frontend", "/work/") >= REQUESTS
                    && count(s, RecvSpan::is_server, "backend", "/work/") >= REQUESTS
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for 200 frontend SERVER, frontend CLIENT and backend SERVER spans")?;

    let paths: Vec<(String, String)> = (0..REQUESTS)
        .map(|i| (format!("/chain/{i}"), format!("/work/{i}")))
        .collect();
    let mut servers = Vec::new();
    let mut wrong = Vec::new();
    for (server_path, client_path) in &paths {
        let server = Expect::server("frontend", server_path, frontend.port)
            .user_agent("clew-e2e-raw")
            .process(frontend.pid(), exe);
        let client = Expect::client("frontend", client_path, backend.port)
            .user_agent("clew-e2e-frontend")
            .process(frontend.pid(), exe);
        let (srv, cli) = (server.one(&spans)?, client.one(&spans)?);
        servers.push(srv);
        if !is_child_within(srv, cli) {
            wrong.push(format!("  server: {srv}\n  client: {cli}\n"));
        }
    }
    let right = REQUESTS - wrong.len();
    println!("nesting: {right}/{REQUESTS} client spans correctly parented");
    let overlap = max_overlap(&servers);
    println!("nesting: up to {overlap} frontend requests in flight at once");

    if !wrong.is_empty() {
        bail!(
            "{} of {REQUESTS} frontend CLIENT spans are not children of (or not within) the SERVER span of their request:\n{}",
            wrong.len(),
            wrong.iter().take(10).cloned().collect::<String>()
        );
    }
    // Otherwise the test proved nothing about concurrency.
    ensure!(
        overlap >= 2,
        "frontend requests never overlapped (max {overlap} in flight): the test did not exercise concurrency"
    );
    // The backend answered all of them too, each as its own SERVER span.
    let backend_spans = count(&spans, RecvSpan::is_server, "backend", "/work/");
    ensure!(
        backend_spans == REQUESTS,
        "expected {REQUESTS} backend SERVER spans, got {backend_spans}"
    );
    // And the clients' own spans are roots: nothing to nest them under.
    ensure!(
        spans
            .iter()
            .filter(|s| s.service() == Some(RAW_CLIENT))
            .all(|s| s.parent_span_id.is_none()),
        "a {RAW_CLIENT} span has a parent"
    );
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

/// A request's context ends with its response: a call the thread makes
/// after answering starts a trace of its own, and the answered request's
/// trace stays as it was.
#[test]
fn calls_after_the_response_start_their_own_trace() -> Result<()> {
    const N: usize = 5;
    let mut t = Traced::start("answered", Protocol::Grpc)?;
    let backend = PyService::start(&t.cg, "backend", None)?;
    let frontend = PyService::start(&t.cg, "frontend", Some(&backend.url("")))?;
    for i in 0..N {
        curl_expect(
            &t.cg,
            &frontend.url(&format!("/answer-then-call/{i}")),
            &[],
            200,
        )?;
    }
    let find = |s: &[RecvSpan], server: bool, svc: &str, path: &str| -> Option<RecvSpan> {
        s.iter()
            .find(|x| x.is_server() == server && x.service() == Some(svc) && x.path() == Some(path))
            .cloned()
    };
    let spans =
        t.rx.wait_for(
            |s| (0..N).all(|i| find(s, true, "backend", &format!("/work/{i}")).is_some()),
            SPAN_TIMEOUT,
        )
        .context("waiting for the backend's spans")?;
    for i in 0..N {
        let path = format!("/answer-then-call/{i}");
        let work = format!("/work/{i}");
        let (Some(srv), Some(cli), Some(be)) = (
            find(&spans, true, "frontend", &path),
            find(&spans, false, "frontend", &work),
            find(&spans, true, "backend", &work),
        ) else {
            bail!("request {i}: a span is missing");
        };
        ensure!(
            cli.parent_span_id.is_none() && cli.trace_id != srv.trace_id,
            "a call after the response joined the answered request:\n  server: {srv}\n  client: {cli}"
        );
        ensure!(
            srv.end_ns <= cli.start_ns,
            "the call started before the answer ended"
        );
        clew_e2e::check::ensure_parent(&be, &cli)?;
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
