//! Command-line interface.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use reqwest::Url;

use crate::{
    config::{
        self, CommandLineMode, KubernetesMode, Propagation, QueryMode, SdkProcesses,
        SyscallArguments, TlsAttach,
    },
    export::Protocol,
    matcher::Match,
    metrics::Pattern,
    select::Selector,
    synthetic,
    tenant::Rule,
};

#[derive(Parser, Debug)]
#[command(
    name = "clew",
    version,
    about = "Zero-code distributed tracing with eBPF"
)]
pub struct Cli {
    /// Log level or filter, e.g. `info,clew=debug` (default `info`); over
    /// RUST_LOG and the config file's `log_level`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
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
    /// Trace the processes of pods in this Kubernetes namespace (needs the
    /// API, see --kubernetes). Repeatable.
    #[arg(long)]
    pub namespace: Vec<String>,
    /// Trace the processes of pods with these labels, `KEY=VALUE[,KEY=VALUE…]`
    /// (all must match; needs the API). Repeatable: any may match.
    #[arg(long, value_parser = Match::pod_labels)]
    pub pod_label: Vec<Match>,
    /// Where the host's cgroup v2 hierarchy is mounted, when it is not the
    /// first cgroup2 mount (a pod with a private cgroup namespace: mount the
    /// host's /sys/fs/cgroup with a hostPath volume and name it here). Also
    /// CLEW_HOST_CGROUP_ROOT.
    #[arg(long)]
    pub host_cgroup_root: Option<PathBuf>,
}

impl From<SelectArgs> for Selector {
    fn from(a: SelectArgs) -> Self {
        Selector {
            cgroups: a.cgroup,
            pids: a.pid,
            exes: a.exe,
            ports: a.port,
            pods: a
                .namespace
                .into_iter()
                .map(Match::Namespace)
                .chain(a.pod_label)
                .collect(),
            hierarchy: Default::default(),
        }
    }
}

