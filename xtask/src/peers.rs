//! Real peers for the end-to-end tests, installed on first use: Debian
//! packages (nginx, curl, nghttp2, ...), a project-local Python venv with
//! `tests/requirements.txt`, and a Kafka broker (see `broker`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{broker, cmd, paths::Paths};

pub const APT_PACKAGES: &[&str] = &[
    "nginx",
    "curl",
    "python3",
    "bpftool",
    "iproute2",
    "wrk",
    // The benchmark: certificates for its TLS scenario, and the system
    // OpenSSL its load generator links against.
    "openssl",
    "libssl-dev",
    "pkg-config",
    // Go's crypto/tls peers (tests/peers/go_tls), built by the tests.
    "golang-go",
    // HTTP/2: nghttpd (server), h2load and nghttp (clients).
    "nghttp2-server",
    "nghttp2-client",
    // The container image test (`cargo xtask image`); runc because crun
    // refuses these machines' hybrid cgroup layout.
    "podman",
    "runc",
];

/// What the tests are pointed at.
pub struct Peers {
    /// The venv's python (`CLEW_TEST_PYTHON`).
    pub python: PathBuf,
    /// The Kafka broker (`CLEW_TEST_TANSU`).
    pub tansu: PathBuf,
}

impl Peers {
    /// Tells the test harness (or benchmark) where the peers are.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("CLEW_TEST_PYTHON", &self.python)
            .env("CLEW_TEST_TANSU", &self.tansu);
    }
}

pub fn ensure(paths: &Paths) -> Result<Peers> {
    ensure_apt_packages()?;
    let python = ensure_venv(paths)?;
    let tansu = broker::ensure_tansu()?;
    Ok(Peers { python, tansu })
}

fn installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status == "install ok installed")
}

fn ensure_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "[peers] Debian packages present: {}",
            APT_PACKAGES.join(" ")
        );
        return Ok(());
    }
    eprintln!("[peers] installing Debian packages: {}", missing.join(" "));
    let start = Instant::now();
    let root = cmd::is_root()?;
    let apt = || {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            Command::new("sudo")
        };
        if !root {
            c.arg("apt-get");
        }
        // Wait for another apt/dpkg run instead of failing on its lock.
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600"]);
        c
    };
    let hint = || {
        format!(
            "installing the test peers failed; install them yourself \
             (`apt-get install {}`) and rerun",
            missing.join(" ")
        )
    };
    cmd::run(apt().args(["update", "-q"])).with_context(hint)?;
    cmd::run(
        apt()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(hint)?;
    eprintln!(
        "[peers] Debian packages installed ({})",
        cmd::elapsed(start)
    );
    Ok(())
}

fn ensure_venv(paths: &Paths) -> Result<PathBuf> {
    let venv = paths.tools.join("venv");
    // Not canonicalized: the venv's python is a symlink whose location
    // selects the venv.
    let python = venv.join("bin").join("python");
    let requirements = paths.root.join("tests").join("requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    // A copy of the requirements last installed: reinstall when they change.
    let stamp = venv.join(".clew-requirements.txt");

    if cmd::output(Command::new(&python).args(["-c", "import sys"])).is_err() {
        eprintln!(
            "[peers] creating Python venv {} (python3 from PATH)",
            paths.show(&venv)
        );
        let start = Instant::now();
        if venv.exists() {
            fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
        }
        fs::create_dir_all(&paths.tools)?;
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the Python venv failed (is python3's venv module installed?)")?;
        eprintln!("[peers] venv created ({})", cmd::elapsed(start));
    }
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        eprintln!(
            "[peers] Python venv up to date with {}",
            paths.show(&requirements)
        );
        return Ok(python);
    }
    eprintln!(
        "[peers] installing {} into the venv",
        paths.show(&requirements)
    );
    let start = Instant::now();
    pip_install(&python, &requirements)?;
    fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!(
        "[peers] Python packages installed ({})",
        cmd::elapsed(start)
    );
    Ok(python)
}

fn pip_install(python: &Path, requirements: &Path) -> Result<()> {
    cmd::run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(requirements),
    )
    .with_context(|| format!("pip could not install {}", requirements.display()))
}
