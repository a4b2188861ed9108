//! Records lost in the middle of a Kafka connection: the agent is stopped
//! (SIGSTOP) for a second while a producer sends 8 KiB records one after
//! the other, with a 1 MiB ring buffer, so the kernel drops the
//! connection's records. The connection goes on being traced once the
//! agent is back, and every span is one of the sends the producer made.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use clew_e2e::kafka::{produce_load, Broker};
use clew_e2e::receiver::STATUS_UNSET;
use clew_e2e::{Protocol, Traced};

use crate::{check_messaging, is_send};

const PRODUCER: &str = "kafka-producer-lossy";

#[test]
fn a_producer_connection_resumes_after_lost_records() -> Result<()> {
    let topic = "lossy";
    let broker = Broker::start()?;
    broker.create_topic(topic, 1)?;
    let mut t = Traced::start_with("kafka-lossy", Protocol::Grpc, &["--ringbuf-mib", "1"])?;
    let stall = t
        .agent
        .stall(Duration::from_millis(1500), Duration::from_millis(1000));
    let started = SystemTime::now();
    let acked = produce_load(&t.cg, &broker, topic, 3000, 8192, PRODUCER)?;
    let ended = SystemTime::now();
    let resumed_at = stall.join().expect("the stall thread");
    ensure!(
        ended > resumed_at + Duration::from_millis(500),
        "the producer ended {:?} after it started, before the stall was over: the test proves nothing",
        ended.duration_since(started)?
    );
    let drops = t.agent.metric("kernel_ringbuf_drops")?;
    ensure!(drops > 0, "no record was lost: the test proves nothing");
    // Let the agent drain and export what it kept.
    std::thread::sleep(Duration::from_secs(3));
    let resumed = t.agent.metric("protocol_resumed{protocol=\"kafka\"}")?;
    let skipped = t.agent.metric("protocol_skipped{protocol=\"kafka\"}")?;
    ensure!(
        resumed > 0,
        "{drops} records lost, yet no Kafka connection resumed"
    );
    let offsets: HashSet<i64> = acked.iter().map(|a| a.offset).collect();
    let spans = t.rx.spans();
    let sends: Vec<_> = spans
        .iter()
        .filter(|s| is_send(s, PRODUCER, topic))
        .collect();
    let mut seen = HashSet::new();
    for s in &sends {
        check_messaging(s, topic, "send", broker.port)?;
        let offset = s.attr_int("messaging.kafka.offset");
        ensure!(
            s.status_code == STATUS_UNSET && offset.is_some_and(|o| offsets.contains(&o)),
            "a send span that is none of the acknowledged sends: {s}"
        );
        ensure!(seen.insert(offset), "two spans for one send: {s}");
    }
    let since = (resumed_at + Duration::from_millis(300)).duration_since(UNIX_EPOCH)?;
    let after = sends
        .iter()
        .filter(|s| s.start_ns >= since.as_nanos() as u64)
        .count();
    eprintln!(
        "{} sends acknowledged, {drops} records lost, {resumed} Kafka connections resumed, \
         {skipped} chunks skipped, {} send spans ({after} after the stall), all right",
        acked.len(),
        sends.len()
    );
    ensure!(after > 0, "no send span after the stall");
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
