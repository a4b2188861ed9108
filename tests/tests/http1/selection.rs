//! Selecting processes without a cgroup: `--pid`, `--exe` and `--port`.
//!
//! These agents trace by process, machine-wide, so spans of unrelated
//! processes could reach the receiver in principle: every assertion filters
//! by service name and port. The peers still run in a test cgroup, for cleanup.

use anyhow::{bail, Context, Result};
use clew_e2e::check::expect_count;
use clew_e2e::net::free_port;
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::process::TempDir;
use clew_e2e::{Agent, Cgroup, Expect, Export, Protocol, Receiver, RecvSpan, Select, SPAN_TIMEOUT};
use std::time::{Duration, Instant};

/// Long enough for a span that should not exist to have been exported.
const QUIET: Duration = Duration::from_secs(3);
/// `--port` is re-resolved every 5 s; a new listener is picked up within that plus slack.
const PORT_PICKUP: Duration = Duration::from_secs(20);

/// Agent with `select` (and no cgroup) exporting to `rx`.
fn agent(select: &[Select], rx: &Receiver) -> Result<Agent> {
    let endpoint = rx.endpoint();
    let export = Export::Otlp {
        endpoint: &endpoint,
        protocol: rx.protocol(),
    };
    Agent::launch(select, export, &[])
}

/// A request to 127.0.0.1:`port`, seen from either end, whatever the process.
fn on_port(s: &RecvSpan, port: u16) -> bool {
    s.attr_int("server.port") == Some(port.into())
}

/// `n` requests to `svc`'s `/work/{tag}-{i}`, each with its own curl.
fn requests(cg: &Cgroup, svc: &PyService, tag: &str, n: usize) -> Result<Vec<String>> {
    let paths: Vec<String> = (0..n).map(|i| format!("/work/{tag}-{i}")).collect();
    for p in &paths {
        curl_expect(cg, &svc.url(p), &[], 200)?;
    }
    Ok(paths)
}

