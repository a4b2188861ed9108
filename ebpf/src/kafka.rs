//! Kafka in the kernel, on the client side: the walk buffers both the
//! Produce rewrite (`inject_kafka`) and the consumer use, and the observer
//! of Kafka client connections.
//!
//! The observer continues a trace through the broker into the consumer: a
//! Fetch response read whole in one call whose records carry exactly one
//! distinct `traceparent` makes the reading thread serve a new CONSUMER
//! span, the child of that record's span, so the calls it makes while
//! processing the records are injected as that span's children. The span
//! ends at the thread's next delivery (a Fetch response with records) or
//! after `CONSUMER_BOUND_NS`; not at its next request, since clients send
//! the next Fetch before they hand the records over (kafka-python 3
//! pipelines it into the poll that returns them). A delivery that cannot
//! be read, or whose records carry several contexts or are compressed,
//! starts none: a wrong parent is worse than none.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{
            bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_kernel,
            bpf_probe_read_user as read_user_raw,
        },
    },
    macros::map,
    maps::{Array, LruHashMap},
};
use clew_common::{
    ctxflag, dir,
    kafka::{self, api, mode, status, Mem, Walk, MAX_GROWTH, MAX_REQUEST, MAX_STEPS},
    role, stat, MAX_CONNS, MAX_INFLIGHT,
};

use crate::{
    context,
    maps::{count, now},
    observe::{self, Staged},
};

/// Output room: a request's bytes and all it can grow by.
pub const OUT: usize = 128 * 1024;
const _: () = assert!(MAX_REQUEST + MAX_GROWTH <= OUT);

/// A walk, its input (a request or response copied whole) and its output
/// (the rewritten request). The output is twice `OUT` so that a copy of
/// up to `OUT` bytes at any offset below `OUT` stays inside it, as the
/// verifier must see.
#[repr(C)]
pub struct KafkaBuf {
    /// Who is using the buffer (see `claim`).
    owner: u64,
    pub walk: Walk,
    pub input: [u8; MAX_REQUEST],
    pub output: [u8; 2 * OUT],
}

/// Two buffers per CPU, one per user: a program never shares one with the
/// other on its CPU. The agent sizes the array to twice the possible CPUs;
/// a CPU beyond it finds none and the caller stands down.
#[map]
static KAFKA_BUFS: Array<KafkaBuf> = Array::with_max_entries(2, 0);

/// Buffer users.
pub const PRODUCE: u32 = 0;
const FETCH: u32 = 1;

/// The current CPU's buffer for `user`, stamped with `stamp` (see `owned`).
#[inline(always)]
pub fn claim(user: u32, stamp: u64) -> Option<*mut KafkaBuf> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let b = KAFKA_BUFS.get_ptr_mut(cpu * 2 + user)?;
    unsafe { (*b).owner = stamp };
    Some(b)
}

/// Whether `b` is still stamped `stamp`: on a kernel that preempts BPF
/// programs, another program of the same user on this CPU may have taken
/// the buffer in between; its content is then not ours to send.
#[inline(always)]
pub fn owned(b: *mut KafkaBuf, stamp: u64) -> bool {
    unsafe { core::ptr::read_volatile(&(*b).owner) == stamp }
}

/// [`Mem`] over a `KafkaBuf`: every index is masked into its array, and
/// copies are bounded, so the verifier accepts any index the walk computes.
/// `FETCH` as in [`Mem::FETCH`].
pub struct BufMem<const FETCH: bool> {
    pub b: *mut KafkaBuf,
}

impl<const FETCH: bool> Mem for BufMem<FETCH> {
    const FETCH: bool = FETCH;

    #[inline(always)]
    fn get(&self, i: usize) -> u8 {
        unsafe { (*self.b).input[i & (MAX_REQUEST - 1)] }
    }

    #[inline(always)]
    fn out(&self, i: usize) -> u8 {
        unsafe { (*self.b).output[i & (2 * OUT - 1)] }
    }

