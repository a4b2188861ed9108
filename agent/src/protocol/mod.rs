//! Protocol parsers: pure functions over captured bytes, one folder per
//! protocol, each with the same anatomy: `detect` (is this connection
//! ours, from its first bytes or a hand-off), a streaming parser per
//! direction, a `session` that pairs requests with responses and assigns
//! trace context, and `spans` (finished transactions as OpenTelemetry
//! spans). The pipeline sees only [`Session`] and [`Transaction`]: a new
//! protocol is a folder and a variant here, not a change to the pipeline.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    capture::Data,
    clock::Clock,
    metrics::Measurement,
    nesting::{Nesting, SpanCtx},
    span::{Resource, Span},
};

pub mod common;
pub mod http1;
pub mod http2;
pub mod http_common;
pub mod kafka;

pub use common::{ConnFacts, Role, SpanOptions};

/// The protocols Clew parses, as they appear in counter labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Kafka,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Kafka];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Kafka => "kafka",
        }
    }

    /// Index into per-protocol tables ([`Protocol::ALL`] order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why transactions were abandoned, for the per-protocol counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    /// Framing errors: garbage, impossible frame sequences.
    pub parse_errors: u64,
    /// Header blocks that did not decode (HPACK); the direction's header
    /// state is unknown afterwards.
    pub decode_errors: u64,
    /// Bytes not captured where a header had to be read.
    pub gaps: u64,
    /// Chunks skipped after lost records, before one started at a
    /// message boundary.
    pub skipped: u64,
    /// Directions given up on after being in sync: their later messages
    /// cannot be read with certainty, so they give no spans.
    pub desynced: u64,
    /// Requests whose response never came.
    pub unanswered: u64,
    /// Responses without a request.
    pub orphan_responses: u64,
}

impl Losses {
    /// Nothing went wrong on the connection so far: a request still open
    /// when it closes really got no response (otherwise its response may
    /// be among what was not read, and no failure is claimed).
    pub fn is_clean(&self) -> bool {
        *self == Losses::default()
    }
}

impl std::ops::Sub for Losses {
    type Output = Losses;
    fn sub(self, before: Losses) -> Losses {
        Losses {
            parse_errors: self.parse_errors - before.parse_errors,
            decode_errors: self.decode_errors - before.decode_errors,
            gaps: self.gaps - before.gaps,
            skipped: self.skipped - before.skipped,
            desynced: self.desynced - before.desynced,
            unanswered: self.unanswered - before.unanswered,
            orphan_responses: self.orphan_responses - before.orphan_responses,
        }
    }
}

impl From<http2::Losses> for Losses {
    fn from(l: http2::Losses) -> Self {
        // `not_http2` is a connection that was never HTTP/2: the pipeline
        // counts it when it stops capturing it.
        Losses {
            parse_errors: l.parse_errors,
            decode_errors: l.hpack_errors,
            gaps: l.gaps,
            skipped: l.skipped,
            desynced: l.broken,
            unanswered: l.unanswered,
            orphan_responses: l.orphan_responses,
        }
    }
}

/// Facts a protocol learns on one connection and needs on others.
#[derive(Default)]
pub struct Shared {
    pub kafka: kafka::Directory,
}

/// One connection's protocol state.
pub enum Session {
    Http1(http1::Session),
    Http2(http2::Session),
    Kafka(kafka::Session),
}

/// A finished request/response (or message) that its protocol turns into a span.
pub enum Transaction {
    Http1(http1::Exchange),
    /// Boxed: its decoded fields make it several times HTTP/1's size.
    Http2(Box<http2::Exchange>),
    /// One messaging operation (a produced batch, a fetch, a record's processing).
    Kafka(Box<kafka::Op>),
}

impl From<http1::Exchange> for Transaction {
    fn from(x: http1::Exchange) -> Self {
        Transaction::Http1(x)
    }
}

impl Session {
    /// The session for a connection whose first captured bytes (in one
    /// direction) are `payload`. `role` is known when Clew saw the
    /// accept/connect; `None` means the connection was met mid-stream.
    /// `endpoint` gives the client's end of the connection for a role.
    /// `None`: not a protocol Clew parses, or a mid-stream connection
    /// nothing can resynchronise on (HTTP/2's header compression needs the
    /// stream from its start), so capture can stop.
    pub fn detect(
        role: Option<Role>,
        ingress: bool,
        payload: &[u8],
        endpoint: impl Fn(Role) -> Option<SocketAddr>,
    ) -> Option<Session> {
        let Some(role) = role else {
            let role = http1::detect::sniff_role(ingress, payload)?;
            return Some(Session::Http1(http1::Session::new(
                role,
                true,
                endpoint(role),
            )));
        };
        // The client's preface; or, first, the server's SETTINGS frame,
        // which a server may write (and its client read) before the preface.
        let from_client = ingress == (role == Role::Server);
        let h2 = if from_client {
            http2::detect::is_client_preface(payload)
        } else {
            http2::detect::is_server_settings(payload)
        };
        if h2 == Some(true) {
            return Some(Session::Http2(http2::Session::new(role, endpoint(role))));
        }
        if from_client && kafka::detect::is_request(payload) {
            return Some(Session::Kafka(kafka::Session::new(role, endpoint(role))));
        }
        // HTTP/1 is the fallback for a known role: its framer tells
        // garbage from a request and gives up on its own.
        Some(Session::Http1(http1::Session::new(
            role,
            false,
            endpoint(role),
        )))
    }

