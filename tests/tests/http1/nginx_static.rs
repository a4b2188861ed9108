//! nginx static files: 200, 404 and a 5 MiB body, one span per request on both sides.

use anyhow::{Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::curl_expect;
use clew_e2e::{Expect, Protocol, Traced, SPAN_TIMEOUT};

/// (path, status, how many times it is requested)
const REQUESTS: &[(&str, i64, usize)] = &[
    ("/index.html", 200, 3),
    ("/missing", 404, 2),
    ("/big.bin", 200, 2),
];

#[test]
fn nginx_static_files() -> Result<()> {
    // The agent starts first: nginx and its forked worker appear after it.
    let mut t = Traced::start("nginx", Protocol::Grpc)?;
    let nginx = Nginx::start(&t.cg)?;

    for &(path, status, times) in REQUESTS {
        for _ in 0..times {
            curl_expect(&t.cg, &nginx.url(path), &[], status as u16)?;
        }
    }

    let expects: Vec<_> = REQUESTS
        .iter()
        .flat_map(|&(path, status, times)| {
            let server = Expect::server("nginx", path, nginx.port).status(status);
            let client = Expect::client("curl", path, nginx.port).status(status);
            [(server, times), (client, times)]
        })
        .map(|(e, times)| (e.user_agent("curl"), times))
        .collect();
    let spans =
        t.rx.wait_for(
            |s| expects.iter().all(|(e, n)| e.select(s).len() >= *n),
            SPAN_TIMEOUT,
        )
        .context("waiting for nginx and curl spans")?;

    for (e, n) in &expects {
        expect_count(&spans, &format!("{e:?} spans"), *n, |s| e.matches(s))?;
        for s in e.select(&spans) {
            e.check(s)?;
        }
    }
    let total: usize = REQUESTS.iter().map(|r| r.2).sum();
    expect_count(&spans, "nginx SERVER spans in all", total, |s| {
        s.is_server() && s.service() == Some("nginx")
    })?;

    t.agent.ensure_healthy()?;
    t.agent.stop()
}
