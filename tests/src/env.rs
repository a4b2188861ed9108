//! Where the binaries and peer scripts live, and the root check every e2e test starts with.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (this crate lives in `<workspace>/tests`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Directory of the peer scripts (`tests/peers`).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The agent binary: `$CLEW_BIN`, else `<workspace>/target/release/clew`.
pub fn clew_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("CLEW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/release/clew"));
    if !bin.is_file() {
        bail!(
            "agent binary {} not found: build it with `cargo xtask build` or set CLEW_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// The Python interpreter the peers run under.
#[derive(Clone, Debug)]
pub struct Python {
    /// Path to execute. Not canonicalized: a venv's python is a symlink whose
    /// location selects the venv.
    pub path: PathBuf,
    /// File name of the real executable, which is what the agent reports as
    /// `process.executable.name`.
    pub exe_name: String,
}

/// `$CLEW_TEST_PYTHON`, else `python3` from PATH, resolved once via
/// `sys.executable` so that peers do not run through pyenv's shell shims.
pub fn python() -> Result<Python> {
    static PY: OnceLock<Result<Python, String>> = OnceLock::new();
    PY.get_or_init(|| resolve_python().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn resolve_python() -> Result<Python> {
    let requested = std::env::var("CLEW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&requested)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .with_context(|| format!("running {requested}"))?;
    if !out.status.success() {
        bail!(
            "{requested} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let real = std::fs::canonicalize(&path)?;
    let exe_name = real
        .file_name()
        .context("python executable has no file name")?
        .to_string_lossy()
        .into_owned();
    Ok(Python { path, exe_name })
}

/// Fails (never skips) when not root: these tests load BPF programs and manage cgroups.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the clew e2e tests must run as root (they create cgroups and the agent loads BPF programs)");
    }
    Ok(())
}

/// This machine's host name, as the agent should report it in `host.name`.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
