//! HTTP/2 exchanges on one connection: decodes each direction's header
//! blocks, pairs requests and responses by stream id, assigns trace context
//! as requests appear, and counts gRPC messages.

use std::{collections::BTreeMap, net::SocketAddr};

use super::{
    frame::{Event, Frames, Payload},
    hpack::{Fields, HeaderDecoder},
};
use crate::{
    capture::Data,
    nesting::{request_key, Nesting, SpanCtx, Thread},
    protocol::{
        common::{adopt_kernel_ctx, request_ctx, Sender},
        Role,
    },
};

/// Streams open at once on one connection; past this the oldest is
/// dropped (peers allow about 100 by default, so this means lost ends).
const MAX_STREAMS: usize = 1024;

/// Chunks of a connection met mid-stream in which no frame boundary
/// showed, after which it is taken for another protocol.
const MAX_UNFRAMED_CHUNKS: u64 = 64;

/// A request and how its stream ended: with a response (and gRPC
/// trailers), or reset.
pub struct Exchange {
    pub role: Role,
    pub request: Fields,
    /// The final (non-1xx) response head; `None` if the stream was reset first.
    pub response: Option<Fields>,
    /// A second response block (gRPC status lives here).
    pub trailers: Option<Fields>,
    /// RST_STREAM error code, when a reset ended the stream.
    pub reset: Option<u32>,
    /// The connection closed with the stream still open.
    pub cut_off: bool,
    /// gRPC messages each way, when every message prefix was seen.
    pub request_messages: Option<u64>,
    pub response_messages: Option<u64>,
    pub ctx: SpanCtx,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Exchange {
    /// Header fields of the exchange that referred to table entries lost
    /// with capture (see `Fields::unknown`) where they could change the
    /// span: any of the request's (method, path, content type, trace
    /// context...), a response head's only when it has no status, the
    /// trailers' only when no gRPC status was read.
    pub fn unknown_fields(&self) -> u32 {
        let response = self.response.as_ref().filter(|r| r.status.is_none());
        let grpc_status = [&self.response, &self.trailers]
            .into_iter()
            .flatten()
            .any(|f| f.grpc_status.is_some());
        let trailers = self.trailers.as_ref().filter(|_| !grpc_status);
        [Some(&self.request), response, trailers]
            .into_iter()
            .flatten()
            .map(|f| f.unknown)
            .sum()
    }
}

/// Why exchanges were lost, for the pipeline's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Losses {
    /// A direction that never framed as HTTP/2.
    pub not_http2: u64,
    /// Invalid frame sequences, or header blocks past the buffer limit.
    pub parse_errors: u64,
    pub hpack_errors: u64,
    /// Bytes not captured inside a frame header or header block.
    pub gaps: u64,
    /// Chunks skipped after lost records, before one started at a frame
    /// boundary.
    pub skipped: u64,
    /// Directions that stopped being decoded (any of the above after sync).
    pub broken: u64,
    /// Requests whose stream ended without a response: connection closed,
    /// refused by GOAWAY, or dropped past [`MAX_STREAMS`].
    pub unanswered: u64,
    pub orphan_responses: u64,
}

/// Which way the bytes of one chunk go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Requests,
    Responses,
}

/// gRPC messages (a 5-byte prefix: flag and big-endian length) crossing
/// DATA frames, in constant space.
#[derive(Default)]
struct Messages {
    count: u64,
    /// Body bytes of the current message still to come.
    left: u64,
    prefix: [u8; 5],
    have: usize,
    lost: bool,
}

impl Messages {
    fn captured(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(5 - self.have);
            self.prefix[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 5 {
                self.count += 1;
                let p = &self.prefix;
                self.left = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                self.have = 0;
            }
        }
    }

    /// Bytes not captured: fine inside a message body, else the count is off.
    fn lost(&mut self, n: usize) {
        if self.have == 0 && self.left >= n as u64 {
            self.left -= n as u64;
        } else {
            self.lost = true;
        }
    }

    fn total(&self) -> Option<u64> {
        (!self.lost).then_some(self.count)
    }
}

