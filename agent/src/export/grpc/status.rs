//! How a gRPC call ended, read from its response as tonic reads it: the
//! `grpc-status` (with `grpc-message` and `grpc-status-details-bin`) in the
//! trailers, or in the headers of a trailers-only response; without one,
//! the code the HTTP status maps to. Then the delay a throttling server
//! asked for in the status details.

use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};
use http::{HeaderMap, StatusCode};
use prost::Message;
use tonic::{Code, Status};

const DETAILS: &str = "grpc-status-details-bin";

/// gRPC's binary-header base64 (padding optional), as tonic decodes it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `Status::from_header_map`, which panics on status details that are not
/// base64: a collector's bad header must not take the exporter down. Such
/// details are left out (only a throttling delay is read from them).
fn status_in(headers: &HeaderMap) -> Option<Status> {
    match headers.get(DETAILS) {
        Some(d) if BASE64.decode(d.as_bytes()).is_err() => {
            tracing::debug!("the collector's {DETAILS} is not base64: left out");
            let mut headers = headers.clone();
            headers.remove(DETAILS);
            Status::from_header_map(&headers)
        }
        _ => Status::from_header_map(headers),
    }
}

/// The response head's verdict: `Err` when the call ended there, in a
/// trailers-only response or with an HTTP status other than 200 and no
/// gRPC status (a proxy's answer, whose body is no gRPC message).
pub(super) fn from_head(http: StatusCode, headers: &HeaderMap) -> Result<(), Status> {
    if let Some(status) = status_in(headers) {
        // Trailers-only: no message follows, not even after an OK.
        return Err(match status.code() {
            Code::Ok => missing_message(),
            _ => status,
        });
    }
    match http {
        StatusCode::OK => Ok(()),
        other => Err(from_http(other)),
    }
}

/// The trailers' verdict, once the body has ended. `partial`: the body
/// stopped inside its message.
pub(super) fn from_trailers(trailers: Option<&HeaderMap>, partial: bool) -> Result<(), Status> {
    match trailers.and_then(status_in) {
        Some(status) if status.code() == Code::Ok => Ok(()),
        Some(status) => Err(status),
        None if partial => Err(Status::internal("Unexpected EOF decoding stream.")),
        None => Err(Status::unknown(
            "protocol error: missing grpc-status trailer, stream was terminated without a final status",
        )),
    }
}

/// A call that ended well without the one message a unary call answers.
pub(super) fn missing_message() -> Status {
    Status::internal("Missing response message.")
}

/// gRPC's mapping of an HTTP status that came without a gRPC status
/// (doc/http-grpc-status-mapping.md), as tonic applies it.
fn from_http(http: StatusCode) -> Status {
    let code = match http {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            http.as_u16()
        ),
    )
}

/// The delay a server asked for in a `google.rpc.RetryInfo` detail of its
/// status (the OTLP spec's throttling signal for gRPC). The three messages
/// are declared here rather than pulling in a crate of all Google RPC types.
pub(in crate::export) fn retry_delay(details: &[u8]) -> Option<Duration> {
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
pub(in crate::export) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(in crate::export) struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(in crate::export) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(in crate::export) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn status_headers(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        headers
    }

    #[test]
    fn a_trailers_only_status_ends_the_call_in_the_head() {
        let details = Bytes::from_static(b"\x08\x0e");
        let busy = Status::with_details(Code::Unavailable, "busy, très", details.clone());
        let err = from_head(StatusCode::OK, &status_headers(&busy)).unwrap_err();
        assert_eq!(
            (err.code(), err.message(), err.details()),
            (Code::Unavailable, "busy, très", &details[..])
        );
        // OK with no message is no answer to a unary call.
        let ok = status_headers(&Status::ok(""));
        assert_eq!(
            from_head(StatusCode::OK, &ok).unwrap_err().code(),
            Code::Internal
        );
        assert!(from_head(StatusCode::OK, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn an_http_status_alone_maps_as_grpc_says() {
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
            (204, Code::Unknown),
        ] {
            let http = StatusCode::from_u16(http).unwrap();
            let err = from_head(http, &HeaderMap::new()).unwrap_err();
            assert_eq!(err.code(), code, "{http}");
        }
        // A gRPC status, where there is one, says more than the HTTP status.
        let denied = status_headers(&Status::permission_denied("no"));
        let err = from_head(StatusCode::SERVICE_UNAVAILABLE, &denied).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    #[test]
    fn the_trailers_end_the_call_and_without_a_status_it_failed() {
        let ok = status_headers(&Status::ok(""));
        assert!(from_trailers(Some(&ok), false).is_ok());
        let exhausted = status_headers(&Status::resource_exhausted("full"));
        let err = from_trailers(Some(&exhausted), true).unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::ResourceExhausted, "full")
        );
        assert_eq!(
            from_trailers(None, false).unwrap_err().code(),
            Code::Unknown
        );
        let no_status = HeaderMap::new();
        assert_eq!(
            from_trailers(Some(&no_status), false).unwrap_err().code(),
            Code::Unknown
        );
        assert_eq!(
            from_trailers(None, true).unwrap_err().code(),
            Code::Internal
        );
    }

    /// tonic's own reader panics on such details.
    #[test]
    fn status_details_that_are_not_base64_are_left_out() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "14".parse().unwrap());
        headers.insert("grpc-message", "busy".parse().unwrap());
        headers.insert(DETAILS, "not base64!".parse().unwrap());
        let status = from_trailers(Some(&headers), false).unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "busy")
        );
        assert!(status.details().is_empty());
        let status = from_head(StatusCode::OK, &headers).unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }

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
