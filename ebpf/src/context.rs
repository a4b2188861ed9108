//! Trace context decided in the kernel, where it must be known before the
//! process sends its next request: the SERVER span a thread is serving
//! (from the request it just read, joining an incoming `traceparent`), and
//! the ids of CLIENT spans written into outgoing requests. A thread that
//! has more than one request open (an event loop) cannot say which one a
//! call is for: such calls start a new trace, marked ambiguous.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_prandom_u32},
    macros::map,
    maps::LruHashMap,
};
use clew_common::{ctxflag, h2, kind, CtxEvent, TraceCtx, MAX_INFLIGHT, MAX_PIDS, NEST_JAVA};

use crate::{
    carry,
    goroutine::{self, Goroutine},
    java,
    maps::{count, quiet, EVENTS},
    spawn::{self, StartedIn},
};

/// Head sampling, set by the agent from OTEL_TRACES_SAMPLER(_ARG): a new
/// trace is sampled when the low 8 bytes of its id (big-endian) are below
/// the threshold (`traceidratio`), or with `SAMPLE_CONSISTENT` when its low
/// 7 bytes are at or above it (`probability`); `SAMPLE_PARENT_BASED`
/// honours an incoming sampled flag.
#[unsafe(no_mangle)]
static SAMPLE_THRESHOLD: u64 = u64::MAX;
#[unsafe(no_mangle)]
static SAMPLE_ALWAYS: u32 = 1;
#[unsafe(no_mangle)]
static SAMPLE_PARENT_BASED: u32 = 1;
#[unsafe(no_mangle)]
static SAMPLE_CONSISTENT: u32 = 0;

/// Whose requests a `SERVING` entry follows: a thread (its pid_tgid, `g`
/// 0); for processes in `NEST_BY_PROCESS` a goroutine (tid 0, its `g`) or a
/// Java thread (tid 0, its id), or the whole process when neither can be
/// read (tid 0, `g` 0).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Executor {
    pid_tgid: u64,
    g: u64,
}

/// What an executor serves: the request it read last, and how many it has
/// read and not answered yet. Nesting under `ctx` is sure only while that
/// is the one open request; with more open, which one a call belongs to is
/// a guess.
#[derive(Clone, Copy)]
pub struct Serving {
    /// The last request read; a zero span id once it was answered.
    ctx: TraceCtx,
    conn_id: u64,
    stream: u32,
    open: u32,
}

