//! One resolved configuration for `clew run`, built before anything runs:
//! the file (`--config` or `CLEW_CONFIG`, TOML), then the environment
//! (`OTEL_*` and `CLEW_*` variables), then the flags, each source
//! overriding the one before it key by key; then defaults. Components
//! receive their part of [`Config`]; nothing reads the environment later.
//!
//! A list is one value: `--route` given on the command line replaces the
//! file's `routes.patterns` rather than adding to it. Maps merge by key
//! (`export.headers`, `resource.attributes`): a variable adds to or
//! replaces the file's entries one by one, so that a secret header can come
//! from the environment while the file holds the rest.

pub mod duration;
pub mod env;
pub mod file;

use std::{
    fmt::Debug,
    net::SocketAddr,
    num::NonZeroU32,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

pub use env::Env;
pub use file::File;

use crate::{
    cli::RunArgs,
    export::{ExportConfig, ExportFlags, Signal},
    k8s::KubernetesConfig,
    logs::{LogSettings, Sources},
    matcher::Match,
    metrics::Pattern,
    protocol::http_common::known_methods_from_env,
    sampling::{Ratio, Sampler, SamplerName},
    select::Selector,
    synthetic::{self, SyntheticConfig},
    tenant::Rule,
};

/// Defaults that several sources share.
pub const DEFAULT_CAPTURE_BYTES: u32 = 4096;
pub const DEFAULT_RINGBUF_MIB: u32 = 4;
/// Used when no attribute length limit is set. SDKs default to no limit;
/// an agent exporting what others' processes sent bounds it.
pub const DEFAULT_ATTRIBUTE_LIMIT: usize = 4096;
/// The SDKs' default metric export interval.
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_LOG_RECORD_BYTES: usize = 4096;
pub const DEFAULT_LOG_RATE: u32 = 1000;

#[derive(Clone, Debug)]
pub struct Config {
    pub select: Selector,
    pub traces: ExportConfig,
    pub metrics_export: ExportConfig,
    pub metric_export_interval: Duration,
    /// Added to every resource the agent exports, unless the process says otherwise.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    pub propagation: Mechanisms,
    pub baggage_attributes: Vec<String>,
    pub capture_bytes: u32,
    pub ringbuf_mib: u32,
    pub syscall_arguments: SyscallArguments,
    /// `None`: the HTTP semantic conventions' list.
    pub http_known_methods: Option<Vec<String>>,
    pub tls_attach: TlsAttach,
    pub tls_go: bool,
    pub attribute_value_length_limit: usize,
    pub sdk_processes: SdkProcesses,
    pub query: QueryMode,
    pub redact_names: Vec<String>,
    pub command_line: CommandLineMode,
    pub routes: Vec<Pattern>,
    pub auto_routes: bool,
    pub metric_series_limit: usize,
    pub health_listen: Option<SocketAddr>,
    /// `None`: no synthetic probe.
    pub synthetic: Option<SyntheticConfig>,
    /// Where the host's cgroup v2 hierarchy is mounted, if not the first
    /// cgroup2 mount.
    pub host_cgroup_root: Option<PathBuf>,
    pub kubernetes: KubernetesConfig,
    pub tenants: Vec<Rule>,
    /// `None`: log capture off.
    pub logs: Option<LogSettings>,
    /// Where log records go; set when log capture is on.
    pub logs_export: Option<ExportConfig>,
}

/// Where the service account is mounted in every pod.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The file `path` names, or an empty one.
pub fn read_file(path: Option<&Path>) -> Result<File> {
    let Some(path) = path else {
        return Ok(File::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    File::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// The log filter: `--log-level`, else `RUST_LOG`, else the file's
/// `log_level`, else `info`; with where it came from, for errors.
pub fn log_filter(flag: Option<String>, env: &Env, file: &File) -> (String, &'static str) {
    if let Some(f) = flag {
        return (f, "--log-level");
    }
    if let Some(v) = env.get("RUST_LOG") {
        return (v.to_owned(), "RUST_LOG");
    }
    match &file.log_level {
        Some(l) => (l.clone(), "log_level in the config file"),
        None => ("info".into(), "the default"),
    }
}

impl Config {
    pub fn resolve(file: File, env: &Env, flags: RunArgs) -> Result<Config> {
        let f = flags;
        let export_flags = ExportFlags {
            endpoint: f.otlp_endpoint,
            protocol: f.otlp_protocol,
        };
        let select = Selector {
            cgroups: given(f.select.cgroup)
                .or(file.select.cgroups)
                .unwrap_or_default(),
            pids: given(f.select.pid).or(file.select.pids).unwrap_or_default(),
            exes: given(f.select.exe).or(file.select.exes).unwrap_or_default(),
            ports: given(f.select.port)
                .or(file.select.ports)
                .unwrap_or_default(),
            pods: given(f.select.namespace)
                .or(file.select.namespaces)
                .unwrap_or_default()
                .into_iter()
                .map(Match::Namespace)
                .chain(
                    given(f.select.pod_label)
                        .or(file.select.pod_labels.map(|tables| {
                            tables
                                .into_iter()
                                .map(|l| Match::PodLabels(l.into_iter().collect()))
                                .collect()
                        }))
                        .unwrap_or_default(),
                )
                .collect(),
            hierarchy: Default::default(),
        };
        let path = |v: &str| Ok(PathBuf::from(v));
        let host_cgroup_root = match f.select.host_cgroup_root {
            Some(p) => Some(p),
            None => env
                .clew("CLEW_HOST_CGROUP_ROOT", path)?
                .or(file.select.host_cgroup_root),
        };
        let kubernetes = KubernetesConfig {
            mode: match f.kubernetes {
                Some(m) => m,
                None => env
                    .clew("CLEW_KUBERNETES", env::named)?
                    .or(file.kubernetes.mode)
                    .unwrap_or_default(),
            },
            node_name: f
                .node_name
                .or_else(|| env.get("NODE_NAME").map(str::to_owned))
                .or(file.kubernetes.node_name),
            service_account: match f.kubernetes_service_account {
                Some(p) => p,
                None => env
                    .clew("CLEW_KUBERNETES_SERVICE_ACCOUNT", path)?
                    .or(file.kubernetes.service_account)
                    .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.into()),
            },
            service_host: env.get("KUBERNETES_SERVICE_HOST").map(str::to_owned),
            service_port: env.get("KUBERNETES_SERVICE_PORT").map(str::to_owned),
        };
        let tenants = given(f.tenants)
            .or(file
                .tenants
                .map(|t| t.into_iter().map(|file::TenantRule(r)| r).collect()))
            .unwrap_or_default();

        let traces = ExportConfig::resolve(Signal::Traces, &file.export, &export_flags, env)?;
        let metrics_export =
            ExportConfig::resolve(Signal::Metrics, &file.export, &export_flags, env)?;
        let metric_export_interval = env
            .otel("OTEL_METRIC_EXPORT_INTERVAL", |v| {
                let d = env::millis(v)?;
                anyhow::ensure!(!d.is_zero(), "must be above 0");
                Ok(d)
            })
            .or(nonzero(
                file.metrics.export_interval,
                "metrics.export_interval",
            )?)
            .unwrap_or(DEFAULT_METRIC_EXPORT_INTERVAL);

        let mut resource = file.resource.attributes.unwrap_or_default();
        if let Some(v) = env.get("OTEL_RESOURCE_ATTRIBUTES") {
            resource.extend(crate::trace_context::parse_baggage(v));
        }

        let sampler = Sampler::new(
            env.otel("OTEL_TRACES_SAMPLER", env::named::<SamplerName>)
                .or(file.sampling.sampler)
                .unwrap_or_default(),
            env.otel("OTEL_TRACES_SAMPLER_ARG", Ratio::parse)
                .or(file.sampling.ratio)
                .unwrap_or(Ratio::ONE),
        );

        let propagation = match given(f.propagation) {
            Some(list) => Mechanisms::from_list(&list).context("--propagation")?,
            None => env
                .clew("CLEW_PROPAGATION", |v| {
                    Mechanisms::from_list(&env::list(v, env::named)?)
                })?
                .or(file.propagation.mechanisms)
                .unwrap_or(Mechanisms::ALL),
        };

        let capture = 64..=clew_common::MAX_CAPTURE as u32;
        let capture_bytes = within(f.capture_bytes, "--capture-bytes", &capture)?
            .or(within(file.capture.bytes, "capture.bytes", &capture)?)
            .unwrap_or(DEFAULT_CAPTURE_BYTES);
        let ringbuf = 1..=1024;
        let ringbuf_mib = within(f.ringbuf_mib, "--ringbuf-mib", &ringbuf)?
            .or(within(
                file.capture.ringbuf_mib,
                "capture.ringbuf_mib",
                &ringbuf,
            )?)
            .unwrap_or(DEFAULT_RINGBUF_MIB);

        let attribute_value_length_limit = [
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        ]
        .iter()
        .find_map(|k| env.otel(k, |v| Ok(v.trim().parse::<usize>()?)))
        .or(file.spans.attribute_value_length_limit)
        .unwrap_or(DEFAULT_ATTRIBUTE_LIMIT);

        let routes = match given(f.routes) {
            Some(r) => r,
            None => env
                .clew("CLEW_ROUTES", |v| env::list(v, Pattern::parse))?
                .or(file.routes.patterns)
                .unwrap_or_default(),
        };
        let auto_routes = match f.auto_routes {
            Some(a) => a,
            None => env
                .clew("CLEW_AUTO_ROUTES", env::boolean)?
                .or(file.routes.auto)
                .unwrap_or(true),
        };
        let metric_series_limit = match f.metric_series_limit {
            Some(n) => n.get(),
            None => env
                .clew("CLEW_METRIC_SERIES_LIMIT", env::count)?
                .or(file.metrics.series_limit)
                .map_or(crate::metrics::registry::DEFAULT_SERIES_LIMIT, |n| n.get()),
        };

        let targets = given(f.synthetic_probe)
            .or_else(|| {
                let file = file.synthetic.targets?;
                Some(file.into_iter().map(|t| t.0).collect())
            })
            .unwrap_or_default();
        let every = Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
        let interval = within(f.synthetic_interval, "--synthetic-interval", &every)?
            .or(within(
                file.synthetic.interval,
                "synthetic.interval",
                &every,
            )?)
            .unwrap_or(synthetic::DEFAULT_INTERVAL);
        let synthetic = (!targets.is_empty()).then_some(SyntheticConfig { targets, interval });

        let sdk_processes = f
            .sdk_processes
            .or(file.spans.sdk_processes)
            .unwrap_or_default();
        let logs = log_settings(f.logs, f.log_record_bytes, f.log_rate, &file.logs, env)?.map(
            |(sources, record_bytes, per_second)| LogSettings {
                sources,
                record_bytes,
                per_second,
                defer_sdk: sdk_processes == SdkProcesses::Defer,
            },
        );
        let logs_export = logs
            .is_some()
            .then(|| ExportConfig::resolve(Signal::Logs, &file.export, &export_flags, env))
            .transpose()?;

        Ok(Config {
            select,
            traces,
            metrics_export,
            metric_export_interval,
            resource_attributes: resource.into_iter().collect(),
            sampler,
            propagation,
            baggage_attributes: given(f.baggage_attributes)
                .or(file.propagation.baggage_attributes)
                .unwrap_or_default(),
            capture_bytes,
            ringbuf_mib,
            syscall_arguments: f
                .syscall_arguments
                .or(file.capture.syscall_arguments)
                .unwrap_or_default(),
            http_known_methods: known_methods_from_env(
                env.get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"),
            )
            .or(file.http.known_methods),
            tls_attach: f.tls_attach.or(file.tls.attach).unwrap_or_default(),
            tls_go: f.tls_go.or(file.tls.go).unwrap_or(false),
            attribute_value_length_limit,
            sdk_processes,
            query: f.query.or(file.redaction.query).unwrap_or_default(),
            redact_names: given(f.redact_names)
                .or(file.redaction.names)
                .unwrap_or_default(),
            command_line: f
                .command_line
                .or(file.redaction.command_line)
                .unwrap_or_default(),
            routes,
            auto_routes,
            metric_series_limit,
            health_listen: f.health_listen.or(file.health.listen),
            synthetic,
            host_cgroup_root,
            kubernetes,
            tenants,
            logs,
            logs_export,
        })
    }
}

/// Log capture's sources, record bound and rate; `None` when no source is
/// given (off).
fn log_settings(
    flag: Vec<String>,
    record_bytes: Option<usize>,
    rate: Option<NonZeroU32>,
    file: &file::LogsSection,
    env: &Env,
) -> Result<Option<(Sources, usize, u32)>> {
    let sources = match given(flag) {
        Some(list) => Sources::parse(&list)?,
        None => match env.clew("CLEW_LOGS", |v| {
            Sources::parse(&env::list(v, |s| Ok(s.to_owned()))?)
        })? {
            Some(s) => s,
            None => Sources::parse(file.sources.as_deref().unwrap_or_default())
                .context("logs.sources")?,
        },
    };
    if sources.is_empty() {
        return Ok(None);
    }
    let bytes = 1..=clew_common::logs::MAX_LOG_CAPTURE;
    let record_bytes = within(record_bytes, "--log-record-bytes", &bytes)?
        .or(within(file.record_bytes, "logs.record_bytes", &bytes)?)
        .unwrap_or(DEFAULT_LOG_RECORD_BYTES);
    let rate = rate.or(file.rate).map_or(DEFAULT_LOG_RATE, NonZeroU32::get);
    Ok(Some((sources, record_bytes, rate)))
}

/// A list flag given at least once.
fn given<T>(list: Vec<T>) -> Option<Vec<T>> {
    (!list.is_empty()).then_some(list)
}

/// The value, if it lies in `range`; an error naming `key` otherwise.
/// (`Debug` shows numbers as they are and durations as `30s`.)
fn within<T: PartialOrd + Debug>(
    value: Option<T>,
    key: &str,
    range: &RangeInclusive<T>,
) -> Result<Option<T>> {
    match value {
        Some(v) if !range.contains(&v) => anyhow::bail!(
            "{key} = {v:?}: must be between {:?} and {:?}",
            range.start(),
            range.end()
        ),
        v => Ok(v),
    }
}

fn nonzero(value: Option<Duration>, key: &str) -> Result<Option<Duration>> {
    anyhow::ensure!(value != Some(Duration::ZERO), "{key} must be above 0");
    Ok(value)
}

/// Where the kernel programs read a socket call's arguments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyscallArguments {
    /// At the call's return, from the thread's saved registers, where the
    /// kernel allows it (Linux 5.15); else as `enter`.
    #[default]
    Auto,
    /// A program at the call's entry keeps them for the one at its return.
    Enter,
}

/// How query strings are recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryMode {
    Off,
    #[default]
    Redacted,
    Full,
}

/// Whether resources carry `process.command_line`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandLineMode {
    #[default]
    Off,
    Redacted,
}

