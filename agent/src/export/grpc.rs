//! The OTLP gRPC `Export` call with a request that is already encoded: the
//! batch is encoded once and every retry sends the same bytes, where the
//! generated client would take (and clone) a whole prost message per attempt.
//!
//! One client serves traces and metrics: their responses are the same on
//! the wire (`partial_success` is field 1 in both, and its rejected count
//! field 1 in turn), so both are read as `ExportTraceServiceResponse`.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstDecoder;

use super::Signal;

/// Sends encoded export requests of one signal over one channel.
#[derive(Clone)]
pub(super) struct ExportClient {
    grpc: tonic::client::Grpc<Channel>,
    path: &'static str,
}

impl ExportClient {
    pub(super) fn new(channel: Channel, signal: Signal) -> Self {
        let path = match signal {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        };
        ExportClient {
            grpc: tonic::client::Grpc::new(channel),
            path,
        }
    }

    pub(super) async fn export(
        &mut self,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
        self.grpc
            .unary(request, PathAndQuery::from_static(self.path), EncodedCodec)
            .await
    }
}

/// Writes pre-encoded bytes as the message; reads the response with prost.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PassThrough;
    type Decoder = ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(Default::default())
    }
}

struct PassThrough;

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
