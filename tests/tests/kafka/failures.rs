//! A send whose broker goes away before answering: its PRODUCER span says
//! so (ERROR, `error.type` `connection_closed`), as an HTTP call's does.

use anyhow::{ensure, Context, Result};
use clew_e2e::kafka::{produce_with_pause, Broker};
use clew_e2e::receiver::{STATUS_ERROR, STATUS_UNSET};
use clew_e2e::{Protocol, RecvSpan, Traced, SPAN_TIMEOUT};

use crate::{check_messaging, is_send};

const PRODUCER: &str = "kafka-producer-closed";

#[test]
fn a_send_the_broker_never_answered_is_an_error_span() -> Result<()> {
    let topic = "never-answered";
    let broker = Broker::start()?;
    broker.create_topic(topic, 1)?;
    let t = Traced::start("kafka-closed", Protocol::Grpc)?;
    // The first record is acknowledged; the broker is stopped before the
    // second, which then sits unread in its socket until the broker is
    // killed and the kernel closes the connection.
    let mut spans = Vec::new();
    let two_sends = |s: &[RecvSpan]| s.iter().filter(|x| is_send(x, PRODUCER, topic)).count() >= 2;
    produce_with_pause(
        &t.cg,
        &broker,
        topic,
        &["answered", "never-answered"],
        PRODUCER,
        || broker.signal(libc::SIGSTOP),
        || {
            broker.wait_unread_request()?;
            broker.signal(libc::SIGKILL)?;
            // The producer sees its connection close and closes it: the
            // span comes from that, before the producer is stopped.
            spans =
                t.rx.wait_for(two_sends, SPAN_TIMEOUT)
                    .with_context(|| format!("waiting for two send spans\n{}", t.rx.dump()))?;
            Ok(())
        },
    )?;
    let mut sends: Vec<&RecvSpan> = spans
        .iter()
        .filter(|s| is_send(s, PRODUCER, topic))
        .collect();
    ensure!(
        sends.len() == 2,
        "{} send spans:\n{}",
        sends.len(),
        t.rx.dump()
    );
    sends.sort_by_key(|s| s.start_ns);
    let (answered, lost) = (sends[0], sends[1]);
    for s in [answered, lost] {
        check_messaging(s, topic, "send", broker.port)?;
    }
    ensure!(
        answered.status_code == STATUS_UNSET
            && answered.attr_int("messaging.kafka.offset").is_some(),
        "the acknowledged send: {answered}"
    );
    ensure!(
        lost.status_code == STATUS_ERROR
            && lost.attr_str("error.type") == Some("connection_closed")
            && lost.attr_int("messaging.kafka.offset").is_none(),
        "the send the broker never answered: {lost}"
    );
    Ok(())
}
