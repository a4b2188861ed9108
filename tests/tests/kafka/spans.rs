//! Producer, receive and process spans from real clients, and the broker's
//! own spans when it is traced.

use anyhow::{ensure, Context, Result};
use clew_e2e::kafka::{consume, Broker, Library, Produce};
use clew_e2e::receiver::{KIND_SERVER, STATUS_UNSET};
use clew_e2e::{Protocol, RecvSpan, Traced, SPAN_TIMEOUT};

use crate::{
    check_messaging, is_process, is_receive, is_send, APP_SPAN, APP_TRACE, APP_TRACEPARENT,
};

const PRODUCER: &str = "kafka-producer";
const CONSUMER: &str = "kafka-consumer";

/// Two records carrying the application's context and one without, on
/// partition 1 of a two-partition topic, then consumed in a group: one
/// PRODUCER span per acknowledged send, `receive` spans that count all
/// three, and a CONSUMER span per record, in its context: the
/// application's, or for the third the one the kernel injected.
fn produce_and_consume(library: Library, topic: &str) -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic(topic, 2)?;
    let t = Traced::start(&format!("kafka-{topic}"), Protocol::Grpc)?;
    let mut acked = Produce {
        partition: Some(1),
        traceparent: Some(APP_TRACEPARENT),
        ..Produce::new(library, topic, &["a", "b"], PRODUCER)
    }
    .run(&t.cg, &broker)?;
    acked.extend(
        Produce {
            partition: Some(1),
            ..Produce::new(library, topic, &["c"], PRODUCER)
        }
        .run(&t.cg, &broker)?,
    );
    let received = consume(&t.cg, &broker, library, topic, 3, None, CONSUMER)?;
    ensure!(received.len() == 3, "consumed {received:?}");

    let spans =
        t.rx.wait_for(
            |s| {
                s.iter().filter(|x| is_send(x, PRODUCER, topic)).count() >= 3
                    && s.iter().filter(|x| is_process(x, CONSUMER, topic)).count() >= 3
                    && received_count(s, topic) >= 3
            },
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for the spans of {topic}\n{}", t.rx.dump()))?;

    let sends: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_send(s, PRODUCER, topic))
        .collect();
    ensure!(
        sends.len() == 3,
        "{} send spans:\n{}",
        sends.len(),
        t.rx.dump()
    );
    for s in &sends {
        check_messaging(s, topic, "send", broker.port)?;
        ensure!(
            s.attr_str("messaging.operation.name") == Some("send"),
            "{s}"
        );
        ensure!(
            s.attr_str("messaging.destination.partition.id") == Some("1"),
            "{s}"
        );
        ensure!(
            s.attr_str("messaging.client.id") == Some("clew-producer"),
            "{s}"
        );
        ensure!(s.status_code == STATUS_UNSET, "{s}");
    }
    let mut offsets: Vec<i64> = sends
        .iter()
        .map(|s| s.attr_int("messaging.kafka.offset").context("no offset"))
        .collect::<Result<_>>()?;
    offsets.sort();
    let mut want: Vec<i64> = acked.iter().map(|a| a.offset).collect();
    want.sort();
    ensure!(
        offsets == want,
        "send offsets {offsets:?}, acknowledged {want:?}"
    );

    for r in spans.iter().filter(|s| is_receive(s, CONSUMER, topic)) {
        check_messaging(r, topic, "receive", broker.port)?;
        ensure!(
            r.attr_str("messaging.consumer.group.name")
                == Some(format!("{topic}-readers").as_str()),
            "no consumer group on {r}"
        );
    }
    let processed: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_process(s, CONSUMER, topic))
        .collect();
    // The record sent without a context got the one the kernel injected.
    ensure!(
        processed.len() == 3,
        "{} process spans:\n{}",
        processed.len(),
        t.rx.dump()
    );
    let (in_app, injected): (Vec<&RecvSpan>, Vec<&RecvSpan>) =
        processed.iter().partition(|p| p.trace_id == APP_TRACE);
    ensure!(
        in_app.len() == 2 && injected.len() == 1 && injected[0].parent_span_id.is_some(),
        "process spans neither in the records' own context nor in an injected one:\n{}",
        t.rx.dump()
    );
    for p in &processed {
        check_messaging(p, topic, "process", broker.port)?;
        ensure!(
            p.attr_str("messaging.destination.partition.id") == Some("1"),
            "{p}"
        );
    }
    for p in &in_app {
        ensure!(
            p.parent_span_id.as_deref() == Some(APP_SPAN),
            "a process span is not in the record's context: {p}"
        );
    }
    let mut processed_offsets: Vec<i64> = in_app
        .iter()
        .filter_map(|p| p.attr_int("messaging.kafka.offset"))
        .collect();
    processed_offsets.sort();
    ensure!(
        processed_offsets == want[..2],
        "processed offsets {processed_offsets:?}, records with context at {:?}",
        &want[..2]
    );
    Ok(())
}

/// Records the `receive` spans of `topic` count.
fn received_count(spans: &[RecvSpan], topic: &str) -> i64 {
    spans
        .iter()
        .filter(|s| is_receive(s, CONSUMER, topic))
        .map(|s| s.attr_int("messaging.batch.message_count").unwrap_or(1))
        .sum()
}

#[test]
fn kafka_python_produce_and_consume() -> Result<()> {
    produce_and_consume(Library::KafkaPython, "orders-py")
}

#[test]
fn librdkafka_produce_and_consume() -> Result<()> {
    produce_and_consume(Library::Confluent, "orders-rd")
}

/// With the broker traced too, its side of each Produce is a SERVER span
/// whose parent is the producer's PRODUCER span (one agent sees both ends).
#[test]
fn traced_kafka_broker_serves_under_the_producer_span() -> Result<()> {
    let topic = "orders-broker";
    let t = Traced::start("kafka-broker-traced", Protocol::Grpc)?;
    let broker = Broker::start_in(&t.cg)?;
    broker.create_topic(topic, 1)?;
    Produce::new(Library::KafkaPython, topic, &["a", "b"], PRODUCER).run(&t.cg, &broker)?;
    let is_served = |s: &RecvSpan| s.kind == KIND_SERVER && s.name == format!("Produce {topic}");
    let spans =
        t.rx.wait_for(
            |s| {
                s.iter().filter(|x| is_send(x, PRODUCER, topic)).count() >= 2
                    && s.iter().filter(|x| is_served(x)).count() >= 2
            },
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for producer and broker spans\n{}", t.rx.dump()))?;
    let sends: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_send(s, PRODUCER, topic))
        .collect();
    let served: Vec<&RecvSpan> = spans.iter().filter(|s| is_served(s)).collect();
    ensure!(sends.len() == 2 && served.len() == 2, "{}", t.rx.dump());
    for s in &served {
        let p = clew_e2e::check::parent_among(s, &sends)?;
        ensure!(
            s.start_ns >= p.start_ns,
            "the broker span starts before its send: {s}"
        );
        ensure!(
            s.attr_str("messaging.destination.name") == Some(topic),
            "no destination on {s}"
        );
    }
    Ok(())
}
