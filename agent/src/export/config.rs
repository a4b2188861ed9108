//! Export settings resolved from CLI arguments and the standard `OTEL_EXPORTER_OTLP_*` variables.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use reqwest::Url;

/// OTLP wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    fn parse(value: &str) -> Result<Self> {
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
        }
    }
}

/// Which OTLP signal a configuration is for: each has its own variables
/// (`OTEL_EXPORTER_OTLP_TRACES_*`, `OTEL_EXPORTER_OTLP_METRICS_*`) over
/// the shared ones, and its own HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn var(self, suffix: &str) -> String {
        let signal = match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        };
        format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}")
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
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

impl ExportConfig {
    /// Resolution order: explicit arguments, then `OTEL_EXPORTER_OTLP_TRACES_*`
    /// (or `_METRICS_*`), then `OTEL_EXPORTER_OTLP_*`. Without a protocol,
    /// port 4317 means grpc and anything else http/protobuf. No endpoint
    /// anywhere means the console view (for traces; no OTLP for metrics).
    pub fn from_env_and_args(
        signal: Signal,
        endpoint: Option<String>,
        protocol: Option<String>,
    ) -> Result<Self> {
        Self::resolve(signal, endpoint, protocol, |key| std::env::var(key).ok())
    }

    /// Pure resolution over an environment lookup, so every case is testable.
    fn resolve(
        signal: Signal,
        endpoint: Option<String>,
        protocol: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        // The spec treats empty variables as unset; blank arguments likewise.
        let non_empty = |v: &String| !v.trim().is_empty();
        let var = |key: &str| env(key).filter(non_empty);
        let first_var = |keys: [&str; 2]| keys.into_iter().find_map(var);
        let (protocol_var, headers_var) = (signal.var("PROTOCOL"), signal.var("HEADERS"));
        let (timeout_var, endpoint_var) = (signal.var("TIMEOUT"), signal.var("ENDPOINT"));

        let protocol = protocol
            .filter(non_empty)
            .or_else(|| first_var([&protocol_var, "OTEL_EXPORTER_OTLP_PROTOCOL"]))
            .map(|p| Protocol::parse(&p))
            .transpose()?;

        let mut headers = Vec::new();
        // Signal-specific headers come last so they override same-named generic ones.
        for key in ["OTEL_EXPORTER_OTLP_HEADERS", &headers_var] {
            if let Some(value) = var(key) {
                let parsed = parse_headers(&value).with_context(|| format!("invalid {key}"))?;
                merge_headers(&mut headers, parsed);
            }
        }

        let export_timeout =
            match first_var([&timeout_var, "OTEL_EXPORTER_OTLP_TIMEOUT"]) {
                Some(ms) => Duration::from_millis(ms.trim().parse().with_context(|| {
                    format!("invalid OTLP timeout {ms:?}: expected milliseconds")
                })?),
                None => ExportConfig::default().export_timeout,
            };

        let source = endpoint
            .filter(non_empty)
            .map(|e| (e, EndpointSource::Arg))
            .or_else(|| var(&endpoint_var).map(|e| (e, EndpointSource::SignalVar)))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| (e, EndpointSource::BaseVar)));
        let Some((raw, source)) = source else {
            return Ok(ExportConfig {
                headers,
                export_timeout,
                ..ExportConfig::default()
            });
        };

        let (endpoint, protocol) = resolve_endpoint(raw.trim(), source, protocol, signal)?;
        Ok(ExportConfig {
            endpoint: Some(endpoint),
            protocol,
            headers,
            export_timeout,
            ..ExportConfig::default()
        })
    }
}

fn resolve_endpoint(
    raw: &str,
    source: EndpointSource,
    protocol: Option<Protocol>,
    signal: Signal,
) -> Result<(String, Protocol)> {
    let mut url = Url::parse(raw).with_context(|| {
        format!("invalid OTLP endpoint {raw:?}: expected e.g. http://localhost:4317")
    })?;
    match url.scheme() {
        "http" => {}
        "https" => bail!(
            "OTLP endpoint {raw:?}: https is not supported (no TLS in this build); \
             export to a local collector over http"
        ),
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
fn merge_headers(headers: &mut Vec<(String, String)>, overrides: Vec<(String, String)>) {
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
        let (endpoint, protocol) = (endpoint.map(Into::into), protocol.map(Into::into));
        ExportConfig::resolve(signal, endpoint, protocol, |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
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
    fn bad_settings_are_errors() {
        for endpoint in ["https://c:4317", "localhost:4317"] {
            assert!(resolve(Some(endpoint), None, &[]).is_err(), "{endpoint}");
        }
        assert!(resolve(Some("http://c:4317"), Some("http/json"), &[]).is_err());
        let bad_env = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        ];
        for var in bad_env {
            assert!(
                resolve(Some("http://c:4317"), None, &[var]).is_err(),
                "{var:?}"
            );
        }
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
