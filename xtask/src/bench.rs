//! `cargo xtask bench`: build, ensure the peers, run the criterion pipeline
//! benchmark (not with --quick), then `clew-bench` (package `clew-e2e`) as
//! root, which prints the table and writes `target/bench/bench.{json,md}`.

use std::{ffi::OsString, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{build, cmd, paths::Paths, peers, test::E2E_PACKAGE};

pub struct Options {
    pub quick: bool,
    pub scenarios: Vec<String>,
    pub rounds: Option<usize>,
    pub duration: Option<u64>,
    /// Passed to clew-bench as they are (`--mode`, `--server-cpu`, ...).
    pub args: Vec<OsString>,
}

pub fn bench(paths: &Paths, opts: Options) -> Result<()> {
    if !cmd::is_root()? {
        bail!(
            "the benchmark loads eBPF programs and creates cgroups, so it needs root: \
             run `sudo -E env PATH=\"$PATH\" cargo xtask bench`"
        );
    }
    let start = Instant::now();
    let built = build::build(paths, true)?;
    let peers = peers::ensure(paths)?;
    let pipeline = if opts.quick {
        eprintln!("[bench] --quick: skipping the criterion pipeline benchmark");
        None
    } else {
        Some(pipeline_spans_per_sec(paths, &built)?)
    };

    eprintln!("[bench] building clew-bench (release)");
    let mut cargo = cmd::cargo("stable");
    cargo.current_dir(&paths.root).args([
        "build",
        "--release",
        "--package",
        E2E_PACKAGE,
        "--bin",
        "clew-bench",
    ]);
    cmd::run(&mut cargo).context("building clew-bench failed")?;

    let mut bench = std::process::Command::new(paths.target.join("release").join("clew-bench"));
    peers.env(&mut bench);
    bench
        .current_dir(&paths.root)
        .env("CLEW_BIN", &built.agent)
        .arg("--out")
        .arg(paths.target.join("bench"));
    if opts.quick {
        bench.arg("--quick");
    }
    for s in &opts.scenarios {
        bench.args(["--scenario", s]);
    }
    if let Some(r) = opts.rounds {
        bench.args(["--rounds", &r.to_string()]);
    }
    if let Some(d) = opts.duration {
        bench.args(["--duration", &d.to_string()]);
    }
    if let Some(p) = pipeline {
        bench.args(["--pipeline-spans-per-sec", &format!("{p:.0}")]);
    }
    bench.args(&opts.args);
    cmd::run(&mut bench)?;
    eprintln!("[bench] done ({})", cmd::elapsed(start));
    Ok(())
}

/// Runs `cargo bench -p clew --bench pipeline` (one exchange = one span)
/// and returns its throughput estimate in spans per second.
fn pipeline_spans_per_sec(paths: &Paths, built: &build::Built) -> Result<f64> {
    eprintln!("[bench] criterion: cargo bench -p clew --bench pipeline");
    let mut cargo = cmd::cargo("stable");
    cargo
        .current_dir(&paths.root)
        .env("CLEW_EBPF_OBJECT", &built.object)
        .args(["bench", "--package", "clew", "--bench", "pipeline", "--"])
        .args(["--warm-up-time", "2", "--measurement-time", "5"]);
    let out = cmd::output(&mut cargo).context("the criterion pipeline benchmark failed")?;
    eprintln!("{out}");
    parse_thrpt(&out).with_context(|| format!("no `thrpt:` estimate in criterion's output:\n{out}"))
}

/// The middle estimate of criterion's `thrpt: [low mid high]` line, in elements/s.
pub fn parse_thrpt(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.trim_start().starts_with("thrpt:"))?;
    let inside = line.split_once('[')?.1.split_once(']')?.0;
    let words: Vec<&str> = inside.split_whitespace().collect();
    let (value, unit) = (words.get(2)?, words.get(3)?);
    let scale = match *unit {
        "elem/s" => 1.0,
        "Kelem/s" => 1e3,
        "Melem/s" => 1e6,
        "Gelem/s" => 1e9,
        _ => return None,
    };
    Some(value.parse::<f64>().ok()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_throughput() {
        let out = "pipeline/records_to_otlp_bytes
                        time:   [1.2000 ms 1.2100 ms 1.2200 ms]
                        thrpt:  [839.34 Kelem/s 846.28 Kelem/s 853.33 Kelem/s]
                 change: [-1.0% +0.2% +1.1%] (p = 0.70 > 0.05)
";
        assert_eq!(parse_thrpt(out), Some(846_280.0));
        assert_eq!(
            parse_thrpt("  thrpt:  [1.0 Melem/s 1.5 Melem/s 2.0 Melem/s]"),
            Some(1.5e6)
        );
        assert_eq!(parse_thrpt("time: [1 ms 2 ms 3 ms]"), None);
        assert_eq!(parse_thrpt("thrpt: [1 B/s 2 B/s 3 B/s]"), None);
    }
}
