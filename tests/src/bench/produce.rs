//! The benchmark's Kafka producer: one record per Produce request
//! (`acks=1`, no batching), so that a request is one Produce round trip,
//! as an HTTP/1 request is one request-response. Every request is the same
//! bytes but for its correlation id: the generator spends its time waiting
//! for the broker, not encoding.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use kafka_protocol::{
    messages::{
        produce_request::{PartitionProduceData, TopicProduceData},
        ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    },
    protocol::{Decodable, Encodable, HeaderVersion, StrBytes},
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};
use std::io::{Read, Write};

/// Flexible (compact) encoding, topics by name; tansu 0.6 answers v0-v11.
const VERSION: i16 = 9;
/// Where the correlation id sits in a size-prefixed request: after the
/// size (4), the API key (2) and the version (2).
const CORRELATION_AT: usize = 8;
const CLIENT_ID: &str = "clew-bench";

/// A Produce request of one record to partition 0 of `topic`, with
/// correlation id 0.
pub fn request(topic: &str, value: &[u8]) -> Result<Vec<u8>> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: Default::default(),
    };
    let mut batch = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, [record].iter(), &options)?;
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let mut msg = vec![0; 4];
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(0)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut msg, ProduceRequest::header_version(VERSION))?;
    produce.encode(&mut msg, VERSION)?;
    let size = (msg.len() - 4) as u32;
    msg[..4].copy_from_slice(&size.to_be_bytes());
    Ok(msg)
}

/// Sends `request` with correlation id `id` and reads its response; an
/// error unless the broker acknowledged the record.
pub fn exchange<S: Read + Write>(
    conn: &mut S,
    request: &mut [u8],
    id: i32,
    buf: &mut Vec<u8>,
) -> Result<()> {
    request[CORRELATION_AT..CORRELATION_AT + 4].copy_from_slice(&id.to_be_bytes());
    conn.write_all(request)?;
    let mut size = [0u8; 4];
    conn.read_exact(&mut size)?;
    let size = u32::from_be_bytes(size) as usize;
    ensure!(size <= 1 << 20, "a Produce response of {size} bytes");
    buf.resize(size, 0);
    conn.read_exact(buf)?;
    check_response(buf, id)
}

/// A Produce response (without its size) to correlation id `id` with no
/// error on any partition.
fn check_response(mut body: &[u8], id: i32) -> Result<()> {
    let header =
        ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(VERSION))?;
    ensure!(
        header.correlation_id == id,
        "response to {} while waiting for {id}",
        header.correlation_id
    );
    let response = ProduceResponse::decode(&mut body, VERSION).context("a Produce response")?;
    let partitions = response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses);
    let mut acked = 0;
    for p in partitions {
        if p.error_code != 0 {
            bail!("partition {}: Kafka error {}", p.index, p.error_code);
        }
        acked += 1;
    }
    ensure!(acked == 1, "{acked} partitions acknowledged, not 1");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{pacer, scenario::Load};
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::records::RecordBatchDecoder;
    use std::time::Duration;

    fn response(id: i32, error: i16) -> Vec<u8> {
        let mut buf = Vec::new();
        ResponseHeader::default()
            .with_correlation_id(id)
            .encode(&mut buf, ApiKey::Produce.response_header_version(VERSION))
            .unwrap();
        ProduceResponse::default()
            .with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("bench")))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_error_code(error)
                    .with_base_offset(41)])])
            .encode(&mut buf, VERSION)
            .unwrap();
        buf
    }

    /// The bytes the broker reads back: one record in one batch, the id
    /// where the exchange writes it.
    #[test]
    fn a_request_is_one_record_to_partition_zero() {
        let mut msg = request("bench", b"hello").unwrap();
        msg[CORRELATION_AT..CORRELATION_AT + 4].copy_from_slice(&7i32.to_be_bytes());
        assert_eq!(
            u32::from_be_bytes(msg[..4].try_into().unwrap()) as usize,
            msg.len() - 4
        );
        let mut body = &msg[4..];
        let header =
            RequestHeader::decode(&mut body, ProduceRequest::header_version(VERSION)).unwrap();
        assert_eq!(
            (
                header.request_api_key,
                header.request_api_version,
                header.correlation_id
            ),
            (ApiKey::Produce as i16, VERSION, 7)
        );
        let req = ProduceRequest::decode(&mut body, VERSION).unwrap();
        assert_eq!(req.acks, 1);
        let topic = &req.topic_data[0];
        assert_eq!((req.topic_data.len(), &*topic.name.0), (1, "bench"));
        let partition = &topic.partition_data[0];
        assert_eq!((topic.partition_data.len(), partition.index), (1, 0));
        let mut records = partition.records.clone().unwrap();
        let set = RecordBatchDecoder::decode(&mut records).unwrap();
        assert_eq!(set.records.len(), 1);
        assert_eq!(set.records[0].value.as_deref(), Some(&b"hello"[..]));
    }

    /// A broker stand-in on loopback: acknowledges every Produce request,
    /// a thread per connection.
    fn acknowledging_broker() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    let mut size = [0u8; 4];
                    while conn.read_exact(&mut size).is_ok() {
                        let mut msg = vec![0; u32::from_be_bytes(size) as usize];
                        conn.read_exact(&mut msg).unwrap();
                        let header = RequestHeader::decode(
                            &mut &msg[..],
                            ProduceRequest::header_version(VERSION),
                        )
                        .unwrap();
                        let body = response(header.correlation_id, 0);
                        conn.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
                        conn.write_all(&body).unwrap();
                    }
                });
            }
        });
        addr
    }

    fn produce_spec(addr: std::net::SocketAddr, load: Load) -> pacer::Spec {
        pacer::Spec {
            addr,
            request: pacer::Request::KafkaProduce {
                topic: "bench".into(),
            },
            load,
            connections: 4,
            duration: Duration::from_millis(500),
            cpu: None,
        }
    }

    #[test]
    fn the_generator_produces_at_a_rate_and_in_a_closed_loop() {
        let addr = acknowledging_broker();
        // Every send of the schedule happens, late or not: 200/s for 0.5 s.
        let paced = pacer::run(&produce_spec(addr, Load::Rate(200))).unwrap();
        assert_eq!((paced.completed, paced.errors), (100, 0));
        assert_eq!(paced.latencies_ns.len(), 100);
        let closed = pacer::run(&produce_spec(addr, Load::Max)).unwrap();
        assert!(closed.completed > 0);
        assert_eq!(closed.errors, 0);
        assert_eq!(closed.latencies_ns.len() as u64, closed.completed);
    }

    #[test]
    fn only_an_acknowledgement_of_this_request_counts() {
        assert!(check_response(&response(3, 0), 3).is_ok());
        assert!(check_response(&response(2, 0), 3).is_err());
        // NOT_LEADER_OR_FOLLOWER
        assert!(check_response(&response(3, 6), 3).is_err());
        assert!(check_response(&response(3, 0)[..6], 3).is_err());
    }
}
