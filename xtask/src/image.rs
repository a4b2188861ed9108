//! `cargo xtask image`: the agent as a container image, built with podman
//! from an empty base (deploy/container/Containerfile).
//!
//! No base image can be pulled on the Clew machines, and a distribution
//! base would only add what the agent never loads: the build stages a root
//! filesystem holding the release binary (without its debug sections),
//! exactly the shared libraries `ldd` lists for it, and the host's CA
//! bundle (for https:// collectors).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, paths::Paths};

/// The image's name; the tag is the workspace version.
pub const NAME: &str = "localhost/clew";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub struct Options {
    /// Also write the image as an OCI archive here (for `podman load`,
    /// `skopeo copy` to a registry, or `ctr import` on a node).
    pub save: Option<PathBuf>,
}

/// The image just built.
pub struct Built {
    /// `localhost/clew:VERSION`, what users push and run.
    pub reference: String,
    /// Its content id: what the tests run, since another checkout on the
    /// same machine may retag the reference meanwhile.
    pub id: String,
}

/// Builds the image around the release `agent`.
pub fn image(paths: &Paths, agent: &Path, opts: Options) -> Result<Built> {
    let reference = format!("{NAME}:{}", env!("CARGO_PKG_VERSION"));
    let context = paths.target.join("image");
    stage(agent, &context.join("rootfs"))?;

    let start = Instant::now();
    eprintln!("[image] podman build {reference}");
    let containerfile = paths.root.join("deploy/container/Containerfile");
    let id = cmd::output(
        podman()?
            .args(["build", "--quiet", "--tag", &reference, "--file"])
            .arg(&containerfile)
            .arg(&context),
    )
    .context("podman build failed")?;
    eprintln!("[image] built {reference} ({})", cmd::elapsed(start));

    if let Some(archive) = opts.save {
        let _ = fs::remove_file(&archive);
        cmd::run(
            podman()?
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(&archive)
                .arg(&reference),
        )
        .context("podman save failed")?;
        eprintln!("[image] saved to {}", paths.show(&archive));
    }
    Ok(Built { reference, id })
}

fn podman() -> Result<Command> {
    if cmd::output(Command::new("podman").arg("--version")).is_err() {
        bail!("podman is not installed: `apt-get install podman runc` (or run `cargo xtask test`, which installs it)");
    }
    Ok(Command::new("podman"))
}

/// Lays out `rootfs` afresh: the agent as /usr/bin/clew, its libraries at
/// the paths the dynamic loader looks them up, and the CA bundle.
fn stage(agent: &Path, rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        fs::remove_dir_all(rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    copy_into(rootfs, agent, Path::new("/usr/bin/clew"))?;
    // The release profile keeps line tables for profiling on a developer's
    // machine; a node needs none of them (about 80% of the binary).
    cmd::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(rootfs.join("usr/bin/clew")),
    )
    .context("strip (binutils) failed")?;
    for lib in linked_libraries(agent)? {
        copy_into(rootfs, &lib, &lib)?;
    }
    copy_into(rootfs, Path::new(CA_BUNDLE), Path::new(CA_BUNDLE))
        .context("the CA bundle is missing: `apt-get install ca-certificates`")?;
    // The agent writes nothing at run time but Rust's temp-dir users expect one.
    fs::create_dir_all(rootfs.join("tmp"))?;
    Ok(())
}

fn copy_into(rootfs: &Path, from: &Path, to: &Path) -> Result<()> {
    let dest = rootfs.join(to.strip_prefix("/").unwrap_or(to));
    fs::create_dir_all(dest.parent().context("no parent")?)?;
    // Follow symlinks: the loader finds `libc.so.6` by that name.
    fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    Ok(())
}

/// The absolute paths in `ldd`'s answer: resolved libraries and the loader.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::output(Command::new("ldd").arg(binary)).context("ldd failed")?;
    let libs = parse_ldd(&out);
    if libs.is_empty() {
        bail!("ldd listed no libraries for {}:\n{out}", binary.display());
    }
    Ok(libs)
}

fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no path.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_include_the_loader_but_not_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007fec095fb000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fec095ca000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fec0853e000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fec095fd000)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
