//! End-to-end tests of Kafka tracing: a real broker (tansu), real clients
//! (kafka-python, and librdkafka through confluent-kafka), the real agent
//! and OTLP receiver, each test in its own cgroup.
//!
//! Run as root, one test at a time (`cargo xtask test -- kafka`).

mod before;
mod continuation;
mod failures;
mod inject;
mod lossy;
mod spans;

use anyhow::{ensure, Result};
use clew_e2e::receiver::{KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER};
use clew_e2e::RecvSpan;

/// An application's own context (as an SDK would write it) on records.
pub const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const APP_SPAN: &str = "00f067aa0ba902b7";
pub const APP_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn is_send(s: &RecvSpan, service: &str, topic: &str) -> bool {
    s.kind == KIND_PRODUCER && s.service() == Some(service) && s.name == format!("send {topic}")
}

pub fn is_receive(s: &RecvSpan, service: &str, topic: &str) -> bool {
    s.kind == KIND_CLIENT && s.service() == Some(service) && s.name == format!("receive {topic}")
}

pub fn is_process(s: &RecvSpan, service: &str, topic: &str) -> bool {
    s.kind == KIND_CONSUMER && s.service() == Some(service) && s.name == format!("process {topic}")
}

/// What every Kafka span carries, per the messaging conventions.
pub fn check_messaging(s: &RecvSpan, topic: &str, op_type: &str, broker_port: u16) -> Result<()> {
    let want = [
        ("messaging.system", "kafka"),
        ("messaging.destination.name", topic),
        ("messaging.operation.type", op_type),
        ("server.address", "127.0.0.1"),
    ];
    for (k, v) in want {
        ensure!(s.attr_str(k) == Some(v), "{k} is not {v:?} on {s}");
    }
    ensure!(
        s.attr_int("server.port") == Some(i64::from(broker_port)),
        "server.port is not the broker's on {s}"
    );
    Ok(())
}
