//! The Python peers in `tests/peers` and curl, all run inside a test's cgroup.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python, Python};
use crate::line_session::LineSession;
use crate::net::{free_port, wait_listening, wait_listening_in};
use crate::netns::Netns;
use crate::process::{Supervised, TempDir};
use crate::tls::TestCert;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `tests/peers/http_service.py`, traced under `service.name` = its name.
pub struct PyService {
    pub name: String,
    /// The address it listens on (127.0.0.1 unless `ServiceOpts::bind`).
    pub host: String,
    pub port: u16,
    pub python: Python,
    /// `http` or `https`.
    pub scheme: &'static str,
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

/// How to start a `PyService`; `PyService::start` covers the common case.
#[derive(Clone, Debug)]
pub struct ServiceOpts<'a> {
    name: &'a str,
    downstream: Option<&'a str>,
    port: Option<u16>,
    interpreter: Option<PathBuf>,
    launcher: Option<PathBuf>,
    work_delay_ms: u32,
    bind: Option<&'a str>,
    netns: Option<&'a Netns>,
    tls: Option<&'a TestCert>,
    /// Without OTEL_SERVICE_NAME: the agent names it.
    anonymous: bool,
    env: Vec<(&'a str, &'a str)>,
}

impl<'a> ServiceOpts<'a> {
    /// Start it without OTEL_SERVICE_NAME, so the agent names the service
    /// (after its executable, or its pod's workload).
    pub fn anonymous(self) -> Self {
        ServiceOpts {
            anonymous: true,
            ..self
        }
    }

    /// An extra environment variable (e.g. OTEL_RESOURCE_ATTRIBUTES).
    pub fn env(mut self, key: &'a str, value: &'a str) -> Self {
        self.env.push((key, value));
        self
    }

    /// Forward /chain requests to this base URL.
    pub fn downstream(self, url: &'a str) -> Self {
        ServiceOpts {
            downstream: Some(url),
            ..self
        }
    }

    /// Listen on this port instead of a fresh one.
    pub fn port(self, port: u16) -> Self {
        ServiceOpts {
            port: Some(port),
            ..self
        }
    }

    /// Run under this Python executable (e.g. a renamed copy) instead of the usual one.
    pub fn interpreter(self, path: PathBuf) -> Self {
        ServiceOpts {
            interpreter: Some(path),
            ..self
        }
    }

    /// Start it from this POSIX shell (e.g. a renamed copy of dash), which
    /// forks it at once and waits: `PyService::pid` is then the shell's.
    pub fn launcher(self, shell: PathBuf) -> Self {
        ServiceOpts {
            launcher: Some(shell),
            ..self
        }
    }

    /// Hold every /work answer this long, so that concurrent requests overlap.
    pub fn work_delay_ms(self, ms: u32) -> Self {
        ServiceOpts {
            work_delay_ms: ms,
            ..self
        }
    }

    /// Listen on this IPv4 address instead of 127.0.0.1.
    pub fn bind(self, addr: &'a str) -> Self {
        ServiceOpts {
            bind: Some(addr),
            ..self
        }
    }

    /// Serve HTTPS with this certificate.
    pub fn tls(self, cert: &'a TestCert) -> Self {
        ServiceOpts {
            tls: Some(cert),
            ..self
        }
    }

    /// Run inside this network namespace.
    pub fn netns(self, ns: &'a Netns) -> Self {
        ServiceOpts {
            netns: Some(ns),
            ..self
        }
    }

    /// Starts the service inside `cg` and waits until it listens.
    pub fn start(self, cg: &Cgroup) -> Result<PyService> {
        let mut python = python()?;
        if let Some(path) = self.interpreter {
            python = Python {
                exe_name: path
                    .file_name()
                    .context("interpreter has no file name")?
                    .to_string_lossy()
                    .into_owned(),
                path,
            };
        }
        let name = self.name;
        let dir = TempDir::new(name)?;
        let port = match self.port {
            Some(p) => p,
            None => free_port()?,
        };
        let header_log = dir.join("headers.jsonl");
        let host = self.bind.unwrap_or("127.0.0.1");
        let mut cmd = match &self.launcher {
            Some(shell) => {
                let mut c = Command::new(shell);
                c.args(["-c", "\"$@\" & wait", "launcher"])
                    .arg(&python.path);
                c
            }
            None => Command::new(&python.path),
        };
        cmd.arg(peers_dir().join("http_service.py"))
            .args(["--port", &port.to_string(), "--name", name])
            .args(["--bind", host])
            .arg("--header-log")
            .arg(&header_log)
            .args(["--work-delay-ms", &self.work_delay_ms.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.env.iter().copied());
        if !self.anonymous {
            cmd.env("OTEL_SERVICE_NAME", name);
        }
        if let Some(d) = self.downstream {
            cmd.args(["--downstream", d]);
        }
        if let Some(c) = self.tls {
            cmd.arg("--tls-cert")
                .arg(&c.cert)
                .arg("--tls-key")
                .arg(&c.key);
        }
        if let Some(ns) = self.netns {
            ns.enter(&mut cmd);
        }
        let proc = Supervised::start(name, &mut cmd, dir.join("service.log"), |c| cg.spawn(c))?;
        if self.netns.is_some() || host != "127.0.0.1" {
            let ip = host
                .parse()
                .with_context(|| format!("bind address {host}"))?;
            wait_listening_in(proc.pid(), ip, port, START_TIMEOUT, || proc.log_tail(40))?;
        } else {
            wait_listening(port, START_TIMEOUT, || proc.log_tail(40))?;
        }
        Ok(PyService {
            name: name.to_string(),
            host: host.to_string(),
            port,
            python,
            scheme: if self.tls.is_some() { "https" } else { "http" },
            header_log,
            proc,
            _dir: dir,
        })
    }
}

impl PyService {
    /// Starts the service named `name` (its OTEL_SERVICE_NAME) inside `cg`,
    /// forwarding /chain to `downstream` if given, and waits until it listens.
    pub fn start(cg: &Cgroup, name: &str, downstream: Option<&str>) -> Result<Self> {
        let opts = Self::opts(name);
        match downstream {
            Some(d) => opts.downstream(d).start(cg),
            None => opts.start(cg),
        }
    }

