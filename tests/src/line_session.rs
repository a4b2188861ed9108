//! A client process driven one line at a time: each line written to its
//! stdin is one step, each line it prints the step's answer. Both the
//! keep-alive HTTP client and the gRPC client run as such sessions, so a
//! test can act between steps on one connection.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{cgroup::Cgroup, process::TempDir};

pub struct LineSession {
    /// What the session is, in error messages.
    what: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr_log: PathBuf,
    timeout: Duration,
    _dir: TempDir,
}

impl LineSession {
    /// Spawns `cmd` inside `cg` with piped stdin and stdout.
    pub fn spawn(
        cg: &Cgroup,
        what: &'static str,
        cmd: &mut Command,
        timeout: Duration,
    ) -> Result<Self> {
        let dir = TempDir::new("session")?;
        let stderr_log = dir.join("stderr.log");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log)?);
        let mut child = cg.spawn(cmd)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("session stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LineSession {
            what,
            child,
            stdin,
            lines,
            stderr_log,
            timeout,
            _dir: dir,
        })
    }

    /// Sends one step and returns the line the client answers with.
    pub fn ask(&mut self, step: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().context("session already finished")?;
        writeln!(stdin, "{step}")
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!("{} step {step}: client gone\n{}", self.what, self.stderr())
            })?;
        self.lines
            .recv_timeout(self.timeout)
            .with_context(|| format!("{} step {step}: no answer\n{}", self.what, self.stderr()))
    }

    /// Closes stdin and requires the client to exit 0.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        match crate::process::wait_deadline(&mut self.child, self.timeout)? {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("{} exited with {s}\n{}", self.what, self.stderr()),
            None => bail!("{} did not exit\n{}", self.what, self.stderr()),
        }
    }

    pub fn stderr(&self) -> String {
        format!(
            "---- {} stderr ----\n{}---- end ----",
            self.what,
            std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
        )
    }
}

impl Drop for LineSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
