//! Go: a goroutine started while its parent serves a request works for
//! that request (fan-out handlers: `go func() { client.Do(...) }()`),
//! until the parent has answered it.
//!
//! `go` statements run `runtime.newproc`, whose closure (on the system
//! stack, so on one thread, without preemption) calls
//! `newproc1(fn, callergp, ...)` and then `runqput(pp, newg, ...)`. Probes
//! sit on those two CALL instructions, which the kernel emulates rather
//! than single-steps (≈1.5 µs per hit here, against ≈15 µs for a probe on
//! a function's first instruction): the first notes the parent per thread,
//! the second records the child.
//!
//! A `g` is never freed, only put on the runtime's free list (`gfput`) and
//! reused by `newproc1`, which other callers than `newproc` use as well
//! (coroutines, debugger calls). A third probe, on `gfput`'s call in the
//! goroutine exit path, forgets a dead goroutine's parent, so a reused `g`
//! never inherits one; the child probe overwrites (or removes) the entry of
//! every goroutine `newproc` starts anyway.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use clew_common::MAX_INFLIGHT;

use crate::{context, goroutine::Goroutine, select::current_selected};

/// Where a goroutine was started: its ancestor's executor goroutine and the
/// span of the request that one served then.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartedIn {
    pub g: u64,
    pub span: [u8; 8],
}

/// Thread → the goroutine whose `go` statement it runs, from the `newproc1`
/// call to the `runqput` call right after. Eviction: LRU (a thread gone in
/// between; the next `go` statement on the thread overwrites).
#[map]
static STARTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Goroutine → where it was started, for goroutines started while their
/// parent (or an ancestor) served a request. Eviction: removed when the
/// goroutine exits (`gfput`); LRU covers the rest, costing nesting only.
#[map]
static STARTED_IN: LruHashMap<Goroutine, StartedIn> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[inline(always)]
pub fn started_in(g: &Goroutine) -> Option<StartedIn> {
    unsafe { STARTED_IN.get(g) }.copied()
}

/// Goroutine `rbx` of the probed process, if it is selected.
#[inline(always)]
fn rbx_goroutine(ctx: &ProbeContext) -> Option<(u64, Goroutine)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !current_selected(tgid) {
        return None;
    }
    // SAFETY: a uprobe's context is the task's saved user registers.
    let g = unsafe { (*ctx.regs).rbx };
    Some((pid_tgid, Goroutine { tgid, _pad: 0, g }))
}

/// The CALL of `newproc1(fn, callergp, ...)` in `newproc`'s closure: RBX
/// is the goroutine running the `go` statement.
#[uprobe]
pub fn go_spawn_parent(ctx: ProbeContext) -> u32 {
    if let Some((thread, parent)) = rbx_goroutine(&ctx) {
        let _ = STARTING.insert(&thread, &parent.g, 0);
    }
    0
}

/// The CALL of `runqput(pp, newg, ...)` right after: RBX is the new
/// goroutine.
#[uprobe]
pub fn go_spawn_child(ctx: ProbeContext) -> u32 {
    let Some((thread, child)) = rbx_goroutine(&ctx) else {
        return 0;
    };
    let parent = unsafe { STARTING.get(&thread) }.copied();
    let _ = STARTING.remove(&thread);
    match parent.and_then(|g| context::request_of(child.tgid, g)) {
        Some(at) => {
            let _ = STARTED_IN.insert(&child, &at, 0);
        }
        None => {
            let _ = STARTED_IN.remove(&child);
        }
    }
    0
}

/// The CALL of `gfput(pp, gp)` as goroutine `gp` (RBX) exits.
#[uprobe]
pub fn go_g_free(ctx: ProbeContext) -> u32 {
    if let Some((_, g)) = rbx_goroutine(&ctx) {
        let _ = STARTED_IN.remove(&g);
    }
    0
}
