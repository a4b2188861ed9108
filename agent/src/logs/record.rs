//! The log record model the export stage speaks, as `span` is for spans.

use std::sync::Arc;

use crate::span::{Attributes, Resource, SpanId, TraceId};

/// A severity as the line showed it: the OpenTelemetry `SeverityNumber`
/// (1 TRACE … 24 FATAL4) and the text it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Severity {
    pub number: u8,
    pub text: String,
}

/// One line a traced thread wrote while it served a request.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// Unix epoch nanoseconds when the write returned.
    pub time_ns: u64,
    /// Unix epoch nanoseconds when the agent read it.
    pub observed_ns: u64,
    pub severity: Option<Severity>,
    pub body: String,
    pub attributes: Attributes,
    /// The span the thread served.
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// That span was sampled (exported); the record's W3C trace flags.
    pub sampled: bool,
    pub resource: Arc<Resource>,
}
