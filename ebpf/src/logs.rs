//! Log capture: what a thread writes to its standard output, standard
//! error or a regular file while it surely serves one request (exactly
//! one open: `context::parent`) is copied, bounded, into the ring buffer
//! with that span's ids. The application's bytes are only read.
//!
//! Userspace splits the lines, judges each file by its path and writes
//! its verdict per fd into `LOG_FDS`, keyed by the file's inode and device
//! so that an fd number reused for another file is judged anew: writes to
//! files no pattern matches stop reaching it after their first. Sockets,
//! pipes and devices behind fds other than 1 and 2 are never captured.
//!
//! A process's captured writes are bounded per second here, before any
//! copy (`LOG_WRITE_COST_NS`). Left off (`LOGS` 0, a read-only constant),
//! the branches here are dead code the verifier removes, and `pwrite*` is
//! not even attached.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_loop, bpf_probe_read_user as read_user_raw},
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use clew_common::{
    ctxflag, kind,
    logs::{
        logflag, source, FileOffsets, LogFd, LogFdKey, LogHeader, LOG_MARK, MAX_LOG_CAPTURE,
        MAX_LOG_FDS, MAX_LOG_WRITES, S_IFMT, S_IFREG,
    },
    nr, stat, Inflight, MAX_PIDS,
};

use crate::{
    context::{self, Parent},
    maps::{count, inflight_put, now, quiet, EVENTS},
    sock,
};

/// [`source`] bits: which writes are captured (set by the agent).
#[unsafe(no_mangle)]
static LOGS: u32 = 0;

/// What one captured write costs a process's budget, in nanoseconds of
/// it (a second's worth divided by `--log-rate`; 0: no bound). Bounded
/// here, before any copy, so a process logging in a tight loop costs the
/// agent nothing past its rate.
#[unsafe(no_mangle)]
static LOG_WRITE_COST_NS: u64 = 0;

/// Set by the agent from the kernel's BTF; `valid == 0`: files cannot be
/// told apart, and only standard output and error are captured.
#[unsafe(no_mangle)]
static FILE_OFFSETS: FileOffsets = FileOffsets {
    valid: 0,
    file_inode: 0,
    inode_mode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
};

/// Userspace's verdicts. Eviction: userspace removes a process's entries
/// when it exits; LRU (an evicted verdict is asked for again).
#[map]
static LOG_FDS: LruHashMap<LogFdKey, LogFd> = LruHashMap::with_max_entries(MAX_LOG_FDS, 0);

/// A process's budget of captured writes: nanoseconds of capture it may
/// spend, refilled at one per nanosecond up to a second's worth.
#[repr(C)]
#[derive(Clone, Copy)]
struct Budget {
    left_ns: u64,
    at_ns: u64,
}

/// By tgid. Eviction: LRU (an evicted process starts a full second again).
/// Updated from several CPUs without atomics: the bound is approximate.
#[map]
static LOG_BUDGETS: LruHashMap<u32, Budget> = LruHashMap::with_max_entries(MAX_PIDS, 0);

/// Whether process `tgid` may have one more captured write now.
#[inline(always)]
fn within_rate(tgid: u32) -> bool {
    let cost = unsafe { core::ptr::read_volatile(&LOG_WRITE_COST_NS) };
    if cost == 0 {
        return true;
    }
    const FULL: u64 = 1_000_000_000;
    let t = now();
    let Some(b) = LOG_BUDGETS.get_ptr_mut(&tgid) else {
        let b = Budget {
            left_ns: FULL.saturating_sub(cost),
            at_ns: t,
        };
        let _ = LOG_BUDGETS.insert(&tgid, &b, 0);
        return true;
    };
    let b = unsafe { &mut *b };
    let left = b.left_ns.saturating_add(t.saturating_sub(b.at_ns));
    let left = if left > FULL { FULL } else { left };
    b.at_ns = t;
    if left < cost {
        b.left_ns = left;
        return false;
    }
    b.left_ns = left - cost;
    true
}

/// What a write's enter decided, for its exit: the span and the file.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    ino: u64,
    dev: u32,
    flags: u32,
}

/// By pid_tgid, written in place. Eviction: LRU; an entry is only read by
/// the exit of the call whose enter wrote it (`Inflight` says so).
#[map]
static LOG_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(MAX_LOG_WRITES, 0);

