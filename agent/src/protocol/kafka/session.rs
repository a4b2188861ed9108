//! Kafka exchanges on one connection: requests and responses paired by
//! correlation id (clients pipeline requests, so order alone does not
//! pair them), trace context assigned as requests appear, and the
//! messaging operations they amount to.

use std::{borrow::Cow, collections::BTreeMap, net::SocketAddr};

use kafka_protocol::messages::ApiKey;

use super::{
    directory::Directory,
    framing::{FrameError, Frames, Message, MAX_SIZE, MIN_SIZE},
    wire::{self, Batch, RecordCtx, Request, RequestHead, Response},
};
use crate::{
    capture::Data,
    nesting::{Nesting, SpanCtx, Thread},
    protocol::{
        common::{request_ctx, Sender},
        Losses, Role,
    },
};

/// Requests awaiting a response on one connection (librdkafka allows 1M
/// in flight in theory, 5 per partition leader by default).
const MAX_PENDING: usize = 1024;
/// CONSUMER spans waiting for their thread's next delivery.
const MAX_PROCESSING: usize = 1024;

/// What a finished operation becomes: one span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A produced batch (PRODUCER).
    Send,
    /// A fetch that returned records of a topic (CLIENT).
    Receive,
    /// A received record carrying a trace context (CONSUMER).
    Process,
    /// The broker's side of a Produce or Fetch (SERVER).
    Broker(ApiKey),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    pub ctx: SpanCtx,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `None`: a topic id no Metadata response named.
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub count: u32,
    pub client_id: Option<String>,
    pub group: Option<String>,
    /// Kafka error code (0: none).
    pub error: i16,
    /// The connection closed before the response came: the operation
    /// failed (`error.type` `connection_closed`).
    pub closed: bool,
    pub tombstone: bool,
}

struct Pending {
    head: RequestHead,
    ts: u64,
    work: Work,
}

enum Work {
    /// Produced batches and the PRODUCER span of each.
    Produce(Vec<(Batch, SpanCtx)>),
    Fetch,
    /// A broker serving a Produce (with its record count) or a Fetch.
    Serve(SpanCtx, u32),
    Other,
}

pub struct Session {
    role: Role,
    endpoint: Option<SocketAddr>,
    requests: Frames,
    responses: Frames,
    pending: BTreeMap<i32, Pending>,
    /// Client library, from its ApiVersions request (`librdkafka`,
    /// `kafka-python`, `apache-kafka-java`).
    software: Option<String>,
    /// CONSUMER spans still open, by the thread that received them: each
    /// ends when that thread reads its next delivery.
    processing: Vec<(u32, Op)>,
    /// Some request header decoded: the connection is Kafka. Until then
    /// a header that does not decode means it is not.
    confirmed: bool,
    not_kafka: bool,
    pub losses: Losses,
    /// Records of the connection were lost: a request still waiting at
    /// its close may have been answered in them.
    resumed: bool,
    /// While a direction (requests, responses) resyncs after lost
    /// records: a size read on its own, and when (see `resync`).
    held: [Option<([u8; 4], u64)>; 2],
}

/// What handling one message may touch besides the session.
struct Sink<'a> {
    nesting: &'a mut Nesting,
    directory: &'a mut Directory,
    out: &'a mut Vec<Op>,
    tgid: u32,
    tid: u32,
    conn_id: u64,
    /// The call that completed the message.
    ts: u64,
}

impl Sink<'_> {
    fn thread(&self) -> Thread {
        Thread {
            tgid: self.tgid,
            tid: self.tid,
        }
    }
}

