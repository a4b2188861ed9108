//! Reads and writes on tracked connections. Once the kernel says how many
//! bytes a call on a socket in `CONNS` moved, a bounded prefix of them is
//! copied (its segments gathered into as few records as fit) into the ring buffer,
//! then a server connection's call goes to its protocol's observer
//! (`observe`). The call's arguments are read at its return from the
//! thread's saved registers (`exit_io_regs`), or, on kernels without that,
//! kept by a program at its entry (`enter_io`, `exit_io`). Nothing here
//! looks at protocol bytes beyond the first ones of a stream. Writes on
//! other fds go to `logs`, which captures those of threads serving a
//! request when log capture is on.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel,
            bpf_probe_read_user as read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::TracePointContext,
};
use clew_common::{
    connstate, dataflag, dir, kind, logs::LOG_MARK, nr, proto, role, stat, ConnInfo, ConnKey,
    DataHeader, TraceCtx, CAPTURE_MASK, IO_MARK, MAX_CAPTURE,
};

use crate::{
    logs,
    maps::{
        capture_limit, count, inflight_put, inflight_take, may_have_conns, now, quiet, Inflight,
        Scratch, CONNS, EVENTS, GATHER_MAX, SCRATCH,
    },
    observe::{self, Record},
    tls, tp,
    zero::zeroed,
};

const MSG_PEEK: u64 = 2;

#[tracepoint]
pub fn enter_io(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Log capture too needs a request being served, hence a connection.
    if !may_have_conns(tgid) {
        return 0;
    }
    let fd = tp::arg(&ctx, 0) as u32;
    let key = ConnKey { tgid, fd };
    // read/write/send*/recv*: buffer; *v: iovec array; *msg: msghdr.
    let (a1, a2) = (tp::arg(&ctx, 1), tp::arg(&ctx, 2));
    let nr = tp::nr(&ctx);
    let Some(info) = (unsafe { CONNS.get(&key) }) else {
        logs::enter(pid_tgid, fd, nr, a1, a2);
        return 0;
    };
    // recvfrom's flags come through the probe-read helper: a direct load
    // past read()'s three arguments makes attaching to sys_enter_read fail.
    let recvfrom_flags = || unsafe { ctx.read_at::<u64>(tp::ARGS + 24) }.unwrap_or(0);
    if let Some(v) = socket_call(nr, fd, info, a1, a2, recvfrom_flags) {
        inflight_put(pid_tgid, &v);
    }
    0
}

/// Call `nr` (arguments `a1`, `a2`) on fd `fd`, tracked as `info`, unless
/// it is a peek: a peek is read again for real, and capturing it would
/// duplicate bytes. `recvfrom_flags` reads recvfrom's fourth argument.
#[inline(always)]
fn socket_call(
    nr: i64,
    fd: u32,
    info: &ConnInfo,
    a1: u64,
    a2: u64,
    recvfrom_flags: impl FnOnce() -> u64,
) -> Option<Inflight> {
    let flags = match nr {
        nr::RECVFROM => recvfrom_flags(),
        nr::RECVMSG => a2,
        _ => 0,
    };
    if flags & MSG_PEEK != 0 {
        return None;
    }
    Some(Inflight {
        nr,
        conn_id: info.id,
        fd,
        role: IO_MARK,
        conn_role: info.role,
        conn_state: info.state,
        data_flags: 0,
        a1,
        a2,
        peer: crate::zero::zeroed(),
    })
}

