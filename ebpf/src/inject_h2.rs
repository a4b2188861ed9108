//! `traceparent` injection into plaintext HTTP/2 requests, from the sk_msg
//! program of `inject` (which owns the sockets and their `SockState`).
//!
//! A socket is HTTP/2 only when its first send starts with the client
//! preface and a SETTINGS frame. From then on every send is walked frame
//! by frame (at most `MAX_FRAMES` per send; `SockState::skip` carries a
//! frame that goes on past the end of a send into the next one), and each
//! HEADERS frame that opens a new client stream gets one HPACK field,
//! `traceparent` as a literal without indexing with a plain new name
//! (`h2::TRACEPARENT_FIELD`, 69 bytes), with the frame's length fixed;
//! before it, the same kind of field for the `tracestate` the CLIENT span
//! carries (`carry`), unless the request has its own, the application
//! indexed its own on the connection, or the frame would outgrow 16384
//! bytes with it (then only `traceparent` goes in).
//!
//! Where: at the END of the header block (before any padding). Pseudo-header
//! fields must come before regular ones (RFC 9113 §8.3), and a block's
//! pseudo-headers cannot be told apart once the encoder refers to them by
//! dynamic-table index (every real encoder does from the second request
//! on), but anything after the last field is after them all. A literal
//! without indexing leaves both dynamic tables alone, so the application's
//! encoder and the server's decoder stay in step.
//!
//! Stands down, sending the bytes exactly as written (each counted in
//! `stat::H2_*`):
//! - for the request: it carries its own `traceparent` (an HPACK walk of
//!   the whole block finds the literal name, plain or Huffman); the frame
//!   would outgrow 16384 bytes; a helper failed after the push (the bytes
//!   are popped back out);
//! - for the connection, from then on: a HEADERS frame that is not whole in
//!   one send or is followed by CONTINUATION, a block beyond the walk's
//!   bounds or malformed (an unscanned block may have put `traceparent`
//!   into the dynamic table), the application indexing `traceparent`
//!   itself, a frame header split across sends, or more frames in a send
//!   than are walked (frame boundaries are then lost).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_msg_pull_data, bpf_probe_read_kernel},
    macros::map,
    maps::PerCpuArray,
    programs::SkMsgContext,
};
use clew_common::{
    ctxflag,
    h2::{
        self, flag, frame, BlockScan, FrameHeader, Walk, FRAME_HEADER, MAX_BLOCK_FIELDS,
        MAX_BLOCK_SCAN, TRACEPARENT_FIELD,
    },
    role, stat,
};

use crate::{
    carry, context,
    inject::{SendLoop, Sent, SockState},
    maps::{count, now},
};

/// Frames walked per send at most. Clients coalesce many frames into one
/// send (h2load with 100 concurrent streams sends 100 HEADERS frames at
/// once); each costs one `bpf_loop` iteration, not verifier work.
const MAX_FRAMES: u32 = 256;
/// The block buffer is twice the largest block: LLVM drops an index mask
/// it can prove redundant, and the verifier then bounds `start + k` reads
/// by `start`'s bound (below `MAX_BLOCK_SCAN`) plus a small constant.
const BLOCK_BUF: usize = 2 * MAX_BLOCK_SCAN;
const BLOCK_MASK: usize = BLOCK_BUF - 1;

/// A header block is copied here to be walked, and the walk's state kept
/// beside it (map memory, which the verifier does not track: one step of
/// the walk is verified once, not once per path through a block).
#[repr(C)]
pub struct Block {
    send: SendWalk,
    walk: Walk,
    /// The field being inserted (off the stack, which the nested loops and
    /// the event already fill).
    field: [u8; TRACEPARENT_FIELD],
    buf: [u8; BLOCK_BUF],
}

#[map]
static H2_BLOCK: PerCpuArray<Block> = PerCpuArray::with_max_entries(1, 0);

