//! Kafka wire facts both sides use, and the two walks the kernel runs over
//! them, kept here so userspace unit-tests (and fuzzes) the very code the
//! kernel programs run:
//!
//! - [`Walk`] in `PLAN`/`EMIT` mode rewrites a Produce request so that
//!   every record without a `traceparent` header gets one, keeping every
//!   length, count and CRC consistent (the sk_msg program applies the
//!   result to the bytes being sent);
//! - [`Walk`] in `FETCH` mode reads a Fetch response and reports whether
//!   its records carry exactly one distinct trace context (the consumer
//!   thread then continues that trace).
//!
//! A walk is a state machine advanced one small [`Walk::step`] at a time:
//! the kernel runs the steps from `bpf_loop` with the walk in map memory,
//! so the verifier checks one step, not every path through a request.
//! Bytes are reached through [`Mem`], which the kernel implements over
//! masked map buffers and tests over slices.
//!
//! Layouts: KIP-98 record batches (magic 2); Produce v3–v13 and Fetch
//! v4–v16 as in Apache Kafka's message definitions (flexible from Produce
//! v9 and Fetch v12, topic ids instead of names from v13).

/// API keys (the first field after the request's size).
use crate::{TraceCtx, HEX_DIGITS};

pub mod api {
    pub const PRODUCE: i16 = 0;
    pub const FETCH: i16 = 1;
    /// Above every key Apache Kafka defines: a larger one is not Kafka.
    pub const MAX_KEY: i16 = 127;
    /// No API has reached this version: a larger one is not Kafka.
    pub const MAX_VERSION: i16 = 31;
}

/// Produce versions the kernel rewrites: v3 is the first with record
/// batches (magic 2), v9 the first flexible one, v13 the first naming
/// topics by id.
pub const PRODUCE_MIN: u32 = 3;
pub const PRODUCE_MAX: u32 = 13;
const PRODUCE_FLEXIBLE: u32 = 9;
/// Fetch versions whose responses the kernel reads (v4: record batches).
pub const FETCH_MIN: u32 = 4;
pub const FETCH_MAX: u32 = 16;
const FETCH_FLEXIBLE: u32 = 12;
/// Produce v13 and Fetch v13 name topics by a 16-byte id.
const TOPIC_ID_VERSION: u32 = 13;

/// Requests this large or larger (size field included) are never
/// rewritten (and responses never read): the kernel copies the whole
/// message into map memory to walk it.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Records given a header per request at most.
pub const MAX_RECORDS: u32 = 512;
/// Record batches per request at most: batch `k` gets span id
/// [`batch_span_id`]`(base, k)`.
pub const MAX_BATCHES: u32 = 64;
/// Partitions per Produce request at most (their new lengths are kept).
pub const MAX_PARTITIONS: usize = 64;
/// A record with more headers has its count grow past one varint byte.
pub const MAX_HEADERS: u32 = 62;
/// Bytes a rewrite can add: a header and at most two more varint bytes
/// per record, and a partition's records length growing.
pub const MAX_GROWTH: usize = MAX_RECORDS as usize * (TRACEPARENT_HEADER + 2) + 5 * MAX_PARTITIONS;
/// Bytes of a batch a CRC step covers (one `bpf_loop` iteration).
pub const CRC_CHUNK: usize = 64;
/// Steps a walk takes at most: per record its own steps and one per
/// header, per batch its CRC chunks; a walk that needs more stands down.
pub const MAX_STEPS: u32 = 1 << 15;

/// Offsets in a record batch (magic 2).
pub mod batch {
    /// `batchLength`: bytes after it (int32).
    pub const LENGTH: usize = 8;
    /// Bytes before `partitionLeaderEpoch`: base offset and length.
    pub const LOG_OVERHEAD: usize = 12;
    pub const MAGIC: usize = 16;
    /// CRC-32C of everything from `attributes` to the batch's end.
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const RECORDS_COUNT: usize = 57;
    /// Where the first record starts.
    pub const HEADER: usize = 61;
    /// `attributes` bits naming the compression codec.
    pub const COMPRESSION_MASK: u16 = 7;
    /// `attributes` bit of a control batch (transaction markers).
    pub const CONTROL: u16 = 0x20;
}

/// The header the kernel adds: key length (zigzag 11), `traceparent`,
/// value length (zigzag 55), `00-{trace}-{span}-{flags}`.
pub const TRACEPARENT_HEADER: usize = 2 + TRACEPARENT_KEY.len() + TRACEPARENT_VALUE;
pub const TRACEPARENT_KEY: &[u8; 11] = b"traceparent";
pub const TRACEPARENT_VALUE: usize = 55;
/// Where the value starts in [`TRACEPARENT_HEADER`].
const VALUE_AT: usize = 2 + TRACEPARENT_KEY.len();
/// Where the span id's last byte is written (as two hex digits) in it.
const SPAN_LAST_HEX: usize = VALUE_AT + 3 + 32 + 1 + 14;

/// The span id of the `k`-th record batch of a Produce request whose
/// PRODUCER span is `base`: `k` (below [`MAX_BATCHES`]) XORed into the
/// last byte, so batch 0 has the base id itself.
pub const fn batch_span_id(base: [u8; 8], k: u32) -> [u8; 8] {
    let mut id = base;
    id[7] ^= k as u8;
    id
}

/// Writes the `traceparent` header naming `span`.
pub fn traceparent_header(h: &mut [u8; TRACEPARENT_HEADER], span: &TraceCtx) {
    h[0] = (TRACEPARENT_KEY.len() * 2) as u8;
    let mut k = 0;
    while k < TRACEPARENT_KEY.len() {
        h[1 + k] = TRACEPARENT_KEY[k];
        k += 1;
    }
    h[1 + TRACEPARENT_KEY.len()] = (TRACEPARENT_VALUE * 2) as u8;
    span.write_traceparent(h, VALUE_AT);
}

/// The CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) table.
pub static CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// One byte into a running CRC-32C (start from `!0`, finish with `!`).
#[inline(always)]
pub fn crc32c_byte(crc: u32, b: u8) -> u32 {
    CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8)
}

/// The CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = crc32c_byte(c, b);
    }
    !c
}

/// An unsigned varint (protobuf style, at most 5 bytes for 32 bits) at
/// `pos`, before `end`: its value and the position after it.
///
/// Straight-line code, no loop: the kernel's walk decodes several varints
/// per step, and a loop with an early exit per varint multiplies the paths
/// the verifier explores. `byte` must accept (and may return anything for)
/// the 4 indices past a varint that ends early.
#[inline(always)]
pub fn uvarint(pos: usize, end: usize, byte: &impl Fn(usize) -> u8) -> Option<(u32, usize)> {
    let b = [
        byte(pos) as u32,
        byte(pos + 1) as u32,
        byte(pos + 2) as u32,
        byte(pos + 3) as u32,
        byte(pos + 4) as u32,
    ];
    // c[k]: byte k continues, and so did all before it.
    let c0 = b[0] >> 7;
    let c1 = c0 & (b[1] >> 7);
    let c2 = c1 & (b[2] >> 7);
    let c3 = c2 & (b[3] >> 7);
    let c4 = c3 & (b[4] >> 7);
    let v = (b[0] & 0x7f)
        | (((b[1] & 0x7f) << 7) * c0)
        | (((b[2] & 0x7f) << 14) * c1)
        | (((b[3] & 0x7f) << 21) * c2)
        | ((b[4] << 28) * c3);
    let after = pos + 1 + (c0 + c1 + c2 + c3) as usize;
    (c4 == 0 && after <= end).then_some((v, after))
}

/// A signed (zigzag) varint: Kafka's record lengths and counts.
#[inline(always)]
pub fn varint(pos: usize, end: usize, byte: &impl Fn(usize) -> u8) -> Option<(i32, usize)> {
    let (v, p) = uvarint(pos, end, byte)?;
    Some((((v >> 1) as i32) ^ -((v & 1) as i32), p))
}

/// Skips a zigzag varlong (at most 10 bytes): the position after it.
/// Straight-line like [`uvarint`].
#[inline(always)]
fn skip_varlong(pos: usize, end: usize, byte: &impl Fn(usize) -> u8) -> Option<usize> {
    let mut c = 1usize;
    let mut len = 0usize;
    let mut k = 0;
    while k < 10 {
        c &= (byte(pos + k) >> 7) as usize;
        len += c;
        k += 1;
    }
    let after = pos + 1 + len;
    (c == 0 && after <= end).then_some(after)
}

