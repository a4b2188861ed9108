//! Minimal programs for `clew probe`, one per kernel mechanism Clew could
//! use: loading (and where harmless, attaching) each one is the test of
//! whether this kernel allows it. A separate object so that `clew run`
//! never carries a program that could write user memory. None of these
//! does any work; names come from `clew_common::probe`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{pt_regs, BPF_SOCK_OPS_WRITE_HDR_OPT_CB},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_load_hdr_opt, bpf_probe_write_user, bpf_reserve_hdr_opt,
            bpf_store_hdr_opt, bpf_task_pt_regs,
        },
    },
    macros::{fentry, fexit, kprobe, map, sk_msg, sock_ops, tracepoint, uprobe},
    maps::{RingBuf, SockHash},
    programs::{
        FEntryContext, FExitContext, ProbeContext, SkMsgContext, SockOpsContext, TracePointContext,
    },
};
use clew_common::probe::{FIRED_TRACEPOINT, FIRED_UPROBE};

#[map]
static PROBE_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

#[map]
static PROBE_SOCKS: SockHash<u32> = SockHash::with_max_entries(1, 0);

/// Set by the agent at load time.
#[unsafe(no_mangle)]
static PROBE_TGID: u32 = 0;

/// Reports `what` if the probing process is the caller.
#[inline(always)]
fn fired(what: u32) {
    // SAFETY: a load-time global, read by value.
    let tgid = unsafe { core::ptr::read_volatile(&PROBE_TGID) };
    if (bpf_get_current_pid_tgid() >> 32) as u32 == tgid {
        let _ = PROBE_EVENTS.output::<u32>(what, 0);
    }
}

/// Attached to `sys_enter_getpid`.
#[tracepoint]
pub fn probe_ringbuf(_ctx: TracePointContext) -> u32 {
    fired(FIRED_TRACEPOINT);
    0
}

/// Attached to libc's `getpid`, for the probing process only.
#[uprobe]
pub fn probe_uprobe(_ctx: ProbeContext) -> u32 {
    fired(FIRED_UPROBE);
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "do_sys_openat2")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[fexit(function = "do_sys_openat2")]
pub fn probe_fexit(_ctx: FExitContext) -> u32 {
    0
}

/// Loaded, never attached: whether the verifier accepts the helper is the
/// whole question (kernel lockdown refuses it).
#[tracepoint]
pub fn probe_write_user(_ctx: TracePointContext) -> u32 {
    let byte = 0u8;
    // SAFETY: never runs; a null destination would fault harmlessly anyway.
    unsafe { bpf_probe_write_user(core::ptr::null_mut(), (&byte as *const u8).cast(), 1) };
    0
}

#[sock_ops]
pub fn probe_sockops(_ctx: SockOpsContext) -> u32 {
    1
}

/// Uses the three header-option helpers (Linux ≥ 5.10): the verifier
/// refuses the program where they do not exist.
#[sock_ops]
pub fn probe_tcp_option(ctx: SockOpsContext) -> u32 {
    let mut option = [0u8; 4];
    // SAFETY: `ctx.ops` is the context the kernel passed; `option` is a
    // stack buffer of the length given.
    unsafe {
        if ctx.op() == BPF_SOCK_OPS_WRITE_HDR_OPT_CB {
            bpf_store_hdr_opt(ctx.ops, option.as_ptr().cast(), 4, 0);
        } else {
            bpf_reserve_hdr_opt(ctx.ops, 4, 0);
            bpf_load_hdr_opt(ctx.ops, option.as_mut_ptr().cast(), 4, 0);
        }
    }
    1
}

#[sk_msg]
pub fn probe_sk_msg(_ctx: SkMsgContext) -> u32 {
    1
}

/// Loads where an sk_msg program (base helpers only) may read the calling
/// task's saved user registers, as the JVM nesting does from every
/// program that asks which request a call is for.
#[sk_msg]
pub fn probe_task_regs(_ctx: SkMsgContext) -> u32 {
    // SAFETY: the helpers return the current task and its saved user
    // registers; the register is read through the probe-read helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let _ = unsafe { bpf_probe_read_kernel(&raw const (*regs).r15) };
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
