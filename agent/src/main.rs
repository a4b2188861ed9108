use clap::Parser;
use clew::{agent, cli, memory};
use tracing_subscriber::EnvFilter;

// The pipeline allocates small strings per span; mimalloc made it ~40%
// faster than glibc malloc (benches/pipeline.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread: the pipeline is sequential, and handing records, spans or
// readiness between worker threads cost a futex wake-up per hand-off, which
// was most of the agent's CPU under load.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    memory::no_huge_pages();
    let cli = cli::Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    // stdout belongs to the console trace view; the agent's own logs go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        cli::Command::Run(args) => agent::run(*args).await,
        cli::Command::Probe(select) => agent::probe(select),
    }
}
