//! The span model every stage after protocol parsing speaks: what a finished
//! span looks like on its way to sampling and export.

use std::{borrow::Cow, sync::Arc};

use compact_str::CompactString;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    /// Sends a message a consumer handles later (Kafka Produce).
    Producer,
    /// Handles a message a producer sent (a Kafka record's processing).
    Consumer,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// Borrowed for the fixed values of the conventions ("http", "1.1",
    /// ...), inline up to 24 bytes (addresses, most paths and user
    /// agents): a span's strings cost no allocation of their own unless
    /// they are long. Allocations were an eighth of the agent's CPU under
    /// load, nearly all of it cache misses.
    Str(CompactString),
    Int(i64),
    Bool(bool),
}

impl AttrValue {
    /// A copy of `v`: inline when short, else on the heap.
    pub fn text(v: &str) -> Self {
        AttrValue::Str(CompactString::new(v))
    }
}

impl From<&'static str> for AttrValue {
    fn from(v: &'static str) -> Self {
        AttrValue::Str(CompactString::const_new(v))
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v.into())
    }
}
impl From<CompactString> for AttrValue {
    fn from(v: CompactString) -> Self {
        AttrValue::Str(v)
    }
}
impl From<Cow<'static, str>> for AttrValue {
    fn from(v: Cow<'static, str>) -> Self {
        match v {
            Cow::Borrowed(s) => s.into(),
            Cow::Owned(s) => s.into(),
        }
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

pub type Attributes = Vec<(&'static str, AttrValue)>;

/// The OpenTelemetry resource of one traced process.
#[derive(Debug, PartialEq)]
pub struct Resource {
    pub pid: u32,
    pub service_name: String,
    /// Every resource attribute, `service.name` included.
    pub attributes: Vec<(String, AttrValue)>,
    /// Its environment configures an OpenTelemetry SDK to export spans
    /// (see `sdk::DeferToSdk`).
    pub sdk_exports: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error(String),
}

/// Another span this one relates to without being its child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub sampled: bool,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// Unix epoch nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: Status,
    pub attributes: Attributes,
    /// A CLIENT span sent while several requests were open on its thread:
    /// the one read last, its probable parent.
    pub link: Option<SpanLink>,
    pub resource: Arc<Resource>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}
