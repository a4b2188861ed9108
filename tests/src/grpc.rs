//! The grpcio peers (`tests/peers/grpc_service.py`, `grpc_client.py`), run
//! inside a test's cgroup: service `clew.test.Echo` with unary, streaming
//! and chained calls, and a client that drives them over one channel.
//! Also the same service on the wire from Node.js `http2` over TLS
//! (`tests/peers/node_grpc.js`: Unary and Chain, and a client), whose
//! statically linked OpenSSL Clew hooks (grpcio's BoringSSL it cannot).

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::line_session::LineSession;
use crate::net::{free_port, wait_listening_local};
use crate::process::{Supervised, TempDir};
use crate::tls::TestCert;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The gRPC service the peers implement.
pub const SERVICE: &str = "clew.test.Echo";
/// `service.name` of spans from `grpc_client.py`.
pub const GRPC_CLIENT: &str = "grpc-client";

/// gRPC status codes the tests use.
pub mod code {
    pub const OK: i64 = 0;
    pub const UNKNOWN: i64 = 2;
    pub const NOT_FOUND: i64 = 5;
    pub const INTERNAL: i64 = 13;
    pub const UNAVAILABLE: i64 = 14;
}

/// `package.Service/Method`, the span name of a call.
pub fn span_name(method: &str) -> String {
    format!("{SERVICE}/{method}")
}

/// How to start a `GrpcService`.
#[derive(Clone, Copy, Debug)]
pub struct GrpcOpts<'a> {
    name: &'a str,
    /// `HOST:PORT` of the service `Chain` calls.
    downstream: Option<&'a str>,
    /// Call the downstream over TLS, trusting this certificate.
    downstream_tls: Option<&'a TestCert>,
    tls: Option<&'a TestCert>,
    workers: usize,
}

impl<'a> GrpcOpts<'a> {
    pub fn downstream(self, target: &'a str) -> Self {
        GrpcOpts {
            downstream: Some(target),
            ..self
        }
    }

    pub fn downstream_tls(self, cert: &'a TestCert) -> Self {
        GrpcOpts {
            downstream_tls: Some(cert),
            ..self
        }
    }

    /// Serve TLS with this certificate.
    pub fn tls(self, cert: &'a TestCert) -> Self {
        GrpcOpts {
            tls: Some(cert),
            ..self
        }
    }

    /// Size of the handler thread pool (default 16).
    pub fn workers(self, workers: usize) -> Self {
        GrpcOpts { workers, ..self }
    }

    /// Starts the service inside `cg` and waits until it listens.
    pub fn start(self, cg: &Cgroup) -> Result<GrpcService> {
        let py = python()?;
        let dir = TempDir::new(self.name)?;
        let port = free_port()?;
        let metadata_log = dir.join("metadata.jsonl");
        let mut cmd = Command::new(&py.path);
        cmd.arg(peers_dir().join("grpc_service.py"))
            .args(["--port", &port.to_string(), "--name", self.name])
            .args(["--workers", &self.workers.to_string()])
            .arg("--metadata-log")
            .arg(&metadata_log)
            .env("OTEL_SERVICE_NAME", self.name)
            .env("PYTHONUNBUFFERED", "1");
        if let Some(d) = self.downstream {
            cmd.args(["--downstream", d]);
        }
        if let Some(c) = self.downstream_tls {
            cmd.arg("--downstream-ca").arg(&c.cert);
        }
        if let Some(c) = self.tls {
            cmd.arg("--tls-cert")
                .arg(&c.cert)
                .arg("--tls-key")
                .arg(&c.key);
        }
        let proc = Supervised::start(self.name, &mut cmd, dir.join("service.log"), |c| {
            cg.spawn(c)
        })
        .context(
            "starting grpc_service.py (is grpcio in the venv? `cargo xtask test` installs it)",
        )?;
        wait_listening_local(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(GrpcService {
            name: self.name.to_string(),
            port,
            metadata_log,
            proc,
            _dir: dir,
        })
    }
}

/// `tests/peers/grpc_service.py`, traced under `service.name` = its name.
pub struct GrpcService {
    pub name: String,
    pub port: u16,
    metadata_log: PathBuf,
    proc: Supervised,
    _dir: TempDir,
}

/// One call as the service logged it.
#[derive(Debug)]
pub struct ReceivedCall {
    pub method: String,
    pub metadata: Vec<(String, String)>,
}

impl ReceivedCall {
    /// All values of metadata key `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Vec<&str> {
        self.metadata
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl GrpcService {
    pub fn opts(name: &str) -> GrpcOpts<'_> {
        GrpcOpts {
            name,
            downstream: None,
            downstream_tls: None,
            tls: None,
            workers: 16,
        }
    }

    /// `127.0.0.1:PORT`, as a channel target.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Calls received so far, with their metadata.
    pub fn received(&self) -> Result<Vec<ReceivedCall>> {
        read_received(&self.metadata_log)
    }
}

/// A `--metadata-log` file: one JSON line per call received.
fn read_received(path: &Path) -> Result<Vec<ReceivedCall>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let metadata = v["metadata"]
                .as_array()
                .context("metadata")?
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap_or("").into(),
                        h[1].as_str().unwrap_or("").into(),
                    )
                })
                .collect();
            Ok(ReceivedCall {
                method: v["method"].as_str().unwrap_or("").into(),
                metadata,
            })
        })
        .collect()
}

/// What one client step got: a status code per call, and messages read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResult {
    pub step: String,
    pub codes: Vec<i64>,
    pub messages: u64,
}