struct Stream {
    request: Fields,
    ctx: SpanCtx,
    start_ns: u64,
    response: Option<Fields>,
    trailers: Option<Fields>,
    grpc: bool,
    sent: Messages,
    received: Messages,
}

impl Stream {
    fn into_exchange(self, role: Role, reset: Option<u32>, cut_off: bool, end: u64) -> Exchange {
        Exchange {
            role,
            request: self.request,
            response: self.response,
            trailers: self.trailers,
            reset,
            cut_off,
            request_messages: self.grpc.then(|| self.sent.total()).flatten(),
            response_messages: self.grpc.then(|| self.received.total()).flatten(),
            ctx: self.ctx,
            start_ns: self.start_ns,
            end_ns: end.max(self.start_ns),
        }
    }
}

struct Direction {
    frames: Frames,
    hpack: HeaderDecoder,
}

impl Direction {
    fn new(preface: bool) -> Self {
        Direction {
            frames: Frames::new(preface),
            hpack: HeaderDecoder::default(),
        }
    }
}

/// Open streams and what requests started them.
struct Calls {
    role: Role,
    /// The client's end of the TCP connection (see `common::request_ctx`).
    endpoint: Option<SocketAddr>,
    streams: BTreeMap<u32, Stream>,
    /// Highest stream id a request opened: client stream ids only grow, so
    /// a lower one is a late frame of a finished stream.
    last_stream: u32,
    /// Stream 1 is the HTTP/1 request that asked for `Upgrade: h2c`.
    upgraded: bool,
}

/// What handling one event may touch besides the streams.
struct Sink<'a> {
    nesting: &'a mut Nesting,
    out: &'a mut Vec<Exchange>,
    losses: &'a mut Losses,
    thread: Thread,
    conn_id: u64,
    ts: u64,
}

pub struct Session {
    requests: Direction,
    responses: Direction,
    calls: Calls,
    pub losses: Losses,
    /// Records of the connection were lost: a stream still open at its
    /// close may have been answered in them.
    resumed: bool,
    /// Met mid-stream: given up on if frames never show.
    picked_up: bool,
}

impl Session {
    /// A connection seen from its first byte, which the client preface opens.
    pub fn new(role: Role, endpoint: Option<SocketAddr>) -> Self {
        Self::starting(role, endpoint, false)
    }

    /// A connection an HTTP/1 request switched to HTTP/2 (`Upgrade: h2c`
    /// answered 101): the client preface comes next, and the response on
    /// stream 1 answers the HTTP/1 request, so it is not reported here.
    pub fn after_upgrade(role: Role, endpoint: Option<SocketAddr>) -> Self {
        Self::starting(role, endpoint, true)
    }

    /// A connection open before Clew started, met in the middle of its
    /// frames: as after lost records.
    pub fn mid_stream(role: Role, endpoint: Option<SocketAddr>) -> Self {
        let mut s = Self::starting(role, endpoint, false);
        s.resume_after_loss();
        s.picked_up = true;
        s
    }

    fn starting(role: Role, endpoint: Option<SocketAddr>, upgraded: bool) -> Self {
        Session {
            requests: Direction::new(true),
            responses: Direction::new(false),
            calls: Calls {
                role,
                endpoint,
                streams: BTreeMap::new(),
                last_stream: u32::from(upgraded),
                upgraded,
            },
            losses: Losses::default(),
            resumed: false,
            picked_up: false,
        }
    }

    pub fn role(&self) -> Role {
        self.calls.role
    }

    /// The kernel decided the ids of the server span of `stream`, whose
    /// HEADERS arrived in the read stamped `ts`.
    pub fn adopt_server_ctx(
        &mut self,
        stream: u32,
        ts: u64,
        ctx: SpanCtx,
        nesting: &mut Nesting,
    ) -> bool {
        let role = self.calls.role;
        match self.calls.streams.get_mut(&stream) {
            Some(s) if role == Role::Server && s.start_ns == ts => {
                adopt_kernel_ctx(&mut s.ctx, ctx, nesting);
                true
            }
            _ => false,
        }
    }

