//! `traceparent` injection into Kafka Produce requests, from the sk_msg
//! program of `inject` (which owns the sockets and their `SockState`).
//!
//! A socket is Kafka when its first send starts like a Kafka request. Each
//! send is walked request by request by their size fields (at most
//! `MAX_REQUESTS` per send; `SockState::skip` carries a request that goes
//! on past the end of a send). Each Produce request gets a PRODUCER span
//! (the child of what the thread serves, else a new trace), reported with
//! the request's correlation id; when it lies whole in the send, every
//! record without a `traceparent` header gets one naming its batch's span
//! (`kafka::batch_span_id`).
//!
//! The rewrite is `clew_common::kafka::Walk`, run twice over a copy of the
//! request in map memory: PLAN checks every length, count and batch CRC
//! and sizes the result, EMIT writes the rewritten request (lengths,
//! header counts, batch lengths and CRCs, records lengths and the size all
//! consistent). Only then is the message touched: room pushed at the
//! request's start, made contiguous, and the whole request overwritten.
//!
//! Stands down, sending the bytes exactly as written (each counted in
//! `stat::KAFKA_*`): a request not whole in one send, one beyond the walk's
//! bounds, a version it does not rewrite or a batch that is not magic 2, a
//! CRC that does not verify, lengths that do not add up, or a helper that
//! fails before the overwrite (the pushed room is popped back out).
//! Compressed batches and records with their own `traceparent` are copied
//! as they are while the rest of the request is rewritten. The connection
//! is left alone for good when request boundaries are lost.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::sk_msg_md,
    helpers::generated::{bpf_loop, bpf_msg_pull_data, bpf_probe_read_kernel},
    macros::map,
    maps::PerCpuArray,
    programs::SkMsgContext,
};
use clew_common::{
    ctxflag,
    kafka::{self, api, mode, status, MAX_REQUEST},
    role, stat, TraceCtx,
};

use crate::{
    context,
    inject::{SendLoop, SockState},
    inject_h2::read,
    kafka::{claim, owned, run, KafkaBuf, OUT, PRODUCE},
    maps::{count, count_n, now},
};

/// Requests walked per send at most (a client that pipelines more in one
/// send loses injection on that connection).
const MAX_REQUESTS: u32 = 16;
/// Bytes written per step of the overwrite.
const CHUNK: usize = 64;

/// The first send of a connection starts a Kafka request.
pub fn starts_request(ctx: &SkMsgContext) -> bool {
    let mut b = [0u8; 9];
    ctx.size() >= 12 && read(ctx, 0, &mut b) && kafka::is_request_start(&b, 12)
}

/// Where the walk over one send's requests stands, in map memory, which
/// the verifier does not track: one step is verified once, instead of
/// once per request the loop could reach.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SendWalk {
    /// The next request's offset in the message, and the message's size.
    off: u64,
    total: u64,
    /// The walk ended before `MAX_REQUESTS`.
    done: u32,
    _pad: u32,
    /// The first Produce request whole in the send (`len` 0: none), which
    /// is rewritten once the walk is over.
    produce: Request,
}

#[map]
static SEND: PerCpuArray<SendWalk> = PerCpuArray::with_max_entries(1, 0);

/// A request in a send: its offset and length (size field included),
/// API version and correlation id.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    off: u64,
    len: u64,
    version: u32,
    corr: u32,
}

