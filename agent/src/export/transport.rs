//! Sends one OTLP request over gRPC (tonic's channel) or HTTP/protobuf (reqwest) and sorts failures into retryable or not.

use std::error::Error;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Endpoint;
use tonic::Code;

use super::config::Compression;
use super::grpc::{self, ExportClient};
use super::gzip;
use super::tls::TlsPem;
use super::{ExportConfig, Protocol, Signal};

/// Bound on the response body read: a collector (or something posing as
/// one) must not make the agent buffer an unbounded answer. Partial-success
/// responses are a few hundred bytes; a longer one counts as accepted,
/// unread, over either protocol, rather than as a failure to retry.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// The collector may be down, restarting or overloaded: retry later,
    /// not before `retry_after` when it said so.
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Sending the same batch again cannot succeed (bad request, auth, ...).
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    fn transient(reason: String) -> Self {
        SendError::Transient {
            reason,
            retry_after: None,
        }
    }
}

pub(super) enum Transport {
    Grpc {
        // Boxed: the client is several times the size of the HTTP variant.
        client: Box<ExportClient>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
    },
}

impl Transport {
    /// Connects lazily, so a collector that is down at start-up only delays export.
    pub(super) fn new(endpoint: &str, cfg: &ExportConfig, signal: Signal) -> Result<Self> {
        let https = endpoint.starts_with("https://");
        let tls = TlsPem::read(&cfg.tls)?;
        let gzip = cfg.compression == Compression::Gzip;
        let timeout = cfg.export_timeout;
        match cfg.protocol {
            Protocol::Grpc => {
                let mut channel = Endpoint::from_shared(endpoint.to_owned())
                    .with_context(|| format!("invalid gRPC endpoint {endpoint:?}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout);
                if https {
                    channel = channel
                        .tls_config(tls.grpc())
                        .context("setting up TLS for the gRPC exporter")?;
                }
                let mut metadata = MetadataMap::new();
                for (key, value) in &cfg.headers {
                    metadata.insert(
                        MetadataKey::from_bytes(key.as_bytes())
                            .with_context(|| format!("invalid gRPC metadata key {key:?}"))?,
                        MetadataValue::try_from(value.as_str())
                            .with_context(|| format!("invalid gRPC metadata value for {key:?}"))?,
                    );
                }
                let client = ExportClient::new(
                    channel.connect_lazy(),
                    signal,
                    metadata,
                    gzip,
                    MAX_RESPONSE_BYTES,
                );
                Ok(Transport::Grpc {
                    client: Box::new(client),
                })
            }
            Protocol::HttpProtobuf => {
                let mut default_headers = HeaderMap::new();
                for (key, value) in &cfg.headers {
                    default_headers.insert(
                        HeaderName::from_bytes(key.as_bytes())
                            .with_context(|| format!("invalid HTTP header name {key:?}"))?,
                        HeaderValue::from_str(value)
                            .with_context(|| format!("invalid HTTP header value for {key:?}"))?,
                    );
                }
                // Inserted last: a user header must not break the body's type.
                default_headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                if gzip {
                    default_headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                let builder = reqwest::Client::builder()
                    .default_headers(default_headers)
                    .connect_timeout(timeout)
                    .timeout(timeout);
                let client = tls
                    .http(builder)?
                    .build()
                    .context("building the OTLP/HTTP client")?;
                Ok(Transport::Http {
                    client,
                    url: endpoint.to_owned(),
                    gzip,
                })
            }
        }
    }

    /// Sends one encoded export request; `Ok` carries how many spans (or
    /// data points) the collector rejected in a partial success.
    pub(super) async fn send(&mut self, request: &Bytes) -> Result<u64, SendError> {
        let response = match self {
            Transport::Grpc { client } => client.export(request).await.map_err(grpc_error)?,
            Transport::Http { client, url, gzip } => {
                // Compressed per attempt: retries are rare, and the batch
                // stays encoded once either way.
                let body = if *gzip {
                    gzip::compress(request)
                } else {
                    request.clone()
                };
                let response = client
                    .post(url.as_str())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SendError::transient(describe(&e)))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(http_error(status, retry_after(response.headers())));
                }
                let body = read_bounded(response).await?;
                // The data is in; a body we cannot read only hides
                // partial-success details. Read as a trace response: see grpc.rs.
                ExportTraceServiceResponse::decode(body.as_slice()).unwrap_or_default()
            }
        };
        let Some(partial) = response.partial_success else {
            return Ok(0);
        };
        let rejected = partial.rejected_spans.max(0) as u64;
        if rejected > 0 || !partial.error_message.is_empty() {
            tracing::warn!(
                rejected,
                message = partial.error_message,
                "the collector accepted the export only in part"
            );
        }
        Ok(rejected)
    }
}

/// Reads at most [`MAX_RESPONSE_BYTES`]; a longer body is cut there (its
/// partial-success details are then lost, the data was accepted anyway).
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, SendError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SendError::transient(describe(&e)))?
    {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BYTES {
            tracing::debug!(
                "OTLP response body longer than {MAX_RESPONSE_BYTES} bytes; not read further"
            );
            break;
        }
    }
    Ok(body)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Retryable codes as listed by the OTLP spec; everything else is permanent.