/// The first send of a connection: the client preface, then a SETTINGS
/// frame header.
pub fn starts_with_preface(ctx: &SkMsgContext) -> bool {
    const N: usize = h2::PREFACE.len() + FRAME_HEADER;
    let mut b = [0u8; N];
    if !read(ctx, 0, &mut b) {
        return false;
    }
    let mut k = 0;
    while k < h2::PREFACE.len() {
        if b[k] != h2::PREFACE[k] {
            return false;
        }
        k += 1;
    }
    b[h2::PREFACE.len() + 3] == frame::SETTINGS
}

/// What became of one HEADERS frame.
enum Outcome {
    /// Fields of this many bytes went in.
    Injected(u32),
    /// A new request that leaves without `traceparent`.
    Bare(u32),
    /// A request that carries the application's own.
    Own,
    /// Not a request (trailers).
    Other,
}

/// Where the walk over one send's frames stands (in `H2_BLOCK`, map memory,
/// for the same reason as `Walk`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SendWalk {
    /// The next frame header's offset in the message.
    off: u64,
    /// The message's size, grown by each injection.
    total: u64,
    /// `SENT_*`, and the stream of the first bare request.
    sent: u32,
    bare_stream: u32,
    injected: u32,
    /// The walk ended before `MAX_FRAMES`.
    done: u32,
}

const SENT_OTHER: u32 = 0;
const SENT_CARRIED: u32 = 1;
const SENT_BARE: u32 = 2;

/// Walks the frames of a send from `from` and injects into its requests.
pub fn on_send(ctx: &SkMsgContext, st: &mut SockState, from: u64) -> Sent {
    let Some(block) = H2_BLOCK.get_ptr_mut(0) else {
        return Sent::Other;
    };
    unsafe {
        (*block).send = SendWalk {
            off: from + st.skip,
            total: ctx.size() as u64,
            ..SendWalk::default()
        }
    };
    st.skip = 0;
    let st = SendLoop::run(ctx, st, MAX_FRAMES, frame_step);
    // SAFETY: written by `frame_step` through pointers the compiler cannot see.
    let w = unsafe { core::ptr::read_volatile(&(*block).send) };
    let st = unsafe { &mut *st };
    if w.done == 0 && st.hands_off == 0 {
        // More frames than are walked: boundaries are lost.
        count(stat::H2_LOST_FRAMING);
        st.hands_off = 1;
    }
    if w.injected != 0 {
        // One contiguous buffer again (see `inject::inject`), best effort.
        let _ = unsafe { bpf_msg_pull_data(ctx.msg, 0, w.total as u32, 0) };
    }
    match w.sent {
        SENT_BARE => Sent::BareH2(w.bare_stream),
        SENT_CARRIED => Sent::Carried,
        _ => Sent::Other,
    }
}

/// One frame of the send; returns 1 to stop the loop.
extern "C" fn frame_step(_k: u64, lp: *mut c_void) -> i64 {
    // SAFETY: `on_send`'s loop, alive for the whole loop.
    let (ctx, st) = unsafe { SendLoop::of(lp) };
    let Some(block) = H2_BLOCK.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut (*block).send };
    let (off, total) = (w.off, w.total);
    if off >= total {
        // The last frame goes on into the next send.
        st.skip = off - total;
        w.done = 1;
        return 1;
    }
    let mut hb = [0u8; FRAME_HEADER];
    if off + FRAME_HEADER as u64 > total || !read(&ctx, off, &mut hb) {
        // A frame header split across sends: boundaries are lost.
        count(stat::H2_LOST_FRAMING);
        st.hands_off = 1;
        w.done = 1;
        return 1;
    }
    let h = FrameHeader::parse(&hb);
    let mut end = off + FRAME_HEADER as u64 + h.len as u64;
    if h.ty == frame::HEADERS {
        let outcome = headers(&ctx, st, off, &h, total);
        let w = unsafe { &mut (*block).send };
        match outcome {
            Outcome::Injected(n) => {
                w.injected += 1;
                w.total += n as u64;
                end += n as u64;
                if w.sent == SENT_OTHER {
                    w.sent = SENT_CARRIED;
                }
            }
            Outcome::Bare(stream) => {
                if w.sent != SENT_BARE {
                    w.sent = SENT_BARE;
                    w.bare_stream = stream;
                }
            }
            Outcome::Own => {
                if w.sent == SENT_OTHER {
                    w.sent = SENT_CARRIED;
                }
            }
            Outcome::Other => {}
        }
        if st.hands_off != 0 {
            w.done = 1;
            return 1;
        }
    } else if h.ty == frame::CONTINUATION {
        // Only after a HEADERS frame without END_HEADERS, which gave up.
        count(stat::H2_SPLIT);
        st.hands_off = 1;
        w.done = 1;
        return 1;
    }
    let w = unsafe { &mut (*block).send };
    w.off = end;
    if end == w.total {
        w.done = 1;
        return 1;
    }
    0
}

