//! Python's `ssl` on both ends (OpenSSL through `_ssl`, `SSL_read_ex` and
//! `SSL_write_ex`): one kept-alive connection with small and large bodies.

use anyhow::{ensure, Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::peers::{tls_client, PyService, TLS_CLIENT};
use clew_e2e::tls::TestCert;
use clew_e2e::{Expect, Protocol, Traced, SPAN_TIMEOUT};

use crate::ensure_parent;

#[test]
fn python_ssl_keepalive_and_large_bodies() -> Result<()> {
    run("tls-python", &[])
}

/// The same with probes attached per traced process: the processes start
/// after the agent, which attaches at their exec.
#[test]
fn python_ssl_with_probes_per_process() -> Result<()> {
    run("tls-python-pp", &["--tls-attach", "process"])
}

fn run(name: &str, agent_args: &[&str]) -> Result<()> {
    let cert = TestCert::new()?;
    let mut t = Traced::start_with(name, Protocol::HttpProtobuf, agent_args)?;
    let server = PyService::opts("tls-server").tls(&cert).start(&t.cg)?;

    let answers = tls_client(&t.cg, "127.0.0.1", server.port)?;
    let statuses: Vec<_> = answers
        .iter()
        .map(|a| (a.path.as_str(), a.status))
        .collect();
    ensure!(
        statuses.len() == 10 && statuses[8] == ("/fail", 500),
        "client answers: {answers:?}"
    );

    let port = server.port;
    // (server side, client side, count): the client's sequence.
    let expects = [
        (Expect::server("tls-server", "/work", port), 6),
        (
            Expect::server("tls-server", "/echo", port).method("POST"),
            3,
        ),
        (Expect::server("tls-server", "/fail", port).status(500), 1),
    ];
    let pairs: Vec<_> = expects
        .iter()
        .map(|(e, n)| {
            let srv = e.clone().https().user_agent("clew-e2e-tls-client");
            let cli = Expect {
                kind: clew_e2e::receiver::KIND_CLIENT,
                service: TLS_CLIENT,
                ..srv.clone()
            };
            (srv, cli, *n)
        })
        .collect();
    let spans =
        t.rx.wait_for(
            |s| {
                pairs
                    .iter()
                    .all(|(a, b, n)| a.select(s).len() >= *n && b.select(s).len() >= *n)
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for the HTTPS client and server spans")?;
    for (srv, cli, n) in &pairs {
        expect_count(&spans, &format!("{srv:?}"), *n, |s| srv.matches(s))?;
        expect_count(&spans, &format!("{cli:?}"), *n, |s| cli.matches(s))?;
        for s in srv.select(&spans) {
            srv.check(s)?;
            let parent = spans
                .iter()
                .find(|c| Some(c.span_id.as_str()) == s.parent_span_id.as_deref())
                .with_context(|| format!("no parent for {s}"))?;
            ensure!(
                cli.matches(parent),
                "parent is not the client's span: {parent}"
            );
            cli.check(parent)?;
            ensure_parent(s, parent)?;
        }
    }
    // The MiB bodies were skipped as bodies, never parsed as requests.
    for counter in [
        "protocol_parse_errors{protocol=\"http1\"}",
        "protocol_orphan_responses{protocol=\"http1\"}",
        "kernel_tls_unbound",
    ] {
        let n = t.agent.metric(counter)?;
        ensure!(n == 0, "{counter} = {n}, expected 0");
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
