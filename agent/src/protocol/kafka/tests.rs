//! The Kafka session over messages encoded by the same crate's encoders,
//! as clients and brokers put them on the wire.

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    indexmap::IndexMap,
    messages::{
        fetch_response::{FetchableTopicResponse, PartitionData},
        produce_request::{PartitionProduceData, TopicProduceData},
        produce_response::{PartitionProduceResponse, TopicProduceResponse},
        ApiKey, FetchRequest, FetchResponse, JoinGroupRequest, ProduceRequest, ProduceResponse,
        RequestHeader, ResponseHeader, TopicName,
    },
    protocol::{Encodable, HeaderVersion, Request, StrBytes},
    records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
};

use super::{session::OpKind, Directory, Op, Session};
use crate::{
    capture::{Data, KernelCtx},
    nesting::{Nesting, Thread},
    protocol::Role,
    sampling::{Root, Sampler},
};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TID: u32 = 7;
/// The thread `Data::synthetic` records come from.
const THREAD: Thread = Thread { tgid: 1, tid: TID };

fn size_prefixed(body: BytesMut) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

fn request<R: Request + Encodable>(r: &R, version: i16, correlation_id: i32) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("orders-svc")))
        .encode(&mut buf, R::header_version(version))
        .unwrap();
    r.encode(&mut buf, version).unwrap();
    size_prefixed(buf)
}

fn response<R: Encodable + HeaderVersion>(
    r: &R,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, api.response_header_version(version))
        .unwrap();
    r.encode(&mut buf, version).unwrap();
    size_prefixed(buf)
}

fn record(offset: i64, value: &'static [u8], traceparent: Option<&'static str>) -> Record {
    let mut headers = IndexMap::new();
    headers.insert(
        StrBytes::from_static_str("app"),
        Some(Bytes::from_static(b"x")),
    );
    if let Some(tp) = traceparent {
        headers.insert(
            StrBytes::from_static_str("traceparent"),
            Some(Bytes::from_static(tp.as_bytes())),
        );
    }
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from_static(value)),
        headers,
    }
}

fn batch(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
    buf.freeze()
}

fn topic(name: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(name))
}

fn produce(partitions: &[(i32, Bytes)], acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic("orders"))
            .with_partition_data(
                partitions
                    .iter()
                    .map(|(p, records)| {
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some(records.clone()))
                    })
                    .collect(),
            )])
}

fn produce_response(results: &[(i32, i16, i64)]) -> ProduceResponse {
    ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
        .with_name(topic("orders"))
        .with_partition_responses(
            results
                .iter()
                .map(|(p, error, offset)| {
                    PartitionProduceResponse::default()
                        .with_index(*p)
                        .with_error_code(*error)
                        .with_base_offset(*offset)
                })
                .collect(),
        )])
}

fn fetch_response(records: Bytes) -> FetchResponse {
    FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(topic("orders"))
        .with_partitions(vec![PartitionData::default()
            .with_partition_index(2)
            .with_records(Some(records))])])
}

struct Harness {
    session: Session,
    nesting: Nesting,
    directory: Directory,
    ops: Vec<Op>,
    ts: u64,
}

impl Harness {
    fn new(role: Role) -> Self {
        Harness {
            session: Session::new(role, None),
            nesting: Nesting::new(Sampler::ParentBased(Root::AlwaysOn)),
            directory: Directory::default(),
            ops: Vec::new(),
            ts: 0,
        }
    }

    /// Feeds `bytes` as reads of at most `chunk` bytes.
    fn feed(&mut self, ingress: bool, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            self.ts += 1_000;
            let mut d = Data::synthetic(1, ingress, piece, piece.len(), self.ts);
            d.tid = TID;
            self.session
                .on_data(&d, &mut self.nesting, &mut self.directory, &mut self.ops);
        }
    }

    /// Client side: `sent` written, `received` read.
    fn exchange(&mut self, sent: &[u8], received: &[u8], chunk: usize) {
        self.feed(false, sent, chunk);
        self.feed(true, received, chunk);
    }
}

#[test]
fn produced_batches_become_send_spans_with_offsets_and_errors() {
    for chunk in [1, 7, 4096] {
        let mut h = Harness::new(Role::Client);
        let records = batch(
            &[record(0, b"a", None), record(1, b"b", None)],
            Compression::None,
        );
        let one = batch(&[record(0, b"c", None)], Compression::None);
        let req = request(&produce(&[(0, records), (1, one)], 1), 9, 5);
        let resp = response(
            &produce_response(&[(0, 0, 42), (1, 6, -1)]),
            ApiKey::Produce,
            9,
            5,
        );
        h.exchange(&req, &resp, chunk);
        assert_eq!(h.ops.len(), 2, "chunk {chunk}");
        let (a, b) = (&h.ops[0], &h.ops[1]);
        assert_eq!(a.kind, OpKind::Send);
        assert_eq!(
            (a.topic.as_deref(), a.partition, a.count, a.offset, a.error),
            (Some("orders"), Some(0), 2, Some(42), 0)
        );
        assert_eq!(a.client_id.as_deref(), Some("orders-svc"));
        // NOT_LEADER_OR_FOLLOWER: no offset.
        assert_eq!(
            (b.partition, b.error, b.offset, b.count),
            (Some(1), 6, None, 1)
        );
        // One request, one trace; each batch its own span.
        assert_eq!(a.ctx.trace_id, b.ctx.trace_id);
        assert_ne!(a.ctx.span_id, b.ctx.span_id);
        assert!(a.start_ns < a.end_ns);
    }
}

