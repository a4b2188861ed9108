//! The OTLP gRPC `Export` call with a request that is already encoded: the
//! batch is encoded once and every retry sends the same bytes, where the
//! generated client would take (and clone) a whole prost message per attempt.
//!
//! One client serves traces, metrics and logs: their responses are the
//! same on the wire (`partial_success` is field 1 in each, and its rejected
//! count field 1 in turn), so all are read as `ExportTraceServiceResponse`.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use std::time::Duration;

use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, EncodeBuf, Encoder};
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
    pub(super) fn new(channel: Channel, signal: Signal, gzip: bool, max_response: usize) -> Self {
        let path = match signal {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        };
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(max_response);
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        ExportClient { grpc, path }
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

/// The delay a server asked for in a `google.rpc.RetryInfo` detail of its
/// status (the OTLP spec's throttling signal for gRPC). The three messages
/// are declared here rather than pulling in a crate of all Google RPC types.
pub(super) fn retry_delay(details: &[u8]) -> Option<Duration> {
    const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
    let status = RpcStatus::decode(details).ok()?;
    let detail = status.details.iter().find(|d| d.type_url == RETRY_INFO)?;
    let delay = RetryInfo::decode(detail.value.as_slice())
        .ok()?
        .retry_delay?;
    let seconds = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?;
    Some(Duration::new(seconds, nanos))
}

/// `google.rpc.Status`, of which only the details matter here.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_is_read_from_status_details() {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        };
        let status = |type_url: &str| {
            RpcStatus {
                code: 14,
                message: "busy".into(),
                details: vec![Any {
                    type_url: type_url.into(),
                    value: info.encode_to_vec(),
                }],
            }
            .encode_to_vec()
        };
        assert_eq!(
            retry_delay(&status("type.googleapis.com/google.rpc.RetryInfo")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            retry_delay(&status("type.googleapis.com/google.rpc.Other")),
            None
        );
        assert_eq!(retry_delay(b"\xff\xff"), None);
        assert_eq!(retry_delay(&[]), None);
    }
}
