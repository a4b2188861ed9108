//! Plaintext of Go's `crypto/tls`, from uprobes on `(*tls.Conn).Read` and
//! `(*tls.Conn).Write` in Go executables (amd64, Go ≥ 1.17).
//!
//! Go cannot take uretprobes: the return trampoline replaces a return
//! address on a goroutine stack, which the runtime copies when the stack
//! grows and unwinds for tracebacks. So the agent puts `go_tls_exit` on
//! every RET instruction of the two functions instead.
//!
//! Go's register ABI (ABIInternal): arguments and results in RAX, RBX,
//! RCX, RDI, ...; the current goroutine `g` in R14 throughout. A call is
//! keyed by (process, goroutine), not by thread: a goroutine blocked in
//! `Read` resumes on whichever thread the scheduler picks.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use clew_common::{
    gotls::{CONN_IFACE_DATA, NETFD_SYSFD, TCPCONN_FD},
    stat, MAX_INFLIGHT,
};

use crate::{maps::count, observe, select::current_selected, tls};

#[repr(C)]
#[derive(Clone, Copy)]
struct GoCallKey {
    tgid: u32,
    _pad: u32,
    g: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GoCall {
    buf: u64,
    fd: u32,
    write: u8,
    _pad: [u8; 3],
}

/// Calls in progress by (process, goroutine). LRU: a goroutine that never
/// returns (killed process, a Read blocked for good) is evicted, and a
/// reused `g` simply overwrites its entry.
#[map]
static GO_TLS_CALLS: LruHashMap<GoCallKey, GoCall> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, false)
}

#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, true)
}

#[inline(always)]
fn enter(ctx: &ProbeContext, write: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The probes fire in every process running the executable.
    if !current_selected(tgid) {
        return 0;
    }
    // SAFETY: a uprobe's context is the task's saved user registers.
    let regs = unsafe { &*ctx.regs };
    let (conn, buf, g) = (regs.rax, regs.rbx, regs.r14);
    let Some(fd) = socket_fd(conn) else {
        count(stat::TLS_UNBOUND);
        return 0;
    };
    // The socket's own bytes are ciphertext from now on.
    tls::claim(tgid, fd, true);
    if write {
        if let Some(p) = tls::request_proto(tgid, Some(fd)) {
            observe::tls_write(p, pid_tgid, buf);
        }
    }
    let key = GoCallKey { tgid, _pad: 0, g };
    let call = GoCall {
        buf,
        fd,
        write: write as u8,
        _pad: [0; 3],
    };
    let _ = GO_TLS_CALLS.insert(&key, &call, 0);
    0
}

/// The fd of the socket under a `*tls.Conn` (see `clew_common::gotls`).
#[inline(always)]
fn socket_fd(conn: u64) -> Option<u32> {
    let tcp = unsafe { bpf_probe_read_user((conn + CONN_IFACE_DATA) as *const u64) }.ok()?;
    let netfd = unsafe { bpf_probe_read_user((tcp + TCPCONN_FD) as *const u64) }.ok()?;
    let fd = unsafe { bpf_probe_read_user((netfd + NETFD_SYSFD) as *const i64) }.ok()?;
    u32::try_from(fd).ok()
}

/// On each RET of `Read` and `Write`: `n int` is in RAX.
#[uprobe]
pub fn go_tls_exit(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let regs = unsafe { &*ctx.regs };
    let key = GoCallKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        g: regs.r14,
    };
    let Some(call) = (unsafe { GO_TLS_CALLS.get(&key) }).copied() else {
        return 0;
    };
    let _ = GO_TLS_CALLS.remove(&key);
    let n = regs.rax as i64;
    if n > 0 {
        tls::emit_plaintext(&ctx, pid_tgid, call.fd, call.write != 0, call.buf, n as u64);
    }
    0
}
