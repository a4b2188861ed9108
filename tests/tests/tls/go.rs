//! Go's crypto/tls on both ends (uprobes on `(*tls.Conn).Read`/`Write`,
//! entry and every RET): a Go HTTPS server called by curl, and a Go HTTPS
//! client calling a Python HTTPS server, each on kept-alive connections.

use anyhow::{ensure, Result};
use clew_e2e::go_tls::{go_client, GoServer, GO_CLIENT};
use clew_e2e::peers::{curl_expect, curl_keepalive, PyService};
use clew_e2e::tls::TestCert;
use clew_e2e::{Agent, Expect, Protocol, Traced};

use crate::check_pairs;

/// Wrong conn → fd offsets, or a wrong ABI reading, leave plaintext
/// unattributed: it must never happen here.
fn ensure_all_bound(agent: &Agent) -> Result<()> {
    let n = agent.metric("kernel_tls_unbound")?;
    ensure!(n == 0, "kernel_tls_unbound = {n}, expected 0");
    Ok(())
}

#[test]
fn go_https_server_called_by_curl() -> Result<()> {
    let cert = TestCert::new()?;
    let mut t = Traced::start_with(
        "tls-go-server",
        Protocol::Grpc,
        // curl requests within milliseconds of its exec: attach per file.
        &["--tls-go", "--tls-attach", "file"],
    )?;
    let go = GoServer::start(&t.cg, &t.agent, "go-server", &cert)?;
    const N: usize = 4;
    // Kept alive: net/http reads the first byte of each next request on
    // its own (a 1-byte read left pending between requests).
    let statuses = curl_keepalive(&t.cg, &go.url("/work"), N, &["-k"])?;
    ensure!(statuses == [200; N], "curl statuses: {statuses:?}");
    curl_expect(&t.cg, &go.url("/fail"), &["-k"], 500)?;

    let expects = [
        (
            Expect::server("go-server", "/work", go.port),
            Expect::client("curl", "/work", go.port),
            N,
        ),
        (
            Expect::server("go-server", "/fail", go.port).status(500),
            Expect::client("curl", "/fail", go.port).status(500),
            1,
        ),
    ]
    .map(|(s, c, n)| {
        (
            s.https().user_agent("curl"),
            c.https().user_agent("curl"),
            n,
        )
    });
    check_pairs(&t.rx, &expects, "the Go server's and curl's spans")?;
    ensure_all_bound(&t.agent)?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

#[test]
fn go_https_client_keepalive_to_python() -> Result<()> {
    let cert = TestCert::new()?;
    let mut t = Traced::start_with("tls-go-client", Protocol::HttpProtobuf, &["--tls-go"])?;
    let server = PyService::opts("py-server").tls(&cert).start(&t.cg)?;
    let base = format!("https://127.0.0.1:{}", server.port);
    // One connection (the client allows one per host), several requests:
    // each call is keyed by its goroutine, not by the connection.
    let paths = ["/work", "/work", "/fail", "/work", "/work"];
    let answers = go_client(&t.cg, &t.agent, &base, &paths)?;
    let statuses: Vec<_> = answers.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    ensure!(
        statuses
            == [
                ("/work", 200),
                ("/work", 200),
                ("/fail", 500),
                ("/work", 200),
                ("/work", 200)
            ],
        "client answers: {answers:?}"
    );

    let port = server.port;
    let expects = [
        (Expect::server("py-server", "/work", port), 4),
        (Expect::server("py-server", "/fail", port).status(500), 1),
    ]
    .map(|(e, n)| {
        let srv = e.https().user_agent("clew-e2e-go");
        let cli = Expect {
            kind: clew_e2e::receiver::KIND_CLIENT,
            service: GO_CLIENT,
            ..srv.clone()
        };
        (srv, cli, n)
    });
    check_pairs(&t.rx, &expects, "the Go client's and Python server's spans")?;
    ensure_all_bound(&t.agent)?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
