//! Export settings resolved from the flags, the standard
//! `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables and the config file's
//! `[export]` section.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::config::{
    env::{self, Env},
    file::{BatchSection, ExportSection, SignalSection},
};

/// OTLP wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => {
                bail!("OTLP protocol http/json is not supported; use grpc or http/protobuf")
            }
            other => bail!("unknown OTLP protocol {other:?}; expected grpc or http/protobuf"),
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = anyhow::Error;

    fn try_from(value: String) -> Result<Self> {
        Protocol::parse(&value)
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> String {
        p.to_string()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// OTLP endpoint; `None` prints traces to stdout instead. For http/protobuf
    /// this is the full URL spans are POSTed to.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata), e.g. for collector auth.
    pub headers: Vec<(String, String)>,
    /// Spans waiting to be exported; further spans are dropped and counted.
    pub queue_capacity: usize,
    pub max_batch: usize,
    /// How long a partial batch waits for more spans; in the console view,
    /// how long a trace must stay quiet before it is printed.
    pub batch_timeout: Duration,
    /// Bound on one export request, connection set-up included.
    pub export_timeout: Duration,
    /// Bound on delivering one batch, retries included (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub batch_deadline: Duration,
    pub tls: TlsFiles,
    pub compression: Compression,
}

/// PEM files for `https://` endpoints; without a CA file the system roots are trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: the CA that signed the collector's certificate.
    pub ca: Option<PathBuf>,
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY`, for mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            endpoint: None,
            // The OTel spec's default protocol.
            protocol: Protocol::HttpProtobuf,
            headers: Vec::new(),
            queue_capacity: 8192,
            max_batch: 512,
            batch_timeout: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
            // The OTel spec's OTEL_BSP_EXPORT_TIMEOUT default.
            batch_deadline: Duration::from_secs(30),
            tls: TlsFiles::default(),
            compression: Compression::None,
        }
    }
}

/// Which OTLP signal a configuration is for: each has its own variables
/// (`OTEL_EXPORTER_OTLP_TRACES_*`, `_METRICS_*`, `_LOGS_*`) over the
/// shared ones, and its own HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    fn var(self, suffix: &str) -> String {
        let signal = match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        };
        format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}")
    }

    /// Its table in the file: `[export.traces]`, `[export.metrics]`,
    /// `[export.logs]`.
    fn key(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

/// Where the endpoint came from decides whether the signal's path
/// (`/v1/traces`) is appended for http/protobuf.
#[derive(Clone, Copy)]
enum EndpointSource {
    /// CLI argument: a base URL gets the path, a URL with a path is kept.
    Arg,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `_METRICS_`): used as-is, per the spec.
    SignalVar,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: always a base URL, per the spec.
    BaseVar,
}

/// The flags that set export: `--otlp-endpoint` and `--otlp-protocol`.
#[derive(Clone, Debug, Default)]
pub struct ExportFlags {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
}

impl ExportSection {
    /// `[export.traces]`, `[export.metrics]` or `[export.logs]`.
    fn signal(&self, signal: Signal) -> &SignalSection {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }
}

impl ExportConfig {
    /// One signal's settings. Each comes from the first source that sets
    /// it: the flags, the signal's variable (`OTEL_EXPORTER_OTLP_TRACES_*`),
    /// the shared variable (`OTEL_EXPORTER_OTLP_*`), the file's
    /// `[export.traces]`, the file's `[export]`, the default. Headers merge
    /// by name in the reverse order. Without a protocol, port 4317 means
    /// grpc and anything else http/protobuf. No endpoint anywhere means the
    /// console view (for traces; no OTLP for metrics).
    pub fn resolve(
        signal: Signal,
        file: &ExportSection,
        flags: &ExportFlags,
        env: &Env,
    ) -> Result<Self> {
        let own = file.signal(signal);
        let defaults = ExportConfig::default();

        let protocol = flags
            .protocol
            .or_else(|| otlp_var(env, signal, "PROTOCOL", Protocol::parse))
            .or(own.protocol)
            .or(file.protocol);

        let mut headers = Vec::new();
        // Signal-specific headers come last so they override same-named generic ones.
        for table in [&file.headers, &own.headers].into_iter().flatten() {
            merge_headers(
                &mut headers,
                table.iter().map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        for key in [
            "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
            signal.var("HEADERS"),
        ] {
            if let Some(parsed) = env.otel(&key, parse_headers) {
                merge_headers(&mut headers, parsed);
            }
        }

        let export_timeout = otlp_var(env, signal, "TIMEOUT", env::millis)
            .or(own.timeout)
            .or(file.timeout)
            .unwrap_or(defaults.export_timeout);
        let compression = otlp_var(env, signal, "COMPRESSION", Compression::parse)
            .or(own.compression)
            .or(file.compression)
            .unwrap_or_default();
        let path = |suffix: &str, own: &Option<PathBuf>, shared: &Option<PathBuf>| {
            otlp_var(env, signal, suffix, |v| Ok(PathBuf::from(v.trim())))
                .or_else(|| own.clone())
                .or_else(|| shared.clone())
        };
        let tls = TlsFiles {
            ca: path("CERTIFICATE", &own.certificate, &file.certificate),
            client_cert: path(
                "CLIENT_CERTIFICATE",
                &own.client_certificate,
                &file.client_certificate,
            ),
            client_key: path("CLIENT_KEY", &own.client_key, &file.client_key),
        };
        let insecure = otlp_var(env, signal, "INSECURE", env::boolean)
            .or(own.insecure)
            .or(file.insecure)
            .unwrap_or(false);
        let batch = BatchSettings::resolve(env, &file.batch, &defaults);

        let from_var = |key: String, source| env.get(&key).map(|e| (e.to_owned(), source, key));
        let source = flags
            .endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())
            .map(|e| (e, EndpointSource::Arg, "--otlp-endpoint".to_owned()))
            .or_else(|| from_var(signal.var("ENDPOINT"), EndpointSource::SignalVar))
            .or_else(|| {
                from_var(
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    EndpointSource::BaseVar,
                )
            })
            .or_else(|| {
                let key = format!("export.{}.endpoint", signal.key());
                own.endpoint
                    .clone()
                    .map(|e| (e.0, EndpointSource::SignalVar, key))
            })
            .or_else(|| {
                file.endpoint
                    .clone()
                    .map(|e| (e.0, EndpointSource::Arg, "export.endpoint".into()))
            });
        let endpoint = source
            .map(|(raw, source, key)| {
                resolve_endpoint(raw.trim(), source, protocol, insecure, signal).context(key)
            })
            .transpose()?;
        let (endpoint, protocol) = match endpoint {
            Some((endpoint, protocol)) => (Some(endpoint), protocol),
            None => (None, defaults.protocol),
        };
        Ok(ExportConfig {
            endpoint,
            protocol,
            headers,
            queue_capacity: batch.queue_capacity,
            max_batch: batch.max_batch,
            batch_timeout: batch.schedule_delay,
            export_timeout,
            batch_deadline: batch.deadline,
            tls,
            compression,
        })
    }
}

/// The signal's `OTEL_EXPORTER_OTLP_{SIGNAL}_{suffix}` variable, else the
/// shared `OTEL_EXPORTER_OTLP_{suffix}`; an invalid value counts as unset.
fn otlp_var<T>(
    env: &Env,
    signal: Signal,
    suffix: &str,
    parse: impl Fn(&str) -> Result<T>,
) -> Option<T> {
    env.otel(&signal.var(suffix), &parse)
        .or_else(|| env.otel(&format!("OTEL_EXPORTER_OTLP_{suffix}"), &parse))
}

/// The `OTEL_BSP_*` batch span processor settings.
struct BatchSettings {
    queue_capacity: usize,
    max_batch: usize,
    schedule_delay: Duration,
    deadline: Duration,
}

impl BatchSettings {
    fn resolve(env: &Env, file: &BatchSection, defaults: &ExportConfig) -> Self {
        let count = |key: &str, file: Option<NonZeroUsize>, default: usize| {
            env.otel(key, env::count)
                .or(file)
                .map_or(default, NonZeroUsize::get)
        };
        let millis = |key: &str, file: Option<Duration>, default: Duration| {
            env.otel(key, env::millis).or(file).unwrap_or(default)
        };
        let queue_capacity = count(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            file.max_queue_size,
            defaults.queue_capacity,
        );
        let mut max_batch = count(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            file.max_export_batch_size,
            defaults.max_batch,
        );
        // The spec requires a batch to fit in the queue.
        if max_batch > queue_capacity {
            tracing::warn!(
                max_batch,
                queue_capacity,
                "the export batch size exceeds the queue size; using the queue size"
            );
            max_batch = queue_capacity;
        }
        BatchSettings {
            queue_capacity,
            max_batch,
            schedule_delay: millis(
                "OTEL_BSP_SCHEDULE_DELAY",
                file.schedule_delay,
                defaults.batch_timeout,
            ),
            deadline: millis(
                "OTEL_BSP_EXPORT_TIMEOUT",
                file.export_timeout,
                defaults.batch_deadline,
            ),
        }
    }
}

impl Compression {
    fn parse(value: &str) -> Result<Self> {
        match value.trim() {
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            other => bail!("unknown compression {other:?}; expected gzip or none"),
        }
    }
}

/// Whether `raw` is an endpoint the exporter can use (the file's check,
/// before any other setting is known).
pub fn check_endpoint(raw: &str) -> Result<()> {
    let any = resolve_endpoint(
        raw.trim(),
        EndpointSource::SignalVar,
        Some(Protocol::Grpc),
        false,
        Signal::Traces,
    );
    any.map(drop)
}

fn resolve_endpoint(
    raw: &str,
    source: EndpointSource,
    protocol: Option<Protocol>,
    insecure: bool,
    signal: Signal,
) -> Result<(String, Protocol)> {
    // A gRPC endpoint may come without a scheme; `OTEL_EXPORTER_OTLP_INSECURE`
    // then says whether it is plaintext (the spec's only use of that variable).
    let raw = if raw.contains("://") {
        raw.to_owned()
    } else {
        let scheme = if insecure { "http" } else { "https" };
        format!("{scheme}://{raw}")
    };
    let raw = raw.as_str();
    let mut url = Url::parse(raw).with_context(|| {
        format!("invalid OTLP endpoint {raw:?}: expected e.g. http://localhost:4317")
    })?;
    match url.scheme() {
        "http" | "https" => {}
        scheme => {
            bail!("OTLP endpoint {raw:?}: unsupported scheme {scheme:?}, expected http://host:port")
        }
    }
    // Without an explicit protocol, the well-known OTLP ports say which one is
    // meant; anything else gets the spec's default.
    let protocol = protocol.unwrap_or(match url.port_or_known_default() {
        Some(4317) => Protocol::Grpc,
        _ => Protocol::HttpProtobuf,
    });
    let append_path = protocol == Protocol::HttpProtobuf
        && match source {
            EndpointSource::Arg => url.path() == "/",
            EndpointSource::SignalVar => false,
            EndpointSource::BaseVar => true,
        };
    if !append_path {
        return Ok((raw.to_owned(), protocol));
    }
    let path = format!("{}{}", url.path().trim_end_matches('/'), signal.http_path());
    url.set_path(&path);
    Ok((url.into(), protocol))
}

/// Parses `k=v,k2=v2` with percent-encoded values (W3C baggage style).
fn parse_headers(value: &str) -> Result<Vec<(String, String)>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (key, value) = entry
                .split_once('=')
                .with_context(|| format!("header {entry:?} is not key=value"))?;
            let key = key.trim();
            ensure!(!key.is_empty(), "header {entry:?} has an empty key");
            Ok((key.to_owned(), percent_decode(value.trim())?))
        })
        .collect()
}

/// Header names are case-insensitive, so a later `Authorization` replaces an
/// earlier `authorization`.
fn merge_headers(
    headers: &mut Vec<(String, String)>,
    overrides: impl IntoIterator<Item = (String, String)>,
) {
    for (key, value) in overrides {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
        headers.push((key, value));
    }
}

fn percent_decode(value: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escaped = bytes
                .get(i + 1..i + 3)
                .and_then(|hex_digits| hex::decode(hex_digits).ok())
                .with_context(|| format!("bad percent-escape in header value {value:?}"))?;
            out.extend(escaped);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .with_context(|| format!("header value {value:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        endpoint: Option<&str>,
        protocol: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<ExportConfig> {
        resolve_for(Signal::Traces, endpoint, protocol, vars)
    }

    fn resolve_for(
        signal: Signal,
        endpoint: Option<&str>,
        protocol: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<ExportConfig> {
        resolve_with_file(signal, "", endpoint, protocol, vars)
    }

    /// `file` is the text of the config file's `[export]` section.
    fn resolve_with_file(
        signal: Signal,
        file: &str,
        endpoint: Option<&str>,
        protocol: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<ExportConfig> {
        let flags = ExportFlags {
            endpoint: endpoint.map(Into::into),
            protocol: protocol.map(Protocol::parse).transpose()?,
        };
        let file = crate::config::File::parse(&format!("[export]\n{file}"))?;
        ExportConfig::resolve(signal, &file.export, &flags, &Env::from_pairs(vars))
    }

    #[test]
    fn the_file_sits_under_the_variables_and_the_flags() {
        let file = r#"
            endpoint = "http://file:4318"
            headers = { tenant = "file", team = "a" }
            timeout = "3s"
            compression = "gzip"
            certificate = "/etc/file-ca.pem"
            [export.traces]
            endpoint = "http://file-traces:4318/custom"
            headers = { tenant = "file-traces" }
            [export.batch]
            max_queue_size = 100
            schedule_delay = "250ms"
            [export.metrics]
            protocol = "grpc"
            endpoint = "file-metrics:4317"
            insecure = true
        "#;
        let traces = resolve_with_file(Signal::Traces, file, None, None, &[]).unwrap();
        // A signal's own endpoint is used as it is, like its variable's.
        assert_eq!(
            traces.endpoint.as_deref(),
            Some("http://file-traces:4318/custom")
        );
        assert_eq!(
            traces.headers,
            vec![
                ("team".into(), "a".into()),
                ("tenant".into(), "file-traces".into())
            ]
        );
        assert_eq!(traces.export_timeout, Duration::from_secs(3));
        assert_eq!(traces.compression, Compression::Gzip);
        assert_eq!(traces.tls.ca.as_deref(), Some("/etc/file-ca.pem".as_ref()));
        assert_eq!(traces.queue_capacity, 100);
        assert_eq!(traces.batch_timeout, Duration::from_millis(250));
        let metrics = resolve_with_file(Signal::Metrics, file, None, None, &[]).unwrap();
        assert_eq!(
            endpoint_and_protocol(metrics),
            (Some("http://file-metrics:4317".into()), Protocol::Grpc)
        );

        // A variable beats the file, even the file's signal table; headers
        // merge by name; an invalid variable leaves the file's value.
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "tenant=env"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "50"),
        ];
        let traces = resolve_with_file(Signal::Traces, file, None, None, &env).unwrap();
        assert_eq!(
            traces.endpoint.as_deref(),
            Some("http://env:4318/v1/traces")
        );
        assert_eq!(
            traces.headers,
            vec![("team".into(), "a".into()), ("tenant".into(), "env".into())]
        );
        assert_eq!(traces.export_timeout, Duration::from_secs(3));
        assert_eq!(traces.queue_capacity, 50);

        // A flag beats both.
        let traces =
            resolve_with_file(Signal::Traces, file, Some("http://flag:4317"), None, &env).unwrap();
        assert_eq!(
            endpoint_and_protocol(traces),
            (Some("http://flag:4317".into()), Protocol::Grpc)
        );
    }

    #[test]
    fn a_bad_endpoint_is_an_error_naming_its_source() {
        let err = resolve(None, None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c")]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "),
            "{err:#}"
        );
        let err = resolve(Some("ftp://c"), None, &[]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--otlp-endpoint: "),
            "{err:#}"
        );
        let err = resolve_with_file(Signal::Traces, "endpoint = \"ftp://c\"", None, None, &[])
            .unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    fn endpoint_and_protocol(cfg: ExportConfig) -> (Option<String>, Protocol) {
        (cfg.endpoint, cfg.protocol)
    }

    #[test]
    fn nothing_configured_means_console() {
        let cfg = resolve(None, None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap();
        assert_eq!(cfg, ExportConfig::default());
    }

    #[test]
    fn port_picks_protocol_when_not_given() {
        let cases = [
            (
                "http://localhost:4317",
                "http://localhost:4317",
                Protocol::Grpc,
            ),
            (
                "http://localhost:4318",
                "http://localhost:4318/v1/traces",
                Protocol::HttpProtobuf,
            ),
            (
                "http://collector:9000",
                "http://collector:9000/v1/traces",
                Protocol::HttpProtobuf,
            ),
        ];
        for (given, endpoint, protocol) in cases {
            let cfg = resolve(Some(given), None, &[]).unwrap();
            assert_eq!(
                endpoint_and_protocol(cfg),
                (Some(endpoint.into()), protocol),
                "{given}"
            );
        }
    }

    #[test]
    fn arg_with_a_path_is_kept() {
        let cfg = resolve(
            Some("http://gw:8080/otlp/traces"),
            Some("http/protobuf"),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://gw:8080/otlp/traces"));
    }

    #[test]
    fn args_beat_env() {
        let env = [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://env:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        let cfg = resolve(Some("http://arg:4318"), Some("grpc"), &env).unwrap();
        assert_eq!(
            endpoint_and_protocol(cfg),
            (Some("http://arg:4318".into()), Protocol::Grpc)
        );
    }

    #[test]
    fn traces_endpoint_is_used_as_is_and_beats_the_base_endpoint() {
        let env = [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://env:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
        ];
        let cfg = resolve(None, None, &env).unwrap();
        assert_eq!(
            endpoint_and_protocol(cfg),
            (
                Some("http://env:4318/custom".into()),
                Protocol::HttpProtobuf
            )
        );
    }

    #[test]
    fn base_endpoint_gets_the_traces_path_for_http_only() {
        let base = |endpoint, protocol| {
            let env = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ];
            resolve(None, None, &env).unwrap().endpoint.unwrap()
        };
        assert_eq!(
            base("http://c:4318", "http/protobuf"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            base("http://c:4318/", "http/protobuf"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            base("http://c/prefix/", "http/protobuf"),
            "http://c/prefix/v1/traces"
        );
        assert_eq!(base("http://c:4317", "grpc"), "http://c:4317");
    }

    #[test]
    fn traces_protocol_beats_the_generic_one() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ];
        let cfg = resolve(None, None, &env).unwrap();
        assert_eq!(
            endpoint_and_protocol(cfg),
            (Some("http://c:4318".into()), Protocol::Grpc)
        );
    }

    #[test]
    fn headers_are_decoded_and_trace_specific_ones_override() {
        let env = [
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=a%20b%2Cc , Tenant=one,",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "tenant=two"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ];
        let cfg = resolve(None, None, &env).unwrap();
        assert_eq!(
            cfg.headers,
            vec![
                ("api-key".into(), "a b,c".into()),
                ("tenant".into(), "two".into())
            ]
        );
        assert_eq!(cfg.export_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(resolve(Some("ftp://c:4317"), None, &[]).is_err());
        assert!(resolve(Some("http://c:4317"), Some("http/json"), &[]).is_err());
    }

    #[test]
    fn bad_variables_fall_back_to_defaults() {
        let bad_env = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
        ];
        let expected = resolve(Some("http://c:4318"), None, &[]).unwrap();
        for var in bad_env {
            let cfg = resolve(Some("http://c:4318"), None, &[var]).unwrap();
            assert_eq!(cfg, expected, "{var:?}");
        }
    }

    #[test]
    fn tls_files_compression_and_batch_settings_are_read() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/etc/traces-ca.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/client.key"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "4000"),
        ];
        let cfg = resolve(None, None, &env).unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("https://c:4318/v1/traces"));
        assert_eq!(
            cfg.tls,
            TlsFiles {
                ca: Some("/etc/traces-ca.pem".into()),
                client_cert: Some("/etc/client.pem".into()),
                client_key: Some("/etc/client.key".into()),
            }
        );
        assert_eq!(cfg.compression, Compression::Gzip);
        // A batch larger than the queue is cut to the queue's size.
        assert_eq!((cfg.queue_capacity, cfg.max_batch), (100, 100));
        assert_eq!(cfg.batch_timeout, Duration::from_millis(250));
        assert_eq!(cfg.batch_deadline, Duration::from_secs(4));
        let metrics = resolve_for(Signal::Metrics, None, None, &env).unwrap();
        assert_eq!(metrics.compression, Compression::None);
        assert_eq!(metrics.tls.ca.as_deref(), Some("/etc/ca.pem".as_ref()));
    }

    #[test]
    fn insecure_decides_the_scheme_of_a_bare_grpc_endpoint() {
        let bare = |insecure| {
            let env = [("OTEL_EXPORTER_OTLP_INSECURE", insecure)];
            resolve(Some("c:4317"), None, &env)
                .unwrap()
                .endpoint
                .unwrap()
        };
        assert_eq!(bare("TRUE"), "http://c:4317");
        assert_eq!(bare("false"), "https://c:4317");
        assert_eq!(bare("yes"), "https://c:4317");
    }

    #[test]
    fn logs_have_their_own_variables_and_path() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/t"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "tenant=l"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
        ];
        let cfg = resolve_for(Signal::Logs, None, None, &env).unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://base:4318/v1/logs"));
        assert_eq!(cfg.headers, vec![("tenant".into(), "l".into())]);
        assert_eq!(cfg.compression, Compression::Gzip);
        let env = [("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:4317")];
        let cfg = resolve_for(Signal::Logs, None, None, &env).unwrap();
        assert_eq!(
            endpoint_and_protocol(cfg),
            (Some("http://l:4317".into()), Protocol::Grpc)
        );
        // Only the traces' own endpoint: logs have none.
        let env = [(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://t:4318/v1/traces",
        )];
        assert_eq!(
            resolve_for(Signal::Logs, None, None, &env)
                .unwrap()
                .endpoint,
            None
        );
        let cfg = resolve_for(Signal::Logs, Some("http://arg:4318"), None, &[]).unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://arg:4318/v1/logs"));
    }

    #[test]
    fn metrics_have_their_own_variables_and_path() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/t"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "tenant=m"),
        ];
        let cfg = resolve_for(Signal::Metrics, None, None, &env).unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://base:4318/v1/metrics"));
        assert_eq!(cfg.headers, vec![("tenant".into(), "m".into())]);
        let env = [("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317")];
        let cfg = resolve_for(Signal::Metrics, None, None, &env).unwrap();
        assert_eq!(
            endpoint_and_protocol(cfg),
            (Some("http://m:4317".into()), Protocol::Grpc)
        );
        let cfg = resolve_for(Signal::Metrics, Some("http://arg:4318"), None, &[]).unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://arg:4318/v1/metrics"));
    }
}