/// Walks the requests of a send, then rewrites its first Produce request.
/// One rewrite per send: the rewrite's own loops then run once, not
/// nested in this walk's (which the verifier would check once per
/// iteration it simulates). Clients send one Produce request per send
/// to a broker; another one in the same send gets its PRODUCER span but
/// no headers, counted as beyond bounds.
pub fn on_send(ctx: &SkMsgContext, st: &mut SockState) {
    if st.hands_off != 0 {
        return;
    }
    let total = ctx.size() as u64;
    if st.skip >= total {
        st.skip -= total;
        return;
    }
    let Some(w) = SEND.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        *w = SendWalk {
            off: st.skip,
            total,
            ..SendWalk::default()
        }
    };
    st.skip = 0;
    let st = unsafe { &mut *SendLoop::run(ctx, st, MAX_REQUESTS, request_step) };
    // SAFETY: written by `request_step` through a pointer the compiler cannot see.
    let w = unsafe { core::ptr::read_volatile(w) };
    if w.done == 0 {
        count(stat::KAFKA_LOST_FRAMING);
        st.hands_off = 1;
        return;
    }
    if w.produce.len == 0 {
        return;
    }
    // Bytes the rewrite adds come before the end of the send: where the
    // next send's first request starts (`st.skip`) does not change.
    let mut tctx = context::client_request();
    if rewrite(ctx, &w.produce, &tctx) {
        tctx.flags |= ctxflag::INJECTED;
    }
    context::emit(role::CONNECTED, 0, now(), &tctx, w.produce.corr);
}

/// One request of the send; returns 1 to stop the loop.
extern "C" fn request_step(_k: u64, p: *mut c_void) -> i64 {
    // SAFETY: `on_send`'s loop, alive for the whole loop.
    let (ctx, st) = unsafe { SendLoop::of(p) };
    let Some(w) = SEND.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    if w.off >= w.total {
        // The last request goes on into the next send.
        st.skip = w.off - w.total;
        w.done = 1;
        return 1;
    }
    let mut h = [0u8; 9];
    let mut corr = [0u8; 4];
    let framed = w.off + 12 <= w.total
        && read(&ctx, w.off, &mut h)
        && read(&ctx, w.off + 8, &mut corr)
        && kafka::is_request_start(&h, 12);
    if !framed {
        // A header split across sends, or not a request where one was due.
        count(stat::KAFKA_LOST_FRAMING);
        st.hands_off = 1;
        w.done = 1;
        return 1;
    }
    let req = Request {
        off: w.off,
        len: 4 + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64,
        version: i16::from_be_bytes([h[6], h[7]]) as u32,
        corr: u32::from_be_bytes(corr),
    };
    w.off = req.off + req.len;
    if i16::from_be_bytes([h[4], h[5]]) != api::PRODUCE {
        return 0;
    }
    let whole = req.off + req.len <= w.total;
    if whole && w.produce.len == 0 {
        w.produce = req;
        return 0;
    }
    // Its PRODUCER span, without headers.
    count(if whole {
        stat::KAFKA_BOUNDS
    } else {
        stat::KAFKA_SPLIT
    });
    let tctx = context::client_request();
    context::emit(role::CONNECTED, 0, now(), &tctx, req.corr);
    0
}

