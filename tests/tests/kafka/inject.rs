//! `traceparent` injection into produced records, in the kernel, checked
//! byte for byte: real clients batch records (several per batch, several
//! partitions per request), the broker accepts the rewritten batches, and
//! a consumer that verifies CRCs reads back every key and value unchanged
//! and every record's headers as sent plus exactly one `traceparent`
//! (none added where the application set its own). Compressed batches and
//! traffic after the agent is gone pass untouched.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::cgroup::Cgroup;
use clew_e2e::kafka::{consume, produce_records, Acked, Broker, Library, Received, Record};
use clew_e2e::{Protocol, Traced};

use crate::APP_TRACEPARENT;

/// `n` records over `partitions` partitions, sized so that one request
/// stays below the kernel's 64 KiB bound: keys absent, empty and up to 39
/// bytes; values absent, empty, around the sizes where a record's length
/// varint grows a byte once the header is in, and up to 3000 bytes; some
/// with headers, every fifth with the application's own `traceparent`.
fn records(n: usize, partitions: i32) -> Vec<Record> {
    const VALUE_SIZES: [usize; 12] = [0, 1, 40, 57, 58, 59, 60, 61, 62, 63, 500, 3000];
    let mut seed = 0x2545_f491_u32;
    let mut bytes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect()
    };
    (0..n)
        .map(|i| {
            let mut headers = Vec::new();
            if i % 3 == 0 {
                headers.push(("h".to_owned(), bytes(i % 5)));
            }
            if i % 5 == 0 {
                headers.push((
                    "traceparent".to_owned(),
                    APP_TRACEPARENT.as_bytes().to_vec(),
                ));
            }
            Record {
                partition: (i % partitions as usize) as i32,
                key: (i % 7 != 0).then(|| bytes((i * 13) % 40)),
                // kafka-python refuses a record with neither.
                value: (i % 11 != 10 || i % 7 == 0)
                    .then(|| bytes(VALUE_SIZES[i % VALUE_SIZES.len()])),
                headers,
            }
        })
        .collect()
}

fn has_own_traceparent(r: &Record) -> bool {
    r.headers.iter().any(|(k, _)| k == "traceparent")
}

/// `00-{32 hex}-{16 hex}-{2 hex}`: (trace id, span id).
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| c.is_ascii_hexdigit());
    (parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2))
    .then(|| (parts[1], parts[2]))
}

/// What a round trip showed: records injected, records left alone.
struct RoundTrip {
    injected: u64,
    own: u64,
}

/// Each sent record against what the consumer read at its acknowledged
/// offset. `injecting`: records without their own `traceparent` must
/// come back with exactly one more header, `traceparent`, last; else with
/// their headers exactly as sent. Injected contexts are checked for the
/// batch span ids: one trace per request, one span per partition in it,
/// the spans of one request differing only in their last byte.
fn check_round_trip(
    sent: &[Record],
    acked: &[Acked],
    got: &[Received],
    injecting: bool,
) -> Result<RoundTrip> {
    ensure!(
        acked.len() == sent.len(),
        "{} acks for {} records",
        acked.len(),
        sent.len()
    );
    ensure!(
        got.len() == sent.len(),
        "{} records read for {} sent",
        got.len(),
        sent.len()
    );
    let by_offset: HashMap<(i32, i64), &Received> =
        got.iter().map(|r| ((r.partition, r.offset), r)).collect();
    let mut spans: HashMap<String, HashMap<i32, String>> = HashMap::new();
    let mut out = RoundTrip {
        injected: 0,
        own: 0,
    };
    for (i, (rec, ack)) in sent.iter().zip(acked).enumerate() {
        let r = by_offset
            .get(&(ack.partition, ack.offset))
            .with_context(|| format!("record {i} ({ack:?}) was not read back"))?;
        ensure!(
            r.partition == rec.partition,
            "record {i}: partition {}",
            r.partition
        );
        ensure!(
            r.key == rec.key,
            "record {i}: key {:?}, sent {:?}",
            r.key,
            rec.key
        );
        ensure!(r.value == rec.value, "record {i}: value differs");
        if has_own_traceparent(rec) || !injecting {
            out.own += u64::from(has_own_traceparent(rec));
            ensure!(
                r.headers == rec.headers,
                "record {i}: headers {:?}, sent {:?}",
                r.headers,
                rec.headers
            );
            continue;
        }
        out.injected += 1;
        let n = rec.headers.len();
        ensure!(
            r.headers.len() == n + 1 && r.headers[..n] == rec.headers[..],
            "record {i}: headers {:?}, sent {:?}",
            r.headers,
            rec.headers
        );
        let (k, v) = &r.headers[n];
        ensure!(k == "traceparent", "record {i}: last header {k}");
        let v = String::from_utf8(v.clone())?;
        let (trace, span) = parse_traceparent(&v).with_context(|| format!("record {i}: {v}"))?;
        let by_partition = spans.entry(trace.to_owned()).or_default();
        let first = by_partition
            .entry(rec.partition)
            .or_insert_with(|| span.to_owned());
        ensure!(
            first == span,
            "record {i}: span {span}, its batch's other records {first}"
        );
    }
    for (trace, by_partition) in &spans {
        let ids: Vec<&String> = by_partition.values().collect();
        for id in &ids {
            ensure!(
                id[..14] == ids[0][..14],
                "trace {trace}: batch spans {ids:?} differ beyond the last byte"
            );
        }
        let mut last: Vec<&str> = ids.iter().map(|id| &id[14..]).collect();
        last.sort();
        last.dedup();
        ensure!(
            last.len() == ids.len(),
            "trace {trace}: two batches share a span: {ids:?}"
        );
    }
    Ok(out)
}

