//! HTTP/2 framing (RFC 9113) and HPACK (RFC 7541) facts the kernel's
//! `traceparent` injection relies on, kept here so userspace unit-tests the
//! very code the sk_msg program runs.
//!
//! Only what is needed to walk a header block without its decoder state:
//! each HPACK representation's byte length follows from the integer and
//! string-length encodings alone, so a block can be walked field by field
//! without the dynamic table. Field *names* are only known for literal
//! names, which is all the `traceparent` check needs (see [`scan_block`]).

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with a 9-byte header: length (24 bits), type, flags,
/// stream id (31 bits).
pub const FRAME_HEADER: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until the peer says otherwise: the kernel never
/// grows a frame beyond it.
pub const DEFAULT_MAX_FRAME: u32 = 16384;

/// Frame types.
pub mod frame {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const CONTINUATION: u8 = 9;
}

/// HEADERS frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// `traceparent`, as a plain HPACK string.
pub const TRACEPARENT_NAME: &[u8; 11] = b"traceparent";
/// `traceparent` Huffman-coded (RFC 7541 Appendix B). The code is canonical
/// and the padding is fixed (the EOS prefix, all ones, under 8 bits), so
/// every encoder produces exactly these bytes: an exact comparison finds a
/// Huffman-coded `traceparent` name, no more and no less. Field names are
/// lowercase in HTTP/2 (RFC 9113 §8.2.1), so no other spelling is valid.
pub const TRACEPARENT_NAME_HUFFMAN: &[u8; 8] = &[0x4d, 0x83, 0x21, 0x6b, 0x1d, 0x85, 0xa9, 0x3f];
/// Length of a `traceparent` value: `00-{32 hex}-{16 hex}-{2 hex}`.
pub const TRACEPARENT_VALUE: usize = 55;
/// The field the kernel inserts: a literal without indexing with a new
/// name (RFC 7541 §6.2.2: first byte 0x00), plain (not Huffman) name and
/// value. It never enters either side's dynamic table, so the encoder's and
/// the peer's decoder's tables stay in step.
pub const TRACEPARENT_FIELD: usize = 3 + TRACEPARENT_NAME.len() + TRACEPARENT_VALUE;
/// The field's bytes before its value.
pub const TRACEPARENT_FIELD_PREFIX: &[u8; 14] = &[
    0x00, 11, b't', b'r', b'a', b'c', b'e', b'p', b'a', b'r', b'e', b'n', b't', 55,
];

