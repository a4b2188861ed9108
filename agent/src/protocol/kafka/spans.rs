//! Kafka operations as spans, per the messaging semantic conventions
//! v1.37.0 (Development status): `send {topic}` (PRODUCER), `receive
//! {topic}` (CLIENT), `process {topic}` (CONSUMER); a traced broker's
//! side is a SERVER span named after the Kafka API (`Produce {topic}`).

use std::{borrow::Cow, sync::Arc};

use kafka_protocol::ResponseError;

use super::session::{Op, OpKind};
use crate::{
    clock::Clock,
    metrics::{Instrument, Measurement},
    protocol::{
        common::{ip_text, push_peer, Frame, CONNECTION_CLOSED},
        ConnFacts, Role,
    },
    span::{AttrValue, Attributes, Resource, Span, SpanKind, Status},
};

pub fn to_span(op: Op, conn: &ConnFacts, resource: Arc<Resource>, clock: &Clock) -> Span {
    let (operation, op_type, kind, role) = match op.kind {
        OpKind::Send => ("send", "send", SpanKind::Producer, Role::Client),
        OpKind::Receive => ("receive", "receive", SpanKind::Client, Role::Client),
        OpKind::Process => ("process", "process", SpanKind::Consumer, Role::Client),
        OpKind::Broker(api) => (broker_operation(api), "", SpanKind::Server, Role::Server),
    };
    let name: Cow<'static, str> = match (&op.kind, &op.topic) {
        (OpKind::Broker(api), Some(t)) => format!("{api:?} {t}").into(),
        (OpKind::Broker(api), None) => format!("{api:?}").into(),
        (_, Some(t)) => format!("{operation} {t}").into(),
        (_, None) => operation.into(),
    };
    let mut a: Attributes = vec![
        ("messaging.system", "kafka".into()),
        ("messaging.operation.name", operation.into()),
    ];
    if !op_type.is_empty() {
        a.push(("messaging.operation.type", op_type.into()));
    }
    if let Some(t) = op.topic {
        a.push(("messaging.destination.name", t.into()));
    }
    if let Some(p) = op.partition {
        a.push(("messaging.destination.partition.id", p.to_string().into()));
    }
    if let Some(o) = op.offset {
        a.push(("messaging.kafka.offset", o.into()));
    }
    // The conventions count messages of batch operations only.
    if op.count != 1 && op.kind != OpKind::Process {
        a.push(("messaging.batch.message_count", i64::from(op.count).into()));
    }
    if let Some(c) = op.client_id.filter(|c| !c.is_empty()) {
        a.push(("messaging.client.id", c.into()));
    }
    if let Some(g) = op.group {
        a.push(("messaging.consumer.group.name", g.into()));
    }
    if op.tombstone {
        a.push(("messaging.kafka.message.tombstone", AttrValue::Bool(true)));
    }
    let server = match role {
        Role::Client => conn.peer,
        Role::Server => conn.local,
    };
    if let Some(s) = server {
        a.push(("server.address", ip_text(s.ip()).into()));
        a.push(("server.port", i64::from(s.port()).into()));
    }
    push_peer(&mut a, role, conn);
    let status = match failure(op.error, op.closed) {
        Some(name) => {
            a.push(("error.type", name.clone().into()));
            Status::Error(name)
        }
        None => Status::Unset,
    };
    let frame = Frame {
        ctx: op.ctx,
        role,
        start_ns: op.start_ns,
        end_ns: op.end_ns,
    };
    let mut span = frame.into_span(name, status, a, resource, clock);
    span.kind = kind;
    span
}

/// `messaging.client.operation.duration` (send, receive) or
/// `messaging.process.duration`; a broker's side has no such metric.
pub fn measure<'a>(op: &Op, conn: &ConnFacts) -> Option<Measurement<'a>> {
    let (operation, instrument) = match op.kind {
        OpKind::Send => ("send", Instrument::MessagingClient),
        OpKind::Receive => ("receive", Instrument::MessagingClient),
        OpKind::Process => ("process", Instrument::MessagingProcess),
        OpKind::Broker(_) => return None,
    };
    let mut a: Attributes = vec![
        ("messaging.system", "kafka".into()),
        ("messaging.operation.name", operation.into()),
        ("messaging.operation.type", operation.into()),
    ];
    if let Some(t) = &op.topic {
        a.push(("messaging.destination.name", t.clone().into()));
    }
    if let Some(g) = &op.group {
        a.push(("messaging.consumer.group.name", g.clone().into()));
    }
    let error = failure(op.error, op.closed);
    let failed = error.is_some();
    if let Some(e) = error {
        a.push(("error.type", e.into()));
    }
    if let (Instrument::MessagingClient, Some(s)) = (instrument, conn.peer) {
        a.push(("server.address", ip_text(s.ip()).into()));
        a.push(("server.port", i64::from(s.port()).into()));
    }
    Some(Measurement {
        instrument,
        duration_ns: op.end_ns.saturating_sub(op.start_ns),
        attributes: a,
        path: None,
        failed,
    })
}

