//! Nesting per runtime: 200 requests from 16 concurrent clients to a
//! frontend whose downstream calls overlap; each test prints its measured
//! share of correctly nested calls and fails on any call confidently
//! under the wrong parent, or below the share the README claims.

use anyhow::{ensure, Context, Result};
use clew_e2e::frontends::{Frontend, JavaMode, FRONTEND};
use clew_e2e::go_peer::Symbols;
use clew_e2e::nesting::Tally;
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::{concurrent_gets, PyService};
use clew_e2e::{Cgroup, Protocol, RecvSpan, Traced, SPAN_TIMEOUT};

const REQUESTS: usize = 200;
const CLIENTS: usize = 16;
/// How long the backend holds each answer, so that downstream calls overlap.
const BACKEND_DELAY_MS: u32 = 20;

/// Picks request N's span of one kind.
type Pick<'a> = dyn Fn(&RecvSpan, usize) -> bool + 'a;

/// Sends the requests to `port` (`{prefix}N`) from clients in `clients`
/// and measures the spans of `service`: SERVER `{prefix}N`, CLIENT
/// `/work/N`, and the backend's SERVER `/work/N` under that CLIENT.
fn measure(t: &Traced, clients: &Cgroup, port: u16, prefix: &str, service: &str) -> Result<Tally> {
    concurrent_gets(clients, port, prefix, REQUESTS, CLIENTS, 200)?;
    let ours = |s: &RecvSpan| s.service() == Some(service);
    let server = |s: &RecvSpan, i: usize| {
        s.is_server() && ours(s) && s.path() == Some(&format!("{prefix}{i}"))
    };
    let client = |s: &RecvSpan, i: usize| {
        s.is_client() && ours(s) && s.path() == Some(&format!("/work/{i}"))
    };
    let downstream = |s: &RecvSpan, i: usize| {
        s.is_server() && s.service() == Some("backend") && s.path() == Some(&format!("/work/{i}"))
    };
    let spans =
        t.rx.wait_for(
            |s| {
                (0..REQUESTS).all(|i| {
                    let picks: [&Pick<'_>; 3] = [&server, &client, &downstream];
                    picks.iter().all(|f| s.iter().any(|x| f(x, i)))
                })
            },
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for {REQUESTS} SERVER and CLIENT spans of {service}"))?;
    Tally::measure(&spans, REQUESTS, server, client, downstream)
}

fn frontend_case(
    name: &str,
    min_correct_pct: f64,
    start: impl FnOnce(&Traced, &PyService) -> Result<Frontend>,
) -> Result<()> {
    let mut t = Traced::start(name, Protocol::Grpc)?;
    let backend = PyService::opts("backend")
        .work_delay_ms(BACKEND_DELAY_MS)
        .start(&t.cg)?;
    let frontend = start(&t, &backend)?;
    let tally = measure(&t, &t.cg, frontend.port, "/chain/", FRONTEND)?;
    println!("nesting[{name}]: {tally}");
    tally.ensure(min_correct_pct)?;
    t.agent.ensure_healthy()?;
    t.agent.stop()
}

#[test]
fn nesting_go_net_http() -> Result<()> {
    frontend_case("go", 99.0, |t, b| {
        Frontend::go(&t.cg, &b.url(""), Symbols::Kept)
    })
}

/// Without symbols the client's hand-off to its writer goroutine cannot be
/// followed: those calls start their own trace, never a wrong one.
#[test]
fn nesting_go_stripped() -> Result<()> {
    frontend_case("go-stripped", 0.0, |t, b| {
        Frontend::go(&t.cg, &b.url(""), Symbols::Stripped)
    })
}

#[test]
fn nesting_node_http() -> Result<()> {
    frontend_case("node", 0.0, |t, b| Frontend::node(&t.cg, &b.url("")))
}

#[test]
fn nesting_python_asyncio() -> Result<()> {
    frontend_case("asyncio", 0.0, |t, b| Frontend::asyncio(&t.cg, b.port))
}

#[test]
fn nesting_java_thread_pool() -> Result<()> {
    frontend_case("java-pool", 99.0, |t, b| {
        Frontend::java(&t.cg, &b.url(""), JavaMode::Direct)
    })
}

#[test]
fn nesting_java_pool_handoff() -> Result<()> {
    frontend_case("java-handoff", 0.0, |t, b| {
        Frontend::java(&t.cg, &b.url(""), JavaMode::Handoff)
    })
}

/// A virtual thread per request (Java 25): a carrier thread runs many of
/// them, so the kernel tells the mounted Java thread from the JVM's own
/// structures (per OS thread, 1-4% were right, up to 7.5% confidently
/// wrong).
#[test]
fn nesting_java_virtual_threads() -> Result<()> {
    frontend_case("java-virtual", 99.0, |t, b| {
        Frontend::java(&t.cg, &b.url(""), JavaMode::Virtual)
    })
}

/// nginx (forwarding `/work/N` as is, on kept-alive upstream
/// connections) measured with its clients in `clients`.
fn nginx_case(name: &str, clients: Option<&Cgroup>) -> Result<Tally> {
    let mut t = Traced::start(name, Protocol::Grpc)?;
    let backend = PyService::opts("backend")
        .work_delay_ms(BACKEND_DELAY_MS)
        .start(&t.cg)?;
    let nginx = Nginx::proxy(&t.cg, &format!("127.0.0.1:{}", backend.port), true)?;
    let tally = measure(&t, clients.unwrap_or(&t.cg), nginx.port, "/work/", "nginx")?;
    println!("nesting[{name}]: {tally}");
    t.agent.ensure_healthy()?;
    t.agent.stop()?;
    Ok(tally)
}

/// The clients are traced too: their requests carry Clew's traceparent,
/// which nginx forwards, naming the request exactly.
#[test]
fn nesting_nginx_proxy() -> Result<()> {
    nginx_case("nginx", None)?.ensure(99.0)
}

/// Clients nobody traces (nginx at the edge): requests come without
/// context, so a call is tied to the one open request with the same
/// request line and user agent, marked as inferred.
#[test]
fn nesting_nginx_proxy_untraced_clients() -> Result<()> {
    let outside = Cgroup::new("nginx-edge-clients")?;
    let tally = nginx_case("nginx-edge", Some(&outside))?;
    tally.ensure(0.0)?;
    ensure!(
        tally.right_pct() >= 99.0 && tally.inferred_wrong == 0,
        "{tally}: expected every call under its own request, sure or inferred"
    );
    Ok(())
}
