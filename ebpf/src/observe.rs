//! The hand-off from the generic capture programs to per-protocol
//! observers: the call is staged in a per-CPU slot, then the observer of
//! the connection's protocol (`clew_common::proto`) is tail-called. A new
//! protocol adds an observer program and a slot, not branches in the I/O
//! programs.

use aya_ebpf::{
    helpers::generated::bpf_probe_read_user, macros::map, maps::PerCpuArray, maps::ProgramArray,
    EbpfContext,
};
use clew_common::{connstate, http1::le, proto, role, Inflight, TraceCtx};

use crate::{context, http1, http2, io};

/// One call as an observer sees it.
#[derive(Clone, Copy)]
pub struct Staged {
    pub v: Inflight,
    pub direction: u8,
    /// The call's first buffer and the bytes it holds.
    pub buf: u64,
    pub len: u64,
    /// Timestamp of the call's data records, which userspace matches.
    pub ts: u64,
    pub record: Record,
    /// Whether the observer decided the SERVER span of the request these
    /// bytes start, and put it after the held record's payload.
    pub decided: u8,
}

/// Where the call's data record is when its observer runs.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Record {
    /// Submitted, and not (or no longer) in the capture scratch space.
    Gone,
    /// Submitted, and still in the capture scratch space: its payload is
    /// the start of `buf`, which the observer then reads from there
    /// instead of from the process a second time.
    Copied,
    /// The call's one record waits in the capture scratch space, so that
    /// the SERVER span decided for it leaves inside it (one ring record
    /// instead of two); submitted once the observer is done.
    Held,
}

#[map]
static STAGED: PerCpuArray<Staged> = PerCpuArray::with_max_entries(1, 0);

/// Tail-calls the observer of `v`'s protocol in `observers` (which must
/// hold programs of the caller's type). Observers see what `observed` lets
/// through. With `Record::Held` (the call's one data record waits in the
/// capture scratch space for the observer to submit it), a return means
/// no observer ran and the record is still held.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn dispatch<C: EbpfContext>(
    ctx: &C,
    observers: &ProgramArray,
    v: &Inflight,
    direction: u8,
    buf: u64,
    len: u64,
    ts: u64,
    record: Record,
) {
    if !observed(v) {
        return;
    }
    let p = connstate::proto(v.conn_state);
    let Some(slot) = STAGED.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        *slot = Staged {
            v: *v,
            direction,
            buf,
            len,
            ts,
            record,
            decided: 0,
        };
        // Returns only when the slot is empty: nothing to observe.
        let _ = observers.tail_call(ctx, p as u32);
    }
}

/// Defines a protocol's two observer programs around its `observe(&mut
/// Staged)` (or `&Staged`): one for `exit_io` (a tracepoint) and one for the
/// TLS return probes (a tail call stays within one program type).
macro_rules! observers {
    ($syscalls:ident, $tls:ident) => {
        #[aya_ebpf::macros::tracepoint]
        pub fn $syscalls(_ctx: aya_ebpf::programs::TracePointContext) -> u32 {
            if let Some(s) = $crate::observe::staged() {
                observe(s);
                $crate::observe::release(s);
            }
            0
        }

        #[aya_ebpf::macros::uretprobe]
        pub fn $tls(_ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
            if let Some(s) = $crate::observe::staged() {
                observe(s);
                $crate::observe::release(s);
            }
            0
        }
    };
}
pub(crate) use observers;

/// Whether `dispatch` would hand `v`'s call to an observer: the serving
/// side of a connection whose protocol is known, and Kafka clients (a
/// consumer continues the trace its records carry). Callers check it
/// before locating the call's buffer, which costs a user-memory read.
#[inline(always)]
pub fn observed(v: &Inflight) -> bool {
    let p = connstate::proto(v.conn_state);
    p != proto::UNKNOWN && (v.conn_role != role::CONNECTED || p == proto::KAFKA)
}

/// The call staged by `dispatch`, for the observer it tail-called: this
/// CPU's slot, used by this program alone until it returns. In place, not
/// a copy: the observers' stack is near the 512-byte limit.
#[inline(always)]
pub fn staged() -> Option<&'static mut Staged> {
    STAGED.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}

/// The observer decided the SERVER span of the request the staged call's
/// bytes start: it leaves inside the call's held record, else as a record
/// of its own.
#[inline(always)]
pub fn server_span(s: &mut Staged, ctx: &TraceCtx) {
    if s.record != Record::Held {
        context::emit(role::ACCEPTED, s.v.conn_id, s.ts, ctx, 0);
        return;
    }
    s.decided = io::hold_span(ctx) as u8;
}

/// After the observer: submits the staged call's held record, with the
/// SERVER span it decided, if any.
#[inline(always)]
pub fn release(s: &Staged) {
    if s.record != Record::Held {
        return;
    }
    io::submit_held(&s.v, s.decided != 0);
}

/// Whether the staged call starts with `prefix`: a load from its record
/// in the capture scratch space when that holds it, else `copy_start`.
#[inline(always)]
pub fn starts_with(s: &Staged, prefix: &[u8; 5]) -> bool {
    if s.record != Record::Gone {
        if let Some(w) = io::scratch_word(5) {
            return u64::from_le(w) & 0xff_ffff_ffff == le(prefix);
        }
    }
    let mut b = [0u8; 5];
    copy_start(s, b.as_mut_ptr(), 5) && b == *prefix
}

/// Copies the first `n` bytes of the staged call to `dst`: from its
/// record in the capture scratch space when that holds them, else from the
/// process's memory. Returns whether they were read.
#[inline(always)]
pub fn copy_start(s: &Staged, dst: *mut u8, n: u32) -> bool {
    if s.record != Record::Gone && io::scratch_holds(n) {
        return io::copy_scratch(dst, n);
    }
    unsafe { bpf_probe_read_user(dst.cast(), n, s.buf as *const _) == 0 }
}

/// A selected process is about to write `buf` through a TLS library on a
/// connection of protocol `p`: a request written there cannot carry a
/// `traceparent` Clew adds, so its protocol decides the CLIENT span here,
/// before the ciphertext leaves. A connection whose plaintext was never
/// seen (`UNKNOWN`) may be on its first request.
#[inline(always)]
pub fn tls_write(p: u8, pid_tgid: u64, buf: u64) {
    if p == proto::HTTP2 || p == proto::UNKNOWN {
        // Unknown: only a write that starts with the preface is HTTP/2.
        http2::tls_request_write(pid_tgid, buf, p == proto::UNKNOWN);
    }
    if p == proto::HTTP1 || p == proto::UNKNOWN {
        http1::tls_request_write(pid_tgid, buf);
    }
}
