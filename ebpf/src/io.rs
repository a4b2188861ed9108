//! Reads and writes on tracked connections. The enter program remembers the
//! buffer arguments of a call on a socket in `CONNS`; the exit program, once
//! the kernel says how many bytes moved, copies a bounded prefix of them
//! (one record per buffer or iovec segment) into the ring buffer.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::bpf_probe_read_user as read_user_raw,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::TracePointContext,
};
use clew_common::{
    connstate, dir, kind, nr, role, stat, ConnKey, DataHeader, SockAddr, IO_MARK, MAX_CAPTURE,
    MAX_IOV, SCAN_BYTES,
};

use crate::{
    context, head,
    inject::HEAD,
    maps::{
        capture_limit, count, inflight_put, inflight_take, now, Inflight, Scratch, CONNS, EVENTS,
        SCRATCH,
    },
    tcp_option, tls, tp,
};

const MSG_PEEK: u64 = 2;

#[tracepoint]
pub fn enter_io(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = tp::arg(&ctx, 0) as u32;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    let Some(info) = (unsafe { CONNS.get(&key) }) else {
        return 0;
    };
    // read/write/send*/recv*: buffer; *v: iovec array; *msg: msghdr.
    let (a1, a2) = (tp::arg(&ctx, 1), tp::arg(&ctx, 2));
    let nr = tp::nr(&ctx);
    // A peek is read again for real: capturing it would duplicate bytes.
    // recvfrom's flags come through the probe-read helper: a direct load
    // past read()'s three arguments makes attaching to sys_enter_read fail.
    let flags = if nr == nr::RECVFROM {
        unsafe { ctx.read_at::<u64>(tp::ARGS + 24) }.unwrap_or(0)
    } else if nr == nr::RECVMSG {
        a2
    } else {
        0
    };
    if flags & MSG_PEEK != 0 {
        return 0;
    }
    let v = Inflight {
        nr,
        conn_id: info.id,
        fd,
        role: IO_MARK,
        conn_role: info.role,
        conn_state: info.state,
        data_flags: 0,
        a1,
        a2,
        peer: SockAddr::default(),
    };
    inflight_put(pid_tgid, &v);
    0
}

#[tracepoint]
pub fn exit_io(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(v) = inflight_take(pid_tgid) else {
        return 0;
    };
    // The nr check drops an entry that outlived its call (one seeded by
    // the agent for a read that returned before the entry was written).
    if v.role != IO_MARK || v.nr != tp::nr(&ctx) {
        return 0;
    }
    // Ciphertext: the TLS probes report this connection's plaintext.
    if tls::bind_socket(pid_tgid, v.fd) {
        return 0;
    }
    let ret = tp::ret(&ctx);
    if v.conn_state & connstate::TLS != 0 {
        tls::ciphertext(pid_tgid, &v, ret);
        return 0;
    }
    if ret <= 0 {
        return 0;
    }
    let len = ret as u64;
    if v.conn_state & connstate::STARTED == 0 && starts_tls(&v, pid_tgid, len) {
        tls::ciphertext(pid_tgid, &v, ret);
        return 0;
    }
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
            let d = if v.nr == nr::RECVMSG {
                dir::INGRESS
            } else {
                dir::EGRESS
            };
            emit_iov(&v, pid_tgid, ts, d, m[0], m[1], len)
        }
        // sendfile moves file bytes the process never sees: account for
        // their length so the stream position stays right.
        nr::SENDFILE => emit(&v, pid_tgid, ts, dir::EGRESS, 0, len),
        _ => {}
    }
    if v.conn_role == role::CONNECTED {
        return 0;
    }
    // Only the first bytes of a call can start a request or a response:
    // anything else (a body, a sendfile) is settled by one short read.
    let Some((buf, n)) = first_segment(&v, len) else {
        return 0;
    };
    if direction(v.nr) == dir::EGRESS {
        if starts_response(buf) {
            context::server_response();
        }
    } else if may_start_request(buf, n) && stage_observe(&v, len, ts) {
        // Request scanning lives in its own program so the verifier checks
        // it once, not once per path through the code above.
        unsafe { TAIL.tail_call(&ctx, clew_common::names::tail::OBSERVE_REQUEST) };
    }
    0
}

#[inline(always)]
fn direction(nr: i64) -> u8 {
    match nr {
        nr::READ | nr::RECVFROM | nr::READV | nr::RECVMSG => dir::INGRESS,
        _ => dir::EGRESS,
    }
}

/// Whether the bytes at `buf` start an HTTP/1 response.
#[inline(always)]
fn starts_response(buf: u64) -> bool {
    matches!(unsafe { bpf_probe_read_user(buf as *const [u8; 5]) }, Ok(b) if b == *b"HTTP/")
}

/// Whether `n` bytes at `buf` can start a request head worth scanning.
#[inline(always)]
fn may_start_request(buf: u64, n: u64) -> bool {
    n >= MIN_REQUEST
        && matches!(unsafe { bpf_probe_read_user(buf as *const u64) },
                    Ok(w) if head::is_method_word(u64::from_le(w)))
}

/// Shorter reads are not scanned as a request head.
const MIN_REQUEST: u64 = 16;

