//! Protobuf wire encoding written straight from the agent's own types.
//! Building the prost structs first would copy every string and key of every
//! span into fresh allocations only to serialise and free them.
//!
//! A nested message is length-prefixed, and its length is only known once it
//! is written: the bytes its length most likely takes are set aside (one for
//! an attribute, two for a span, three for a batch's groups) and the body is
//! moved only in the rare other case, rather than measuring every message
//! before writing it.

/// Wire types used here (protobuf encoding spec).
#[derive(Clone, Copy)]
enum WireType {
    Varint = 0,
    SixtyFourBit = 1,
    LengthDelimited = 2,
    ThirtyTwoBit = 5,
}

/// An encoded message being written, top-level fields first. Its writes
/// are marked inline: a call per field cost more than most fields' few
/// bytes, and left to itself the compiler inlined them or not depending
/// on unrelated code.
#[derive(Default)]
pub(super) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(bytes),
        }
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// A nested message field whose fields `body` writes (most of them
    /// shorter than 128 bytes).
    #[inline]
    pub(super) fn message(&mut self, tag: u32, body: impl FnOnce(&mut Writer)) {
        self.message_sized(tag, 1, body);
    }

    /// A nested message field whose length most likely takes `width`
    /// varint bytes: that many are set aside, and the body moves only
    /// when its length takes another number.
    #[inline]
    pub(super) fn message_sized(&mut self, tag: u32, width: usize, body: impl FnOnce(&mut Writer)) {
        if width == 1 {
            self.key_and(tag, WireType::LengthDelimited, 0);
        } else {
            self.key(tag, WireType::LengthDelimited);
            self.buf.extend_from_slice(&[0; 10][..width]);
        }
        let at = self.buf.len() - width;
        body(self);
        let len = self.buf.len() - at - width;
        if width == 1 && len < 0x80 {
            self.buf[at] = len as u8;
            return;
        }
        let (prefix, n) = varint(len as u64);
        if n == width {
            self.buf[at..at + n].copy_from_slice(&prefix[..n]);
        } else {
            self.buf.splice(at..at + width, prefix[..n].iter().copied());
        }
    }

    /// A `bytes` or `string` field, written even when empty (`oneof` members).
    #[inline]
    pub(super) fn bytes(&mut self, tag: u32, bytes: &[u8]) {
        self.key_and(tag, WireType::LengthDelimited, bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    /// A proto3 `string`/`bytes` field: empty is the default and is left out.
    #[inline]
    pub(super) fn bytes_if_set(&mut self, tag: u32, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.bytes(tag, bytes);
        }
    }

    /// A varint-typed field (`int64`, `bool`, enums), written even when zero.
    pub(super) fn varint_field(&mut self, tag: u32, value: u64) {
        self.key_and(tag, WireType::Varint, value);
    }

    pub(super) fn fixed32_if_set(&mut self, tag: u32, value: u32) {
        if value != 0 {
            self.key(tag, WireType::ThirtyTwoBit);
            self.buf.extend_from_slice(&value.to_le_bytes());
        }
    }

    pub(super) fn fixed64_if_set(&mut self, tag: u32, value: u64) {
        if value != 0 {
            self.key(tag, WireType::SixtyFourBit);
            self.buf.extend_from_slice(&value.to_le_bytes());
        }
    }

    /// A key and the varint after it (a length, a value). Both nearly
    /// always take a byte, and are then written at once: byte by byte,
    /// every write checked the capacity and stored the length again.
    #[inline]
    fn key_and(&mut self, tag: u32, wire_type: WireType, value: u64) {
        let key = u64::from(tag << 3 | wire_type as u32);
        if key < 0x80 && value < 0x80 {
            self.buf.extend_from_slice(&[key as u8, value as u8]);
        } else {
            self.varint(key);
            self.varint(value);
        }
    }

    #[inline]
    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from(tag << 3 | wire_type as u32));
    }

    #[inline]
    fn varint(&mut self, mut value: u64) {
        // Byte by byte: keys and most lengths are one byte, and a slice copy
        // would cost a call.
        while value >= 0x80 {
            self.buf.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }
}

/// Base-128 varint: seven bits per byte, low bits first.
fn varint(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut n = 0;
    while value >= 0x80 {
        bytes[n] = value as u8 | 0x80;
        value >>= 7;
        n += 1;
    }
    bytes[n] = value as u8;
    (bytes, n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_spec_examples() {
        let enc = |v| {
            let (b, n) = varint(v);
            b[..n].to_vec()
        };
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(u64::MAX).len(), 10);
        // int64 -1 is sign-extended to ten bytes.
        assert_eq!(
            enc(-1i64 as u64),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn every_length_gets_its_shortest_prefix_whatever_was_set_aside() {
        for (len, width) in [0, 127, 128, 300, 20_000, 3_000_000]
            .into_iter()
            .flat_map(|len| (1..=3).map(move |width| (len, width)))
        {
            let mut w = Writer::default();
            w.message_sized(1, width, |w| w.bytes(2, &vec![7; len]));
            let bytes = w.into_bytes();
            let inner = 1 + varint(len as u64).1 + len;
            let (prefix, n) = varint(inner as u64);
            assert_eq!(bytes[0], 0x0a);
            assert_eq!(&bytes[1..1 + n], &prefix[..n], "{len} {width}");
            assert_eq!(bytes.len(), 1 + n + inner, "{len} {width}");
            assert!(bytes[1 + n + 1..].starts_with(&varint(len as u64).0[..1]));
        }
    }
}
