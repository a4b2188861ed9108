//! The Kafka broker the end-to-end tests run: tansu (crates.io), an
//! Apache Kafka compatible broker in Rust. Building it takes about 20
//! minutes on 2 cores, so the binary is cached outside the checkout,
//! keyed by version, and a fresh clone reuses it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::cmd;

pub const TANSU_VERSION: &str = "0.6.0";

/// `$CLEW_CACHE_DIR`, else `$XDG_CACHE_HOME/clew`, else `~/.cache/clew`.
fn cache_dir() -> Result<PathBuf> {
    let var = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CLEW_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("clew"));
    }
    let home = var("HOME").context("HOME is not set; set CLEW_CACHE_DIR")?;
    Ok(home.join(".cache").join("clew"))
}

/// The tansu binary, built on first use.
pub fn ensure_tansu() -> Result<PathBuf> {
    let root = cache_dir()?.join(format!("tansu-{TANSU_VERSION}"));
    let bin = root.join("bin").join("tansu");
    if runs(&bin) {
        eprintln!("[peers] Kafka broker: {} (cached)", bin.display());
        return Ok(bin);
    }
    eprintln!(
        "[peers] building the Kafka broker (tansu {TANSU_VERSION}) into {}: \
         about 20 minutes on 2 cores, once per machine",
        root.display()
    );
    let start = Instant::now();
    let mut cargo = cmd::cargo("stable");
    cargo
        .args(["install", "tansu", "--locked", "--version", TANSU_VERSION])
        // Without it the in-memory storage refuses to start.
        .args(["--features", "dynostore", "--root"])
        .arg(&root)
        // Its own target directory: the workspace's is not for it.
        .env("CARGO_TARGET_DIR", root.join("build"));
    cmd::run(&mut cargo).with_context(|| {
        format!(
            "building tansu failed; build it yourself with `cargo install tansu --locked \
             --version {TANSU_VERSION} --features dynostore --root {}` and rerun",
            root.display()
        )
    })?;
    // The build directory is only needed to build.
    let _ = std::fs::remove_dir_all(root.join("build"));
    eprintln!("[peers] Kafka broker built ({})", cmd::elapsed(start));
    Ok(bin)
}

fn runs(bin: &Path) -> bool {
    cmd::output(Command::new(bin).arg("--version")).is_ok()
}
