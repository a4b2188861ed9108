//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "clew",
    version,
    about = "Zero-code distributed tracing with eBPF"
)]
pub struct Cli {
    /// Log level or filter (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace the selected processes and export spans.
    Run(Box<RunArgs>),
    /// Print which kernel mechanisms this machine offers and which Clew uses.
    Probe,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Trace every process in this cgroup v2 subtree, including ones started later
    /// (absolute path, or relative to the cgroup2 mount). Repeatable.
    #[arg(long)]
    pub cgroup: Vec<PathBuf>,
    /// Trace this process (and the children it forks). Repeatable.
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Trace processes running this executable (name or absolute path). Repeatable.
    #[arg(long)]
    pub exe: Vec<String>,
    /// Trace processes listening on this TCP port. Repeatable.
    #[arg(long)]
    pub port: Vec<u16>,
    /// OTLP endpoint; defaults from OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
    /// Without any, finished traces are printed on stdout.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; defaults from OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long)]
    pub otlp_protocol: Option<String>,
    /// Serve /healthz, /readyz and /metrics on this address.
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// Bytes of each socket read/write copied from the kernel (headers must fit).
    #[arg(long, default_value_t = 4096)]
    pub capture_bytes: u32,
    /// Record `url.query` (off by default: query strings often carry secrets).
    #[arg(long)]
    pub capture_query: bool,
    /// How trace context crosses to the next service: `headers` (write
    /// `traceparent` into outgoing plaintext HTTP/1 requests) or `none`.
    #[arg(long, value_delimiter = ',', default_value = "headers")]
    pub propagation: Vec<Propagation>,
    /// `baggage` keys recorded as span attributes, e.g. `tenant,plan`.
    /// Clew never adds baggage to requests; it passes through as the
    /// application forwards it.
    #[arg(long, value_delimiter = ',')]
    pub baggage_attributes: Vec<String>,
    /// Kernel→agent ring buffer size in MiB (rounded up to a power of two).
    #[arg(long, default_value_t = 16)]
    pub ringbuf_mib: u32,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// `traceparent` header in plaintext HTTP/1 requests.
    Headers,
    /// Observe only.
    None,
}