    #[inline(always)]
    fn copy(&mut self, to: usize, from: usize, n: usize) -> bool {
        // A zero length is a valid (empty) copy: no branch for it.
        if n >= OUT || to + n > OUT || from + n > MAX_REQUEST {
            return false;
        }
        // Reloaded so that LLVM keeps the mask the verifier needs (after
        // the checks above it would prove the mask redundant and drop it).
        let n = unsafe { core::ptr::read_volatile(&n) } & (OUT - 1);
        unsafe {
            let dst = (*self.b).output.as_mut_ptr().add(to & (OUT - 1));
            let src = (*self.b).input.as_ptr().add(from & (MAX_REQUEST - 1));
            bpf_probe_read_kernel(dst.cast(), n as u32, src.cast()) == 0
        }
    }

    #[inline(always)]
    fn put<const N: usize>(&mut self, to: usize, bytes: &[u8; N]) -> bool {
        if to + N > 2 * OUT {
            return false;
        }
        unsafe {
            let dst = (*self.b).output.as_mut_ptr().add(to & (OUT - 1));
            bpf_probe_read_kernel(dst.cast(), N as u32, bytes.as_ptr().cast()) == 0
        }
    }
}

/// Runs the walk in `b` to its end, one step per `bpf_loop` iteration
/// (`FETCH`: the walk of a Fetch response, else of a Produce request).
#[inline(always)]
pub fn run<const FETCH: bool>(b: *mut KafkaBuf) -> u32 {
    let mut p = b;
    unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_step::<FETCH> as *const () as *mut c_void,
            &mut p as *mut *mut KafkaBuf as *mut c_void,
            0,
        )
    };
    // SAFETY: written by `walk_step` through a pointer the compiler cannot see.
    unsafe { core::ptr::read_volatile(&(*b).walk.status) }
}

/// One step of the walk; returns 1 to stop the loop.
extern "C" fn walk_step<const FETCH: bool>(_k: u64, p: *mut c_void) -> i64 {
    // SAFETY: `run`'s buffer pointer, alive for the whole loop; the walk
    // and the bytes it reaches through `BufMem` are disjoint fields.
    let b = unsafe { *(p as *mut *mut KafkaBuf) };
    let mut m = BufMem::<FETCH> { b };
    let w = unsafe { &mut (*b).walk };
    if w.step(&mut m) {
        0
    } else {
        1
    }
}

/// How long a CONSUMER span may last when the thread never polls again.
const CONSUMER_BOUND_NS: u64 = 10_000_000_000;

/// When each thread's CONSUMER span lapses. Eviction: LRU (a thread's
/// entry is only read while its serving context is a CONSUMER span).
#[map]
static CONSUMING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// The Fetch each client connection waits for (correlation id, version).
/// Eviction: replaced by the connection's next Fetch, taken by its
/// response, LRU for connections that close with one pending.
#[map]
static FETCHES: LruHashMap<u64, [u32; 2]> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Whether thread `tid`'s CONSUMER span is still within its bound.
#[inline(always)]
pub fn consuming(tid: u32) -> bool {
    matches!(unsafe { CONSUMING.get(&tid) }, Some(d) if *d > now())
}

/// Request headers looked at in one write.
const MAX_WRITE_REQUESTS: u32 = 4;

observe::observers!(observe_kafka, observe_kafka_tls);

#[inline(always)]
fn observe(s: &Staged) {
    // The broker's side (a traced broker) is userspace's alone.
    if s.v.conn_role != role::CONNECTED {
        return;
    }
    if s.direction == dir::EGRESS {
        requests_written(s);
    } else {
        response_read(s);
    }
}

/// `size`, `api_key`, `api_version`, `correlation_id` of the request at `at`.
#[inline(always)]
fn request_header(at: u64) -> Option<(u32, i16, i16, u32)> {
    let h = unsafe { bpf_probe_read_user(at as *const [u8; 12]) }.ok()?;
    let mut first = [0u8; 9];
    first[..8].copy_from_slice(&h[..8]);
    if !kafka::is_request_start(&first, 12) {
        return None;
    }
    Some((
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        i16::from_be_bytes([h[4], h[5]]),
        i16::from_be_bytes([h[6], h[7]]),
        u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    ))
}

