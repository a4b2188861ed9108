//! The clew agent as a child process: start until ready, stop cleanly, logs on failure.

use crate::cgroup::Cgroup;
use crate::env::clew_bin;
use crate::net::{free_port, http_status, http_text};
use crate::process::{Supervised, TempDir, SHORT_TAIL};
use crate::receiver::Protocol;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which processes the agent traces: one `--cgroup`, `--pid`, `--exe` or `--port` flag.
#[derive(Clone, Copy, Debug)]
pub enum Select<'a> {
    Cgroup(&'a Cgroup),
    Pid(u32),
    Exe(&'a str),
    Port(u16),
}

impl Select<'_> {
    fn args(&self) -> [OsString; 2] {
        let (flag, value): (&str, OsString) = match self {
            Select::Cgroup(cg) => ("--cgroup", cg.path().into()),
            Select::Pid(pid) => ("--pid", pid.to_string().into()),
            Select::Exe(exe) => ("--exe", exe.into()),
            Select::Port(port) => ("--port", port.to_string().into()),
        };
        [flag.into(), value]
    }
}

/// The capabilities the agent needs, and all the Helm chart grants it
/// (README, "Deploying on a fleet").
pub const AGENT_CAPABILITIES: [&str; 6] = [
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "NET_ADMIN",
    "SYS_RESOURCE",
    "DAC_READ_SEARCH",
];

/// The kernel access of an agent run from its container image.
#[derive(Clone, Copy, Debug)]
pub enum Access<'a> {
    Privileged,
    /// Only these capabilities (names without `CAP_`, as Kubernetes writes
    /// them), under no seccomp profile.
    Capabilities(&'a [&'a str]),
}

/// Where the agent sends its spans.
#[derive(Clone, Copy, Debug)]
pub enum Export<'a> {
    /// `--otlp-endpoint` and `--otlp-protocol`.
    Otlp {
        endpoint: &'a str,
        protocol: Protocol,
    },
    /// No endpoint at all: finished traces are printed on the agent's stdout.
    Console,
    /// No export flag: the endpoint comes from the agent's config file or
    /// its environment.
    Configured,
}

/// Environment variables that would change the agent's export or sampling
/// behind the test's back; removed so that the tests are hermetic.
const OTEL_ENV: &[&str] = &[
    "CLEW_CONFIG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "CLEW_LOGS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    // A test machine that is itself a pod must not make every agent watch
    // its cluster.
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "NODE_NAME",
];

