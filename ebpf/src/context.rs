//! Trace context decided in the kernel, where it must be known before the
//! process sends its next request: the SERVER span a thread is serving
//! (from the request it just read, joining an incoming `traceparent`), and
//! the ids of CLIENT spans written into outgoing requests.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_prandom_u32},
    macros::map,
    maps::LruHashMap,
};
use clew_common::{ctxflag, h2, kind, CtxEvent, TraceCtx, MAX_INFLIGHT};

use crate::maps::{count, EVENTS};

/// Head sampling, set by the agent from OTEL_TRACES_SAMPLER(_ARG): a new
/// trace is sampled when the low 8 bytes of its id (big-endian) are below
/// the threshold; `SAMPLE_PARENT_BASED` honours an incoming sampled flag.
#[unsafe(no_mangle)]
static SAMPLE_THRESHOLD: u64 = u64::MAX;
#[unsafe(no_mangle)]
static SAMPLE_ALWAYS: u32 = 1;
#[unsafe(no_mangle)]
static SAMPLE_PARENT_BASED: u32 = 1;

/// The SERVER span each thread is serving, by thread id: set when it reads
/// a request, cleared when it writes a response. Both write the thread's
/// entry in place (a cleared entry has a zero span id), so a request costs
/// lookups, not an LRU insert and delete. Eviction: `proc_exit` deletes a
/// thread's entry when it exits; LRU covers threads whose exit was missed.
#[map]
static SERVING: LruHashMap<u32, TraceCtx> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut k = 0;
    while k < N {
        let r = unsafe { bpf_get_prandom_u32() }.to_le_bytes();
        let mut j = 0;
        while j < 4 && k + j < N {
            out[k + j] = r[j];
            j += 1;
        }
        k += 4;
    }
    out
}

fn new_span_id() -> [u8; 8] {
    let mut id = random::<8>();
    id[0] |= 1; // never all-zero
    id
}

fn sample_root(trace_id: &[u8; 16]) -> bool {
    if unsafe { core::ptr::read_volatile(&SAMPLE_ALWAYS) } == 1 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u64::from_be_bytes(low) < unsafe { core::ptr::read_volatile(&SAMPLE_THRESHOLD) }
}

fn root() -> TraceCtx {
    let mut trace_id = random::<16>();
    trace_id[0] |= 1;
    let flags = if sample_root(&trace_id) {
        ctxflag::SAMPLED
    } else {
        0
    };
    TraceCtx {
        trace_id,
        span_id: new_span_id(),
        parent_id: [0; 8],
        flags,
        _pad: [0; 7],
    }
}

/// A thread read the start of a request: decide the SERVER span.
#[inline(always)]
pub fn server_request(incoming: Option<([u8; 16], [u8; 8], bool)>) -> TraceCtx {
    let ctx = joined(incoming);
    serve(&ctx);
    ctx
}

/// A span continuing `incoming` (trace id, parent span id, sampled), or
/// the root of a new trace.
#[inline(always)]
pub fn joined(incoming: Option<([u8; 16], [u8; 8], bool)>) -> TraceCtx {
    match incoming {
        Some((trace_id, parent_id, sampled)) => {
            let parent_based = unsafe { core::ptr::read_volatile(&SAMPLE_PARENT_BASED) } == 1;
            let keep = if parent_based {
                sampled
            } else {
                sample_root(&trace_id)
            };
            let mut flags = ctxflag::HAS_PARENT | ctxflag::REMOTE_PARENT;
            if keep {
                flags |= ctxflag::SAMPLED;
            }
            TraceCtx {
                trace_id,
                span_id: new_span_id(),
                parent_id,
                flags,
                _pad: [0; 7],
            }
        }
        None => root(),
    }
}

/// The current thread now serves `ctx`.
#[inline(always)]
pub fn serve(ctx: &TraceCtx) {
    let tid = bpf_get_current_pid_tgid() as u32;
    match SERVING.get_ptr_mut(&tid) {
        Some(p) => unsafe { *p = *ctx },
        None => {
            let _ = SERVING.insert(&tid, ctx, 0);
        }
    }
}

/// The thread wrote a response: it no longer serves that request.
pub fn server_response() {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = SERVING.get_ptr_mut(&tid) {
        unsafe { (*p).span_id = [0; 8] };
    }
}

/// The thread's next Kafka delivery: a CONSUMER span it was in is over.
pub fn consumer_done() {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(p) = SERVING.get_ptr_mut(&tid) {
        if unsafe { (*p).flags } & ctxflag::CONSUMER != 0 {
            unsafe { (*p).span_id = [0; 8] };
        }
    }
}

/// The SERVER (or CONSUMER, until it lapses) span the current thread is
/// serving, if any.
#[inline(always)]
pub fn serving() -> Option<TraceCtx> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let s = unsafe { SERVING.get(&tid) }?;
    let live = s.flags & ctxflag::CONSUMER == 0 || crate::kafka::consuming(tid);
    (s.span_id != [0; 8] && live).then_some(*s)
}

/// Thread `tid` exited: drop what it was serving.
pub fn thread_exit(tid: u32) {
    let _ = SERVING.remove(&tid);
}

/// A CLIENT span for a request the current thread sends: a child of the
/// request it serves, or the root of a new trace.
pub fn client_request() -> TraceCtx {
    match serving() {
        Some(s) => TraceCtx {
            trace_id: s.trace_id,
            span_id: new_span_id(),
            parent_id: s.span_id,
            flags: (s.flags & ctxflag::SAMPLED) | ctxflag::HAS_PARENT,
            _pad: [0; 7],
        },
        None => root(),
    }
}

/// Reports ids the kernel decided. `stream_id`: the HTTP/2 stream of an
/// injected request, 0 otherwise. Not inlined: its event's stack stays out
/// of its callers' frames (the sk_msg program nests two loops' frames).
#[inline(never)]
pub fn emit(role: u8, conn_id: u64, ts_ns: u64, ctx: &TraceCtx, stream_id: u32) {
    let ev = CtxEvent {
        kind: kind::TRACE_CTX,
        role,
        _pad: [0; 3],
        conn_id,
        pid_tgid: bpf_get_current_pid_tgid(),
        ts_ns,
        ctx: *ctx,
        stream_id,
        _pad2: 0,
    };
    if EVENTS.output::<CtxEvent>(&ev, 0).is_err() {
        count(clew_common::stat::RINGBUF_DROPS);
    }
}

/// Writes `traceparent: 00-{trace}-{span}-{flags}\r\n` into `out`.
pub fn format_traceparent(ctx: &TraceCtx, out: &mut [u8; clew_common::TRACEPARENT_LINE]) {
    let prefix = b"traceparent: ";
    let mut k = 0;
    while k < prefix.len() {
        out[k] = prefix[k];
        k += 1;
    }
    ctx.write_traceparent(out, 13);
    out[68] = b'\r';
    out[69] = b'\n';
}

/// Writes the HPACK field `traceparent: 00-{trace}-{span}-{flags}` (a
/// literal without indexing, new plain name, plain value) into `out`.
pub fn format_h2_field(ctx: &TraceCtx, out: &mut [u8; h2::TRACEPARENT_FIELD]) {
    let prefix = h2::TRACEPARENT_FIELD_PREFIX;
    let mut k = 0;
    while k < prefix.len() {
        out[k] = prefix[k];
        k += 1;
    }
    ctx.write_traceparent(out, prefix.len());
}
