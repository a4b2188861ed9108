//! A bounded scan of an HTTP/1 request head held in map memory: where the
//! request line and the headers end, and where the `traceparent`,
//! `tracestate`, `content-length` and `transfer-encoding` values start.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use clew_common::{http1::le, SCAN_BYTES};

use crate::zero::zeroed;

const MASK: usize = SCAN_BYTES - 1;
/// Bytes after a newline the matcher reads: the longest name it compares
/// (`transfer-encoding:`).
const LOOKAHEAD: usize = 20;
/// Slack after `buf` so word loads at any masked offset stay in bounds.
const SLACK: usize = 64;

#[repr(C)]
pub struct Head {
    pub buf: [u8; SCAN_BYTES + SLACK],
    pub found: Found,
}

/// What a scan found in `Head::buf`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Found {
    /// Offsets just past the request line and past the blank line (0: not found).
    pub line_end: u32,
    pub hdr_end: u32,
    /// Offsets of the first byte after `name:` (0: header absent).
    pub traceparent: u32,
    /// Nonzero when `traceparent` appears more than once: the request's
    /// context is then invalid (userspace agrees, see `trace_context::single`).
    pub traceparent_repeated: u32,
    pub tracestate: u32,
    /// Nonzero when `tracestate` appears more than once: the kernel then
    /// carries none (userspace joins the lines into one list).
    pub tracestate_repeated: u32,
    pub content_length: u32,
    pub chunked: u32,
}

#[inline(always)]
pub fn at(buf: &[u8; SCAN_BYTES + SLACK], i: usize) -> u8 {
    buf[i & MASK]
}

#[inline(always)]
fn word(buf: &[u8; SCAN_BYTES + SLACK], i: usize) -> u64 {
    // SAFETY: the masked offset plus 8 stays inside buf thanks to SLACK.
    unsafe { core::ptr::read_unaligned(buf.as_ptr().add(i & MASK) as *const u64) }
}

/// ASCII letters to lower case; harmless on the digits and `-:` compared here.
const LOWER: u64 = 0x2020_2020_2020_2020;

/// True if `buf` starts with a method token used by real clients and a space.
#[inline(always)]
pub fn starts_with_method(buf: &[u8; SCAN_BYTES + SLACK]) -> bool {
    clew_common::http1::is_method_word(word(buf, 0))
}

/// Scans the first `len` bytes. Returns true when the whole head (up to
/// the blank line) lies within them.
///
/// The loop runs through `bpf_loop`, so the verifier checks one iteration
/// with an unknown index instead of walking every position. Each iteration
/// takes a word: only words holding a newline are looked at byte by byte.
#[inline(always)]
pub fn scan(h: &mut Head, len: u32) -> bool {
    // Not field by field: the compiler would merge those stores into a
    // byte-at-a-time `memset` call.
    h.found = zeroed();
    let mut c = ScanCtx {
        h: h as *mut Head,
        len: len as u64,
    };
    unsafe {
        bpf_loop(
            (SCAN_BYTES / 8) as u32,
            step as *const () as *mut c_void,
            &mut c as *mut ScanCtx as *mut c_void,
            0,
        )
    };
    // SAFETY: written by `step` through a pointer the compiler cannot see.
    unsafe { core::ptr::read_volatile(&h.found.hdr_end) != 0 }
}

#[repr(C)]
struct ScanCtx {
    h: *mut Head,
    len: u64,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// One word (8 byte positions); returns 1 to stop the loop.
extern "C" fn step(k: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut ScanCtx) };
    let h = unsafe { &mut *c.h };
    let base = ((k as usize) * 8) & MASK;
    let len = c.len as usize;
    if base + 1 >= len {
        return 1;
    }
    // Nonzero when some byte of the word may be a newline (a false hit
    // above a real one is possible, and checked byte by byte below).
    let x = word(&h.buf, base) ^ (ONES * b'\n' as u64);
    if x.wrapping_sub(ONES) & !x & HIGHS == 0 {
        return 0;
    }
    let mut j = 0;
    while j < 8 {
        let i = base + j;
        // A newline in the last byte cannot be told from a split head yet.
        if i + 1 >= len {
            return 1;
        }
        if at(&h.buf, i) == b'\n' && line(h, i + 1, len) {
            return 1;
        }
        j += 1;
    }
    0
}