    /// Options for a service named `name`, to adjust before `start`.
    pub fn opts(name: &str) -> ServiceOpts<'_> {
        ServiceOpts {
            name,
            downstream: None,
            port: None,
            interpreter: None,
            launcher: None,
            work_delay_ms: 0,
            bind: None,
            netns: None,
            tls: None,
            anonymous: false,
            env: Vec::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}:{}{path}", self.scheme, self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
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
    curl_in(cg, None, url, args)
}

/// `curl`, in network namespace `netns` if given.
pub fn curl_in(cg: &Cgroup, netns: Option<&Netns>, url: &str, args: &[&str]) -> Result<u16> {
    let mut cmd = Command::new("curl");
    if let Some(ns) = netns {
        ns.enter(&mut cmd);
    }
    let out = cg
        .run(
            cmd.args([
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

/// One curl fetching `url` `n` times in a row on one kept-alive
/// connection; the statuses, in order.
pub fn curl_keepalive(cg: &Cgroup, url: &str, n: usize, args: &[&str]) -> Result<Vec<u16>> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "%{http_code}\n", "--max-time", "20"])
        .args(args);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cg.run(&mut cmd, CLIENT_TIMEOUT)?.ok()?;
    out.stdout
        .lines()
        .map(|l| {
            l.parse()
                .with_context(|| format!("curl {url} printed {l:?}"))
        })
        .collect()
}

/// `service.name` of spans from `tls_client.py`.
pub const TLS_CLIENT: &str = "tls-client";

/// One answer `tls_client.py` got.
#[derive(Debug, PartialEq, Eq)]
pub struct TlsAnswer {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: usize,
}

/// Runs `tests/peers/tls_client.py` (one kept-alive HTTPS connection, its
/// fixed request sequence) against `host:port` inside `cg`.
pub fn tls_client(cg: &Cgroup, host: &str, port: u16) -> Result<Vec<TlsAnswer>> {
    let py = python()?;
    let out = cg
        .run(
            Command::new(&py.path)
                .arg(peers_dir().join("tls_client.py"))
                .args([host, &port.to_string()])
                .env("OTEL_SERVICE_NAME", TLS_CLIENT),
            CLIENT_TIMEOUT,
        )?
        .ok()
        .context("tls_client.py")?;
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(TlsAnswer {
                method: v["method"].as_str().unwrap_or("").into(),
                path: v["path"].as_str().unwrap_or("").into(),
                status: v["status"].as_u64().unwrap_or(0) as u16,
                bytes: v["bytes"].as_u64().unwrap_or(0) as usize,
            })
        })
        .collect()
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

/// `raw_client.py session`: one keep-alive connection that stays open across
/// test steps (e.g. across the agent's start); each `get` sends one request
/// on it. The client fails (and `get` with it) if the connection is ever replaced.
pub struct KeepAliveSession(LineSession);

impl KeepAliveSession {
    /// Starts the client inside `cg`, connected to 127.0.0.1:`port` (the
    /// connection opens with the first request).
    pub fn start(cg: &Cgroup, port: u16) -> Result<Self> {
        let py = python()?;
        let mut cmd = Command::new(&py.path);
        cmd.arg(peers_dir().join("raw_client.py"))
            .args(["session", "--port", &port.to_string()])
            .env("OTEL_SERVICE_NAME", RAW_CLIENT)
            .env("PYTHONUNBUFFERED", "1");
        Ok(KeepAliveSession(LineSession::spawn(
            cg,
            "session client",
            &mut cmd,
            CLIENT_TIMEOUT,
        )?))
    }

    /// Sends `GET path` on the session's connection; returns the status.
    pub fn get(&mut self, path: &str) -> Result<u16> {
        let line = self.0.ask(path)?;
        line.trim()
            .parse()
            .with_context(|| format!("session GET {path} printed {line:?}\n{}", self.0.stderr()))
    }

    /// `get`, requiring `status`.
    pub fn get_expect(&mut self, path: &str, status: u16) -> Result<()> {
        let got = self.get(path)?;
        if got != status {
            bail!("session GET {path}: status {got}, expected {status}");
        }
        Ok(())
    }

    /// Closes the connection and requires the client to exit 0.
    pub fn finish(self) -> Result<()> {
        self.0.finish()
    }
}

/// `raw_client.py concurrent`: `count` GETs of `{prefix}{i}` for i in
/// 0..count, sent by `clients` threads at once (one connection per request),
/// each answered `status`.
pub fn concurrent_gets(
    cg: &Cgroup,
    port: u16,
    prefix: &str,
    count: usize,
    clients: usize,
    status: u16,
) -> Result<String> {
    raw_client(
        cg,
        &[
            "concurrent",
            "--port",
            &port.to_string(),
            "--prefix",
            prefix,
            "--count",
            &count.to_string(),
            "--clients",
            &clients.to_string(),
            "--status",
            &status.to_string(),
        ],
    )
}