/// Bytes of a header block the kernel copies and walks; a larger block is
/// not scanned (and so never injected into).
pub const MAX_BLOCK_SCAN: usize = 8192;
/// HPACK representations walked per block at most.
pub const MAX_BLOCK_FIELDS: u32 = 64;

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; FRAME_HEADER]) -> FrameHeader {
        FrameHeader {
            len: (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32,
            ty: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Where the header block fragment lies in this HEADERS frame's
    /// payload, as `(start, end)` offsets into the payload: after the pad
    /// length and priority fields, before the padding. `pad` is the
    /// payload's first byte (read only when `PADDED` is set). `None` when
    /// the frame is malformed (padding longer than the payload).
    pub fn block(&self, pad: u8) -> Option<(u32, u32)> {
        let mut start = 0;
        let mut end = self.len;
        if self.flags & flag::PADDED != 0 {
            start += 1;
            end = end.checked_sub(pad as u32)?;
        }
        if self.flags & flag::PRIORITY != 0 {
            start += 5;
        }
        (start <= end).then_some((start, end))
    }
}

/// What a walk over a header block found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockScan {
    /// Every representation was walked and the last one ends exactly at
    /// the block's end. When false nothing else here is reliable.
    pub complete: bool,
    /// Representations walked (fields and table size updates).
    pub fields: u32,
    /// A literal named `traceparent` (plain or Huffman) is in the block.
    pub traceparent: bool,
    /// ... and one of them is a literal *with incremental indexing*: the
    /// name now sits in both dynamic tables, so a later request on the
    /// connection can carry a `traceparent` as a one-byte dynamic index
    /// that no walk can recognise.
    pub indexes_traceparent: bool,
    /// The same for `tracestate`.
    pub tracestate: bool,
    pub indexes_tracestate: bool,
}

/// Decodes an HPACK integer (RFC 7541 §5.1) with an `prefix`-bit prefix
/// starting at `pos`, from a block of `len` bytes read through `byte`.
/// Returns the value and the position after it; `None` when it runs past
/// the block or is longer than 4 continuation bytes (over 2^28: no field
/// in a block the kernel walks is that long).
#[inline(always)]
pub fn integer(
    pos: usize,
    len: usize,
    prefix: u32,
    byte: &impl Fn(usize) -> u8,
) -> Option<(u32, usize)> {
    if pos >= len {
        return None;
    }
    let mask = (1u32 << prefix) - 1;
    let mut v = byte(pos) as u32 & mask;
    let mut p = pos + 1;
    if v < mask {
        return Some((v, p));
    }
    let mut shift = 0;
    let mut k = 0;
    while k < 4 {
        if p >= len {
            return None;
        }
        let b = byte(p) as u32;
        p += 1;
        v += (b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((v, p));
        }
        shift += 7;
        k += 1;
    }
    None
}

/// Walks the header block of `len` bytes read through `byte` (which must
/// accept any index below `len`), at most [`MAX_BLOCK_FIELDS`]
/// representations, and reports whether it names `traceparent`.
///
/// Indexed fields (static or dynamic) are skipped: the static table has no
/// `traceparent`, and a dynamic entry can only hold one if a literal with
/// incremental indexing put it there first, which this walk reports
/// (`indexes_traceparent`) so the caller stops trusting the connection.
pub fn scan_block(len: usize, byte: &impl Fn(usize) -> u8) -> BlockScan {
    let mut w = Walk::new(len);
    while w.step(byte) {}
    w.out
}

/// A walk over a header block, one representation per [`Walk::step`]: the
/// kernel runs the steps from `bpf_loop` with the walk in map memory, so the
/// verifier checks one step instead of every path through the block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    pub pos: usize,
    pub len: usize,
    pub out: BlockScan,
}

impl Walk {
    pub fn new(len: usize) -> Walk {
        Walk {
            pos: 0,
            len,
            out: BlockScan::default(),
        }
    }

    /// Walks one representation. False when the walk is over: at the
    /// block's end (`out.complete`), on a malformed representation, or
    /// after [`MAX_BLOCK_FIELDS`].
    #[inline(always)]
    pub fn step(&mut self, byte: &impl Fn(usize) -> u8) -> bool {
        let len = self.len;
        let mut pos = self.pos;
        if pos == len {
            self.out.complete = true;
            return false;
        }
        if pos > len || self.out.fields >= MAX_BLOCK_FIELDS {
            return false;
        }
        self.out.fields += 1;
        let b = byte(pos);
        let (prefix, indexing) = if b & 0x80 != 0 {
            // Indexed field: nothing but the index.
            return match integer(pos, len, 7, byte) {
                Some((i, p)) if i != 0 => {
                    self.pos = p;
                    true
                }
                _ => false,
            };
        } else if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            return match integer(pos, len, 5, byte) {
                Some((_, p)) => {
                    self.pos = p;
                    true
                }
                None => false,
            };
        } else if b & 0xc0 == 0x40 {
            (6, true)
        } else {
            // Without indexing (0000) or never indexed (0001).
            (4, false)
        };
        let Some((name_index, p)) = integer(pos, len, prefix, byte) else {
            return false;
        };
        pos = p;
        if name_index == 0 {
            if pos >= len {
                return false;
            }
            let huffman = byte(pos) & 0x80 != 0;
            let Some((n, p)) = integer(pos, len, 7, byte) else {
                return false;
            };
            let n = n as usize;
            if p + n > len {
                return false;
            }
            if is_traceparent(p, n, huffman, byte) {
                self.out.traceparent = true;
                self.out.indexes_traceparent |= indexing;
            } else if is_tracestate(p, n, huffman, byte) {
                self.out.tracestate = true;
                self.out.indexes_tracestate |= indexing;
            }
            pos = p + n;
        }
        // The value.
        let Some((n, p)) = integer(pos, len, 7, byte) else {
            return false;
        };
        if p + n as usize > len {
            return false;
        }
        self.pos = p + n as usize;
        true
    }
}

