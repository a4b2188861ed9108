//! A workload in a real container (podman with runc, as platform.md says
//! works here): a statically linked program alone in a root filesystem
//! directory, no image to pull or build.

use crate::process::{open_files_limit, TempDir};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::process::Command;

/// `podman run` as it works on these machines: runc (crun refuses this
/// hybrid cgroup layout) and explicit limits (root here cannot raise
/// podman's defaults). Options follow; a root filesystem or image ends them.
pub fn podman_run() -> Result<Command> {
    let nofile = open_files_limit()?;
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "run"])
        .args(["--ulimit", &format!("nofile={nofile}:{nofile}")])
        .args(["--ulimit", "nproc=4096:4096"]);
    Ok(cmd)
}

pub struct Container {
    /// Podman's 64-hex id.
    pub id: String,
    /// The container's process, as the host sees it.
    pub pid: u32,
    _rootfs: TempDir,
}

impl Container {
    /// Runs `program` (copied to `/` of an otherwise empty root filesystem)
    /// with `args`, in the host's network namespace.
    pub fn run(program: &Path, args: &[&str]) -> Result<Self> {
        let rootfs = TempDir::new("rootfs")?;
        let name = program.file_name().context("program has no file name")?;
        std::fs::copy(program, rootfs.path().join(name))?;
        let out = podman_run()?
            .args(["-d", "--rm", "--network=host", "--rootfs"])
            .arg(rootfs.path())
            .arg(Path::new("/").join(name))
            .args(args)
            .output()
            .context("running podman (apt-get install podman runc)")?;
        ensure!(
            out.status.success(),
            "podman run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut container = Container {
            id,
            pid: 0,
            _rootfs: rootfs,
        };
        let out = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &container.id])
            .output()?;
        container.pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("podman inspect: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok(container)
    }

    /// The container's cgroup v2 path, as /proc shows it.
    pub fn cgroup(&self) -> Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid))?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
            .context("the container's process has no cgroup v2 path")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.id])
            .output();
    }
}
