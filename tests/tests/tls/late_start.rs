//! A TLS server started after the agent: its libssl is found when it
//! execs (and when it accepts), so its very first request is traced.

use anyhow::{Context, Result};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::tls::TestCert;
use clew_e2e::{Expect, Protocol, Traced, SPAN_TIMEOUT};

#[test]
fn tls_server_started_after_the_agent() -> Result<()> {
    let cert = TestCert::new()?;
    // Nothing in the cgroup maps libssl when the agent starts.
    let mut t = Traced::start("tls-late", Protocol::Grpc)?;
    let server = PyService::opts("late").tls(&cert).start(&t.cg)?;
    curl_expect(&t.cg, &server.url("/work/first"), &["-k"], 200)?;
    curl_expect(&t.cg, &server.url("/work/second"), &["-k"], 200)?;

    let first = Expect::server("late", "/work/first", server.port)
        .https()
        .user_agent("curl");
    let second = first.clone().path("/work/second");
    let spans =
        t.rx.wait_for(
            |s| !first.select(s).is_empty() && !second.select(s).is_empty(),
            SPAN_TIMEOUT,
        )
        .context("waiting for the late server's first two requests")?;
    first.one(&spans)?;
    second.one(&spans)?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
