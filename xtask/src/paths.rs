//! Where things live: the repository, cargo's target directory, the tools.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Paths {
    /// The repository root (the workspace holding xtask).
    pub root: PathBuf,
    /// Cargo's target directory for the host workspace (`CARGO_TARGET_DIR`
    /// or `target/`); the kernel object goes to its `ebpf/` subdirectory.
    pub target: PathBuf,
    /// Project-local tools (`CLEW_TOOLS_DIR` or `.tools/`): bpf-linker and
    /// the Python venv. Outside `target/`, so `cargo clean` keeps them.
    pub tools: PathBuf,
}

impl Paths {
    pub fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let cwd = std::env::current_dir().context("current directory")?;
        let from_env = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(|v| cwd.join(v))
        };
        Ok(Self {
            target: from_env("CARGO_TARGET_DIR").unwrap_or_else(|| root.join("target")),
            tools: from_env("CLEW_TOOLS_DIR").unwrap_or_else(|| root.join(".tools")),
            root,
        })
    }

    /// `path` relative to the repository root when it lies inside it.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}
