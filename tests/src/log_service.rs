//! `tests/peers/log_service.py`: a threaded Python service that logs with
//! the `logging` module while it serves requests, to stderr, stdout and
//! files, and the exact lines it writes, which the log capture tests
//! compare with what the receiver got and with what the files hold.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::net::{free_port, wait_listening};
use crate::process::{Supervised, TempDir};
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `service.name` of its spans and log records.
pub const LOG_SERVICE: &str = "log-service";

/// The levels lines cycle through, as `logging` names them, with the
/// OpenTelemetry severity number each maps to.
pub const LEVELS: [(&str, i32); 5] = [
    ("WARNING", 13),
    ("ERROR", 17),
    ("INFO", 9),
    ("DEBUG", 5),
    ("CRITICAL", 21),
];

pub struct LogService {
    pub port: u16,
    /// Everything it wrote to stderr and stdout, in files of their own.
    pub stderr: PathBuf,
    pub stdout: PathBuf,
    /// Its log files: `app.log` and `app.json` (selected by the tests'
    /// patterns), `other.txt` (not).
    pub app_log: PathBuf,
    pub json_log: PathBuf,
    pub other_log: PathBuf,
    /// Bytes of the message of `/huge/ID`'s line.
    pub huge_bytes: usize,
    dir: TempDir,
    _proc: Supervised,
}

impl LogService {
    pub fn start(cg: &Cgroup) -> Result<Self> {
        let py = python()?;
        let dir = TempDir::new("log-service")?;
        let port = free_port()?;
        let (app_log, json_log, other_log) = (
            dir.join("app.log"),
            dir.join("app.json"),
            dir.join("other.txt"),
        );
        let (stderr, stdout) = (dir.join("stderr.txt"), dir.join("stdout.txt"));
        let huge_bytes = 100_000;
        let mut cmd = Command::new(&py.path);
        cmd.arg(peers_dir().join("log_service.py"))
            .args(["--port", &port.to_string()])
            .arg("--app-log")
            .arg(&app_log)
            .arg("--json-log")
            .arg(&json_log)
            .arg("--other-log")
            .arg(&other_log)
            .args(["--huge-bytes", &huge_bytes.to_string()])
            .env("OTEL_SERVICE_NAME", LOG_SERVICE)
            .env("PYTHONUNBUFFERED", "1");
        let proc =
            Supervised::start_split(LOG_SERVICE, &mut cmd, stderr.clone(), Some(&stdout), |c| {
                cg.spawn(c)
            })?;
        wait_listening(port, Duration::from_secs(20), || proc.log_tail(40))?;
        Ok(LogService {
            port,
            stderr,
            stdout,
            app_log,
            json_log,
            other_log,
            huge_bytes,
            dir,
            _proc: proc,
        })
    }

    /// The directory its files are in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The message of line `i` of request `id`, and its level.
    pub fn line(id: &str, i: usize) -> (String, (&'static str, i32)) {
        (format!("req {id} line {i}"), LEVELS[i % LEVELS.len()])
    }

    /// The message of `/huge/ID`'s line.
    pub fn huge_message(&self, id: &str) -> String {
        let prefix = format!("huge {id} ");
        format!("{prefix}{}", "x".repeat(self.huge_bytes - prefix.len()))
    }
}
