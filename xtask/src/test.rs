//! `cargo xtask test`: build, ensure the test peers, run the unit tests, then
//! the end-to-end tests (package `clew-e2e`, in `tests/`) against the built
//! agent, one at a time and as root.

use std::{ffi::OsString, time::Instant};

use anyhow::{bail, Result};

use crate::{build, cmd, image, paths::Paths, peers};

pub const E2E_PACKAGE: &str = "clew-e2e";

/// Variables by which the agent takes a process for one exporting its own
/// spans through an OpenTelemetry SDK.
const SDK_EXPORT_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
];

pub struct Options {
    pub unit: bool,
    pub e2e: bool,
    /// Passed to the end-to-end test harness (a filter, `--nocapture`, ...).
    pub args: Vec<OsString>,
}

pub fn test(paths: &Paths, opts: Options) -> Result<()> {
    if opts.e2e && !cmd::is_root()? {
        bail!(
            "the end-to-end tests load eBPF programs and need root: run \
             `sudo -E env PATH=\"$PATH\" cargo xtask test` (or `cargo xtask test --unit-only`)"
        );
    }
    let built = build::build(paths, true)?;
    // Some unit tests read real binaries (node, a Go build, libssl): as
    // root the peers are installed for them too.
    let peers = if opts.e2e || cmd::is_root()? {
        Some(peers::ensure(paths)?)
    } else {
        None
    };
    let e2e_peers = peers.filter(|_| opts.e2e);

    let mut failed = Vec::new();
    if opts.unit {
        let start = Instant::now();
        eprintln!("[test] unit tests");
        let mut cargo = cmd::cargo("stable");
        cargo
            .current_dir(&paths.root)
            .env("CLEW_EBPF_OBJECT", &built.object)
            .args(["test", "--workspace", "--exclude", E2E_PACKAGE]);
        match cmd::run(&mut cargo) {
            Ok(()) => eprintln!("[test] unit tests passed ({})", cmd::elapsed(start)),
            Err(e) => {
                eprintln!("[test] unit tests FAILED: {e:#}");
                failed.push("unit tests");
            }
        }
    }
    if let Some(peers) = e2e_peers {
        // The packaging test runs the agent from its container image.
        let image = image::image(paths, &built.agent, image::Options { save: None })?;
        let start = Instant::now();
        eprintln!("[test] end-to-end tests ({E2E_PACKAGE})");
        let mut cargo = cmd::cargo("stable");
        cargo
            .current_dir(&paths.root)
            .env("CLEW_EBPF_OBJECT", &built.object)
            .env("CLEW_BIN", &built.agent)
            .env("CLEW_TEST_IMAGE", &image.id)
            .args([
                "test",
                "--package",
                E2E_PACKAGE,
                "--tests",
                // Every target runs even when one fails: one run shows all.
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .args(&opts.args);
        peers.env(&mut cargo);
        // Peers inherit the environment: an SDK exporter configured in the
        // developer's shell would make Clew defer every traced peer's spans.
        for var in SDK_EXPORT_ENV {
            cargo.env_remove(var);
        }
        ensure_filters_match(&cargo, &opts.args)?;
        match cmd::run(&mut cargo) {
            Ok(()) => eprintln!("[test] end-to-end tests passed ({})", cmd::elapsed(start)),
            Err(e) => {
                eprintln!("[test] end-to-end tests FAILED: {e:#}");
                failed.push("end-to-end tests");
            }
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    eprintln!("[test] all passed");
    Ok(())
}

/// A filter that matches no end-to-end test would run none and pass:
/// fails instead, saying what filters match.
fn ensure_filters_match(run: &std::process::Command, args: &[OsString]) -> Result<()> {
    let filters: Vec<_> = args
        .iter()
        .filter(|a| !a.to_string_lossy().starts_with('-'))
        .collect();
    if filters.is_empty() {
        return Ok(());
    }
    let mut list = std::process::Command::new(run.get_program());
    list.current_dir(run.get_current_dir().unwrap_or(std::path::Path::new(".")))
        .envs(run.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(run.get_args())
        .args(["--list", "--format", "terse"]);
    let listed = cmd::output(&mut list)?;
    if !listed.lines().any(|l| l.ends_with(": test")) {
        bail!(
            "no end-to-end test matches {filters:?}: a filter matches test function names \
             (e.g. `h2load`, `nginx_static_files`); `-- --list` lists them"
        );
    }
    Ok(())
}
