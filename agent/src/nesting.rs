//! Trace context inside a process: which SERVER span each thread is
//! serving, so the CLIENT spans it sends become that span's children; and
//! the ids and sampling decision of new spans.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use rand::Rng;

use clew_common::{ctxflag, TraceCtx};

use crate::{
    capture::KernelCtx,
    sampling::Sampler,
    span::{SpanId, TraceId},
    trace_context::TraceParent,
};

#[derive(Clone, Debug, PartialEq)]
pub struct SpanCtx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: String,
}

struct Active {
    ctx: SpanCtx,
    conn_id: u64,
}

/// Bounded: a thread that never answers (or an agent that missed the
/// response) must not pin an entry forever.
const MAX_THREADS: usize = 65536;

pub struct Nesting {
    sampler: Sampler,
    by_tid: HashMap<u32, Active>,
    /// Ids the kernel decided, waiting for the request they belong to:
    /// server side by connection, client side by sending thread and
    /// HTTP/2 stream (0 for HTTP/1).
    kernel_server: HashMap<u64, (u64, SpanCtx)>,
    kernel_client: HashMap<(u32, u32), (u64, SpanCtx)>,
    /// Client spans by the client's endpoint, for the server span of the
    /// same request when this agent also traces the server.
    offers: HashMap<SocketAddr, VecDeque<(u64, SpanCtx)>>,
    /// Traces the kernel started for a request this agent then linked to a
    /// local client span: the kernel already gave the request's downstream
    /// calls the first trace id, so their spans move to the linked trace.
    aliases: HashMap<TraceId, TraceId>,
}

/// Aliases kept at most; cleared wholesale beyond (a few spans then stay
/// in the kernel's trace).
const MAX_ALIASES: usize = 16384;

/// A request reaches a server on this node well within this time.
const OFFER_TTL_NS: u64 = 10_000_000_000;

/// A kernel context belongs to a request parsed from data recorded at most
/// this long after it (the same syscall, in practice).
const KERNEL_CTX_WINDOW_NS: u64 = 50_000_000;

impl From<&TraceCtx> for SpanCtx {
    fn from(c: &TraceCtx) -> Self {
        SpanCtx {
            trace_id: c.trace_id,
            span_id: c.span_id,
            parent: (c.flags & ctxflag::HAS_PARENT != 0).then_some(c.parent_id),
            sampled: c.flags & ctxflag::SAMPLED != 0,
            trace_state: String::new(),
        }
    }
}

fn take_fresh<K: std::hash::Hash + Eq>(
    m: &mut HashMap<K, (u64, SpanCtx)>,
    k: &K,
    ts: u64,
) -> Option<SpanCtx> {
    let (at, ctx) = m.remove(k)?;
    (at <= ts && ts - at <= KERNEL_CTX_WINDOW_NS).then_some(ctx)
}

impl Nesting {
    pub fn new(sampler: Sampler) -> Self {
        Nesting {
            sampler,
            by_tid: HashMap::new(),
            kernel_server: HashMap::new(),
            kernel_client: HashMap::new(),
            offers: HashMap::new(),
            aliases: HashMap::new(),
        }
    }

    /// A client span was sent from `endpoint`; a server on this node may
    /// read it (in order, on that connection).
    /// Spans of trace `from` belong to trace `to`.
    pub fn alias(&mut self, from: TraceId, to: TraceId) {
        if self.aliases.len() >= MAX_ALIASES {
            self.aliases.clear();
        }
        self.aliases.insert(from, to);
    }

    /// The trace a span finally belongs to.
    pub fn resolve_trace(&self, t: &mut TraceId) {
        if let Some(to) = self.aliases.get(t) {
            *t = *to;
        }
    }

    pub fn offer(&mut self, endpoint: SocketAddr, ts: u64, ctx: &SpanCtx) {
        if self.offers.len() >= MAX_THREADS && !self.offers.contains_key(&endpoint) {
            self.offers.retain(|_, q| {
                q.back()
                    .is_some_and(|(at, _)| ts.saturating_sub(*at) < OFFER_TTL_NS)
            });
            if self.offers.len() >= MAX_THREADS {
                self.offers.clear();
            }
        }
        let q = self.offers.entry(endpoint).or_default();
        q.retain(|(at, _)| ts.saturating_sub(*at) < OFFER_TTL_NS);
        if q.len() < 64 {
            q.push_back((ts, ctx.clone()));
        }
    }

