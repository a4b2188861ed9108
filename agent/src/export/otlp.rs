//! Span → OTLP protobuf: one `ExportTraceServiceRequest` per batch, encoded
//! straight from the spans (field numbers from opentelemetry-proto's
//! `trace/v1/trace.proto`, `common/v1/common.proto`, `resource/v1/resource.proto`;
//! fields in tag order, as prost writes them).

use std::sync::Arc;

use foldhash::HashMap;

use opentelemetry_proto::tonic::trace::v1::{span, status, SpanFlags};

use super::proto::Writer;
use crate::span::{AttrValue, Resource, Span, SpanKind, Status};

/// About what an HTTP span with its dozen attributes takes, so the buffer
/// rarely grows (and copies itself) while a batch is written.
const TYPICAL_SPAN_BYTES: usize = 512;

/// Length-prefix bytes set aside for a span (128 bytes to 16 KiB)...
const SPAN_WIDTH: usize = 2;
/// ...and for the spans of a process in a batch (16 KiB to 2 MiB).
const GROUP_WIDTH: usize = 3;

/// The encoded `ExportTraceServiceRequest` carrying `spans`.
pub fn encode_request(spans: &[Span]) -> Vec<u8> {
    let mut w = Writer::with_capacity(spans.len() * TYPICAL_SPAN_BYTES);
    for (resource, spans) in by_resource(spans, |s| &s.resource) {
        w.message_sized(1, GROUP_WIDTH, |w| resource_spans(w, resource, &spans));
    }
    w.into_bytes()
}

/// Items of one process share one `Arc<Resource>`, so its address is the
/// grouping key; first-seen order keeps the output deterministic. A batch
/// mostly holds runs of one process's items: the last group is tried first.
pub(super) fn by_resource<T>(
    items: &[T],
    resource: impl Fn(&T) -> &Arc<Resource>,
) -> Vec<(&Resource, Vec<&T>)> {
    let mut groups: Vec<(&Resource, Vec<&T>)> = Vec::new();
    let mut index: HashMap<*const Resource, usize> = HashMap::default();
    let mut last = None;
    for item in items {
        let r = resource(item);
        let key = Arc::as_ptr(r);
        let group = match last {
            Some((k, g)) if k == key => g,
            _ => *index.entry(key).or_insert_with(|| {
                groups.push((r, Vec::new()));
                groups.len() - 1
            }),
        };
        last = Some((key, group));
        groups[group].1.push(item);
    }
    groups
}

/// The `Resource` message's fields.
pub(super) fn resource(w: &mut Writer, resource: &Resource) {
    for (key, value) in &resource.attributes {
        attribute(w, 1, key, value);
    }
}

/// The `InstrumentationScope` message's fields: the agent itself.
pub(super) fn scope(w: &mut Writer) {
    w.bytes_if_set(1, b"clew");
    w.bytes_if_set(2, env!("CARGO_PKG_VERSION").as_bytes());
}

fn resource_spans(w: &mut Writer, r: &Resource, spans: &[&Span]) {
    w.message(1, |w| resource(w, r));
    w.message_sized(2, GROUP_WIDTH, |w| {
        w.message(1, scope);
        for s in spans {
            w.message_sized(2, SPAN_WIDTH, |w| span(w, s));
        }
    });
}

fn span(w: &mut Writer, s: &Span) {
    w.bytes(1, &s.trace_id);
    w.bytes(2, &s.span_id);
    w.bytes_if_set(3, s.trace_state.as_bytes());
    if let Some(parent) = &s.parent_span_id {
        w.bytes(4, parent);
    }
    w.bytes_if_set(5, s.name.as_bytes());
    let kind = match s.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    w.varint_field(6, kind as u64);
    w.fixed64_if_set(7, s.start_ns);
    w.fixed64_if_set(8, s.end_ns);
    for (key, value) in &s.attributes {
        attribute(w, 9, key, value);
    }
    if let Some(l) = &s.link {
        w.message(13, |w| {
            w.bytes(1, &l.trace_id);
            w.bytes(2, &l.span_id);
        });
    }
    // An absent status reads as Unset and costs no bytes.
    if let Status::Error(message) = &s.status {
        w.message(15, |w| {
            w.bytes_if_set(2, message.as_bytes());
            w.varint_field(3, status::StatusCode::Error as u64);
        });
    }
    w.fixed32_if_set(16, flags(s));
}

/// W3C trace flags in the low byte (only "sampled" exists), plus whether the
/// parent is remote, which the agent always knows: a SERVER span's parent
/// arrived in the request's `traceparent`, while a CLIENT span's parent is a
/// span of the same process. Roots say "not remote", as the OTel SDKs do.
fn flags(span: &Span) -> u32 {
    let sampled = u32::from(span.sampled);
    // A CONSUMER span's parent came in the message, as a SERVER span's came in the request.
    let remote_parent =
        matches!(span.kind, SpanKind::Server | SpanKind::Consumer) && span.parent_span_id.is_some();
    let remote = if remote_parent {
        SpanFlags::ContextIsRemoteMask as u32
    } else {
        0
    };
    sampled | SpanFlags::ContextHasIsRemoteMask as u32 | remote
}

