//! Protocol parsers: pure functions over captured bytes, one folder per
//! protocol, each with the same anatomy: `detect` (is this connection
//! ours, from its first bytes or a hand-off), a streaming parser per
//! direction, a `Session` that pairs requests with responses and assigns
//! trace context, and `spans` (finished transactions as OpenTelemetry
//! spans). The pipeline sees only [`Session`] and [`Transaction`]: a new
//! protocol is a folder and a variant here, not a change to the pipeline.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    capture::Data,
    clock::Clock,
    nesting::{Nesting, SpanCtx},
    span::{Resource, Span},
};

pub mod http1;

/// The protocols Clew parses, as they appear in counter labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
}

impl Protocol {
    pub const ALL: [Protocol; 1] = [Protocol::Http1];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
        }
    }

    /// Index into per-protocol tables ([`Protocol::ALL`] order).
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The traced process reads requests and writes responses.
    Server,
    Client,
}

/// What the span builders know about the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnFacts {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// The bytes came from TLS library probes (`url.scheme` https).
    pub tls: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SpanOptions {
    /// Record `url.query` (off by default: queries often carry secrets).
    pub capture_query: bool,
    /// `baggage` keys recorded as span attributes (`--baggage-attributes`).
    pub baggage_keys: &'static [&'static str],
}

/// Why transactions were abandoned, for the per-protocol counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    /// Framing errors: garbage, gaps inside headers.
    pub parse_errors: u64,
    /// Requests whose response never came.
    pub unanswered: u64,
    /// Responses without a request.
    pub orphan_responses: u64,
}

impl std::ops::Sub for Losses {
    type Output = Losses;
    fn sub(self, before: Losses) -> Losses {
        Losses {
            parse_errors: self.parse_errors - before.parse_errors,
            unanswered: self.unanswered - before.unanswered,
            orphan_responses: self.orphan_responses - before.orphan_responses,
        }
    }
}

/// One connection's protocol state.
pub enum Session {
    Http1(http1::Session),
}

/// A finished request/response (or message) that its protocol turns into a span.
pub enum Transaction {
    Http1(http1::Exchange),
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
    /// `None`: not a protocol Clew parses (or a mid-stream connection
    /// nothing can resynchronise on), so capture can stop.
    pub fn detect(
        role: Option<Role>,
        ingress: bool,
        payload: &[u8],
        endpoint: impl Fn(Role) -> Option<SocketAddr>,
    ) -> Option<Session> {
        let mid_stream = role.is_none();
        // HTTP/1 is the fallback for a known role: its framer tells
        // garbage from a request and gives up on its own.
        let role = role.or_else(|| http1::detect::sniff_role(ingress, payload))?;
        Some(Session::Http1(http1::Session::new(
            role,
            mid_stream,
            endpoint(role),
        )))
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Session::Http1(_) => Protocol::Http1,
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Session::Http1(s) => s.role(),
        }
    }

    pub fn losses(&self) -> Losses {
        match self {
            Session::Http1(s) => s.losses,
        }
    }

    /// The stream turned out not to be this protocol: stop capturing it.
    pub fn is_hopeless(&self) -> bool {
        match self {
            Session::Http1(s) => s.is_hopeless(),
        }
    }

    /// Feeds one syscall's bytes; finished transactions are appended to `out`.
    pub fn on_data(&mut self, d: &Data<'_>, nesting: &mut Nesting, out: &mut Vec<Transaction>) {
        match self {
            Session::Http1(s) => s.on_data(d, nesting, out),
        }
    }

    pub fn on_close(&mut self, ts: u64, nesting: &mut Nesting, out: &mut Vec<Transaction>) {
        match self {
            Session::Http1(s) => s.on_close(ts, nesting, out),
        }
    }

    /// The kernel decided the ids of the server span whose request bytes
    /// carry timestamp `ts`; false when no such request is pending.
    pub fn adopt_server_ctx(&mut self, ts: u64, ctx: SpanCtx, nesting: &mut Nesting) -> bool {
        match self {
            Session::Http1(s) => s.adopt_server_ctx(ts, ctx, nesting),
        }
    }
}

impl Transaction {
    pub fn protocol(&self) -> Protocol {
        match self {
            Transaction::Http1(_) => Protocol::Http1,
        }
    }

    pub fn ctx_mut(&mut self) -> &mut SpanCtx {
        match self {
            Transaction::Http1(x) => &mut x.ctx,
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
        }
    }
}