/// Encodes `v` as an unsigned varint into `out`; returns its length.
#[inline(always)]
/// Straight-line like [`uvarint`]; the bytes of `out` past the length are
/// written too (the caller writes over them or ignores them).
pub fn put_uvarint(v: u32, out: &mut [u8; 5]) -> usize {
    let v = v as u64;
    let c = [
        at_least(v, 1 << 7),
        at_least(v, 1 << 14),
        at_least(v, 1 << 21),
        at_least(v, 1 << 28),
    ];
    out[0] = (v & 0x7f) as u8 | (c[0] << 7) as u8;
    out[1] = ((v >> 7) & 0x7f) as u8 | (c[1] << 7) as u8;
    out[2] = ((v >> 14) & 0x7f) as u8 | (c[2] << 7) as u8;
    out[3] = ((v >> 21) & 0x7f) as u8 | (c[3] << 7) as u8;
    out[4] = (v >> 28) as u8;
    1 + (c[0] + c[1] + c[2] + c[3]) as usize
}

/// 1 when `v >= x`, else 0, for `v` and `x` below 2^63: by arithmetic, as
/// a comparison would be a branch for the verifier.
#[inline(always)]
const fn at_least(v: u64, x: u64) -> u64 {
    (x - 1).wrapping_sub(v) >> 63
}

/// `n`, or 0 when negative (a null length), without a branch.
#[inline(always)]
const fn non_negative(n: i32) -> usize {
    (n & !(n >> 31)) as usize
}

/// The zigzag form of a non-negative `v` (which [`put_uvarint`] encodes).
#[inline(always)]
pub const fn zigzag(v: u32) -> u32 {
    v << 1
}

#[inline(always)]
fn be16(pos: usize, byte: &impl Fn(usize) -> u8) -> u16 {
    (byte(pos) as u16) << 8 | byte(pos + 1) as u16
}

#[inline(always)]
fn be32(pos: usize, byte: &impl Fn(usize) -> u8) -> u32 {
    (be16(pos, byte) as u32) << 16 | be16(pos + 2, byte) as u32
}

/// Whether the first 8 bytes of a stream (`b`, of `len` available) start
/// a Kafka request: a size below 64 MiB that is not shorter than a request
/// header, a known API key and a plausible version. HTTP/1 starts with
/// ASCII (a size above 1 GiB); an HTTP/2 SETTINGS frame read as a request
/// is Produce v0, which no client has sent since Kafka 0.10 and which is
/// refused here. A false positive costs nothing: the injector and the
/// consumer walk verify every field before they act.
#[inline(always)]
pub fn is_request_start(b: &[u8; 9], len: usize) -> bool {
    if len < 8 {
        return false;
    }
    let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let key = i16::from_be_bytes([b[4], b[5]]);
    let version = i16::from_be_bytes([b[6], b[7]]);
    (10..64 << 20).contains(&size)
        && (0..=api::MAX_KEY).contains(&key)
        && (0..=api::MAX_VERSION).contains(&version)
        && !(key == api::PRODUCE && version < PRODUCE_MIN as i16)
}

/// Bytes the walk reads and writes. Indices beyond a buffer are the
/// walk's bug, never the caller's: the kernel masks them anyway.
pub trait Mem {
    /// The walk reads a Fetch response (else it rewrites a Produce
    /// request). A constant, not the walk's mode: each kernel program
    /// carries only its own half of the walk for the verifier to check.
    const FETCH: bool;
    /// Byte `i` of the input.
    fn get(&self, i: usize) -> u8;
    /// Byte `i` of the output (for its CRC).
    fn out(&self, i: usize) -> u8;
    /// Input `[from, from + n)` to output `to`.
    fn copy(&mut self, to: usize, from: usize, n: usize) -> bool;
    /// `bytes` to output `to`.
    fn put<const N: usize>(&mut self, to: usize, bytes: &[u8; N]) -> bool;
    /// The walk is in its EMIT pass (set by [`Walk::step`] alone).
    const EMIT: bool = false;
}

/// `M` in one pass of a Produce walk, known at compile time.
struct Pass<'a, M, const EMIT: bool>(&'a mut M);

impl<M: Mem, const EMIT: bool> Mem for Pass<'_, M, EMIT> {
    const FETCH: bool = M::FETCH;
    const EMIT: bool = EMIT;

    #[inline(always)]
    fn get(&self, i: usize) -> u8 {
        self.0.get(i)
    }

    #[inline(always)]
    fn out(&self, i: usize) -> u8 {
        self.0.out(i)
    }

    #[inline(always)]
    fn copy(&mut self, to: usize, from: usize, n: usize) -> bool {
        self.0.copy(to, from, n)
    }

    #[inline(always)]
    fn put<const N: usize>(&mut self, to: usize, bytes: &[u8; N]) -> bool {
        self.0.put(to, bytes)
    }
}

/// Walk modes.
pub mod mode {
    /// Produce, first pass: check everything, verify CRCs, count what will
    /// be injected and size each partition's new records.
    pub const PLAN: u32 = 0;
    /// Produce, second pass: write the rewritten request to the output.
    pub const EMIT: u32 = 1;
    /// A Fetch response: find the trace contexts its records carry.
    pub const FETCH: u32 = 2;
}

/// Why a walk ended ([`Walk::status`]).
pub mod status {
    /// Still walking.
    pub const RUNNING: u32 = 0;
    /// Walked to the end and everything added up.
    pub const DONE: u32 = 1;
    /// An API version the walk does not know, or a batch that is not magic 2.
    pub const UNSUPPORTED: u32 = 2;
    /// A batch's CRC does not match its bytes.
    pub const CRC: u32 = 3;
    /// Beyond the walk's bounds (records, batches, partitions, headers, steps).
    pub const BOUNDS: u32 = 4;
    /// Lengths or counts that do not add up.
    pub const MALFORMED: u32 = 5;
    /// The output could not be written (kernel helper failure).
    pub const FAILED: u32 = 6;
}

/// Steps of a walk ([`Walk::state`]).
mod state {
    pub const REQUEST: u32 = 0;
    pub const TOPIC: u32 = 1;
    pub const PARTITION: u32 = 2;
    pub const BATCH: u32 = 3;
    pub const CRC: u32 = 4;
    pub const RECORD: u32 = 5;
    pub const HEADER: u32 = 6;
    pub const RECORD_END: u32 = 7;
    pub const BATCH_END: u32 = 8;
    pub const PARTITION_END: u32 = 9;
    pub const TOPIC_END: u32 = 10;
    pub const TAIL: u32 = 11;
    pub const RESPONSE: u32 = 12;
    pub const FETCH_PARTITION: u32 = 13;
}

/// A trace context found in a record's `traceparent` header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: u32,
}

/// The walk's whole state (plain data: the kernel keeps it in map memory).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Walk {
    pub mode: u32,
    pub status: u32,
    state: u32,
    version: u32,
    /// Where the walk is in the input, how far the input has been copied
    /// to the output, and the output's length.
    pos: u32,
    copied: u32,
    pub o: u32,
    /// The input's length (the request's size field plus 4).
    end: u32,
    topics_left: u32,
    parts_left: u32,
    /// The current partition (its index into `new_len`), where its records
    /// end in the input and start in the output.
    part: u32,
    records_end: u32,
    records_out: u32,
    /// The current batch: its end in the input, its start in the output,
    /// whether its records are rewritten, records left.
    batch_end: u32,
    batch_out: u32,
    batch_rewrite: u32,
    records_left: u32,
    /// The current record: its start, its length varint's end, its end,
    /// its header count varint's position and end, headers left, whether
    /// one is `traceparent`.
    rec_start: u32,
    rec_body: u32,
    rec_end: u32,
    count_at: u32,
    count_end: u32,
    headers: u32,
    headers_left: u32,
    has_tp: u32,
    /// A CRC in progress: over `[crc_pos, crc_end)` of the input (PLAN)
    /// or output (EMIT), to compare with or patch at `crc_at`.
    crc: u32,
    crc_pos: u32,
    crc_end: u32,
    crc_at: u32,
    steps: u32,
    /// Batches seen (the next one's index).
    pub batches: u32,
    /// Records that get (PLAN) or got (EMIT) a header, and that carry
    /// their own `traceparent`; batches left alone for compression.
    pub injected: u32,
    pub own: u32,
    pub compressed: u32,
    /// FETCH: records seen, the contexts found (the first one, and
    /// whether a different one followed), batches whose records could
    /// not be read (compressed).
    pub records: u32,
    pub found: Found,
    pub contexts: u32,
    /// PLAN: each partition's new records length (EMIT writes it).
    new_len: [u32; MAX_PARTITIONS],
    /// The header for batch 0; batch `k` differs in the span's last byte.
    header: [u8; TRACEPARENT_HEADER],
    span_last: u8,
    _pad: [u8; 3],
}

