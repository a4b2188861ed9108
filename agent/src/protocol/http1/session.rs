//! HTTP/1 exchanges on one connection: pairs each response with its request
//! (by order, which HTTP/1 guarantees) and assigns trace context as
//! requests appear.

use std::{collections::VecDeque, net::SocketAddr};

use super::{Decoder, Frame, Known, RequestHead, ResponseHead, Side};
use crate::{
    capture::Data,
    nesting::{request_key, Nesting, SpanCtx, Thread},
    protocol::{
        common::{adopt_kernel_ctx, request_ctx, Sender},
        Losses, Role,
    },
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

impl Pending {
    /// The exchange, ended at `end_ns` (never before it started); `cut_off`:
    /// by the connection's close, without a complete response.
    fn ended(self, role: Role, end_ns: u64, cut_off: bool) -> Exchange {
        Exchange {
            role,
            request: self.head,
            response: self.response,
            cut_off,
            ctx: self.ctx,
            start_ns: self.start_ns,
            end_ns: end_ns.max(self.start_ns),
        }
    }
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
    mid_stream: bool,
    /// Client side: responses read before the request they answer reached
    /// the agent (see [`Early`]).
    early: VecDeque<Early>,
}

/// A client's response whose request record is still on its way: a
/// client that writes on one thread and reads on another (Go's
/// `net/http`, with its own goroutines for each) can finish reading the
/// response before the writing thread's syscall returns, and the ring
/// buffer orders records by return. On a connection seen from its first
/// byte, a response before any request can only be that, or the answer to
/// a request whose bytes were missed (TLS probes attached while it was
/// written): it waits for the next request written by another thread. The
/// thread that read it cannot be the one about to write its request, since
/// a thread's calls return in order: to that thread's request it is an
/// orphan, and pairing it would shift every later pairing by one.
struct Early {
    head: ResponseHead,
    /// When its last byte was read, if it was.
    end_ns: Option<u64>,
    /// The thread that read it.
    tid: u32,
}

/// Early responses held at most per connection.
const MAX_EARLY: usize = 4;

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
            mid_stream,
            early: VecDeque::new(),
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
                self.pair_early(d.tid, out);
            }
        } else {
            self.responses
                .feed(d.payload, d.total, d.ts_ns, &mut frames);
            for f in frames.drain(..) {
                self.on_response_frame(f, d.tid, nesting, out);
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
            // Read before the close by some thread: no request follows.
            self.on_response_frame(f, 0, nesting, out);
        }
        self.losses.orphan_responses += self.early.len() as u64;
        self.early.clear();
        let trusted = self.losses.is_clean();
        self.losses.unanswered += self.pending.len() as u64;
        for p in self.pending.drain(..) {
            if self.role == Role::Server {
                nesting.server_done(&p.ctx.span_id);
            }
            if !trusted {
                continue;
            }
            out.push(T::from(p.ended(self.role, ts, true)));
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

    /// A request written by thread `tid` arrived while responses read
    /// before it wait: the oldest read by another thread answers it
    /// (requests and responses keep their order on a connection); those
    /// `tid` read itself answered requests that were missed. Its span ends
    /// no earlier than it starts, since the request's timestamp is the late
    /// syscall return.
    fn pair_early<T: From<Exchange>>(&mut self, tid: u32, out: &mut Vec<T>) {
        while self.early.front().is_some_and(|e| e.tid == tid) {
            self.early.pop_front();
            self.losses.orphan_responses += 1;
        }
        // Only the oldest request may take it: an earlier one still
        // without response would mean the order is not what it seems.
        let waiting = self.pending.iter().position(|p| p.response.is_none());
        if waiting != Some(0) || self.early.is_empty() {
            return;
        }
        let e = self.early.pop_front().expect("checked");
        self.pending[0].response = Some(e.head);
        if let Some(end) = e.end_ns {
            let p = self.pending.pop_front().expect("checked");
            out.push(T::from(p.ended(self.role, end, false)));
        }
    }

    fn on_request_frame(&mut self, f: Frame, thread: Thread, conn_id: u64, nesting: &mut Nesting) {
        match f {
            Frame::Request { head, ts } => {
                let from = Sender {
                    thread,
                    request: Some(request_key(
                        head.method(),
                        head.target(),
                        head.known(Known::UserAgent),
                    )),
                    conn_id,
                    ts,
                    endpoint: self.endpoint,
                    stream: 0,
                };
                let tp = head.known_once(Known::Traceparent);
                let state = head.known_list(Known::Tracestate);
                let state = (!state.is_empty()).then_some(&*state);
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
        tid: u32,
        nesting: &mut Nesting,
        out: &mut Vec<T>,
    ) {
        match f {
            Frame::Response { head, .. } => {
                self.h2c |= head.to_h2c;
                match self.pending.iter_mut().find(|p| p.response.is_none()) {
                    Some(p) => p.response = Some(head),
                    None if self.role == Role::Client
                        && !self.mid_stream
                        && self.early.len() < MAX_EARLY =>
                    {
                        self.early.push_back(Early {
                            head,
                            end_ns: None,
                            tid,
                        })
                    }
                    None => self.losses.orphan_responses += 1,
                }
            }
            Frame::End { ts } => {
                if self.pending.front().is_none_or(|p| p.response.is_none()) {
                    if let Some(e) = self.early.back_mut().filter(|e| e.end_ns.is_none()) {
                        e.end_ns = Some(ts);
                    }
                    return;
                }
                let p = self.pending.pop_front().expect("checked");
                if self.role == Role::Server {
                    nesting.server_done(&p.ctx.span_id);
                }
                out.push(T::from(p.ended(self.role, ts, false)));
            }
            Frame::Error(_) => self.losses.parse_errors += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{Root, Sampler};

    /// Feeds `calls` (ingress, bytes, by which thread) to a client session.
    fn run(mid_stream: bool, calls: &[(bool, &'static [u8], u32)]) -> (Vec<Exchange>, Losses) {
        let mut s = Session::new(Role::Client, mid_stream, None);
        let mut nesting = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
        let mut out: Vec<Exchange> = Vec::new();
        for (i, (ingress, bytes, tid)) in calls.iter().enumerate() {
            let d = Data {
                tid: *tid,
                ..Data::synthetic(1, *ingress, bytes, bytes.len(), i as u64 + 1)
            };
            s.on_data(&d, &mut nesting, &mut out);
        }
        (out, s.losses)
    }

    const REQ_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const REQ_B: &[u8] = b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const FAIL: &[u8] = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";

    fn statuses(out: &[Exchange]) -> Vec<(String, Option<u16>)> {
        out.iter()
            .map(|x| {
                let path = x.request.target().to_owned();
                (path, x.response.as_ref().map(|r| r.status))
            })
            .collect()
    }

    /// The response of /a is read before its request's record arrives (Go
    /// reads on another thread): every request still gets its own response.
    #[test]
    fn a_response_read_before_its_request_record_still_pairs_right() {
        let (out, losses) = run(
            false,
            &[
                (true, OK, 8),
                (false, REQ_A, 7),
                (false, REQ_B, 7),
                (true, FAIL, 8),
            ],
        );
        assert_eq!(
            statuses(&out),
            [
                ("/a".to_owned(), Some(200)),
                ("/fail".to_owned(), Some(500))
            ]
        );
        assert_eq!(losses.orphan_responses, 0);
        // The early exchange ends no earlier than its request's record.
        assert!(out[0].end_ns >= out[0].start_ns);
    }

    /// On a connection met mid-stream, a response without request is the
    /// answer to a request from before the agent: it pairs with nothing.
    #[test]
    fn mid_stream_orphans_answer_nothing_later() {
        let (out, losses) = run(true, &[(true, OK, 7), (false, REQ_B, 7), (true, FAIL, 7)]);
        assert_eq!(statuses(&out), [("/fail".to_owned(), Some(500))]);
        assert_eq!(losses.orphan_responses, 1);
    }

    /// A response the writing thread read itself before its next request
    /// answered a request whose bytes were missed (TLS probes attached
    /// while it was written): it answers nothing later, and no later
    /// request is paired with its predecessor's response.
    #[test]
    fn a_missed_request_shifts_no_later_pairing() {
        let (out, losses) = run(
            false,
            &[
                (true, OK, 7),
                (false, REQ_A, 7),
                (true, FAIL, 7),
                (false, REQ_B, 7),
                (true, OK, 7),
            ],
        );
        assert_eq!(
            statuses(&out),
            [
                ("/a".to_owned(), Some(500)),
                ("/fail".to_owned(), Some(200))
            ]
        );
        assert_eq!(losses.orphan_responses, 1);
    }
}
