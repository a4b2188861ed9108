//! Trace context inside a process: which SERVER span each thread is
//! serving, so the CLIENT spans it sends become that span's children; and
//! the ids and sampling decision of new spans.
//!
//! A thread that has several requests open at once (an event loop) cannot
//! say which one a call is for: its calls start new traces, marked
//! ambiguous and linked to the request it read last. Processes whose
//! threads do not own requests (Go) are counted as one executor. The
//! kernel applies the same rule to the ids it injects (`ebpf/src/context.rs`).

mod open;

pub use open::Thread;
use open::{OpenRequests, Parent};

use std::{collections::VecDeque, hash::BuildHasher, net::SocketAddr, sync::LazyLock};

use foldhash::HashMap;

use rand::Rng;

use clew_common::{ctxflag, TraceCtx};

use crate::{
    capture::KernelCtx,
    sampling::Sampler,
    span::{SpanId, SpanLink, TraceId},
    trace_context::TraceParent,
};

#[derive(Clone, Debug, PartialEq)]
pub struct SpanCtx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: String,
    /// A CLIENT span whose parent Clew cannot be sure of. Boxed: rare,
    /// and every pending exchange carries a `SpanCtx`.
    pub uncertain: Option<Box<Uncertain>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Uncertain {
    /// Sent while several requests were open on its executor: a root,
    /// linked to the request read last if still open (the likely parent).
    Ambiguous { candidate: Option<SpanLink> },
    /// Of the requests open, exactly one has the same request line and
    /// user agent (a proxy forwarding it): that one is the parent.
    Inferred,
}

fn ambiguous(candidate: Option<SpanLink>) -> Option<Box<Uncertain>> {
    Some(Box::new(Uncertain::Ambiguous { candidate }))
}

/// What identifies a request a proxy forwards: its method, target and
/// user agent (the Host header is rewritten on the way).
/// Seeded once per process: keys are compared only within it, and
/// requests' senders cannot aim for collisions without the seed.
pub fn request_key(method: &str, target: &str, user_agent: Option<&str>) -> u64 {
    static STATE: LazyLock<foldhash::quality::RandomState> = LazyLock::new(Default::default);
    STATE.hash_one((method, target, user_agent))
}

/// Kernel contexts and offers kept at most (the kernel's contexts of
/// requests never parsed, offers never taken).
const MAX_THREADS: usize = 65536;

pub struct Nesting {
    sampler: Sampler,
    open: OpenRequests,
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
            uncertain: (c.flags & ctxflag::AMBIGUOUS != 0)
                .then(|| ambiguous(None))
                .flatten(),
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
            open: OpenRequests::default(),
            kernel_server: HashMap::default(),
            kernel_client: HashMap::default(),
            offers: HashMap::default(),
            aliases: HashMap::default(),
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