impl Walk {
    /// A walk with every field zero (not started).
    pub const EMPTY: Walk = Walk {
        mode: 0,
        status: status::RUNNING,
        state: 0,
        version: 0,
        pos: 0,
        copied: 0,
        o: 0,
        end: 0,
        topics_left: 0,
        parts_left: 0,
        part: 0,
        records_end: 0,
        records_out: 0,
        batch_end: 0,
        batch_out: 0,
        batch_rewrite: 0,
        records_left: 0,
        rec_start: 0,
        rec_body: 0,
        rec_end: 0,
        count_at: 0,
        count_end: 0,
        headers: 0,
        headers_left: 0,
        has_tp: 0,
        crc: 0,
        crc_pos: 0,
        crc_end: 0,
        crc_at: 0,
        steps: 0,
        batches: 0,
        injected: 0,
        own: 0,
        compressed: 0,
        records: 0,
        found: Found {
            trace_id: [0; 16],
            span_id: [0; 8],
            sampled: 0,
        },
        contexts: 0,
        new_len: [0; MAX_PARTITIONS],
        header: [0; TRACEPARENT_HEADER],
        span_last: 0,
        _pad: [0; 3],
    };

    /// Starts a walk in place (the kernel's walk lives in map memory, too
    /// big for its stack) over a request (PLAN) or response (FETCH) of
    /// `len` bytes whose API version is `version`. `span`: the PRODUCER
    /// span the headers name (FETCH ignores it).
    pub fn start(&mut self, mode: u32, version: u32, len: u32, span: &TraceCtx) {
        self.mode = mode;
        self.version = version;
        self.end = len;
        self.rewind();
        self.records = 0;
        self.contexts = 0;
        self.found = Found::default();
        traceparent_header(&mut self.header, span);
        self.span_last = span.span_id[7];
    }

    /// The second pass over a request that PLAN walked to the end: the
    /// same walk again, writing the output this time (with the partition
    /// lengths PLAN found). PLAN switches to it by itself when it found
    /// records to inject into.
    fn emit(&mut self) {
        self.mode = mode::EMIT;
        self.rewind();
    }

    fn rewind(&mut self) {
        self.status = status::RUNNING;
        self.state = if self.mode == mode::FETCH {
            state::RESPONSE
        } else {
            state::REQUEST
        };
        self.pos = 0;
        self.copied = 0;
        self.o = 0;
        self.part = 0;
        self.steps = 0;
        self.batches = 0;
        self.injected = 0;
        self.own = 0;
        self.compressed = 0;
    }

    fn flexible<M: Mem>(&self, _: &M) -> bool {
        if M::FETCH {
            self.version >= FETCH_FLEXIBLE
        } else {
            self.version >= PRODUCE_FLEXIBLE
        }
    }

    /// EMIT: the output is being written.
    fn emitting<M: Mem>(&self, _: &M) -> bool {
        M::EMIT
    }

    /// PLAN: the input is being checked.
    fn planning<M: Mem>(&self, _: &M) -> bool {
        !M::FETCH && !M::EMIT
    }

    fn stop(&mut self, why: u32) -> bool {
        self.status = why;
        false
    }

    /// Copies the input up to `upto` that is not in the output yet.
    #[inline(always)]
    fn flush(&mut self, upto: u32, m: &mut impl Mem) -> bool {
        // Nothing to copy is an empty copy, not a branch of its own.
        if upto < self.copied {
            return self.stop(status::MALFORMED);
        }
        let n = upto - self.copied;
        if self.emitting(m) && !m.copy(self.o as usize, self.copied as usize, n as usize) {
            return self.stop(status::FAILED);
        }
        self.o += n;
        self.copied = upto;
        true
    }

    /// Writes the first `n` of `bytes` to the output (EMIT), in place of
    /// the input up to `resume`.
    #[inline(always)]
    fn write<const N: usize>(
        &mut self,
        bytes: &[u8; N],
        n: usize,
        resume: u32,
        m: &mut impl Mem,
    ) -> bool {
        if self.emitting(m) && !m.put(self.o as usize, bytes) {
            return self.stop(status::FAILED);
        }
        self.o += n as u32;
        self.copied = resume;
        true
    }

    /// Overwrites 4 bytes already in the output with `v` (big-endian).
    #[inline(always)]
    fn patch32(&mut self, at: u32, v: u32, m: &mut impl Mem) -> bool {
        if self.emitting(m) && !m.put(at as usize, &v.to_be_bytes()) {
            return self.stop(status::FAILED);
        }
        true
    }