/// `error.type` of a failed operation: the Kafka error the response
/// named, or `connection_closed` when none came.
fn failure(error: i16, closed: bool) -> Option<String> {
    if closed {
        return Some(CONNECTION_CLOSED.to_owned());
    }
    ResponseError::try_from_code(error).map(|e| error_name(&e))
}

fn broker_operation(api: kafka_protocol::messages::ApiKey) -> &'static str {
    use kafka_protocol::messages::ApiKey;
    match api {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        _ => "request",
    }
}

/// Kafka's own name of an error (`UNKNOWN_TOPIC_OR_PARTITION`), as its
/// clients and brokers log it; the crate spells it in camel case.
fn error_name(e: &ResponseError) -> String {
    let camel = e.to_string();
    if let ResponseError::Unknown(code) = e {
        return format!("KAFKA_ERROR_{code}");
    }
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, error: i16) -> Op {
        Op {
            kind,
            ctx: crate::nesting::SpanCtx {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent: None,
                sampled: false,
                trace_state: String::new(),
                uncertain: None,
            },
            start_ns: 1_000,
            end_ns: 3_001_000,
            topic: Some("orders".into()),
            partition: Some(3),
            offset: Some(42),
            count: 1,
            client_id: Some("rdkafka".into()),
            group: Some("billing".into()),
            error,
            closed: false,
            tombstone: false,
        }
    }

    #[test]
    fn an_operation_the_connection_closed_on_is_an_error() {
        let conn = ConnFacts {
            peer: Some("10.0.0.5:9092".parse().unwrap()),
            local: Some("10.0.0.1:40000".parse().unwrap()),
            tls: false,
        };
        let closed = Op {
            closed: true,
            ..op(OpKind::Send, 0)
        };
        let m = measure(&closed, &conn).unwrap();
        assert!(m.failed);
        let resource = crate::export::test_support::resource(1, "svc");
        let span = to_span(closed, &conn, resource, &Clock::new());
        assert_eq!(span.status, Status::Error(CONNECTION_CLOSED.into()));
        assert_eq!(span.attr("error.type"), Some(&CONNECTION_CLOSED.into()));
        assert_eq!(span.kind, SpanKind::Producer);
    }

    #[test]
    fn operations_are_measured_with_bounded_attributes() {
        let conn = ConnFacts {
            peer: Some("10.0.0.5:9092".parse().unwrap()),
            local: Some("10.0.0.1:40000".parse().unwrap()),
            tls: false,
        };
        let m = measure(&op(OpKind::Send, 0), &conn).unwrap();
        assert_eq!(m.instrument, Instrument::MessagingClient);
        assert_eq!(m.duration_ns, 3_000_000);
        assert!(!m.failed);
        let a = |m: &Measurement<'_>, k: &str| {
            m.attributes
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(a(&m, "messaging.operation.name"), Some("send".into()));
        assert_eq!(a(&m, "messaging.destination.name"), Some("orders".into()));
        assert_eq!(a(&m, "server.port"), Some(9092i64.into()));
        // Per-message values would make a series per record.
        for key in [
            "messaging.kafka.offset",
            "messaging.destination.partition.id",
            "messaging.client.id",
        ] {
            assert_eq!(a(&m, key), None, "{key}");
        }
        let m = measure(&op(OpKind::Process, 3), &conn).unwrap();
        assert_eq!(m.instrument, Instrument::MessagingProcess);
        assert!(m.failed);
        assert_eq!(
            a(&m, "error.type"),
            Some("UNKNOWN_TOPIC_OR_PARTITION".into())
        );
        assert_eq!(a(&m, "server.address"), None);
        let broker = OpKind::Broker(kafka_protocol::messages::ApiKey::Produce);
        assert!(measure(&op(broker, 0), &conn).is_none());
    }

    #[test]
    fn error_names_are_kafkas() {
        let e = ResponseError::try_from_code(3).unwrap();
        assert_eq!(error_name(&e), "UNKNOWN_TOPIC_OR_PARTITION");
        let e = ResponseError::try_from_code(-1).unwrap();
        assert_eq!(error_name(&e), "UNKNOWN_SERVER_ERROR");
        let e = ResponseError::try_from_code(30000).unwrap();
        assert_eq!(error_name(&e), "KAFKA_ERROR_30000");
    }
}