    /// Server span `span_id`, while its request is open.
    pub fn open_span(&self, span_id: &SpanId) -> Option<&SpanCtx> {
        self.open.get(span_id)
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

    /// A span whose ids the kernel decided, with the `tracestate` its
    /// context carries: a new trace the `probability` rule kept, its
    /// threshold; a CLIENT span injected with its parent's incoming
    /// `tracestate`, that one (as the open parent recorded it).
    pub fn from_kernel(&self, c: &TraceCtx, server: bool) -> SpanCtx {
        let mut ctx = SpanCtx::from(c);
        if c.flags & ctxflag::SAMPLER_TH != 0 {
            if let Some(t) = self.sampler.root_threshold() {
                ctx.trace_state = t.member();
            }
        }
        if !server && c.flags & ctxflag::TRACESTATE != 0 {
            if let Some(parent) = self.open.get(&c.parent_id) {
                ctx.trace_state = parent.trace_state.clone();
            }
        }
        ctx
    }

    /// Ids the kernel decided for a request not parsed yet: server side,
    /// the request whose first bytes carry the same timestamp; client side
    /// (injected), the next request the thread sends.
    pub fn kernel(&mut self, k: &KernelCtx) {
        let mut ctx = self.from_kernel(&k.ctx, k.server);
        if ctx.uncertain.is_some() {
            // The kernel names the candidate in the parent's place.
            ctx.uncertain = ambiguous(self.open.link(&k.ctx.parent_id));
        }
        let entry = (k.ts_ns, ctx);
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
        thread: Thread,
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
                span_id: k.span_id,
                ..self.continuing(&tp)
            },
            (Some(k), _) => k,
            (None, Some(tp)) => self.continuing(&tp),
            (None, None) => self.root(),
        };
        if incoming.is_some_and(|tp| tp.trace_id == ctx.trace_id) {
            ctx.trace_state = tracestate.unwrap_or_default().to_owned();
        }
        self.serve(thread, &ctx);
        ctx
    }

    /// `thread` works for span `ctx` now (a request it read, or records
    /// it processes), until [`Nesting::server_done`].
    fn serve(&mut self, thread: Thread, ctx: &SpanCtx) {
        self.open.serve(thread, ctx);
    }

    /// Requests of process `tgid` count per process, not per thread (its
    /// threads do not own the requests they read), or again per thread.
    pub fn nest_by_process(&mut self, tgid: u32, yes: bool) {
        self.open.nest_by_process(tgid, yes);
    }

    /// A server span `old` got the kernel's ids after it started.
    pub fn rebind(&mut self, old: &SpanId, ctx: &SpanCtx) {
        self.open.rebind(old, ctx);
    }

    /// The response to the server span `span_id` is complete (or will
    /// never be seen).
    pub fn server_done(&mut self, span_id: &SpanId) {
        self.open.done(span_id);
    }

    /// Server connection `conn_id` closed. (Its sessions report requests
    /// left unanswered through [`Nesting::server_done`].)
    pub fn conn_closed(&mut self, conn_id: u64) {
        self.kernel_server.remove(&conn_id);
    }

    /// The open server span `span_id` answers a request with
    /// [`request_key`] `key`.
    pub fn describe(&mut self, span_id: &SpanId, key: u64) {
        self.open.describe(span_id, key);
    }

    /// An ambiguous CLIENT span `ctx` of `thread` sends a request with
    /// [`request_key`] `key`: if exactly one request open on its executor
    /// came with the same key (a proxy forwarding it), that one becomes
    /// the parent, marked as inferred. The trace the span started moves
    /// into the parent's, so its downstream spans follow.
    pub fn infer(&mut self, ctx: &mut SpanCtx, thread: Thread, key: u64) {
        if !matches!(ctx.uncertain.as_deref(), Some(Uncertain::Ambiguous { .. })) {
            return;
        }
        let Some(p) = self.open.only_with(thread, key).cloned() else {
            return;
        };
        self.alias(ctx.trace_id, p.trace_id);
        ctx.trace_id = p.trace_id;
        ctx.parent = Some(p.span_id);
        ctx.sampled = p.sampled;
        ctx.trace_state = p.trace_state;
        ctx.uncertain = Some(Box::new(Uncertain::Inferred));
    }

    /// A request is being sent by thread `tid` at `ts`. Ids the kernel
    /// injected come first; a `traceparent` the application wrote itself
    /// (it has an SDK) comes next; else the span nests under what the
    /// thread is serving.
    pub fn client_span(&mut self, thread: Thread, ts: u64, traceparent: Option<&str>) -> SpanCtx {
        self.client_stream_span(thread, 0, ts, traceparent)
    }

    /// [`Nesting::client_span`] for an HTTP/2 request on stream
    /// `stream_id` (its HEADERS frame sent by thread `tid` at `ts`, the
    /// timestamp of the data record that carried them): the kernel reports
    /// what it injected per stream, since one send can open several.
    /// `traceparent` is the request's own, as decoded from its headers
    /// (with the kernel's injection present, it is the injected one).
    pub fn client_stream_span(
        &mut self,
        thread: Thread,
        stream_id: u32,
        ts: u64,
        traceparent: Option<&str>,
    ) -> SpanCtx {
        if let Some(k) = take_fresh(&mut self.kernel_client, &(thread.tid, stream_id), ts) {
            return k;
        }
        let tp = traceparent.and_then(TraceParent::parse);
        // A proxy forwards the traceparent it received: the request it
        // serves with that context is exactly this call's parent.
        if let Some(s) = tp.and_then(|tp| self.open.received(thread.tgid, &tp)) {
            return child_of(s);
        }
        if let Some(tp) = tp {
            // The application's own context (it has an SDK).
            let serving = match self.open.parent(thread) {
                Parent::Sure(s) => Some(s),
                _ => None,
            };
            return SpanCtx {
                trace_id: tp.trace_id,
                span_id: tp.parent_id,
                parent: serving
                    .filter(|s| s.trace_id == tp.trace_id)
                    .map(|s| s.span_id),
                sampled: tp.sampled,
                trace_state: String::new(),
                uncertain: None,
            };
        }
        self.nested_span(thread)
    }

    /// A span of `thread` that nests under what its executor surely
    /// serves, else starts a trace (ambiguous when it serves several);
    /// nothing was injected for it.
    pub fn nested_span(&self, thread: Thread) -> SpanCtx {
        match self.open.parent(thread) {
            Parent::Sure(s) => child_of(s),
            Parent::Unsure(candidate) => SpanCtx {
                uncertain: ambiguous(candidate.map(|c| SpanLink {
                    trace_id: c.trace_id,
                    span_id: c.span_id,
                })),
                ..self.root()
            },
            Parent::None => self.root(),
        }
    }

    /// A record carrying trace context `tp` was delivered to `thread` in
    /// the response to request `stream` (its correlation id): its
    /// processing continues that trace. The kernel's ids win when it
    /// decided them for the same context. With `serve`, the thread's
    /// outgoing calls nest under the processing until
    /// [`Nesting::server_done`].
    pub fn consumer_span(
        &mut self,
        thread: Thread,
        stream: u32,
        ts: u64,
        tp: &TraceParent,
        tracestate: Option<&str>,
        serve: bool,
    ) -> SpanCtx {
        let kernel = take_fresh(&mut self.kernel_client, &(thread.tid, stream), ts)
            .filter(|k| k.trace_id == tp.trace_id && k.parent == Some(tp.parent_id));
        let mut ctx = kernel.unwrap_or_else(|| self.continuing(tp));
        ctx.trace_state = tracestate.unwrap_or_default().to_owned();
        if serve {
            self.serve(thread, &ctx);
        }
        ctx
    }

    /// A new span continuing the incoming context `tp`.
    fn continuing(&self, tp: &TraceParent) -> SpanCtx {
        SpanCtx {
            trace_id: tp.trace_id,
            span_id: new_span_id(),
            parent: Some(tp.parent_id),
            sampled: self.sampler.sample(&tp.trace_id, Some(tp.sampled)),
            trace_state: String::new(),
            uncertain: None,
        }
    }

    /// A new trace; kept by the `probability` rule, its `tracestate`
    /// holds the rule's threshold, as the kernel's new traces do.
    fn root(&self) -> SpanCtx {
        let trace_id = new_trace_id();
        let sampled = self.sampler.sample(&trace_id, None);
        let trace_state = match self.sampler.root_threshold() {
            Some(t) if sampled => t.member(),
            _ => String::new(),
        };
        SpanCtx {
            trace_id,
            span_id: new_span_id(),
            parent: None,
            sampled,
            trace_state,
            uncertain: None,
        }
    }
}

