use anyhow::Context;
use clap::Parser;
use clew::{agent, cli, config, memory};
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
    // Read once; nothing reads the environment after start-up.
    let env = config::Env::from_process();
    match cli.command {
        cli::Command::Run(args) => {
            let file = config::read_file(args.config.as_deref())?;
            init_logs(config::log_filter(cli.log_level, &env, &file))?;
            // After the logs: invalid OTEL_* variables are warnings.
            let cfg = config::Config::resolve(file, &env, *args)?;
            agent::run(cfg).await
        }
        cli::Command::Probe(select) => {
            init_logs(config::log_filter(
                cli.log_level,
                &env,
                &config::File::default(),
            ))?;
            agent::probe(select)
        }
    }
}

/// stdout belongs to the console trace view; the agent's own logs go to stderr.
fn init_logs((filter, source): (String, &str)) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&filter)
        .with_context(|| format!("log filter {filter:?} from {source}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
