//! A producer connected to its broker before the agent started: its next
//! send, on that connection, is traced (the connection is followed from
//! its next request, as after lost records).

use anyhow::{ensure, Context, Result};
use clew_e2e::kafka::{produce_with_pause, Broker};
use clew_e2e::receiver::STATUS_UNSET;
use clew_e2e::{Agent, Cgroup, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};

use crate::{check_messaging, is_send};

const PRODUCER: &str = "kafka-producer-before";

#[test]
fn a_producer_connected_before_the_agent_is_traced() -> Result<()> {
    let topic = "before-agent";
    let broker = Broker::start()?;
    broker.create_topic(topic, 1)?;
    let cg = Cgroup::new("kafka-before")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = None;
    let one_send = |s: &[RecvSpan]| s.iter().any(|x| is_send(x, PRODUCER, topic));
    // The first record is sent and acknowledged with no agent; the agent
    // starts while the producer waits; the second goes on the same
    // connection.
    produce_with_pause(
        &cg,
        &broker,
        topic,
        &["before", "after"],
        PRODUCER,
        || {
            agent = Some(Agent::start(&cg, &rx.endpoint(), Protocol::Grpc, &[])?);
            Ok(())
        },
        || {
            rx.wait_for(one_send, SPAN_TIMEOUT)
                .with_context(|| format!("waiting for the second send's span\n{}", rx.dump()))?;
            Ok(())
        },
    )?;
    let spans = rx.spans();
    let sends: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_send(s, PRODUCER, topic))
        .collect();
    ensure!(
        sends.len() == 1,
        "{} send spans:\n{}",
        sends.len(),
        rx.dump()
    );
    let send = sends[0];
    check_messaging(send, topic, "send", broker.port)?;
    ensure!(
        send.status_code == STATUS_UNSET && send.attr_int("messaging.kafka.offset") == Some(1),
        "the second record's send (offset 1): {send}"
    );
    let mut agent = agent.context("the agent")?;
    agent.ensure_healthy()?;
    agent.stop()
}