#[tracepoint]
pub fn exit_io(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !may_have_conns((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(v) = inflight_take(pid_tgid) else {
        return 0;
    };
    // The nr check drops an entry that outlived its call (one seeded by
    // the agent for a read that returned before the entry was written).
    if v.nr != tp::nr(&ctx) {
        return 0;
    }
    if logs::sources() != 0 && v.role == LOG_MARK {
        logs::exit(&v, pid_tgid, tp::ret(&ctx));
        return 0;
    }
    if v.role != IO_MARK {
        return 0;
    }
    returned(&ctx, pid_tgid, v);
    0
}

/// `exit_io` where the kernel lets a tracepoint reach the thread's saved
/// user registers (`bpf_task_pt_regs`, Linux 5.15): the call's arguments
/// are read back from them (x86-64 syscall ABI: rdi, rsi, rdx, r10, which
/// the kernel leaves as the caller set them), so no enter program runs and
/// no per-thread entry is written and taken: one program and one lookup a
/// call instead of two programs and three lookups. The agent attaches
/// either this alone or `enter_io` with `exit_io`.
#[tracepoint]
pub fn exit_io_regs(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !may_have_conns(tgid) {
        return 0;
    }
    // SAFETY: the helper returns the current task's user register frame, a
    // kernel pointer the verifier types (struct pt_regs); the loads below
    // are fields of it.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    let arg = |r: *const u64| unsafe { core::ptr::read_volatile(r) };
    let fd = unsafe { arg(&raw const (*regs).rdi) } as u32;
    let (a1, a2) = unsafe { (arg(&raw const (*regs).rsi), arg(&raw const (*regs).rdx)) };
    let nr = tp::nr(&ctx);
    let Some(info) = (unsafe { CONNS.get(&ConnKey { tgid, fd }) }) else {
        logs::returned(pid_tgid, fd, nr, a1, a2, tp::ret(&ctx));
        return 0;
    };
    let recvfrom_flags = || unsafe { arg(&raw const (*regs).r10) };
    if let Some(v) = socket_call(nr, fd, info, a1, a2, recvfrom_flags) {
        returned(&ctx, pid_tgid, v);
    }
    0
}

/// Call `v` on a tracked connection returned: its records, then its
/// protocol's observer.
#[inline(always)]
fn returned(ctx: &TracePointContext, pid_tgid: u64, v: Inflight) {
    // Ciphertext: the TLS probes report this connection's plaintext. A
    // stream that started as a known plaintext protocol carries no TLS
    // (its first bytes were not a TLS record), so it skips the lookup.
    let plaintext = v.conn_state & (connstate::STARTED | connstate::TLS) == connstate::STARTED
        && connstate::proto(v.conn_state) != proto::UNKNOWN;
    if !plaintext && tls::bind_socket(pid_tgid, v.fd, v.conn_state) {
        return;
    }
    let ret = tp::ret(ctx);
    if v.conn_state & connstate::TLS != 0 {
        tls::ciphertext(pid_tgid, &v, ret);
        return;
    }
    if ret <= 0 {
        return;
    }
    let len = ret as u64;
    let mut v = v;
    if v.conn_state & connstate::STARTED == 0 || connstate::proto(v.conn_state) == proto::UNKNOWN {
        v.conn_state = start_of_stream(&v, pid_tgid, len);
        if v.conn_state & connstate::TLS != 0 {
            tls::ciphertext(pid_tgid, &v, ret);
            return;
        }
    }
    let ts = now();
    let limit = capture_limit() as u64;
    if holds_record(&v) && stage(&v, pid_tgid, ts, dir::INGRESS, v.a1, len, limit).is_some() {
        // One record, submitted by the observer with the span it decides.
        observe::dispatch(
            ctx,
            &OBSERVERS,
            &v,
            dir::INGRESS,
            v.a1,
            len,
            ts,
            Record::Held,
        );
        // Reached only when no observer ran.
        submit_held(&v, false);
        return;
    }

    let first = match v.nr {
        nr::READ | nr::RECVFROM => emit_call(&v, pid_tgid, ts, dir::INGRESS, Bytes::Buf(v.a1), len),
        nr::WRITE | nr::SENDTO => emit_call(&v, pid_tgid, ts, dir::EGRESS, Bytes::Buf(v.a1), len),
        nr::READV => emit_call(&v, pid_tgid, ts, dir::INGRESS, Bytes::Iov(v.a1, v.a2), len),
        nr::WRITEV => emit_call(&v, pid_tgid, ts, dir::EGRESS, Bytes::Iov(v.a1, v.a2), len),
        nr::RECVMSG | nr::SENDMSG => {
            // struct msghdr { name, namelen, iov, iovlen, ... }: the iovec
            // pointer and count sit at bytes 16 and 24 on 64-bit targets.
            let Ok(m) = (unsafe { bpf_probe_read_user((v.a1 + 16) as *const [u64; 2]) }) else {
                count(stat::READ_ERRORS);
                return;
            };
            let d = if v.nr == nr::RECVMSG {
                dir::INGRESS
            } else {
                dir::EGRESS
            };
            emit_call(&v, pid_tgid, ts, d, Bytes::Iov(m[0], m[1]), len)
        }
        // sendfile moves file bytes the process never sees: account for
        // their length so the stream position stays right.
        nr::SENDFILE => {
            emit(&mut v, pid_tgid, ts, dir::EGRESS, 0, len, 0);
            None
        }
        _ => None,
    };
    if !observe::observed(&v) {
        return;
    }
    let (first, record) = match first {
        Some(f) => (Some(f), Record::Copied),
        None => (first_segment(&v, len), Record::Gone),
    };
    if let Some((buf, n)) = first {
        observe::dispatch(ctx, &OBSERVERS, &v, direction(v.nr), buf, n, ts, record);
    }
}

/// Whether a call's record waits for its observer: a read of one buffer
/// on the serving side of an HTTP/1 connection, which makes one record
/// and may start a request whose SERVER span the observer decides.
#[inline(always)]
fn holds_record(v: &Inflight) -> bool {
    matches!(v.nr, nr::READ | nr::RECVFROM)
        && connstate::proto(v.conn_state) == proto::HTTP1
        && observe::observed(v)
}

#[inline(always)]
fn direction(nr: i64) -> u8 {
    match nr {
        nr::READ | nr::RECVFROM | nr::READV | nr::RECVMSG => dir::INGRESS,
        _ => dir::EGRESS,
    }
}

/// Observers by protocol (filled by the agent from
/// `clew_common::names::OBSERVERS`); an empty slot means the protocol needs
/// no per-request work in the kernel.
#[map]
static OBSERVERS: ProgramArray = ProgramArray::with_max_entries(proto::SLOTS, 0);

/// What the first bytes of a stream say: TLS (then its ciphertext is never
/// captured), else which protocol, recorded in the connection's state and
/// returned. A TLS record header (content type 20–23, version 3.x) cannot
/// start HTTP/1, HTTP/2 or a Kafka request; a connection met mid-stream
/// starts with an application-data record (23) at a read boundary in
/// practice. An unrecognised protocol is looked at again on the next call.
#[inline(always)]
fn start_of_stream(v: &Inflight, pid_tgid: u64, len: u64) -> u8 {
    let Some((buf, n)) = first_segment(v, len) else {
        return v.conn_state;
    };
    // Too short to tell (yet): decide on a later call.
    let Some(b) = first_bytes(buf, n) else {
        return v.conn_state;
    };
    let mut state = v.conn_state | connstate::STARTED;
    let first = v.conn_state & connstate::STARTED == 0;
    if first && (20..=23).contains(&b[0]) && b[1] == 3 && b[2] <= 4 {
        state |= connstate::TLS;
    } else {
        let p = proto::classify(&b, n as usize, server_egress(v.conn_role, direction(v.nr)));
        state = connstate::with_proto(state, p);
    }
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: v.fd,
    };
    if let Some(info) = CONNS.get_ptr_mut(&key) {
        unsafe { (*info).state |= state };
    }
    state
}

/// The protocol the `n` bytes at `buf` start (TLS plaintext's first call).
#[inline(always)]
pub fn classify_at(buf: u64, n: u64, conn_role: u8, direction: u8) -> u8 {
    match first_bytes(buf, n) {
        Some(b) => proto::classify(&b, n as usize, server_egress(conn_role, direction)),
        None => proto::UNKNOWN,
    }
}

#[inline(always)]
fn server_egress(conn_role: u8, direction: u8) -> bool {
    conn_role != role::CONNECTED && direction == dir::EGRESS
}

/// Up to the first 9 of the `n` bytes at `buf` (the rest zero); None when
/// there are fewer than 3 or they cannot be read.
#[inline(always)]
fn first_bytes(buf: u64, n: u64) -> Option<[u8; 9]> {
    if n >= 9 {
        return unsafe { bpf_probe_read_user(buf as *const [u8; 9]) }.ok();
    }
    if n < 3 {
        return None;
    }
    let t = unsafe { bpf_probe_read_user(buf as *const [u8; 3]) }.ok()?;
    Some([t[0], t[1], t[2], 0, 0, 0, 0, 0, 0])
}

/// Where a call's bytes are: one buffer, or an iovec array and its length.
pub enum Bytes {
    Buf(u64),
    Iov(u64, u64),
}

/// Rounds of `walk_step` one call may take, about one per iovec segment:
/// an HTTP/2 write can hold hundreds of frames in as many segments (gRPC's
/// core writes each frame header and payload as its own segment, up to 260
/// a call), with a header block anywhere in it.
const MAX_ROUNDS: u32 = 320;

/// The state of `walk_step`. In a map rather than on the caller's stack:
/// the verifier then reads every field as any number, and proves one
/// round for all. On the stack, it follows the byte counts exactly, each
/// round differs from the last, and the loop is never proven.
#[repr(C)]
struct Walk {
    v: Inflight,
    pid_tgid: u64,
    ts: u64,
    /// The iovec array (0: one buffer, already in `seg_*`) and its length.
    iov: u64,
    iovcnt: u64,
    /// The current segment's bytes not reported yet.
    seg_buf: u64,
    seg_left: u64,
    /// Bytes of the call not reported yet.
    left: u64,
    /// Index of the next segment to read.
    seg: u64,
    /// Bytes gathered in the capture scratch space for the next record.
    gathered: u64,
    /// Records the call made so far.
    records: u64,
    /// The call's first segment and its bytes.
    first_buf: u64,
    first_len: u64,
    direction: u8,
    /// Report every byte (in pieces of at most `MAX_CAPTURE`) instead of a
    /// prefix of each segment: framed protocols whose messages span many
    /// segments, whose parsers need every byte of a header block or batch.
    whole: u8,
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Emits the `len` bytes a call moved. Its segments are gathered into
/// records of at most the capture limit: a `writev` of a response's head,
/// chunk sizes and body (Node writes five segments for a small chunked
/// response, gRPC's core hundreds) is one record, not one per segment, and
/// each record costs a ring write here and a pass in the agent. A segment
/// longer than the limit is a record of its own, carrying its prefix, so a
/// record's bytes are always whole but for its uncaptured tail. HTTP/2 and
/// Kafka connections, whose header blocks and batches may sit anywhere in
/// a write and must all be read, report every byte, in records of at most
/// `MAX_CAPTURE`. After `MAX_ROUNDS` segments, what is left is reported by
/// length only, and the parser then knows bytes are missing. Returns the
/// call's first buffer and its bytes when the call made one record, which
/// the capture scratch space then still holds (and which starts with them).
#[inline(always)]
pub fn emit_call(
    v: &Inflight,
    pid_tgid: u64,
    ts: u64,
    direction: u8,
    bytes: Bytes,
    len: u64,
) -> Option<(u64, u64)> {
    let whole = matches!(connstate::proto(v.conn_state), proto::HTTP2 | proto::KAFKA);
    // One buffer, or one segment, that makes one record needs no walk.
    let one = match bytes {
        Bytes::Buf(buf) => Some(buf),
        Bytes::Iov(iov, 1) => unsafe { bpf_probe_read_user(iov as *const u64) }.ok(),
        Bytes::Iov(..) => None,
    };
    if let Some(buf) = one {
        if !whole || len <= MAX_CAPTURE as u64 {
            emit(&mut { *v }, pid_tgid, ts, direction, buf, len, record_limit(whole));
            return Some((buf, len));
        }
    }
    let w = WALK.get_ptr_mut(0)?;
    // Zeros the compiler cannot see: it would merge neighbouring ones into
    // a byte-at-a-time `memset` of the map value (see `zero`).
    let (iov, iovcnt, seg_buf, seg_left) = match bytes {
        Bytes::Buf(buf) => (zeroed(), zeroed(), buf, len),
        Bytes::Iov(iov, n) => (iov, n, zeroed(), zeroed()),
    };
    unsafe {
        *w = Walk {
            v: *v,
            pid_tgid,
            ts,
            iov,
            iovcnt,
            seg_buf,
            seg_left,
            left: len,
            seg: zeroed(),
            gathered: zeroed(),
            records: zeroed(),
            first_buf: seg_buf,
            first_len: seg_left,
            direction,
            whole: whole as u8,
        };
        bpf_loop(
            MAX_ROUNDS,
            walk_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        ((*w).records == 1).then(|| ((*w).first_buf, (*w).first_len))
    }
}

/// The bytes a record carries: all of them, up to `MAX_CAPTURE`, on a
/// connection captured whole, else the capture limit's prefix.
#[inline(always)]
fn record_limit(whole: bool) -> u64 {
    if whole {
        MAX_CAPTURE as u64
    } else {
        capture_limit() as u64
    }
}

/// One segment of a call (or a piece of one); returns 1 to stop the loop.
extern "C" fn walk_step(i: u64, _: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    if w.seg_left == 0 {
        if w.left == 0 {
            flush(w);
            return 1;
        }
        if w.iov == 0 || w.seg >= w.iovcnt {
            // Fewer segments than bytes: keep the byte count honest.
            flush(w);
            untouched(w, w.left);
            return 1;
        }
        let Ok(seg) = (unsafe { bpf_probe_read_user((w.iov + 16 * w.seg) as *const [u64; 2]) })
        else {
            count(stat::READ_ERRORS);
            flush(w);
            untouched(w, w.left);
            return 1;
        };
        w.seg_buf = seg[0];
        w.seg_left = if seg[1] < w.left { seg[1] } else { w.left };
        if w.seg == 0 {
            (w.first_buf, w.first_len) = (w.seg_buf, w.seg_left);
        }
        w.seg += 1;
        if w.seg_left == 0 {
            return 0;
        }
    }
    if i + 1 == MAX_ROUNDS as u64 {
        flush(w);
        untouched(w, w.left);
        return 1;
    }
    let limit = record_limit(w.whole != 0);
    // A long segment, or one that does not fit after those gathered,
    // starts the next record.
    let long = w.seg_left > GATHER_MAX as u64;
    if long || (w.whole == 0 && w.gathered + w.seg_left > limit) {
        flush(w);
    }
    if long || w.seg_left > limit {
        // Alone: a piece of at most the limit, or its prefix.
        let n = if w.whole != 0 && w.seg_left > limit {
            limit
        } else {
            w.seg_left
        };
        emit(&mut w.v, w.pid_tgid, w.ts, w.direction, w.seg_buf, n, limit);
        w.records += 1;
        consumed(w, n);
        return 0;
    }
    gather(w, limit);
    if w.gathered >= limit {
        flush(w);
    }
    0
}

/// Appends what fits below `limit` of the current segment to the record
/// being gathered. A segment that cannot be read leaves as a record of its
/// length alone, after those gathered before it.
#[inline(always)]
fn gather(w: &mut Walk, limit: u64) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let at = w.gathered as usize & CAPTURE_MASK;
    let room = limit.saturating_sub(at as u64);
    let n = if w.seg_left < room { w.seg_left } else { room };
    if n == 0 || n as usize > GATHER_MAX {
        return;
    }
    // SAFETY: `at` is below MAX_CAPTURE and `n` at most GATHER_MAX, which
    // `data` holds.
    let rc = unsafe {
        read_user_raw(
            (*s).data.as_mut_ptr().add(at).cast(),
            n as u32,
            w.seg_buf as *const _,
        )
    };
    if rc == 0 {
        w.gathered = at as u64 + n;
    } else {
        count(stat::READ_ERRORS);
        flush(w);
        untouched(w, n);
    }
    consumed(w, n);
}

/// Submits the record gathered so far, if any.
#[inline(always)]
fn flush(w: &mut Walk) {
    let n = w.gathered;
    if n == 0 || n as usize > MAX_CAPTURE {
        return;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    unsafe { (*s).hdr = header(&w.v, w.pid_tgid, w.ts, w.direction, n, n) };
    w.v.conn_state = submit(&w.v, size_of::<DataHeader>() + n as usize);
    w.gathered = 0;
    w.records += 1;
}

/// `n` bytes of the call, reported by their length alone.
#[inline(always)]
fn untouched(w: &mut Walk, n: u64) {
    emit(&mut w.v, w.pid_tgid, w.ts, w.direction, 0, n, 0);
    w.records += 1;
}

/// `n` bytes of the current segment are in a record (or being gathered).
#[inline(always)]
fn consumed(w: &mut Walk, n: u64) {
    w.seg_buf += n;
    w.seg_left -= n;
    w.left -= n;
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

/// Emits one data record of `len` bytes, copying at most `limit` of them
/// from `buf` (nothing when `buf` is 0).
#[inline(always)]
fn emit(v: &mut Inflight, pid_tgid: u64, ts: u64, direction: u8, buf: u64, len: u64, limit: u64) {
    if let Some(size) = stage(v, pid_tgid, ts, direction, buf, len, limit) {
        v.conn_state = submit(v, size);
    }
}

/// Builds the data record of `emit` in the capture scratch space; returns
/// its size.
#[inline(always)]
fn stage(
    v: &Inflight,
    pid_tgid: u64,
    ts: u64,
    direction: u8,
    buf: u64,
    len: u64,
    limit: u64,
) -> Option<usize> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let s = unsafe { &mut *s };
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
    s.hdr = header(v, pid_tgid, ts, direction, len, captured as u64);
    Some(size_of::<DataHeader>() + captured as usize)
}

/// The header of a data record of `len` bytes of `v`'s call, the first
/// `captured` of them in its payload.
#[inline(always)]
fn header(v: &Inflight, pid_tgid: u64, ts: u64, direction: u8, len: u64, captured: u64) -> DataHeader {
    DataHeader {
        kind: kind::DATA,
        direction,
        flags: v.data_flags
            | if v.conn_state & connstate::LOST != 0 {
                dataflag::AFTER_LOSS
            } else {
                0
            },
        _pad: [0; 2],
        conn_id: v.conn_id,
        pid_tgid,
        ts_ns: ts,
        total: len as u32,
        captured: captured as u32,
        fd: v.fd,
        syscall: v.nr as u32,
    }
}

/// Whether the record in the capture scratch space carries at least `n`
/// bytes of payload.
#[inline(always)]
pub fn scratch_holds(n: u32) -> bool {
    SCRATCH
        .get(0)
        .is_some_and(|s| s.hdr.captured >= n && n as usize <= MAX_CAPTURE)
}

/// The first 8 payload bytes of the record in the capture scratch space,
/// as a little-endian word, when it carries at least `n` of them: a load,
/// where `copy_scratch` pays a helper call.
#[inline(always)]
pub fn scratch_word(n: u32) -> Option<u64> {
    let s = SCRATCH.get_ptr(0)?;
    const _: () = assert!(size_of::<DataHeader>() % 8 == 0);
    // SAFETY: `data` follows the header, whose size keeps it 8-byte aligned.
    unsafe { ((*s).hdr.captured >= n).then(|| core::ptr::read((*s).data.as_ptr() as *const u64)) }
}

/// Copies the first `n` payload bytes of the record in the capture
/// scratch space to `dst`; returns whether it did.
#[inline(always)]
pub fn copy_scratch(dst: *mut u8, n: u32) -> bool {
    let Some(s) = SCRATCH.get_ptr(0) else {
        return false;
    };
    let src = unsafe { (*s).data.as_ptr() };
    unsafe { bpf_probe_read_kernel(dst.cast(), n, src.cast()) == 0 }
}

/// Puts the SERVER span decided for the request a held record starts
/// (`stage` wrote the record) after its payload; returns whether it did.
#[inline(always)]
pub fn hold_span(ctx: &TraceCtx) -> bool {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let s = unsafe { &mut *s };
    let captured = s.hdr.captured as usize;
    if captured > MAX_CAPTURE {
        return false;
    }
    s.hdr.flags |= dataflag::SERVER_SPAN;
    // SAFETY: `data` has room for a TraceCtx past MAX_CAPTURE bytes.
    unsafe { core::ptr::write_unaligned(s.data.as_mut_ptr().add(captured) as *mut TraceCtx, *ctx) };
    true
}

/// Submits a call's record held for its observer, with the SERVER span
/// `hold_span` put after its payload when `with_span`.
#[inline(always)]
pub fn submit_held(v: &Inflight, with_span: bool) {
    let Some(s) = SCRATCH.get_ptr(0) else {
        return;
    };
    let captured = unsafe { (*s).hdr.captured } as usize;
    let span = if with_span { size_of::<TraceCtx>() } else { 0 };
    submit(v, size_of::<DataHeader>() + captured + span);
}

/// Writes the first `size` bytes of the scratch space (a staged record) to
/// the ring. A record that does not fit marks the connection `LOST`; the
/// next one that does carries `AFTER_LOSS`, so userspace never parses
/// across the hole as if the stream were whole. Returns the connection's
/// state as it now is.
#[inline(always)]
fn submit(v: &Inflight, size: usize) -> u8 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return v.conn_state;
    };
    let size = if size > size_of::<Scratch>() {
        size_of::<Scratch>()
    } else {
        size
    };
    let bytes = unsafe { core::slice::from_raw_parts(s as *const Scratch as *const u8, size) };
    let lost = EVENTS.output::<[u8]>(bytes, quiet(size)).is_err();
    if lost {
        count(stat::RINGBUF_DROPS);
    } else {
        count(stat::DATA_EVENTS);
    }
    // Only a change of state costs a map update.
    if lost == (v.conn_state & connstate::LOST != 0) {
        return v.conn_state;
    }
    let state = v.conn_state ^ connstate::LOST;
    let key = ConnKey {
        tgid: (unsafe { (*s).hdr.pid_tgid } >> 32) as u32,
        fd: v.fd,
    };
    if let Some(info) = CONNS.get_ptr_mut(&key) {
        unsafe { (*info).state = ((*info).state & !connstate::LOST) | (state & connstate::LOST) };
    }
    state
}