/// Exactly one SERVER span of `svc` per path (by this pid), all to contract.
fn expect_server_spans(rx: &Receiver, svc: &PyService, paths: &[String]) -> Result<()> {
    let exe = svc.python.exe_name.as_str();
    let expects: Vec<Expect> = paths
        .iter()
        .map(|p| {
            Expect::server(&svc.name, p, svc.port)
                .user_agent("curl")
                .process(svc.pid(), exe)
        })
        .collect();
    let spans = rx
        .wait_for(
            |s| expects.iter().all(|e| !e.select(s).is_empty()),
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for {}'s SERVER spans", svc.name))?;
    for e in &expects {
        e.one(&spans)?;
    }
    Ok(())
}

#[test]
fn select_by_pid() -> Result<()> {
    let cg = Cgroup::new("select-pid")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let chosen = PyService::start(&cg, "pid-chosen", None)?;
    let other = PyService::start(&cg, "pid-other", None)?;
    let mut agent = agent(&[Select::Pid(chosen.pid())], &rx)?;

    let paths = requests(&cg, &chosen, "pid", 3)?;
    requests(&cg, &other, "pid", 3)?;
    expect_server_spans(&rx, &chosen, &paths)?;
    // Neither the identical other service nor the (unselected) curls.
    rx.expect_none_for(
        |s| {
            let chosen_server = s.is_server() && s.service() == Some(&chosen.name);
            s.service() == Some(&other.name)
                || on_port(s, other.port)
                || (on_port(s, chosen.port) && !chosen_server)
        },
        QUIET,
    )?;
    expect_count(
        &rx.spans(),
        "spans of the chosen service",
        paths.len(),
        |s| s.service() == Some(&chosen.name),
    )?;
    agent.ensure_healthy()?;
    agent.stop()
}

#[test]
fn select_by_exe_name_nginx_started_after_the_agent() -> Result<()> {
    let cg = Cgroup::new("select-exe")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = agent(&[Select::Exe("nginx")], &rx)?;
    // Started after the agent: found by its exec, and its worker by the fork.
    let nginx = Nginx::start(&cg)?;
    let requests: &[(&str, u16, usize)] = &[("/index.html", 200, 2), ("/missing-exe", 404, 1)];
    for &(path, status, times) in requests {
        for _ in 0..times {
            curl_expect(&cg, &nginx.url(path), &[], status)?;
        }
    }

    // Other nginx instances on this machine are selected too: count ours by port.
    let ours = |s: &RecvSpan| on_port(s, nginx.port);
    let expects: Vec<(Expect, usize)> = requests
        .iter()
        .map(|&(path, status, times)| {
            let e = Expect::server("nginx", path, nginx.port)
                .status(status.into())
                .user_agent("curl");
            (e, times)
        })
        .collect();
    let spans = rx
        .wait_for(
            |s| {
                expects
                    .iter()
                    .all(|(e, n)| s.iter().filter(|s| ours(s) && e.matches(s)).count() >= *n)
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for the SERVER spans of nginx, selected by --exe nginx")?;
    let spans: Vec<RecvSpan> = spans.into_iter().filter(|s| ours(s)).collect();
    for (e, n) in &expects {
        expect_count(&spans, &format!("{e:?} spans"), *n, |s| e.matches(s))?;
        for s in e.select(&spans) {
            e.check(s)?;
        }
    }
    // curl is not nginx: no CLIENT spans, and nothing else on this port.
    let total: usize = requests.iter().map(|r| r.2).sum();
    rx.expect_none_for(|s| ours(s) && !s.is_server(), QUIET)?;
    expect_count(&rx.spans(), "spans on nginx's port", total, |s| ours(s))?;
    agent.ensure_healthy()?;
    agent.stop()
}

#[test]
fn select_by_exe_path_python_started_after_the_agent() -> Result<()> {
    let cg = Cgroup::new("select-exe-path")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    // A renamed copy of the interpreter, so no other python on the machine matches.
    let dir = TempDir::new("exe-path")?;
    let real = std::fs::canonicalize(&clew_e2e::env::python()?.path)?;
    let copy = dir.join("clew-e2e-python");
    std::fs::copy(&real, &copy).with_context(|| format!("copying {}", real.display()))?;
    let copy_arg = copy.to_str().context("temp path is not UTF-8")?.to_string();
    let mut agent = agent(&[Select::Exe(&copy_arg)], &rx)?;

    let chosen = PyService::opts("exe-chosen")
        .interpreter(copy.clone())
        .start(&cg)?;
    let other = PyService::start(&cg, "exe-other", None)?;
    let paths = requests(&cg, &chosen, "exe", 3)?;
    requests(&cg, &other, "exe", 3)?;
    expect_server_spans(&rx, &chosen, &paths)?;
    rx.expect_none_for(
        |s| s.service() == Some(&other.name) || on_port(s, other.port),
        QUIET,
    )?;
    expect_count(&rx.spans(), "spans on the chosen port", paths.len(), |s| {
        on_port(s, chosen.port)
    })?;
    agent.ensure_healthy()?;
    agent.stop()
}

/// A program that forks at once after its exec (a shell starting the
/// service in the background): the child must be selected with it, although
/// userspace sees the exec only after the fork. The child then execs python,
/// which no `--exe` names, so only selection at exec time can reach it.
fn exe_child_forked_at_exec(tag: &str, by_path: bool) -> Result<()> {
    let cg = Cgroup::new(tag)?;
    let rx = Receiver::start(Protocol::Grpc)?;
    // A renamed copy of the shell (15 bytes: a whole comm), so nothing else matches.
    let dir = TempDir::new(tag)?;
    let real = std::fs::canonicalize("/bin/sh")?;
    let shell = dir.join("clew-e2e-forker");
    std::fs::copy(&real, &shell).with_context(|| format!("copying {}", real.display()))?;
    let want = match by_path {
        true => shell.to_str().context("temp path is not UTF-8")?,
        false => "clew-e2e-forker",
    };
    let mut agent = agent(&[Select::Exe(want)], &rx)?;

    let svc = PyService::opts(tag).launcher(shell.clone()).start(&cg)?;
    // Right away: the first request must already be traced.
    let paths = requests(&cg, &svc, tag, 2)?;
    let expects: Vec<Expect> = paths
        .iter()
        .map(|p| Expect::server(&svc.name, p, svc.port).user_agent("curl"))
        .collect();
    let spans = rx
        .wait_for(
            |s| expects.iter().all(|e| !e.select(s).is_empty()),
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for the SERVER spans of the child of --exe {want}"))?;
    for e in &expects {
        e.one(&spans)?;
    }
    agent.ensure_healthy()?;
    agent.stop()
}

#[test]
fn select_by_exe_name_child_forked_at_exec() -> Result<()> {
    exe_child_forked_at_exec("exe-fork-name", false)
}

#[test]
fn select_by_exe_path_child_forked_at_exec() -> Result<()> {
    exe_child_forked_at_exec("exe-fork-path", true)
}

#[test]
fn select_by_port() -> Result<()> {
    let cg = Cgroup::new("select-port")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let early = PyService::start(&cg, "port-early", None)?;
    let late_port = free_port()?;
    let mut agent = agent(&[Select::Port(early.port), Select::Port(late_port)], &rx)?;
    let other = PyService::start(&cg, "port-other", None)?;
    // Listens on a selected port only after the agent started.
    let late = PyService::opts("port-late").port(late_port).start(&cg)?;

    let paths = requests(&cg, &early, "early", 3)?;
    expect_server_spans(&rx, &early, &paths)?;

    // The late listener is found by the periodic re-resolution: probe until it is traced.
    let started = Instant::now();
    let mut probes = 0;
    loop {
        curl_expect(&cg, &late.url(&format!("/work/probe-{probes}")), &[], 200)?;
        probes += 1;
        std::thread::sleep(Duration::from_millis(500));
        if rx.spans().iter().any(|s| s.service() == Some(&late.name)) {
            break;
        }
        if started.elapsed() > PORT_PICKUP {
            bail!(
                "the process listening on --port {late_port} since after the agent started was not traced within {PORT_PICKUP:?} ({probes} requests)\n{}\n{}",
                rx.dump(),
                agent.log_tail()
            );
        }
    }
    println!(
        "select_by_port: late listener traced after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let paths = requests(&cg, &late, "late", 3)?;
    expect_server_spans(&rx, &late, &paths)?;

    requests(&cg, &other, "other", 3)?;
    rx.expect_none_for(
        |s| s.service() == Some(&other.name) || on_port(s, other.port),
        QUIET,
    )?;
    agent.ensure_healthy()?;
    agent.stop()
}