/// One HEADERS frame at `off` (its header `h` already read), in a send of
/// `total` bytes.
fn headers(
    ctx: &SkMsgContext,
    st: &mut SockState,
    off: u64,
    h: &FrameHeader,
    total: u64,
) -> Outcome {
    let new_request = h.stream & 1 == 1 && h.stream > st.last_stream;
    if new_request {
        st.last_stream = h.stream;
    }
    let bare = if new_request {
        Outcome::Bare(h.stream)
    } else {
        Outcome::Other
    };
    let payload = off + FRAME_HEADER as u64;
    if h.flags & flag::END_HEADERS == 0 || payload + h.len as u64 > total {
        count(stat::H2_SPLIT);
        st.hands_off = 1;
        return bare;
    }
    let mut pad = [0u8; 1];
    if h.flags & flag::PADDED != 0 && !read(ctx, payload, &mut pad) {
        count(stat::H2_UNSCANNED);
        st.hands_off = 1;
        return bare;
    }
    let Some((start, end)) = h.block(pad[0]) else {
        count(stat::H2_UNSCANNED);
        st.hands_off = 1;
        return bare;
    };
    let len = (end - start) as usize;
    let Some(block) = H2_BLOCK.get_ptr_mut(0) else {
        return bare;
    };
    let buf = unsafe { &mut (*block).buf };
    if len == 0 || len >= MAX_BLOCK_SCAN || !copy(ctx, payload + start as u64, len, buf) {
        count(stat::H2_UNSCANNED);
        st.hands_off = 1;
        return bare;
    }
    let scan = scan_block(block, len);
    if !scan.complete {
        count(stat::H2_UNSCANNED);
        st.hands_off = 1;
        return bare;
    }
    if scan.indexes_traceparent {
        count(stat::H2_APP_INDEXED);
        st.hands_off = 1;
        return Outcome::Own;
    }
    if scan.indexes_tracestate {
        st.indexed_tracestate = 1;
    }
    if scan.traceparent {
        count(stat::H2_OWN_TRACEPARENT);
        return Outcome::Own;
    }
    if !new_request {
        return Outcome::Other;
    }
    if h.len + TRACEPARENT_FIELD as u32 > h2::DEFAULT_MAX_FRAME {
        count(stat::H2_TOO_LONG);
        return bare;
    }
    let own_tracestate = scan.tracestate || st.indexed_tracestate != 0;
    let n = inject(ctx, off, h, payload + end as u64, own_tracestate);
    if n > 0 {
        count(stat::H2_INJECTED);
        Outcome::Injected(n)
    } else {
        count(stat::H2_FAILED);
        bare
    }
}

