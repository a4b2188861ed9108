//! HTTP/1 exchanges on one connection: pairs each response with its request
//! (by order, which HTTP/1 guarantees) and assigns trace context as
//! requests appear.

use std::{collections::VecDeque, net::SocketAddr};

use super::{Decoder, Frame, RequestHead, ResponseHead, Side};
use crate::{
    capture::Data,
    nesting::{request_key, Nesting, SpanCtx, Thread},
    protocol::{
        common::{adopt_kernel_ctx, request_ctx, Sender},
        Losses, Role,
    },
    trace_context,
};

/// Requests awaiting their response on one connection; more means the
/// peer pipelines absurdly or we lost sync, and the oldest is dropped.
const MAX_PENDING: usize = 64;

struct Pending {
    head: RequestHead,
    ctx: SpanCtx,
    start_ns: u64,
    response: Option<ResponseHead>,
}

/// A request and its complete response, or what came of it before the
/// connection closed.
pub struct Exchange {
    pub role: Role,
    pub request: RequestHead,
    /// `None`: the connection closed before a response head.
    pub response: Option<ResponseHead>,
    /// The connection closed before the response was complete.
    pub cut_off: bool,
    pub ctx: SpanCtx,
    pub start_ns: u64,
    pub end_ns: u64,
}

pub struct Session {
    role: Role,
    requests: Decoder,
    responses: Decoder,
    pending: VecDeque<Pending>,
    frames: Vec<Frame>,
    pub losses: Losses,
    /// The client's end of the TCP connection (our local address when we
    /// are the client, the peer when we serve), which links a CLIENT span
    /// to the SERVER span of the same request when one agent sees both.
    endpoint: Option<SocketAddr>,
    /// The server agreed to `Upgrade: h2c`: the connection speaks HTTP/2 next.
    h2c: bool,
}