#[test]
fn kernel_ids_name_the_batches_it_injected() {
    let mut h = Harness::new(Role::Client);
    let ctx = clew_common::TraceCtx {
        trace_id: [3; 16],
        span_id: [4; 8],
        parent_id: [0; 8],
        flags: clew_common::ctxflag::SAMPLED | clew_common::ctxflag::INJECTED,
        _pad: [0; 7],
    };
    h.nesting.kernel(&KernelCtx {
        server: false,
        conn_id: 0,
        tid: TID,
        ts_ns: 1_000,
        ctx,
        stream_id: 9,
    });
    let records = batch(&[record(0, b"a", None)], Compression::None);
    let req = request(&produce(&[(0, records.clone()), (1, records)], 1), 7, 9);
    let resp = response(
        &produce_response(&[(0, 0, 1), (1, 0, 1)]),
        ApiKey::Produce,
        7,
        9,
    );
    h.exchange(&req, &resp, 4096);
    let ids: Vec<_> = h.ops.iter().map(|o| o.ctx.span_id).collect();
    assert_eq!(ids, [[4, 4, 4, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4, 4, 5]]);
    assert!(h.ops.iter().all(|o| o.ctx.trace_id == [3; 16]));
}

impl Harness {
    fn close(&mut self) {
        self.ts += 1_000;
        self.session.on_close(
            self.ts,
            &mut self.nesting,
            &mut self.directory,
            &mut self.ops,
        );
    }
}

#[test]
fn sends_still_unanswered_when_the_connection_closes_failed() {
    let mut h = Harness::new(Role::Client);
    let records = batch(&[record(0, b"a", None)], Compression::None);
    let req = request(&produce(&[(0, records.clone()), (1, records)], -1), 9, 5);
    h.feed(false, &req, 4096);
    assert!(h.ops.is_empty());
    h.close();
    assert_eq!(h.ops.len(), 2);
    for (op, partition) in h.ops.iter().zip([0, 1]) {
        assert_eq!(op.kind, OpKind::Send);
        assert!(op.closed);
        assert_eq!(
            (op.topic.as_deref(), op.partition),
            (Some("orders"), Some(partition))
        );
        assert_eq!((op.offset, op.end_ns), (None, h.ts));
    }
    assert_eq!(h.session.losses.unanswered, 1);
}

#[test]
fn a_fetch_still_polling_when_the_connection_closes_is_no_span() {
    let mut h = Harness::new(Role::Client);
    let fetch = FetchRequest::default().with_max_wait_ms(500);
    h.feed(false, &request(&fetch, 12, 3), 4096);
    h.close();
    assert!(h.ops.is_empty());
}

#[test]
fn a_broker_request_unanswered_when_the_connection_closes_failed() {
    let mut h = Harness::new(Role::Server);
    let records = batch(&[record(0, b"a", Some(TP))], Compression::None);
    h.feed(true, &request(&produce(&[(3, records)], -1), 9, 4), 4096);
    h.close();
    assert_eq!(h.ops.len(), 1);
    let op = &h.ops[0];
    assert_eq!(op.kind, OpKind::Broker(ApiKey::Produce));
    assert!(op.closed);
    // Still the producer's child.
    assert_eq!(
        op.ctx.parent.map(hex::encode).as_deref(),
        Some("00f067aa0ba902b7")
    );
}

#[test]
fn acks_zero_sends_end_when_written() {
    let mut h = Harness::new(Role::Client);
    let records = batch(&[record(0, b"a", None)], Compression::None);
    h.feed(false, &request(&produce(&[(0, records)], 0), 9, 1), 4096);
    assert_eq!(h.ops.len(), 1);
    assert_eq!(h.ops[0].start_ns, h.ops[0].end_ns);
}