    /// Walks one step. False when the walk is over (see `status`).
    #[inline(always)]
    pub fn step<M: Mem>(&mut self, m: &mut M) -> bool {
        if self.status != status::RUNNING {
            return false;
        }
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return self.stop(status::BOUNDS);
        }
        // The pass as a constant from here on: a mode read from memory at
        // each check would be a fork for the verifier at each check.
        if !M::FETCH && self.mode == mode::EMIT {
            self.step_in(&mut Pass::<M, true>(m))
        } else {
            self.step_in(&mut Pass::<M, false>(m))
        }
    }

    #[inline(always)]
    fn step_in<M: Mem>(&mut self, m: &mut M) -> bool {
        let go = match self.state {
            state::REQUEST if !M::FETCH => self.request(m),
            state::RESPONSE if M::FETCH => self.response(m),
            state::TOPIC => self.topic(m),
            state::PARTITION if !M::FETCH => self.partition(m),
            state::FETCH_PARTITION if M::FETCH => self.fetch_partition(m),
            state::BATCH => self.batch(m),
            state::CRC => self.crc_chunk(m),
            state::RECORD => self.record(m),
            state::HEADER => self.header(m),
            state::RECORD_END => self.record_end(m),
            state::BATCH_END => self.batch_end(m),
            state::PARTITION_END => self.partition_end(m),
            state::TOPIC_END => self.topic_end(m),
            state::TAIL => self.tail(m),
            _ => self.stop(status::MALFORMED),
        };
        go && self.status == status::RUNNING
    }

    /// An array's length (int32, or compact: unsigned varint of length + 1,
    /// 0 for null) at `pos`; null counts as empty.
    #[inline(always)]
    fn array_len(&self, pos: usize, m: &impl Mem) -> Option<(u32, usize)> {
        let byte = |i| m.get(i);
        let end = self.end as usize;
        if self.flexible(m) {
            let (n, p) = uvarint(pos, end, &byte)?;
            Some((n.saturating_sub(1), p))
        } else {
            if pos + 4 > end {
                return None;
            }
            let n = be32(pos, &byte);
            Some((if n == u32::MAX { 0 } else { n }, pos + 4))
        }
    }

    /// Skips a (nullable) string: int16 length, or compact.
    #[inline(always)]
    fn skip_string(&self, pos: usize, m: &impl Mem) -> Option<usize> {
        self.sized(pos, 2, m).map(|(_, end)| end)
    }

    /// The bytes a length field at `pos` announces, as (start, end): an
    /// int16 or int32 (`width`; -1 is null), or compact in flexible
    /// versions (unsigned varint of the length + 1, 0 for null). Null is
    /// empty.
    #[inline(always)]
    fn sized(&self, pos: usize, width: usize, m: &impl Mem) -> Option<(usize, usize)> {
        let byte = |i| m.get(i);
        let end = self.end as usize;
        let (n, p) = if self.flexible(m) {
            let (n, p) = uvarint(pos, end, &byte)?;
            (n.saturating_sub(1) as usize, p)
        } else {
            if pos + width > end {
                return None;
            }
            let n = if width == 2 {
                be16(pos, &byte) as i16 as i64
            } else {
                be32(pos, &byte) as i32 as i64
            };
            (n.max(0) as usize, pos + width)
        };
        (p + n <= end).then_some((p, p + n))
    }

    /// Skips a tag buffer (flexible versions only; else `pos`) of at
    /// most two tagged fields (tansu puts one in every Fetch response),
    /// in straight-line code: a loop here would be in every step the
    /// verifier checks.
    #[inline(always)]
    fn skip_tags(&self, pos: usize, m: &impl Mem) -> Option<usize> {
        if !self.flexible(m) {
            return Some(pos);
        }
        let byte = |i| m.get(i);
        let end = self.end as usize;
        let (n, mut p) = uvarint(pos, end, &byte)?;
        if n > 2 {
            return None;
        }
        if n >= 1 {
            p = skip_tag(p, end, &byte)?;
        }
        if n == 2 {
            p = skip_tag(p, end, &byte)?;
        }
        Some(p)
    }

    /// Moves to `pos`; stops as malformed on `None` or past the end.
    #[inline(always)]
    fn seek(&mut self, pos: Option<usize>) -> bool {
        match pos {
            Some(p) if p <= self.end as usize => {
                self.pos = p as u32;
                true
            }
            _ => self.stop(status::MALFORMED),
        }
    }

    /// Produce's header and body up to its topics.
    fn request(&mut self, m: &mut impl Mem) -> bool {
        let byte = |i| m.get(i);
        let end = self.end as usize;
        if !(PRODUCE_MIN..=PRODUCE_MAX).contains(&self.version) {
            return self.stop(status::UNSUPPORTED);
        }
        if end < 12 || be32(0, &byte) as usize + 4 != end || be16(4, &byte) != api::PRODUCE as u16 {
            return self.stop(status::MALFORMED);
        }
        // client_id stays an int16 string in the flexible header (v2).
        let n = be16(12, &byte);
        let mut p = 14 + if n == u16::MAX { 0 } else { n as usize };
        let Some(q) = self.skip_tags(p, m) else {
            return self.stop(status::MALFORMED);
        };
        // transactional_id, acks, timeout_ms.
        let Some(q) = self.skip_string(q, m) else {
            return self.stop(status::MALFORMED);
        };
        p = q + 6;
        let Some((topics, p)) = self.array_len(p, m) else {
            return self.stop(status::MALFORMED);
        };
        self.topics_left = topics;
        self.seek(Some(p)) && self.next_topic()
    }

    /// Fetch's response header and body up to its topics.
    fn response(&mut self, m: &mut impl Mem) -> bool {
        let end = self.end as usize;
        if !(FETCH_MIN..=FETCH_MAX).contains(&self.version) {
            return self.stop(status::UNSUPPORTED);
        }
        // size, correlation id, tags; throttle; v7+: error, session id.
        let Some(p) = self.skip_tags(8, m) else {
            return self.stop(status::MALFORMED);
        };
        let p = p + 4 + if self.version >= 7 { 6 } else { 0 };
        if p > end {
            return self.stop(status::MALFORMED);
        }
        let Some((topics, p)) = self.array_len(p, m) else {
            return self.stop(status::MALFORMED);
        };
        self.topics_left = topics;
        self.seek(Some(p)) && self.next_topic()
    }

    /// After a topic (or the topics' start): the next one, or the tail.
    fn next_topic(&mut self) -> bool {
        if self.topics_left == 0 {
            self.state = state::TAIL;
        } else {
            self.topics_left -= 1;
            self.state = state::TOPIC;
        }
        true
    }

    fn topic(&mut self, m: &mut impl Mem) -> bool {
        let p = if self.version >= TOPIC_ID_VERSION {
            Some(self.pos as usize + 16)
        } else {
            self.skip_string(self.pos as usize, m)
        };
        let Some((parts, p)) = p.and_then(|p| self.array_len(p, m)) else {
            return self.stop(status::MALFORMED);
        };
        self.parts_left = parts;
        self.pos = p as u32;
        self.next_partition(m)
    }

    /// After a partition (or a topic's start): the next one, or the topic's end.
    fn next_partition<M: Mem>(&mut self, _: &M) -> bool {
        if self.parts_left == 0 {
            self.state = state::TOPIC_END;
        } else {
            self.parts_left -= 1;
            self.state = if M::FETCH {
                state::FETCH_PARTITION
            } else {
                state::PARTITION
            };
        }
        true
    }

    fn partition(&mut self, m: &mut impl Mem) -> bool {
        if self.part as usize >= MAX_PARTITIONS {
            return self.stop(status::BOUNDS);
        }
        // The partition index, then the records' length.
        let at = self.pos as usize + 4;
        let Some((start, end)) = self.sized(at, 4, m) else {
            return self.stop(status::MALFORMED);
        };
        if self.emitting(m) && end > start {
            // The length as it will be: the records rewritten.
            if !self.flush(at as u32, m) {
                return false;
            }
            let n = self.new_len[self.part as usize & (MAX_PARTITIONS - 1)];
            let ok = if self.flexible(m) {
                let mut b = [0u8; 5];
                let k = put_uvarint(n + 1, &mut b);
                self.write(&b, k, start as u32, m)
            } else {
                self.write(&n.to_be_bytes(), 4, start as u32, m)
            };
            if !ok {
                return false;
            }
        }
        if !self.flush(start as u32, m) {
            return false;
        }
        self.records_out = self.o;
        self.records_end = end as u32;
        self.pos = start as u32;
        self.state = state::BATCH;
        true
    }

    fn fetch_partition(&mut self, m: &mut impl Mem) -> bool {
        let end = self.end as usize;
        // index, error, high watermark, last stable offset; v5+: log start offset.
        let mut p = self.pos as usize + 4 + 2 + 8 + 8 + if self.version >= 5 { 8 } else { 0 };
        let Some((aborted, q)) = self.array_len(p, m) else {
            return self.stop(status::MALFORMED);
        };
        // Aborted transactions (read_committed consumers only) would
        // hide some records from the consumer: not walked.
        if aborted > 0 {
            return self.stop(status::BOUNDS);
        }
        p = q;
        if self.version >= 11 {
            p += 4;
        }
        if p > end {
            return self.stop(status::MALFORMED);
        }
        let Some((start, rend)) = self.sized(p, 4, m) else {
            return self.stop(status::MALFORMED);
        };
        self.records_end = rend as u32;
        self.pos = start as u32;
        self.state = state::BATCH;
        true
    }

    fn batch(&mut self, m: &mut impl Mem) -> bool {
        let byte = |i| m.get(i);
        let pos = self.pos as usize;
        let records_end = self.records_end as usize;
        if pos == records_end {
            self.state = state::PARTITION_END;
            return true;
        }
        if pos + batch::HEADER > records_end {
            // A Fetch response may end in a partial batch.
            if fetching(m) {
                self.pos = self.records_end;
                self.state = state::PARTITION_END;
                return true;
            }
            return self.stop(status::MALFORMED);
        }
        let len = be32(pos + batch::LENGTH, &byte) as usize;
        let batch_end = pos + batch::LOG_OVERHEAD + len;
        if len < batch::HEADER - batch::LOG_OVERHEAD || batch_end > records_end {
            if fetching(m) && batch_end > records_end {
                self.pos = self.records_end;
                self.state = state::PARTITION_END;
                return true;
            }
            return self.stop(status::MALFORMED);
        }
        if byte(pos + batch::MAGIC) != 2 {
            return self.stop(status::UNSUPPORTED);
        }
        if !fetching(m) && self.batches >= MAX_BATCHES {
            return self.stop(status::BOUNDS);
        }
        self.batches += 1;
        let attributes = be16(pos + batch::ATTRIBUTES, &byte);
        let count = be32(pos + batch::RECORDS_COUNT, &byte);
        self.batch_end = batch_end as u32;
        self.pos = (pos + batch::HEADER) as u32;
        self.records_left = count;
        if attributes & (batch::COMPRESSION_MASK | batch::CONTROL) != 0 {
            // Left exactly as it is (its records cannot be read).
            if attributes & batch::COMPRESSION_MASK != 0 && count > 0 {
                self.compressed += 1;
            }
            self.batch_rewrite = 0;
            self.pos = self.batch_end;
            self.state = state::BATCH_END;
            return true;
        }
        self.batch_rewrite = 1;
        if !self.flush(pos as u32, m) {
            return false;
        }
        self.batch_out = self.o;
        if self.planning(m) {
            self.crc = !0;
            self.crc_pos = (pos + batch::ATTRIBUTES) as u32;
            self.crc_end = batch_end as u32;
            self.crc_at = (pos + batch::CRC) as u32;
            self.state = state::CRC;
        } else {
            self.state = state::RECORD;
        }
        true
    }

    /// One chunk of a CRC: PLAN checks the input batch's, EMIT computes
    /// the output batch's and patches it in.
    fn crc_chunk(&mut self, m: &mut impl Mem) -> bool {
        let plan = self.planning(m);
        let (pos, end) = (self.crc_pos as usize, self.crc_end as usize);
        let mut c = self.crc;
        // A whole chunk, or one byte of the tail: a loop that may stop at
        // any byte would be as many paths for the verifier.
        let n = if pos + CRC_CHUNK <= end {
            let mut k = 0;
            while k < CRC_CHUNK {
                c = crc32c_byte(c, if plan { m.get(pos + k) } else { m.out(pos + k) });
                k += 1;
            }
            CRC_CHUNK
        } else if pos < end {
            c = crc32c_byte(c, if plan { m.get(pos) } else { m.out(pos) });
            1
        } else {
            0
        };
        self.crc = c;
        self.crc_pos = (pos + n) as u32;
        if pos + n < end {
            return true;
        }
        let crc = !c;
        if plan {
            if be32(self.crc_at as usize, &|i| m.get(i)) != crc {
                return self.stop(status::CRC);
            }
            self.state = state::RECORD;
            return true;
        }
        if !self.patch32(self.crc_at, crc, m) {
            return false;
        }
        self.next_batch()
    }

    /// After a batch: the next one in the partition's records.
    fn next_batch(&mut self) -> bool {
        self.state = state::BATCH;
        true
    }

    fn record(&mut self, m: &mut impl Mem) -> bool {
        let byte = |i| m.get(i);
        let pos = self.pos as usize;
        let batch_end = self.batch_end as usize;
        if self.records_left == 0 {
            if pos != batch_end {
                return self.stop(status::MALFORMED);
            }
            self.state = state::BATCH_END;
            return true;
        }
        self.records_left -= 1;
        let Some((len, body)) = varint(pos, batch_end, &byte) else {
            return self.stop(status::MALFORMED);
        };
        let rec_end = body + len as usize;
        if len < 0 || rec_end > batch_end {
            return self.stop(status::MALFORMED);
        }
        // attributes, timestamp delta, offset delta, key, value.
        let mut p = skip_varlong(body + 1, rec_end, &byte);
        p = p.and_then(|p| varint(p, rec_end, &byte)).map(|(_, p)| p);
        p = p.and_then(|p| skip_bytes(p, rec_end, &byte));
        p = p.and_then(|p| skip_bytes(p, rec_end, &byte));
        let Some(count_at) = p else {
            return self.stop(status::MALFORMED);
        };
        let Some((count, after)) = varint(count_at, rec_end, &byte) else {
            return self.stop(status::MALFORMED);
        };
        if count < 0 {
            return self.stop(status::MALFORMED);
        }
        self.rec_start = pos as u32;
        self.rec_body = body as u32;
        self.rec_end = rec_end as u32;
        self.count_at = count_at as u32;
        self.count_end = after as u32;
        self.headers = count as u32;
        self.headers_left = count as u32;
        self.has_tp = 0;
        self.records += 1;
        self.pos = after as u32;
        self.state = if count > 0 {
            state::HEADER
        } else {
            state::RECORD_END
        };
        true
    }

    fn header(&mut self, m: &mut impl Mem) -> bool {
        let byte = |i| m.get(i);
        let pos = self.pos as usize;
        let rec_end = self.rec_end as usize;
        let Some((klen, p)) = varint(pos, rec_end, &byte) else {
            return self.stop(status::MALFORMED);
        };
        if klen < 0 || p + klen as usize > rec_end {
            return self.stop(status::MALFORMED);
        }
        let is_tp = klen as usize == TRACEPARENT_KEY.len() && is_traceparent_key(p, &byte);
        let Some((vlen, v)) = varint(p + klen as usize, rec_end, &byte) else {
            return self.stop(status::MALFORMED);
        };
        let vend = v + non_negative(vlen);
        if vlen < -1 || vend > rec_end {
            return self.stop(status::MALFORMED);
        }
        if is_tp {
            self.has_tp = 1;
            if fetching(m) && vlen as usize == TRACEPARENT_VALUE {
                self.found_context(v, m);
            }
        }
        self.pos = vend as u32;
        self.headers_left -= 1;
        if self.headers_left == 0 {
            self.state = state::RECORD_END;
        }
        true
    }

    /// FETCH: a `traceparent` value of the right length at `at`.
    fn found_context(&mut self, at: usize, m: &impl Mem) {
        let byte = |i| m.get(i);
        let mut f = Found::default();
        let mut flags = [0u8; 1];
        // Branch-free like the key comparison: every check ORed into `bad`.
        let bad = (byte(at) ^ b'0')
            | (byte(at + 1) ^ b'0')
            | (byte(at + 2) ^ b'-')
            | (byte(at + 35) ^ b'-')
            | (byte(at + 52) ^ b'-')
            | unhex(at + 3, &mut f.trace_id, &byte)
            | unhex(at + 36, &mut f.span_id, &byte)
            | unhex(at + 53, &mut flags, &byte);
        if bad != 0 || f.trace_id == [0; 16] || f.span_id == [0; 8] {
            return;
        }
        f.sampled = (flags[0] & 1) as u32;
        if self.contexts == 0 {
            self.found = f;
            self.contexts = 1;
        } else if self.found != f {
            self.contexts = 2;
        }
    }

    fn record_end(&mut self, m: &mut impl Mem) -> bool {
        if self.pos != self.rec_end {
            return self.stop(status::MALFORMED);
        }
        self.state = state::RECORD;
        if fetching(m) {
            return true;
        }
        if self.has_tp != 0 {
            self.own += 1;
            return true;
        }
        if self.headers >= MAX_HEADERS || self.injected >= MAX_RECORDS {
            return self.stop(status::BOUNDS);
        }
        self.injected += 1;
        // The record's new length, then its body up to the header count,
        // the new count, the headers, and the new header.
        let len = self.rec_end - self.rec_body + TRACEPARENT_HEADER as u32;
        let mut b = [0u8; 5];
        let n = put_uvarint(zigzag(len), &mut b);
        if !(self.flush(self.rec_start, m) && self.write(&b, n, self.rec_body, m)) {
            return false;
        }
        let n = put_uvarint(zigzag(self.headers + 1), &mut b);
        if !(self.flush(self.count_at, m) && self.write(&b, n, self.count_end, m)) {
            return false;
        }
        if !self.flush(self.rec_end, m) {
            return false;
        }
        // Batch 0's header, then this batch's last span id byte.
        let last = batch_span_id([0, 0, 0, 0, 0, 0, 0, self.span_last], self.batches - 1)[7];
        let digits = [
            HEX_DIGITS[(last >> 4) as usize],
            HEX_DIGITS[(last & 15) as usize],
        ];
        if self.emitting(m)
            && !(m.put(self.o as usize, &self.header)
                && m.put(self.o as usize + SPAN_LAST_HEX, &digits))
        {
            return self.stop(status::FAILED);
        }
        self.o += TRACEPARENT_HEADER as u32;
        true
    }

    fn batch_end(&mut self, m: &mut impl Mem) -> bool {
        if fetching(m) || self.batch_rewrite == 0 || self.planning(m) {
            return self.next_batch();
        }
        if !self.flush(self.batch_end, m) {
            return false;
        }
        let out_len = self.o - self.batch_out - batch::LOG_OVERHEAD as u32;
        if !self.patch32(self.batch_out + batch::LENGTH as u32, out_len, m) {
            return false;
        }
        self.crc = !0;
        self.crc_pos = self.batch_out + batch::ATTRIBUTES as u32;
        self.crc_end = self.o;
        self.crc_at = self.batch_out + batch::CRC as u32;
        self.state = state::CRC;
        true
    }

    fn partition_end(&mut self, m: &mut impl Mem) -> bool {
        if self.planning(m) {
            if !self.flush(self.records_end, m) {
                return false;
            }
            self.new_len[self.part as usize & (MAX_PARTITIONS - 1)] = self.o - self.records_out;
        }
        self.part += 1;
        let p = self.skip_tags(self.pos as usize, m);
        self.seek(p) && self.next_partition(m)
    }

    fn topic_end(&mut self, m: &mut impl Mem) -> bool {
        let p = self.skip_tags(self.pos as usize, m);
        self.seek(p) && self.next_topic()
    }

    fn tail(&mut self, m: &mut impl Mem) -> bool {
        let Some(p) = self.skip_tags(self.pos as usize, m) else {
            return self.stop(status::MALFORMED);
        };
        if p != self.end as usize {
            return self.stop(status::MALFORMED);
        }
        if !self.flush(self.end, m) {
            return false;
        }
        // The request's size.
        if !self.patch32(0, self.o - 4, m) {
            return false;
        }
        if self.planning(m) && self.injected > 0 {
            // Everything adds up: the second pass writes the output, in
            // the same run (the kernel verifies one loop, not two).
            self.emit();
            return true;
        }
        self.status = status::DONE;
        false
    }
}

