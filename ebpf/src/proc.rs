//! Process lifecycle: children of explicitly selected processes are
//! selected too; a program exec'd under an `--exe` name or path is selected
//! here, before it can fork; exec and exit are reported so userspace can
//! confirm selections and drop per-process state.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use clew_common::{exe, kind, procflag, select, ProcEvent};

use crate::{
    context,
    maps::{
        count, exec_filename_offset, fork_child_pid_offset, inflight_forget, now, quiet,
        select_mode, EVENTS, EXE_NAMES, EXE_PATHS, PIDS, URGENT,
    },
};

fn emit(kind: u32, tgid: u32, flags: u32, wake: u64) {
    let ev = ProcEvent {
        kind,
        tgid,
        ts_ns: now(),
        flags,
        _pad: 0,
    };
    if EVENTS.output::<ProcEvent>(&ev, wake).is_err() {
        count(clew_common::stat::RINGBUF_DROPS);
    }
}

#[tracepoint]
pub fn proc_fork(ctx: TracePointContext) -> u32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { PIDS.get(&parent) }.is_none() {
        return 0;
    }
    let off = fork_child_pid_offset() as usize;
    if off == 0 || off > 64 {
        return 0;
    }
    // Threads land here too; their entries go when the thread exits.
    // A variable offset into the context is refused by the verifier, so go
    // through the probe-read helper.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(off) }) else {
        return 0;
    };
    let _ = PIDS.insert(&(child as u32), &1, 0);
    0
}

#[tracepoint]
pub fn proc_exec(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut flags = 0;
    // NOEXIST: a process selected already (say, as a child) stays so, and
    // the flag tells userspace only about selections made here.
    if select_mode() == select::LISTED
        && exe_selected(&ctx)
        && PIDS.insert(&tgid, &1, BPF_NOEXIST as u64).is_ok()
    {
        flags = procflag::EXE_SELECTED;
    }
    // The agent reads the new program's facts while it surely runs.
    emit(kind::PROC_EXEC, tgid, flags, URGENT);
    0
}

/// Whether the program just exec'd matches an `--exe` selector: by comm
/// (set from the exec'd file's name, truncated as the keys are), or by the
/// path exactly as it was exec'd. Userspace re-checks against
/// /proc/PID/exe and undoes a wrong guess (a truncated name, a script).
#[inline(always)]
fn exe_selected(ctx: &TracePointContext) -> bool {
    if let Ok(comm) = bpf_get_current_comm() {
        if unsafe { EXE_NAMES.get(&comm) }.is_some() {
            return true;
        }
    }
    let off = exec_filename_offset() as usize;
    if off == 0 || off > 64 {
        return false;
    }
    // SAFETY: the offset comes from the tracepoint's format and was bounded
    // above; the helper reads through a probe, never a raw dereference.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(off) }) else {
        return false;
    };
    // __data_loc: the string's offset from the record's start in the low
    // 16 bits. The key must be zero past the string, so start from zeros.
    let mut path = [0u8; exe::PATH_LEN];
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    // SAFETY: a probe read of kernel memory, bounded by `path`'s length.
    if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut path) }.is_err() {
        return false;
    }
    unsafe { EXE_PATHS.get(&path) }.is_some()
}

#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let _ = PIDS.remove(&tid);
    inflight_forget(pid_tgid);
    context::thread_exit(pid_tgid);
    crate::tls::thread_exit(pid_tgid);
    if tid == (pid_tgid >> 32) as u32 {
        emit(
            kind::PROC_EXIT,
            tid,
            0,
            quiet(core::mem::size_of::<ProcEvent>()),
        );
    }
    0
}