/// Spans of processes that export their own through an OpenTelemetry SDK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SdkProcesses {
    #[default]
    Defer,
    Trace,
}

/// Whether pod metadata is read from the Kubernetes API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubernetesMode {
    /// When the in-cluster configuration is there.
    #[default]
    Auto,
    /// Required: an error without it.
    On,
    Off,
}

/// How TLS library probes are attached when only some processes are traced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsAttach {
    #[default]
    File,
    Process,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Propagation {
    /// `traceparent` header in plaintext HTTP/1 and HTTP/2 requests.
    Headers,
    /// TCP header option (kind 25) on the segments that start a connection
    /// or a request.
    TcpOption,
    /// Observe only.
    None,
}

/// Which propagation mechanisms a list of [`Propagation`] turns on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "Vec<Propagation>", into = "Vec<Propagation>")]
pub struct Mechanisms {
    pub headers: bool,
    pub tcp_option: bool,
}

impl Mechanisms {
    pub const ALL: Mechanisms = Mechanisms {
        headers: true,
        tcp_option: true,
    };

    pub fn from_list(list: &[Propagation]) -> Result<Self> {
        let has = |p| list.contains(&p);
        anyhow::ensure!(
            !has(Propagation::None) || list.len() == 1,
            "`none` cannot be combined with other mechanisms"
        );
        Ok(Mechanisms {
            headers: has(Propagation::Headers),
            tcp_option: has(Propagation::TcpOption),
        })
    }
}

impl TryFrom<Vec<Propagation>> for Mechanisms {
    type Error = anyhow::Error;

    fn try_from(list: Vec<Propagation>) -> Result<Self> {
        Mechanisms::from_list(&list)
    }
}

impl From<Mechanisms> for Vec<Propagation> {
    fn from(m: Mechanisms) -> Self {
        let mut list = Vec::new();
        if m.headers {
            list.push(Propagation::Headers);
        }
        if m.tcp_option {
            list.push(Propagation::TcpOption);
        }
        if list.is_empty() {
            list.push(Propagation::None);
        }
        list
    }
}

#[cfg(test)]
mod tests;
