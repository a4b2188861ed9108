//! The console view: without an OTLP endpoint, finished traces are printed as trees on stdout.

use anyhow::{ensure, Result};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Agent, Cgroup, Export, Select, SPAN_TIMEOUT};

const PATH: &str = "/work/console-view";

/// The line of a printed tree showing the SERVER span of `service` for `path`.
fn server_line<'t>(text: &'t str, service: &str, path: &str) -> Option<&'t str> {
    text.lines().find(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words
            .windows(2)
            .any(|w| w[0] == "SERVER" && w[1] == service)
            && words.contains(&path)
    })
}

#[test]
fn console_view_without_endpoint() -> Result<()> {
    let cg = Cgroup::new("console")?;
    let svc = PyService::start(&cg, "backend", None)?;
    let mut agent = Agent::launch(&[Select::Cgroup(&cg)], Export::Console, &[])?;
    curl_expect(&cg, &svc.url(PATH), &[], 200)?;

    let text = agent.wait_console(|t| server_line(t, "backend", PATH).is_some(), SPAN_TIMEOUT)?;
    let line = server_line(&text, "backend", PATH).unwrap_or_default();
    println!("console view: {line}");
    // The tree sits under a "trace <32 hex digits>" header.
    let before = &text[..text.find(line).unwrap_or(0)];
    let header = before
        .lines()
        .rev()
        .find(|l| l.starts_with("trace "))
        .unwrap_or_default();
    let trace_id = header.split_whitespace().nth(1).unwrap_or_default();
    ensure!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "no `trace <id>` header above the SERVER line {line:?}:\n{text}"
    );
    ensure!(
        line.split_whitespace().any(|w| w == "200") && line.contains("GET"),
        "the SERVER line should show the method and the status: {line:?}"
    );
    // The curl that made the request is traced too, as its own trace.
    ensure!(
        text.lines()
            .any(|l| l.contains("CLIENT curl") && l.contains("GET")),
        "no CLIENT span of curl in the console view:\n{text}"
    );
    // Logs go to stderr only: stdout holds nothing but traces.
    let log = agent.log();
    ensure!(!log.trim().is_empty(), "the agent logged nothing on stderr");
    for l in text.lines() {
        ensure!(
            !l.contains(" INFO ") && !l.contains(" WARN ") && !l.contains(" ERROR "),
            "a log line on stdout: {l:?}"
        );
    }
    agent.ensure_healthy()?;
    agent.stop()
}
