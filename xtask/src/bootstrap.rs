//! `cargo xtask bootstrap`: the toolchain pieces the kernel programs need.
//! Idempotent: each step checks first and is skipped when already done.
//!
//! 1. the `stable` and `nightly` rustup toolchains (preinstalled; they cannot
//!    be downloaded here, so a missing one is an error);
//! 2. `rust-src` for nightly (`-Z build-std=core` for bpfel-unknown-none);
//! 3. bpf-linker, built in the tools directory against the nightly's own
//!    libLLVM (no system LLVM needed).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, paths::Paths};

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Ensures everything is in place and returns the directory holding
/// `bpf-linker` (to put on `PATH` for the eBPF build).
pub fn run(paths: &Paths) -> Result<PathBuf> {
    let start = Instant::now();
    for toolchain in ["stable", "nightly"] {
        ensure_toolchain(toolchain)?;
    }
    ensure_rust_src()?;
    let bin = ensure_bpf_linker(paths)?;
    eprintln!("[bootstrap] ready ({})", cmd::elapsed(start));
    Ok(bin)
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    // Never let rustup download a toolchain behind our back.
    cmd.env("RUSTUP_AUTO_INSTALL", "0")
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn ensure_toolchain(name: &str) -> Result<()> {
    let list = cmd::output(rustup().args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs); the toolchains are managed through it")?;
    // `nightly-x86_64-unknown-linux-gnu (active)`, not a dated `nightly-2026-...`.
    let present = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|tc| {
            tc == name
                || tc
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
        });
    if !present {
        bail!(
            "the rustup toolchain `{name}` is not installed (`rustup toolchain list` shows:\n{list}\n). \
             It is preinstalled on the Clew machines and cannot be downloaded here; \
             on a machine with network access run `rustup toolchain install {name}`"
        );
    }
    let version = cmd::output(rustup().args(["run", name, "rustc", "--version"]))?;
    eprintln!("[bootstrap] toolchain {name}: {version}");
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed =
        cmd::output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        eprintln!("[bootstrap] rust-src for nightly: present");
        return Ok(());
    }
    eprintln!("[bootstrap] adding rust-src to nightly (about a minute)...");
    let start = Instant::now();
    cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"])).context(
        "could not add rust-src to the nightly toolchain (it is needed for -Z build-std=core); \
         rustup must reach static.rust-lang.org: check the network/proxy, then rerun \
         `cargo xtask bootstrap`",
    )?;
    eprintln!("[bootstrap] rust-src added ({})", cmd::elapsed(start));
    Ok(())
}

/// The nightly's libLLVM: (file name in the sysroot's lib/, LLVM major version).
fn nightly_llvm() -> Result<(PathBuf, u32)> {
    let sysroot = cmd::output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(&sysroot).join("lib");
    let mut found = Vec::new();
    for entry in fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // e.g. libLLVM.so.22.1-rust-1.97.0-nightly (the library's soname)
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            if let Some(major) = version
                .split(['.', '-'])
                .next()
                .and_then(|m| m.parse().ok())
            {
                found.push((lib.join(&name), major));
            }
        }
    }
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no libLLVM.so.* in {}: the nightly toolchain does not ship its LLVM as a shared \
             library, so bpf-linker cannot be built against it",
            lib.display()
        )
    })
}

fn ensure_bpf_linker(paths: &Paths) -> Result<PathBuf> {
    let tools = &paths.tools;
    let bin_dir = tools.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let (libllvm, major) = nightly_llvm()?;

    // bpf-linker links libLLVM dynamically with a RUNPATH of $LLVM_PREFIX/lib
    // and needs the library by its soname at run time: keep both links there.
    let prefix = tools.join("llvm-nightly");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        if fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&libllvm, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
        }
    }

    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let current = cmd::output(Command::new(&linker).arg("--version")).ok();
    if current.as_deref() == Some(wanted.as_str()) {
        eprintln!("[bootstrap] {wanted}: present in {}", paths.show(&bin_dir));
        return Ok(bin_dir);
    }
    match &current {
        Some(other) => eprintln!("[bootstrap] found {other}, want {wanted}: rebuilding"),
        None if linker.exists() => {
            eprintln!(
                "[bootstrap] {} does not run (nightly LLVM changed?): rebuilding",
                paths.show(&linker)
            )
        }
        None => {}
    }
    eprintln!(
        "[bootstrap] building bpf-linker {BPF_LINKER_VERSION} against nightly LLVM {major} \
         into {} (about 3 minutes)...",
        paths.show(tools)
    );
    let start = Instant::now();
    let mut install = cmd::cargo("stable");
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--locked", "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(tools);
    cmd::run(&mut install).with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} failed (see cargo's output above). It needs \
             crates.io and links against {}; fix the cause, then rerun `cargo xtask bootstrap` \
             (or remove {} to start over)",
            libllvm.display(),
            tools.display()
        )
    })?;
    let version = cmd::output(Command::new(&linker).arg("--version"))
        .context("the freshly built bpf-linker does not run")?;
    eprintln!("[bootstrap] built {version} ({})", cmd::elapsed(start));
    Ok(bin_dir)
}