    /// A direction stopped being decoded (it was not HTTP/2, or HPACK
    /// state was lost): no exchange can complete on this connection again.
    pub fn is_hopeless(&self) -> bool {
        let never_framed = self.picked_up
            && !self.requests.frames.is_synced()
            && !self.responses.frames.is_synced()
            && self.losses.skipped >= MAX_UNFRAMED_CHUNKS;
        never_framed || self.requests.frames.is_broken() || self.responses.frames.is_broken()
    }

    /// Records of the connection were lost, in one direction or both (the
    /// kernel does not say which): each direction picks up at the next
    /// chunk that starts at a frame boundary, with its header table's
    /// entries unknown (see `HeaderDecoder::forget`). Streams open across
    /// the loss stay open: a response still to come ends them; their gRPC
    /// message counts are no longer known.
    pub fn resume_after_loss(&mut self) {
        self.requests.frames.resync();
        self.responses.frames.resync();
        for s in self.calls.streams.values_mut() {
            s.sent.lost = true;
            s.received.lost = true;
        }
        self.resumed = true;
    }

    /// Feeds one syscall's bytes; finished exchanges are appended to `out`.
    pub fn on_data(&mut self, d: &Data<'_>, nesting: &mut Nesting, out: &mut Vec<Exchange>) {
        let side = if d.ingress == (self.calls.role == Role::Server) {
            Side::Requests
        } else {
            Side::Responses
        };
        let Session {
            requests,
            responses,
            calls,
            losses,
            ..
        } = self;
        let Direction { frames, hpack } = match side {
            Side::Requests => requests,
            Side::Responses => responses,
        };
        let mut sink = Sink {
            nesting,
            out,
            losses,
            thread: Thread {
                tgid: d.tgid,
                tid: d.tid,
            },
            conn_id: d.conn_id,
            ts: d.ts_ns,
        };
        // Until a chunk starts at a frame boundary, every skipped one may
        // have changed the header table.
        if frames.is_resyncing() {
            hpack.forget();
        }
        let mut hpack_failed = false;
        let framed = frames.feed(d.payload, d.total, d.ts_ns, &mut |ev| {
            // HPACK state is unknown after an error: nothing more is trusted.
            if hpack_failed {
                return;
            }
            let decoded = match &ev {
                Event::Headers { block, .. } | Event::Promise { block } => {
                    match hpack.decode(block) {
                        Ok(fields) => Some(fields),
                        Err(_) => {
                            hpack_failed = true;
                            return;
                        }
                    }
                }
                _ => None,
            };
            calls.apply(side, ev, decoded, &mut sink);
        });
        let synced = frames.is_synced();
        if hpack_failed {
            frames.stop();
            losses.hpack_errors += 1;
            losses.broken += 1;
        } else if let Err(e) = framed {
            use super::frame::FrameError;
            match e {
                FrameError::Unsynced => {
                    losses.skipped += 1;
                    return;
                }
                _ if !synced => losses.not_http2 += 1,
                FrameError::Gap => losses.gaps += 1,
                _ => losses.parse_errors += 1,
            }
            if synced {
                losses.broken += 1;
            }
        }
    }

    /// The connection closed: requests still open failed, and are
    /// reported as such unless the connection's decoding had gone wrong
    /// before (then they are only counted).
    pub fn on_close(&mut self, ts: u64, nesting: &mut Nesting, out: &mut Vec<Exchange>) {
        let trusted = !self.resumed && crate::protocol::Losses::from(self.losses).is_clean();
        let open = std::mem::take(&mut self.calls.streams);
        self.losses.unanswered += open.len() as u64;
        for s in open.into_values() {
            self.calls.abandoned(&s, nesting);
            if trusted {
                out.push(s.into_exchange(self.calls.role, None, true, ts));
            }
        }
    }
}

