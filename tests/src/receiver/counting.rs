//! The benchmark's OTLP/gRPC trace service: it counts the spans of each
//! export without decoding them. Decoding every span and attribute, as the
//! tests' receiver does, cost the benchmark's receiver as much CPU as the
//! agent it measures, on the same two cores as the traced server and its
//! load: a collector's work that the comparison with the baseline then
//! charged to the agent.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::{count, Shared};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest` down to its spans, each kept as the bytes
/// it arrived as (a slice of the request, not a copy).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Counted {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<CountedResource>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountedResource {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<CountedScope>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountedScope {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
}

impl Counted {
    pub(super) fn spans(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// Serves `TraceService/Export` (and answers any other method
/// `Unimplemented`, as a generated server does).
#[derive(Clone)]
pub(super) struct CountingTraces(pub(super) Shared);

impl NamedService for CountingTraces {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(Shared);

impl UnaryService<Counted> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, req: Request<Counted>) -> Self::Future {
        count(&self.0, req.get_ref().spans());
        Box::pin(async { Ok(Response::new(ExportTraceServiceResponse::default())) })
    }
}

impl<B> Service<http::Request<B>> for CountingTraces
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT {
            return Box::pin(async {
                Ok(Status::unimplemented("only trace exports are counted").into_http())
            });
        }
        let store = self.0.clone();
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default())
                .apply_compression_config(accept, EnabledCompressionEncodings::default());
            Ok(grpc.unary(Export(store), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    #[test]
    fn counts_the_spans_of_every_resource_and_scope() {
        let span = |name: &str| Span {
            name: name.into(),
            ..Default::default()
        };
        let scope = |n: usize| ScopeSpans {
            spans: (0..n).map(|i| span(&format!("s{i}"))).collect(),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(0)],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(2)],
                    ..Default::default()
                },
            ],
        };
        let counted = Counted::decode(Bytes::from(req.encode_to_vec())).unwrap();
        assert_eq!(counted.spans(), 5);
    }
}