/// A record is assembled here; twice the capture bound, so that a copy of
/// up to the bound at any offset below it stays inside.
#[repr(C)]
struct Scratch {
    hdr: LogHeader,
    data: [u8; 2 * MAX_LOG_CAPTURE],
}

#[map]
static LOG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn sources() -> u32 {
    unsafe { core::ptr::read_volatile(&LOGS) }
}

/// A write on `fd` that is not a traced connection is starting: note it
/// if its thread serves a request and the fd is one whose writes are
/// captured.
#[inline(always)]
pub fn enter(pid_tgid: u64, fd: u32, nr: i64, buf: u64, iovcnt: u64) {
    let Some(p) = noted(pid_tgid, fd, nr) else {
        return;
    };
    match LOG_PENDING.get_ptr_mut(&pid_tgid) {
        Some(e) => unsafe { *e = p },
        None => {
            let _ = LOG_PENDING.insert(&pid_tgid, &p, 0);
        }
    }
    inflight_put(pid_tgid, &write_call(fd, nr, buf, iovcnt));
}

/// A write on `fd` that is not a traced connection returned `ret`, seen
/// by a program that knows its arguments only now (`io::exit_io_regs`):
/// what `enter` and `exit` do for it, with nothing kept in between.
#[inline(always)]
pub fn returned(pid_tgid: u64, fd: u32, nr: i64, buf: u64, iovcnt: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    if let Some(p) = noted(pid_tgid, fd, nr) {
        record(&p, &write_call(fd, nr, buf, iovcnt), pid_tgid, ret);
    }
}

#[inline(always)]
fn write_call(fd: u32, nr: i64, buf: u64, iovcnt: u64) -> Inflight {
    Inflight {
        nr,
        conn_id: 0,
        fd,
        role: LOG_MARK,
        conn_role: 0,
        conn_state: 0,
        data_flags: 0,
        a1: buf,
        a2: iovcnt,
        peer: crate::zero::zeroed(),
    }
}

/// What a log record of this write will carry, if its thread serves a
/// request, the fd is one whose writes are captured and the process is
/// within its rate.
#[inline(always)]
fn noted(pid_tgid: u64, fd: u32, nr: i64) -> Option<Pending> {
    let sources = sources();
    if sources == 0 {
        return None;
    }
    if !matches!(
        nr,
        nr::WRITE | nr::WRITEV | nr::PWRITE64 | nr::PWRITEV | nr::PWRITEV2
    ) {
        return None;
    }
    let wanted = match fd {
        1 => source::STDOUT,
        2 => source::STDERR,
        _ => source::FILES,
    };
    if sources & wanted == 0 {
        return None;
    }
    let ctx = match context::parent() {
        Parent::Sure(ctx) => ctx,
        Parent::Unsure(_) => {
            count(stat::LOG_WRITES_AMBIGUOUS);
            return None;
        }
        Parent::None => return None,
    };
    let mut p = Pending {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        ino: 0,
        dev: 0,
        flags: if ctx.flags & ctxflag::SAMPLED != 0 {
            logflag::SAMPLED
        } else {
            0
        },
    };
    if wanted == source::FILES {
        let (ino, dev) = regular_file(fd)?;
        let key = LogFdKey {
            tgid: (pid_tgid >> 32) as u32,
            fd,
        };
        if let Some(v) = unsafe { LOG_FDS.get(&key) } {
            if v.ino == ino && v.dev == dev {
                if v.capture == 0 {
                    return None;
                }
                p.flags |= logflag::VERIFIED;
            }
        }
        p.ino = ino;
        p.dev = dev;
    }
    if !within_rate((pid_tgid >> 32) as u32) {
        count(stat::LOG_WRITES_OVER_RATE);
        return None;
    }
    Some(p)
}

/// The inode number and device of `fd` if it holds a regular file.
#[inline(always)]
fn regular_file(fd: u32) -> Option<(u64, u32)> {
    let o = unsafe { core::ptr::read_volatile(&FILE_OFFSETS) };
    if o.valid == 0 {
        return None;
    }
    let off = |v: u32| v as u64;
    let file = sock::file(fd)?;
    let inode: u64 = sock::at(file, off(o.file_inode))?;
    let mode: u16 = sock::at(inode, off(o.inode_mode))?;
    if mode & S_IFMT != S_IFREG {
        return None;
    }
    let ino: u64 = sock::at(inode, off(o.inode_ino))?;
    let sb: u64 = sock::at(inode, off(o.inode_sb))?;
    let dev: u32 = sock::at(sb, off(o.sb_dev))?;
    Some((ino, dev))
}

