//! W3C `tracestate` (Trace Context Level 1, §3.3): the validity rules the
//! kernel applies to an incoming value before it carries it on into the
//! requests a serving thread sends, and userspace before it records it on
//! spans. Both run this one checker, a byte at a time (the kernel from
//! `bpf_loop`, with the checker in map memory), so they agree on every
//! value; and the bytes the kernel writes for it, as an HTTP/1 header line
//! or an HPACK field.

/// Most list members a `tracestate` may have.
pub const MAX_MEMBERS: u32 = 32;
/// Longest list, members and the commas between them, that is kept: the
/// specification asks vendors to propagate at least 512 characters and
/// lets them drop whole members beyond; Clew drops the whole value.
pub const MAX_LEN: u32 = 512;
/// Longest header value (optional whitespace inside it included) the
/// kernel carries: a longer one is not carried at all.
pub const CARRY_BYTES: usize = 512;
/// Longest key and value of one member.
const MAX_KEY: u32 = 256;
const MAX_TENANT: u32 = 241;
const MAX_SYSTEM: u32 = 14;
const MAX_VALUE: u32 = 256;

/// `tracestate`, as a plain HPACK string.
pub const NAME: &[u8; 10] = b"tracestate";
/// `tracestate` Huffman-coded (RFC 7541 Appendix B; canonical, see
/// [`crate::h2::TRACEPARENT_NAME_HUFFMAN`]).
pub const NAME_HUFFMAN: &[u8; 7] = &[0x4d, 0x83, 0x21, 0x50, 0x91, 0xa4, 0xbf];
/// The HTTP/1 header line the kernel inserts, before its value (which
/// `\r\n` follows).
pub const LINE_PREFIX: &[u8; 12] = b"tracestate: ";
/// The HPACK field the kernel inserts, before its value's length: a
/// literal without indexing with a new, plain name (RFC 7541 §6.2.2),
/// like the `traceparent` one (`h2::TRACEPARENT_FIELD_PREFIX`).
pub const FIELD_PREFIX: &[u8; 12] = &[
    0x00, 10, b't', b'r', b'a', b'c', b'e', b's', b't', b'a', b't', b'e',
];
/// Longest line or field the kernel writes: the prefix, a value of
/// [`CARRY_BYTES`] and its end (`\r\n`, or a 3-byte HPACK length).
pub const MAX_WRITTEN: usize = 12 + 3 + CARRY_BYTES;

/// Bytes of the HTTP/1 line carrying a value of `n` bytes.
pub const fn line_len(n: usize) -> usize {
    LINE_PREFIX.len() + n + 2
}

/// The HPACK length of a plain string of `n` bytes (a 7-bit prefix, H
/// clear): its bytes in `out`, and how many there are (1 to 3 for any
/// `n` up to [`CARRY_BYTES`]).
pub fn hpack_length(n: usize, out: &mut [u8; 3]) -> usize {
    if n < 127 {
        out[0] = n as u8;
        return 1;
    }
    out[0] = 127;
    let rest = n - 127;
    if rest < 128 {
        out[1] = rest as u8;
        return 2;
    }
    out[1] = 0x80 | (rest & 0x7f) as u8;
    out[2] = (rest >> 7) as u8;
    3
}

const BETWEEN: u8 = 0;
const KEY: u8 = 1;
const VALUE: u8 = 2;
const INVALID: u8 = 3;

/// A check over a `tracestate` value, fed one byte at a time
/// ([`Check::step`]) and concluded by [`Check::finish`]. Valid: 1 to 32
/// members (empty members and optional whitespace around them allowed,
/// not counted), each `key=value` by the specification's grammar, no key
/// twice, at most 512 bytes once members are joined by single commas.
///
/// Keys are compared by a 64-bit hash: two different keys that collide
/// make a valid value look invalid, never the reverse.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Check {
    state: u8,
    /// The key holds an `@`: [`Check::at`] is where.
    tenant: u8,
    /// The byte just read was the `@`: the system id starts next.
    after_at: u8,
    /// The current value ends in optional whitespace holding a tab,
    /// which a value may not contain.
    trailing_tab: u8,
    /// The current key's first byte.
    first: u8,
    _pad: [u8; 3],
    members: u32,
    /// Bytes of the members so far joined by commas.
    len: u32,
    key_len: u32,
    at: u32,
    value_len: u32,
    /// Spaces and tabs after the value's last other byte.
    trailing: u32,
    /// Bytes stepped over, and the first and last (+1) that are not
    /// optional whitespace: the value as an HTTP field (RFC 9110 §5.5).
    pos: u32,
    begin: u32,
    end: u32,
    key_hash: u64,
    keys: [u64; MAX_MEMBERS as usize],
}

