//! Requests that never get a response become ERROR spans with
//! `error.type`, on both ends: a traced client whose server resets the
//! connection instead of answering, and a traced server whose client
//! resets the connection while the server is still working.

use anyhow::{ensure, Result};
use clew_e2e::env::{peers_dir, python};
use clew_e2e::net::{free_port, wait_listening_local};
use clew_e2e::peers::{curl, PyService};
use clew_e2e::process::{Supervised, TempDir};
use clew_e2e::receiver::{KIND_CLIENT, KIND_SERVER, STATUS_ERROR};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};
use std::process::Command;
use std::time::Duration;

fn reset_peer(mode: &str, port: u16) -> Result<Command> {
    let mut cmd = Command::new(python()?.path);
    cmd.arg(peers_dir().join("reset_peer.py"))
        .arg(mode)
        .args(["--port", &port.to_string()]);
    Ok(cmd)
}

fn failed(span: &RecvSpan) -> Result<()> {
    ensure!(
        span.status_code == STATUS_ERROR
            && span.attr_str("error.type") == Some("connection_closed")
            && span.attr_int("http.response.status_code").is_none(),
        "not an ERROR span with error.type connection_closed: {span}"
    );
    Ok(())
}

#[test]
fn connections_reset_mid_request_give_error_spans() -> Result<()> {
    let traced = Cgroup::new("reset")?;
    let untraced = Cgroup::new("reset-peer")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;

    // A traced client; the server resets instead of answering.
    let port = free_port()?;
    let dir = TempDir::new("reset-server")?;
    let server = Supervised::start(
        "reset server",
        &mut reset_peer("server", port)?,
        dir.join("server.log"),
        |c| untraced.spawn(c),
    )?;
    wait_listening_local(port, Duration::from_secs(20), || server.log_tail(20))?;
    let status = curl(
        &traced,
        &format!("http://127.0.0.1:{port}/reset-by-server"),
        &[],
    );
    ensure!(
        status.is_err(),
        "curl should fail on a reset, got {status:?}"
    );

    // A traced server still working when its client resets.
    let svc = PyService::opts("slow").work_delay_ms(1000).start(&traced)?;
    let svc_port: u16 = svc.url("").rsplit(':').next().unwrap_or_default().parse()?;
    let mut client = reset_peer("client", svc_port)?;
    client.args(["--path", "/work/reset-by-client"]);
    untraced.run(&mut client, Duration::from_secs(20))?.ok()?;

    let spans = rx.wait_for(
        |s| {
            s.iter()
                .any(|x| x.kind == KIND_CLIENT && x.path() == Some("/reset-by-server"))
                && s.iter()
                    .any(|x| x.is(KIND_SERVER, "slow", "/work/reset-by-client"))
        },
        SPAN_TIMEOUT,
    )?;
    for s in spans.iter().filter(|x| {
        x.path() == Some("/reset-by-server") || x.path() == Some("/work/reset-by-client")
    }) {
        failed(s)?;
        println!("failed request: {s}");
    }
    agent.ensure_healthy()?;
    agent.stop()
}