/// Iovec segments of one write gathered at most.
const MAX_SEGMENTS: u32 = 64;

/// The state of `gather_step`, on the caller's stack.
#[repr(C)]
struct Gather {
    /// The iovec array, or 0 for one buffer at `buf`.
    iov: u64,
    iovcnt: u64,
    buf: u64,
    /// Segments read, bytes gathered, bytes of the write not gathered.
    seg: u64,
    off: u64,
    left: u64,
}

/// The write that `enter` noted has returned `ret`: its record, with the
/// first bytes it wrote.
#[inline(always)]
pub fn exit(v: &Inflight, pid_tgid: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    if let Some(p) = (unsafe { LOG_PENDING.get(&pid_tgid) }).copied() {
        record(&p, v, pid_tgid, ret);
    }
}

/// Emits the record of write `v`, which returned `ret`, with the first
/// bytes it wrote.
#[inline(always)]
fn record(p: &Pending, v: &Inflight, pid_tgid: u64, ret: i64) {
    let Some(s) = LOG_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let vectored = matches!(v.nr, nr::WRITEV | nr::PWRITEV | nr::PWRITEV2);
    let mut g = Gather {
        iov: if vectored { v.a1 } else { 0 },
        iovcnt: if vectored { v.a2 } else { 1 },
        buf: v.a1,
        seg: 0,
        off: 0,
        left: ret as u64,
    };
    unsafe {
        bpf_loop(
            MAX_SEGMENTS,
            gather_step as *const () as *mut c_void,
            &mut g as *mut Gather as *mut c_void,
            0,
        )
    };
    // SAFETY: written by `gather_step` through a pointer the compiler cannot see.
    let gathered = unsafe { core::ptr::read_volatile(&g.off) };
    let captured = if gathered > MAX_LOG_CAPTURE as u64 {
        MAX_LOG_CAPTURE as u64
    } else {
        gathered
    };
    let s = unsafe { &mut *s };
    s.hdr = LogHeader {
        kind: kind::LOG,
        flags: p.flags,
        pid_tgid,
        ts_ns: now(),
        trace_id: p.trace_id,
        span_id: p.span_id,
        ino: p.ino,
        dev: p.dev,
        fd: v.fd,
        total: ret as u32,
        captured: captured as u32,
    };
    let size = core::mem::size_of::<LogHeader>() + (captured as usize & (2 * MAX_LOG_CAPTURE - 1));
    let size = if size > core::mem::size_of::<Scratch>() {
        core::mem::size_of::<Scratch>()
    } else {
        size
    };
    let bytes = unsafe { core::slice::from_raw_parts(s as *const Scratch as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, quiet(size)).is_err() {
        count(stat::RINGBUF_DROPS);
    } else {
        count(stat::LOG_WRITES);
    }
}

/// One segment; returns 1 to stop the loop.
extern "C" fn gather_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `exit`'s loop state, alive for the whole loop.
    let g = unsafe { &mut *(ctx as *mut Gather) };
    if g.seg >= g.iovcnt || g.left == 0 || g.off >= MAX_LOG_CAPTURE as u64 {
        return 1;
    }
    let (base, len) = if g.iov == 0 {
        (g.buf, g.left)
    } else {
        match unsafe { bpf_probe_read_user((g.iov + 16 * g.seg) as *const [u64; 2]) } {
            Ok(seg) => (seg[0], seg[1]),
            Err(_) => {
                count(stat::READ_ERRORS);
                return 1;
            }
        }
    };
    g.seg += 1;
    let mut n = if len < g.left { len } else { g.left };
    g.left -= n;
    if n > MAX_LOG_CAPTURE as u64 {
        n = MAX_LOG_CAPTURE as u64;
    }
    if n == 0 {
        return 0;
    }
    let Some(s) = LOG_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let at = g.off as usize & (MAX_LOG_CAPTURE - 1);
    // SAFETY: `at` is below the bound and `n` at most the bound: inside `data`.
    let dst = unsafe { (*s).data.as_mut_ptr().add(at) };
    let n32 = (n as u32) & (2 * MAX_LOG_CAPTURE as u32 - 1);
    if unsafe { read_user_raw(dst.cast(), n32, base as *const _) } != 0 {
        count(stat::READ_ERRORS);
        return 1;
    }
    g.off += n;
    0
}
