//! The Python peers in `tests/peers` and curl, all run inside a test's cgroup.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python, Python};
use crate::net::{free_port, wait_listening};
use crate::process::{Supervised, TempDir};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `tests/peers/http_service.py`, traced under `service.name` = its name.
pub struct PyService {
    pub name: String,
    pub port: u16,
    pub python: Python,
    header_log: PathBuf,
    proc: Supervised,
    _dir: TempDir,
}

/// One request as the service logged it.
#[derive(Debug)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl ReceivedRequest {
    /// All values of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl PyService {
    /// Starts the service named `name` (its OTEL_SERVICE_NAME) inside `cg`,
    /// forwarding /chain to `downstream` if given, and waits until it listens.
    pub fn start(cg: &Cgroup, name: &str, downstream: Option<&str>) -> Result<Self> {
        let python = python()?;
        let dir = TempDir::new(name)?;
        let port = free_port()?;
        let header_log = dir.join("headers.jsonl");
        let mut cmd = Command::new(&python.path);
        cmd.arg(peers_dir().join("http_service.py"))
            .args(["--port", &port.to_string(), "--name", name])
            .arg("--header-log")
            .arg(&header_log)
            .env("OTEL_SERVICE_NAME", name)
            .env("PYTHONUNBUFFERED", "1");
        if let Some(d) = downstream {
            cmd.args(["--downstream", d]);
        }
        let proc = Supervised::start(name, &mut cmd, dir.join("service.log"), |c| cg.spawn(c))?;
        wait_listening(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(PyService {
            name: name.to_string(),
            port,
            python,
            header_log,
            proc,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Requests received so far, from the service's header log.
    pub fn received(&self) -> Result<Vec<ReceivedRequest>> {
        let text = std::fs::read_to_string(&self.header_log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let headers = v["headers"]
                    .as_array()
                    .context("headers")?
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap_or("").into(),
                            h[1].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect();
                Ok(ReceivedRequest {
                    method: v["method"].as_str().unwrap_or("").into(),
                    path: v["path"].as_str().unwrap_or("").into(),
                    headers,
                })
            })
            .collect()
    }
}

/// GET (or other, via `args`) with curl inside `cg`; returns the status code.
/// One curl process per call, so every request is its own connection.
pub fn curl(cg: &Cgroup, url: &str, args: &[&str]) -> Result<u16> {
    let out = cg
        .run(
            Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "20",
                ])
                .args(args)
                .arg(url),
            CLIENT_TIMEOUT,
        )?
        .ok()
        .with_context(|| format!("curl {url}"))?;
    out.stdout
        .trim()
        .parse()
        .with_context(|| format!("curl {url} printed {:?}", out.stdout))
}

/// curl `url` and require `status`.
pub fn curl_expect(cg: &Cgroup, url: &str, args: &[&str], status: u16) -> Result<()> {
    let got = curl(cg, url, args)?;
    if got != status {
        bail!("curl {url}: status {got}, expected {status}");
    }
    Ok(())
}

/// `service.name` of spans from `raw_client.py`.
pub const RAW_CLIENT: &str = "raw-client";

/// Runs `tests/peers/raw_client.py <args>` inside `cg`; returns its stdout.
pub fn raw_client(cg: &Cgroup, args: &[&str]) -> Result<String> {
    let py = python()?;
    let out = cg
        .run(
            Command::new(&py.path)
                .arg(peers_dir().join("raw_client.py"))
                .args(args)
                .env("OTEL_SERVICE_NAME", RAW_CLIENT),
            CLIENT_TIMEOUT,
        )?
        .ok()
        .with_context(|| format!("raw_client.py {args:?}"))?;
    Ok(out.stdout.trim().to_string())
}