/// Whether the 11 bytes at `p` spell `traceparent`: compared as two
/// words, not byte by byte. LLVM turns a byte-wise comparison (even an
/// OR of XORs) into a chain of branches, each of which the verifier then
/// follows separately: hundreds of thousands of instructions per header.
#[inline(always)]
fn is_traceparent_key(p: usize, byte: &impl Fn(usize) -> u8) -> bool {
    let mut w = 0u64;
    let mut k = 0;
    while k < 8 {
        w |= (byte(p + k) as u64) << (8 * k);
        k += 1;
    }
    let tail = byte(p + 8) as u64 | (byte(p + 9) as u64) << 8 | (byte(p + 10) as u64) << 16;
    (w ^ u64::from_le_bytes(*b"tracepar")) | (tail ^ (u32::from_le_bytes(*b"ent\0") as u64)) == 0
}

/// Skips one tagged field (its tag, its size and its bytes) at `pos`.
#[inline(always)]
fn skip_tag(pos: usize, end: usize, byte: &impl Fn(usize) -> u8) -> Option<usize> {
    let (_, p) = uvarint(pos, end, byte)?;
    let (size, p) = uvarint(p, end, byte)?;
    let q = p + size as usize;
    (q <= end).then_some(q)
}

/// Whether the walk through `m` reads a Fetch response.
#[inline(always)]
fn fetching<M: Mem>(_: &M) -> bool {
    M::FETCH
}