    /// A connection met mid-stream whose first captured bytes are not
    /// HTTP/1, the process being `side` of it: Kafka when a client's bytes
    /// start a request whose header decodes, HTTP/2 when they may start a
    /// frame. Either is followed as after lost records (see their
    /// sessions' `resume_after_loss`); HTTP/2 is given up if frames never
    /// show. HTTP/2's header tables are unknown, so its spans may lack
    /// fields (and say so); Kafka's messages stand alone.
    pub fn mid_stream(
        side: Role,
        ingress: bool,
        payload: &[u8],
        endpoint: impl Fn(Role) -> Option<SocketAddr>,
    ) -> Option<Session> {
        let from_client = ingress == (side == Role::Server);
        // A whole request header, not only a size.
        if from_client && payload.len() >= 14 && kafka::detect::is_request(payload) {
            let mut s = kafka::Session::new(side, endpoint(side));
            s.resume_after_loss();
            return Some(Session::Kafka(s));
        }
        http2::may_start_frames(payload)
            .then(|| Session::Http2(http2::Session::mid_stream(side, endpoint(side))))
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Session::Http1(_) => Protocol::Http1,
            Session::Http2(_) => Protocol::Http2,
            Session::Kafka(_) => Protocol::Kafka,
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Session::Http1(s) => s.role(),
            Session::Http2(s) => s.role(),
            Session::Kafka(s) => s.role(),
        }
    }

    pub fn losses(&self) -> Losses {
        match self {
            Session::Http1(s) => s.losses,
            Session::Http2(s) => s.losses.into(),
            Session::Kafka(s) => s.losses,
        }
    }

    /// Records of the connection were lost: whether the session goes on,
    /// at the next message boundary. HTTP/2 (its header table's older
    /// entries unknown) and Kafka do; HTTP/1 starts over, as a connection
    /// met mid-stream, and finds its next start line.
    pub fn resume_after_loss(&mut self) -> bool {
        match self {
            Session::Http2(s) => s.resume_after_loss(),
            Session::Kafka(s) => s.resume_after_loss(),
            Session::Http1(_) => return false,
        }
        true
    }

    /// The stream turned out not to be this protocol, or can no longer be
    /// read with certainty: stop capturing it.
    pub fn is_hopeless(&self) -> bool {
        match self {
            Session::Http1(s) => s.is_hopeless(),
            Session::Http2(s) => s.is_hopeless(),
            Session::Kafka(s) => s.is_hopeless(),
        }
    }

    /// Feeds one syscall's bytes; finished transactions are appended to
    /// `out`. An HTTP/1 connection upgraded to h2c continues as HTTP/2.
    pub fn on_data(
        &mut self,
        d: &Data<'_>,
        nesting: &mut Nesting,
        shared: &mut Shared,
        out: &mut Vec<Transaction>,
    ) {
        match self {
            Session::Http1(s) => {
                s.on_data(d, nesting, out);
                if s.upgraded_to_h2c() {
                    let (role, endpoint) = (s.role(), s.endpoint());
                    *self = Session::Http2(http2::Session::after_upgrade(role, endpoint));
                }
            }
            Session::Http2(s) => {
                let mut done = Vec::new();
                s.on_data(d, nesting, &mut done);
                out.extend(done.into_iter().map(|x| Transaction::Http2(Box::new(x))));
            }
            Session::Kafka(s) => {
                let mut done = Vec::new();
                s.on_data(d, nesting, &mut shared.kafka, &mut done);
                out.extend(done.into_iter().map(|x| Transaction::Kafka(Box::new(x))));
            }
        }
    }

    pub fn on_close(
        &mut self,
        ts: u64,
        nesting: &mut Nesting,
        shared: &mut Shared,
        out: &mut Vec<Transaction>,
    ) {
        match self {
            Session::Http1(s) => s.on_close(ts, nesting, out),
            Session::Http2(s) => {
                let mut done = Vec::new();
                s.on_close(ts, nesting, &mut done);
                out.extend(done.into_iter().map(|x| Transaction::Http2(Box::new(x))));
            }
            Session::Kafka(s) => {
                let mut done = Vec::new();
                s.on_close(ts, nesting, &mut shared.kafka, &mut done);
                out.extend(done.into_iter().map(|x| Transaction::Kafka(Box::new(x))));
            }
        }
    }

    /// The kernel decided the ids of the server span whose request bytes
    /// carry timestamp `ts` (on HTTP/2 `stream`); false when no such
    /// request is pending.
    pub fn adopt_server_ctx(
        &mut self,
        stream: u32,
        ts: u64,
        ctx: SpanCtx,
        nesting: &mut Nesting,
    ) -> bool {
        match self {
            Session::Http1(s) => s.adopt_server_ctx(ts, ctx, nesting),
            Session::Http2(s) => s.adopt_server_ctx(stream, ts, ctx, nesting),
            // The kernel decides no broker spans.
            Session::Kafka(_) => false,
        }
    }
}

