//! `cargo xtask build`: bootstrap, the eBPF object, then the agent.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};

use crate::{bootstrap, cmd, ebpf, paths::Paths};

pub struct Built {
    /// The agent executable (`target/release/clew`).
    pub agent: PathBuf,
    /// The kernel object embedded into it.
    pub object: PathBuf,
}

pub fn build(paths: &Paths, release: bool) -> Result<Built> {
    let linker_dir = bootstrap::run(paths)?;
    let object = ebpf::build(paths, &linker_dir)?;

    let start = Instant::now();
    let profile = if release { "release" } else { "debug" };
    eprintln!("[build] agent (stable, {profile})");
    let mut cargo = cmd::cargo("stable");
    cargo
        .current_dir(&paths.root)
        .env("CLEW_EBPF_OBJECT", &object)
        .args(["build", "--package", "clew"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building the agent (agent/) failed; see cargo's output above")?;
    let agent = paths.target.join(profile).join("clew");
    anyhow::ensure!(
        agent.is_file(),
        "cargo succeeded but {} is missing",
        agent.display()
    );
    eprintln!("[build] {} ({})", paths.show(&agent), cmd::elapsed(start));
    Ok(Built { agent, object })
}
