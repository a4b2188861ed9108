//! The clew agent as a child process: start until ready, stop cleanly, logs on failure.

use crate::cgroup::Cgroup;
use crate::env::clew_bin;
use crate::net::{free_port, http_status};
use crate::process::{Supervised, TempDir, SHORT_TAIL};
use crate::receiver::Protocol;
use anyhow::{bail, Result};
use std::process::Command;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running agent. It runs outside the traced cgroup, so it never sees its own exports.
pub struct Agent {
    proc: Supervised,
    health_port: u16,
    // Holds the log file; dropped after `proc` prints it.
    _dir: TempDir,
}

impl Agent {
    /// Starts `clew run` tracing `cgroup`, exporting to `endpoint`, and waits for /readyz.
    pub fn start(
        cgroup: &Cgroup,
        endpoint: &str,
        protocol: Protocol,
        extra_args: &[&str],
    ) -> Result<Self> {
        let bin = clew_bin()?;
        let dir = TempDir::new("agent")?;
        let health_port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--otlp-endpoint", endpoint])
            .args(["--otlp-protocol", protocol.as_arg()])
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(["--log-level", "info"])
            .args(extra_args)
            // Plain text logs: they end up in test failure output.
            .env("NO_COLOR", "1");
        let proc = Supervised::start("clew agent", &mut cmd, dir.join("agent.log"), |c| {
            Ok(c.spawn()?)
        })?;
        let mut agent = Agent {
            proc,
            health_port,
            _dir: dir,
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.health_url("/readyz");
        loop {
            self.proc.ensure_running()?;
            let last = match http_status(&url) {
                Ok(200) => return Ok(()),
                Ok(code) => format!("status {code}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "agent not ready within {READY_TIMEOUT:?} ({url}: {last})\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn health_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.health_port)
    }

    /// The end of the log, for error messages (the whole log is printed on drop).
    pub fn log_tail(&self) -> String {
        self.proc.log_tail(SHORT_TAIL)
    }

    /// Fails unless the agent is still running and /healthz answers 200.
    pub fn ensure_healthy(&mut self) -> Result<()> {
        self.proc.ensure_running()?;
        let status = http_status(&self.health_url("/healthz"));
        if !matches!(status, Ok(200)) {
            bail!("agent /healthz: {status:?}\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Stops with SIGTERM and requires exit status 0.
    pub fn stop(self) -> Result<()> {
        self.stop_with(libc::SIGTERM)
    }

    /// Stops with `signal` (SIGTERM or SIGINT) and requires exit status 0 within 10 s.
    pub fn stop_with(mut self, signal: i32) -> Result<()> {
        let status = self.proc.signal_and_wait(signal, STOP_TIMEOUT)?;
        if status.code() != Some(0) {
            bail!(
                "agent exited with {status} after signal {signal}, expected 0\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}
