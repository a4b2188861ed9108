//! The OTLP gRPC `Export` call, framed here and sent over tonic's
//! `Channel`, which still does TLS, timeouts, connecting and reconnecting.
//! The batch is encoded once and every attempt hands those same bytes to
//! the HTTP/2 stream: tonic's codec path would first copy the whole
//! message into its own buffer, at every attempt.
//!
//! One client serves traces, metrics and logs: their responses are the
//! same on the wire (`partial_success` is field 1 in each, and its rejected
//! count field 1 in turn), so all are read as `ExportTraceServiceResponse`.

mod message;
pub(super) mod status;

use std::future::poll_fn;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use http_body::Body as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::Status;
use tower_service::Service as _;

use self::message::{RequestBody, ResponseMessage};
use super::gzip;
use super::Signal;

/// Sends encoded export requests of one signal over one channel.
pub(super) struct ExportClient {
    channel: Channel,
    path: &'static str,
    /// gRPC's request headers with the user's metadata.
    headers: HeaderMap,
    gzip: bool,
    /// Bound on the response message, in bytes.
    max_response: usize,
}

impl ExportClient {
    pub(super) fn new(
        channel: Channel,
        signal: Signal,
        metadata: MetadataMap,
        gzip: bool,
        max_response: usize,
    ) -> Self {
        let path = match signal {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        };
        let mut headers = metadata.into_headers();
        // As tonic does: the protocol's own headers win over the user's.
        for reserved in ["grpc-message", "grpc-message-type", "grpc-status"] {
            headers.remove(reserved);
        }
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if gzip {
            headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        }
        ExportClient {
            channel,
            path,
            headers,
            gzip,
            max_response,
        }
    }

    /// Sends one encoded export request and reads the collector's answer.
    pub(super) async fn export(
        &mut self,
        message: &Bytes,
    ) -> Result<ExportTraceServiceResponse, Status> {
        poll_fn(|cx| self.channel.poll_ready(cx))
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {e}")))?;
        let request = self.request(message)?;
        let response = self
            .channel
            .call(request)
            .await
            // As tonic maps them: a refused connection is Unavailable, the
            // endpoint's timeout Cancelled, and the cause stays the source.
            .map_err(|e| Status::from_error(e.into()))?;
        read_response(response, self.max_response).await
    }

    /// The unary call's request, whose body hands on `message` itself (or,
    /// with gzip, its compressed copy).
    fn request(&self, message: &Bytes) -> Result<http::Request<Body>, Status> {
        // Compressed per attempt: retries are rare, and the batch stays
        // encoded once either way.
        let body = if self.gzip {
            RequestBody::new(gzip::compress(message), true)?
        } else {
            RequestBody::new(message.clone(), false)?
        };
        let mut request = http::Request::new(Body::new(body));
        *request.method_mut() = Method::POST;
        // The channel puts the endpoint's scheme and authority in front.
        *request.uri_mut() = Uri::from_static(self.path);
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

/// Reads a unary response as tonic does: a verdict in the head, or the one
/// message (at most `limit` bytes) and then the verdict in the trailers.
async fn read_response(
    response: http::Response<Body>,
    limit: usize,
) -> Result<ExportTraceServiceResponse, Status> {
    let (head, mut body) = response.into_parts();
    status::from_head(head.status, &head.headers)?;
    let mut message = ResponseMessage::new(limit);
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame?.into_data() {
            Ok(data) => message.push(&data)?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    status::from_trailers(trailers.as_ref(), message.is_partial())?;
    if let Some(len) = message.skipped() {
        tracing::debug!(
            bytes = len,
            "the collector's answer is over the bound: its partial-success details are not read"
        );
    }
    let message = message.complete().ok_or_else(status::missing_message)?;
    ExportTraceServiceResponse::decode(message).map_err(|e| Status::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::gunzip;
    use tonic::metadata::MetadataValue;
    use tonic::transport::Endpoint;

    fn client(signal: Signal, gzip: bool) -> ExportClient {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-tenant", MetadataValue::from_static("acme"));
        // Reserved by gRPC: replaced or dropped, as tonic does.
        metadata.insert("content-type", MetadataValue::from_static("text/plain"));
        metadata.insert("grpc-status", MetadataValue::from_static("0"));
        // Lazy: nothing connects until a request is sent.
        let channel = Endpoint::from_static("http://127.0.0.1:4317").connect_lazy();
        ExportClient::new(channel, signal, metadata, gzip, 1024)
    }

    async fn data_frames(body: &mut Body) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            frames.push(frame.unwrap().into_data().map_err(|_| "not data").unwrap());
        }
        assert!(body.is_end_stream());
        frames
    }

    #[tokio::test]
    async fn the_message_leaves_as_the_bytes_it_was_encoded_into() {
        let message = Bytes::from(vec![7; 300]);
        let mut request = client(Signal::Traces, false).request(&message).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.version(), Version::HTTP_2);
        let headers = request.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["x-tenant"], "acme");
        assert!(!headers.contains_key("grpc-status"));
        assert!(!headers.contains_key("grpc-encoding"));

        let frames = data_frames(request.body_mut()).await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], [0, 0, 0, 1, 44][..]);
        // Not a copy: the very allocation the batch was encoded into.
        assert_eq!(frames[1].as_ptr(), message.as_ptr());
        assert_eq!(frames[1].len(), message.len());
    }

    #[tokio::test]
    async fn gzip_compresses_and_flags_the_message() {
        let message = Bytes::from(vec![7; 300]);
        let mut request = client(Signal::Traces, true).request(&message).unwrap();
        assert_eq!(request.headers()["grpc-encoding"], "gzip");
        let frames = data_frames(request.body_mut()).await;
        let len = u32::try_from(frames[1].len()).unwrap().to_be_bytes();
        assert_eq!(frames[0], [&[1][..], &len].concat());
        assert_eq!(gunzip(&frames[1]), message);
    }

    #[tokio::test]
    async fn each_signal_calls_its_own_service() {
        for (signal, service) in [
            (Signal::Traces, "trace.v1.TraceService"),
            (Signal::Metrics, "metrics.v1.MetricsService"),
            (Signal::Logs, "logs.v1.LogsService"),
        ] {
            let request = client(signal, false).request(&Bytes::new()).unwrap();
            let path = format!("/opentelemetry.proto.collector.{service}/Export");
            assert_eq!(request.uri(), path.as_str());
        }
    }
}