fn grpc_error(status: tonic::Status) -> SendError {
    let message = match status.source() {
        Some(source) => format!(
            "gRPC {:?}: {}: {}",
            status.code(),
            status.message(),
            describe(source)
        ),
        None => format!("gRPC {:?}: {}", status.code(), status.message()),
    };
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::Transient {
            reason: message,
            retry_after: grpc::status::retry_delay(status.details()),
        },
        _ => SendError::Permanent(message),
    }
}

/// Retryable statuses as listed by the OTLP/HTTP spec.
fn http_error(status: reqwest::StatusCode, retry_after: Option<Duration>) -> SendError {
    let reason = format!("HTTP {status}");
    match status.as_u16() {
        429 | 502 | 503 | 504 => SendError::Transient {
            reason,
            retry_after,
        },
        _ => SendError::Permanent(reason),
    }
}

/// The error with its sources: the root cause ("Connection refused") is what
/// the operator needs, and it sits at the bottom of the chain.
pub fn describe(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their inner error verbatim.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::encode_request;
    use crate::export::test_support::{free_port, gunzip, resource, span, Collector, GrpcAnswer};
    use crate::export::test_tls::Pki;
    use crate::export::{Compression, TlsFiles};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn one_span_request() -> Bytes {
        encode_request(&[span(&resource(7, "svc"), 1, 1, None)]).into()
    }

    /// Sends one span and returns what the collector got, which must be it.
    async fn delivered(
        transport: &mut Transport,
        collector: &mut Collector,
        protocol: Protocol,
    ) -> crate::export::test_support::Received {
        let rejected = transport.send(&one_span_request()).await.unwrap();
        assert_eq!(rejected, 0, "{protocol}");
        let received = collector.next().await;
        assert_eq!(
            received.request,
            ExportTraceServiceRequest::decode(one_span_request()).unwrap(),
            "{protocol}"
        );
        received
    }

    #[tokio::test]
    async fn delivers_request_and_headers_over_both_protocols() {
        let headers = vec![("X-Tenant".to_owned(), "acme".to_owned())];
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut collector = Collector::start(protocol, 0).await;
            let cfg = ExportConfig {
                protocol,
                headers: headers.clone(),
                ..ExportConfig::default()
            };
            let mut transport =
                Transport::new(&collector.endpoint(), &cfg, Signal::Traces).unwrap();
            let received = delivered(&mut transport, &mut collector, protocol).await;
            assert_eq!(
                received.header("x-tenant").as_deref(),
                Some("acme"),
                "{protocol}"
            );
            // Byte for byte as encoded, with gRPC's length prefix in front.
            let request = one_span_request();
            let body = match protocol {
                Protocol::Grpc => [&grpc_prefix(0, request.len())[..], &request].concat(),
                Protocol::HttpProtobuf => request.to_vec(),
            };
            assert_eq!(received.body, body, "{protocol}");
            if protocol == Protocol::HttpProtobuf {
                assert_eq!(
                    received.header("content-type").as_deref(),
                    Some("application/x-protobuf")
                );
            }
        }
    }

    #[tokio::test]
    async fn unreachable_collector_is_transient_for_both_protocols() {
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let cfg = ExportConfig {
                protocol,
                ..ExportConfig::default()
            };
            let mut transport = Transport::new(&endpoint, &cfg, Signal::Traces).unwrap();
            let err = transport.send(&one_span_request()).await.unwrap_err();
            assert!(
                matches!(err, SendError::Transient { .. }),
                "{protocol}: {err:?}"
            );
            assert!(
                err.to_string().contains("refused"),
                "{protocol}: root cause missing in {err}"
            );
        }
    }

    #[test]
    fn failures_are_classified_per_spec() {
        let transient = |e: SendError| matches!(e, SendError::Transient { .. });
        for code in [429, 502, 503, 504] {
            assert!(
                transient(http_error(
                    reqwest::StatusCode::from_u16(code).unwrap(),
                    None
                )),
                "{code}"
            );
        }
        for code in [400, 401, 404, 413, 500] {
            assert!(
                !transient(http_error(
                    reqwest::StatusCode::from_u16(code).unwrap(),
                    None
                )),
                "{code}"
            );
        }
        assert!(transient(grpc_error(tonic::Status::unavailable("down"))));
        assert!(transient(grpc_error(tonic::Status::resource_exhausted(
            "busy"
        ))));
        assert!(!transient(grpc_error(tonic::Status::invalid_argument(
            "bad"
        ))));
        assert!(!transient(grpc_error(tonic::Status::unauthenticated(
            "who"
        ))));
    }

    /// gRPC's message prefix: the compressed flag, then the length.
    fn grpc_prefix(compressed: u8, len: usize) -> [u8; 5] {
        let len = u32::try_from(len).unwrap().to_be_bytes();
        [compressed, len[0], len[1], len[2], len[3]]
    }

    /// What one span's export gets from a gRPC collector answering `answer`.
    async fn grpc_outcome(answer: GrpcAnswer) -> Result<u64, SendError> {
        let collector = Collector::grpc_answering(answer).await;
        let cfg = ExportConfig {
            protocol: Protocol::Grpc,
            ..ExportConfig::default()
        };
        let mut transport = Transport::new(&collector.endpoint(), &cfg, Signal::Traces).unwrap();
        transport.send(&one_span_request()).await
    }

    #[tokio::test]
    async fn grpc_partial_success_is_read() {
        let outcome = grpc_outcome(GrpcAnswer::Accept { rejected: 3 }).await;
        assert_eq!(outcome.unwrap(), 3);
    }

    #[tokio::test]
    async fn grpc_status_in_the_response_headers_is_read_with_its_retry_delay() {
        use grpc::status::{Any, ProtoDuration, RetryInfo, RpcStatus};
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        };
        let details = RpcStatus {
            code: Code::Unavailable as i32,
            message: "busy".into(),
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        };
        let status =
            tonic::Status::with_details(Code::Unavailable, "busy", details.encode_to_vec().into());
        match grpc_outcome(GrpcAnswer::Refuse(status)).await {
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                assert_eq!(retry_after, Some(Duration::from_millis(2500)));
                assert!(reason.contains("Unavailable: busy"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let refused = grpc_outcome(GrpcAnswer::Refuse(tonic::Status::invalid_argument("bad")));
        match refused.await {
            Err(SendError::Permanent(reason)) => {
                assert!(reason.contains("InvalidArgument: bad"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// No gRPC status, as from a proxy: the code is read off the HTTP
    /// status as gRPC maps it, and decides the retry, whether or not the
    /// proxy sent a page (which is no gRPC message to read).
    #[tokio::test]
    async fn grpc_http_status_alone_maps_to_grpc_codes() {
        use axum::http::StatusCode;
        let pages = [
            "",
            "<html><body>503 Service Temporarily Unavailable</body></html>",
        ];
        for ((status, code, transient), page) in [
            (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", true),
            (StatusCode::BAD_GATEWAY, "Unavailable", true),
            (StatusCode::TOO_MANY_REQUESTS, "Unavailable", true),
            (StatusCode::UNAUTHORIZED, "Unauthenticated", false),
            (StatusCode::FORBIDDEN, "PermissionDenied", false),
            (StatusCode::NOT_FOUND, "Unimplemented", false),
            (StatusCode::INTERNAL_SERVER_ERROR, "Unknown", false),
        ]
        .into_iter()
        .flat_map(|answer| pages.map(|page| (answer, page)))
        {
            let err = grpc_outcome(GrpcAnswer::Http(status, page)).await;
            let err = err.unwrap_err();
            assert_eq!(
                matches!(err, SendError::Transient { .. }),
                transient,
                "{status} {page:?}: {err:?}"
            );
            assert!(err.to_string().contains(code), "{status} {page:?}: {err}");
        }
    }

    /// Accepted, as OTLP/HTTP reads a body over the bound: a refusal would
    /// be retried, and the collector would get a batch it took already.
    #[tokio::test]
    async fn grpc_response_over_the_bound_is_accepted_unread() {
        let oversized = GrpcAnswer::Oversized(MAX_RESPONSE_BYTES + 1);
        assert_eq!(grpc_outcome(oversized).await.unwrap(), 0);
    }

    fn tls_files(pki: &Pki, ca: &str, client: bool) -> TlsFiles {
        TlsFiles {
            ca: Some(pki.path(ca)),
            client_cert: client.then(|| pki.path("client.pem")),
            client_key: client.then(|| pki.path("client.key")),
        }
    }

    #[tokio::test]
    async fn mtls_with_gzip_delivers_and_the_wrong_ca_or_no_client_cert_do_not() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let pki = Pki::new(&format!("transport-{protocol}").replace('/', "-"));
            let mut collector = Collector::tls(protocol, &pki).await;
            let endpoint = collector.endpoint();
            assert!(endpoint.starts_with("https://"), "{endpoint}");
            let transport = |tls| {
                let cfg = ExportConfig {
                    protocol,
                    tls,
                    compression: Compression::Gzip,
                    ..ExportConfig::default()
                };
                Transport::new(&endpoint, &cfg, Signal::Traces).unwrap()
            };

            let mut good = transport(tls_files(&pki, "ca.pem", true));
            let received = delivered(&mut good, &mut collector, protocol).await;
            let encoding = match protocol {
                Protocol::Grpc => "grpc-encoding",
                Protocol::HttpProtobuf => "content-encoding",
            };
            assert_eq!(
                received.header(encoding).as_deref(),
                Some("gzip"),
                "{protocol}"
            );
            let compressed = match protocol {
                Protocol::Grpc => {
                    let (prefix, message) = received.body.split_at(5);
                    assert_eq!(prefix, grpc_prefix(1, message.len()));
                    message
                }
                Protocol::HttpProtobuf => &received.body[..],
            };
            assert_eq!(gunzip(compressed), one_span_request(), "{protocol}");

            let mut wrong_ca = transport(tls_files(&pki, "other-ca.pem", true));
            let err = wrong_ca.send(&one_span_request()).await.unwrap_err();
            assert!(
                matches!(err, SendError::Transient { .. })
                    && err.to_string().contains("certificate"),
                "{protocol}: {err}"
            );
            let mut no_client_cert = transport(tls_files(&pki, "ca.pem", false));
            assert!(
                no_client_cert.send(&one_span_request()).await.is_err(),
                "{protocol}"
            );
            assert!(collector.drain().is_empty(), "{protocol}");
        }
    }

    #[test]
    fn missing_tls_files_and_half_an_identity_are_start_up_errors() {
        let cfg = |tls| ExportConfig {
            tls,
            ..ExportConfig::default()
        };
        let missing = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let err = Transport::new("https://c:4318", &cfg(missing), Signal::Traces)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.pem"),
            "{err:#}"
        );
        let half = TlsFiles {
            client_cert: Some("/etc/hostname".into()),
            ..TlsFiles::default()
        };
        let err = Transport::new("https://c:4318", &cfg(half), Signal::Traces)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("CLIENT_KEY"), "{err:#}");
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            retry_after(&headers)
        };
        assert_eq!(header("3"), Some(Duration::from_secs(3)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let delay = header(&in_a_minute).unwrap();
        assert!(
            delay > Duration::from_secs(55) && delay <= Duration::from_secs(60),
            "{delay:?}"
        );
        assert_eq!(
            header("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(header("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
