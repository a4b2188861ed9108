//! Child processes with deadlines and log files, and temporary directories.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "clew-e2e-{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fails with both streams when the command did not exit 0.
    pub fn ok(self) -> Result<Self> {
        if !self.status.success() {
            bail!(
                "{}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Waits for a child whose stdout/stderr are piped, killing it at `timeout`.
pub fn collect(mut child: Child, timeout: Duration) -> Result<Output> {
    // Read on threads so a chatty child cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                s = String::from_utf8_lossy(&buf).into_owned();
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let status = match wait_deadline(&mut child, timeout)? {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            );
            bail!("timed out after {timeout:?}\nstdout:\n{o}\nstderr:\n{e}");
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `Some(status)` once the child exits, `None` if it is still running at the deadline.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

static LOG_DUMPS: AtomicBool = AtomicBool::new(true);

/// Stops children from printing their logs when dropped. Tests want them
/// (the harness shows them for failing tests only); the benchmark, whose
/// stderr is its progress report, does not.
pub fn silence_log_dumps() {
    LOG_DUMPS.store(false, Ordering::Relaxed);
}

/// Whether dropped children print their logs (see `silence_log_dumps`).
pub fn log_dumps() -> bool {
    LOG_DUMPS.load(Ordering::Relaxed)
}

/// Log lines quoted in error messages; the whole log is printed on drop.
pub const SHORT_TAIL: usize = 15;

/// A long-running child whose output goes to a log file. On drop it is
/// killed and the log's tail printed: the test harness shows that output
/// only for failing tests, which is exactly when it is wanted.
pub struct Supervised {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Supervised {
    /// Spawns `cmd` via `spawn` (e.g. inside a cgroup) with stdout+stderr sent to `log`.
    pub fn start(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
        spawn: impl FnOnce(&mut Command) -> Result<Child>,
    ) -> Result<Self> {
        Self::start_split(name, cmd, log, None, spawn)
    }

    /// Like `start`, but with stdout sent to its own file `stdout` when given
    /// (the log then holds stderr only).
    pub fn start_split(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
        stdout: Option<&Path>,
        spawn: impl FnOnce(&mut Command) -> Result<Child>,
    ) -> Result<Self> {
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let out = match stdout {
            Some(p) => File::create(p).with_context(|| format!("creating {}", p.display()))?,
            None => file.try_clone()?,
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(file);
        let child = spawn(cmd)?;
        Ok(Supervised {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, labelled, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "---- {} log ({}) ----\n{tail}\n---- end of {} log ----",
            self.name,
            self.log.display(),
            self.name
        )
    }

    /// Fails with the log if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited early: {status}\n{}",
                    self.name,
                    self.log_tail(SHORT_TAIL)
                );
            }
        }
        Ok(())
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("process already reaped")?;
        // SAFETY: plain syscall on our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as i32, signal) };
        match wait_deadline(child, timeout)? {
            Some(status) => {
                self.child = None;
                Ok(status)
            }
            None => bail!(
                "{} did not exit within {timeout:?} after signal {signal}\n{}",
                self.name,
                self.log_tail(SHORT_TAIL)
            ),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if log_dumps() {
            eprintln!("{}", self.log_tail(300));
        }
    }
}

/// This process's hard limit on open files: a container started from here
/// may not ask for more.
pub fn open_files_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok(limit.rlim_max)
}