/// By executor. Entries are written in place, so a request costs lookups,
/// not an LRU insert and delete. Eviction: `proc_exit` deletes a thread's
/// entry when it exits; LRU covers threads whose exit was missed.
#[map]
static SERVING: LruHashMap<Executor, Serving> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Requests read and not answered yet on a connection (HTTP/2: stream;
/// 0 for HTTP/1), with the executor that read them: each response closes
/// one there, whichever thread writes it. Eviction: the connection's close
/// removes its entry, an HTTP/2 stream's response removes the stream's;
/// LRU covers the rest, which can leave an executor counting requests too
/// many: its calls are then marked ambiguous, never nested with false
/// confidence.
#[map]
static OPEN_REQUESTS: LruHashMap<OpenKey, Opened> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Opened {
    exec: Executor,
    /// More than one when requests are pipelined.
    count: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct OpenKey {
    conn_id: u64,
    stream: u32,
    _pad: u32,
}

/// Processes whose threads do not own their requests (Go: goroutines move
/// between threads; Java: virtual threads), set by the agent, with where
/// `g` sits below the fs base (0: unknown, the process then counts as one
/// executor), or `NEST_JAVA` for a JVM (see `java`). Eviction:
/// the agent removes a process when it exits or execs, the kernel when its
/// main thread exits; LRU.
#[map]
static NEST_BY_PROCESS: LruHashMap<u32, i64> = LruHashMap::with_max_entries(MAX_PIDS, 0);

#[inline(always)]
pub(crate) fn executor() -> Executor {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(g_offset) = (unsafe { NEST_BY_PROCESS.get(&tgid) }).copied() else {
        return Executor { pid_tgid, g: 0 };
    };
    let process = pid_tgid & !0xffff_ffff;
    if g_offset == NEST_JAVA {
        return Executor {
            pid_tgid: process,
            g: java::current(tgid),
        };
    }
    let g = if g_offset == 0 {
        None
    } else {
        goroutine::current(g_offset)
    };
    match g {
        Some(g) => Executor {
            pid_tgid: process,
            g: goroutine::owner(Goroutine { tgid, _pad: 0, g }).g,
        },
        None => Executor {
            pid_tgid: process,
            g: 0,
        },
    }
}

/// The executor whose request the current executor's calls belong to:
/// itself, or for a goroutine, the one it works for. Requests a goroutine
/// reads stay its own (`executor`).
#[inline(always)]
pub(crate) fn caller() -> Executor {
    let exec = executor();
    if exec.g == 0 {
        return exec;
    }
    let me = Goroutine {
        tgid: (exec.pid_tgid >> 32) as u32,
        _pad: 0,
        g: exec.g,
    };
    Executor {
        pid_tgid: exec.pid_tgid,
        g: works_for(exec.pid_tgid, me),
    }
}

/// The goroutine whose requests `me` works for: the ancestor it was
/// started by while that one still serves the same request (see
/// `spawn.rs`), else itself. Once the ancestor answered (or went on to
/// another request), `me` serves nothing: its calls start new traces.
#[inline(always)]
fn works_for(process: u64, me: Goroutine) -> u64 {
    let Some(at) = spawn::started_in(&me) else {
        return me.g;
    };
    let ancestor = Executor {
        pid_tgid: process,
        g: at.g,
    };
    match unsafe { SERVING.get(&ancestor) } {
        Some(s) if s.ctx.span_id == at.span => at.g,
        _ => me.g,
    }
}

/// Where goroutine `g` of process `tgid` starts a goroutine: the executor
/// it works for and the request that one serves, if any.
#[inline(always)]
pub(crate) fn request_of(tgid: u32, g: u64) -> Option<StartedIn> {
    let process = u64::from(tgid) << 32;
    let g = works_for(process, Goroutine { tgid, _pad: 0, g });
    let s = unsafe {
        SERVING.get(&Executor {
            pid_tgid: process,
            g,
        })
    }?;
    (s.open > 0 && s.ctx.span_id != [0; 8]).then_some(StartedIn {
        g,
        span: s.ctx.span_id,
    })
}

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

fn consistent() -> bool {
    let v = unsafe { core::ptr::read_volatile(&SAMPLE_CONSISTENT) };
    v == 1
}

fn sample_root(trace_id: &[u8; 16]) -> bool {
    if unsafe { core::ptr::read_volatile(&SAMPLE_ALWAYS) } == 1 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let low = u64::from_be_bytes(low);
    let threshold = unsafe { core::ptr::read_volatile(&SAMPLE_THRESHOLD) };
    if consistent() {
        low & 0x00ff_ffff_ffff_ffff >= threshold
    } else {
        low < threshold
    }
}

fn root() -> TraceCtx {
    let mut trace_id = random::<16>();
    trace_id[0] |= 1;
    // A trace the `probability` rule keeps carries the rule's threshold.
    let flags = match (sample_root(&trace_id), consistent()) {
        (true, true) => ctxflag::SAMPLED | ctxflag::SAMPLER_TH,
        (true, false) => ctxflag::SAMPLED,
        _ => 0,
    };
    TraceCtx {
        trace_id,
        span_id: new_span_id(),
        parent_id: [0; 8],
        flags,
        _pad: [0; 7],
    }
}

/// A thread read the start of a request on `conn_id` (HTTP/2: `stream`):
/// decide the SERVER span, which its executor now serves. `tracestate`:
/// where the request head in `inject::HEAD` holds the valid `tracestate`
/// that came with `incoming`, which the span then carries on.
#[inline(always)]
pub fn server_request(
    conn_id: u64,
    stream: u32,
    incoming: Option<([u8; 16], [u8; 8], bool)>,
    tracestate: Option<(u32, u32)>,
) -> TraceCtx {
    let mut ctx = joined(incoming);
    let exec = executor();
    if let Some((at, n)) = tracestate {
        if carry::hold(&exec, &ctx.span_id, at, n) {
            ctx.flags |= ctxflag::TRACESTATE;
            count(clew_common::stat::TRACESTATE_CARRIED);
        } else {
            count(clew_common::stat::TRACESTATE_DROPPED);
        }
    }
    let key = OpenKey {
        conn_id,
        stream,
        _pad: 0,
    };
    match OPEN_REQUESTS.get_ptr_mut(&key) {
        // The connection's next request, or a pipelined one more.
        Some(o) if unsafe { (*o).count == 0 || (*o).exec == exec } => unsafe {
            (*o).exec = exec;
            (*o).count += 1;
        },
        // Read by another executor now: what the first one had open there
        // is its no more.
        Some(o) => unsafe {
            close_on((*o).exec, &key, (*o).count, true);
            (*o).exec = exec;
            (*o).count = 1;
        },
        None => {
            let o = Opened {
                exec,
                count: 1,
                _pad: 0,
            };
            let _ = OPEN_REQUESTS.insert(&key, &o, 0);
        }
    }
    match SERVING.get_ptr_mut(&exec) {
        Some(p) => unsafe {
            (*p).ctx = ctx;
            (*p).conn_id = conn_id;
            (*p).stream = stream;
            (*p).open += 1;
        },
        None => {
            let s = Serving {
                ctx,
                conn_id,
                stream,
                open: 1,
            };
            let _ = SERVING.insert(&exec, &s, 0);
        }
    }
    ctx
}

/// `n` requests `exec` read on `key` are no longer open there; `last`:
/// none is left there, so its last read is not served any more either.
#[inline(always)]
fn close_on(exec: Executor, key: &OpenKey, n: u32, last: bool) {
    if let Some(p) = SERVING.get_ptr_mut(&exec) {
        unsafe {
            (*p).open = (*p).open.saturating_sub(n);
            if last && (*p).conn_id == key.conn_id && (*p).stream == key.stream {
                (*p).ctx.span_id = [0; 8];
            }
        }
    }
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
                // The rule, not the parent, decided: its threshold is part
                // of the span's tracestate (an incoming one, which the
                // kernel carries as it came, wins when both exist).
                if !parent_based && consistent() {
                    flags |= ctxflag::SAMPLER_TH;
                }
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

/// The current executor processes a Kafka record whose context is `ctx`
/// (a CONSUMER span): its calls nest under it until its next delivery.
/// Not while it has requests open: those keep their SERVER spans.
pub fn serve_consumer(ctx: &TraceCtx) -> bool {
    let exec = executor();
    match SERVING.get_ptr_mut(&exec) {
        Some(p) if unsafe { (*p).open > 0 && (*p).ctx.flags & ctxflag::CONSUMER == 0 } => false,
        Some(p) => unsafe {
            (*p).ctx = *ctx;
            (*p).conn_id = 0;
            (*p).stream = 0;
            (*p).open = 1;
            true
        },
        None => {
            let s = Serving {
                ctx: *ctx,
                conn_id: 0,
                stream: 0,
                open: 1,
            };
            let _ = SERVING.insert(&exec, &s, 0);
            true
        }
    }
}

/// The executor's next Kafka delivery: a CONSUMER span it was in is over.
pub fn consumer_done() {
    if let Some(p) = SERVING.get_ptr_mut(&executor()) {
        unsafe {
            if (*p).ctx.flags & ctxflag::CONSUMER != 0 {
                (*p).open = 0;
                (*p).ctx.span_id = [0; 8];
            }
        }
    }
}

/// A response was written on `conn_id` (HTTP/2: `stream`): the executor
/// that read its request no longer serves it.
pub fn server_response(conn_id: u64, stream: u32) {
    close(conn_id, stream, false);
}

/// One request on `conn_id`/`stream` answered, or with `all`, every one
/// left there.
#[inline(always)]
fn close(conn_id: u64, stream: u32, all: bool) {
    let key = OpenKey {
        conn_id,
        stream,
        _pad: 0,
    };
    let Some(o) = OPEN_REQUESTS.get_ptr_mut(&key) else {
        return;
    };
    let (exec, count) = unsafe { ((*o).exec, (*o).count) };
    if count == 0 {
        // Nothing open: answered already (a 100 Continue, then the
        // response), or the connection closing between requests.
        if all {
            let _ = OPEN_REQUESTS.remove(&key);
        }
        return;
    }
    let n = if all { count } else { 1 };
    let last = n >= count;
    if last && (all || stream != 0) {
        let _ = OPEN_REQUESTS.remove(&key);
    } else {
        // An HTTP/1 connection's entry is kept for its next request, so a
        // request costs lookups, not an LRU insert and delete.
        unsafe { (*o).count = count - n };
    }
    close_on(exec, &key, n, last);
}

/// Server connection `conn_id` closed: HTTP/1 requests left unanswered are
/// not served any more. (HTTP/2 streams left open age out by LRU.)
pub fn conn_closed(conn_id: u64) {
    close(conn_id, 0, true);
}

/// What the current executor's outgoing calls nest under.
pub(crate) enum Parent {
    /// The one open request.
    Sure(TraceCtx),
    /// Several requests open (or one, not the last read): the last read,
    /// if still open, is only a candidate.
    Unsure([u8; 8]),
    None,
}

#[inline(always)]
pub(crate) fn parent() -> Parent {
    let Some(s) = (unsafe { SERVING.get(&caller()) }) else {
        return Parent::None;
    };
    // A CONSUMER span lapses after its bound even if no delivery ends it.
    let tid = bpf_get_current_pid_tgid() as u32;
    if s.ctx.flags & ctxflag::CONSUMER != 0 && !crate::kafka::consuming(tid) {
        return Parent::None;
    }
    match s.open {
        0 => Parent::None,
        1 if s.ctx.span_id != [0; 8] => Parent::Sure(s.ctx),
        _ => Parent::Unsure(s.ctx.span_id),
    }
}

/// The SERVER span the current executor surely serves, if any.
#[inline(always)]
pub fn serving() -> Option<TraceCtx> {
    match parent() {
        Parent::Sure(s) => Some(s),
        _ => None,
    }
}

/// Thread `pid_tgid` exited: drop what it was serving (and, for a
/// process's main thread, what the process was).
pub fn thread_exit(pid_tgid: u64) {
    let thread = Executor { pid_tgid, g: 0 };
    let _ = SERVING.remove(&thread);
    carry::forget(&thread);
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        let tgid = (pid_tgid >> 32) as u32;
        let _ = NEST_BY_PROCESS.remove(&tgid);
        let _ = java::JAVA_THREADS.remove(&tgid);
        let process = Executor {
            pid_tgid: pid_tgid & !0xffff_ffff,
            g: 0,
        };
        let _ = SERVING.remove(&process);
        carry::forget(&process);
    }
}

/// A CLIENT span for a request the current executor sends: a child of the
/// request it surely serves (carrying its `tracestate`), else the root of
/// a new trace; marked ambiguous, with the candidate in `parent_id`, when
/// it serves several.
pub fn client_request() -> TraceCtx {
    match parent() {
        Parent::Sure(s) => TraceCtx {
            trace_id: s.trace_id,
            span_id: new_span_id(),
            parent_id: s.span_id,
            flags: (s.flags & (ctxflag::SAMPLED | ctxflag::TRACESTATE | ctxflag::SAMPLER_TH))
                | ctxflag::HAS_PARENT,
            _pad: [0; 7],
        },
        Parent::Unsure(candidate) => {
            let mut c = root();
            c.parent_id = candidate;
            c.flags |= ctxflag::AMBIGUOUS;
            c
        }
        Parent::None => root(),
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
    if EVENTS
        .output::<CtxEvent>(&ev, quiet(size_of::<CtxEvent>()))
        .is_err()
    {
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
