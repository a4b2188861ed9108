//! `clew probe` tells the truth: every mechanism has its line, what Clew
//! needs reads as working on this machine, a mechanism that does not work
//! says why, and the lockdown mode is what securityfs says.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clew_e2e::env::clew_bin;
use clew_e2e::process::collect;

const MECHANISMS: [&str; 13] = [
    "ring buffer",
    "syscall tracepoints",
    "raw tracepoints",
    "kprobes",
    "fentry/fexit",
    "uprobes",
    "BTF",
    "sockops",
    "sk_msg",
    "TCP header options",
    "TC classifier",
    "bpf_probe_write_user",
    "cgroup v2",
];

/// What Clew relies on, which this machine offers (docs: platform.md).
const NEEDED_HERE: [&str; 6] = [
    "ring buffer",
    "syscall tracepoints",
    "uprobes",
    "sockops",
    "sk_msg",
    "TCP header options",
];

/// One mechanism line: name, `yes`/`NO`, what Clew uses it for, detail.
struct Line<'a> {
    here: &'a str,
    used_for: &'a str,
    detail: &'a str,
}

/// Columns are separated by at least two spaces; names and details hold single ones.
fn mechanism_line<'a>(text: &'a str, name: &str) -> Result<Line<'a>> {
    let line = text
        .lines()
        .find(|l| l.split("  ").next() == Some(name))
        .with_context(|| format!("no line for {name}:\n{text}"))?;
    let cols: Vec<&str> = line
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    ensure!(
        cols.len() >= 3,
        "line for {name} has too few columns: {line:?}"
    );
    Ok(Line {
        here: cols[1],
        used_for: cols[2],
        detail: cols.get(3).copied().unwrap_or(""),
    })
}

#[test]
fn probe_reports_every_mechanism_and_why_one_fails() -> Result<()> {
    let child = Command::new(clew_bin()?)
        .arg("probe")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = collect(child, Duration::from_secs(60))?.ok()?;
    let text = &out.stdout;
    println!("{text}");

    for name in MECHANISMS {
        let line = mechanism_line(text, name)?;
        ensure!(
            matches!(line.here, "yes" | "NO"),
            "{name}: `{}` is neither yes nor NO",
            line.here
        );
        ensure!(
            line.here == "yes" || line.detail.len() > 3,
            "{name} does not work but gives no reason:\n{text}"
        );
    }
    for name in NEEDED_HERE {
        let line = mechanism_line(text, name)?;
        ensure!(
            line.here == "yes" && line.used_for != "-",
            "{name} should work here and be used by Clew:\n{text}"
        );
    }

    // securityfs as the kernel says it (clew probe mounted it if needed).
    let expected = match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(modes) => modes
            .split('[')
            .nth(1)
            .and_then(|m| m.split(']').next())
            .context("no [mode] in the lockdown file")?
            .to_owned(),
        Err(_) => "none (no lockdown LSM in this kernel)".to_owned(),
    };
    ensure!(
        text.lines()
            .any(|l| l == format!("kernel lockdown: {expected}")),
        "securityfs says lockdown {expected:?}:\n{text}"
    );
    // Under lockdown the helper is refused, and the line says so.
    if expected != "none" && !expected.starts_with("none ") {
        let line = mechanism_line(text, "bpf_probe_write_user")?;
        ensure!(
            line.here == "NO"
                && line
                    .detail
                    .contains(&format!("kernel lockdown: {expected}")),
            "bpf_probe_write_user under lockdown {expected}:\n{text}"
        );
    }
    // The scratch cgroup of the sockops test is gone.
    let leftovers: Vec<_> = std::fs::read_dir(clew_e2e::cgroup::cgroup2_mount()?)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("clew-probe-"))
        .collect();
    ensure!(leftovers.is_empty(), "scratch cgroups left: {leftovers:?}");
    Ok(())
}
