//! The agent's BPF programs and maps as bpftool sees them: to prove none
//! outlive it, and to look into the socket map of `traceparent` injection.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// Ids of the BPF programs process `pid` holds, from its file descriptors'
/// `prog_id` lines: exactly one agent's programs, whatever else is loaded
/// (bpftool cannot name a program's holder on kernels without BPF
/// iterators).
pub fn prog_ids_of(pid: u32) -> Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    Ok(ids)
}

/// Waits until none of the programs `ids` is loaded: the kernel frees
/// programs asynchronously after their last reference goes away.
pub fn wait_progs_unloaded(ids: &BTreeSet<u64>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<Object> = programs()?
            .into_iter()
            .filter(|p| ids.contains(&p.id))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of the agent's {} BPF programs still loaded after it exited: {left:?}",
                left.len(),
                ids.len()
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

fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "bpftool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing bpftool -j {} output", args.join(" ")))
}

/// A loaded program or map, from `bpftool -j prog|map show`.
#[derive(Clone, Debug)]
pub struct Object {
    pub id: u64,
    pub name: String,
    pub kind: String,
    /// Processes holding it (empty when bpftool cannot tell).
    pub pids: Vec<u32>,
}

fn objects(what: &str) -> Result<Vec<Object>> {
    let v = bpftool_json(&[what, "show"])?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|o| Object {
            id: o["id"].as_u64().unwrap_or(0),
            name: o["name"].as_str().unwrap_or("").into(),
            kind: o["type"].as_str().unwrap_or("").into(),
            pids: o["pids"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
                .collect(),
        })
        .collect())
}

/// Every loaded BPF program.
pub fn programs() -> Result<Vec<Object>> {
    objects("prog")
}

/// Keys of the socket map `name` (a SOCKHASH keyed by socket cookie) that
/// the agent with pid `agent_pid` holds. `Ok(None)` when that cannot be
/// read here (no such map attributable to the agent, or bpftool cannot
/// dump it), with the reason.
pub fn sockhash_cookies(
    name: &str,
    agent_pid: u32,
) -> Result<std::result::Result<Vec<u64>, String>> {
    let maps: Vec<Object> = objects("map")?
        .into_iter()
        .filter(|m| m.name == name)
        .collect();
    let owned: Vec<&Object> = maps
        .iter()
        .filter(|m| m.pids.contains(&agent_pid))
        .collect();
    let map = match (&owned[..], &maps[..]) {
        ([m], _) => *m,
        // bpftool without pid information: fine as long as there is only one.
        ([], [m]) if m.pids.is_empty() => m,
        _ => {
            return Ok(Err(format!(
                "cannot tell which map named {name} is the agent's: {maps:?}"
            )))
        }
    };
    let id = map.id.to_string();
    let dump = match bpftool_json(&["map", "dump", "id", &id]) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Err(format!(
                "bpftool cannot dump map {name} (id {id}): {e:#}"
            )))
        }
    };
    let mut keys = Vec::new();
    for entry in dump.as_array().map(Vec::as_slice).unwrap_or_default() {
        let bytes: Option<Vec<u8>> = entry["key"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        match bytes.as_deref().map(<[u8; 8]>::try_from) {
            Some(Ok(k)) => keys.push(u64::from_le_bytes(k)),
            _ => {
                return Ok(Err(format!(
                    "unexpected key in the dump of {name}: {entry}"
                )))
            }
        }
    }
    Ok(Ok(keys))
}