#[test]
fn a_record_with_context_is_processed_in_its_trace_and_parents_the_threads_calls() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut h = Harness::new(Role::Client);
        h.feed(
            false,
            &request(
                &JoinGroupRequest::default()
                    .with_group_id(StrBytes::from_static_str("billing").into()),
                5,
                1,
            ),
            4096,
        );
        let records = batch(
            &[record(10, b"a", None), record(11, b"b", Some(TP))],
            compression,
        );
        let fetch = request(&FetchRequest::default(), 11, 2);
        h.exchange(
            &fetch,
            &response(&fetch_response(records), ApiKey::Fetch, 11, 2),
            5,
        );
        // The receive is done; the processing lasts until the next delivery.
        assert_eq!(h.ops.len(), 1, "{compression:?}");
        let receive = &h.ops[0];
        assert_eq!(
            (receive.kind, receive.count, receive.group.as_deref()),
            (OpKind::Receive, 2, Some("billing"))
        );
        // The consumer thread calls out while processing.
        let call = h.nesting.client_span(THREAD, h.ts + 10, None);
        let empty = response(&FetchResponse::default(), ApiKey::Fetch, 11, 3);
        h.exchange(&request(&FetchRequest::default(), 11, 3), &empty, 4096);
        assert_eq!(h.ops.len(), 2);
        let process = &h.ops[1];
        assert_eq!(process.kind, OpKind::Process);
        assert_eq!(
            hex::encode(process.ctx.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            process.ctx.parent.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!((process.offset, process.partition), (Some(11), Some(2)));
        assert_eq!(call.parent, Some(process.ctx.span_id));
        assert!(process.end_ns > process.start_ns);
        // After it ended, calls start their own traces.
        assert_eq!(h.nesting.client_span(THREAD, h.ts + 10, None).parent, None);
    }
}

#[test]
fn records_of_several_traces_in_one_delivery_parent_no_calls() {
    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let mut h = Harness::new(Role::Client);
    let records = batch(
        &[record(0, b"a", Some(TP)), record(1, b"b", Some(other))],
        Compression::None,
    );
    let fetch = request(&FetchRequest::default(), 11, 2);
    h.exchange(
        &fetch,
        &response(&fetch_response(records), ApiKey::Fetch, 11, 2),
        4096,
    );
    // Both processed at once (which one a later call belongs to is unknown).
    let kinds: Vec<_> = h.ops.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, [OpKind::Receive, OpKind::Process, OpKind::Process]);
    assert_eq!(h.nesting.client_span(THREAD, h.ts, None).parent, None);
}