/// A running agent. It runs outside the traced cgroup, so it never sees its own exports.
pub struct Agent {
    proc: Supervised,
    health_port: u16,
    /// Where stdout goes in the console view (else stdout shares the log).
    stdout: Option<PathBuf>,
    /// The podman container it runs in, removed on drop whatever happened
    /// to the podman client.
    container: Option<String>,
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
        Self::launch(
            &[Select::Cgroup(cgroup)],
            Export::Otlp { endpoint, protocol },
            extra_args,
        )
    }

    /// Starts `clew run` with the given selectors (none: every process) and
    /// export, and waits for /readyz.
    pub fn launch(select: &[Select], export: Export, extra_args: &[&str]) -> Result<Self> {
        Self::launch_with_env(select, export, extra_args, &[])
    }

    /// `launch` with extra environment variables, set after the hermetic
    /// clean-up (e.g. `OTEL_TRACES_SAMPLER`).
    pub fn launch_with_env(
        select: &[Select],
        export: Export,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::launch_spawned(select, export, extra_args, env, |c| Ok(c.spawn()?))
    }

    /// `launch_with_env`, the agent's process started by `spawn` (e.g.
    /// inside a cgroup, or in namespaces of its own).
    pub fn launch_spawned(
        select: &[Select],
        export: Export,
        extra_args: &[&str],
        env: &[(&str, &str)],
        spawn: impl FnOnce(&mut Command) -> Result<std::process::Child>,
    ) -> Result<Self> {
        Self::launch_command(
            Command::new(clew_bin()?),
            None,
            select,
            export,
            extra_args,
            env,
            spawn,
        )
    }

    /// [`Agent::launch`], the agent holding only `caps` (names without
    /// `CAP_`): every other capability leaves its bounding set, and none
    /// is inheritable or ambient, so root gets exactly these at exec.
    pub fn launch_with_capabilities(
        caps: &[&str],
        select: &[Select],
        export: Export,
        extra_args: &[&str],
    ) -> Result<Self> {
        let keep: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--inh-caps=-all", "--ambient-caps=-all"])
            .arg(format!("--bounding-set=-all,{}", keep.join(",")))
            .arg("--")
            .arg(clew_bin()?);
        Self::launch_command(cmd, None, select, export, extra_args, &[], |c| {
            Ok(c.spawn()?)
        })
    }

    /// Starts the agent from its container image (`cargo xtask image`,
    /// `CLEW_TEST_IMAGE`) as the DaemonSet runs it: in the host's PID and
    /// network namespaces, with the host's cgroup tree (read-only) and
    /// tracefs mounted, and the given kernel access.
    pub fn launch_image(
        access: Access,
        select: &[Select],
        export: Export,
        extra_args: &[&str],
    ) -> Result<Self> {
        let image = std::env::var("CLEW_TEST_IMAGE").context(
            "CLEW_TEST_IMAGE is not set: run the tests through `cargo xtask test`, which builds the image",
        )?;
        let name = format!("clew-test-{}", std::process::id());
        let mut cmd = crate::container::podman_run()?;
        cmd.args(["--rm", "--name", &name])
            .args(["--pid=host", "--network=host"])
            .args(["--volume", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
            .args(["--volume", "/sys/kernel/tracing:/sys/kernel/tracing"]);
        match access {
            Access::Privileged => {
                cmd.arg("--privileged");
            }
            Access::Capabilities(caps) => {
                cmd.args(["--cap-drop", "all", "--security-opt", "seccomp=unconfined"]);
                for cap in caps {
                    cmd.args(["--cap-add", &format!("CAP_{cap}")]);
                }
            }
        }
        cmd.args(["--env", "NO_COLOR=1", &image]);
        Self::launch_command(cmd, Some(name), select, export, extra_args, &[], |c| {
            Ok(c.spawn()?)
        })
    }

    /// `clew` is either the agent binary or a command that runs it (podman):
    /// the agent's arguments follow.
    fn launch_command(
        mut cmd: Command,
        container: Option<String>,
        select: &[Select],
        export: Export,
        extra_args: &[&str],
        env: &[(&str, &str)],
        spawn: impl FnOnce(&mut Command) -> Result<std::process::Child>,
    ) -> Result<Self> {
        let dir = TempDir::new("agent")?;
        let health_port = free_port()?;
        cmd.arg("run");
        for s in select {
            cmd.args(s.args());
        }
        let stdout = match export {
            Export::Otlp { endpoint, protocol } => {
                cmd.args(["--otlp-endpoint", endpoint])
                    .args(["--otlp-protocol", protocol.as_arg()]);
                None
            }
            Export::Console => Some(dir.join("stdout.txt")),
            Export::Configured => None,
        };
        for var in OTEL_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        // `--log-level` beats RUST_LOG: a test's own RUST_LOG must stand.
        if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            let level = std::env::var("CLEW_TEST_LOG").unwrap_or_else(|_| "info".into());
            cmd.args(["--log-level", &level]);
        }
        cmd.args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(extra_args)
            // Plain text logs: they end up in test failure output.
            .env("NO_COLOR", "1");
        let proc = Supervised::start_split(
            "clew agent",
            &mut cmd,
            dir.join("agent.log"),
            stdout.as_deref(),
            spawn,
        )?;
        let mut agent = Agent {
            proc,
            health_port,
            stdout,
            container,
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

    /// The agent's own log (stderr; stdout too unless in the console view).
    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// What the console view printed on stdout so far.
    pub fn console(&self) -> Result<String> {
        let path = self
            .stdout
            .as_ref()
            .context("the agent was not started with Export::Console")?;
        Ok(std::fs::read_to_string(path).unwrap_or_default())
    }

    /// Polls the console view until `pred` holds for it and returns it; on
    /// timeout the error shows the console and the log.
    pub fn wait_console(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        self.wait_text("console view", || self.console(), pred, timeout)
    }

    /// Polls the agent's log until `pred` holds for it and returns it.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        self.wait_text("log", || Ok(self.log()), pred, timeout)
    }

    fn wait_text(
        &self,
        what: &str,
        fetch: impl Fn() -> Result<String>,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fetch()?;
            if pred(&text) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} not as expected after {timeout:?}\n---- agent {what} ----\n{text}\n---- end of agent {what} ----\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Current value of counter `clew_{name}` on /metrics.
    pub fn metric(&self, name: &str) -> Result<u64> {
        let text = http_text(&self.health_url("/metrics"))?;
        let prefix = format!("clew_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .with_context(|| format!("no clew_{name} on /metrics:\n{text}"))?
            .trim()
            .parse()
            .with_context(|| format!("clew_{name} is not a number"))
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

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the agent (SIGSTOP) `after` from now for `length`, on a
    /// thread of its own, so the kernel's ring buffer fills meanwhile and
    /// drops records. The thread returns when the agent was let go.
    pub fn stall(&self, after: Duration, length: Duration) -> std::thread::JoinHandle<SystemTime> {
        let pid = self.pid() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(after);
            // SAFETY: plain kill(2) on the agent this test started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(length);
            unsafe { libc::kill(pid, libc::SIGCONT) };
            SystemTime::now()
        })
    }

    /// SIGKILL, as an OOM kill or a crash would end it: no chance to clean
    /// up. Returns once the process is reaped.
    pub fn kill(mut self) -> Result<()> {
        let status = self.proc.signal_and_wait(libc::SIGKILL, STOP_TIMEOUT)?;
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(libc::SIGKILL) {
            bail!(
                "agent ended with {status}, not by SIGKILL\n{}",
                self.log_tail()
            );
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

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(name) = &self.container {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--ignore", name])
                .output();
        }
        // Shown only when the test fails, next to the log.
        if !crate::process::log_dumps() {
            return;
        }
        if let Ok(text) = self.console() {
            eprintln!("---- clew agent stdout ----\n{text}\n---- end of clew agent stdout ----");
        }
    }
}
