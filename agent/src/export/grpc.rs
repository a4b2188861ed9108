//! The OTLP gRPC `Export` call with a request that is already encoded: the
//! batch is encoded once and every retry sends the same bytes, where the
//! generated client would take (and clone) a whole prost message per attempt.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstDecoder;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends encoded `ExportTraceServiceRequest`s over one channel.
#[derive(Clone)]
pub(super) struct TraceClient(tonic::client::Grpc<Channel>);

impl TraceClient {
    pub(super) fn new(channel: Channel) -> Self {
        TraceClient(tonic::client::Grpc::new(channel))
    }

    pub(super) async fn export(
        &mut self,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
        self.0
            .unary(request, PathAndQuery::from_static(EXPORT), EncodedCodec)
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
