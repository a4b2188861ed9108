//! Received OTLP log records, flattened with their resource, so tests can
//! compare them with the lines a service wrote.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use std::collections::HashMap;
use std::fmt;

use super::span::{attr_map, resource_map, str_attr, Value};

/// One log record as received.
#[derive(Clone, Debug)]
pub struct RecvLog {
    pub time_ns: u64,
    pub observed_ns: u64,
    pub severity_number: i32,
    pub severity_text: String,
    /// The body when it is a string (else its debug rendering).
    pub body: String,
    pub attrs: HashMap<String, Value>,
    pub resource: HashMap<String, Value>,
    /// Hex; empty when the record names no span.
    pub trace_id: String,
    pub span_id: String,
    pub flags: u32,
}

impl RecvLog {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        str_attr(&self.attrs, key)
    }

    pub fn service(&self) -> Option<&str> {
        str_attr(&self.resource, "service.name")
    }
}

impl fmt::Display for RecvLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut attrs: Vec<String> = self.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        attrs.sort();
        write!(
            f,
            "LOG svc={} trace={} span={} flags={} severity={}({:?}) body={:?} | {}",
            self.service().unwrap_or("?"),
            self.trace_id,
            self.span_id,
            self.flags,
            self.severity_number,
            self.severity_text,
            self.body,
            attrs.join(" ")
        )
    }
}

/// Flattens an export request into log records.
pub fn flatten(req: &ExportLogsServiceRequest) -> Vec<RecvLog> {
    let mut out = Vec::new();
    for rl in &req.resource_logs {
        let resource = resource_map(rl.resource.as_ref());
        for l in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
            let body = match l.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            out.push(RecvLog {
                time_ns: l.time_unix_nano,
                observed_ns: l.observed_time_unix_nano,
                severity_number: l.severity_number,
                severity_text: l.severity_text.clone(),
                body,
                attrs: attr_map(&l.attributes),
                resource: resource.clone(),
                trace_id: hex::encode(&l.trace_id),
                span_id: hex::encode(&l.span_id),
                flags: l.flags,
            });
        }
    }
    out
}