/// A line starts at `n`: note where the request line ends, the headers
/// end, and the headers worth knowing start. Returns true at the blank line.
#[inline(always)]
fn line(h: &mut Head, n: usize, len: usize) -> bool {
    if h.found.line_end == 0 {
        h.found.line_end = n as u32;
    }
    let crlf = n + 2 <= len && at(&h.buf, n) == b'\r' && at(&h.buf, n + 1) == b'\n';
    if crlf || at(&h.buf, n) == b'\n' {
        h.found.hdr_end = (n + 1 + crlf as usize) as u32;
        return true;
    }
    if n + LOOKAHEAD > len {
        return false;
    }
    let w = word(&h.buf, n) | LOWER;
    let w2 = word(&h.buf, n + 8) | LOWER;
    if w == le(b"tracepar") && (w2 & 0xffff_ffff) == le(b"ent:") {
        if h.found.traceparent != 0 {
            h.found.traceparent_repeated = 1;
        }
        h.found.traceparent = (n + 12) as u32;
    } else if w == le(b"tracesta") && (w2 & 0xff_ffff) == le(b"te:") {
        if h.found.tracestate != 0 {
            h.found.tracestate_repeated = 1;
        }
        h.found.tracestate = (n + 11) as u32;
    } else if w == le(b"content-") && (w2 & 0xff_ffff_ffff_ffff) == le(b"length:") {
        h.found.content_length = (n + 15) as u32;
    } else if w == le(b"transfer") {
        h.found.chunked = 1;
    }
    false
}

/// Skips optional whitespace after a header's colon.
#[inline(always)]
pub fn value_start(h: &Head, off: u32) -> usize {
    let mut p = off as usize;
    if at(&h.buf, p) == b' ' || at(&h.buf, p) == b'\t' {
        p += 1;
    }
    if at(&h.buf, p) == b' ' || at(&h.buf, p) == b'\t' {
        p += 1;
    }
    p
}

/// The Content-Length value; None when absent, malformed or absurd.
#[inline(always)]
pub fn content_length(h: &Head) -> Option<u64> {
    if h.found.content_length == 0 {
        return Some(0);
    }
    let p = value_start(h, h.found.content_length);
    let mut v: u64 = 0;
    let mut k = 0;
    while k < 16 {
        let c = at(&h.buf, p + k);
        if c.is_ascii_digit() {
            v = v * 10 + (c - b'0') as u64;
        } else if k == 0 {
            return None;
        } else {
            return Some(v);
        }
        k += 1;
    }
    None
}

#[inline(always)]
fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline(always)]
fn decode(h: &Head, p: usize, out: &mut [u8]) -> Option<()> {
    let mut k = 0;
    while k < out.len() && k < 16 {
        out[k] = (hex(at(&h.buf, p + 2 * k))? << 4) | hex(at(&h.buf, p + 2 * k + 1))?;
        k += 1;
    }
    Some(())
}

/// The incoming `traceparent`: (trace id, parent span id, sampled), by
/// the W3C rules: lower-case hex only, no all-zero id, version `ff`
/// invalid, version `00` exactly 55 characters, a later version parsed by
/// its first four fields (anything after them starts with `-`), and a
/// repeated header invalid.
#[inline(always)]
pub fn traceparent(h: &Head) -> Option<([u8; 16], [u8; 8], bool)> {
    if h.found.traceparent == 0 || h.found.traceparent_repeated != 0 {
        return None;
    }
    let p = value_start(h, h.found.traceparent);
    let mut version = [0u8; 1];
    decode(h, p, &mut version)?;
    if version[0] == 0xff || at(&h.buf, p + 2) != b'-' {
        return None;
    }
    if at(&h.buf, p + 35) != b'-' || at(&h.buf, p + 52) != b'-' {
        return None;
    }
    let next = at(&h.buf, p + 55);
    let ends = matches!(next, b'\r' | b'\n' | b' ' | b'\t');
    if !ends && (version[0] == 0 || next != b'-') {
        return None;
    }
    let mut trace: [u8; 16] = zeroed();
    let mut parent = [0u8; 8];
    let mut flags = [0u8; 1];
    decode(h, p + 3, &mut trace)?;
    decode(h, p + 36, &mut parent)?;
    decode(h, p + 53, &mut flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0] & 1 == 1))
}
