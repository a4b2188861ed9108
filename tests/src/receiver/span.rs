//! Received spans flattened with their resource, so tests can filter them directly.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// OTLP span kinds (`Span.SpanKind`).
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
pub const KIND_PRODUCER: i32 = 4;
pub const KIND_CONSUMER: i32 = 5;
/// OTLP status codes (`Status.StatusCode`).
pub const STATUS_UNSET: i32 = 0;
pub const STATUS_ERROR: i32 = 2;

/// An attribute value, reduced to what the tests compare.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Arrays, maps and bytes, rendered for display only.
    Other(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Other(o) => write!(f, "{o}"),
        }
    }
}

/// One span as received, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct RecvSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    /// The W3C `tracestate` the span carries.
    pub trace_state: String,
    pub name: String,
    pub kind: i32,
    pub status_code: i32,
    pub status_message: String,
    pub attrs: HashMap<String, Value>,
    pub resource: HashMap<String, Value>,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A string attribute of `attrs`.
pub(super) fn str_attr<'a>(attrs: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    match attrs.get(key) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

/// An integer attribute of `attrs`.
pub(super) fn int_attr(attrs: &HashMap<String, Value>, key: &str) -> Option<i64> {
    match attrs.get(key) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

impl RecvSpan {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        str_attr(&self.attrs, key)
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        int_attr(&self.attrs, key)
    }

    pub fn res_str(&self, key: &str) -> Option<&str> {
        match self.resource.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn res_int(&self, key: &str) -> Option<i64> {
        int_attr(&self.resource, key)
    }

    pub fn service(&self) -> Option<&str> {
        self.res_str("service.name")
    }

    pub fn is_server(&self) -> bool {
        self.kind == KIND_SERVER
    }

    pub fn is_client(&self) -> bool {
        self.kind == KIND_CLIENT
    }

    /// The request path: `url.path` (server spans), else the path part of
    /// `url.full` (client spans, which semconv gives the full URL instead).
    pub fn path(&self) -> Option<&str> {
        self.attr_str("url.path").or_else(|| {
            let full = self.attr_str("url.full")?;
            let after_scheme = &full[full.find("://")? + 3..];
            let path = &after_scheme[after_scheme.find('/')?..];
            Some(path.split(['?', '#']).next().unwrap_or(path))
        })
    }

    /// A SERVER/CLIENT span of `service` whose `url.path` is `path`.
    pub fn is(&self, kind: i32, service: &str, path: &str) -> bool {
        self.kind == kind && self.service() == Some(service) && self.path() == Some(path)
    }
}

fn kind_name(kind: i32) -> String {
    match kind {
        1 => "INTERNAL".into(),
        KIND_SERVER => "SERVER".into(),
        KIND_CLIENT => "CLIENT".into(),
        4 => "PRODUCER".into(),
        5 => "CONSUMER".into(),
        k => format!("kind{k}"),
    }
}

fn sorted(map: &HashMap<String, Value>) -> String {
    let map: BTreeMap<_, _> = map.iter().collect();
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for RecvSpan {
    /// One line per span, all fields, for failure dumps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} svc={} trace={} span={} parent={} status={}{} dur={}us | {} | resource: {}",
            kind_name(self.kind),
            self.name,
            self.service().unwrap_or("?"),
            self.trace_id,
            self.span_id,
            self.parent_span_id.as_deref().unwrap_or("-"),
            self.status_code,
            if self.status_message.is_empty() {
                String::new()
            } else {
                format!("({:?})", self.status_message)
            },
            self.end_ns.saturating_sub(self.start_ns) / 1000,
            sorted(&self.attrs),
            sorted(&self.resource),
        )
    }
}

fn value_of(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
        Some(any_value::Value::IntValue(i)) => Value::Int(*i),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
        Some(other) => Value::Other(format!("{other:?}")),
        None => Value::Other("<empty>".into()),
    }
}

pub(super) fn attr_map(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_of(&kv.value)))
        .collect()
}

/// A resource's attributes (none when it is absent).
pub(super) fn resource_map(
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
) -> HashMap<String, Value> {
    resource
        .map(|r| attr_map(&r.attributes))
        .unwrap_or_default()
}

/// Flattens an export request into spans.
pub fn flatten(req: &ExportTraceServiceRequest) -> Vec<RecvSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = resource_map(rs.resource.as_ref());
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let status = span.status.clone().unwrap_or_default();
            out.push(RecvSpan {
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty())
                    .then(|| hex::encode(&span.parent_span_id)),
                trace_state: span.trace_state.clone(),
                name: span.name.clone(),
                kind: span.kind,
                status_code: status.code,
                status_message: status.message,
                attrs: attr_map(&span.attributes),
                resource: resource.clone(),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
            });
        }
    }
    out
}
