//! Span → OTLP protobuf mapping: one `ExportTraceServiceRequest` per batch.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span as ProtoSpan, SpanFlags, Status as ProtoStatus,
};

use crate::span::{AttrValue, Resource, Span, SpanKind, Status};

pub fn export_request(spans: &[Span]) -> ExportTraceServiceRequest {
    // Spans of one process share one `Arc<Resource>`, so its address is the
    // grouping key; first-seen order keeps the output deterministic.
    let mut groups: Vec<(&Resource, Vec<ProtoSpan>)> = Vec::new();
    let mut index: HashMap<*const Resource, usize> = HashMap::new();
    for span in spans {
        let group = *index.entry(Arc::as_ptr(&span.resource)).or_insert_with(|| {
            groups.push((&span.resource, Vec::new()));
            groups.len() - 1
        });
        groups[group].1.push(proto_span(span));
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: resource
                        .attributes
                        .iter()
                        .map(|(key, value)| key_value(key, value))
                        .collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "clew".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn proto_span(span: &Span) -> ProtoSpan {
    ProtoSpan {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        parent_span_id: span
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        trace_state: span.trace_state.clone(),
        flags: flags(span),
        name: span.name.clone(),
        kind: match span.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: span.start_ns,
        end_time_unix_nano: span.end_ns,
        attributes: span
            .attributes
            .iter()
            .map(|(key, value)| key_value(key, value))
            .collect(),
        // An absent status reads as Unset and costs no bytes.
        status: match &span.status {
            Status::Unset => None,
            Status::Error(message) => Some(ProtoStatus {
                message: message.clone(),
                code: status::StatusCode::Error as i32,
            }),
        },
        ..Default::default()
    }
}

/// W3C trace flags in the low byte (only "sampled" exists), plus whether the
/// parent is remote, which the agent always knows: a SERVER span's parent
/// arrived in the request's `traceparent`, while a CLIENT span's parent is a
/// span of the same process. Roots say "not remote", as the OTel SDKs do.
fn flags(span: &Span) -> u32 {
    let sampled = u32::from(span.sampled);
    let remote_parent = span.kind == SpanKind::Server && span.parent_span_id.is_some();
    let remote = if remote_parent {
        SpanFlags::ContextIsRemoteMask as u32
    } else {
        0
    };
    sampled | SpanFlags::ContextHasIsRemoteMask as u32 | remote
}

fn key_value(key: &str, value: &AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{resource, span};

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
