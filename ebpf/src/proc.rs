//! Process lifecycle: children of explicitly selected processes are
//! selected too; exec and exit are reported so userspace can select by
//! executable name and drop per-process state.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use clew_common::{kind, ProcEvent};

use crate::{
    context,
    maps::{count, fork_child_pid_offset, inflight_forget, now, EVENTS, PIDS},
};

fn emit(kind: u32, tgid: u32) {
    let ev = ProcEvent {
        kind,
        tgid,
        ts_ns: now(),
    };
    if EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
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
pub fn proc_exec(_ctx: TracePointContext) -> u32 {
    emit(kind::PROC_EXEC, (bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let _ = PIDS.remove(&tid);
    inflight_forget(pid_tgid);
    context::thread_exit(tid);
    if tid == (pid_tgid >> 32) as u32 {
        emit(kind::PROC_EXIT, tid);
    }
    0
}