    /// The oldest client span sent from `endpoint` before `ts`.
    pub fn take_offer(&mut self, endpoint: SocketAddr, ts: u64) -> Option<SpanCtx> {
        let q = self.offers.get_mut(&endpoint)?;
        let ctx = match q.front() {
            Some((at, _)) if *at <= ts => q.pop_front().map(|(_, c)| c),
            _ => None,
        };
        if q.is_empty() {
            self.offers.remove(&endpoint);
        }
        ctx
    }

    /// Ids the kernel decided for a request not parsed yet: server side,
    /// the request whose first bytes carry the same timestamp; client side
    /// (injected), the next request the thread sends.
    pub fn kernel(&mut self, k: &KernelCtx) {
        let entry = (k.ts_ns, SpanCtx::from(&k.ctx));
        if k.server {
            self.kernel_server.insert(k.conn_id, entry);
        } else {
            self.kernel_client.insert((k.tid, k.stream_id), entry);
        }
        if self.kernel_server.len() + self.kernel_client.len() > MAX_THREADS {
            // Contexts whose requests were never parsed (records lost).
            let fresh =
                |(at, _): &(u64, SpanCtx)| k.ts_ns.saturating_sub(*at) <= KERNEL_CTX_WINDOW_NS;
            self.kernel_server.retain(|_, v| fresh(v));
            self.kernel_client.retain(|_, v| fresh(v));
        }
    }

