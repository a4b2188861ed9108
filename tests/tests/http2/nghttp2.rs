//! h2load against nghttpd: 5000 requests on 4 connections, 10 streams
//! each, with long distinct headers that make every request evict HPACK
//! dynamic-table entries. One SERVER and one CLIENT span per request that
//! succeeded, exactly, and no HTTP/2 parse error.

use anyhow::{ensure, Context, Result};
use clew_e2e::check_h2::{H2Expect, UNKNOWN_FIELDS};
use clew_e2e::h2::{evicting_headers, h2load_command, run_h2load, Nghttpd, H2LOAD, NGHTTPD};
use clew_e2e::{Protocol, RecvSpan, Traced, SPAN_TIMEOUT};
use std::time::{Duration, UNIX_EPOCH};

const REQUESTS: u64 = 5000;
const PATHS: [&str; 6] = ["/a.txt", "/b.txt", "/c.txt", "/d.txt", "/e.txt", "/f.txt"];

#[test]
fn h2load_against_nghttpd() -> Result<()> {
    // 5000 requests of ~5.5 KiB of headers each arrive in bursts: with the
    // default 4 MiB ring buffer the kernel drops events (seen: ~650), and a
    // lost HEADERS frame breaks the HPACK state. This test is about the
    // parser, so the buffer is made large enough; drops are reported.
    let mut t = Traced::start_with("h2-nghttpd", Protocol::Grpc, &["--ringbuf-mib", "64"])?;
    let server = Nghttpd::start(&t.cg)?;
    let urls: Vec<String> = PATHS.iter().map(|p| server.url(p)).collect();
    let mut cmd = h2load_command(&urls, 4, 10);
    cmd.args(["-n", &REQUESTS.to_string()]);
    with_evicting_headers(&mut cmd);
    let r = run_h2load(&t.cg, &mut cmd, Duration::from_secs(120))?;
    ensure!(
        r.succeeded == REQUESTS && r.errors() == 0 && r.status_2xx == REQUESTS,
        "h2load: {} of {REQUESTS} succeeded, {} errors\n{}",
        r.succeeded,
        r.errors(),
        r.output
    );
    let n = r.succeeded as usize;

    let is_server = |s: &RecvSpan| s.is_server() && s.service() == Some(NGHTTPD);
    let is_client = |s: &RecvSpan| s.is_client() && s.service() == Some(H2LOAD);
    // A shortfall is only explained with the agent's own counters (ring
    // buffer drops above all): show them with any count failure.
    let counters = |agent: &clew_e2e::Agent| {
        [
            "kernel_ringbuf_drops",
            "protocol_spans{protocol=\"http2\"}",
            "protocol_parse_errors{protocol=\"http2\"}",
            "protocol_unanswered{protocol=\"http2\"}",
            "protocol_orphan_responses{protocol=\"http2\"}",
        ]
        .iter()
        .map(|c| match agent.metric(c) {
            Ok(v) => format!("{c}={v}"),
            Err(_) => format!("{c}=absent"),
        })
        .collect::<Vec<_>>()
        .join(" ")
    };
    let spans =
        t.rx.wait_for(
            |s| {
                s.iter().filter(|x| is_server(x)).count() >= n
                    && s.iter().filter(|x| is_client(x)).count() >= n
            },
            SPAN_TIMEOUT,
        )
        .with_context(|| {
            format!(
                "waiting for {n} nghttpd SERVER and {n} h2load CLIENT spans; agent: {}",
                counters(&t.agent)
            )
        })?;
    let servers: Vec<_> = spans.iter().filter(|s| is_server(s)).collect();
    let clients: Vec<_> = spans.iter().filter(|s| is_client(s)).collect();
    ensure!(
        servers.len() == n && clients.len() == n,
        "{} nghttpd SERVER and {} h2load CLIENT spans, expected {n} each; agent: {}",
        servers.len(),
        clients.len(),
        counters(&t.agent)
    );
    // Every span is right, whatever path h2load gave it.
    for s in servers.iter().chain(&clients) {
        let path = s.path().unwrap_or("");
        ensure!(PATHS.contains(&path), "unexpected path {path:?}: {s}");
        let e = if s.is_server() {
            H2Expect::server(NGHTTPD, path, server.port)
        } else {
            H2Expect::client(H2LOAD, path, server.port)
        };
        e.check(s)?;
    }
    for counter in [
        "protocol_parse_errors{protocol=\"http2\"}",
        "protocol_orphan_responses{protocol=\"http2\"}",
        "protocol_unanswered{protocol=\"http2\"}",
    ] {
        let v = t.agent.metric(counter)?;
        ensure!(v == 0, "{counter} = {v}, expected 0");
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

/// The agent is stopped (SIGSTOP) for a second in the middle of an h2load
/// run with a 1 MiB ring buffer, so records are lost in the middle of
/// HTTP/2 connections. The connections go on being traced after the
/// stall: h2load's headers change with every request and evict the whole
/// table, so after one request the agent knows the table again. What is
/// exported must be right: every span a request h2load really sent (GET,
/// 200, one of its paths); a span that lacks fields lost with the records
/// says how many (`clew.http2.unknown_fields`) and claims nothing false.
#[test]
fn h2load_with_lost_records_resumes_and_gives_no_wrong_span() -> Result<()> {
    let mut t = Traced::start_with("h2-lossy", Protocol::Grpc, &["--ringbuf-mib", "1"])?;
    let server = Nghttpd::start(&t.cg)?;
    let urls: Vec<String> = PATHS.iter().map(|p| server.url(p)).collect();
    let mut cmd = h2load_command(&urls, 4, 10);
    with_evicting_headers(cmd.args(["-D", "4"]));
    let stall = t
        .agent
        .stall(Duration::from_millis(1500), Duration::from_millis(1000));
    let r = run_h2load(&t.cg, &mut cmd, Duration::from_secs(60))?;
    let resumed_at = stall.join().expect("the stall thread");
    ensure!(r.errors() == 0, "h2load errors:\n{}", r.output);
    let drops = t.agent.metric("kernel_ringbuf_drops")?;
    ensure!(drops > 0, "no record was lost: the test proves nothing");
    // Let the agent drain and export what it kept.
    std::thread::sleep(Duration::from_secs(3));
    let spans = t.rx.spans();
    let resumed = t.agent.metric("protocol_resumed{protocol=\"http2\"}")?;
    let skipped = t.agent.metric("protocol_skipped{protocol=\"http2\"}")?;
    ensure!(
        resumed > 0,
        "{drops} records lost, yet no HTTP/2 connection resumed"
    );
    let mut unknown = 0;
    for s in spans
        .iter()
        .filter(|s| s.service() == Some(NGHTTPD) || s.service() == Some(H2LOAD))
    {
        if s.attr_int(UNKNOWN_FIELDS).is_some() {
            unknown += 1;
            check_partial(s)?;
            continue;
        }
        let path = s.path().unwrap_or("");
        ensure!(
            PATHS.contains(&path),
            "a span with a path h2load never sent: {s}"
        );
        let e = if s.is_server() {
            H2Expect::server(NGHTTPD, path, server.port)
        } else {
            H2Expect::client(H2LOAD, path, server.port)
        };
        e.check(s)?;
    }
    // Requests h2load sent a while after the agent came back: traced.
    let since = resumed_at + Duration::from_millis(300);
    let since_ns = since.duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let after = |service| {
        spans
            .iter()
            .filter(|s| s.service() == Some(service) && s.start_ns >= since_ns)
            .count()
    };
    let (servers_after, clients_after) = (after(NGHTTPD), after(H2LOAD));
    eprintln!(
        "{drops} records lost, {resumed} HTTP/2 connections resumed, {skipped} chunks skipped, \
         {} spans exported ({unknown} with unknown fields), {servers_after} SERVER and \
         {clients_after} CLIENT spans after the stall, all right",
        spans.len()
    );
    ensure!(
        servers_after > 0 && clients_after > 0,
        "no span after the stall: {servers_after} SERVER, {clients_after} CLIENT"
    );
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

/// A span missing fields lost with capture: what it has is true of a
/// request h2load sent.
fn check_partial(s: &RecvSpan) -> Result<()> {
    let method = s.attr_str("http.request.method");
    ensure!(
        matches!(method, Some("GET" | "_OTHER")),
        "a partial span with a method h2load never sent: {s}"
    );
    if let Some(path) = s.path() {
        ensure!(
            PATHS.contains(&path),
            "a partial span with a path h2load never sent: {s}"
        );
    }
    ensure!(
        matches!(s.attr_int("http.response.status_code"), None | Some(200)),
        "a partial span with a status nghttpd never sent: {s}"
    );
    Ok(())
}

/// The agent drains the ring buffer every 40 ms; a burst that fills the
/// ring faster wakes it early, at a quarter, a half and three quarters of
/// the ring, so the burst does not wait for the pause (and overflow the
/// ring first). A few requests fill no quarter: only an exec or a
/// process's first connection wakes the agent then. With a 1 MiB ring,
/// 1,000 requests a second with ~5.5 KiB of headers each that HPACK
/// cannot index (captured on both sides, about 11 MB a second) fill a
/// quarter within each pause, at a rate the agent keeps up with: an agent
/// that cannot finds the ring full, and marks crossed only as it drains.
#[test]
fn a_burst_wakes_the_agent_before_its_pause_ends() -> Result<()> {
    let mut t = Traced::start_with("h2-burst", Protocol::Grpc, &["--ringbuf-mib", "1"])?;
    let server = Nghttpd::start(&t.cg)?;
    let urls: Vec<String> = PATHS.iter().map(|p| server.url(p)).collect();
    let woken = |agent: &clew_e2e::Agent| agent.metric("ring_drains_woken");
    let run = |cmd: &mut std::process::Command| -> Result<u64> {
        with_evicting_headers(cmd);
        let r = run_h2load(&t.cg, cmd, Duration::from_secs(60))?;
        ensure!(r.errors() == 0, "h2load errors:\n{}", r.output);
        Ok(r.succeeded)
    };

    let before = woken(&t.agent)?;
    run(h2load_command(&urls, 1, 1).args(["-n", "10"]))?;
    // h2load's exec, its first connection and nghttpd's first accepted
    // one wake the agent at once; their records fill no quarter.
    let by_few = woken(&t.agent)? - before;

    let before = woken(&t.agent)?;
    let drops_before = t.agent.metric("kernel_ringbuf_drops")?;
    let n = run(h2load_command(&urls, 1, 1).args(["-D", "3", "--rps", "1000"]))?;
    let by_burst = woken(&t.agent)? - before;
    let drops = t.agent.metric("kernel_ringbuf_drops")? - drops_before;
    eprintln!(
        "woken: {by_few} by 10 requests, {by_burst} by {n} requests in 3 s ({drops} records lost)"
    );
    ensure!(
        by_few <= 6,
        "10 requests woke the agent {by_few} times: records that fill no quarter of the ring \
         must not wake it"
    );
    ensure!(
        by_burst >= 20,
        "{n} requests in 3 s woke the agent {by_burst} times before its pause ended"
    );
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

/// Long distinct headers that make every request evict HPACK entries.
fn with_evicting_headers(cmd: &mut std::process::Command) {
    for h in evicting_headers(6, 900) {
        cmd.args(["-H", &h]);
    }
}
