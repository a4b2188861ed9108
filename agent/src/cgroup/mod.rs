//! The host's cgroup v2 hierarchy as the agent sees it: where it is
//! mounted, how `/proc/PID/cgroup` paths map onto it when the agent runs in
//! a private cgroup namespace, and what a process's cgroup says about its
//! container and pod ([`identity`]).
//!
//! In a Kubernetes pod on a cgroup v2 node the agent usually has a cgroup
//! namespace of its own: `/proc/PID/cgroup` then shows paths relative to
//! the agent's container (`/../../kubepods-…/cri-containerd-….scope`), and
//! the `/sys/fs/cgroup` the runtime mounts shows only that container's
//! subtree. The host's hierarchy must be mounted into the pod (a hostPath
//! volume) and named with `--host-cgroup-root` when it is not the mount
//! found first; paths are then translated through the host path of the
//! agent's own namespace root, found once at start-up.

pub mod identity;

use std::{
    fs,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The cgroup v2 hierarchy the agent attaches to and selects in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where the host's hierarchy root is mounted.
    pub mount: PathBuf,
    /// The agent's cgroup namespace root, relative to the host root
    /// (empty when the agent shares the host's namespace).
    ns_root: PathBuf,
}

impl Default for Hierarchy {
    fn default() -> Self {
        Hierarchy {
            mount: PathBuf::from("/sys/fs/cgroup"),
            ns_root: PathBuf::new(),
        }
    }
}

impl Hierarchy {
    /// `host_root` (`--host-cgroup-root`) or the cgroup2 mount, and where
    /// the agent's cgroup namespace sits in it.
    pub fn detect(host_root: Option<&Path>) -> Result<Self> {
        let mount = match host_root {
            Some(p) => {
                let is_cgroup2 = fs::metadata(p.join("cgroup.controllers")).is_ok();
                if !is_cgroup2 {
                    bail!(
                        "--host-cgroup-root {}: not the root of a cgroup v2 hierarchy (no cgroup.controllers)",
                        p.display()
                    );
                }
                p.to_path_buf()
            }
            None => cgroup2_mount()?,
        };
        let ns_root = match find_ns_root(&mount) {
            Some(root) if root.as_os_str().is_empty() => root,
            Some(root) => {
                tracing::info!(
                    root = %Path::new("/").join(&root).display(),
                    "private cgroup namespace: process cgroups are read relative to its root"
                );
                root
            }
            None => {
                tracing::warn!(
                    mount = %mount.display(),
                    "the agent's own cgroup is not in this hierarchy: in a private cgroup namespace, mount the host's /sys/fs/cgroup and name it with --host-cgroup-root"
                );
                PathBuf::new()
            }
        };
        Ok(Hierarchy { mount, ns_root })
    }

    /// A cgroup named on the command line (absolute below the mount, or
    /// relative to the hierarchy's root) as a directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.starts_with(&self.mount) {
            p.to_path_buf()
        } else {
            self.mount.join(p.strip_prefix("/").unwrap_or(p))
        }
    }

    /// A `/proc/PID/cgroup` path (relative to the agent's cgroup namespace,
    /// possibly climbing out of it with `..`) as a directory; `None` when
    /// it climbs above the host root.
    pub fn dir_of(&self, proc_path: &str) -> Option<PathBuf> {
        let mut rel = self.ns_root.clone();
        for c in Path::new(proc_path).components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::ParentDir if !rel.pop() => return None,
                _ => {}
            }
        }
        Some(self.mount.join(rel))
    }

    /// The cgroup v2 directory of process `pid`, if it still exists.
    pub fn dir_of_pid(&self, pid: u32) -> Option<PathBuf> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.dir_of(v2_path(&text)?)
    }
}

/// The cgroup v2 path in the contents of `/proc/PID/cgroup`.
pub fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup on pure v2 hosts,
/// /sys/fs/cgroup/unified on hybrid ones). A hostPath volume mounted over
/// the runtime's own `/sys/fs/cgroup` is what that path then shows.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup v2 hierarchy is mounted (Clew needs one)")
}

/// The agent's cgroup namespace root relative to the host root: the
/// directory whose `cgroup.procs` lists the agent, less the agent's own
/// path inside its namespace. (Not by comparing namespaces with pid 1's:
/// its /proc entry may be out of reach.)
fn find_ns_root(mount: &Path) -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = Path::new(v2_path(&own)?.trim_start_matches('/')).to_path_buf();
    let me = std::process::id().to_string();
    let lists_me = |dir: &Path| {
        fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == me))
    };
    // The common case: the host's namespace, the path as /proc says.
    if lists_me(&mount.join(&own)) {
        return Some(PathBuf::new());
    }
    let found = find_procs(mount, &lists_me)?;
    let rel = found.strip_prefix(mount).ok()?;
    let depth = own.components().count();
    let kept = rel.components().count().checked_sub(depth)?;
    rel.ends_with(&own)
        .then(|| rel.components().take(kept).collect())
}

fn find_procs(dir: &Path, lists_me: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    if lists_me(dir) {
        return Some(dir.to_path_buf());
    }
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_procs(&e.path(), lists_me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_resolve_relative_to_the_mount() {
        let h = Hierarchy::default();
        assert_eq!(
            h.resolve(Path::new("/sys/fs/cgroup/a/b")),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
        assert_eq!(
            h.resolve(Path::new("system.slice/x")),
            PathBuf::from("/sys/fs/cgroup/system.slice/x")
        );
        assert_eq!(
            h.resolve(Path::new("/system.slice")),
            PathBuf::from("/sys/fs/cgroup/system.slice")
        );
    }

    #[test]
    fn proc_paths_are_read_from_the_namespace_root() {
        let host = Hierarchy {
            mount: PathBuf::from("/host/cgroup"),
            ns_root: PathBuf::new(),
        };
        assert_eq!(
            host.dir_of("/kubepods/x"),
            Some(PathBuf::from("/host/cgroup/kubepods/x"))
        );
        assert_eq!(host.dir_of("/"), Some(PathBuf::from("/host/cgroup")));
        assert_eq!(host.dir_of("/../x"), None);
        let private = Hierarchy {
            mount: PathBuf::from("/host/cgroup"),
            ns_root: PathBuf::from("kubepods.slice/pod-a.slice/agent.scope"),
        };
        assert_eq!(
            private.dir_of("/../../pod-b.slice/app.scope"),
            Some(PathBuf::from(
                "/host/cgroup/kubepods.slice/pod-b.slice/app.scope"
            ))
        );
        assert_eq!(
            private.dir_of("/"),
            Some(PathBuf::from(
                "/host/cgroup/kubepods.slice/pod-a.slice/agent.scope"
            ))
        );
        assert_eq!(private.dir_of("/../../../../.."), None);
    }

    #[test]
    fn this_process_is_found_in_its_hierarchy() {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let root = find_ns_root(&mount).expect("this process's cgroup");
        // Not in a private namespace here: the root is the host's.
        assert_eq!(root, PathBuf::new());
    }
}
