//! A trace continues through the broker with no SDK: the kernel adds
//! `traceparent` to each record a traced producer sends, the consumer's
//! `process` span is the child of the PRODUCER span, and the call the
//! consumer makes while handling the record continues the same trace into
//! the next service.

use anyhow::{ensure, Context, Result};
use clew_e2e::check::{ensure_parent, parent_among};
use clew_e2e::kafka::{consume, Broker, Library, Produce};
use clew_e2e::peers::PyService;
use clew_e2e::{Expect, Protocol, RecvSpan, Traced, SPAN_TIMEOUT};

use crate::{is_process, is_send};

const PRODUCER: &str = "kafka-producer";
const CONSUMER: &str = "kafka-consumer";
const DOWNSTREAM: &str = "after-kafka";

/// `00-{trace}-{span}-{flags}` → (trace, span).
fn ids(traceparent: &str) -> Option<(&str, &str)> {
    let f: Vec<&str> = traceparent.split('-').collect();
    (f.len() == 4 && f[1].len() == 32 && f[2].len() == 16).then(|| (f[1], f[2]))
}

/// producer → broker → consumer → downstream HTTP service: one trace.
/// `consumer_nests`: the consumer library reads on the application's
/// thread, so its call nests under the record's processing.
fn one_trace(
    producer: Library,
    consumer: Library,
    topic: &str,
    consumer_nests: bool,
) -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic(topic, 1)?;
    let t = Traced::start(&format!("kafka-{topic}"), Protocol::Grpc)?;
    let downstream = PyService::start(&t.cg, DOWNSTREAM, None)?;
    let values = ["first", "second", "third"];
    Produce::new(producer, topic, &values, PRODUCER).run(&t.cg, &broker)?;
    let url = downstream.url("/work/record");
    let received = consume(
        &t.cg,
        &broker,
        consumer,
        topic,
        values.len(),
        Some(&url),
        CONSUMER,
    )?;

    // Byte for byte: the values as sent, and one traceparent each.
    let got: Vec<&[u8]> = received.iter().filter_map(|r| r.value.as_deref()).collect();
    let want: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    ensure!(got == want, "values changed in transit: {received:?}");
    let injected: Vec<String> = received
        .iter()
        .map(|r| {
            let tps = r.header("traceparent");
            ensure!(tps.len() == 1 && r.headers.len() == 1, "headers of {r:?}");
            Ok(tps[0].clone())
        })
        .collect::<Result<_>>()?;

    let n = values.len();
    let server = Expect::server(DOWNSTREAM, "/work/record", downstream.port);
    let spans =
        t.rx.wait_for(
            |s| {
                s.iter().filter(|x| is_send(x, PRODUCER, topic)).count() >= n
                    && s.iter().filter(|x| is_process(x, CONSUMER, topic)).count() >= n
                    && s.iter().filter(|x| server.matches(x)).count() >= n
            },
            SPAN_TIMEOUT,
        )
        .with_context(|| format!("waiting for the spans of {topic}\n{}", t.rx.dump()))?;
    let sends: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_send(s, PRODUCER, topic))
        .collect();
    let processed: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_process(s, CONSUMER, topic))
        .collect();
    let calls: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| Expect::client(CONSUMER, "/work/record", downstream.port).matches(s))
        .collect();
    let served: Vec<&RecvSpan> = spans.iter().filter(|s| server.matches(s)).collect();
    ensure!(
        sends.len() == n && processed.len() == n && calls.len() == n && served.len() == n,
        "expected {n} of each span\n{}",
        t.rx.dump()
    );
    // Each record names its PRODUCER span exactly.
    for tp in &injected {
        let (trace, span) = ids(tp).with_context(|| format!("bad traceparent {tp}"))?;
        ensure!(
            sends
                .iter()
                .any(|s| s.trace_id == trace && s.span_id == span),
            "the injected {tp} names no PRODUCER span\n{}",
            t.rx.dump()
        );
    }
    for p in &processed {
        parent_among(p, &sends)?;
    }
    for s in &served {
        parent_among(s, &calls)?;
    }
    for c in &calls {
        if consumer_nests {
            let p = parent_among(c, &processed)?;
            ensure_parent(c, p)?;
        } else {
            ensure!(
                c.parent_span_id.is_none(),
                "the client fetches on its own threads: the call cannot know its record, \
                 yet it has a parent: {c}"
            );
        }
    }
    Ok(())
}

/// kafka-python 3 fetches on its own network thread too (as librdkafka
/// does): its calls cannot know their record either.
#[test]
fn kafka_python_trace_continues_through_the_broker() -> Result<()> {
    one_trace(Library::KafkaPython, Library::KafkaPython, "cart-py", false)
}

#[test]
fn librdkafka_trace_continues_through_the_broker() -> Result<()> {
    one_trace(Library::Confluent, Library::Confluent, "cart-rd", false)
}