/// The first bytes of a connection decide whether it carries TLS: a TLS
/// record header (content type 20–23, version 3.x) cannot start HTTP/1,
/// HTTP/2 or a Kafka request. A connection met mid-stream starts with an
/// application-data record (23) at a read boundary in practice.
#[inline(always)]
fn starts_tls(v: &Inflight, pid_tgid: u64, len: u64) -> bool {
    let Some((buf, n)) = first_segment(v, len) else {
        return false;
    };
    // Too short to tell (yet): decide on a later call.
    if n < 3 {
        return false;
    }
    let Ok(b) = (unsafe { bpf_probe_read_user(buf as *const [u8; 3]) }) else {
        return false;
    };
    let is_tls = (20..=23).contains(&b[0]) && b[1] == 3 && b[2] <= 4;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: v.fd,
    };
    if let Some(info) = CONNS.get_ptr_mut(&key) {
        let tls = if is_tls { connstate::TLS } else { 0 };
        unsafe { (*info).state |= connstate::STARTED | tls };
    }
    is_tls
}

/// Hands a call's first buffer to `observe_request`/`observe_tls`, which
/// the caller then tail-calls.
#[inline(always)]
pub fn stage_observe(v: &Inflight, len: u64, ts: u64) -> bool {
    match OBSERVE.get_ptr_mut(0) {
        Some(args) => {
            unsafe { *args = Observe { v: *v, len, ts } };
            true
        }
        None => false,
    }
}

/// What `exit_io` hands to `observe_request`.
#[derive(Clone, Copy)]
pub struct Observe {
    v: Inflight,
    len: u64,
    ts: u64,
}

#[map]
static OBSERVE: PerCpuArray<Observe> = PerCpuArray::with_max_entries(1, 0);

/// Tail-call targets (filled by the agent): index 0 is `observe_request`.
#[map]
static TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[tracepoint]
pub fn observe_request(_ctx: TracePointContext) -> u32 {
    observe_staged();
    0
}

/// The body of `observe_request` and `observe_tls`.
#[inline(always)]
pub fn observe_staged() {
    let Some(args) = OBSERVE.get(0).copied() else {
        return;
    };
    let Some((buf, n)) = first_segment(&args.v, args.len) else {
        return;
    };
    observe_server(&args.v, direction(args.v.nr), buf, n, args.ts);
}

#[inline(always)]
fn emit_iov(v: &Inflight, pid_tgid: u64, ts: u64, direction: u8, iov: u64, iovcnt: u64, len: u64) {
    let mut left = len;
    let mut i = 0u32;
    while i < MAX_IOV {
        if (i as u64) >= iovcnt || left == 0 {
            return;
        }
        let Ok(seg) = (unsafe { bpf_probe_read_user((iov + 16 * i as u64) as *const [u64; 2]) })
        else {
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

/// The first buffer of a call and the bytes it holds (None for sendfile).
#[inline(always)]
fn first_segment(v: &Inflight, len: u64) -> Option<(u64, u64)> {
    let iov = match v.nr {
        nr::READ | nr::RECVFROM | nr::WRITE | nr::SENDTO => return Some((v.a1, len)),
        nr::READV | nr::WRITEV => v.a1,
        nr::RECVMSG | nr::SENDMSG => {
            unsafe { bpf_probe_read_user((v.a1 + 16) as *const u64) }.ok()?
        }
        _ => return None,
    };
    let seg = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((seg[0], if seg[1] < len { seg[1] } else { len }))
}

/// Keeps the kernel's idea of which request each thread serves current:
/// a request read on a server connection starts a SERVER span (joining its
/// `traceparent`), a response written ends it. Runs (as a tail call) after the call's
/// data records; the context record carries the same timestamp so userspace
/// can tell which request it belongs to.
#[inline(always)]
fn observe_server(v: &Inflight, direction: u8, buf: u64, len: u64, ts: u64) {
    if direction == dir::EGRESS {
        if starts_response(buf) {
            context::server_response();
        }
        return;
    }
    if len < MIN_REQUEST {
        return;
    }
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return;
    };
    let h = unsafe { &mut *h };
    let n = if len < SCAN_BYTES as u64 {
        len as u32
    } else {
        SCAN_BYTES as u32
    };
    let n = n & (SCAN_BYTES as u32 * 2 - 1);
    if unsafe { read_user_raw(h.buf.as_mut_ptr().cast(), n, buf as *const _) } != 0 {
        return;
    }
    if !head::starts_with_method(&h.buf) {
        return;
    }
    // A head longer than the scan still yields a traceparent seen early.
    let _ = head::scan(h, n);
    // A traceparent in the request wins over the connection's TCP option.
    let incoming = head::traceparent(h).or_else(|| tcp_option::received(v.conn_id));
    let ctx = context::server_request(incoming);
    context::emit(role::ACCEPTED, v.conn_id, ts, &ctx, 0);
}

/// Emits one data record of `len` bytes, copying at most the capture limit
/// from `buf` (nothing when `buf` is 0).
#[inline(always)]
pub fn emit(v: &Inflight, pid_tgid: u64, ts: u64, direction: u8, buf: u64, len: u64) {
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
        flags: v.data_flags,
        _pad: [0; 2],
        conn_id: v.conn_id,
        pid_tgid,
        ts_ns: ts,
        total: len as u32,
        captured,
        fd: v.fd,
        syscall: v.nr as u32,
    };
    let size = core::mem::size_of::<DataHeader>() + (captured as usize & (MAX_CAPTURE * 2 - 1));
    let size = if size > core::mem::size_of::<Scratch>() {
        core::mem::size_of::<Scratch>()
    } else {
        size
    };
    let bytes = unsafe { core::slice::from_raw_parts(s as *const Scratch as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count(stat::RINGBUF_DROPS);
    } else {
        count(stat::DATA_EVENTS);
    }
}