/// Every option of `clew run` but `--config` can also be set in the
/// config file; a flag given here overrides the file and the environment
/// (see config.rs). Defaults are applied there, not here, so that an absent
/// flag leaves the setting to the other sources.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// TOML config file holding any of the options below (see
    /// deploy/clew.example.toml); flags and variables override its values.
    #[arg(long, env = "CLEW_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// OTLP endpoint; defaults from OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
    /// Without any, finished traces are printed on stdout.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; defaults from OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_parser = Protocol::parse)]
    pub otlp_protocol: Option<Protocol>,
    /// Serve /healthz, /readyz and /metrics on this address.
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// Bytes of each socket read/write copied from the kernel (headers
    /// must fit); 64 to 16384, default 4096.
    #[arg(long)]
    pub capture_bytes: Option<u32>,
    /// How query strings are recorded (`url.query`, and in `url.full`):
    /// `redacted` (the default: values of secret-named keys become
    /// `REDACTED`), `full` (as sent) or `off`.
    #[arg(long, value_enum)]
    pub query: Option<QueryMode>,
    /// More names whose values are redacted in queries, path parameters
    /// and command lines, on top of the built-in list (see README), e.g.
    /// `tenant_pin,otp`.
    #[arg(long, value_delimiter = ',')]
    pub redact_names: Vec<String>,
    /// Export `process.command_line`: `off` (the default: command lines
    /// carry passwords passed as flags) or `redacted` (values of
    /// secret-looking flags, variables, headers and URL user-info replaced).
    #[arg(long, value_enum)]
    pub command_line: Option<CommandLineMode>,
    /// Spans of processes that export their own through an OpenTelemetry
    /// SDK (an OTLP exporter in their environment, or seen exporting):
    /// `defer` (the default: Clew exports none of theirs, so no span is
    /// exported twice) or `trace` (Clew exports its spans too, for an SDK
    /// exporting elsewhere; the backend then gets duplicate span ids).
    #[arg(long, value_enum)]
    pub sdk_processes: Option<SdkProcesses>,
    /// How trace context crosses to the next service, a list of: `headers`
    /// (write `traceparent` into outgoing plaintext HTTP/1 and HTTP/2 requests),
    /// `tcp-option` (carry it in a TCP header option, for any TCP traffic),
    /// or `none`. Default `headers,tcp-option`; also CLEW_PROPAGATION.
    #[arg(long, value_delimiter = ',')]
    pub propagation: Vec<Propagation>,
    /// `baggage` keys recorded as span attributes, e.g. `tenant,plan`.
    /// Clew never adds baggage to requests; it passes through as the
    /// application forwards it.
    #[arg(long, value_delimiter = ',')]
    pub baggage_attributes: Vec<String>,
    /// Also hook Go's crypto/tls (amd64, Go ≥ 1.17). Off by default: its
    /// probes sit on every return of `(*Conn).Read`/`Write` and cost the Go
    /// process tens of µs per call (see README, HTTPS). `--tls-go=false`
    /// turns off what the config file turned on.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_go: Option<bool>,
    /// How TLS library probes are attached when only some processes are
    /// traced: `file` (the default; once per library file, for every process
    /// mapping it: covered from the first instruction, but untraced
    /// processes using the same file pay a trap per TLS call, measured at
    /// −75% HTTPS throughput for an untraced nginx on a 2-core VM) or
    /// `process` (per traced process: untraced ones pay nothing, but TLS
    /// calls a process makes in the first milliseconds after its exec are
    /// missed, and every new process costs the agent an attach). Tracing
    /// every process always attaches per file.
    #[arg(long, value_enum)]
    pub tls_attach: Option<TlsAttach>,
    /// A route template for `http.route` (e.g. `/users/{id}`): the first
    /// that matches a server request's path names its metric series, its
    /// span (`GET /users/{id}`) and the span's `http.route`. Repeatable;
    /// also CLEW_ROUTES (comma-separated).
    #[arg(long = "route", value_delimiter = ',', value_parser = Pattern::parse)]
    pub routes: Vec<Pattern>,
    /// Template paths no `--route` matches for metrics: identifier-looking
    /// segments become `{id}`, busy positions `{param}`. Default true; also
    /// CLEW_AUTO_ROUTES.
    #[arg(long, action = clap::ArgAction::Set)]
    pub auto_routes: Option<bool>,
    /// Series per metric and service; past it, measurements go to one
    /// series marked `otel.metric.overflow=true`. Default 2000; also
    /// CLEW_METRIC_SERIES_LIMIT.
    #[arg(long)]
    pub metric_series_limit: Option<NonZeroUsize>,
    /// Kernel→agent ring buffer size in MiB (rounded up to a power of
    /// two); 1 to 1024, default 4.
    #[arg(long)]
    pub ringbuf_mib: Option<u32>,
    /// Where the kernel reads a socket call's arguments: `auto` (at its
    /// return, from the thread's saved registers, where the kernel allows
    /// it: one program per call instead of two) or `enter` (a program at
    /// the call's entry keeps them for the one at its return).
    #[arg(long)]
    pub syscall_arguments: Option<SyscallArguments>,
    /// Self-check: every interval, send this endpoint of a traced process
    /// a request with a trace context of the agent's own and check that its
    /// span is built and acknowledged by the collector (see README,
    /// Synthetic probe). Repeatable.
    #[arg(long, value_parser = synthetic::parse_target)]
    pub synthetic_probe: Vec<Url>,
    /// Between synthetic probes, e.g. `30s` (the default) or `1m`.
    #[arg(long, value_parser = config::duration::parse)]
    pub synthetic_interval: Option<Duration>,
    /// Pod metadata (name, namespace, container, workload) from the
    /// Kubernetes API: `auto` (the default: when KUBERNETES_SERVICE_HOST and
    /// a service account token are there), `on` (an error without them) or
    /// `off`. Also CLEW_KUBERNETES.
    #[arg(long, value_enum)]
    pub kubernetes: Option<KubernetesMode>,
    /// The node whose pods are watched (give it with the downward API's
    /// `spec.nodeName`); default the host name. Also NODE_NAME.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The service account directory holding `token` and `ca.crt`; default
    /// /var/run/secrets/kubernetes.io/serviceaccount. Also
    /// CLEW_KUBERNETES_SERVICE_ACCOUNT.
    #[arg(long)]
    pub kubernetes_service_account: Option<PathBuf>,
    /// Resource attributes for the processes a selector matches,
    /// `SELECTOR:KEY=VALUE[,KEY=VALUE…]` with SELECTOR one of
    /// `cgroup=PATH`, `exe=NAME|PATH`, `namespace=NAME`,
    /// `pod-label=KEY=VALUE[+KEY=VALUE…]`, e.g.
    /// `namespace=shop:tenant=a,service.namespace=shop`. They replace the
    /// process's own values; later rules win. Repeatable; replaces the
    /// config file's `[[tenants]]`.
    #[arg(long = "tenant", value_parser = Rule::parse)]
    pub tenants: Vec<Rule>,
    /// Turn what a traced thread writes while it serves a request into OTLP
    /// log records carrying that request's span ids: `stdout`, `stderr`,
    /// and absolute path patterns of log files as the process sees them
    /// (`/var/log/app/*.log`; `**` spans directories), comma-separated or
    /// repeated. Off by default; also CLEW_LOGS. Exported like spans, with
    /// `OTEL_EXPORTER_OTLP_LOGS_*` overrides.
    #[arg(long, value_delimiter = ',')]
    pub logs: Vec<String>,
    /// Longest log record body in bytes, 1 to 8192 (default 4096): longer
    /// lines are cut, marked `clew.log.truncated=true` and counted.
    #[arg(long)]
    pub log_record_bytes: Option<usize>,
    /// Log records per second per process (default 1000; bursts up to as
    /// many), and as many captured writes (bounded in the kernel, before
    /// any copy); more are dropped and counted.
    #[arg(long)]
    pub log_rate: Option<NonZeroU32>,
}