impl Transaction {
    pub fn protocol(&self) -> Protocol {
        match self {
            Transaction::Http1(_) => Protocol::Http1,
            Transaction::Http2(_) => Protocol::Http2,
            Transaction::Kafka(_) => Protocol::Kafka,
        }
    }

    pub fn ctx_mut(&mut self) -> &mut SpanCtx {
        match self {
            Transaction::Http1(x) => &mut x.ctx,
            Transaction::Http2(x) => &mut x.ctx,
            Transaction::Kafka(x) => &mut x.ctx,
        }
    }

    /// The transaction's RED measurement, whether or not it is sampled.
    pub fn measure(&self, conn: &ConnFacts, opts: SpanOptions) -> Option<Measurement<'_>> {
        match self {
            Transaction::Http1(x) => Some(http1::measure(x, conn, opts)),
            Transaction::Http2(x) => Some(http2::measure(x, conn, opts)),
            Transaction::Kafka(x) => kafka::measure(x, conn),
        }
    }

    pub fn into_span(
        self,
        conn: &ConnFacts,
        resource: Arc<Resource>,
        clock: &Clock,
        opts: SpanOptions,
    ) -> Span {
        match self {
            Transaction::Http1(x) => http1::to_span(x, conn, resource, clock, opts),
            Transaction::Http2(x) => http2::to_span(*x, conn, resource, clock, opts),
            Transaction::Kafka(x) => kafka::to_span(*x, conn, resource, clock),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{Root, Sampler};

    fn detect(role: Option<Role>, ingress: bool, payload: &[u8]) -> Option<Protocol> {
        Session::detect(role, ingress, payload, |_| None).map(|s| s.protocol())
    }

    const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    #[test]
    fn first_bytes_choose_the_protocol() {
        let (server, client) = (Some(Role::Server), Some(Role::Client));
        assert_eq!(
            detect(server, true, PREFACE_AND_SETTINGS),
            Some(Protocol::Http2)
        );
        assert_eq!(
            detect(client, false, PREFACE_AND_SETTINGS),
            Some(Protocol::Http2)
        );
        // A server's SETTINGS before it read anything.
        let settings = b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64";
        assert_eq!(detect(server, false, settings), Some(Protocol::Http2));
        assert_eq!(detect(client, true, settings), Some(Protocol::Http2));
        assert_eq!(
            detect(client, true, b"HTTP/1.1 200 OK\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(
            detect(server, true, b"GET / HTTP/1.1\r\n\r\n"),
            Some(Protocol::Http1)
        );
        // Mid-stream: only HTTP/1 can be picked up again.
        assert_eq!(
            detect(None, true, b"GET / HTTP/1.1\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(detect(None, true, PREFACE_AND_SETTINGS), None);
        assert_eq!(detect(None, true, b"\0\0\x04\x01\x04\0\0\0\x01"), None);
    }

    #[test]
    fn an_h2c_upgrade_hands_the_connection_to_http2() {
        let mut nesting = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
        let mut shared = Shared::default();
        let mut out = Vec::new();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
        let mut s = Session::detect(Some(Role::Server), true, req, |_| None).unwrap();
        let data = |ingress, payload: &'static [u8], ts_ns| {
            Data::synthetic(1, ingress, payload, payload.len(), ts_ns)
        };
        s.on_data(&data(true, req, 1), &mut nesting, &mut shared, &mut out);
        assert_eq!(s.protocol(), Protocol::Http1);
        let switching =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        s.on_data(
            &data(false, switching, 2),
            &mut nesting,
            &mut shared,
            &mut out,
        );
        assert_eq!(s.protocol(), Protocol::Http2);
        s.on_data(
            &data(true, PREFACE_AND_SETTINGS, 3),
            &mut nesting,
            &mut shared,
            &mut out,
        );
        assert!(!s.is_hopeless());
    }
}
