//! A throw-away cgroup v2 per test, so the agent only ever sees that test's processes.

use crate::env::require_root;
use crate::process::{self, Output};
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A child cgroup `clew-test-<name>-<pid>[-n]` under the cgroup2 mount; removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Directories `nested` created above this one, deepest first: removed after it.
    parents: Vec<PathBuf>,
}

/// The cgroup2 mount point: /sys/fs/cgroup on pure-v2 hosts, /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .context("no cgroup2 file system mounted (see /proc/mounts)")
}

impl Cgroup {
    pub fn new(name: &str) -> Result<Self> {
        require_root()?;
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = format!("clew-test-{name}-{}-{seq}", std::process::id());
        let path = cgroup2_mount()?.join(dir);
        if path.exists() {
            // Left over by an earlier run that died with the same pid.
            drop(Cgroup {
                path: path.clone(),
                parents: Vec::new(),
            });
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup {
            path,
            parents: Vec::new(),
        })
    }

    /// A cgroup `rel` (several levels, e.g. the kubelet's
    /// `kubepods.slice/…/cri-containerd-<id>.scope`) below this one; it and
    /// the levels it created are removed on drop, so drop it first.
    pub fn nested(&self, rel: &str) -> Result<Self> {
        let mut parents = Vec::new();
        let mut path = self.path.clone();
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .with_context(|| format!("creating cgroup {}", path.display()))?;
                if i + 1 < parts.len() {
                    parents.push(path.clone());
                }
            }
        }
        parents.reverse();
        Ok(Cgroup { path, parents })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts `cmd` already inside the cgroup: the child moves itself before
    /// exec, so not even the exec is ever seen outside it.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        self.spawn_inside(cmd, false)
    }

    /// `spawn`, the child then in a cgroup namespace of its own rooted at
    /// this cgroup (as a container's processes are on a cgroup v2 node).
    pub fn spawn_namespaced(&self, cmd: &mut Command) -> Result<Child> {
        self.spawn_inside(cmd, true)
    }

    fn spawn_inside(&self, cmd: &mut Command, own_namespace: bool) -> Result<Child> {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())?;
        // SAFETY: the hook only calls async-signal-safe libc functions on
        // memory prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means "the writing process".
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                // After the move: the new namespace's root is this cgroup.
                if own_namespace && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .with_context(|| format!("spawning {cmd:?} in {}", self.path.display()))
    }

    /// Runs `cmd` to completion inside the cgroup, killing it after `timeout`.
    pub fn run(&self, cmd: &mut Command, timeout: Duration) -> Result<Output> {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = self.spawn(cmd)?;
        process::collect(child, timeout).with_context(|| format!("running {cmd:?}"))
    }

    /// Pids currently in the cgroup itself (not its descendants).
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn kill_all(&self) {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() && std::fs::write(&kill, "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            // SAFETY: plain syscall; a stale pid just yields ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.kill_all();
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // EBUSY until the killed processes have exited.
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "removing {}: {e} (pids {:?})",
                        self.path.display(),
                        self.pids()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: {e:#}");
        }
        for p in &self.parents {
            if let Err(e) = std::fs::remove_dir(p) {
                eprintln!("warning: removing {}: {e}", p.display());
            }
        }
    }
}