/// Skips a record's key or value: a varint length (-1: null) and its bytes.
#[inline(always)]
fn skip_bytes(pos: usize, end: usize, byte: &impl Fn(usize) -> u8) -> Option<usize> {
    let (n, p) = varint(pos, end, byte)?;
    let q = p + non_negative(n);
    (n >= -1 && q <= end).then_some(q)
}

/// Decodes `2 * N` lowercase hex digits at `at` into `out`; nonzero when
/// one is not a hex digit.
#[inline(always)]
fn unhex<const N: usize>(at: usize, out: &mut [u8; N], byte: &impl Fn(usize) -> u8) -> u8 {
    let mut bad = 0u8;
    let mut k = 0;
    while k < N {
        let hi = HEX_VALUE[byte(at + 2 * k) as usize];
        let lo = HEX_VALUE[byte(at + 2 * k + 1) as usize];
        bad |= (hi | lo) & NOT_HEX;
        out[k] = (hi & 15) << 4 | (lo & 15);
        k += 1;
    }
    bad
}

/// [`HEX_VALUE`] of a byte that is not a lowercase hex digit.
const NOT_HEX: u8 = 0x10;

/// Each byte's value as a lowercase hex digit, or [`NOT_HEX`]: a table,
/// so that decoding takes no branch.
static HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut k = 0;
    while k < 16 {
        t[HEX_DIGITS[k] as usize] = k as u8;
        k += 1;
    }
    t
};

/// A [`Mem`] over slices: the rewriter as userspace (tests, fuzzing) runs
/// it; `FETCH` as in [`Mem::FETCH`].
pub struct Slices<'a, const FETCH: bool> {
    pub input: &'a [u8],
    pub output: &'a mut [u8],
}

impl<const FETCH: bool> Mem for Slices<'_, FETCH> {
    const FETCH: bool = FETCH;

    fn get(&self, i: usize) -> u8 {
        self.input.get(i).copied().unwrap_or(0)
    }

    fn out(&self, i: usize) -> u8 {
        self.output.get(i).copied().unwrap_or(0)
    }

    fn copy(&mut self, to: usize, from: usize, n: usize) -> bool {
        match (
            self.output.get_mut(to..to + n),
            self.input.get(from..from + n),
        ) {
            (Some(d), Some(s)) => {
                d.copy_from_slice(s);
                true
            }
            _ => false,
        }
    }

    fn put<const N: usize>(&mut self, to: usize, bytes: &[u8; N]) -> bool {
        // A varint is written as all 5 bytes of its buffer; only what fits matters.
        let n = N.min(self.output.len().saturating_sub(to));
        self.output[to..to + n].copy_from_slice(&bytes[..n]);
        n > 0
    }
}

/// Runs `w` to its end; the steps taken.
pub fn run(w: &mut Walk, m: &mut impl Mem) -> u32 {
    while w.step(m) {}
    w.steps
}

/// The rewrite the kernel performs, as a pure function: `request` (a whole
/// Produce request, size field included) with a `traceparent` header added
/// to every record without one, into `out` (at least
/// `request.len() + MAX_GROWTH` bytes). Returns the walk (its `status`,
/// counts) and the rewritten length (0 when nothing was written).
pub fn rewrite_produce(
    request: &[u8],
    out: &mut [u8],
    trace: &[u8; 16],
    span: &[u8; 8],
    sampled: bool,
) -> (Walk, usize) {
    let mut w = Walk::EMPTY;
    let version = if request.len() >= 8 {
        u16::from_be_bytes([request[6], request[7]]) as u32
    } else {
        0
    };
    if request.len() >= MAX_REQUEST {
        w.status = status::BOUNDS;
        return (w, 0);
    }
    let span = TraceCtx {
        trace_id: *trace,
        span_id: *span,
        flags: if sampled { crate::ctxflag::SAMPLED } else { 0 },
        ..Default::default()
    };
    w.start(mode::PLAN, version, request.len() as u32, &span);
    let mut m = Slices::<false> {
        input: request,
        output: out,
    };
    run(&mut w, &mut m);
    if w.status != status::DONE || w.injected == 0 {
        return (w, 0);
    }
    w.emit();
    run(&mut w, &mut m);
    let n = if w.status == status::DONE {
        w.o as usize
    } else {
        0
    };
    (w, n)
}

