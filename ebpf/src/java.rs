//! Java: the request a Java thread serves, since with virtual threads (Java
//! 21+) Java threads, not OS threads, own requests: a virtual thread that
//! blocks leaves its carrier OS thread, which runs others, and resumes on
//! any carrier.
//!
//! HotSpot's compiled and JNI code on x86-64 keep the current `JavaThread*`
//! in R15, which is callee-saved, so at a socket call from a small JNI leaf
//! (`sun.nio.ch.SocketDispatcher`'s read0/write0) the task's saved user R15
//! is still that pointer. Every call checks that it is: the `JavaThread`'s
//! `OSThread` must name the calling thread. The mounted Java thread's id
//! is then read through `JavaThread::_vthread`. Offsets per process come
//! from the agent (`JAVA_THREADS`).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::LruHashMap,
};
use clew_common::{JavaThreadLayout, MAX_PIDS};

/// 1 where this kernel lets every program that asks for the executor read
/// the task's saved user registers (the agent's probe); with 0 the
/// verifier drops the helpers' calls, and JVMs count per process.
#[unsafe(no_mangle)]
static JAVA_REGS: u32 = 0;

/// By tgid, for processes marked `NEST_JAVA` in `NEST_BY_PROCESS`.
/// Eviction: removed with the process's `NEST_BY_PROCESS` entry (by the
/// agent at its exit or exec, by the kernel at its main thread's exit);
/// LRU.
#[map]
pub(crate) static JAVA_THREADS: LruHashMap<u32, JavaThreadLayout> =
    LruHashMap::with_max_entries(MAX_PIDS, 0);

/// The id of the Java thread running on the current thread of JVM `tgid`,
/// when its registers prove it (else the caller falls back to the whole
/// process: a carrier thread runs many virtual threads).
#[inline(never)]
pub(crate) fn current(tgid: u32) -> u64 {
    mounted(tgid).unwrap_or(0)
}

#[inline(always)]
fn mounted(tgid: u32) -> Option<u64> {
    // SAFETY: a load-time global, read by value.
    if unsafe { core::ptr::read_volatile(&JAVA_REGS) } == 0 {
        return None;
    }
    let l = unsafe { JAVA_THREADS.get(&tgid) }?;
    // SAFETY: the helpers return the current task and its saved user
    // registers (kernel memory the verifier types); every read below goes
    // through a probe-read helper, which fails on a bad address.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let thread: u64 = unsafe { bpf_probe_read_kernel(&raw const (*regs).r15) }.ok()?;
    let at = |base: u64, off: u32| base.wrapping_add(off as u64);
    let osthread: u64 =
        unsafe { bpf_probe_read_user(at(thread, l.osthread) as *const u64) }.ok()?;
    let os_tid: u32 = unsafe { bpf_probe_read_user(at(osthread, l.os_tid) as *const u32) }.ok()?;
    if os_tid != bpf_get_current_pid_tgid() as u32 {
        return None;
    }
    let slot: u64 = unsafe { bpf_probe_read_user(at(thread, l.vthread) as *const u64) }.ok()?;
    let object: u64 = unsafe { bpf_probe_read_user(slot as *const u64) }.ok()?;
    let id: u64 = unsafe { bpf_probe_read_user(at(object, l.java_tid) as *const u64) }.ok()?;
    Some(id)
}