/// Waits until counter `clew_{name}` reads `want`.
fn wait_metric(t: &Traced, name: &str, want: u64) -> Result<()> {
    wait_metric_until(t, name, &format!("want {want}"), |v| v == want)
}

/// Counters reach /metrics on the agent's next tick (about a second).
fn wait_metric_until(t: &Traced, name: &str, want: &str, ok: impl Fn(u64) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = t.agent.metric(name)?;
        if ok(v) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("clew_{name} = {v}, {want}\n{}", t.agent.log_tail());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_back(broker: &Broker, topic: &str, n: usize) -> Result<Vec<Received>> {
    let reader = Cgroup::new("kafka-reader")?;
    consume(
        &reader,
        broker,
        Library::KafkaPython,
        topic,
        n,
        None,
        "kafka-reader",
    )
}

fn byte_exact(library: Library, topic: &str) -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic(topic, 3)?;
    let t = Traced::start(&format!("kafka-{topic}"), Protocol::Grpc)?;
    let sent = records(60, 3);
    let acked = produce_records(&t.cg, &broker, library, topic, &sent, None)?;
    let got = read_back(&broker, topic, sent.len())?;
    let rt = check_round_trip(&sent, &acked, &got, true)?;
    ensure!(
        rt.injected == 48 && rt.own == 12,
        "{} injected, {} own",
        rt.injected,
        rt.own
    );
    wait_metric(&t, "kafka_traceparent_injected", rt.injected)?;
    wait_metric(&t, "kafka_own_traceparent", rt.own)?;
    for stood_down in ["crc", "bounds", "unsupported", "malformed", "split"] {
        wait_metric(&t, &format!("kafka_stood_down_{stood_down}"), 0)?;
    }
    wait_metric(&t, "kafka_inject_failed", 0)?;
    println!(
        "{topic}: {} records over 3 partitions read back byte for byte: {} with one traceparent added, {} with their own left alone",
        sent.len(),
        rt.injected,
        rt.own
    );
    Ok(())
}

#[test]
fn kafka_python_batches_get_one_traceparent_per_record() -> Result<()> {
    byte_exact(Library::KafkaPython, "inject-py")
}

#[test]
fn librdkafka_batches_get_one_traceparent_per_record() -> Result<()> {
    byte_exact(Library::Confluent, "inject-rd")
}

/// A compressed batch cannot be rewritten without recompressing it: it
/// reaches the broker bit for bit, and is counted.
#[test]
fn compressed_batches_pass_untouched() -> Result<()> {
    let topic = "inject-gzip";
    let broker = Broker::start()?;
    broker.create_topic(topic, 2)?;
    let t = Traced::start("kafka-inject-gzip", Protocol::Grpc)?;
    // Values that compress: kafka-python sends a batch that does not
    // uncompressed.
    let mut sent = records(20, 2);
    for r in &mut sent {
        if let Some(v) = &mut r.value {
            v.fill(b'a');
        }
    }
    let acked = produce_records(
        &t.cg,
        &broker,
        Library::KafkaPython,
        topic,
        &sent,
        Some("gzip"),
    )?;
    let got = read_back(&broker, topic, sent.len())?;
    check_round_trip(&sent, &acked, &got, false)?;
    // The stand-downs first: once they show, the tick that copied them
    // also copied the (zero) injections.
    wait_metric_until(&t, "kafka_stood_down_compressed", "want at least 2", |v| {
        v >= 2
    })?;
    wait_metric(&t, "kafka_traceparent_injected", 0)?;
    Ok(())
}

/// Records produced once the agent is gone reach the broker as sent, on
/// a producer whose sockets went through the agent's sk_msg program.
#[test]
fn records_flow_after_the_agent_is_killed() -> Result<()> {
    let topic = "inject-killed";
    let broker = Broker::start()?;
    broker.create_topic(topic, 2)?;
    let Traced { agent, rx: _rx, cg } = Traced::start("kafka-inject-killed", Protocol::Grpc)?;
    let before = records(10, 2);
    let acked = produce_records(&cg, &broker, Library::KafkaPython, topic, &before, None)?;
    agent.kill()?;
    let after = records(10, 2);
    let acked_after = produce_records(&cg, &broker, Library::KafkaPython, topic, &after, None)?;
    let got = read_back(&broker, topic, before.len() + after.len())?;
    let (got_before, got_after): (Vec<Received>, Vec<Received>) = got.into_iter().partition(|r| {
        acked
            .iter()
            .any(|a| a.partition == r.partition && a.offset == r.offset)
    });
    check_round_trip(&before, &acked, &got_before, true)?;
    check_round_trip(&after, &acked_after, &got_after, false)?;
    Ok(())
}
