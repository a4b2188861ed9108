//! Go: the request a goroutine serves, since goroutines (not threads) own
//! requests in Go.
//!
//! The goroutine running on a thread is the `g` pointer Go keeps in the
//! thread's TLS, at a fixed offset below the fs base on amd64 (-8 in every
//! executable whose only TLS variable is Go's own; the agent checks the
//! executable's PT_TLS segment and hands the offset over per process). The
//! fs base is `task_struct->thread.fsbase`, at an offset the agent reads
//! from the kernel's BTF.
//!
//! `net/http`'s client writes a request from its connection's `writeLoop`
//! goroutine, not from the handler that made the call. Two uprobes bridge
//! that hand-off exactly: `(*persistConn).roundTrip` runs on the calling
//! goroutine and notes which goroutine sends that `*Request`;
//! `(*Request).write` runs on the writer, which then works for the caller
//! until it writes its next request.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_get_current_task,
    },
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use clew_common::MAX_INFLIGHT;

use crate::select::current_selected;

/// Offset of `thread.fsbase` in `task_struct`; 0 when the kernel's BTF did
/// not say (Go processes are then counted per process).
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u32 = 0;

/// A goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Goroutine {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// The goroutine running on the current thread, given where `g` sits
/// relative to the fs base.
#[inline(always)]
pub fn current(g_offset: i64) -> Option<u64> {
    let off = unsafe { core::ptr::read_volatile(&TASK_FSBASE_OFFSET) };
    if off == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: probe reads; a wrong address fails the helper, nothing more.
    let fsbase: u64 = unsafe { bpf_probe_read_kernel((task + off as u64) as *const u64) }.ok()?;
    let g: u64 =
        unsafe { bpf_probe_read_user(fsbase.wrapping_add(g_offset as u64) as *const u64) }.ok()?;
    (g != 0).then_some(g)
}

/// `*Request` → the goroutine whose call it is, from `roundTrip` until the
/// writer picks it up. Eviction: LRU (a request that was never written, a
/// reused address simply overwrites).
#[map]
static CALLERS: LruHashMap<Request, Goroutine> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Writer goroutine → the goroutine it writes a request for. Overwritten
/// by the writer's next request. Eviction: LRU.
#[map]
static WORKS_FOR: LruHashMap<Goroutine, Goroutine> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    tgid: u32,
    _pad: u32,
    ptr: u64,
}

/// The goroutine whose request `g` is writing, if it writes one; else `g`.
#[inline(always)]
pub fn owner(me: Goroutine) -> Goroutine {
    match unsafe { WORKS_FOR.get(&me) } {
        Some(o) => *o,
        None => me,
    }
}

/// The probed process, if selected (the probes fire in every process
/// running the executable), and its registers.
#[inline(always)]
fn selected(ctx: &ProbeContext) -> Option<(u32, &pt_regs)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a uprobe's context is the task's saved user registers.
    current_selected(tgid).then(|| (tgid, unsafe { &*ctx.regs }))
}

/// `net/http.(*persistConn).roundTrip(pc, req *transportRequest)`: RBX is
/// `req`, whose first field is the embedded `*Request`; R14 is the caller.
#[uprobe]
pub fn go_http_round_trip(ctx: ProbeContext) -> u32 {
    let Some((tgid, regs)) = selected(&ctx) else {
        return 0;
    };
    let Ok(ptr) = (unsafe { bpf_probe_read_user(regs.rbx as *const u64) }) else {
        return 0;
    };
    let req = Request { tgid, _pad: 0, ptr };
    let caller = Goroutine {
        tgid,
        _pad: 0,
        g: regs.r14,
    };
    let _ = CALLERS.insert(&req, &caller, 0);
    0
}

/// `net/http.(*Request).write(r, ...)`: RAX is `r`, R14 the writer.
#[uprobe]
pub fn go_http_request_write(ctx: ProbeContext) -> u32 {
    let Some((tgid, regs)) = selected(&ctx) else {
        return 0;
    };
    let req = Request {
        tgid,
        _pad: 0,
        ptr: regs.rax,
    };
    let writer = Goroutine {
        tgid,
        _pad: 0,
        g: regs.r14,
    };
    match unsafe { CALLERS.get(&req) }.copied() {
        Some(caller) => {
            let _ = CALLERS.remove(&req);
            let _ = WORKS_FOR.insert(&writer, &caller, 0);
        }
        // A request no roundTrip announced (another client): the writer
        // works for nobody in particular.
        None => {
            let _ = WORKS_FOR.remove(&writer);
        }
    }
    0
}
