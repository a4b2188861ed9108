//! Which processes Clew traces: `--cgroup` subtrees are matched in the
//! kernel by cgroup ancestry; `--pid`, `--exe`, `--port`, `--namespace` and
//! `--pod-label` resolve to process ids here, kept current as processes
//! exec, start listening and pods come and go.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};

use crate::{
    cgroup::Hierarchy,
    k8s::pod::Pod,
    matcher::{self, Match, Subject},
};

/// A process's pod, when it is in one the pod cache knows.
pub type PodOf<'a> = &'a dyn Fn(u32) -> Option<Arc<Pod>>;

#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub cgroups: Vec<PathBuf>,
    pub pids: Vec<u32>,
    pub exes: Vec<String>,
    pub ports: Vec<u16>,
    /// `--namespace` and `--pod-label`: decided on the pod's metadata,
    /// then selected by process id like `--exe`.
    pub pods: Vec<Match>,
    pub hierarchy: Hierarchy,
}

impl Selector {
    /// No selector given: every process but the agent.
    pub fn is_all(&self) -> bool {
        self.cgroups.is_empty()
            && self.pids.is_empty()
            && self.exes.is_empty()
            && self.ports.is_empty()
            && self.pods.is_empty()
    }

    /// Whether some selection is made by process id (rather than cgroup),
    /// and so needs the periodic rescan.
    pub fn by_process(&self) -> bool {
        !(self.pids.is_empty()
            && self.exes.is_empty()
            && self.ports.is_empty()
            && self.pods.is_empty())
    }

    /// `(cgroup id, level)` per `--cgroup`, for the kernel's ancestor check.
    pub fn cgroup_ids(&self) -> Result<Vec<(u64, u32)>> {
        self.cgroups
            .iter()
            .map(|p| cgroup_id(&self.hierarchy, p))
            .collect()
    }

    /// The cgroup directories whose sockets may need injection: the selected
    /// subtrees, or the whole hierarchy when selecting by process (the
    /// kernel then admits only sockets the selected processes connect).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        if self.cgroups.is_empty() || self.by_process() {
            return vec![self.hierarchy.mount.clone()];
        }
        self.cgroups
            .iter()
            .map(|p| self.hierarchy.resolve(p))
            .collect()
    }

    /// Pids selected right now by `--pid`, `--exe`, `--port`, `--namespace`
    /// and `--pod-label` (not cgroups).
    pub fn listed_pids(&self, pod_of: PodOf<'_>) -> HashSet<u32> {
        let mut out: HashSet<u32> = self.pids.iter().copied().filter(|p| alive(*p)).collect();
        if !self.exes.is_empty() {
            out.extend(all_pids().filter(|&p| self.exe_matches(p)));
        }
        if !self.ports.is_empty() {
            out.extend(listeners(&self.ports));
        }
        if !self.pods.is_empty() {
            out.extend(all_pids().filter(|&p| self.pod_matches(pod_of(p).as_deref())));
        }
        out
    }

    /// Whether a pod is selected by `--namespace` or `--pod-label`.
    pub fn pod_matches(&self, pod: Option<&Pod>) -> bool {
        let subject = Subject {
            pod,
            ..Subject::default()
        };
        pod.is_some() && self.pods.iter().any(|m| m.matches(&subject))
    }

    /// `--exe` names, for the kernel to match against the comm at exec.
    pub fn exe_names(&self) -> Vec<String> {
        self.exes
            .iter()
            .filter(|e| !e.contains('/'))
            .cloned()
            .collect()
    }

    /// `--exe` paths, for the kernel to match against the path exec'd:
    /// each as given and, when it goes through a symlink, as resolved.
    pub fn exe_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for want in self.exes.iter().filter(|e| e.contains('/')) {
            out.push(want.clone());
            if let Some(real) = fs::canonicalize(want)
                .ok()
                .and_then(|p| p.into_os_string().into_string().ok())
            {
                if real != *want {
                    out.push(real);
                }
            }
        }
        out
    }

    /// Whether a process (typically one that just exec'd) matches `--exe`.
    pub fn exe_matches(&self, pid: u32) -> bool {
        self.exe_match(pid) == Some(true)
    }

    /// Whether a process matches `--exe`, or `None` when /proc no longer
    /// shows its executable (it has exited).
    pub fn exe_match(&self, pid: u32) -> Option<bool> {
        if self.exes.is_empty() {
            return Some(false);
        }
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Some(
            self.exes
                .iter()
                .any(|want| matcher::exe_matches(want, &exe, comm.trim())),
        )
    }

    /// Whether a process sits in one of the `--cgroup` subtrees (every
    /// process does when nothing is selected).
    pub fn in_cgroups(&self, pid: u32) -> bool {
        if self.is_all() {
            return true;
        }
        if self.cgroups.is_empty() {
            return false;
        }
        let Some(own) = self.hierarchy.dir_of_pid(pid) else {
            return false;
        };
        self.cgroups
            .iter()
            .any(|cg| own.starts_with(self.hierarchy.resolve(cg)))
    }

    /// Every process currently in scope, for picking up connections that
    /// were open before Clew started.
    pub fn current_processes(&self, pod_of: PodOf<'_>) -> HashSet<u32> {
        if self.is_all() {
            let me = std::process::id();
            return all_pids().filter(|&p| p != me).collect();
        }
        let mut out = self.listed_pids(pod_of);
        for cg in &self.cgroups {
            collect_cgroup_procs(&self.hierarchy.resolve(cg), &mut out);
        }
        out
    }
}

/// Processes descended from `pid`, children first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let st = p.stat().ok()?;
            Some((st.pid as u32, st.ppid as u32))
        })
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    out.remove(0);
    out
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// A cgroup's id is its directory's inode number; its level is its depth
/// below the root (which is level 0).
fn cgroup_id(hierarchy: &Hierarchy, p: &Path) -> Result<(u64, u32)> {
    let full = hierarchy.resolve(p);
    let meta =
        fs::metadata(&full).with_context(|| format!("--cgroup {}: no such cgroup", p.display()))?;
    if !meta.is_dir() {
        bail!("--cgroup {}: not a cgroup directory", p.display());
    }
    let rel = full
        .strip_prefix(&hierarchy.mount)
        .expect("resolved under the mount");
    Ok((meta.ino(), rel.components().count() as u32))
}

fn collect_cgroup_procs(dir: &Path, out: &mut HashSet<u32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroup_procs(&e.path(), out);
        }
    }
}

/// Processes holding a listening TCP socket on one of `ports`.
fn listeners(ports: &[u16]) -> HashSet<u32> {
    let mut inodes = HashSet::new();
    for t in [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
    {
        for e in t {
            if e.state == procfs::net::TcpState::Listen && ports.contains(&e.local_address.port()) {
                inodes.insert(e.inode);
            }
        }
    }
    if inodes.is_empty() {
        return HashSet::new();
    }
    all_pids()
        .filter(|&pid| {
            procfs::process::Process::new(pid as i32)
                .and_then(|p| p.fd())
                .map(|fds| {
                    fds.flatten()
                        .any(|fd| matches!(fd.target, procfs::process::FDTarget::Socket(i) if inodes.contains(&i)))
                })
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_follow_parent_links() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let d = descendants(sh.id());
            if !d.is_empty() || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        for &pid in &found {
            // SAFETY: signals only the sleep this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert_eq!(found.len(), 1, "sh's one child: {found:?}");
    }

    #[test]
    fn empty_selector_means_everything() {
        assert!(Selector::default().is_all());
        assert!(!Selector {
            ports: vec![80],
            ..Default::default()
        }
        .is_all());
    }
}