fn child_of(s: &SpanCtx) -> SpanCtx {
    SpanCtx {
        trace_id: s.trace_id,
        span_id: new_span_id(),
        parent: Some(s.span_id),
        sampled: s.sampled,
        trace_state: s.trace_state.clone(),
        uncertain: None,
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

    fn candidate(c: &SpanCtx) -> Option<SpanLink> {
        match c.uncertain.as_deref() {
            Some(Uncertain::Ambiguous { candidate }) => *candidate,
            _ => None,
        }
    }

    fn t(tid: u32) -> Thread {
        Thread { tgid: 1, tid }
    }

    fn nesting() -> Nesting {
        Nesting::new(Sampler::ParentBased(Root::AlwaysOn))
    }

    #[test]
    fn client_calls_nest_under_the_request_their_thread_serves() {
        let mut n = nesting();
        let server = n.server_span(t(10), 1, 0, None, None);
        let client = n.client_span(t(10), 0, None);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent, Some(server.span_id));
        let other_thread = n.client_span(t(11), 0, None);
        assert_ne!(other_thread.trace_id, server.trace_id);
        assert_eq!(other_thread.parent, None);
        n.server_done(&server.span_id);
        assert_eq!(n.client_span(t(10), 0, None).parent, None);
    }

    #[test]
    fn incoming_traceparent_is_joined() {
        let mut n = nesting();
        let s = n.server_span(t(1), 1, 0, Some(TP), Some("k=v"));
        assert_eq!(hex::encode(s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(s.trace_state, "k=v");
        assert!(s.sampled);
        let unsampled = n.server_span(t(2), 1, 0, Some(&TP.replace("-01", "-00")), None);
        assert!(!unsampled.sampled);
    }

    #[test]
    fn application_context_on_outgoing_requests_wins() {
        let mut n = nesting();
        let c = n.client_span(t(5), 0, Some(TP));
        assert_eq!(hex::encode(c.span_id), "00f067aa0ba902b7");
        assert_eq!(c.parent, None);
    }

    #[test]
    fn forwarded_traceparent_nests_like_any_call() {
        let mut n = nesting();
        let s = n.server_span(t(3), 1, 0, Some(TP), None);
        let c = n.client_span(t(3), 0, Some(TP));
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

    /// A CLIENT span the kernel injected with its parent's `tracestate`
    /// carries it as the open parent recorded it; one injected without
    /// carries none; the sampler's `th` rides on new traces and their
    /// children.
    #[test]
    fn kernel_contexts_carry_the_tracestate_they_were_injected_with() {
        let mut n = nesting();
        let server = n.server_span(t(3), 1, 0, Some(TP), Some("congo=1,rojo=2"));
        let mut k = kernel_ctx(false, 0, 3, 10, 0x21);
        k.ctx.trace_id = server.trace_id;
        k.ctx.parent_id = server.span_id;
        k.ctx.flags |= ctxflag::TRACESTATE;
        assert_eq!(n.from_kernel(&k.ctx, false).trace_state, "congo=1,rojo=2");
        k.ctx.flags &= !ctxflag::TRACESTATE;
        assert_eq!(n.from_kernel(&k.ctx, false).trace_state, "");
        // A parent that is no longer open gives nothing to go on.
        n.server_done(&server.span_id);
        k.ctx.flags |= ctxflag::TRACESTATE;
        assert_eq!(n.from_kernel(&k.ctx, false).trace_state, "");

        let sampler = Sampler::new(
            crate::sampling::SamplerName::ParentbasedProbability,
            crate::sampling::Ratio::try_from(0.25).unwrap(),
        );
        let n = Nesting::new(sampler);
        k.ctx.flags = ctxflag::SAMPLED | ctxflag::SAMPLER_TH;
        assert_eq!(n.from_kernel(&k.ctx, true).trace_state, "ot=th:c");
        assert_eq!(n.from_kernel(&k.ctx, false).trace_state, "ot=th:c");
        // Userspace's own new traces agree.
        let root = n.root();
        assert_eq!(root.sampled, !root.trace_state.is_empty());
        if root.sampled {
            assert_eq!(root.trace_state, "ot=th:c");
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
        assert_ne!(n.client_span(t(5), 110, None).span_id, [11; 8]);
        assert_eq!(n.client_stream_span(t(5), 3, 110, None).span_id, [13; 8]);
        assert_eq!(n.client_stream_span(t(5), 1, 110, None).span_id, [11; 8]);
        // Consumed.
        assert_ne!(n.client_stream_span(t(5), 1, 120, None).span_id, [11; 8]);
    }

    #[test]
    fn kernel_ids_win_for_the_request_they_precede() {
        let mut n = nesting();
        n.kernel(&kernel_ctx(true, 3, 1, 100, 1));
        let s = n.server_span(t(1), 3, 100, Some(TP), None);
        assert_eq!(
            (s.trace_id, s.span_id, s.parent),
            ([7; 16], [1; 8], Some([9; 8]))
        );
        n.kernel(&kernel_ctx(false, 0, 1, 200, 2));
        let c = n.client_span(t(1), 210, None);
        assert_eq!(c.span_id, [2; 8]);
        // Consumed: the next request of the thread nests by userspace rules.
        assert_eq!(n.client_span(t(1), 220, None).parent, Some([1; 8]));
    }

    #[test]
    fn incoming_context_the_kernel_missed_still_joins() {
        let mut n = nesting();
        let mut k = kernel_ctx(true, 3, 1, 100, 1);
        k.ctx.flags = ctxflag::SAMPLED;
        n.kernel(&k);
        let s = n.server_span(t(1), 3, 100, Some(TP), None);
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
        let c = n.client_span(t(4), 100 + KERNEL_CTX_WINDOW_NS + 1, None);
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

    /// One thread with two requests open (an event loop): its calls
    /// cannot be told apart, so they start new traces, marked and linked
    /// to the request read last; once one is answered, the other is sure.
    #[test]
    fn calls_of_a_thread_serving_several_requests_are_ambiguous() {
        let mut n = nesting();
        let a = n.server_span(t(1), 1, 0, None, None);
        let b = n.server_span(t(1), 2, 0, None, None);
        let c = n.client_span(t(1), 0, None);
        assert_eq!(c.parent, None);
        assert_ne!(c.trace_id, a.trace_id);
        assert_ne!(c.trace_id, b.trace_id);
        let link = SpanLink {
            trace_id: b.trace_id,
            span_id: b.span_id,
        };
        assert_eq!(candidate(&c), Some(link));
        n.server_done(&a.span_id);
        let c = n.client_span(t(1), 0, None);
        assert_eq!((c.parent, c.uncertain), (Some(b.span_id), None));
        // Answering the last read while an older one is open leaves no
        // candidate, still ambiguous.
        let d = n.server_span(t(1), 3, 0, None, None);
        n.server_done(&d.span_id);
        let c = n.client_span(t(1), 0, None);
        assert_eq!(c.parent, None);
        assert_eq!(c.uncertain, ambiguous(None));
    }

    /// Processes nested per process (Go): a request read by one thread is
    /// the parent of calls from any of its threads, but two open requests
    /// on different threads are ambiguous.
    #[test]
    fn processes_nested_per_process_count_all_threads() {
        let mut n = nesting();
        n.nest_by_process(1, true);
        let a = n.server_span(t(2), 1, 0, None, None);
        assert_eq!(n.client_span(t(3), 0, None).parent, Some(a.span_id));
        n.server_span(t(4), 2, 0, None, None);
        assert!(n.client_span(t(3), 0, None).uncertain.is_some());
        n.nest_by_process(1, false);
        assert_eq!(n.client_span(t(3), 0, None).uncertain, None);
    }

    /// A proxy forwards the traceparent it received: the request that
    /// came with it is the parent, however many requests are open.
    #[test]
    fn a_forwarded_traceparent_names_its_request() {
        let mut n = nesting();
        let a = n.server_span(t(1), 1, 0, Some(TP), None);
        n.server_span(t(1), 2, 0, None, None);
        let c = n.client_span(t(1), 0, Some(TP));
        assert_eq!((c.trace_id, c.parent), (a.trace_id, Some(a.span_id)));
        assert_eq!(c.uncertain, None);
    }

    /// The next hop receives the context the proxy forwards unchanged, and
    /// its request can reach the agent before the proxy's own send (the
    /// next hop reads while the proxy's write is still returning). The
    /// proxy's call still nests under the proxy's request, never under
    /// the next hop's span (seen: a parent no exported span has, once the
    /// next hop's span took the kernel's ids).
    #[test]
    fn a_forwarded_traceparent_names_the_proxys_own_request() {
        let mut n = nesting();
        let proxy = Thread { tgid: 10, tid: 10 };
        let next_hop = Thread { tgid: 20, tid: 20 };
        let a = n.server_span(proxy, 1, 0, Some(TP), None);
        let b = n.server_span(next_hop, 2, 5, Some(TP), None);
        assert_ne!(a.span_id, b.span_id);
        let c = n.client_span(proxy, 4, Some(TP));
        assert_eq!((c.trace_id, c.parent), (a.trace_id, Some(a.span_id)));
        // The next hop's span closing leaves the proxy's findable.
        n.server_done(&b.span_id);
        let c = n.client_span(proxy, 6, Some(TP));
        assert_eq!(c.parent, Some(a.span_id));
    }

    /// A process that calls itself with the context forwarded: its call
    /// nests under the request it forwards, not the one it causes.
    #[test]
    fn a_self_call_with_the_context_forwarded_finds_the_first_request() {
        let mut n = nesting();
        let a = n.server_span(t(1), 1, 0, Some(TP), None);
        n.server_span(t(2), 2, 5, Some(TP), None);
        let c = n.client_span(t(1), 6, Some(TP));
        assert_eq!(c.parent, Some(a.span_id));
    }

    /// A proxy's forwarded request matches exactly one open request by
    /// its request line: that one is the inferred parent, and the trace
    /// the kernel started for the call joins it. Two open requests with
    /// the same line stay ambiguous.
    #[test]
    fn a_unique_request_line_infers_the_parent() {
        let mut n = nesting();
        let key = request_key("GET", "/work/1", Some("curl"));
        let a = n.server_span(t(1), 1, 0, None, None);
        n.describe(&a.span_id, key);
        let b = n.server_span(t(1), 2, 0, None, None);
        n.describe(&b.span_id, request_key("GET", "/work/2", Some("curl")));
        let mut c = n.client_span(t(1), 0, None);
        let started = c.trace_id;
        n.infer(&mut c, t(1), key);
        assert_eq!((c.trace_id, c.parent), (a.trace_id, Some(a.span_id)));
        assert_eq!(c.uncertain.as_deref(), Some(&Uncertain::Inferred));
        let mut moved = started;
        n.resolve_trace(&mut moved);
        assert_eq!(moved, a.trace_id);

        let twin = n.server_span(t(1), 3, 0, None, None);
        n.describe(&twin.span_id, key);
        let mut c = n.client_span(t(1), 0, None);
        n.infer(&mut c, t(1), key);
        assert_eq!(c.parent, None);
        assert!(candidate(&c).is_some());
    }

    /// The kernel decided an ambiguous call's ids: its candidate becomes
    /// the link, never the parent.
    #[test]
    fn kernel_ambiguous_ids_link_their_candidate() {
        let mut n = nesting();
        n.kernel(&kernel_ctx(true, 3, 1, 100, 1));
        let s = n.server_span(t(1), 3, 100, None, None);
        let mut k = kernel_ctx(false, 0, 1, 200, 2);
        k.ctx.flags = ctxflag::SAMPLED | ctxflag::AMBIGUOUS;
        k.ctx.parent_id = s.span_id;
        n.kernel(&k);
        let c = n.client_span(t(1), 210, None);
        assert_eq!((c.span_id, c.parent), ([2; 8], None));
        let link = SpanLink {
            trace_id: s.trace_id,
            span_id: s.span_id,
        };
        assert_eq!(candidate(&c), Some(link));
    }
}