/// Rewrites `req` with headers naming `tctx`'s batches; false when the
/// message is as it was.
fn rewrite(ctx: &SkMsgContext, req: &Request, tctx: &TraceCtx) -> bool {
    let (off, len, version) = (req.off, req.len, req.version);
    if len >= MAX_REQUEST as u64 {
        count(stat::KAFKA_BOUNDS);
        return false;
    }
    let stamp = now();
    let Some(b) = claim(PRODUCE, stamp) else {
        return false;
    };
    let (at, n) = (off as u32, len as u32);
    // The request contiguous, then copied whole.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + n, 0) } != 0
        || ctx.data() + n as usize > ctx.data_end()
    {
        count(stat::KAFKA_FAILED);
        return false;
    }
    let n = n & (MAX_REQUEST as u32 - 1);
    let rc =
        unsafe { bpf_probe_read_kernel((*b).input.as_mut_ptr().cast(), n, ctx.data() as *const _) };
    if rc != 0 {
        count(stat::KAFKA_FAILED);
        return false;
    }
    unsafe { (*b).walk.start(mode::PLAN, version, n, tctx) };
    let done = run::<false>(b);
    let w = unsafe { &(*b).walk };
    count_n(stat::KAFKA_OWN_TRACEPARENT, w.own);
    count_n(stat::KAFKA_COMPRESSED, w.compressed);
    if done != status::DONE {
        count(match done {
            status::CRC => stat::KAFKA_CRC,
            status::BOUNDS => stat::KAFKA_BOUNDS,
            status::UNSUPPORTED => stat::KAFKA_UNSUPPORTED,
            status::FAILED => stat::KAFKA_FAILED,
            _ => stat::KAFKA_MALFORMED,
        });
        return false;
    }
    // PLAN found nothing to inject into: the walk ended there.
    if w.mode != mode::EMIT {
        return false;
    }
    let (out_len, injected) = (w.o, w.injected);
    if out_len <= n || out_len as usize > OUT || !owned(b, stamp) {
        count(stat::KAFKA_FAILED);
        return false;
    }
    let grown = out_len - n;
    if ctx.push_data(at, grown, 0).is_err() {
        count(stat::KAFKA_FAILED);
        return false;
    }
    // One contiguous region for the overwrite: after this, pulling any
    // window inside it copies nothing and cannot fail.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + out_len, 0) } != 0 {
        let _ = ctx.pop_data(at, grown, 0);
        count(stat::KAFKA_FAILED);
        return false;
    }
    if !overwrite(ctx, b, at, out_len) || !owned(b, stamp) {
        // Not reachable once the region is contiguous; counted if it is.
        count(stat::KAFKA_FAILED);
    }
    count_n(stat::KAFKA_INJECTED, injected);
    true
}

/// The state of `write_step`. Nothing in it changes from step to step
/// but `ok`, set by the last one: the chunk comes from the loop index, so
/// the verifier checks one step instead of simulating every iteration.
#[repr(C)]
struct Overwrite {
    msg: *mut sk_msg_md,
    b: *mut KafkaBuf,
    /// Where the request starts in the message, and the output's length.
    at: u32,
    len: u32,
    ok: u32,
}

/// Writes the output of `b` (`len` bytes, at least `CHUNK`) over the
/// message at `at`, `CHUNK` bytes a step; the last chunk ends at `len`
/// (overlapping the one before it with the same bytes).
fn overwrite(ctx: &SkMsgContext, b: *mut KafkaBuf, at: u32, len: u32) -> bool {
    if (len as usize) < CHUNK {
        return false;
    }
    let mut o = Overwrite {
        msg: ctx.msg,
        b,
        at,
        len,
        ok: 0,
    };
    unsafe {
        bpf_loop(
            (OUT / CHUNK) as u32 + 1,
            write_step as *const () as *mut c_void,
            &mut o as *mut Overwrite as *mut c_void,
            0,
        )
    };
    // SAFETY: written by `write_step` through a pointer the compiler cannot see.
    unsafe { core::ptr::read_volatile(&o.ok) == 1 }
}

extern "C" fn write_step(k: u64, p: *mut c_void) -> i64 {
    // SAFETY: `overwrite`'s state, alive for the whole loop.
    let o = unsafe { &mut *(p as *mut Overwrite) };
    let pos = (k as u32).wrapping_mul(CHUNK as u32);
    if pos >= o.len {
        o.ok = 1;
        return 1;
    }
    let pos = if pos + CHUNK as u32 > o.len {
        o.len - CHUNK as u32
    } else {
        pos
    };
    let ctx = SkMsgContext::new(o.msg);
    let start = o.at + pos;
    if unsafe { bpf_msg_pull_data(o.msg, start, start + CHUNK as u32, 0) } != 0 {
        return 1;
    }
    let data = ctx.data();
    if data + CHUNK > ctx.data_end() {
        return 1;
    }
    let dst = data as *mut u64;
    // SAFETY: `pos` masked below `OUT`, and the output is `2 * OUT` long.
    let src = unsafe { (*o.b).output.as_ptr().add(pos as usize & (OUT - 1)) } as *const u64;
    let mut k = 0;
    while k < CHUNK / 8 {
        unsafe { dst.add(k).write_unaligned(src.add(k).read_unaligned()) };
        k += 1;
    }
    0
}