/// The thread writes requests: a Fetch among them is what the
/// connection's next response answers.
#[inline(always)]
fn requests_written(s: &Staged) {
    let mut off = 0u64;
    let mut k = 0;
    while k < MAX_WRITE_REQUESTS {
        if off + 12 > s.len {
            return;
        }
        let Some((size, key, version, corr)) = request_header(s.buf + off) else {
            return;
        };
        if key == api::FETCH {
            let _ = FETCHES.insert(&s.v.conn_id, &[corr, version as u32], 0);
        }
        off += 4 + size as u64;
        k += 1;
    }
}

/// The thread reads from a Kafka connection: if it is the response to the
/// Fetch the connection waits for and it delivers records, the CONSUMER
/// span the thread was in is over, and a new one starts when the records
/// carry one context.
#[inline(always)]
fn response_read(s: &Staged) {
    let Some(pending) = (unsafe { FETCHES.get(&s.v.conn_id) }).copied() else {
        return;
    };
    if s.len < 8 {
        return;
    }
    let Ok(h) = (unsafe { bpf_probe_read_user(s.buf as *const [u8; 8]) }) else {
        return;
    };
    if u32::from_be_bytes([h[4], h[5], h[6], h[7]]) != pending[0] {
        return;
    }
    let _ = FETCHES.remove(&s.v.conn_id);
    let len = 4 + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let found = match delivery(s, len, pending[1]) {
        Delivery::Empty => return,
        Delivery::Unknown => {
            count(stat::KAFKA_CONSUMER_STOOD_DOWN);
            context::consumer_done();
            return;
        }
        Delivery::Without => {
            context::consumer_done();
            return;
        }
        Delivery::With(found) => found,
    };
    let mut ctx = context::joined(Some((found.trace_id, found.span_id, found.sampled != 0)));
    ctx.flags |= ctxflag::CONSUMER;
    // A thread serving a request keeps its SERVER span.
    if !context::serve_consumer(&ctx) {
        count(stat::KAFKA_CONSUMER_STOOD_DOWN);
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = CONSUMING.insert(&tid, &(now() + CONSUMER_BOUND_NS), 0);
    count(stat::KAFKA_CONSUMER_SPANS);
    context::emit(role::CONNECTED, s.v.conn_id, s.ts, &ctx, pending[0]);
}

/// What a Fetch response delivers.
enum Delivery {
    /// No records (a long poll that timed out).
    Empty,
    /// Records, and exactly one trace context among them.
    With(kafka::Found),
    /// Records, none with a context.
    Without,
    /// Maybe records, whose context cannot be told: the response is not
    /// whole in this read, beyond bounds or malformed, its records are
    /// compressed, or they carry several contexts.
    Unknown,
}

/// What the Fetch response of `len` bytes at the start of the read (API
/// `version`) delivers.
#[inline(always)]
fn delivery(s: &Staged, len: u64, version: u32) -> Delivery {
    if len > s.len || len >= MAX_REQUEST as u64 {
        return Delivery::Unknown;
    }
    let Some(b) = claim(FETCH, s.ts) else {
        return Delivery::Unknown;
    };
    let n = (len as u32) & (MAX_REQUEST as u32 - 1);
    let rc = unsafe { read_user_raw((*b).input.as_mut_ptr().cast(), n, s.buf as *const _) };
    if rc != 0 {
        return Delivery::Unknown;
    }
    unsafe {
        (*b).walk
            .start(mode::FETCH, version, n, &Default::default())
    };
    if run::<true>(b) != status::DONE {
        return Delivery::Unknown;
    }
    let w = unsafe { &(*b).walk };
    if w.contexts > 1 || w.compressed > 0 {
        Delivery::Unknown
    } else if w.contexts == 1 {
        Delivery::With(w.found)
    } else if w.records > 0 {
        Delivery::Without
    } else {
        Delivery::Empty
    }
}
