//! gzip for export request bodies (`OTEL_EXPORTER_OTLP_COMPRESSION`): an
//! OTLP/HTTP body with `Content-Encoding: gzip`, a gRPC message with
//! `grpc-encoding: gzip`.

use std::io::Write as _;

use bytes::Bytes;

pub(super) fn compress(data: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory").into()
}