impl Default for Check {
    fn default() -> Self {
        Check::new()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

#[inline(always)]
fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

/// `nblk-chr`: a printable byte other than space, `,` and `=`.
#[inline(always)]
fn value_char(c: u8) -> bool {
    (0x21..=0x7e).contains(&c) && c != b',' && c != b'='
}

impl Check {
    pub const fn new() -> Check {
        Check {
            state: BETWEEN,
            tenant: 0,
            after_at: 0,
            trailing_tab: 0,
            first: 0,
            _pad: [0; 3],
            members: 0,
            len: 0,
            key_len: 0,
            at: 0,
            value_len: 0,
            trailing: 0,
            pos: 0,
            begin: 0,
            end: 0,
            key_hash: 0,
            keys: [0; MAX_MEMBERS as usize],
        }
    }

    /// Starts over, in place (the kernel keeps a `Check` in map memory:
    /// building a new one would go through its small stack). Keys past
    /// the member count are never read, so they are left as they are.
    #[inline(always)]
    pub fn reset(&mut self) {
        self.state = BETWEEN;
        self.tenant = 0;
        self.after_at = 0;
        self.trailing_tab = 0;
        self.first = 0;
        self.members = 0;
        self.len = 0;
        self.key_len = 0;
        self.at = 0;
        self.value_len = 0;
        self.trailing = 0;
        self.pos = 0;
        self.begin = 0;
        self.end = 0;
        self.key_hash = 0;
    }

    /// Takes the next byte of the value. False once the value is invalid
    /// (nothing after it can make it valid again).
    #[inline(always)]
    pub fn step(&mut self, c: u8) -> bool {
        let ows = c == b' ' || c == b'\t';
        if !ows {
            if self.end == 0 {
                self.begin = self.pos;
            }
            self.end = self.pos + 1;
        }
        self.pos += 1;
        match self.state {
            BETWEEN if !ows && c != b',' => self.start_key(c),
            KEY => self.key_byte(c),
            VALUE => {
                if c == b',' {
                    self.end_member();
                } else if ows {
                    self.trailing += 1;
                    if c == b'\t' {
                        self.trailing_tab = 1;
                    }
                } else if value_char(c) && self.trailing_tab == 0 {
                    // Spaces inside a value are part of it; tabs are not.
                    self.value_len += self.trailing + 1;
                    self.trailing = 0;
                } else {
                    self.state = INVALID;
                }
            }
            _ => {}
        }
        self.state != INVALID
    }

    #[inline(always)]
    fn start_key(&mut self, c: u8) {
        // A key starts with a lower-case letter, or with a digit when it
        // turns out to be `tenant@system`.
        if self.members >= MAX_MEMBERS || !(c.is_ascii_lowercase() || c.is_ascii_digit()) {
            self.state = INVALID;
            return;
        }
        self.state = KEY;
        self.key_len = 1;
        self.tenant = 0;
        self.after_at = 0;
        self.at = 0;
        self.first = c;
        self.key_hash = (FNV_OFFSET ^ c as u64).wrapping_mul(FNV_PRIME);
    }

    #[inline(always)]
    fn key_byte(&mut self, c: u8) {
        if c == b'=' {
            self.end_key();
            return;
        }
        let ok = if c == b'@' {
            self.tenant == 0
        } else if self.after_at != 0 {
            c.is_ascii_lowercase()
        } else {
            key_char(c)
        };
        if !ok {
            self.state = INVALID;
            return;
        }
        self.after_at = 0;
        if c == b'@' {
            self.tenant = 1;
            self.after_at = 1;
            self.at = self.key_len;
        }
        self.key_len += 1;
        self.key_hash = (self.key_hash ^ c as u64).wrapping_mul(FNV_PRIME);
    }

    #[inline(always)]
    fn end_key(&mut self) {
        let ok = if self.tenant == 0 {
            // A simple key may not start with a digit.
            self.first.is_ascii_lowercase() && self.key_len <= MAX_KEY
        } else {
            let system = self.key_len - self.at - 1;
            self.at <= MAX_TENANT && (1..=MAX_SYSTEM).contains(&system)
        };
        if !ok {
            self.state = INVALID;
            return;
        }
        let mut k = 0;
        while k < MAX_MEMBERS {
            if k >= self.members {
                break;
            }
            if self.keys[(k & (MAX_MEMBERS - 1)) as usize] == self.key_hash {
                self.state = INVALID;
                return;
            }
            k += 1;
        }
        self.keys[(self.members & (MAX_MEMBERS - 1)) as usize] = self.key_hash;
        self.state = VALUE;
        self.value_len = 0;
        self.trailing = 0;
        self.trailing_tab = 0;
    }

    #[inline(always)]
    fn end_member(&mut self) {
        if self.value_len == 0 || self.value_len > MAX_VALUE {
            self.state = INVALID;
            return;
        }
        let comma = (self.members > 0) as u32;
        self.len += comma + self.key_len + 1 + self.value_len;
        self.members += 1;
        self.state = BETWEEN;
    }

    /// Whether the value stepped over is valid.
    pub fn finish(&mut self) -> bool {
        match self.state {
            VALUE => self.end_member(),
            KEY => self.state = INVALID,
            _ => {}
        }
        self.state != INVALID && self.members > 0 && self.len <= MAX_LEN
    }

    /// Where the value lies in the bytes stepped over, less the optional
    /// whitespace around it: `(offset, length)`.
    pub fn trimmed(&self) -> (u32, u32) {
        (self.begin, self.end - self.begin)
    }
}

/// [`Check`] over a whole value.
pub fn valid(value: &[u8]) -> bool {
    let mut c = Check::new();
    for &b in value {
        if !c.step(b) {
            return false;
        }
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{format, string::String, vec::Vec};

    fn ok(v: &str) -> bool {
        valid(v.as_bytes())
    }

    #[test]
    fn the_specification_s_examples_are_valid() {
        for v in [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            " congo=t61rcWkgMzE,, rojo=00f067aa0ba902b7 ,t@sys=1",
            "a=b\t, \tc=d ",
            "fw529a3039@dt=FW4gGZOcCd4",
            "0tenant@vendor=x",
            "ot=th:c;rv:6e6d1a75832a2f",
            "a= spaces inside ok",
            "k=v!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~",
        ] {
            assert!(ok(v), "{v}");
        }
    }

    #[test]
    fn malformed_values_are_invalid() {
        for v in [
            "",
            " , ",
            "Congo=1",
            "1a=1",
            "a=",
            "a= ",
            "a=b=c",
            "a=1,a=2",
            "a",
            "a=x\u{7f}",
            "a=x\ty",
            "a b=1",
            "a@=1",
            "a@1=1",
            "a@b@c=1",
            "@b=1",
            "a=1,=2",
            "a\r=1",
        ] {
            assert!(!ok(v), "{v:?}");
        }
    }

    #[test]
    fn limits_are_the_specification_s() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(ok(&members(32)));
        assert!(!ok(&members(33)));
        assert!(ok(&format!("k={}", "v".repeat(256))));
        assert!(!ok(&format!("k={}", "v".repeat(257))));
        assert!(ok(&format!("{}=v", "k".repeat(256))));
        assert!(!ok(&format!("{}=v", "k".repeat(257))));
        assert!(ok(&format!("{}@{}=v", "t".repeat(241), "s".repeat(14))));
        assert!(!ok(&format!("{}@{}=v", "t".repeat(242), "s".repeat(14))));
        assert!(!ok(&format!("{}@{}=v", "t".repeat(241), "s".repeat(15))));
        // 512 bytes joined, whatever whitespace surrounds the members.
        let at_512 = format!("a={},b={}", "v".repeat(254), "v".repeat(253));
        assert_eq!(at_512.len(), 512);
        assert!(ok(&at_512));
        assert!(ok(&at_512.replace(',', " ,  ")));
        assert!(!ok(&format!("{at_512}w")));
    }

    #[test]
    fn the_trimmed_value_is_found() {
        let v = "  a=1 ,b=2 \t";
        let mut c = Check::new();
        v.bytes().for_each(|b| {
            c.step(b);
        });
        assert!(c.finish());
        let (at, n) = c.trimmed();
        assert_eq!(&v[at as usize..(at + n) as usize], "a=1 ,b=2");
    }

    #[test]
    fn hpack_lengths() {
        let mut out = [0u8; 3];
        assert_eq!((hpack_length(126, &mut out), out[0]), (1, 126));
        assert_eq!(hpack_length(127, &mut out), 2);
        assert_eq!(&out[..2], &[127, 0]);
        assert_eq!(hpack_length(254, &mut out), 2);
        assert_eq!(&out[..2], &[127, 127]);
        assert_eq!(hpack_length(512, &mut out), 3);
        // 512 - 127 = 385 = 0b11_0000001
        assert_eq!(out, [127, 0x81, 3]);
        assert_eq!(line_len(10), 24);
        let s: String = NAME.iter().map(|&b| b as char).collect();
        assert_eq!(&FIELD_PREFIX[2..], s.as_bytes());
    }
}