impl StepResult {
    fn parse(line: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("client printed {line:?}"))?;
        Ok(StepResult {
            step: v["step"].as_str().unwrap_or("").into(),
            codes: v["codes"]
                .as_array()
                .context("codes")?
                .iter()
                .filter_map(|c| c.as_i64())
                .collect(),
            messages: v["messages"].as_u64().unwrap_or(0),
        })
    }

    /// Fails unless every call of the step ended with `code`.
    pub fn expect(&self, code: i64) -> Result<&Self> {
        if self.codes.is_empty() || self.codes.iter().any(|&c| c != code) {
            bail!(
                "step {:?}: codes {:?}, expected all {code}",
                self.step,
                self.codes
            );
        }
        Ok(self)
    }
}

fn client_command(target: &str, ca: Option<&TestCert>) -> Result<Command> {
    let py = python()?;
    let mut cmd = Command::new(&py.path);
    cmd.arg(peers_dir().join("grpc_client.py"))
        .arg(target)
        .env("OTEL_SERVICE_NAME", GRPC_CLIENT)
        .env("PYTHONUNBUFFERED", "1");
    if let Some(c) = ca {
        cmd.arg("--ca").arg(&c.cert);
    }
    Ok(cmd)
}

/// Runs `grpc_client.py TARGET run STEPS...` inside `cg` (one channel; TLS
/// trusting `ca` when given); one result per step.
pub fn grpc_client(
    cg: &Cgroup,
    target: &str,
    ca: Option<&TestCert>,
    steps: &[&str],
) -> Result<Vec<StepResult>> {
    let mut cmd = client_command(target, ca)?;
    cmd.arg("run").args(steps);
    run_steps(cg, &mut cmd, &format!("grpc_client.py {target} run"), steps)
}

/// Runs a gRPC client that prints one `StepResult` line per step.
fn run_steps(
    cg: &Cgroup,
    cmd: &mut Command,
    what: &str,
    steps: &[&str],
) -> Result<Vec<StepResult>> {
    let out = cg
        .run(cmd, CLIENT_TIMEOUT)?
        .ok()
        .with_context(|| format!("{what} {steps:?}"))?;
    let results: Vec<StepResult> = out
        .stdout
        .lines()
        .map(StepResult::parse)
        .collect::<Result<_>>()?;
    if results.len() != steps.len() {
        bail!(
            "{what} ran {} of {} steps:\n{}\n{}",
            results.len(),
            steps.len(),
            out.stdout,
            out.stderr
        );
    }
    Ok(results)
}

/// `grpc_client.py session`: one channel that stays open across test steps
/// (e.g. across the agent's start); each `step` runs on it.
pub struct GrpcSession(LineSession);

impl GrpcSession {
    pub fn start(cg: &Cgroup, target: &str) -> Result<Self> {
        let mut cmd = client_command(target, None)?;
        cmd.arg("session");
        Ok(GrpcSession(LineSession::spawn(
            cg,
            "grpc session",
            &mut cmd,
            CLIENT_TIMEOUT,
        )?))
    }

    /// Runs one client step on the session's channel.
    pub fn step(&mut self, step: &str) -> Result<StepResult> {
        StepResult::parse(&self.0.ask(step)?)
    }

    /// Closes the channel and requires the client to exit 0.
    pub fn finish(self) -> Result<()> {
        self.0.finish()
    }
}

/// `service.name` of spans from `node_grpc.js client`.
pub const NODE_GRPC_CLIENT: &str = "node-grpc-client";

/// `tests/peers/node_grpc.js server`: `clew.test.Echo` (Unary, Chain) on
/// Node.js `http2` over TLS, traced under `service.name` = its name.
/// gRPC on the wire from Node.js's `http2` (its OpenSSL is hooked, unlike
/// the BoringSSL inside grpcio's wheels): `node_grpc.js server`.
pub struct NodeGrpcService;

impl NodeGrpcService {
    /// Starts the service inside `cg`, serving TLS with `cert`; `Chain`
    /// calls `downstream` (`HOST:PORT`) over TLS, trusting `cert`.
    pub fn start(
        cg: &Cgroup,
        name: &str,
        cert: &TestCert,
        downstream: Option<&str>,
    ) -> Result<GrpcService> {
        let dir = TempDir::new(name)?;
        let port = free_port()?;
        let metadata_log = dir.join("metadata.jsonl");
        let mut cmd = Command::new("node");
        cmd.arg(peers_dir().join("node_grpc.js"))
            .args(["server", &port.to_string(), "--name", name])
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key)
            .arg("--metadata-log")
            .arg(&metadata_log)
            .env("OTEL_SERVICE_NAME", name);
        if let Some(d) = downstream {
            cmd.args(["--downstream", d])
                .arg("--downstream-ca")
                .arg(&cert.cert);
        }
        let proc = Supervised::start(name, &mut cmd, dir.join("service.log"), |c| cg.spawn(c))
            .context("starting node_grpc.js (is Node.js installed?)")?;
        wait_listening_local(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(GrpcService {
            name: name.to_string(),
            port,
            metadata_log,
            proc,
            _dir: dir,
        })
    }
}

/// Runs `node_grpc.js client TARGET --ca CERT STEPS...` inside `cg` (one
/// http2 session over TLS; steps `unary`, `status:N`, `chain`, `chain:K`);
/// one result per step.
pub fn node_grpc_client(
    cg: &Cgroup,
    target: &str,
    ca: &TestCert,
    steps: &[&str],
) -> Result<Vec<StepResult>> {
    let mut cmd = Command::new("node");
    cmd.arg(peers_dir().join("node_grpc.js"))
        .args(["client", target])
        .arg("--ca")
        .arg(&ca.cert)
        .args(steps)
        .env("OTEL_SERVICE_NAME", NODE_GRPC_CLIENT);
    run_steps(
        cg,
        &mut cmd,
        &format!("node_grpc.js client {target}"),
        steps,
    )
}
