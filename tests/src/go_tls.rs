//! `tests/peers/go_tls`: a Go HTTPS server and client (crypto/tls on both
//! ends, standard library only).
//!
//! The agent hooks a Go executable when it sees it exec, while the process
//! already runs: both peers wait for that before their first request, so
//! the tests see every request (what happens to requests before the hook
//! is a documented limit, not what these tests are about).

use crate::agent::Agent;
use crate::cgroup::Cgroup;
use crate::go_peer;
use crate::net::{free_port, wait_listening};
use crate::process::{collect, Supervised, TempDir};
use crate::tls::TestCert;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `service.name` of the Go client's spans.
pub const GO_CLIENT: &str = "go-client";

fn binary() -> Result<PathBuf> {
    go_peer::binary("go_tls")
}

/// `go_tls server`: /work (200), /fail (500), /echo.
pub struct GoServer {
    pub port: u16,
    /// Held for its Drop, which stops the server.
    _proc: Supervised,
    _dir: TempDir,
}

impl GoServer {
    /// Serves HTTPS on 127.0.0.1 inside `cg` under `service.name` `name`,
    /// once `agent` has hooked it.
    pub fn start(cg: &Cgroup, agent: &Agent, name: &str, cert: &TestCert) -> Result<Self> {
        let hooked = agent.metric(HOOKED)?;
        let dir = TempDir::new("go-server")?;
        let port = free_port()?;
        let mut cmd = Command::new(binary()?);
        cmd.args(["server", &format!("127.0.0.1:{port}")])
            .arg(&cert.cert)
            .arg(&cert.key)
            .env("OTEL_SERVICE_NAME", name);
        let proc = Supervised::start(name, &mut cmd, dir.join("server.log"), |c| cg.spawn(c))?;
        wait_listening(port, Duration::from_secs(20), || proc.log_tail(40))?;
        wait_hooked(agent, hooked)?;
        Ok(GoServer {
            port,
            _proc: proc,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

const HOOKED: &str = "tls_files_hooked";

/// Waits until `agent` has hooked more TLS files than `before`.
fn wait_hooked(agent: &Agent, before: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metric(HOOKED)? <= before {
        if Instant::now() > deadline {
            bail!("the agent did not hook the Go peer:\n{}", agent.log_tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `go_tls client`: GETs `base` + each of `paths` in turn on one kept-alive
/// connection, inside `cg` and once `agent` has hooked it; returns (path,
/// status) per answer.
pub fn go_client(
    cg: &Cgroup,
    agent: &Agent,
    base: &str,
    paths: &[&str],
) -> Result<Vec<(String, u16)>> {
    let hooked = agent.metric(HOOKED)?;
    let mut child = cg.spawn(
        Command::new(binary()?)
            .arg("client")
            .arg(base)
            .args(paths)
            .env("OTEL_SERVICE_NAME", GO_CLIENT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let mut go = child.stdin.take().context("client stdin")?;
    let waited = wait_hooked(agent, hooked);
    // Start it either way, so that it exits.
    go.write_all(b"go\n")?;
    drop(go);
    let out = collect(child, Duration::from_secs(60))?
        .ok()
        .context("go_tls client")?;
    waited?;
    out.stdout
        .lines()
        .map(|l| {
            let (path, status) = l.split_once(' ').context("go_tls client output")?;
            Ok((path.to_string(), status.parse()?))
        })
        .collect()
}
