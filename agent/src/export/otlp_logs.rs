//! Log record → OTLP protobuf: one `ExportLogsServiceRequest` per batch,
//! encoded straight from the records (field numbers from
//! opentelemetry-proto's `logs/v1/logs.proto`; fields in tag order, as
//! prost writes them), sharing the resource, scope and attribute encoding
//! with spans (`otlp`).

use super::otlp::{attribute, by_resource, resource, scope};
use super::proto::Writer;
use crate::logs::LogRecord;
use crate::span::Resource;

/// About what a record with a short line and two attributes takes.
const TYPICAL_RECORD_BYTES: usize = 256;

/// The encoded `ExportLogsServiceRequest` carrying `records`.
pub fn encode_request(records: &[LogRecord]) -> Vec<u8> {
    let mut w = Writer::with_capacity(records.len() * TYPICAL_RECORD_BYTES);
    for (r, records) in by_resource(records, |l| &l.resource) {
        w.message(1, |w| resource_logs(w, r, &records));
    }
    w.into_bytes()
}

fn resource_logs(w: &mut Writer, r: &Resource, records: &[&LogRecord]) {
    w.message(1, |w| resource(w, r));
    w.message(2, |w| {
        w.message(1, scope);
        for l in records {
            w.message(2, |w| record(w, l));
        }
    });
}

fn record(w: &mut Writer, l: &LogRecord) {
    w.fixed64_if_set(1, l.time_ns);
    if let Some(s) = &l.severity {
        w.varint_field(2, u64::from(s.number));
        w.bytes_if_set(3, s.text.as_bytes());
    }
    // The body is always there, even empty: `AnyValue`'s `oneof` string.
    w.message(5, |w| w.bytes(1, l.body.as_bytes()));
    for (key, value) in &l.attributes {
        attribute(w, 6, key, value);
    }
    // W3C trace flags: whether the span the record names was sampled
    // (and so exported).
    w.fixed32_if_set(8, u32::from(l.sampled));
    w.bytes(9, &l.trace_id);
    w.bytes(10, &l.span_id);
    w.fixed64_if_set(11, l.observed_ns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::resource;
    use crate::logs::Severity;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;

    fn log(res: &std::sync::Arc<Resource>, body: &str, sampled: bool) -> LogRecord {
        LogRecord {
            time_ns: 1_700_000_000_000_000_000,
            observed_ns: 1_700_000_000_000_000_500,
            severity: Some(Severity {
                number: 13,
                text: "WARNING".into(),
            }),
            body: body.into(),
            attributes: vec![("log.iostream", "stderr".into())],
            trace_id: [7; 16],
            span_id: [8; 8],
            sampled,
            resource: res.clone(),
        }
    }

    /// What a collector reads; prost writing it back byte for byte shows
    /// the encoding is canonical (fields by tag, defaults left out).
    #[test]
    fn records_map_field_by_field() {
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        let mut plain = log(&a, "", false);
        plain.severity = None;
        plain.attributes.clear();
        let records = [log(&a, "disk é full", true), log(&b, "x", true), plain];
        let bytes = encode_request(&records);
        let req = ExportLogsServiceRequest::decode(&bytes[..]).expect("valid protobuf");
        assert_eq!(req.encode_to_vec(), bytes);
        let [ra, rb] = &req.resource_logs[..] else {
            panic!("two resources expected")
        };
        let scope = &ra.scope_logs[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "clew");
        let [first, third] = &scope.log_records[..] else {
            panic!("two records of resource a expected")
        };
        assert_eq!(first.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(first.observed_time_unix_nano, 1_700_000_000_000_000_500);
        assert_eq!(
            (first.severity_number, first.severity_text.as_str()),
            (13, "WARNING")
        );
        assert_eq!(
            first.body.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("disk é full".into()))
        );
        assert_eq!(first.attributes[0].key, "log.iostream");
        assert_eq!(
            (first.trace_id.clone(), first.span_id.clone()),
            (vec![7; 16], vec![8; 8])
        );
        assert_eq!(first.flags, 1);
        assert_eq!((third.severity_number, third.flags), (0, 0));
        assert_eq!(
            third.body.as_ref().unwrap().value,
            Some(any_value::Value::StringValue(String::new()))
        );
        assert_eq!(rb.scope_logs[0].log_records.len(), 1);
    }
}
