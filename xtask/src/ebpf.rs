//! The kernel programs: `ebpf/` built with the nightly toolchain for
//! bpfel-unknown-none, linked by bpf-linker.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{cmd, paths::Paths};

pub const TARGET: &str = "bpfel-unknown-none";

/// Environment a host-side cargo (or the user) may set that must not leak
/// into the nightly cross build.
const HOST_ONLY_ENV: &[&str] = &[
    "RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
];

/// Builds the object and returns its path. `linker_dir` holds bpf-linker.
pub fn build(paths: &Paths, linker_dir: &Path) -> Result<PathBuf> {
    let start = Instant::now();
    let target_dir = paths.target.join("ebpf");
    // aya-ebpf selects per-architecture definitions (pt_regs etc.) by this cfg.
    // BTF is required: bpf_loop callbacks need func_info for the verifier.
    let mut rustflags = format!(
        r#"--cfg bpf_target_arch="{}" -C link-arg=--btf"#,
        std::env::consts::ARCH
    );
    if let Ok(extra) = std::env::var("CLEW_EBPF_RUSTFLAGS") {
        rustflags = format!("{rustflags} {extra}");
    }
    eprintln!("[build] eBPF object (nightly, {TARGET})");
    let mut cargo = cmd::cargo("nightly");
    for var in HOST_ONLY_ENV {
        cargo.env_remove(var);
    }
    cargo
        .current_dir(paths.root.join("ebpf"))
        .env("PATH", cmd::path_with(linker_dir)?)
        .env("RUSTFLAGS", rustflags)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    cmd::run(&mut cargo)
        .context("building the eBPF programs (ebpf/) failed; see the compiler output above")?;
    let object = target_dir.join(TARGET).join("release").join("clew");
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build succeeded but {} is missing",
        object.display()
    );
    eprintln!("[build] {} ({})", paths.show(&object), cmd::elapsed(start));
    Ok(object)
}