impl Session {
    pub fn new(role: Role, endpoint: Option<SocketAddr>) -> Self {
        Session {
            role,
            endpoint,
            requests: Frames::default(),
            responses: Frames::default(),
            pending: BTreeMap::new(),
            software: None,
            processing: Vec::new(),
            confirmed: false,
            not_kafka: false,
            losses: Losses::default(),
            resumed: false,
            held: [None; 2],
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// A direction lost its framing (nothing more can be paired), or the
    /// first request was not Kafka after all.
    pub fn is_hopeless(&self) -> bool {
        self.not_kafka || self.requests.is_broken() || self.responses.is_broken()
    }

    /// Records of the connection were lost, one way or both: each
    /// direction goes on at the next chunk that starts a message (a
    /// request header that decodes; a response whose correlation id is a
    /// request waiting for one). Kafka keeps no state across messages, so
    /// what is read after that is exact.
    pub fn resume_after_loss(&mut self) {
        self.requests.resync();
        self.responses.resync();
        self.resumed = true;
    }

    /// A direction after lost records: whether the chunk `d` starts a
    /// message, so that framing resumes with it. `None`: skip the chunk.
    /// `Some(Some(size))`: a size read on its own just before (brokers and
    /// the Java client read a message's size, then the rest) comes first.
    fn resync(&mut self, requests: bool, d: &Data<'_>) -> Option<Option<([u8; 4], u64)>> {
        let (frames, held) = if requests {
            (&mut self.requests, &mut self.held[0])
        } else {
            (&mut self.responses, &mut self.held[1])
        };
        if !frames.is_resyncing() {
            return Some(None);
        }
        let size = held.take();
        // A size held before that this chunk does not confirm is skipped.
        let unconfirmed = u64::from(size.is_some());
        if let (Ok(alone), 4) = (<[u8; 4]>::try_from(d.payload), d.total) {
            *held = Some((alone, d.ts_ns));
            self.losses.skipped += unconfirmed;
            return None;
        }
        let start = match size {
            Some((size, _)) => Cow::Owned([&size[..], d.payload].concat()),
            None => Cow::Borrowed(d.payload),
        };
        if !self.starts_message(requests, &start) {
            self.losses.skipped += 1 + unconfirmed;
            return None;
        }
        if requests {
            self.requests.resume();
        } else {
            self.responses.resume();
        }
        Some(size)
    }

    /// Whether a chunk read after lost records starts a message.
    fn starts_message(&self, requests: bool, b: &[u8]) -> bool {
        if requests {
            // A whole header, not only a size.
            return b.len() >= 14 && super::detect::is_request(b);
        }
        let Some(head) = b.get(..8) else {
            return false;
        };
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        (MIN_SIZE..=MAX_SIZE).contains(&size) && self.pending.contains_key(&correlation)
    }

    pub fn on_data(
        &mut self,
        d: &Data<'_>,
        nesting: &mut Nesting,
        directory: &mut Directory,
        out: &mut Vec<Op>,
    ) {
        let requests = d.ingress == (self.role == Role::Server);
        let Some(size_first) = self.resync(requests, d) else {
            return;
        };
        let mut messages = Vec::new();
        let frames = if requests {
            &mut self.requests
        } else {
            &mut self.responses
        };
        let synced = frames.is_synced();
        let mut push = |m| messages.push(m);
        let framed = match size_first {
            Some((size, ts)) => frames.feed(&size, size.len(), ts, &mut push),
            None => Ok(()),
        }
        .and_then(|()| frames.feed(d.payload, d.total, d.ts_ns, &mut push));
        let mut sink = Sink {
            nesting,
            directory,
            out,
            tgid: d.tgid,
            tid: d.tid,
            conn_id: d.conn_id,
            ts: d.ts_ns,
        };
        for m in messages {
            if requests {
                self.on_request(m, &mut sink);
            } else {
                self.on_response(m, &mut sink);
            }
        }
        if let Err(e) = framed {
            match e {
                FrameError::Gap => self.losses.gaps += 1,
                FrameError::Size(_) => self.losses.parse_errors += 1,
            }
            if synced {
                self.losses.desynced += 1;
            }
        }
    }

    /// The connection closed: requests still waiting for a response
    /// failed. Sends become PRODUCER spans and a broker's requests SERVER
    /// spans, with ERROR; fetches are left (a consumer that closes during
    /// a long poll lost nothing). CONSUMER spans end (their thread stopped
    /// reading from here).
    pub fn on_close(
        &mut self,
        ts: u64,
        nesting: &mut Nesting,
        directory: &mut Directory,
        out: &mut Vec<Op>,
    ) {
        let pending = std::mem::take(&mut self.pending);
        self.losses.unanswered += pending.len() as u64;
        for p in pending.into_values() {
            if self.resumed {
                // Its response may be among the lost records: counted only.
                if let Work::Serve(ctx, _) = &p.work {
                    nesting.server_done(&ctx.span_id);
                }
                continue;
            }
            let client_id = p.head.client_id;
            match p.work {
                Work::Produce(batches) => {
                    for (b, ctx) in batches {
                        let mut op = send_op(&b, ctx, p.ts, ts, client_id.clone(), directory);
                        op.closed = true;
                        out.push(op);
                    }
                }
                Work::Serve(ctx, produced) => {
                    nesting.server_done(&ctx.span_id);
                    out.push(Op {
                        kind: OpKind::Broker(p.head.api),
                        ctx,
                        start_ns: p.ts,
                        end_ns: ts.max(p.ts),
                        topic: None,
                        partition: None,
                        offset: None,
                        count: produced,
                        client_id,
                        group: None,
                        error: 0,
                        closed: true,
                        tombstone: false,
                    });
                }
                Work::Fetch | Work::Other => {}
            }
        }
        for (_, mut op) in self.processing.drain(..) {
            nesting.server_done(&op.ctx.span_id);
            op.end_ns = ts.max(op.start_ns);
            out.push(op);
        }
    }

    fn on_request(&mut self, m: Message, sink: &mut Sink<'_>) {
        let mut bytes = m.bytes;
        let head = match wire::request_head(&mut bytes) {
            Ok(h) => h,
            Err(e) if self.confirmed => {
                tracing::debug!("kafka request header: {e}");
                self.losses.decode_errors += 1;
                return;
            }
            Err(_) => {
                self.not_kafka = true;
                return;
            }
        };
        self.confirmed = true;
        let request = if m.whole {
            wire::request(&head, bytes).unwrap_or_else(|e| {
                tracing::debug!("kafka request: {e}");
                self.losses.decode_errors += 1;
                Request::Other
            })
        } else {
            if head.api == ApiKey::Produce {
                // Its batches were not captured: no span can name them.
                self.losses.gaps += 1;
            }
            Request::Other
        };
        let from = Sender {
            thread: sink.thread(),
            request: None,
            conn_id: sink.conn_id,
            ts: m.ts,
            endpoint: self.endpoint,
            // The kernel reports the ids it decides per correlation id.
            stream: head.correlation_id as u32,
        };
        let work = match (self.role, request) {
            (_, Request::ApiVersions { software }) => {
                self.software = software.or(self.software.take());
                Work::Other
            }
            (Role::Client, Request::Group(group)) => {
                sink.directory.note_group(sink.tgid, group);
                Work::Other
            }
            (Role::Client, Request::Produce { acks, batches }) => {
                let base = request_ctx(Role::Client, from, None, None, sink.nesting);
                let batches: Vec<(Batch, SpanCtx)> = batches
                    .into_iter()
                    .enumerate()
                    .map(|(k, b)| {
                        let mut ctx = base.clone();
                        // The ids the kernel injects into each batch's records.
                        ctx.span_id = clew_common::kafka::batch_span_id(base.span_id, k as u32);
                        (b, ctx)
                    })
                    .collect();
                if acks == 0 {
                    // No response will come: the send is done when written.
                    let client_id = head.client_id.clone();
                    for (b, ctx) in batches {
                        let op = send_op(&b, ctx, m.ts, m.ts, client_id.clone(), sink.directory);
                        sink.out.push(op);
                    }
                    return;
                }
                Work::Produce(batches)
            }
            (Role::Client, Request::Fetch) => Work::Fetch,
            (Role::Server, Request::Produce { batches, .. }) => {
                // The producer's context travels in its records (its SDK's,
                // or the one the kernel injected: the PRODUCER span of the
                // first batch): exact, and independent of which end's
                // record reaches the agent first.
                let producer = batches
                    .iter()
                    .flat_map(|b| b.contexts.iter().flatten())
                    .next()
                    .map(|c| c.traceparent.format());
                let ctx = request_ctx(Role::Server, from, producer.as_deref(), None, sink.nesting);
                Work::Serve(ctx, batches.iter().map(|b| b.records).sum())
            }
            (Role::Server, Request::Fetch) => {
                Work::Serve(request_ctx(Role::Server, from, None, None, sink.nesting), 0)
            }
            _ => Work::Other,
        };
        if self.pending.len() >= MAX_PENDING {
            if let Some((_, oldest)) = self.pending.pop_first() {
                self.losses.unanswered += 1;
                if let Work::Serve(ctx, _) = oldest.work {
                    sink.nesting.server_done(&ctx.span_id);
                }
            }
        }
        let p = Pending {
            head,
            ts: m.ts,
            work,
        };
        self.pending.insert(p.head.correlation_id, p);
    }

    fn on_response(&mut self, m: Message, sink: &mut Sink<'_>) {
        let Some(p) = wire::response_correlation(&m.bytes).and_then(|c| self.pending.remove(&c))
        else {
            self.losses.orphan_responses += 1;
            return;
        };
        let decoded = if m.whole {
            wire::response(p.head.api, p.head.version, m.bytes.clone())
                .map_err(|e| tracing::debug!("kafka response: {e}"))
                .ok()
        } else {
            None
        };
        if m.whole && decoded.is_none() {
            self.losses.decode_errors += 1;
        }
        let client_id = p.head.client_id.clone();
        match (p.work, decoded) {
            (Work::Produce(batches), Some(Response::Produce(results))) => {
                for (b, ctx) in batches {
                    let mut op = send_op(&b, ctx, p.ts, sink.ts, client_id.clone(), sink.directory);
                    if let Some(r) = results
                        .iter()
                        .find(|r| r.topic == b.topic && r.partition == b.partition)
                    {
                        op.error = r.error;
                        op.offset = (r.error == 0 && r.base_offset >= 0).then_some(r.base_offset);
                    }
                    sink.out.push(op);
                }
            }
            (Work::Produce(batches), _) => {
                // The response was not readable: the sends happened, their
                // outcome is unknown.
                for (b, ctx) in batches {
                    let op = send_op(&b, ctx, p.ts, sink.ts, client_id.clone(), sink.directory);
                    sink.out.push(op);
                }
            }
            (Work::Fetch, decoded) => {
                self.end_processing(sink);
                if let Some(Response::Fetch { batches, .. }) = decoded {
                    self.delivered(&p.head, p.ts, batches, sink);
                }
            }
            (Work::Serve(ctx, produced), decoded) => {
                sink.nesting.server_done(&ctx.span_id);
                self.served(p.head, p.ts, ctx, produced, decoded, sink);
            }
            (Work::Other, Some(Response::Metadata(topics))) => {
                for (id, name) in topics {
                    sink.directory.note_topic(id, name);
                }
            }
            _ => {}
        }
    }

    /// The thread is back for more records: what it processed is done.
    fn end_processing(&mut self, sink: &mut Sink<'_>) {
        let tid = sink.tid;
        let mut i = 0;
        while i < self.processing.len() {
            if self.processing[i].0 == tid {
                let (_, mut op) = self.processing.swap_remove(i);
                sink.nesting.server_done(&op.ctx.span_id);
                op.end_ns = sink.ts.max(op.start_ns);
                sink.out.push(op);
            } else {
                i += 1;
            }
        }
    }

    /// A fetch returned records: a `receive` per topic, and a `process`
    /// per record that carries a trace context.
    fn delivered(
        &mut self,
        head: &RequestHead,
        fetched_at: u64,
        batches: Vec<Batch>,
        sink: &mut Sink<'_>,
    ) {
        let group = sink.directory.group(sink.tgid);
        // The thread that read the records runs the application's handling
        // of them (kafka-python, the Java client's poll) unless the library
        // fetches on threads of its own (librdkafka): only then do its
        // outgoing calls belong to a record, and only if exactly one trace
        // context came in this delivery.
        let reads_on_app_thread = self.software.as_deref() != Some("librdkafka");
        let mut distinct = batches
            .iter()
            .flat_map(|b| b.contexts.iter().flatten())
            .map(|c| (c.traceparent.trace_id, c.traceparent.parent_id));
        let first = distinct.next();
        let one_context = first.is_some() && distinct.all(|c| Some(c) == first);
        let mut serving = reads_on_app_thread && one_context;

        let mut topics: Vec<(Option<String>, u32, i16)> = Vec::new();
        for b in &batches {
            let topic = sink.directory.topic_name(&b.topic);
            match topics.iter_mut().find(|(t, ..)| *t == topic) {
                Some(t) => {
                    t.1 += b.records;
                    t.2 = if t.2 == 0 { b.error } else { t.2 };
                }
                None => topics.push((topic, b.records, b.error)),
            }
        }
        for (topic, count, error) in topics {
            if count == 0 && error == 0 {
                continue;
            }
            let op = Op {
                kind: OpKind::Receive,
                ctx: sink.nesting.nested_span(sink.thread()),
                start_ns: fetched_at,
                end_ns: sink.ts.max(fetched_at),
                topic,
                partition: None,
                offset: None,
                count,
                client_id: head.client_id.clone(),
                group: group.clone(),
                error,
                closed: false,
                tombstone: false,
            };
            sink.out.push(op);
        }
        for b in &batches {
            let topic = sink.directory.topic_name(&b.topic);
            for (i, ctx) in b.contexts.iter().enumerate() {
                let Some(RecordCtx {
                    traceparent,
                    tracestate,
                }) = ctx
                else {
                    continue;
                };
                let ctx = sink.nesting.consumer_span(
                    sink.thread(),
                    head.correlation_id as u32,
                    sink.ts,
                    traceparent,
                    tracestate.as_deref(),
                    serving,
                );
                let op = Op {
                    kind: OpKind::Process,
                    ctx,
                    start_ns: sink.ts,
                    end_ns: sink.ts,
                    topic: topic.clone(),
                    partition: Some(b.partition),
                    offset: Some(b.base_offset + i as i64),
                    count: 1,
                    client_id: head.client_id.clone(),
                    group: group.clone(),
                    error: 0,
                    closed: false,
                    tombstone: b.tombstones.get(i).copied().unwrap_or(false),
                };
                if serving && self.processing.len() < MAX_PROCESSING {
                    self.processing.push((sink.tid, op));
                } else {
                    sink.out.push(op);
                }
                serving = false;
            }
        }
    }

    /// The broker answered a Produce or Fetch.
    #[allow(clippy::too_many_arguments)]
    fn served(
        &mut self,
        head: RequestHead,
        start: u64,
        ctx: SpanCtx,
        produced: u32,
        decoded: Option<Response>,
        sink: &mut Sink<'_>,
    ) {
        let (topic, partition, count, error) = match decoded {
            Some(Response::Produce(results)) => {
                let first = results.first();
                (
                    first.and_then(|r| sink.directory.topic_name(&r.topic)),
                    first.map(|r| r.partition),
                    produced,
                    results
                        .iter()
                        .map(|r| r.error)
                        .find(|e| *e != 0)
                        .unwrap_or(0),
                )
            }
            Some(Response::Fetch { error, batches }) => {
                let count: u32 = batches.iter().map(|b| b.records).sum();
                if count == 0 && error == 0 && batches.iter().all(|b| b.error == 0) {
                    // A long poll that found nothing: not worth a span.
                    return;
                }
                let first = batches.first();
                (
                    first.and_then(|b| sink.directory.topic_name(&b.topic)),
                    first.map(|b| b.partition),
                    count,
                    if error != 0 {
                        error
                    } else {
                        batches
                            .iter()
                            .map(|b| b.error)
                            .find(|e| *e != 0)
                            .unwrap_or(0)
                    },
                )
            }
            _ => (None, None, 0, 0),
        };
        sink.out.push(Op {
            kind: OpKind::Broker(head.api),
            ctx,
            start_ns: start,
            end_ns: sink.ts.max(start),
            topic,
            partition,
            offset: None,
            count,
            client_id: head.client_id,
            group: None,
            error,
            closed: false,
            tombstone: false,
        });
    }
}

fn send_op(
    b: &Batch,
    ctx: SpanCtx,
    start: u64,
    end: u64,
    client_id: Option<String>,
    directory: &Directory,
) -> Op {
    Op {
        kind: OpKind::Send,
        ctx,
        start_ns: start,
        end_ns: end.max(start),
        topic: directory.topic_name(&b.topic),
        partition: Some(b.partition),
        offset: None,
        count: b.records,
        client_id,
        group: None,
        error: 0,
        closed: false,
        tombstone: false,
    }
}
