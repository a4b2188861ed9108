//! Sends one OTLP request over gRPC (tonic) or HTTP/protobuf (reqwest) and sorts failures into retryable or not.

use std::error::Error;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Endpoint;
use tonic::Code;

use super::grpc::ExportClient;
use super::{Protocol, Signal};

#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// The collector may be down, restarting or overloaded: retry later.
    #[error("{0}")]
    Transient(String),
    /// Sending the same batch again cannot succeed (bad request, auth, ...).
    #[error("{0}")]
    Permanent(String),
}

pub(super) enum Transport {
    Grpc {
        // Boxed: the client is several times the size of the HTTP variant.
        client: Box<ExportClient>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Transport {
    /// Connects lazily, so a collector that is down at start-up only delays export.
    pub(super) fn new(
        endpoint: &str,
        protocol: Protocol,
        headers: &[(String, String)],
        timeout: Duration,
        signal: Signal,
    ) -> Result<Self> {
        match protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.to_owned())
                    .with_context(|| format!("invalid gRPC endpoint {endpoint:?}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                let mut metadata = MetadataMap::new();
                for (key, value) in headers {
                    metadata.insert(
                        MetadataKey::from_bytes(key.as_bytes())
                            .with_context(|| format!("invalid gRPC metadata key {key:?}"))?,
                        MetadataValue::try_from(value.as_str())
                            .with_context(|| format!("invalid gRPC metadata value for {key:?}"))?,
                    );
                }
                Ok(Transport::Grpc {
                    client: Box::new(ExportClient::new(channel, signal)),
                    metadata,
                })
            }
            Protocol::HttpProtobuf => {
                let mut default_headers = HeaderMap::new();
                for (key, value) in headers {
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
                let client = reqwest::Client::builder()
                    .default_headers(default_headers)
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .build()
                    .context("building the OTLP/HTTP client")?;
                Ok(Transport::Http {
                    client,
                    url: endpoint.to_owned(),
                })
            }
        }
    }

    /// Sends one encoded export request; `Ok` carries how many spans (or
    /// data points) the collector rejected in a partial success.
    pub(super) async fn send(&mut self, request: &Bytes) -> Result<u64, SendError> {
        let response = match self {
            Transport::Grpc { client, metadata } => {
                let mut call = tonic::Request::new(request.clone());
                *call.metadata_mut() = metadata.clone();
                client.export(call).await.map_err(grpc_error)?.into_inner()
            }
            Transport::Http { client, url } => {
                let response = client
                    .post(url.as_str())
                    .body(request.clone())
                    .send()
                    .await
                    .map_err(|e| SendError::Transient(describe(&e)))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(http_error(status));
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| SendError::Transient(describe(&e)))?;
                // The data is in; a body we cannot read only hides
                // partial-success details. Read as a trace response: see grpc.rs.
                ExportTraceServiceResponse::decode(body).unwrap_or_default()
            }
        };
        let rejected = response.partial_success.map_or(0, |p| p.rejected_spans);
        Ok(rejected.max(0) as u64)
    }
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
        | Code::DataLoss => SendError::Transient(message),
        _ => SendError::Permanent(message),
    }
}

/// Retryable statuses as listed by the OTLP/HTTP spec.
fn http_error(status: reqwest::StatusCode) -> SendError {
    let message = format!("HTTP {status}");
    match status.as_u16() {
        429 | 502 | 503 | 504 => SendError::Transient(message),
        _ => SendError::Permanent(message),
    }
}

/// The error with its sources: the root cause ("Connection refused") is what
/// the operator needs, and it sits at the bottom of the chain.
fn describe(err: &(dyn Error + 'static)) -> String {
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
    use crate::export::test_support::{free_port, resource, span, Collector};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn one_span_request() -> Bytes {
        encode_request(&[span(&resource(7, "svc"), 1, 1, None)]).into()
    }

    #[tokio::test]
    async fn delivers_request_and_headers_over_both_protocols() {
        let headers = vec![("X-Tenant".to_owned(), "acme".to_owned())];
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut collector = Collector::start(protocol, 0).await;
            let mut transport = Transport::new(
                &collector.endpoint(),
                protocol,
                &headers,
                Duration::from_secs(5),
                Signal::Traces,
            )
            .unwrap();
            assert_eq!(
                transport.send(&one_span_request()).await.unwrap(),
                0,
                "{protocol}"
            );
            let received = collector.next().await;
            assert_eq!(
                received.request,
                ExportTraceServiceRequest::decode(one_span_request()).unwrap(),
                "{protocol}"
            );
            assert_eq!(
                received.header("x-tenant").as_deref(),
                Some("acme"),
                "{protocol}"
            );
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
            let mut transport = Transport::new(
                &endpoint,
                protocol,
                &[],
                Duration::from_secs(5),
                Signal::Traces,
            )
            .unwrap();
            let err = transport.send(&one_span_request()).await.unwrap_err();
            assert!(
                matches!(err, SendError::Transient(_)),
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
        let transient = |e: SendError| matches!(e, SendError::Transient(_));
        for code in [429, 502, 503, 504] {
            assert!(
                transient(http_error(reqwest::StatusCode::from_u16(code).unwrap())),
                "{code}"
            );
        }
        for code in [400, 401, 404, 413, 500] {
            assert!(
                !transient(http_error(reqwest::StatusCode::from_u16(code).unwrap())),
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
}