impl Session {
    /// `mid_stream`: the connection was open before capture began, so either
    /// direction may start inside a message.
    pub fn new(role: Role, mid_stream: bool, endpoint: Option<SocketAddr>) -> Self {
        let decoder = if mid_stream {
            Decoder::mid_stream
        } else {
            Decoder::new
        };
        Session {
            role,
            requests: decoder(Side::Requests),
            responses: decoder(Side::Responses),
            pending: VecDeque::new(),
            frames: Vec::new(),
            losses: Losses::default(),
            endpoint,
            h2c: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The client's end of the connection, as given at creation.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// A 101 answered `Upgrade: h2c`: what follows is HTTP/2.
    pub fn upgraded_to_h2c(&self) -> bool {
        self.h2c
    }

    /// Both directions gave up on finding HTTP/1.
    pub fn is_hopeless(&self) -> bool {
        self.requests.is_hopeless() || self.responses.is_hopeless()
    }

    /// Feeds one syscall's bytes; finished exchanges are appended to `out`.
    pub fn on_data<T: From<Exchange>>(
        &mut self,
        d: &Data<'_>,
        nesting: &mut Nesting,
        out: &mut Vec<T>,
    ) {
        let carries_requests = d.ingress == (self.role == Role::Server);
        let mut frames = std::mem::take(&mut self.frames);
        if carries_requests {
            self.requests.feed(d.payload, d.total, d.ts_ns, &mut frames);
            for f in frames.drain(..) {
                let thread = Thread {
                    tgid: d.tgid,
                    tid: d.tid,
                };
                self.on_request_frame(f, thread, d.conn_id, nesting);
            }
        } else {
            self.responses
                .feed(d.payload, d.total, d.ts_ns, &mut frames);
            for f in frames.drain(..) {
                self.on_response_frame(f, nesting, out);
            }
        }
        self.frames = frames;
    }

    /// The connection closed: a response delimited by close ends here; any
    /// request still waiting failed, and is reported as such unless the
    /// connection's parsing had gone wrong before (then it is only counted).
    pub fn on_close<T: From<Exchange>>(
        &mut self,
        ts: u64,
        nesting: &mut Nesting,
        out: &mut Vec<T>,
    ) {
        let mut frames = std::mem::take(&mut self.frames);
        self.responses.finish(ts, &mut frames);
        for f in frames.drain(..) {
            self.on_response_frame(f, nesting, out);
        }
        let trusted = self.losses.is_clean();
        self.losses.unanswered += self.pending.len() as u64;
        for p in self.pending.drain(..) {
            if self.role == Role::Server {
                nesting.server_done(&p.ctx.span_id);
            }
            if !trusted {
                continue;
            }
            out.push(T::from(Exchange {
                role: self.role,
                request: p.head,
                response: p.response,
                cut_off: true,
                ctx: p.ctx,
                start_ns: p.start_ns,
                end_ns: ts.max(p.start_ns),
            }));
        }
    }

    /// The kernel's ids for a request already parsed (the kernel reports
    /// them right after the request's bytes): the exchange takes them, so
    /// it matches what was injected downstream.
    pub fn adopt_server_ctx(&mut self, ts: u64, ctx: SpanCtx, nesting: &mut Nesting) -> bool {
        let Some(p) = self.pending.iter_mut().find(|p| p.start_ns == ts) else {
            return false;
        };
        adopt_kernel_ctx(&mut p.ctx, ctx, nesting);
        true
    }

    fn on_request_frame(&mut self, f: Frame, thread: Thread, conn_id: u64, nesting: &mut Nesting) {
        match f {
            Frame::Request { head, ts } => {
                let from = Sender {
                    thread,
                    request: Some(request_key(
                        head.method(),
                        head.target(),
                        head.header("user-agent"),
                    )),
                    conn_id,
                    ts,
                    endpoint: self.endpoint,
                    stream: 0,
                };
                let named = |name: &'static str| {
                    head.headers()
                        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v)
                };
                let tp = trace_context::single(named("traceparent"));
                // Repeated `tracestate` headers are one list (RFC 9110 §5.3).
                let state = named("tracestate").collect::<Vec<_>>().join(",");
                let state = (!state.is_empty()).then_some(state.as_str());
                let ctx = request_ctx(self.role, from, tp, state, nesting);
                self.responses.expect_response_to(head.method());
                if self.pending.len() >= MAX_PENDING {
                    if let Some(p) = self.pending.pop_front() {
                        if self.role == Role::Server {
                            nesting.server_done(&p.ctx.span_id);
                        }
                    }
                    self.losses.unanswered += 1;
                }
                self.pending.push_back(Pending {
                    head,
                    ctx,
                    start_ns: ts,
                    response: None,
                });
            }
            Frame::Error(_) => self.losses.parse_errors += 1,
            // Request bodies and odd frames change nothing in the exchange.
            _ => {}
        }
    }

    fn on_response_frame<T: From<Exchange>>(
        &mut self,
        f: Frame,
        nesting: &mut Nesting,
        out: &mut Vec<T>,
    ) {
        match f {
            Frame::Response { head, .. } => {
                self.h2c |= head.status == 101
                    && head
                        .header("upgrade")
                        .is_some_and(|u| u.trim().eq_ignore_ascii_case("h2c"));
                match self.pending.iter_mut().find(|p| p.response.is_none()) {
                    Some(p) => p.response = Some(head),
                    None => self.losses.orphan_responses += 1,
                }
            }
            Frame::End { ts } => {
                if self.pending.front().is_none_or(|p| p.response.is_none()) {
                    return;
                }
                let p = self.pending.pop_front().expect("checked");
                if self.role == Role::Server {
                    nesting.server_done(&p.ctx.span_id);
                }
                out.push(T::from(Exchange {
                    role: self.role,
                    request: p.head,
                    response: p.response,
                    cut_off: false,
                    ctx: p.ctx,
                    start_ns: p.start_ns,
                    end_ns: ts.max(p.start_ns),
                }));
            }
            Frame::Error(_) => self.losses.parse_errors += 1,
            _ => {}
        }
    }
}
