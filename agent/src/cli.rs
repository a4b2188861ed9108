//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::select::Selector;

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
    /// Print which kernel mechanisms this machine offers and which Clew uses,
    /// and, given a selection, the TLS libraries of the selected processes.
    Probe(SelectArgs),
}

/// Which processes to trace (none given: every process but the agent).
#[derive(Args, Debug, Clone, Default)]
pub struct SelectArgs {
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsAttach {
    File,
    Process,
}

impl From<SelectArgs> for Selector {
    fn from(a: SelectArgs) -> Self {
        Selector {
            cgroups: a.cgroup,
            pids: a.pid,
            exes: a.exe,
            ports: a.port,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub select: SelectArgs,
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
    /// How query strings are recorded (`url.query`, and in `url.full`):
    /// `redacted` (values of secret-named keys become `REDACTED`), `full`
    /// (as sent) or `off`.
    #[arg(long, value_enum, default_value = "redacted")]
    pub query: QueryMode,
    /// More names whose values are redacted in queries, path parameters
    /// and command lines, on top of the built-in list (see README), e.g.
    /// `tenant_pin,otp`.
    #[arg(long, value_delimiter = ',')]
    pub redact_names: Vec<String>,
    /// Export `process.command_line`: `off` (the default: command lines
    /// carry passwords passed as flags) or `redacted` (values of
    /// secret-looking flags, variables, headers and URL user-info replaced).
    #[arg(long, value_enum, default_value = "off")]
    pub command_line: CommandLineMode,
    /// Spans of processes that export their own through an OpenTelemetry
    /// SDK (an OTLP exporter in their environment, or seen exporting):
    /// `defer` (the default: Clew exports none of theirs, so no span is
    /// exported twice) or `trace` (Clew exports its spans too, for an SDK
    /// exporting elsewhere; the backend then gets duplicate span ids).
    #[arg(long, value_enum, default_value = "defer")]
    pub sdk_processes: SdkProcesses,
    /// How trace context crosses to the next service, a list of: `headers`
    /// (write `traceparent` into outgoing plaintext HTTP/1 and HTTP/2 requests),
    /// `tcp-option` (carry it in a TCP header option, for any TCP traffic),
    /// or `none`.
    #[arg(
        long,
        env = "CLEW_PROPAGATION",
        value_delimiter = ',',
        default_value = "headers,tcp-option"
    )]
    pub propagation: Vec<Propagation>,
    /// `baggage` keys recorded as span attributes, e.g. `tenant,plan`.
    /// Clew never adds baggage to requests; it passes through as the
    /// application forwards it.
    #[arg(long, value_delimiter = ',')]
    pub baggage_attributes: Vec<String>,
    /// Also hook Go's crypto/tls (amd64, Go ≥ 1.17). Off by default: its
    /// probes sit on every return of `(*Conn).Read`/`Write` and cost the Go
    /// process tens of µs per call (see README, HTTPS).
    #[arg(long)]
    pub tls_go: bool,
    /// How TLS library probes are attached when only some processes are
    /// traced: `file` (once per library file, for every process mapping it:
    /// covered from the first instruction, but untraced processes using the
    /// same file pay a trap per TLS call, measured at −75% HTTPS throughput
    /// for an untraced nginx on a 2-core VM) or `process` (per traced
    /// process: untraced ones pay nothing, but TLS calls a process makes in
    /// the first milliseconds after its exec are missed, and every new
    /// process costs the agent an attach). Tracing every process always
    /// attaches per file.
    #[arg(long, value_enum, default_value = "file")]
    pub tls_attach: TlsAttach,
    /// A route template for `http.route` (e.g. `/users/{id}`): the first
    /// that matches a server request's path names its metric series, its
    /// span (`GET /users/{id}`) and the span's `http.route`. Repeatable.
    #[arg(long = "route", env = "CLEW_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Template paths no `--route` matches for metrics: identifier-looking
    /// segments become `{id}`, busy positions `{param}`.
    #[arg(long, env = "CLEW_AUTO_ROUTES", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_routes: bool,
    /// Series per metric and service; past it, measurements go to one
    /// series marked `otel.metric.overflow=true`.
    #[arg(long, env = "CLEW_METRIC_SERIES_LIMIT", default_value_t = crate::metrics::registry::DEFAULT_SERIES_LIMIT)]
    pub metric_series_limit: usize,
    /// Turn what a traced thread writes while it serves a request into OTLP
    /// log records carrying that request's span ids: `stdout`, `stderr`,
    /// and absolute path patterns of log files as the process sees them
    /// (`/var/log/app/*.log`; `**` spans directories), comma-separated or
    /// repeated. Off by default. Exported like spans, with
    /// `OTEL_EXPORTER_OTLP_LOGS_*` overrides.
    #[arg(long, env = "CLEW_LOGS", value_delimiter = ',')]
    pub logs: Vec<String>,
    /// Longest log record body in bytes (at most 8192): longer lines are
    /// cut, marked `clew.log.truncated=true` and counted.
    #[arg(long, default_value_t = 4096)]
    pub log_record_bytes: usize,
    /// Log records per second per process (bursts up to as many), and as
    /// many captured writes (bounded in the kernel, before any copy); more
    /// are dropped and counted.
    #[arg(long, default_value_t = 1000)]
    pub log_rate: u32,
    /// Kernel→agent ring buffer size in MiB (rounded up to a power of two).
    #[arg(long, default_value_t = 4)]
    pub ringbuf_mib: u32,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryMode {
    Off,
    Redacted,
    Full,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandLineMode {
    Off,
    Redacted,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdkProcesses {
    Defer,
    Trace,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// `traceparent` header in plaintext HTTP/1 and HTTP/2 requests.
    Headers,
    /// TCP header option (kind 25) on the segments that start a connection
    /// or a request.
    TcpOption,
    /// Observe only.
    None,
}

/// Which propagation mechanisms a `--propagation` list turns on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mechanisms {
    pub headers: bool,
    pub tcp_option: bool,
}

impl Mechanisms {
    pub fn from_list(list: &[Propagation]) -> anyhow::Result<Self> {
        let has = |p| list.contains(&p);
        anyhow::ensure!(
            !has(Propagation::None) || list.len() == 1,
            "--propagation none cannot be combined with other mechanisms"
        );
        Ok(Mechanisms {
            headers: has(Propagation::Headers),
            tcp_option: has(Propagation::TcpOption),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Mechanisms, String> {
        let cli =
            Cli::try_parse_from(["clew", "run"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        Mechanisms::from_list(&run.propagation).map_err(|e| e.to_string())
    }

    #[test]
    fn propagation_lists() {
        let both = Mechanisms {
            headers: true,
            tcp_option: true,
        };
        assert_eq!(parse(&[]), Ok(both));
        assert_eq!(parse(&["--propagation", "headers,tcp-option"]), Ok(both));
        assert_eq!(
            parse(&["--propagation", "tcp-option"]),
            Ok(Mechanisms {
                headers: false,
                tcp_option: true
            })
        );
        assert_eq!(parse(&["--propagation", "none"]), Ok(Mechanisms::default()));
        assert!(parse(&["--propagation", "none,headers"]).is_err());
        assert!(parse(&["--propagation", "tls"]).is_err());
    }
}
