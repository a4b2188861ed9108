//! Secrets planted in a request's query, path, headers, cookies and body,
//! and in the client's command line, reach neither the receiver, nor the
//! console view, nor the agent's own (debug) log; what is redacted still
//! shows where it was.

use anyhow::{ensure, Result};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::receiver::KIND_SERVER;
use clew_e2e::{Agent, Cgroup, Export, Protocol, Receiver, RecvSpan, Select, SPAN_TIMEOUT};

/// Every planted secret contains this, so one search finds any of them.
const MARK: &str = "Zq9SECRET";
const QUERY: &str =
    "token=Zq9SECRETq1&password=Zq9SECRETq2&api_key=Zq9SECRETq3&sig=Zq9SECRETq4&page=2";
const QUERY_REDACTED: &str =
    "token=REDACTED&password=REDACTED&api_key=REDACTED&sig=REDACTED&page=2";
const PATH_WITH_PARAM: &str = "/work/cart;jsessionid=Zq9SECRETp1/items";
const PATH_REDACTED: &str = "/work/cart;jsessionid=REDACTED/items";

/// The planted requests, each by its own traced curl.
fn plant(cg: &Cgroup, svc: &PyService) -> Result<()> {
    let headers = [
        "-H",
        "Authorization: Bearer Zq9SECRETh1",
        "-H",
        "X-Api-Key: Zq9SECRETh2",
        "-H",
        "Cookie: session=Zq9SECRETc1; theme=dark",
    ];
    curl_expect(cg, &svc.url(&format!("/work/query?{QUERY}")), &headers, 200)?;
    curl_expect(cg, &svc.url(PATH_WITH_PARAM), &[], 200)?;
    curl_expect(
        cg,
        &svc.url("/echo"),
        &["-d", "password=Zq9SECRETb1&user=bob"],
        200,
    )?;
    let with_user_info = svc
        .url("/work/userinfo")
        .replacen("://", "://bob:Zq9SECRETu1@", 1);
    curl_expect(cg, &with_user_info, &[], 200)
}

fn leaks(what: &str, text: &str) -> Result<()> {
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains(MARK)).collect();
    ensure!(
        leaked.is_empty(),
        "{} lines of the {what} carry a planted secret:\n{}",
        leaked.len(),
        leaked.join("\n")
    );
    Ok(())
}

#[test]
fn planted_secrets_reach_no_exporter_console_or_log() -> Result<()> {
    let cg = Cgroup::new("redaction")?;
    let svc = PyService::start(&cg, "vault", None)?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let debug = [("RUST_LOG", "debug")];
    let mut agent = Agent::launch_with_env(
        &[Select::Cgroup(&cg)],
        Export::Otlp {
            endpoint: &rx.endpoint(),
            protocol: Protocol::Grpc,
        },
        &["--command-line", "redacted"],
        &debug,
    )?;
    plant(&cg, &svc)?;
    let server = |s: &RecvSpan, path: &str| s.kind == KIND_SERVER && s.path() == Some(path);
    let spans = rx.wait_for(
        |s| {
            ["/work/query", PATH_REDACTED, "/echo", "/work/userinfo"]
                .iter()
                .all(|p| s.iter().any(|x| server(x, p)))
                && s.iter().filter(|x| x.is_client()).count() >= 4
        },
        SPAN_TIMEOUT,
    )?;
    // Everything the backend holds: names, attributes, resources.
    let all: String = spans.iter().map(|s| format!("{s}\n")).collect();
    leaks("exported spans", &all)?;

    // Redacted where it was, not dropped.
    let query = spans.iter().find(|s| server(s, "/work/query")).unwrap();
    ensure!(
        query.attr_str("url.query") == Some(QUERY_REDACTED),
        "url.query of the SERVER span: {query}"
    );
    let client_url = spans
        .iter()
        .filter_map(|s| s.attr_str("url.full"))
        .find(|u| u.contains("/work/query"));
    ensure!(
        client_url.is_some_and(|u| u.ends_with(&format!("?{QUERY_REDACTED}"))),
        "url.full of the CLIENT span: {client_url:?}\n{all}"
    );
    let command_line = spans
        .iter()
        .filter(|s| s.is_client())
        .filter_map(|s| s.res_str("process.command_line"))
        .find(|c| c.contains("Authorization"));
    ensure!(
        command_line.is_some_and(|c| c.contains("Authorization: REDACTED")
            && c.contains(&format!("/work/query?{QUERY_REDACTED}"))),
        "curl's redacted command line: {command_line:?}"
    );
    println!(
        "redacted command line: {}",
        command_line.unwrap_or_default()
    );
    leaks("agent's debug log", &agent.log())?;
    agent.ensure_healthy()?;
    agent.stop()?;
    console_view(&cg, &svc)
}

fn console_view(cg: &Cgroup, svc: &PyService) -> Result<()> {
    let mut agent = Agent::launch_with_env(
        &[Select::Cgroup(cg)],
        Export::Console,
        &[],
        &[("RUST_LOG", "debug")],
    )?;
    plant(cg, svc)?;
    let text = agent.wait_console(
        |t| t.contains("/work/userinfo") && t.contains(PATH_REDACTED),
        SPAN_TIMEOUT,
    )?;
    leaks("console view", &text)?;
    leaks("agent's debug log", &agent.log())?;
    agent.ensure_healthy()?;
    agent.stop()
}
