//! `tracestate` carried with a served request (W3C Trace Context): the
//! value an incoming HTTP/1 request brought is checked by the rules
//! userspace applies too (`clew_common::tracestate`) and held for the
//! executor serving it; each request that executor sends gets it, with
//! its CLIENT span's `traceparent`, as an HTTP/1 header line (`inject`) or
//! an HPACK field (`inject_h2`). A new trace the `probability` sampler
//! kept carries the sampler's `ot=th:…` member instead.
//!
//! Bounds: values of up to `tracestate::CARRY_BYTES` (512) bytes, held
//! for at most `MAX_CARRIED` executors at once (LRU). A value that breaks
//! the specification's rules, is longer, comes in two header lines or
//! does not end inside the scanned head is not carried (the `traceparent`
//! still goes in): the kernel writes a whole value or none.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::sk_msg_md,
    helpers::generated::{bpf_loop, bpf_msg_pull_data, bpf_probe_read_kernel},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::SkMsgContext,
};
use clew_common::{
    ctxflag, stat,
    tracestate::{self, Check, CARRY_BYTES, MAX_WRITTEN},
    TraceCtx, SCAN_BYTES,
};

use crate::{
    context::{self, Executor},
    head::{self, Head},
    inject::HEAD,
    maps::count,
};

/// Executors whose served request carries a `tracestate` at once.
const MAX_CARRIED: u32 = 4096;

/// `ot=th:{th}`, the `tracestate` of a new trace the `probability`
/// sampler kept, and its length (set by the agent; 0 for other samplers).
#[unsafe(no_mangle)]
static SAMPLE_TH_STATE: [u8; 24] = [0; 24];
#[unsafe(no_mangle)]
static SAMPLE_TH_LEN: u32 = 0;

#[repr(C)]
pub struct Carried {
    /// The SERVER span it came with: an executor's entry is only used for
    /// the request it was written for.
    span_id: [u8; 8],
    len: u32,
    _pad: u32,
    value: [u8; CARRY_BYTES],
}

/// By executor. Eviction: the executor's thread exiting, LRU; an entry
/// evicted while its request is open only means that request's calls go
/// without it (counted in `stat::TRACESTATE_DROPPED`).
#[map]
static TRACESTATES: LruHashMap<Executor, Carried> = LruHashMap::with_max_entries(MAX_CARRIED, 0);

/// A new entry is assembled here before it is inserted.
#[map]
static STAGING: PerCpuArray<Carried> = PerCpuArray::with_max_entries(1, 0);

/// The check of an incoming value, in map memory: too big for the stack,
/// and where `bpf_loop`'s callback finds it.
#[repr(C)]
struct Incoming {
    check: Check,
    /// The next byte of `HEAD` to look at, and the first past the scan.
    pos: u32,
    limit: u32,
    /// The value's line ended inside the scan.
    ended: u32,
}

#[map]
static INCOMING: PerCpuArray<Incoming> = PerCpuArray::with_max_entries(1, 0);

/// A line or field being written (a power of two, for masks).
const OUT_BYTES: usize = 1024;
const OUT_MASK: usize = OUT_BYTES - 1;
const _: () = assert!(MAX_WRITTEN < OUT_BYTES);