#[test]
fn a_traced_broker_serves_produce_under_the_producers_span() {
    let mut h = Harness::new(Role::Server);
    let records = batch(&[record(0, b"a", Some(TP))], Compression::None);
    h.feed(true, &request(&produce(&[(3, records)], -1), 9, 4), 3);
    h.feed(
        false,
        &response(&produce_response(&[(3, 0, 8)]), ApiKey::Produce, 9, 4),
        3,
    );
    assert_eq!(h.ops.len(), 1);
    let op = &h.ops[0];
    assert_eq!(op.kind, OpKind::Broker(ApiKey::Produce));
    // The producer's context, from its record: whatever order the two
    // ends' records reached the agent in.
    assert_eq!(
        op.ctx.parent.map(hex::encode).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(op.count, 1);
    assert_eq!(
        (op.topic.as_deref(), op.partition),
        (Some("orders"), Some(3))
    );
}

#[test]
fn responses_pair_by_correlation_id_not_order() {
    let mut h = Harness::new(Role::Client);
    let records = batch(&[record(0, b"a", None)], Compression::None);
    h.feed(
        false,
        &request(&produce(&[(0, records.clone())], 1), 9, 1),
        4096,
    );
    h.feed(false, &request(&produce(&[(1, records)], 1), 9, 2), 4096);
    h.feed(
        true,
        &response(&produce_response(&[(1, 0, 5)]), ApiKey::Produce, 9, 2),
        4096,
    );
    h.feed(
        true,
        &response(&produce_response(&[(0, 0, 9)]), ApiKey::Produce, 9, 1),
        4096,
    );
    let got: Vec<_> = h.ops.iter().map(|o| (o.partition, o.offset)).collect();
    assert_eq!(got, [(Some(1), Some(5)), (Some(0), Some(9))]);
    // A response nobody asked for.
    h.feed(
        true,
        &response(&produce_response(&[]), ApiKey::Produce, 9, 77),
        4096,
    );
    assert_eq!(h.session.losses.orphan_responses, 1);
}

#[test]
fn garbage_and_truncation_cost_no_span_and_no_panic() {
    let bad_header = [0, 0, 0, 12, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    // A first message that is no Kafka request: not Kafka at all.
    let mut h = Harness::new(Role::Client);
    h.feed(false, &bad_header, 4096);
    assert!(h.session.is_hopeless());
    // After a good one, a bad header is an error on a Kafka connection.
    let mut h = Harness::new(Role::Client);
    h.feed(false, &request(&FetchRequest::default(), 11, 1), 4096);
    h.feed(false, &bad_header, 4096);
    assert_eq!(h.session.losses.decode_errors, 1);
    assert!(!h.session.is_hopeless());
    h.feed(false, &[0xff; 8], 4096);
    assert!(h.session.is_hopeless());
    assert!(h.ops.is_empty());
}

#[test]
fn fuzz_entry_point_survives_arbitrary_input() {
    let records = batch(&[record(0, b"a", Some(TP))], Compression::Lz4);
    let mut input = vec![0u8];
    for piece in request(&produce(&[(0, records)], 1), 9, 1).chunks(20) {
        input.push((piece.len() as u8) << 2);
        input.extend_from_slice(piece);
    }
    super::fuzzing::session(&input);
    let mut corrupted = input.clone();
    for i in (1..corrupted.len()).step_by(7) {
        corrupted[i] ^= 0x5a;
        super::fuzzing::session(&corrupted);
    }
}

/// tansu answers Fetch v12 with a top-level tag 0 (NodeEndpoints, listed
/// from v16 only): clients skip it, so must Clew.
#[test]
fn fetch_responses_with_tags_their_version_does_not_list_still_decode() {
    let mut h = Harness::new(Role::Client);
    let records = batch(&[record(5, b"a", Some(TP))], Compression::None);
    let mut resp = response(&fetch_response(records), ApiKey::Fetch, 12, 2);
    // No top-level tags (0) becomes one: tag 0, one byte long.
    assert_eq!(resp.pop(), Some(0));
    resp.extend_from_slice(&[1, 0, 1, 0]);
    let size = (resp.len() - 4) as u32;
    resp[..4].copy_from_slice(&size.to_be_bytes());
    h.exchange(&request(&FetchRequest::default(), 12, 2), &resp, 4096);
    let kinds: Vec<_> = h.ops.iter().map(|o| o.kind).collect();
    assert_eq!(kinds, [OpKind::Receive]);
    assert_eq!(h.session.losses.decode_errors, 0);
}

/// Records lost in the middle of a connection: each direction goes on at
/// the next chunk that starts a message; a request read before the loss is
/// still paired by its correlation id, and none is claimed failed at the
/// close (its response may have been among the lost records).
#[test]
fn lost_records_resume_at_the_next_message() {
    let mut h = Harness::new(Role::Client);
    let records = batch(&[record(0, b"a", None)], Compression::None);
    let sent = |id| request(&produce(&[(0, records.clone())], 1), 9, id);
    let answer =
        |id, offset| response(&produce_response(&[(0, 0, offset)]), ApiKey::Produce, 9, id);
    h.feed(false, &sent(5), 4096);
    h.feed(false, &sent(6), 4096);
    let seven = sent(7);
    h.feed(false, &seven[..20], 4096);
    h.session.resume_after_loss();
    // The rest of request 7, whose start went before the loss.
    h.feed(false, &seven[20..], 4096);
    assert_eq!(h.session.losses.skipped, 1);
    h.feed(false, &sent(8), 4096);
    // 5's response was lost; 7's answers no request read whole.
    h.feed(true, &answer(7, 70), 4096);
    assert_eq!(h.session.losses.skipped, 2);
    h.feed(true, &answer(8, 80), 4096);
    h.feed(true, &answer(6, 60), 4096);
    let got: Vec<_> = h.ops.iter().map(|o| (o.kind, o.offset)).collect();
    assert_eq!(got, [(OpKind::Send, Some(80)), (OpKind::Send, Some(60))]);
    assert!(!h.session.is_hopeless());
    h.close();
    assert_eq!(h.ops.len(), 2);
    assert_eq!(h.session.losses.unanswered, 1);
}

/// A broker reads each request's size on its own, then the rest: after a
/// loss, a size read is held until the read after it shows a request.
#[test]
fn a_broker_reading_sizes_alone_resumes() {
    let mut h = Harness::new(Role::Server);
    let records = batch(&[record(0, b"a", Some(TP))], Compression::None);
    let req = |id| request(&produce(&[(0, records.clone())], 1), 9, id);
    let first = req(1);
    h.feed(true, &first, 4096);
    h.session.resume_after_loss();
    // The tail of a request, then a size and a request body.
    h.feed(true, &first[30..], 4096);
    let second = req(2);
    h.feed(true, &second[..4], 4096);
    h.feed(true, &second[4..], 4096);
    assert_eq!(h.session.losses.skipped, 1);
    h.feed(
        false,
        &response(&produce_response(&[(0, 0, 3)]), ApiKey::Produce, 9, 2),
        4096,
    );
    assert_eq!(h.ops.len(), 1);
    let op = &h.ops[0];
    assert_eq!(op.kind, OpKind::Broker(ApiKey::Produce));
    assert_eq!(op.count, 1);
    // The producer's context, from the record.
    assert_eq!(hex::encode(op.ctx.trace_id), &TP[3..35]);
}
