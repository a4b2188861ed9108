//! The configuration file's schema (TOML): one struct per `[section]`,
//! every key optional (an absent key leaves the setting to the environment,
//! a flag or the default), unknown keys rejected. Values are checked while
//! parsing wherever one key suffices, so that the error points at the line.
//!
//! A section is one field of [`File`]; a section that only the file sets
//! (no variable, no flag) can be deserialized straight into the type its
//! component uses and moved into [`super::Config`] as it is.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    duration, CommandLineMode, KubernetesMode, Mechanisms, QueryMode, SdkProcesses,
    SyscallArguments, TlsAttach,
};
use crate::{
    export::{Compression, Protocol},
    matcher::Match,
    metrics::Pattern,
    sampling::{Ratio, SamplerName},
    synthetic::ProbeTarget,
    tenant::Rule,
};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `--log-level`: a level or a `tracing` filter (`info,clew=debug`).
    pub log_level: Option<String>,
    #[serde(default)]
    pub select: SelectSection,
    #[serde(default)]
    pub export: ExportSection,
    #[serde(default)]
    pub resource: ResourceSection,
    #[serde(default)]
    pub sampling: SamplingSection,
    #[serde(default)]
    pub propagation: PropagationSection,
    #[serde(default)]
    pub capture: CaptureSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub spans: SpansSection,
    #[serde(default)]
    pub redaction: RedactionSection,
    #[serde(default)]
    pub routes: RoutesSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub synthetic: SyntheticSection,
    #[serde(default)]
    pub kubernetes: KubernetesSection,
    #[serde(default)]
    pub logs: LogsSection,
    /// `[[tenants]]`, in order (`--tenant`).
    pub tenants: Option<Vec<TenantRule>>,
}

impl File {
    /// Parses a file's text; the error names the key and its line.
    pub fn parse(text: &str) -> Result<File, toml::de::Error> {
        toml::from_str(text)
    }
}

/// Which processes to trace; together with the flags of the same names.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectSection {
    pub cgroups: Option<Vec<PathBuf>>,
    pub pids: Option<Vec<u32>>,
    pub exes: Option<Vec<String>>,
    pub ports: Option<Vec<u16>>,
    /// `--namespace`.
    pub namespaces: Option<Vec<String>>,
    /// `--pod-label`: each table a set of labels a pod must all carry.
    pub pod_labels: Option<Vec<BTreeMap<String, String>>>,
    /// `--host-cgroup-root`.
    pub host_cgroup_root: Option<PathBuf>,
}

/// `[kubernetes]`: where pod metadata comes from.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// `--kubernetes`.
    pub mode: Option<KubernetesMode>,
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--kubernetes-service-account`.
    pub service_account: Option<PathBuf>,
}

/// One `[[tenants]]` table as written: exactly one selector key, and the
/// attributes its processes get.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    pub attributes: BTreeMap<String, String>,
}

/// A `[[tenants]]` table, checked while parsing so that an error points
/// at its line.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "TenantTable", into = "TenantTable")]
pub struct TenantRule(pub Rule);

impl TryFrom<TenantTable> for TenantRule {
    type Error = anyhow::Error;

    fn try_from(t: TenantTable) -> anyhow::Result<Self> {
        let mut given = [
            t.cgroup.map(Match::Cgroup),
            t.exe.map(Match::Exe),
            t.namespace.map(Match::Namespace),
            t.pod_labels
                .map(|l| Match::PodLabels(l.into_iter().collect())),
        ]
        .into_iter()
        .flatten();
        let (Some(when), None) = (given.next(), given.next()) else {
            anyhow::bail!("a tenant takes exactly one of cgroup, exe, namespace and pod_labels");
        };
        anyhow::ensure!(!t.attributes.is_empty(), "a tenant needs attributes");
        Ok(TenantRule(Rule {
            when,
            attributes: t.attributes.into_iter().collect(),
        }))
    }
}

impl From<TenantRule> for TenantTable {
    fn from(TenantRule(r): TenantRule) -> Self {
        let mut t = TenantTable {
            attributes: r.attributes.into_iter().collect(),
            ..TenantTable::default()
        };
        match r.when {
            Match::Cgroup(p) => t.cgroup = Some(p),
            Match::Exe(e) => t.exe = Some(e),
            Match::Namespace(n) => t.namespace = Some(n),
            Match::PodLabels(l) => t.pod_labels = Some(l.into_iter().collect()),
        }
        t
    }
}

/// The OTLP keys, each the file form of the `OTEL_EXPORTER_OTLP_*`
/// variable of the same name: in `[export]` for both signals, in
/// `[export.traces]` and `[export.metrics]` for one. A macro because serde
/// cannot reject unknown keys in a struct that flattens another.
macro_rules! otlp_keys {
    ($(#[$meta:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub endpoint: Option<Endpoint>,
            pub protocol: Option<Protocol>,
            pub headers: Option<BTreeMap<String, String>>,
            #[serde(default, with = "duration")]
            pub timeout: Option<Duration>,
            pub compression: Option<Compression>,
            pub certificate: Option<PathBuf>,
            pub client_certificate: Option<PathBuf>,
            pub client_key: Option<PathBuf>,
            pub insecure: Option<bool>,
            $($extra)*
        }
    };
}

otlp_keys!(
    /// `[export.traces]`, `[export.metrics]` or `[export.logs]`.
    SignalSection {}
);

otlp_keys!(
    /// `[export]`: keys for both signals, then one table per signal and the batching.
    ExportSection {
        #[serde(default)]
        pub traces: SignalSection,
        #[serde(default)]
        pub metrics: SignalSection,
        #[serde(default)]
        pub logs: SignalSection,
        #[serde(default)]
        pub batch: BatchSection,
    }
);

/// `[export.batch]`: the file form of the `OTEL_BSP_*` variables.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    pub max_queue_size: Option<NonZeroUsize>,
    #[serde(default, with = "duration")]
    pub schedule_delay: Option<Duration>,
    pub max_export_batch_size: Option<NonZeroUsize>,
    #[serde(default, with = "duration")]
    pub export_timeout: Option<Duration>,
}

/// An OTLP endpoint as written: `http(s)://host:port[/path]`, or
/// `host:port` for gRPC (the scheme then follows `insecure`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint(pub String);

