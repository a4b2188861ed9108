//! `Upgrade: h2c`: nghttp asks nghttpd to switch an HTTP/1.1 connection to
//! HTTP/2, then sends more requests on it as HTTP/2 streams. The upgrade
//! request gives an HTTP/1.1 span answered 101; every later request an
//! HTTP/2 span with its path and status, on both ends, and nothing is
//! counted as an HTTP/2 error.

use anyhow::{ensure, Context, Result};
use clew_e2e::check_h2::H2Expect;
use clew_e2e::h2::{Nghttpd, NGHTTPD};
use clew_e2e::{Protocol, RecvSpan, Traced, SPAN_TIMEOUT};
use std::process::Command;
use std::time::Duration;

const NGHTTP: &str = "nghttp";
const LATER: [&str; 3] = ["/b.txt", "/c.txt", "/d.txt"];

#[test]
fn h2c_upgrade_then_streams() -> Result<()> {
    let mut t = Traced::start("h2-upgrade", Protocol::Grpc)?;
    let server = Nghttpd::start(&t.cg)?;
    let mut cmd = Command::new("nghttp");
    // -u: HTTP/1.1 Upgrade for the first URI; the rest go as streams on
    // the upgraded connection. -n: discard bodies.
    cmd.args(["-u", "-n"])
        .arg(server.url("/a.txt"))
        .args(LATER.iter().map(|p| server.url(p)))
        .env("OTEL_SERVICE_NAME", NGHTTP);
    let out = t
        .cg
        .run(&mut cmd, Duration::from_secs(30))
        .context("running nghttp -u (apt-get install nghttp2-client)")?;
    ensure!(
        out.status.success(),
        "nghttp -u failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );

    let h2 = |s: &RecvSpan| s.attr_str("network.protocol.version") == Some("2");
    let spans = t.rx.wait_for(
        |s| s.iter().filter(|x| h2(x)).count() >= 2 * LATER.len(),
        SPAN_TIMEOUT,
    )?;
    for path in LATER {
        for (service, server_side) in [(NGHTTPD, true), (NGHTTP, false)] {
            let found: Vec<_> = spans
                .iter()
                .filter(|s| h2(s) && s.service() == Some(service) && s.path() == Some(path))
                .filter(|s| s.is_server() == server_side)
                .collect();
            ensure!(found.len() == 1, "{} {service} spans for {path}", found.len());
            let e = if server_side {
                H2Expect::server(NGHTTPD, path, server.port)
            } else {
                H2Expect::client(NGHTTP, path, server.port)
            };
            e.check(found[0])?;
        }
    }
    let upgrade = spans
        .iter()
        .find(|s| s.is_server() && s.service() == Some(NGHTTPD) && !h2(s))
        .context("no HTTP/1.1 span for the upgrade request")?;
    ensure!(
        upgrade.attr_int("http.response.status_code") == Some(101),
        "upgrade request span: {upgrade}"
    );
    for counter in [
        "protocol_parse_errors{protocol=\"http2\"}",
        "protocol_decode_errors{protocol=\"http2\"}",
        "protocol_desynced{protocol=\"http2\"}",
    ] {
        let v = t.agent.metric(counter)?;
        ensure!(v == 0, "{counter} = {v}, expected 0");
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
