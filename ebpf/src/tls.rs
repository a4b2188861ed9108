//! Plaintext of TLS connections, from uprobes on the OpenSSL API
//! (`SSL_read`, `SSL_write` and their `_ex` forms, or the internal function
//! both forms call, which takes the `_ex` arguments: see the agent's
//! `tls::internal`), attached by the agent to every libssl (or executable
//! with OpenSSL inside) a selected process maps.
//!
//! The entry probe remembers the call's buffer; the return probe emits the
//! bytes the call really moved as a data record of the socket the `SSL`
//! object runs over, so the record carries the same connection id, and so
//! the same connection attributes, as plaintext traffic would. The
//! ciphertext at the socket is not captured.
//!
//! Which socket an `SSL` runs over (`TLS_FDS`) is learnt two ways:
//! - a socket BIO (nginx, curl, Python) does its I/O inside the call, so
//!   `exit_io` sees the fd while the call is in progress: certain, and it
//!   corrects any earlier guess;
//! - a memory BIO (Node.js) has the application move ciphertext itself: it
//!   reads a TLS socket, then hands the bytes to `SSL_read` on the same
//!   thread. The first call on an unbound `SSL` takes the socket this thread
//!   last read ciphertext from, if no other `SSL` has claimed it.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, ProgramArray},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use clew_common::{
    connstate, dataflag, dir, nr, proto, role, stat, ConnKey, Inflight, MAX_CONNS, MAX_INFLIGHT,
};

use crate::{
    io,
    maps::{count, may_have_conns, now, put, CONNS},
    observe::{self, Record},
    select::current_selected,
};

/// An SSL_read/SSL_write in progress on a thread (keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    ssl: u64,
    buf: u64,
    /// `size_t *` out-parameter of the `_ex` forms (0 for the int forms).
    out: u64,
    /// The socket the `SSL` runs over (when `bound`): as the entry found
    /// it, or as the call's own socket I/O set it (`bind_socket`). The
    /// return then needs no lookup of `TLS_FDS`.
    fd: u32,
    bound: u8,
    write: u8,
    ex: u8,
    /// 0 once the call returned: the entry stays, to be written over by
    /// the thread's next call (see `maps::put`).
    live: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    tgid: u32,
    _pad: u32,
    ssl: u64,
}

/// Eviction: `proc_exit` deletes a thread's entry when it exits; LRU
/// covers threads whose exit was missed.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// Thread `pid_tgid` exited: its entries can go.
pub fn thread_exit(pid_tgid: u64) {
    let _ = TLS_CALLS.remove(&pid_tgid);
    let _ = TLS_LAST_READ.remove(&pid_tgid);
}

/// The TLS socket each thread last read ciphertext from outside an SSL
/// call (memory BIOs), by pid_tgid.
#[map]
static TLS_LAST_READ: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// `SSL *` → the fd it reads and writes, per process. LRU-bounded, and
/// `SSL_free` removes an entry before its address can be reused.
#[map]
static TLS_FDS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Observers by protocol for the return probes (filled by the agent from
/// `clew_common::names::OBSERVERS`).
#[map]
static TLS_OBSERVERS: ProgramArray = ProgramArray::with_max_entries(proto::SLOTS, 0);

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, false, false)
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, false, true)
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, true, false)
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, true, true)
}

#[uprobe]
pub fn ssl_free_enter(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let _ = TLS_FDS.remove(&SslKey { tgid, _pad: 0, ssl });
    }
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, write: bool, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The probes fire in every process mapping the library. One with no
    // tracked connection has no socket whose plaintext could be reported:
    // it leaves on an array lookup, before the selection's hash lookup
    // and cgroup walk.
    let tgid = (pid_tgid >> 32) as u32;
    if !may_have_conns(tgid) || !current_selected(tgid) {
        return 0;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let key = SslKey { tgid, _pad: 0, ssl };
    let mut fd = unsafe { TLS_FDS.get(&key) }.copied();
    if fd.is_none() {
        if let Some(&last) = unsafe { TLS_LAST_READ.get(&pid_tgid) } {
            if claim(tgid, last, false) {
                let _ = TLS_FDS.insert(&key, &last, 0);
                fd = Some(last);
            }
        }
    }
    if write {
        if let Some(p) = request_proto(tgid, fd) {
            observe::tls_write(p, pid_tgid, buf);
        }
    }
    let call = TlsCall {
        ssl,
        buf,
        out: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        fd: fd.unwrap_or(0),
        bound: fd.is_some() as u8,
        write: write as u8,
        ex: ex as u8,
        live: 1,
    };
    put(&TLS_CALLS, &pid_tgid, &call);
    0
}

/// The SSL call thread `pid_tgid` is in, if any.
#[inline(always)]
fn in_call(pid_tgid: u64) -> Option<*mut TlsCall> {
    let call = TLS_CALLS.get_ptr_mut(&pid_tgid)?;
    (unsafe { (*call).live } != 0).then_some(call)
}