#[inline(always)]
fn is_traceparent(at: usize, n: usize, huffman: bool, byte: &impl Fn(usize) -> u8) -> bool {
    if huffman {
        n == TRACEPARENT_NAME_HUFFMAN.len() && same(at, TRACEPARENT_NAME_HUFFMAN, byte)
    } else {
        n == TRACEPARENT_NAME.len() && same(at, TRACEPARENT_NAME, byte)
    }
}

#[inline(always)]
fn is_tracestate(at: usize, n: usize, huffman: bool, byte: &impl Fn(usize) -> u8) -> bool {
    use crate::tracestate::{NAME, NAME_HUFFMAN};
    if huffman {
        n == NAME_HUFFMAN.len() && same(at, NAME_HUFFMAN, byte)
    } else {
        n == NAME.len() && same(at, NAME, byte)
    }
}

#[inline(always)]
fn same<const N: usize>(at: usize, want: &[u8; N], byte: &impl Fn(usize) -> u8) -> bool {
    let mut k = 0;
    while k < N {
        if byte(at + k) != want[k] {
            return false;
        }
        k += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|c| u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect()
    }

    fn scan(block: &[u8]) -> BlockScan {
        scan_block(block.len(), &|i| block[i])
    }

    #[test]
    fn integers_follow_rfc7541_c1() {
        // C.1.1: 10 in a 5-bit prefix; C.1.2: 1337 in a 5-bit prefix; C.1.3: 42 at an octet boundary.
        let b = [0x0a];
        assert_eq!(integer(0, 1, 5, &|i| b[i]), Some((10, 1)));
        let b = [0x1f, 0x9a, 0x0a];
        assert_eq!(integer(0, 3, 5, &|i| b[i]), Some((1337, 3)));
        let b = [0x2a];
        assert_eq!(integer(0, 1, 8, &|i| b[i]), Some((42, 1)));
        // Runs past the end; too many continuation bytes.
        assert_eq!(integer(0, 2, 5, &|i| b"\x1f\x9a"[i]), None);
        let b = [0x1f, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(integer(0, 6, 5, &|i| b[i]), None);
    }

    /// RFC 7541 C.3 (requests without Huffman) and C.4 (with Huffman):
    /// real blocks of one connection, including dynamic-table indices.
    #[test]
    fn walks_the_rfc_request_examples() {
        for block in [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ] {
            let s = scan(&hex(block));
            assert!(s.complete, "{block}: {s:?}");
            assert!(!s.traceparent, "{block}");
        }
    }

    #[test]
    fn finds_traceparent_plain_and_huffman_and_notes_indexing() {
        let value = [b'0'; 55];
        // Without indexing, plain: exactly the field the kernel inserts.
        let mut ours = TRACEPARENT_FIELD_PREFIX.to_vec();
        ours.extend_from_slice(&value);
        assert_eq!(ours.len(), TRACEPARENT_FIELD);
        let mut block = hex("8286 84");
        block.extend_from_slice(&ours);
        let s = scan(&block);
        assert!(
            s.complete && s.traceparent && !s.indexes_traceparent,
            "{s:?}"
        );
        // With incremental indexing, Huffman name (as Python's hpack sends it).
        let mut block = hex("8286 84 40 88");
        block.extend_from_slice(TRACEPARENT_NAME_HUFFMAN);
        block.push(55);
        block.extend_from_slice(&value);
        let s = scan(&block);
        assert!(
            s.complete && s.traceparent && s.indexes_traceparent,
            "{s:?}"
        );
        // Never indexed, plain.
        let mut block = hex("82 10 0b");
        block.extend_from_slice(TRACEPARENT_NAME);
        block.extend_from_slice(&[3, b'a', b'b', b'c']);
        let s = scan(&block);
        assert!(
            s.complete && s.traceparent && !s.indexes_traceparent,
            "{s:?}"
        );
        // tracestate, plain without indexing and Huffman with indexing.
        let mut block = hex("82");
        block.extend_from_slice(crate::tracestate::FIELD_PREFIX);
        block.extend_from_slice(&[3, b'a', b'=', b'1']);
        let s = scan(&block);
        assert!(
            s.complete && s.tracestate && !s.indexes_tracestate && !s.traceparent,
            "{s:?}"
        );
        let mut block = hex("82 40 87");
        block.extend_from_slice(crate::tracestate::NAME_HUFFMAN);
        block.extend_from_slice(&[3, b'a', b'=', b'1']);
        let s = scan(&block);
        assert!(s.complete && s.tracestate && s.indexes_tracestate, "{s:?}");
        // A Huffman name of the same length that is not traceparent.
        let mut block = hex("82 40 88");
        block.extend_from_slice(&[0x4d, 0x83, 0x21, 0x6b, 0x1d, 0x85, 0xa9, 0x3e]);
        block.extend_from_slice(&[1, b'x']);
        let s = scan(&block);
        assert!(s.complete && !s.traceparent, "{s:?}");
    }

    /// Blocks from Python's `hpack` 4.2 (Huffman everywhere, incremental
    /// indexing): `:method GET, :path /a, :scheme http, :authority x,
    /// traceparent 00-…-01` twice on one connection (the second time all
    /// dynamic indices, `traceparent` included), and one from an encoder
    /// with a 256-byte table: a size update first and a 300-byte value.
    #[test]
    fn walks_python_hpack_blocks() {
        let first = hex(
            "824482607f864181f340884d83216b1d85a93fa7001600e575c6c2f85c248d33248f34d3c58c4109\
             1e03217c8b46e8e4723742e3e2032cb215801f",
        );
        let s = scan(&first);
        assert!(
            s.complete && s.indexes_traceparent && s.fields == 5,
            "{s:?}"
        );
        let again = scan(&hex("82c086bfbe"));
        assert!(
            again.complete && !again.traceparent && again.fields == 5,
            "{again:?}"
        );
        // The 300 'v's Huffman-code to 263 bytes (length `ff 88 01`); then
        // `user-agent: t` with an indexed name.
        let mut long = hex("3fe1018344846283d537864181f34085f2b507aa6fff8801");
        long.extend([0xdf; 263]);
        long.extend(hex("7a814f"));
        let s = scan(&long);
        assert!(s.complete && !s.traceparent && s.fields == 7, "{s:?}");
    }

    #[test]
    fn stops_on_truncated_or_oversized_blocks() {
        // A literal whose value runs past the block.
        let s = scan(&hex("82 00 03 61 62 63 05 61"));
        assert!(!s.complete);
        // Index 0 is a decoding error.
        assert!(!scan(&hex("80")).complete);
        // More representations than are walked.
        let many = [0x82u8; MAX_BLOCK_FIELDS as usize + 1];
        assert!(!scan(&many).complete);
        let enough = [0x82u8; MAX_BLOCK_FIELDS as usize];
        assert!(scan(&enough).complete);
        // A table size update at the start is walked over.
        let s = scan(&hex("3fe1 1f 82 86 84"));
        assert!(s.complete && s.fields == 4, "{s:?}");
    }

    #[test]
    fn frame_headers_and_block_bounds() {
        let h = FrameHeader::parse(&[0, 0x01, 0x02, 1, 0x2d, 0x80, 0, 0, 3]);
        assert_eq!(
            h,
            FrameHeader {
                len: 258,
                ty: frame::HEADERS,
                flags: 0x2d,
                stream: 3
            }
        );
        // PADDED (pad 10) and PRIORITY: 1 + 5 bytes before, 10 after.
        assert_eq!(h.block(10), Some((6, 248)));
        let plain = FrameHeader {
            flags: flag::END_HEADERS,
            ..h
        };
        assert_eq!(plain.block(200), Some((0, 258)));
        let bad = FrameHeader { len: 4, ..h };
        assert_eq!(bad.block(10), None);
        assert_eq!(TRACEPARENT_FIELD, 69);
    }
}