/// Field `tag` holding a `KeyValue` with its `AnyValue`, whose `oneof`
/// member is written even when it holds the default.
pub(super) fn attribute(w: &mut Writer, tag: u32, key: &str, value: &AttrValue) {
    let key = key.as_bytes();
    match value {
        AttrValue::Str(s) => w.named_bytes(tag, key, 1, s.as_bytes()),
        AttrValue::Bool(b) => w.named_varint(tag, key, 2, u64::from(*b)),
        // int64: negatives are sign-extended to ten bytes, as prost does.
        AttrValue::Int(i) => w.named_varint(tag, key, 3, *i as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{resource, span};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Status as ProtoStatus;
    use prost::Message;

    /// What a collector reads; prost writing it back byte for byte shows the
    /// encoding is canonical (fields by tag, defaults left out).
    fn export_request(spans: &[Span]) -> ExportTraceServiceRequest {
        let bytes = encode_request(spans);
        let request = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid protobuf");
        assert_eq!(request.encode_to_vec(), bytes);
        request
    }

    #[test]
    fn spans_map_field_by_field() {
        let res = resource(42, "checkout");
        let mut server = span(&res, 1, 0xa, Some(0xf));
        server.trace_state = "vendor=x".into();
        server.name = "GET /cart".into();
        server.start_ns = 1_700_000_000_000_000_000;
        server.end_ns = server.start_ns + 5_000;
        server.status = Status::Error("boom".into());
        server.attributes = vec![
            ("url.path", "/cart".into()),
            ("http.response.status_code", 500.into()),
            ("network.peer.verified", true.into()),
            // Defaults and negatives: a oneof member is always written.
            ("x.empty", "".into()),
            ("x.negative", (-1i64).into()),
            ("x.false", false.into()),
            ("x.utf8", "é→".into()),
        ];
        let mut client = span(&res, 1, 0xb, Some(0xa));
        client.kind = SpanKind::Client;
        client.sampled = false;
        let root = span(&res, 2, 0xc, None);

        let request = export_request(&[server.clone(), client, root]);
        let [group] = &request.resource_spans[..] else {
            panic!("one resource expected")
        };
        let scope = &group.scope_spans[0];
        let meta = scope.scope.as_ref().unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.version.as_str()),
            ("clew", env!("CARGO_PKG_VERSION"))
        );
        let [s, c, r] = &scope.spans[..] else {
            panic!("three spans expected")
        };

        assert_eq!(s.trace_id, server.trace_id.to_vec());
        assert_eq!(s.span_id, server.span_id.to_vec());
        assert_eq!(s.parent_span_id, [0, 0, 0, 0, 0, 0, 0, 0xf]);
        assert_eq!(s.trace_state, "vendor=x");
        assert_eq!(s.name, "GET /cart");
        assert_eq!(s.kind, 2);
        assert_eq!(
            (s.start_time_unix_nano, s.end_time_unix_nano),
            (server.start_ns, server.end_ns)
        );
        assert_eq!(
            s.status,
            Some(ProtoStatus {
                message: "boom".into(),
                code: 2
            })
        );
        let attrs: Vec<_> = s
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap()))
            .collect();
        assert_eq!(
            attrs,
            [
                ("url.path", any_value::Value::StringValue("/cart".into())),
                ("http.response.status_code", any_value::Value::IntValue(500)),
                ("network.peer.verified", any_value::Value::BoolValue(true)),
                ("x.empty", any_value::Value::StringValue(String::new())),
                ("x.negative", any_value::Value::IntValue(-1)),
                ("x.false", any_value::Value::BoolValue(false)),
                ("x.utf8", any_value::Value::StringValue("é→".into())),
            ]
        );
        // sampled | has_is_remote | is_remote
        assert_eq!(s.flags, 0x301);

        assert_eq!(c.kind, 3);
        assert_eq!(c.status, None);
        assert_eq!(c.flags, 0x100);

        assert!(r.parent_span_id.is_empty());
        assert_eq!(r.flags, 0x101);
    }

    #[test]
    fn spans_group_by_resource() {
        let (a, b) = (resource(1, "a"), resource(2, "b"));
        let spans = [
            span(&a, 1, 1, None),
            span(&b, 2, 2, None),
            span(&a, 3, 3, None),
        ];
        let request = export_request(&spans);
        let summary: Vec<_> = request
            .resource_spans
            .iter()
            .map(|rs| {
                let attrs = &rs.resource.as_ref().unwrap().attributes;
                let name = attrs.iter().find(|kv| kv.key == "service.name").unwrap();
                let ids: Vec<u8> = rs.scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.span_id[7])
                    .collect();
                (name.value.clone().unwrap().value.unwrap(), ids)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (any_value::Value::StringValue("a".into()), vec![1, 3]),
                (any_value::Value::StringValue("b".into()), vec![2]),
            ]
        );
    }
}