    /// A request arrived on a server connection, read by thread `tid` at
    /// `ts`. The kernel's ids win: outgoing requests were injected with them.
    pub fn server_span(
        &mut self,
        tid: u32,
        conn_id: u64,
        ts: u64,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> SpanCtx {
        let incoming = traceparent.and_then(TraceParent::parse);
        let kernel = self
            .kernel_server
            .remove(&conn_id)
            .filter(|(at, _)| *at == ts)
            .map(|(_, c)| c);
        let mut ctx = match (kernel, incoming) {
            // The kernel scans only the head's first 1 KiB: a traceparent
            // it missed still makes the span join its trace.
            (Some(k), Some(tp)) if k.parent.is_none() => SpanCtx {
                trace_id: tp.trace_id,
                span_id: k.span_id,
                parent: Some(tp.parent_id),
                sampled: self.sampler.sample(&tp.trace_id, Some(tp.sampled)),
                trace_state: String::new(),
            },
            (Some(k), _) => k,
            (None, Some(tp)) => SpanCtx {
                trace_id: tp.trace_id,
                span_id: new_span_id(),
                parent: Some(tp.parent_id),
                sampled: self.sampler.sample(&tp.trace_id, Some(tp.sampled)),
                trace_state: String::new(),
            },
            (None, None) => self.root(),
        };
        if incoming.is_some_and(|tp| tp.trace_id == ctx.trace_id) {
            ctx.trace_state = tracestate.unwrap_or_default().to_owned();
        }
        self.serve(tid, conn_id, &ctx);
        ctx
    }

    /// Thread `tid` works for span `ctx` now (a request read on `conn_id`).
    fn serve(&mut self, tid: u32, conn_id: u64, ctx: &SpanCtx) {
        if self.by_tid.len() >= MAX_THREADS && !self.by_tid.contains_key(&tid) {
            self.by_tid.clear();
        }
        let active = Active {
            ctx: ctx.clone(),
            conn_id,
        };
        self.by_tid.insert(tid, active);
    }

    /// A server span `old` got the kernel's ids after it started.
    pub fn rebind(&mut self, tid: u32, old: &SpanId, ctx: &SpanCtx) {
        if let Some(a) = self.by_tid.get_mut(&tid).filter(|a| &a.ctx.span_id == old) {
            a.ctx = ctx.clone();
        }
    }

    /// The response to the server span `span_id` is complete.
    pub fn server_done(&mut self, tid: u32, span_id: &SpanId) {
        if self
            .by_tid
            .get(&tid)
            .is_some_and(|a| &a.ctx.span_id == span_id)
        {
            self.by_tid.remove(&tid);
        }
    }

    /// Server connection `conn_id` closed: nothing more is served on it.
    pub fn conn_closed(&mut self, conn_id: u64) {
        self.by_tid.retain(|_, a| a.conn_id != conn_id);
        self.kernel_server.remove(&conn_id);
    }

    /// A request is being sent by thread `tid` at `ts`. Ids the kernel
    /// injected come first; a `traceparent` the application wrote itself
    /// (it has an SDK) comes next; else the span nests under what the
    /// thread is serving.
    pub fn client_span(&mut self, tid: u32, ts: u64, traceparent: Option<&str>) -> SpanCtx {
        self.client_stream_span(tid, 0, ts, traceparent)
    }

    /// [`Nesting::client_span`] for an HTTP/2 request on stream
    /// `stream_id` (its HEADERS frame sent by thread `tid` at `ts`, the
    /// timestamp of the data record that carried them): the kernel reports
    /// what it injected per stream, since one send can open several.
    /// `traceparent` is the request's own, as decoded from its headers
    /// (with the kernel's injection present, it is the injected one).
    pub fn client_stream_span(
        &mut self,
        tid: u32,
        stream_id: u32,
        ts: u64,
        traceparent: Option<&str>,
    ) -> SpanCtx {
        if let Some(k) = take_fresh(&mut self.kernel_client, &(tid, stream_id), ts) {
            return k;
        }
        let serving = self.by_tid.get(&tid).map(|a| &a.ctx);
        // A proxy forwards the traceparent it received: that is its
        // caller's context, not an SDK's, so the span still nests normally.
        let own = traceparent
            .and_then(TraceParent::parse)
            .filter(|tp| serving.is_none_or(|s| s.parent != Some(tp.parent_id)));
        match own {
            Some(tp) => SpanCtx {
                trace_id: tp.trace_id,
                span_id: tp.parent_id,
                parent: serving
                    .filter(|s| s.trace_id == tp.trace_id)
                    .map(|s| s.span_id),
                sampled: tp.sampled,
                trace_state: String::new(),
            },
            None => self.nested_span(tid),
        }
    }

    /// A span of thread `tid` that nests under what the thread is serving,
    /// else starts a trace; nothing was injected for it.
    pub fn nested_span(&self, tid: u32) -> SpanCtx {
        match self.by_tid.get(&tid) {
            Some(Active { ctx: s, .. }) => SpanCtx {
                trace_id: s.trace_id,
                span_id: new_span_id(),
                parent: Some(s.span_id),
                sampled: s.sampled,
                trace_state: s.trace_state.clone(),
            },
            None => self.root(),
        }
    }

    /// A record carrying trace context `tp` was delivered to thread `tid`
    /// in the response to request `stream` (its correlation id) on
    /// `conn_id`: its processing continues that trace. The kernel's ids win
    /// when it decided them for the same context. With `serve`, the
    /// thread's outgoing calls nest under the processing until
    /// [`Nesting::server_done`].
    #[allow(clippy::too_many_arguments)]
    pub fn consumer_span(
        &mut self,
        tid: u32,
        conn_id: u64,
        stream: u32,
        ts: u64,
        tp: &TraceParent,
        tracestate: Option<&str>,
        serve: bool,
    ) -> SpanCtx {
        let kernel = take_fresh(&mut self.kernel_client, &(tid, stream), ts)
            .filter(|k| k.trace_id == tp.trace_id && k.parent == Some(tp.parent_id));
        let mut ctx = kernel.unwrap_or_else(|| SpanCtx {
            trace_id: tp.trace_id,
            span_id: new_span_id(),
            parent: Some(tp.parent_id),
            sampled: self.sampler.sample(&tp.trace_id, Some(tp.sampled)),
            trace_state: String::new(),
        });
        ctx.trace_state = tracestate.unwrap_or_default().to_owned();
        if serve {
            self.serve(tid, conn_id, &ctx);
        }
        ctx
    }

    fn root(&self) -> SpanCtx {
        let trace_id = new_trace_id();
        SpanCtx {
            trace_id,
            span_id: new_span_id(),
            parent: None,
            sampled: self.sampler.sample(&trace_id, None),
            trace_state: String::new(),
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_tid.len()
    }
}

fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    while id == [0; 16] {
        rand::rng().fill(&mut id);
    }
    id
}

fn new_span_id() -> SpanId {
    let mut id = [0u8; 8];
    while id == [0; 8] {
        rand::rng().fill(&mut id);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Root;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn nesting() -> Nesting {
        Nesting::new(Sampler::ParentBased(Root::AlwaysOn))
    }

    #[test]
    fn client_calls_nest_under_the_request_their_thread_serves() {
        let mut n = nesting();
        let server = n.server_span(10, 1, 0, None, None);
        let client = n.client_span(10, 0, None);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent, Some(server.span_id));
        let other_thread = n.client_span(11, 0, None);
        assert_ne!(other_thread.trace_id, server.trace_id);
        assert_eq!(other_thread.parent, None);
        n.server_done(10, &server.span_id);
        assert_eq!(n.client_span(10, 0, None).parent, None);
    }

    #[test]
    fn incoming_traceparent_is_joined() {
        let mut n = nesting();
        let s = n.server_span(1, 1, 0, Some(TP), Some("k=v"));
        assert_eq!(hex::encode(s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(s.trace_state, "k=v");
        assert!(s.sampled);
        let unsampled = n.server_span(2, 1, 0, Some(&TP.replace("-01", "-00")), None);
        assert!(!unsampled.sampled);
    }

    #[test]
    fn application_context_on_outgoing_requests_wins() {
        let mut n = nesting();
        let c = n.client_span(5, 0, Some(TP));
        assert_eq!(hex::encode(c.span_id), "00f067aa0ba902b7");
        assert_eq!(c.parent, None);
    }

    #[test]
    fn forwarded_traceparent_nests_like_any_call() {
        let mut n = nesting();
        let s = n.server_span(3, 1, 0, Some(TP), None);
        let c = n.client_span(3, 0, Some(TP));
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.parent, Some(s.span_id));
        assert_ne!(hex::encode(c.span_id), "00f067aa0ba902b7");
    }

    fn kernel_ctx(server: bool, conn_id: u64, tid: u32, ts_ns: u64, span: u8) -> KernelCtx {
        let ctx = TraceCtx {
            trace_id: [7; 16],
            span_id: [span; 8],
            parent_id: [9; 8],
            flags: ctxflag::SAMPLED | ctxflag::HAS_PARENT,
            _pad: [0; 7],
        };
        KernelCtx {
            server,
            conn_id,
            tid,
            ts_ns,
            ctx,
            stream_id: 0,
        }
    }

    /// One send opened streams 1 and 3 with injected contexts: each
    /// request's span takes its own stream's ids, whatever the order the
    /// parser reaches them in, and HTTP/1 (stream 0) is not confused with them.
    #[test]
    fn kernel_client_ids_are_per_http2_stream() {
        let mut n = nesting();
        for (stream, span) in [(1, 11), (3, 13)] {
            let mut k = kernel_ctx(false, 0, 5, 100, span);
            k.stream_id = stream;
            n.kernel(&k);
        }
        assert_ne!(n.client_span(5, 110, None).span_id, [11; 8]);
        assert_eq!(n.client_stream_span(5, 3, 110, None).span_id, [13; 8]);
        assert_eq!(n.client_stream_span(5, 1, 110, None).span_id, [11; 8]);
        // Consumed.
        assert_ne!(n.client_stream_span(5, 1, 120, None).span_id, [11; 8]);
    }

    #[test]
    fn kernel_ids_win_for_the_request_they_precede() {
        let mut n = nesting();
        n.kernel(&kernel_ctx(true, 3, 1, 100, 1));
        let s = n.server_span(1, 3, 100, Some(TP), None);
        assert_eq!(
            (s.trace_id, s.span_id, s.parent),
            ([7; 16], [1; 8], Some([9; 8]))
        );
        n.kernel(&kernel_ctx(false, 0, 1, 200, 2));
        let c = n.client_span(1, 210, None);
        assert_eq!(c.span_id, [2; 8]);
        // Consumed: the next request of the thread nests by userspace rules.
        assert_eq!(n.client_span(1, 220, None).parent, Some([1; 8]));
    }

    #[test]
    fn incoming_context_the_kernel_missed_still_joins() {
        let mut n = nesting();
        let mut k = kernel_ctx(true, 3, 1, 100, 1);
        k.ctx.flags = ctxflag::SAMPLED;
        n.kernel(&k);
        let s = n.server_span(1, 3, 100, Some(TP), None);
        assert_eq!(hex::encode(s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            (s.span_id, s.parent.map(hex::encode)),
            ([1; 8], Some("00f067aa0ba902b7".into()))
        );
    }

    #[test]
    fn stale_kernel_ids_are_not_used() {
        let mut n = nesting();
        n.kernel(&kernel_ctx(false, 0, 4, 100, 2));
        let c = n.client_span(4, 100 + KERNEL_CTX_WINDOW_NS + 1, None);
        assert_ne!(c.span_id, [2; 8]);
    }

    #[test]
    fn aliased_traces_resolve_to_the_linked_trace() {
        let mut n = nesting();
        let (kernel, linked, other) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        n.alias(kernel, linked);
        let (mut a, mut b) = (kernel, other);
        n.resolve_trace(&mut a);
        n.resolve_trace(&mut b);
        assert_eq!((a, b), (linked, other));
    }

    #[test]
    fn closing_a_connection_forgets_its_threads() {
        let mut n = nesting();
        n.server_span(1, 7, 0, None, None);
        n.server_span(2, 8, 0, None, None);
        n.conn_closed(7);
        assert_eq!(n.tracked(), 1);
    }
}