impl Calls {
    fn apply(&mut self, side: Side, ev: Event<'_>, fields: Option<Fields>, sink: &mut Sink<'_>) {
        match (ev, fields) {
            (Event::Headers { stream, ts, .. }, Some(f)) if side == Side::Requests => {
                self.on_request(stream, f, ts, sink)
            }
            (
                Event::Headers {
                    stream, end_stream, ..
                },
                Some(f),
            ) => self.on_response(stream, end_stream, f, sink),
            (Event::Data { stream, bytes }, _) => {
                let Some(s) = self.streams.get_mut(&stream).filter(|s| s.grpc) else {
                    return;
                };
                let m = match side {
                    Side::Requests => &mut s.sent,
                    Side::Responses => &mut s.received,
                };
                match bytes {
                    Payload::Captured(b) => m.captured(b),
                    Payload::Lost(n) => m.lost(n),
                }
            }
            (
                Event::DataEnd {
                    stream,
                    end_stream: true,
                },
                _,
            ) if side == Side::Responses => self.finish(stream, None, sink),
            (Event::Reset { stream, code }, _) => self.finish(stream, Some(code), sink),
            // GOAWAY names the last stream its sender will process of those
            // the receiver opened: only the server's matters.
            (Event::GoAway { last_stream, .. }, _) if side == Side::Responses => {
                let refused = self.streams.split_off(&last_stream.saturating_add(1));
                sink.losses.unanswered += refused.len() as u64;
                for s in refused.values() {
                    self.abandoned(s, sink.nesting);
                }
            }
            // Pushed requests, request trailers, other DATA ends.
            _ => {}
        }
    }

    fn on_request(&mut self, id: u32, request: Fields, ts: u64, sink: &mut Sink<'_>) {
        // Only clients open requests, on odd ids.
        if id.is_multiple_of(2) || id <= self.last_stream {
            return;
        }
        self.last_stream = id;
        if self.streams.len() >= MAX_STREAMS {
            if let Some((_, oldest)) = self.streams.pop_first() {
                sink.losses.unanswered += 1;
                self.abandoned(&oldest, sink.nesting);
            }
        }
        let key = (request.method.as_deref())
            .zip(request.path.as_deref())
            .map(|(m, p)| request_key(m, p, request.user_agent.as_deref()));
        let from = Sender {
            thread: sink.thread,
            request: key,
            conn_id: sink.conn_id,
            ts,
            endpoint: self.endpoint,
            stream: id,
        };
        let (tp, state) = (
            request.traceparent.as_deref(),
            request.tracestate.as_deref(),
        );
        let ctx = request_ctx(self.role, from, tp, state, sink.nesting);
        let grpc = request
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/grpc"));
        let stream = Stream {
            request,
            ctx,
            start_ns: ts,
            response: None,
            trailers: None,
            grpc,
            sent: Messages::default(),
            received: Messages::default(),
        };
        self.streams.insert(id, stream);
    }

    fn on_response(&mut self, id: u32, end_stream: bool, f: Fields, sink: &mut Sink<'_>) {
        let Some(s) = self.streams.get_mut(&id) else {
            // Pushed streams are even; stream 1 of an upgrade answers HTTP/1.
            let pushed_or_upgraded = id.is_multiple_of(2) || (self.upgraded && id == 1);
            if !pushed_or_upgraded {
                sink.losses.orphan_responses += 1;
            }
            return;
        };
        if s.response.is_none() {
            // 1xx heads (100 Continue, 103 Early Hints) precede the real one.
            if f.status.is_some_and(|st| st < 200) && !end_stream {
                return;
            }
            s.response = Some(f);
        } else {
            s.trailers = Some(f);
        }
        if end_stream {
            self.finish(id, None, sink);
        }
    }

    /// The stream ended: its response ended, or a reset with `code`. The
    /// response's end ends the exchange even if the request half is still
    /// open: a server that answered is done (RFC 9113 §8.1).
    fn finish(&mut self, id: u32, reset: Option<u32>, sink: &mut Sink<'_>) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if self.role == Role::Server {
            sink.nesting.server_done(&s.ctx.span_id);
        }
        sink.out
            .push(s.into_exchange(self.role, reset, false, sink.ts));
    }

    /// A stream given up on: the thread serving it serves it no more.
    fn abandoned(&self, s: &Stream, nesting: &mut Nesting) {
        if self.role == Role::Server {
            nesting.server_done(&s.ctx.span_id);
        }
    }
}
