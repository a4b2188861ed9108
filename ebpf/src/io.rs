//! Reads and writes on tracked connections. The enter program remembers the
//! buffer arguments of a call on a socket in `CONNS`; the exit program, once
//! the kernel says how many bytes moved, copies a bounded prefix of them
//! (one record per buffer or iovec segment) into the ring buffer.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw},
    macros::tracepoint,
    programs::TracePointContext,
};
use clew_common::{dir, kind, nr, stat, ConnKey, DataHeader, SockAddr, MAX_CAPTURE, MAX_IOV};

use crate::{
    maps::{capture_limit, count, now, Inflight, CONNS, EVENTS, INFLIGHT, SCRATCH},
    tp,
};

/// Marks an `INFLIGHT` entry as belonging to these programs (not accept/connect).
pub const IO_MARK: u8 = 0xff;

#[tracepoint]
pub fn enter_io(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = tp::arg(&ctx, 0) as u32;
    let key = ConnKey { tgid: (pid_tgid >> 32) as u32, fd };
    let Some(info) = (unsafe { CONNS.get(&key) }) else {
        return 0;
    };
    let v = Inflight {
        nr: tp::nr(&ctx),
        conn_id: info.id,
        fd,
        role: IO_MARK,
        _pad: [0; 3],
        // read/write/send*/recv*: buffer; *v: iovec array; *msg: msghdr.
        a1: tp::arg(&ctx, 1),
        a2: tp::arg(&ctx, 2),
        peer: SockAddr::default(),
    };
    let _ = INFLIGHT.insert(&pid_tgid, &v, 0);
    0
}

#[tracepoint]
pub fn exit_io(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(v) = (unsafe { INFLIGHT.get(&pid_tgid) }).copied() else {
        return 0;
    };
    let _ = INFLIGHT.remove(&pid_tgid);
    if v.role != IO_MARK {
        return 0;
    }
    let ret = tp::ret(&ctx);
    if ret <= 0 {
        return 0;
    }
    let len = ret as u64;
    let ts = now();
    match v.nr {
        nr::READ | nr::RECVFROM => emit(&v, pid_tgid, ts, dir::INGRESS, v.a1, len),
        nr::WRITE | nr::SENDTO => emit(&v, pid_tgid, ts, dir::EGRESS, v.a1, len),
        nr::READV => emit_iov(&v, pid_tgid, ts, dir::INGRESS, v.a1, v.a2, len),
        nr::WRITEV => emit_iov(&v, pid_tgid, ts, dir::EGRESS, v.a1, v.a2, len),
        nr::RECVMSG | nr::SENDMSG => {
            // struct msghdr { name, namelen, iov, iovlen, ... }: the iovec
            // pointer and count sit at bytes 16 and 24 on 64-bit targets.
            let Ok(m) = (unsafe { bpf_probe_read_user((v.a1 + 16) as *const [u64; 2]) }) else {
                count(stat::READ_ERRORS);
                return 0;
            };
            let d = if v.nr == nr::RECVMSG { dir::INGRESS } else { dir::EGRESS };
            emit_iov(&v, pid_tgid, ts, d, m[0], m[1], len)
        }
        // sendfile moves file bytes the process never sees: account for
        // their length so the stream position stays right.
        nr::SENDFILE => emit(&v, pid_tgid, ts, dir::EGRESS, 0, len),
        _ => {}
    }
    0
}

#[inline(always)]
fn emit_iov(v: &Inflight, pid_tgid: u64, ts: u64, direction: u8, iov: u64, iovcnt: u64, len: u64) {
    let mut left = len;
    let mut i = 0u32;
    while i < MAX_IOV {
        if (i as u64) >= iovcnt || left == 0 {
            return;
        }
        let Ok(seg) = (unsafe { bpf_probe_read_user((iov + 16 * i as u64) as *const [u64; 2]) }) else {
            count(stat::READ_ERRORS);
            return;
        };
        let n = if seg[1] < left { seg[1] } else { left };
        emit(v, pid_tgid, ts, direction, seg[0], n);
        left -= n;
        i += 1;
    }
    if left > 0 {
        // More segments than we follow: keep the byte count honest.
        emit(v, pid_tgid, ts, direction, 0, left);
    }
}

/// Emits one data record of `len` bytes, copying at most the capture limit
/// from `buf` (nothing when `buf` is 0).
#[inline(always)]
fn emit(v: &Inflight, pid_tgid: u64, ts: u64, direction: u8, buf: u64, len: u64) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let s = unsafe { &mut *s };
    let limit = capture_limit() as u64;
    let mut want = if len < limit { len } else { limit };
    if buf == 0 {
        want = 0;
    }
    let n = want as usize;
    let n = if n > MAX_CAPTURE { MAX_CAPTURE } else { n };
    let mut captured = 0u32;
    if n > 0 {
        let rc = unsafe { read_user_raw(s.data.as_mut_ptr().cast(), n as u32, buf as *const _) };
        if rc == 0 {
            captured = n as u32;
        } else {
            count(stat::READ_ERRORS);
        }
    }
    s.hdr = DataHeader {
        kind: kind::DATA,
        direction,
        _pad: [0; 3],
        conn_id: v.conn_id,
        pid_tgid,
        ts_ns: ts,
        total: len as u32,
        captured,
        fd: v.fd,
        syscall: v.nr as u32,
    };
    let size = core::mem::size_of::<DataHeader>() + (captured as usize & (MAX_CAPTURE * 2 - 1));
    let size = if size > core::mem::size_of::<Scratch>() { core::mem::size_of::<Scratch>() } else { size };
    let bytes = unsafe { core::slice::from_raw_parts(s as *const Scratch as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count(stat::RINGBUF_DROPS);
    } else {
        count(stat::DATA_EVENTS);
    }
}

use crate::maps::Scratch;