impl TryFrom<String> for Endpoint {
    type Error = anyhow::Error;

    fn try_from(raw: String) -> anyhow::Result<Self> {
        crate::export::check_endpoint(&raw)?;
        Ok(Endpoint(raw))
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.0
    }
}

/// The agent's own resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    pub attributes: Option<BTreeMap<String, String>>,
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSection {
    pub sampler: Option<SamplerName>,
    pub ratio: Option<Ratio>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PropagationSection {
    /// `--propagation`.
    pub mechanisms: Option<Mechanisms>,
    /// `--baggage-attributes`.
    pub baggage_attributes: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// `--capture-bytes`.
    pub bytes: Option<u32>,
    /// `--ringbuf-mib`.
    pub ringbuf_mib: Option<u32>,
    /// `--syscall-arguments`.
    pub syscall_arguments: Option<SyscallArguments>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`.
    pub known_methods: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// `--tls-attach`.
    pub attach: Option<TlsAttach>,
    /// `--tls-go`.
    pub go: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpansSection {
    /// `OTEL_(SPAN_)ATTRIBUTE_VALUE_LENGTH_LIMIT`.
    pub attribute_value_length_limit: Option<usize>,
    /// `--sdk-processes`.
    pub sdk_processes: Option<SdkProcesses>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionSection {
    /// `--query`.
    pub query: Option<QueryMode>,
    /// `--redact-names`.
    pub names: Option<Vec<String>>,
    /// `--command-line`.
    pub command_line: Option<CommandLineMode>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesSection {
    /// `--route`, in order.
    pub patterns: Option<Vec<Pattern>>,
    /// `--auto-routes`.
    pub auto: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `--metric-series-limit`.
    pub series_limit: Option<NonZeroUsize>,
    /// `OTEL_METRIC_EXPORT_INTERVAL`.
    #[serde(default, with = "duration")]
    pub export_interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `--health-listen`.
    pub listen: Option<SocketAddr>,
}

/// The synthetic probe (see `synthetic/`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSection {
    /// `--synthetic-probe`: endpoints of traced processes on this node.
    pub targets: Option<Vec<ProbeTarget>>,
    /// `--synthetic-interval`.
    #[serde(default, with = "duration")]
    pub interval: Option<Duration>,
}

/// `[logs]`: logs tied to traces (see `logs/`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// `--logs`: `stdout`, `stderr` and absolute path patterns.
    pub sources: Option<Vec<String>>,
    /// `--log-record-bytes`.
    pub record_bytes: Option<usize>,
    /// `--log-rate`.
    pub rate: Option<NonZeroU32>,
}
