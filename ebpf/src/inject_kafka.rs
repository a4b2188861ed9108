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
    programs::SkMsgContext,
};
use clew_common::{
    ctxflag,
    kafka::{self, api, mode, status, MAX_REQUEST},
    role, stat, TraceCtx,
};

use crate::{
    context,
    inject::{Sent, SockState},
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

/// Where the walk over one send's requests stands (on the caller's stack,
/// which the verifier follows into the callback).
#[repr(C)]
struct Requests {
    msg: *mut sk_msg_md,
    st: *mut SockState,
    /// The next request's offset in the message.
    off: u64,
    /// The message's size, grown by each rewrite.
    total: u64,
    /// The walk ended before `MAX_REQUESTS`.
    done: u32,
}

/// Walks the requests of a send and injects into its Produce requests.
pub fn on_send(ctx: &SkMsgContext, st: &mut SockState) -> Sent {
    let total = ctx.size() as u64;
    if st.skip >= total {
        st.skip -= total;
        return Sent::Other;
    }
    let mut r = Requests {
        msg: ctx.msg,
        st: st as *mut SockState,
        off: st.skip,
        total,
        done: 0,
    };
    st.skip = 0;
    unsafe {
        bpf_loop(
            MAX_REQUESTS,
            request_step as *const () as *mut c_void,
            &mut r as *mut Requests as *mut c_void,
            0,
        )
    };
    // SAFETY: written by `request_step` through a pointer the compiler cannot see.
    if unsafe { core::ptr::read_volatile(&r.done) } == 0 {
        count(stat::KAFKA_LOST_FRAMING);
        st.hands_off = 1;
    }
    Sent::Other
}

/// One request of the send; returns 1 to stop the loop.
extern "C" fn request_step(_k: u64, p: *mut c_void) -> i64 {
    // SAFETY: `on_send`'s `Requests`, alive for the whole loop.
    let r = unsafe { &mut *(p as *mut Requests) };
    let st = unsafe { &mut *r.st };
    let ctx = SkMsgContext::new(r.msg);
    if r.off >= r.total {
        // The last request goes on into the next send.
        st.skip = r.off - r.total;
        r.done = 1;
        return 1;
    }
    let mut h = [0u8; 9];
    let mut corr = [0u8; 4];
    let framed = r.off + 12 <= r.total
        && read(&ctx, r.off, &mut h)
        && read(&ctx, r.off + 8, &mut corr)
        && kafka::is_request_start(&h, 12);
    if !framed {
        // A header split across sends, or not a request where one was due.
        count(stat::KAFKA_LOST_FRAMING);
        st.hands_off = 1;
        r.done = 1;
        return 1;
    }
    let req = Request {
        off: r.off,
        len: 4 + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64,
        version: i16::from_be_bytes([h[6], h[7]]) as u32,
        corr: u32::from_be_bytes(corr),
    };
    let mut grown = 0;
    if i16::from_be_bytes([h[4], h[5]]) == api::PRODUCE {
        grown = produce(&ctx, &req, req.off + req.len <= r.total);
    }
    r.off += req.len + grown;
    r.total += grown;
    0
}

/// A request in a send: its offset and length (size field included),
/// API version and correlation id.
struct Request {
    off: u64,
    len: u64,
    version: u32,
    corr: u32,
}

/// A Produce request (`whole`: inside this send): its PRODUCER span, and
/// the bytes the rewrite added.
#[inline(never)]
fn produce(ctx: &SkMsgContext, req: &Request, whole: bool) -> u64 {
    let mut tctx = context::client_request();
    let grown = if whole {
        rewrite(ctx, req, &tctx)
    } else {
        count(stat::KAFKA_SPLIT);
        0
    };
    if grown > 0 {
        tctx.flags |= ctxflag::INJECTED;
    }
    context::emit(role::CONNECTED, 0, now(), &tctx, req.corr);
    grown
}

/// Rewrites `req` with headers naming `tctx`'s batches; returns the bytes
/// added (0: the message is as it was).
fn rewrite(ctx: &SkMsgContext, req: &Request, tctx: &TraceCtx) -> u64 {
    let (off, len, version) = (req.off, req.len, req.version);
    if len >= MAX_REQUEST as u64 {
        count(stat::KAFKA_BOUNDS);
        return 0;
    }
    let stamp = now();
    let Some(b) = claim(PRODUCE, stamp) else {
        return 0;
    };
    let (at, n) = (off as u32, len as u32);
    // The request contiguous, then copied whole.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + n, 0) } != 0
        || ctx.data() + n as usize > ctx.data_end()
    {
        count(stat::KAFKA_FAILED);
        return 0;
    }
    let n = n & (MAX_REQUEST as u32 - 1);
    let rc =
        unsafe { bpf_probe_read_kernel((*b).input.as_mut_ptr().cast(), n, ctx.data() as *const _) };
    if rc != 0 {
        count(stat::KAFKA_FAILED);
        return 0;
    }
    unsafe { (*b).walk.start(mode::PLAN, version, n, tctx) };
    let planned = run(b);
    let w = unsafe { &mut (*b).walk };
    count_n(stat::KAFKA_OWN_TRACEPARENT, w.own);
    count_n(stat::KAFKA_COMPRESSED, w.compressed);
    if planned != status::DONE {
        count(match planned {
            status::CRC => stat::KAFKA_CRC,
            status::BOUNDS => stat::KAFKA_BOUNDS,
            status::UNSUPPORTED => stat::KAFKA_UNSUPPORTED,
            status::FAILED => stat::KAFKA_FAILED,
            _ => stat::KAFKA_MALFORMED,
        });
        return 0;
    }
    if w.injected == 0 {
        return 0;
    }
    w.emit();
    if run(b) != status::DONE {
        count(stat::KAFKA_FAILED);
        return 0;
    }
    let w = unsafe { &(*b).walk };
    let (out_len, injected) = (w.o, w.injected);
    if out_len <= n || out_len as usize > OUT || !owned(b, stamp) {
        count(stat::KAFKA_FAILED);
        return 0;
    }
    let grown = out_len - n;
    if ctx.push_data(at, grown, 0).is_err() {
        count(stat::KAFKA_FAILED);
        return 0;
    }
    // One contiguous region for the overwrite: after this, pulling any
    // window inside it copies nothing and cannot fail.
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + out_len, 0) } != 0 {
        let _ = ctx.pop_data(at, grown, 0);
        count(stat::KAFKA_FAILED);
        return 0;
    }
    if !overwrite(ctx, b, at, out_len) || !owned(b, stamp) {
        // Not reachable once the region is contiguous; counted if it is.
        count(stat::KAFKA_FAILED);
    }
    count_n(stat::KAFKA_INJECTED, injected);
    grown as u64
}

/// The state of `write_step`.
#[repr(C)]
struct Overwrite {
    msg: *mut sk_msg_md,
    b: *mut KafkaBuf,
    /// Where the request starts in the message, the output's length, the
    /// next chunk's offset in it.
    at: u32,
    len: u32,
    pos: u32,
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
        pos: 0,
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

extern "C" fn write_step(_k: u64, p: *mut c_void) -> i64 {
    // SAFETY: `overwrite`'s state, alive for the whole loop.
    let o = unsafe { &mut *(p as *mut Overwrite) };
    if o.pos >= o.len {
        o.ok = 1;
        return 1;
    }
    let pos = if o.pos + CHUNK as u32 > o.len {
        o.len - CHUNK as u32
    } else {
        o.pos
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
    o.pos = pos + CHUNK as u32;
    0
}
