//! Running child processes: each command is echoed as `$ cmd` before it runs,
//! its output is streamed, and a failure names the command that failed.

use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// Environment that `cargo run` (and a rustup proxy) hand to xtask and that
/// would pin a child cargo to xtask's own toolchain or tools.
const TOOLCHAIN_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTDOC",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
];

/// `cargo +TOOLCHAIN` with the inherited toolchain environment removed.
pub fn cargo(toolchain: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"));
    for var in TOOLCHAIN_ENV {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("CARGO_PKG_")) {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Runs `cmd` with inherited stdio, failing unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly (not echoed) and returns its trimmed stdout; stderr is
/// included in the error when it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether this process runs as root (`id -u` is 0).
pub fn is_root() -> Result<bool> {
    Ok(output(Command::new("id").arg("-u"))? == "0")
}

/// `PATH` with `dir` in front.
pub fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).context("PATH")
}

/// Human-readable time since `start`, e.g. `2m51s` or `0.4s`.
pub fn elapsed(start: Instant) -> String {
    let secs = start.elapsed().as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", secs as u64 / 60, secs as u64 % 60)
    }
}

/// Shell-like rendering: `cd DIR && VAR=value program args`.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("cd {} &&", quote(dir.as_os_str())));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for (key, value) in cmd.get_envs() {
        let Some(value) = value else { continue };
        let mut value = value.to_string_lossy().into_owned();
        if key == "PATH" && !path.is_empty() {
            if let Some(front) = value.strip_suffix(&path) {
                value = format!("{front}$PATH");
            }
        }
        parts.push(format!(
            "{}={}",
            key.to_string_lossy(),
            quote(value.as_ref())
        ));
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+@,$%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_env_dir_and_quotes() {
        let mut cmd = Command::new("cargo");
        cmd.current_dir("/x")
            .env("RUSTFLAGS", r#"--cfg bpf_target_arch="x86_64""#)
            .env_remove("RUSTC")
            .args(["build", "it's"]);
        assert_eq!(
            display(&cmd),
            r#"cd /x && RUSTFLAGS='--cfg bpf_target_arch="x86_64"' cargo build 'it'\''s'"#
        );
    }
}
