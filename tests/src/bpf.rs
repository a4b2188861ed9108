//! Counting the agent's loaded BPF programs with bpftool, to prove none outlive it.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

/// Names (as bpftool shows them, at most 15 characters) of clew's programs.
const CLEW_PROGS: &[&str] = &[
    "enter_io",
    "exit_io",
    "enter_accept",
    "exit_accept",
    "enter_connect",
    "exit_connect",
    "enter_close",
    "proc_exec",
    "proc_exit",
    "proc_fork",
];

/// `bpftool prog show` output.
pub fn prog_show() -> Result<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .context("running bpftool (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The lines of `bpftool prog show` that name one of clew's programs.
pub fn clew_progs() -> Result<Vec<String>> {
    Ok(prog_show()?
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)
                .is_some_and(|n| CLEW_PROGS.iter().any(|p| n.starts_with(p)))
        })
        .map(str::to_string)
        .collect())
}

/// Waits until at most `baseline` clew programs remain loaded: the kernel
/// frees programs asynchronously after their last reference goes away.
pub fn wait_clew_progs_at_most(baseline: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let progs = clew_progs()?;
        if progs.len() <= baseline {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} clew BPF programs still loaded after the agent exited (baseline {baseline}):\n{}",
                progs.len(),
                progs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Programs attached directly to the cgroup at `path` (`bpftool cgroup show`).
pub fn cgroup_progs(path: &std::path::Path) -> Result<Vec<String>> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(path)
        .output()
        .context("running bpftool cgroup show")?;
    if !out.status.success() {
        bail!(
            "bpftool cgroup show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Skip the "ID AttachType ..." header: attachment lines start with the program id.
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .collect())
}
