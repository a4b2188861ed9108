//! What every request/response protocol shares: which end the traced
//! process is, the trace context a request starts, and how an exchange's
//! context and timing become a span.

use compact_str::{CompactString, ToCompactString};
use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    clock::Clock,
    nesting::{Nesting, SpanCtx, Thread, Uncertain},
    span::{AttrValue, Attributes, Resource, Span, SpanKind, Status},
    trace_context,
};

/// Set on a CLIENT span whose thread had several requests open when it was
/// sent: the span starts its own trace instead of guessing a parent, and
/// links to the request read last.
pub const AMBIGUOUS_PARENT: &str = "clew.parent.ambiguous";
/// Set on a CLIENT span whose parent is the one open request with the same
/// request line and user agent (a proxy forwarding it), not known for sure.
pub const INFERRED_PARENT: &str = "clew.parent.inferred";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The traced process reads requests and writes responses.
    Server,
    Client,
}

/// What the span builder knows about the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnFacts {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// The bytes came from TLS library probes (`url.scheme` https).
    pub tls: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SpanOptions {
    /// Record `url.query` and the query in `url.full` (the processor
    /// chain redacts them).
    pub capture_query: bool,
    /// `baggage` keys recorded as span attributes (`--baggage-attributes`).
    pub baggage_keys: &'static [&'static str],
    /// `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`, which replaces the
    /// conventions' list of methods when set.
    pub known_methods: Option<&'static [&'static str]>,
}

/// `error.type` of a request whose connection closed (a reset, a close,
/// a client that gave up waiting) before its response was complete.
pub const CONNECTION_CLOSED: &str = "connection_closed";

/// Who sent a request, for [`request_ctx`].
#[derive(Clone, Copy, Debug)]
pub struct Sender {
    /// The thread that wrote (client) or read (server) the request.
    pub thread: Thread,
    pub conn_id: u64,
    /// When its first byte moved.
    pub ts: u64,
    /// The client's end of the TCP connection (see [`request_ctx`]).
    pub endpoint: Option<SocketAddr>,
    /// The HTTP/2 stream the request opens (0 for HTTP/1): the kernel
    /// reports the ids it injected per stream.
    pub stream: u32,
    /// Its [`crate::nesting::request_key`], for requests a proxy may
    /// forward.
    pub request: Option<u64>,
}

/// The trace context of a request that just appeared. A server span
/// becomes what its thread is serving; a client span nests under it. When
/// one agent sees both ends of a connection, the client's context is
/// offered under the client's endpoint, and the server span of the same
/// request takes it as parent.
pub fn request_ctx(
    role: Role,
    from: Sender,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    nesting: &mut Nesting,
) -> SpanCtx {
    match role {
        Role::Server => {
            let state = traceparent
                .and(tracestate)
                .and_then(trace_context::tracestate);
            let mut ctx = nesting.server_span(
                from.thread,
                from.conn_id,
                from.ts,
                traceparent,
                state.as_deref(),
            );
            if let Some(key) = from.request {
                nesting.describe(&ctx.span_id, key);
            }
            if let Some(client) = from.endpoint.and_then(|e| nesting.take_offer(e, from.ts)) {
                let old = ctx.span_id;
                link(&mut ctx, &client);
                nesting.rebind(&old, &ctx);
            }
            ctx
        }
        Role::Client => {
            let mut ctx =
                nesting.client_stream_span(from.thread, from.stream, from.ts, traceparent);
            if let Some(key) = from.request {
                nesting.infer(&mut ctx, from.thread, key);
            }
            if let Some(e) = from.endpoint {
                nesting.offer(e, from.ts, &ctx);
            }
            ctx
        }
    }
}

/// The kernel decided the ids of a server span userspace already started
/// (the kernel's context record follows the request's bytes): the span
/// takes them, so it matches what was injected into the calls it made.
pub fn adopt_kernel_ctx(current: &mut SpanCtx, mut ctx: SpanCtx, nesting: &mut Nesting) {
    if current.trace_id == ctx.trace_id {
        ctx.trace_state = std::mem::take(&mut current.trace_state);
    }
    if ctx.parent.is_none() && current.parent.is_some() {
        // Userspace found a parent the kernel could not see (a linked
        // client span of this agent, or a `traceparent` the kernel does
        // not read): keep it, and move the spans the kernel already put
        // into its own trace.
        let kernel_trace = ctx.trace_id;
        ctx.trace_id = current.trace_id;
        ctx.parent = current.parent;
        ctx.sampled = current.sampled;
        nesting.alias(kernel_trace, ctx.trace_id);
    }
    nesting.rebind(&current.span_id, &ctx);
    *current = ctx;
}

