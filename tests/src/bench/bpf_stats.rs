//! Run time of the agent's BPF programs (`BPF_ENABLE_STATS`): how much
//! kernel time the traced services, and every other process the hooks fire
//! for, pay per request, program by program.

use crate::bpf;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

/// `BPF_ENABLE_STATS` (include/uapi/linux/bpf.h) with `BPF_STATS_RUN_TIME`.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Keeps run-time statistics on while held; the kernel turns them off when
/// the last such file descriptor closes, so a crashed bench leaves the
/// node's `kernel.bpf_stats_enabled` as it found it.
pub struct Enabled {
    _fd: OwnedFd,
}

pub fn enable() -> Result<Enabled> {
    // union bpf_attr's enable_stats member: one u32, padded.
    let attr = [BPF_STATS_RUN_TIME, 0, 0, 0];
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`, which lives
    // across the call; on success it returns a new file descriptor we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(Enabled {
        _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
    })
}

/// Cumulative run time and runs of one program (or of all programs of a name).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Run {
    pub ns: u64,
    pub count: u64,
}

/// Run time so far of every program the process `pid` holds, by name.
pub fn snapshot(pid: u32) -> Result<BTreeMap<String, Run>> {
    let ids = bpf::prog_ids_of(pid)?;
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut by_name: BTreeMap<String, Run> = BTreeMap::new();
    for p in progs.as_array().map(Vec::as_slice).unwrap_or_default() {
        if !p["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
            continue;
        }
        let run = by_name
            .entry(p["name"].as_str().unwrap_or("?").to_string())
            .or_default();
        run.ns += p["run_time_ns"].as_u64().unwrap_or(0);
        run.count += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(by_name)
}

/// What ran between two snapshots; programs that did not run are left out.
pub fn delta(
    before: &BTreeMap<String, Run>,
    after: &BTreeMap<String, Run>,
) -> BTreeMap<String, Run> {
    after
        .iter()
        .filter_map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let d = Run {
                ns: a.ns.saturating_sub(b.ns),
                count: a.count.saturating_sub(b.count),
            };
            (d.count > 0).then(|| (name.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_leave_out_programs_that_did_not_run() {
        let before = BTreeMap::from([
            ("enter_io".to_string(), Run { ns: 100, count: 2 }),
            ("close".to_string(), Run { ns: 50, count: 1 }),
        ]);
        let after = BTreeMap::from([
            ("enter_io".to_string(), Run { ns: 400, count: 8 }),
            ("close".to_string(), Run { ns: 50, count: 1 }),
            ("new".to_string(), Run { ns: 30, count: 3 }),
        ]);
        let d = delta(&before, &after);
        assert_eq!(
            d,
            BTreeMap::from([
                ("enter_io".to_string(), Run { ns: 300, count: 6 }),
                ("new".to_string(), Run { ns: 30, count: 3 }),
            ])
        );
    }
}