/// The protocol of the plaintext an `SSL` writes, as far as its socket
/// is known, when the write may carry a request: `None` on a connection
/// the process accepted, whose writes are responses (the observers need
/// not read the buffer to find out).
#[inline(always)]
pub fn request_proto(tgid: u32, fd: Option<u32>) -> Option<u8> {
    let Some(info) = fd.and_then(|fd| unsafe { CONNS.get(&ConnKey { tgid, fd }) }) else {
        return Some(proto::UNKNOWN);
    };
    (info.role != role::ACCEPTED).then(|| connstate::proto(info.state))
}

#[uretprobe]
pub fn ssl_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = in_call(pid_tgid) else {
        return 0;
    };
    let call = unsafe {
        (*call).live = 0;
        *call
    };
    // Both forms return an int: > 0 bytes, or > 0 (1) with the count in
    // *out (the internal functions behind the `_ex` forms, too).
    let rc = ctx.ret::<u64>() as i32;
    let len = if call.ex != 0 {
        if rc <= 0 {
            return 0;
        }
        match unsafe { bpf_probe_read_user(call.out as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(stat::READ_ERRORS);
                return 0;
            }
        }
    } else if rc > 0 {
        rc as u64
    } else {
        return 0;
    };
    if call.bound == 0 {
        count(stat::TLS_UNBOUND);
        return 0;
    }
    emit_plaintext(&ctx, pid_tgid, call.fd, call.write != 0, call.buf, len);
    0
}

/// Emits `len` bytes of plaintext at `buf` that a TLS call moved over
/// socket `fd` of the current process, as a data record of that socket's
/// connection, and hands the call to its protocol's observer. The
/// plaintext's protocol is learnt from its first bytes, as `exit_io` does
/// for plaintext sockets.
#[inline(always)]
pub fn emit_plaintext<C: EbpfContext>(
    ctx: &C,
    pid_tgid: u64,
    fd: u32,
    write: bool,
    buf: u64,
    len: u64,
) {
    let tgid = (pid_tgid >> 32) as u32;
    let key = ConnKey { tgid, fd };
    let Some(info) = CONNS.get_ptr_mut(&key) else {
        count(stat::TLS_UNBOUND);
        return;
    };
    let info = unsafe { &mut *info };
    let (nr, direction) = if write {
        (nr::WRITE, dir::EGRESS)
    } else {
        (nr::READ, dir::INGRESS)
    };
    let mut v = Inflight {
        nr,
        conn_id: info.id,
        fd,
        role: clew_common::IO_MARK,
        conn_role: info.role,
        conn_state: info.state,
        data_flags: dataflag::TLS,
        a1: buf,
        a2: 0,
        peer: crate::zero::zeroed(),
    };
    let ts = now();
    if connstate::proto(v.conn_state) == proto::UNKNOWN {
        let p = io::classify_at(buf, len, info.role, direction);
        info.state = connstate::with_proto(info.state, p);
        v.conn_state = info.state;
    }
    let record = match io::emit_call(&v, pid_tgid, ts, direction, io::Bytes::Buf(buf), len) {
        Some(_) => Record::Copied,
        None => Record::Gone,
    };
    observe::dispatch(ctx, &TLS_OBSERVERS, &v, direction, buf, len, ts, record);
}

/// Called by `exit_io` for every read/write on a tracked socket whose
/// state is `conn_state`: inside an SSL call, the socket is that `SSL`'s
/// transport. Returns whether the call's bytes are ciphertext (and so
/// must not be captured).
#[inline(always)]
pub fn bind_socket(pid_tgid: u64, fd: u32, conn_state: u8) -> bool {
    let Some(call) = in_call(pid_tgid) else {
        return false;
    };
    let call = unsafe { &mut *call };
    // Every call after the first on a connection: the binding is already
    // there, and rewriting it and the socket's state costs more than
    // knowing so.
    if conn_state & connstate::SSL_BOUND != 0 && call.bound != 0 && call.fd == fd {
        return true;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let _ = TLS_FDS.insert(&key, &fd, 0);
    claim(tgid, fd, true);
    (call.fd, call.bound) = (fd, 1);
    true
}

/// Marks a socket as TLS with an `SSL` bound to it. Unless `force`, only
/// a TLS socket no `SSL` has claimed yet qualifies.
#[inline(always)]
pub fn claim(tgid: u32, fd: u32, force: bool) -> bool {
    let Some(info) = CONNS.get_ptr_mut(&ConnKey { tgid, fd }) else {
        return false;
    };
    let info = unsafe { &mut *info };
    if !force && (info.state & connstate::TLS == 0 || info.state & connstate::SSL_BOUND != 0) {
        return false;
    }
    info.state |= connstate::TLS | connstate::STARTED | connstate::SSL_BOUND;
    true
}

/// Ciphertext moved outside any SSL call: remember reads on sockets no
/// `SSL` has claimed yet, for memory BIOs.
#[inline(always)]
pub fn ciphertext(pid_tgid: u64, v: &Inflight, ret: i64) {
    if ret > 0
        && v.conn_state & connstate::SSL_BOUND == 0
        && matches!(v.nr, nr::READ | nr::READV | nr::RECVFROM | nr::RECVMSG)
    {
        put(&TLS_LAST_READ, &pid_tgid, &v.fd);
    }
}