/// Makes a parentless server span the child of the client span that sent
/// its request (same connection, seen by this agent on both ends).
pub fn link(server: &mut SpanCtx, client: &SpanCtx) {
    if server.parent.is_none() {
        server.trace_id = client.trace_id;
        server.parent = Some(client.span_id);
        server.sampled = client.sampled;
    }
}

/// What a span takes from the exchange, whatever the protocol.
pub struct Frame {
    pub ctx: SpanCtx,
    pub role: Role,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Frame {
    pub fn into_span(
        self,
        name: Cow<'static, str>,
        status: Status,
        mut attributes: Attributes,
        resource: Arc<Resource>,
        clock: &Clock,
    ) -> Span {
        let link = match self.ctx.uncertain.as_deref() {
            Some(Uncertain::Ambiguous { candidate }) => {
                attributes.push((AMBIGUOUS_PARENT, AttrValue::Bool(true)));
                *candidate
            }
            Some(Uncertain::Inferred) => {
                attributes.push((INFERRED_PARENT, AttrValue::Bool(true)));
                None
            }
            None => None,
        };
        Span {
            trace_id: self.ctx.trace_id,
            span_id: self.ctx.span_id,
            parent_span_id: self.ctx.parent,
            trace_state: self.ctx.trace_state,
            sampled: self.ctx.sampled,
            name,
            kind: match self.role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            },
            start_ns: clock.to_unix_ns(self.start_ns),
            end_ns: clock.to_unix_ns(self.end_ns),
            status,
            attributes,
            link,
            resource,
        }
    }
}

/// An address as `Display` writes it. IPv4, the usual case, is written
/// digit by digit: through the formatter it cost a span as much as all its
/// other attributes.
pub fn ip_text(ip: IpAddr) -> CompactString {
    let IpAddr::V4(v4) = ip else {
        return ip.to_compact_string();
    };
    let mut s = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            s[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            s[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        s[n] = b'0' + octet % 10;
        n += 1;
    }
    // SAFETY: digits and dots only.
    CompactString::new(unsafe { std::str::from_utf8_unchecked(&s[..n]) })
}

/// The other end of the socket (`client.address` too when we serve).
pub fn push_peer(a: &mut Attributes, role: Role, conn: &ConnFacts) {
    let Some(peer) = conn.peer else { return };
    let ip = ip_text(peer.ip());
    if role == Role::Server {
        a.push(("client.address", ip.clone().into()));
    }
    a.push(("network.peer.address", ip.into()));
    a.push(("network.peer.port", i64::from(peer.port()).into()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SpanLink;

    #[test]
    fn an_uncertain_parent_is_said_after_the_protocol_attributes() {
        let candidate = SpanLink {
            trace_id: [1; 16],
            span_id: [2; 8],
        };
        let frame = Frame {
            ctx: SpanCtx {
                trace_id: [3; 16],
                span_id: [4; 8],
                parent: None,
                sampled: true,
                trace_state: String::new(),
                uncertain: Some(Box::new(Uncertain::Ambiguous {
                    candidate: Some(candidate),
                })),
            },
            role: Role::Client,
            start_ns: 1,
            end_ns: 2,
        };
        let resource = crate::export::test_support::resource(1, "svc");
        let attributes = vec![("http.request.method", "GET".into())];
        let span = frame.into_span(
            "GET".into(),
            Status::Unset,
            attributes,
            resource,
            &Clock::new(),
        );
        let keys: Vec<_> = span.attributes.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["http.request.method", AMBIGUOUS_PARENT]);
        assert_eq!(span.link, Some(candidate));
        assert_eq!((span.span_id, span.kind), ([4; 8], SpanKind::Client));
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "10.0.0.2",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.1.20",
            "::1",
            "::ffff:10.0.0.2",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
