//! Developer tasks for Clew: `cargo xtask --help`.
//!
//! The agent builds with the stable toolchain; its kernel programs (`ebpf/`)
//! build with nightly for bpfel-unknown-none and are embedded into it, which
//! is why builds go through here.

mod bench;
mod bootstrap;
mod broker;
mod build;
mod cmd;
mod ebpf;
mod image;
mod paths;
mod peers;
mod run;
mod test;

use std::ffi::OsString;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Clew developer tasks"
)]
enum Task {
    /// Ensure the toolchains, nightly's rust-src and bpf-linker (in .tools/ or $CLEW_TOOLS_DIR).
    Bootstrap,
    /// Bootstrap, build the eBPF object, then the agent; prints the agent's path.
    Build {
        /// Build the agent without --release (target/debug/clew).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the agent (through sudo -E unless root): `cargo xtask run -- ARGS`.
    Run {
        /// Build and run the agent without --release.
        #[arg(long)]
        debug: bool,
        /// Arguments for the agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the release agent into a container image with podman
    /// (deploy/container/Containerfile); prints its reference.
    Image {
        /// Also write it as an OCI archive to this path.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
    },
    /// Build, install the test peers, run the unit then the end-to-end tests (as root).
    Test {
        /// Only the unit tests (no root, no peers needed).
        #[arg(long, conflicts_with = "e2e_only")]
        unit_only: bool,
        /// Only the end-to-end tests.
        #[arg(long)]
        e2e_only: bool,
        /// Passed to the end-to-end test harness: a name filter, --nocapture, ...
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build, install the peers, then measure what the agent costs the
    /// services it traces (as root); writes target/bench/bench.{json,md}.
    Bench {
        /// One round, short windows, no criterion run: under 3 minutes.
        #[arg(long)]
        quick: bool,
        /// Only this scenario (repeatable): nginx-keepalive, nginx-close,
        /// nginx-tls, node-downstream, grpc, kafka, overload, nginx-logging.
        #[arg(long)]
        scenario: Vec<String>,
        /// Rounds of interleaved modes (default 3, quick 1).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per load window (default 3, quick 2).
        #[arg(long)]
        duration: Option<u64>,
        /// Passed to clew-bench (`--mode`, `--server-cpu`, ...).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn main() {
    if let Err(err) = dispatch(Task::parse()) {
        eprintln!("[xtask] error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn dispatch(task: Task) -> Result<()> {
    let paths = paths::Paths::new()?;
    match task {
        Task::Bootstrap => bootstrap::run(&paths).map(drop),
        Task::Build { debug } => {
            let built = build::build(&paths, !debug)?;
            println!("{}", paths.show(&built.agent));
            Ok(())
        }
        Task::Run { debug, args } => run::run(&paths, !debug, args),
        Task::Image { save } => {
            let save = save.map(|p| std::env::current_dir().unwrap_or_default().join(p));
            let built = build::build(&paths, true)?;
            let opts = image::Options { save };
            println!("{}", image::image(&paths, &built.agent, opts)?.reference);
            Ok(())
        }
        Task::Test {
            unit_only,
            e2e_only,
            args,
        } => {
            let opts = test::Options {
                unit: !e2e_only,
                e2e: !unit_only,
                args,
            };
            test::test(&paths, opts)
        }
        Task::Bench {
            quick,
            scenario,
            rounds,
            duration,
            args,
        } => bench::bench(
            &paths,
            bench::Options {
                quick,
                scenarios: scenario,
                rounds,
                duration,
                args,
            },
        ),
    }
}