#[map]
static OUT: PerCpuArray<[u8; OUT_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// The valid `tracestate` of the request head scanned into `HEAD` (the
/// first `len` bytes): where its value lies there, without the optional
/// whitespace around it. Only for a request whose `traceparent` is valid.
pub fn incoming(h: &Head, len: u32) -> Option<(u32, u32)> {
    if h.found.tracestate == 0 {
        return None;
    }
    if h.found.tracestate_repeated != 0 {
        count(stat::TRACESTATE_DROPPED);
        return None;
    }
    let found = check(h, len);
    if found.is_none() {
        count(stat::TRACESTATE_DROPPED);
    }
    found
}

fn check(h: &Head, len: u32) -> Option<(u32, u32)> {
    let start = head::value_start(h, h.found.tracestate) as u32;
    let inc = INCOMING.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by this program alone until it returns.
    let inc = unsafe { &mut *inc };
    inc.check.reset();
    inc.pos = start;
    inc.limit = len;
    inc.ended = 0;
    unsafe {
        bpf_loop(
            SCAN_BYTES as u32,
            check_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: written by `check_step` through a pointer the compiler cannot see.
    let inc = unsafe { &mut *INCOMING.get_ptr_mut(0)? };
    if unsafe { core::ptr::read_volatile(&inc.ended) } == 0 || !inc.check.finish() {
        return None;
    }
    let (at, n) = inc.check.trimmed();
    (n as usize <= CARRY_BYTES).then_some((start + at, n))
}

/// One byte of the value; returns 1 to stop the loop.
extern "C" fn check_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let (Some(inc), Some(h)) = (INCOMING.get_ptr_mut(0), HEAD.get_ptr(0)) else {
        return 1;
    };
    // SAFETY: the per-CPU slots of the program that started the loop.
    let (inc, h) = unsafe { (&mut *inc, &*h) };
    if inc.pos >= inc.limit {
        // The line goes on past the scan.
        return 1;
    }
    let c = head::at(&h.buf, inc.pos as usize);
    if c == b'\r' || c == b'\n' {
        inc.ended = 1;
        return 1;
    }
    inc.pos += 1;
    if inc.check.step(c) {
        0
    } else {
        1
    }
}

/// Holds `n` bytes at `at` of `HEAD` as what `exec`'s SERVER span
/// `span_id` carries. False when they cannot be held.
pub fn hold(exec: &Executor, span_id: &[u8; 8], at: u32, n: u32) -> bool {
    let Some(h) = HEAD.get_ptr(0) else {
        return false;
    };
    let existing = TRACESTATES.get_ptr_mut(exec);
    let Some(entry) = existing.or_else(|| STAGING.get_ptr_mut(0)) else {
        return false;
    };
    // SAFETY: a map value (the executor's entry, or this CPU's staging slot).
    let e = unsafe { &mut *entry };
    // 1..=CARRY_BYTES, which `incoming` checked, in a form the verifier sees.
    let n = ((n.wrapping_sub(1)) & (CARRY_BYTES as u32 - 1)) + 1;
    let src = unsafe { (*h).buf.as_ptr().add(at as usize & (SCAN_BYTES - 1)) };
    if unsafe { bpf_probe_read_kernel(e.value.as_mut_ptr().cast(), n, src.cast()) } != 0 {
        return false;
    }
    e.span_id = *span_id;
    e.len = n;
    existing.is_some() || TRACESTATES.insert(exec, &*e, 0).is_ok()
}

/// Thread `exec` is gone.
pub fn forget(exec: &Executor) {
    let _ = TRACESTATES.remove(exec);
}

/// Where the `tracestate` a CLIENT span `ctx` carries is: its parent's
/// incoming value, or the sampler's `th`.
fn value(ctx: &TraceCtx) -> Option<(*const u8, u32)> {
    if ctx.flags & ctxflag::TRACESTATE != 0 {
        let found = unsafe { TRACESTATES.get(&context::caller()) }
            .filter(|e| e.span_id == ctx.parent_id)
            .map(|e| (e.value.as_ptr(), e.len));
        if found.is_none() {
            count(stat::TRACESTATE_DROPPED);
        }
        return found;
    }
    if ctx.flags & ctxflag::SAMPLER_TH != 0 {
        let n = unsafe { core::ptr::read_volatile(&SAMPLE_TH_LEN) };
        if n > 0 && n as usize <= SAMPLE_TH_STATE.len() {
            return Some((SAMPLE_TH_STATE.as_ptr(), n));
        }
    }
    None
}

/// Puts the `n`-byte value at `src` into the output buffer at `at`.
fn put_value(out: &mut [u8; OUT_BYTES], at: usize, src: *const u8, n: u32) -> bool {
    let n = ((n.wrapping_sub(1)) & (CARRY_BYTES as u32 - 1)) + 1;
    let dst = unsafe { out.as_mut_ptr().add(at & 15) };
    unsafe { bpf_probe_read_kernel(dst.cast(), n, src.cast()) == 0 }
}

/// The `tracestate` header line for a CLIENT span `ctx` about to be
/// injected over HTTP/1, ready in the output buffer: its length, or 0
/// when there is none to write (then `ctx` no longer says it carries one).
pub fn line(ctx: &mut TraceCtx) -> u32 {
    let Some((src, n)) = value(ctx) else {
        ctx.flags &= !(ctxflag::TRACESTATE | ctxflag::SAMPLER_TH);
        return 0;
    };
    let Some(out) = OUT.get_ptr_mut(0) else {
        return 0;
    };
    let out = unsafe { &mut *out };
    let p = tracestate::LINE_PREFIX;
    out[..p.len()].copy_from_slice(p);
    if !put_value(out, p.len(), src, n) {
        ctx.flags &= !(ctxflag::TRACESTATE | ctxflag::SAMPLER_TH);
        return 0;
    }
    let end = p.len() + n as usize;
    out[end & OUT_MASK] = b'\r';
    out[(end + 1) & OUT_MASK] = b'\n';
    tracestate::line_len(n as usize) as u32
}

/// The `tracestate` HPACK field for a CLIENT span `ctx` about to be
/// injected over HTTP/2, ready in the output buffer if it takes at most
/// `room` bytes: its length, or 0 when none is written (then `ctx` no
/// longer says it carries one).
pub fn field(ctx: &mut TraceCtx, room: u32) -> u32 {
    let n = value(ctx).and_then(|(src, n)| {
        let out = OUT.get_ptr_mut(0)?;
        let out = unsafe { &mut *out };
        let p = tracestate::FIELD_PREFIX;
        out[..p.len()].copy_from_slice(p);
        let mut length = [0u8; 3];
        let k = tracestate::hpack_length(n as usize, &mut length) & 3;
        let total = p.len() + k + n as usize;
        if total as u32 > room {
            count(stat::TRACESTATE_NO_ROOM);
            return None;
        }
        let mut j = 0;
        while j < 3 {
            if j < k {
                out[p.len() + j] = length[j];
            }
            j += 1;
        }
        put_value(out, p.len() + k, src, n).then_some(total as u32)
    });
    if n.is_none() {
        ctx.flags &= !(ctxflag::TRACESTATE | ctxflag::SAMPLER_TH);
    }
    n.unwrap_or(0)
}

/// The state of `put_step`, on the caller's stack.
#[repr(C)]
struct Put {
    msg: *mut sk_msg_md,
    len: u64,
    written: u64,
}

/// Writes the first `len` bytes of the output buffer at `at` of the
/// message (bytes pushed there for them).
pub fn write(ctx: &SkMsgContext, at: u32, len: u32) -> bool {
    if len == 0 || len as usize > MAX_WRITTEN {
        return false;
    }
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + len, 0) } != 0 {
        return false;
    }
    let mut p = Put {
        msg: ctx.msg,
        len: len as u64,
        written: 0,
    };
    unsafe {
        bpf_loop(
            len,
            put_step as *const () as *mut c_void,
            &mut p as *mut Put as *mut c_void,
            0,
        )
    };
    // SAFETY: written by `put_step` through a pointer the compiler cannot see.
    unsafe { core::ptr::read_volatile(&p.written) == len as u64 }
}

/// One byte; returns 1 to stop the loop. Byte by byte: one branch per
/// step keeps the verifier's work per call site small, where word writes
/// with a tail multiplied its states past its limit in the HTTP/2 walk.
extern "C" fn put_step(i: u64, p: *mut c_void) -> i64 {
    // SAFETY: `write`'s loop state, alive for the whole loop.
    let w = unsafe { &mut *(p as *mut Put) };
    let Some(out) = OUT.get_ptr(0) else {
        return 1;
    };
    let ctx = SkMsgContext::new(w.msg);
    let k = i as usize & OUT_MASK;
    let dst = ctx.data() + k;
    if dst + 1 > ctx.data_end() {
        return 1;
    }
    // SAFETY: `dst` lies inside the window checked above.
    unsafe { *(dst as *mut u8) = (*out)[k] };
    w.written += 1;
    0
}
