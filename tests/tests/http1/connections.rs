//! Connection handling: keep-alive, pipelining, requests split over writes, and non-HTTP bytes.

use anyhow::{ensure, Context, Result};
use clew_e2e::check::{ensure_parent, expect_count};
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::{curl_expect, raw_client, PyService, RAW_CLIENT};
use clew_e2e::{Expect, Protocol, RecvSpan, Traced, SPAN_TIMEOUT};
use std::time::Duration;

#[test]
fn keep_alive_100_requests_on_one_connection() -> Result<()> {
    const COUNT: usize = 100;
    let mut t = Traced::start("keepalive", Protocol::Grpc)?;
    let svc = PyService::start(&t.cg, "backend", None)?;
    let port = svc.port.to_string();
    raw_client(
        &t.cg,
        &[
            "keepalive",
            "--port",
            &port,
            "--count",
            &COUNT.to_string(),
            "--prefix",
            "/work/ka-",
        ],
    )?;

    let paths: Vec<String> = (0..COUNT).map(|i| format!("/work/ka-{i}")).collect();
    let is_ka = |s: &RecvSpan| s.path().is_some_and(|p| p.starts_with("/work/ka-"));
    let spans =
        t.rx.wait_for(
            |s| {
                s.iter().filter(|s| s.is_server() && is_ka(s)).count() >= COUNT
                    && s.iter().filter(|s| s.is_client() && is_ka(s)).count() >= COUNT
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for 100 SERVER and 100 CLIENT spans")?;

    for path in &paths {
        let server = Expect::server("backend", path, svc.port).user_agent("clew-e2e-raw");
        let client = Expect::client(RAW_CLIENT, path, svc.port).user_agent("clew-e2e-raw");
        for e in [server, client] {
            expect_count(&spans, &format!("{e:?} spans"), 1, |s| e.matches(s))?;
            e.check(e.select(&spans)[0])?;
        }
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

#[test]
fn pipelined_requests_to_nginx() -> Result<()> {
    let mut t = Traced::start("pipeline", Protocol::Grpc)?;
    let nginx = Nginx::start(&t.cg)?;
    let port = nginx.port.to_string();
    let sent = ["/index.html", "/missing", "/index.html?second"];
    let statuses = raw_client(
        &t.cg,
        &[&["pipeline", "--port", &port, "--paths"][..], &sent].concat(),
    )?;
    ensure!(statuses == "200 404 200", "nginx answered {statuses:?}");

    let ok = Expect::server("nginx", "/index.html", nginx.port).user_agent("clew-e2e-raw");
    let expects = [(ok.clone(), 2), (ok.path("/missing").status(404), 1)];
    let spans =
        t.rx.wait_for(
            |s| expects.iter().all(|(e, n)| e.select(s).len() >= *n),
            SPAN_TIMEOUT,
        )
        .context("waiting for 3 pipelined SERVER spans")?;
    for (e, n) in &expects {
        expect_count(&spans, &format!("{e:?} spans"), *n, |s| e.matches(s))?;
        for s in e.select(&spans) {
            e.check(s)?;
        }
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

#[test]
fn request_split_over_many_writes() -> Result<()> {
    let mut t = Traced::start("split", Protocol::Grpc)?;
    let svc = PyService::start(&t.cg, "backend", None)?;
    let status = raw_client(
        &t.cg,
        &[
            "split",
            "--port",
            &svc.port.to_string(),
            "--body-len",
            "1000",
        ],
    )?;
    ensure!(status == "200", "echo answered {status:?}");

    let e = Expect::server("backend", "/echo", svc.port)
        .method("POST")
        .user_agent("clew-e2e-raw");
    let spans =
        t.rx.wait_for(|s| !e.select(s).is_empty(), SPAN_TIMEOUT)
            .context("waiting for the POST /echo SERVER span")?;
    expect_count(&spans, "POST /echo SERVER spans", 1, |s| e.matches(s))?;
    e.check(e.select(&spans)[0])?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

/// One `sendmsg` of many segments: a POST whose head comes in 7-byte
/// pieces and whose body is longer than the capture limit, then two GETs.
/// The kernel gathers small segments into one record and gives the long
/// one a record of its own; the client's three requests must still be
/// told apart, each with its own CLIENT span, and the POST continues its
/// trace in the server. (The server reads the GETs in the same read as the
/// body's end, past its captured prefix: they have no SERVER span.)
#[test]
fn pipelined_requests_in_one_vectored_write() -> Result<()> {
    let mut t = Traced::start("segments", Protocol::Grpc)?;
    let svc = PyService::start(&t.cg, "backend", None)?;
    let (a, b) = ("/work/segments-a", "/work/segments-b");
    let statuses = raw_client(
        &t.cg,
        &[
            "segments",
            "--port",
            &svc.port.to_string(),
            "--body-len",
            "6000",
            "--paths",
            a,
            b,
        ],
    )?;
    ensure!(statuses == "200 200", "backend answered {statuses:?}");

    let client = |path, method| {
        Expect::client(RAW_CLIENT, path, svc.port)
            .method(method)
            .user_agent("clew-e2e-raw")
    };
    let post = client("/echo", "POST");
    let served = Expect::server("backend", "/echo", svc.port)
        .method("POST")
        .user_agent("clew-e2e-raw");
    let expects = [
        post.clone(),
        client(a, "GET"),
        client(b, "GET"),
        served.clone(),
    ];
    let spans =
        t.rx.wait_for(
            |s| expects.iter().all(|e| !e.select(s).is_empty()),
            SPAN_TIMEOUT,
        )
        .context("waiting for the three CLIENT spans and the POST's SERVER span")?;
    for e in &expects {
        e.one(&spans)?;
    }
    ensure_parent(served.one(&spans)?, post.one(&spans)?)?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

#[test]
fn garbage_bytes_make_no_spans() -> Result<()> {
    let mut t = Traced::start("garbage", Protocol::Grpc)?;
    let svc = PyService::start(&t.cg, "backend", None)?;
    raw_client(&t.cg, &["garbage", "--port", &svc.port.to_string()])?;
    t.agent.ensure_healthy()?;
    curl_expect(&t.cg, &svc.url("/work/after"), &[], 200)?;

    let after = Expect::server("backend", "/work/after", svc.port).user_agent("curl");
    t.rx.wait_for(|s| !after.select(s).is_empty(), SPAN_TIMEOUT)
        .context("waiting for the request after the garbage")?;
    after.check(after.select(&t.rx.spans())[0])?;
    // Only the good request, seen from both ends, may produce spans.
    let expected = |s: &RecvSpan| {
        s.path() == Some("/work/after") && [Some("backend"), Some("curl")].contains(&s.service())
    };
    t.rx.expect_none_for(|s| !expected(s), Duration::from_secs(2))?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