/// `h2::scan_block` over the block in `H2_BLOCK`, one step per `bpf_loop`
/// iteration.
fn scan_block(block: *mut Block, len: usize) -> BlockScan {
    unsafe { (*block).walk = Walk::new(len) };
    unsafe {
        bpf_loop(
            MAX_BLOCK_FIELDS + 1,
            walk_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: written by `walk_step` through a pointer the compiler cannot see.
    unsafe { core::ptr::read_volatile(&(*block).walk.out) }
}

/// One representation of the block; returns 1 to stop the loop.
extern "C" fn walk_step(_k: u64, _ctx: *mut c_void) -> i64 {
    let Some(block) = H2_BLOCK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU scratch of the program that started the loop.
    let b = unsafe { &mut *block };
    let buf = &b.buf;
    if b.walk.step(&|i| buf[i & BLOCK_MASK]) {
        0
    } else {
        1
    }
}

/// Inserts a new CLIENT span's fields at `at` (the end of the block of the
/// frame at `frame_at`): the `tracestate` it carries unless the request
/// has its own (`own_tracestate`) or the frame has no room for it, then
/// `traceparent`, last, where the next hop's kernel looks for it; and
/// grows the frame's length. Returns the bytes inserted, or 0 with the
/// message exactly as it was.
fn inject(
    ctx: &SkMsgContext,
    frame_at: u64,
    h: &FrameHeader,
    at: u64,
    own_tracestate: bool,
) -> u32 {
    let Some(block) = H2_BLOCK.get_ptr_mut(0) else {
        return 0;
    };
    let field = unsafe { &mut (*block).field };
    let mut tctx = context::client_request();
    tctx.flags |= ctxflag::INJECTED;
    let carries = tctx.flags & (ctxflag::TRACESTATE | ctxflag::SAMPLER_TH) != 0;
    let room = h2::DEFAULT_MAX_FRAME - TRACEPARENT_FIELD as u32 - h.len;
    let state_len = if carries && own_tracestate {
        count(stat::TRACESTATE_OWN);
        tctx.flags &= !(ctxflag::TRACESTATE | ctxflag::SAMPLER_TH);
        0
    } else {
        carry::field(&mut tctx, room)
    };
    context::format_h2_field(&tctx, field);
    let n = TRACEPARENT_FIELD as u32 + state_len;
    if ctx.push_data(at as u32, n, 0).is_err() {
        return 0;
    }
    let len = h.len + n;
    let len_bytes = [(len >> 16) as u8, (len >> 8) as u8, len as u8];
    let written = (state_len == 0 || carry::write(ctx, at as u32, state_len))
        && write(ctx, at + state_len as u64, field)
        && write(ctx, frame_at, &len_bytes);
    if !written {
        // Put the message back exactly as the application sent it.
        let _ = ctx.pop_data(at as u32, n, 0);
        return 0;
    }
    if state_len > 0 {
        count(stat::TRACESTATE_INJECTED);
    }
    context::emit(role::CONNECTED, 0, now(), &tctx, h.stream);
    n
}

/// Copies `N` bytes at `at` of the message into `out`.
#[inline(always)]
pub fn read<const N: usize>(ctx: &SkMsgContext, at: u64, out: &mut [u8; N]) -> bool {
    let at = at as u32;
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + N as u32, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + N > ctx.data_end() {
        return false;
    }
    unsafe { bpf_probe_read_kernel(out.as_mut_ptr().cast(), N as u32, data as *const _) == 0 }
}

/// Copies `len` (below `MAX_BLOCK_SCAN`) bytes at `at` into `buf`.
fn copy(ctx: &SkMsgContext, at: u64, len: usize, buf: &mut [u8; BLOCK_BUF]) -> bool {
    let at = at as u32;
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + len as u32, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + len > ctx.data_end() {
        return false;
    }
    let n = (len & (MAX_BLOCK_SCAN - 1)) as u32;
    unsafe { bpf_probe_read_kernel(buf.as_mut_ptr().cast(), n, data as *const _) == 0 }
}

/// Writes `bytes` at `at` of the message.
#[inline(always)]
fn write<const N: usize>(ctx: &SkMsgContext, at: u64, bytes: &[u8; N]) -> bool {
    let at = at as u32;
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + N as u32, 0) } != 0 {
        return false;
    }
    let data = ctx.data();
    if data + N > ctx.data_end() {
        return false;
    }
    let dst = data as *mut u8;
    let mut k = 0;
    while k < N {
        unsafe { *dst.add(k) = bytes[k] };
        k += 1;
    }
    true
}