/// The trace contexts in a whole Fetch response of API `version`.
pub fn scan_fetch(response: &[u8], version: u32) -> Walk {
    let mut w = Walk::EMPTY;
    w.start(
        mode::FETCH,
        version,
        response.len() as u32,
        &Default::default(),
    );
    let mut m = Slices::<true> {
        input: response,
        output: &mut [],
    };
    run(&mut w, &mut m);
    w
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use bytes::{Bytes, BytesMut};
    use indexmap::IndexMap;
    use kafka_protocol::{
        messages::{
            fetch_response::{FetchableTopicResponse, PartitionData},
            produce_request::{PartitionProduceData, TopicProduceData},
            FetchResponse, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
        },
        protocol::{Decodable, Encodable, HeaderVersion, StrBytes},
        records::{
            Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
            TimestampType,
        },
    };
    use std::{format, string::String, vec, vec::Vec};

    const TRACE: [u8; 16] = [0xab; 16];
    const SPAN: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn record(i: usize, key: usize, value: usize, headers: &[(&str, &[u8])]) -> Record {
        let mut h = IndexMap::new();
        for (k, v) in headers {
            h.insert(
                StrBytes::from_string(String::from(*k)),
                Some(Bytes::copy_from_slice(v)),
            );
        }
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: (key > 0).then(|| Bytes::from(vec![b'k'; key])),
            value: Some(Bytes::from(vec![(i % 251) as u8; value])),
            headers: h,
        }
    }

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    /// A whole Produce request (size field included) of `version` with
    /// the given (topic, [(partition, records bytes)]).
    fn produce(version: i16, topics: &[(&str, Vec<(i32, Bytes)>)]) -> Vec<u8> {
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 30_000;
        for (name, parts) in topics {
            let mut t = TopicProduceData::default();
            t.name = TopicName(StrBytes::from_string(String::from(*name)));
            t.topic_id = uuid_of(name);
            for (index, records) in parts {
                let mut p = PartitionProduceData::default();
                p.index = *index;
                p.records = Some(records.clone());
                t.partition_data.push(p);
            }
            req.topic_data.push(t);
        }
        let mut header = RequestHeader::default();
        header.request_api_key = api::PRODUCE;
        header.request_api_version = version;
        header.correlation_id = 42;
        header.client_id = Some(StrBytes::from_static_str("clew-test"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, ProduceRequest::header_version(version))
            .unwrap();
        req.encode(&mut body, version).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn uuid_of(name: &str) -> uuid::Uuid {
        let mut b = [0u8; 16];
        for (i, c) in name.bytes().enumerate() {
            b[i % 16] ^= c;
        }
        uuid::Uuid::from_bytes(b)
    }

    /// Decodes a whole Produce request: per batch (in request order) its records.
    fn decode(version: i16, bytes: &[u8]) -> Vec<(bool, Vec<Record>)> {
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize + 4,
            bytes.len()
        );
        let mut buf = Bytes::copy_from_slice(&bytes[4..]);
        let header =
            RequestHeader::decode(&mut buf, ProduceRequest::header_version(version)).unwrap();
        assert_eq!(header.correlation_id, 42);
        let req = ProduceRequest::decode(&mut buf, version).unwrap();
        assert!(buf.is_empty(), "trailing bytes");
        let mut out = Vec::new();
        for t in &req.topic_data {
            for p in &t.partition_data {
                let mut records = p.records.clone().unwrap();
                // Checks each batch's CRC.
                for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
                    out.push((set.compression != Compression::None, set.records));
                }
            }
        }
        out
    }

    fn value_for(k: u32) -> Vec<u8> {
        let span = TraceCtx {
            trace_id: TRACE,
            span_id: batch_span_id(SPAN, k),
            flags: crate::ctxflag::SAMPLED,
            ..Default::default()
        };
        let mut h = [0u8; TRACEPARENT_HEADER];
        traceparent_header(&mut h, &span);
        h[VALUE_AT..].to_vec()
    }

    /// Rewrites `req` and checks the result against the original, record by record.
    fn check(version: i16, req: &[u8]) -> Walk {
        let before = decode(version, req);
        let mut out = vec![0u8; req.len() + MAX_GROWTH];
        let (w, n) = rewrite_produce(req, &mut out, &TRACE, &SPAN, true);
        assert_eq!(w.status, status::DONE, "v{version}");
        if w.injected == 0 {
            assert_eq!(n, 0);
            return w;
        }
        let after = decode(version, &out[..n]);
        assert_eq!(before.len(), after.len());
        let mut injected = 0;
        for (k, ((compressed, b), (_, a))) in before.iter().zip(&after).enumerate() {
            assert_eq!(b.len(), a.len());
            if *compressed {
                assert_eq!(b, a);
                continue;
            }
            for (rb, ra) in b.iter().zip(a) {
                assert_eq!(
                    (&rb.key, &rb.value, rb.offset, rb.timestamp),
                    (&ra.key, &ra.value, ra.offset, ra.timestamp)
                );
                let tp = StrBytes::from_static_str("traceparent");
                if rb.headers.contains_key(&tp) {
                    assert_eq!(
                        rb.headers, ra.headers,
                        "a record's own traceparent is left alone"
                    );
                    continue;
                }
                injected += 1;
                let mut want = rb.headers.clone();
                want.insert(tp, Some(Bytes::from(value_for(k as u32))));
                assert_eq!(want, ra.headers);
            }
        }
        assert_eq!(injected, w.injected);
        w
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0u32,
            1,
            63,
            64,
            127,
            128,
            300,
            16383,
            16384,
            1 << 21,
            u32::MAX,
        ] {
            let mut b = [0u8; 5];
            let n = put_uvarint(v, &mut b);
            assert_eq!(uvarint(0, n, &|i| b[i]), Some((v, n)));
            assert_eq!(uvarint(0, n - 1, &|i| b[i]), None);
        }
        for v in [0i32, -1, 1, 55, -64, 64, 1 << 20] {
            let z = ((v << 1) ^ (v >> 31)) as u32;
            let mut b = [0u8; 5];
            let n = put_uvarint(z, &mut b);
            assert_eq!(varint(0, n, &|i| b[i]), Some((v, n)));
        }
        assert_eq!(zigzag(55), 110);
    }

    #[test]
    fn batch_span_ids_differ_in_the_last_byte() {
        assert_eq!(batch_span_id(SPAN, 0), SPAN);
        assert_eq!(batch_span_id(SPAN, 3), [1, 2, 3, 4, 5, 6, 7, 11]);
        assert_eq!(TRACEPARENT_HEADER, 68);
        let v = value_for(3);
        assert_eq!(
            core::str::from_utf8(&v).unwrap(),
            format!("00-{}-010203040506070b-01", "ab".repeat(16))
        );
    }

    #[test]
    fn requests_are_recognised_and_http_is_not() {
        let first = |b: &[u8]| {
            let mut a = [0u8; 9];
            let n = b.len().min(9);
            a[..n].copy_from_slice(&b[..n]);
            is_request_start(&a, b.len())
        };
        let req = produce(
            9,
            &[(
                "t",
                vec![(0, batch(&[record(0, 1, 1, &[])], Compression::None))],
            )],
        );
        assert!(first(&req));
        assert!(!first(b"GET / HTTP/1.1\r\n"));
        assert!(!first(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        // An HTTP/2 SETTINGS frame (as a client reads it first).
        assert!(!first(&[0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]));
        assert!(!first(&[0, 0, 0, 20, 0, 0]));
    }

    #[test]
    fn every_version_is_rewritten_record_by_record() {
        for version in PRODUCE_MIN as i16..=PRODUCE_MAX as i16 {
            let records: Vec<Record> = (0..5)
                .map(|i| record(i, i * 3, i * 40, &[("a", b"1")]))
                .collect();
            let req = produce(
                version,
                &[("topic", vec![(0, batch(&records, Compression::None))])],
            );
            let w = check(version, &req);
            assert_eq!((w.injected, w.batches), (5, 1), "v{version}");
        }
    }

    #[test]
    fn batches_over_topics_and_partitions_get_their_own_span_ids() {
        let b = |n: usize, v: usize| {
            let r: Vec<Record> = (0..n).map(|i| record(i, 0, v, &[])).collect();
            batch(&r, Compression::None)
        };
        for version in [3, 7, 9, 11] {
            let req = produce(
                version,
                &[
                    ("one", vec![(0, b(1, 0)), (1, b(3, 100)), (2, b(2, 5000))]),
                    ("two", vec![(5, b(10, 3))]),
                ],
            );
            let w = check(version, &req);
            assert_eq!((w.injected, w.batches), (16, 4));
        }
    }

    #[test]
    fn lengths_that_grow_a_varint_byte_stay_consistent() {
        // Records whose length crosses 63 and 8191 (zigzag: 1 to 2 and 2 to
        // 3 bytes) once the header is in; a partition whose compact length
        // crosses 127.
        for value in [0, 1, 40, 59, 60, 61, 62, 63, 64, 8100, 8124, 8125, 8130] {
            for version in [8, 9] {
                let req = produce(
                    version,
                    &[(
                        "t",
                        vec![(3, batch(&[record(1, 0, value, &[])], Compression::None))],
                    )],
                );
                check(version, &req);
            }
        }
    }

    #[test]
    fn own_traceparent_is_left_alone_and_all_own_is_not_rewritten() {
        let tp = b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-01";
        let mixed = [
            record(0, 1, 10, &[("traceparent", tp)]),
            record(1, 1, 10, &[]),
            record(2, 1, 10, &[("x", b"y"), ("traceparent", tp)]),
        ];
        let req = produce(9, &[("t", vec![(0, batch(&mixed, Compression::None))])]);
        let w = check(9, &req);
        assert_eq!((w.injected, w.own), (1, 2));
        let own = [record(0, 1, 10, &[("traceparent", tp)])];
        let req = produce(9, &[("t", vec![(0, batch(&own, Compression::None))])]);
        let w = check(9, &req);
        assert_eq!((w.injected, w.own), (0, 1));
    }

    #[test]
    fn compressed_batches_are_copied_as_they_are() {
        let r: Vec<Record> = (0..4).map(|i| record(i, 2, 30, &[])).collect();
        let gz = batch(&r, Compression::Gzip);
        let req = produce(
            9,
            &[(
                "t",
                vec![(0, gz.clone()), (1, batch(&r, Compression::None))],
            )],
        );
        let w = check(9, &req);
        assert_eq!((w.injected, w.compressed, w.batches), (4, 1, 2));
        let mut out = vec![0u8; req.len() + MAX_GROWTH];
        let (_, n) = rewrite_produce(&req, &mut out, &TRACE, &SPAN, true);
        let out = &out[..n];
        assert!(
            out.windows(gz.len()).any(|w| w == &gz[..]),
            "the gzip batch, bit for bit"
        );
        // Only compressed: nothing to write.
        let req = produce(9, &[("t", vec![(0, gz)])]);
        let w = check(9, &req);
        assert_eq!((w.injected, w.compressed), (0, 1));
    }

    #[test]
    fn a_bad_crc_or_truncation_stands_down() {
        let r = [record(0, 1, 10, &[])];
        let req = produce(9, &[("t", vec![(0, batch(&r, Compression::None))])]);
        let mut out = vec![0u8; req.len() + MAX_GROWTH];
        let mut bad = req.clone();
        // A byte of the value.
        let at = bad.len() - 6;
        bad[at] ^= 1;
        assert_eq!(
            rewrite_produce(&bad, &mut out, &TRACE, &SPAN, true)
                .0
                .status,
            status::CRC
        );
        for cut in 4..req.len() {
            let mut short = req[..cut].to_vec();
            short[..4].copy_from_slice(&(cut as u32 - 4).to_be_bytes());
            let (w, n) = rewrite_produce(&short, &mut out, &TRACE, &SPAN, true);
            assert_ne!(w.status, status::DONE, "cut at {cut}");
            assert_eq!(n, 0);
        }
        let mut old = req.clone();
        old[7] = 2;
        assert_eq!(
            rewrite_produce(&old, &mut out, &TRACE, &SPAN, true)
                .0
                .status,
            status::UNSUPPORTED
        );
    }

    #[test]
    fn bounds_stand_down() {
        let r: Vec<Record> = (0..MAX_RECORDS as usize + 1)
            .map(|i| record(i, 0, 0, &[]))
            .collect();
        let req = produce(9, &[("t", vec![(0, batch(&r, Compression::None))])]);
        let mut out = vec![0u8; req.len() + MAX_GROWTH];
        assert_eq!(
            rewrite_produce(&req, &mut out, &TRACE, &SPAN, true)
                .0
                .status,
            status::BOUNDS
        );
        let r: Vec<Record> = (0..MAX_RECORDS as usize)
            .map(|i| record(i, 0, 0, &[]))
            .collect();
        let req = produce(9, &[("t", vec![(0, batch(&r, Compression::None))])]);
        let mut out = vec![0u8; req.len() + MAX_GROWTH];
        assert_eq!(check(9, &req).injected, MAX_RECORDS);
        let many: Vec<(String, Vec<u8>)> = (0..MAX_HEADERS)
            .map(|i| (format!("h{i}"), vec![]))
            .collect();
        let hs: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let req = produce(
            9,
            &[(
                "t",
                vec![(0, batch(&[record(0, 0, 0, &hs)], Compression::None))],
            )],
        );
        assert_eq!(
            rewrite_produce(&req, &mut out, &TRACE, &SPAN, true)
                .0
                .status,
            status::BOUNDS
        );
        let big = produce(
            9,
            &[(
                "t",
                vec![(
                    0,
                    batch(&[record(0, 0, MAX_REQUEST, &[])], Compression::None),
                )],
            )],
        );
        assert_eq!(
            rewrite_produce(&big, &mut out, &TRACE, &SPAN, true)
                .0
                .status,
            status::BOUNDS
        );
    }

    /// Every single-byte change to a request either stands down or yields
    /// a rewrite that walks again with nothing left to inject (the fuzz
    /// target's property, over every position of real requests).
    #[test]
    fn byte_flips_stand_down_or_rewrite_consistently() {
        let r: Vec<Record> = (0..3).map(|i| record(i, 2, 20, &[("h", b"x")])).collect();
        for version in [3i16, 9] {
            let req = produce(version, &[("t", vec![(0, batch(&r, Compression::None))])]);
            let mut out = vec![0u8; req.len() + MAX_GROWTH];
            let mut again = vec![0u8; req.len() + 2 * MAX_GROWTH];
            for at in 4..req.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = req.clone();
                    bad[at] ^= flip;
                    let (w, n) = rewrite_produce(&bad, &mut out, &TRACE, &SPAN, true);
                    if n == 0 {
                        continue;
                    }
                    let (w2, n2) = rewrite_produce(&out[..n], &mut again, &TRACE, &SPAN, true);
                    assert_eq!(
                        (w2.status, w2.injected, n2, w2.own),
                        (status::DONE, 0, 0, w.injected + w.own),
                        "v{version}, byte {at} ^ {flip:#x}"
                    );
                }
            }
        }
    }

    fn fetch(version: i16, batches: &[Bytes]) -> Vec<u8> {
        let mut resp = FetchResponse::default();
        let mut t = FetchableTopicResponse::default();
        t.topic = TopicName(StrBytes::from_static_str("t"));
        t.topic_id = uuid_of("t");
        for (i, b) in batches.iter().enumerate() {
            let mut p = PartitionData::default();
            p.partition_index = i as i32;
            p.high_watermark = 10;
            p.aborted_transactions = (version >= 4).then(Vec::new);
            p.records = Some(b.clone());
            t.partitions.push(p);
        }
        resp.responses.push(t);
        let mut header = ResponseHeader::default();
        header.correlation_id = 7;
        let mut body = BytesMut::new();
        header
            .encode(&mut body, FetchResponse::header_version(version))
            .unwrap();
        resp.encode(&mut body, version).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// A Fetch v12 response tansu 0.6 sent kafka-python 3.0 (recorded with
    /// strace): three records of one Produce request, each with the
    /// `traceparent` the kernel injected, and a top-level tagged field.
    #[test]
    fn tansu_fetch_response_yields_the_injected_context() {
        let bytes = include_bytes!("../tests/fixtures/kafka/tansu_fetch_v12_kafka_python.bin");
        let w = scan_fetch(bytes, 12);
        assert_eq!((w.status, w.contexts, w.records), (status::DONE, 1, 3));
        assert_eq!(
            w.found.span_id,
            [0x35, 0xcb, 0x74, 0x2b, 0x70, 0x10, 0xac, 0xa2]
        );
    }

    #[test]
    fn fetch_responses_yield_their_one_context() {
        let tp = b"00-0123456789abcdef0123456789abcdef-1111111111111111-01";
        let other = b"00-0123456789abcdef0123456789abcdef-2222222222222222-00";
        for version in FETCH_MIN as i16..=FETCH_MAX as i16 {
            let one = batch(
                &[
                    record(0, 0, 5, &[("traceparent", tp)]),
                    record(1, 0, 5, &[]),
                ],
                Compression::None,
            );
            let w = scan_fetch(&fetch(version, &[one.clone(), one.clone()]), version as u32);
            assert_eq!(
                (w.status, w.contexts, w.records),
                (status::DONE, 1, 4),
                "v{version}"
            );
            assert_eq!(w.found.span_id, [0x11; 8]);
            assert_eq!(w.found.trace_id[..2], [0x01, 0x23]);
            assert_eq!(w.found.sampled, 1);
            let two = batch(
                &[record(0, 0, 5, &[("traceparent", other)])],
                Compression::None,
            );
            let w = scan_fetch(&fetch(version, &[one.clone(), two]), version as u32);
            assert_eq!((w.status, w.contexts), (status::DONE, 2));
            let gz = batch(
                &[record(0, 0, 5, &[("traceparent", tp)])],
                Compression::Gzip,
            );
            let w = scan_fetch(&fetch(version, &[one.clone(), gz]), version as u32);
            assert_eq!((w.status, w.compressed), (status::DONE, 1));
            // A partial batch at the end (the broker cut it at the size limit).
            let mut cut = one.to_vec();
            cut.truncate(cut.len() - 3);
            let w = scan_fetch(
                &fetch(version, &[one.clone(), Bytes::from(cut)]),
                version as u32,
            );
            assert_eq!((w.status, w.contexts, w.records), (status::DONE, 1, 2));
        }
    }
}
