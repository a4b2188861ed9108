//! curl (OpenSSL) → nginx terminating TLS → plaintext Python backend: the
//! HTTPS hop is seen decrypted, and the trace continues over the plaintext
//! hop through the injected header.

use anyhow::{Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::tls::TestCert;
use clew_e2e::{Agent, Cgroup, Expect, Protocol, Receiver, SPAN_TIMEOUT};

use crate::{ensure_parent, parent_among};

const N: usize = 10;

#[test]
fn curl_to_nginx_tls_to_python() -> Result<()> {
    let cert = TestCert::new()?;
    let cg = Cgroup::new("tls-nginx")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let backend = PyService::start(&cg, "backend", None)?;
    let nginx = Nginx::tls_proxy(&cg, &format!("127.0.0.1:{}", backend.port), &cert)?;
    // nginx and its worker already run: their libssl is found from /proc.
    // Each curl makes its request a few milliseconds after its exec, before
    // a per-process attachment could be in place: attach per file.
    let mut agent = Agent::start(
        &cg,
        &rx.endpoint(),
        Protocol::Grpc,
        &["--tls-attach", "file"],
    )?;

    for _ in 0..N {
        curl_expect(&cg, &nginx.url("/work"), &["-k"], 200)?;
    }

    let curl = Expect::client("curl", "/work", nginx.port)
        .https()
        .user_agent("curl");
    let ngx_server = Expect::server("nginx", "/work", nginx.port)
        .https()
        .user_agent("curl");
    let ngx_client = Expect::client("nginx", "/work", backend.port).user_agent("curl");
    let be_server = Expect::server("backend", "/work", backend.port).user_agent("curl");
    let all = [&curl, &ngx_server, &ngx_client, &be_server];
    let spans = rx
        .wait_for(|s| all.iter().all(|e| e.select(s).len() >= N), SPAN_TIMEOUT)
        .context("waiting for curl, nginx and backend spans")?;
    for e in all {
        expect_count(&spans, &format!("{e:?} spans"), N, |s| e.matches(s))?;
        for s in e.select(&spans) {
            e.check(s)?;
        }
    }
    let curls = curl.select(&spans);
    let servers = ngx_server.select(&spans);
    let clients = ngx_client.select(&spans);
    for be in be_server.select(&spans) {
        // Backend ← nginx: the traceparent nginx's plaintext request carried.
        let nc = parent_among(be, &clients)?;
        // nginx's call ← the HTTPS request it serves.
        let ns = parent_among(nc, &servers)?;
        // The HTTPS request ← curl's call (both ends traced by this agent).
        let c = parent_among(ns, &curls)?;
        ensure_parent(ns, c)?;
    }
    agent.ensure_healthy()?;
    agent.stop()
}
