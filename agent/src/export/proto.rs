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

/// The keys of a named value's name (field 1) and value message (field 2).
const NAME_KEY: u8 = 1 << 3 | WireType::LengthDelimited as u8;
const VALUE_KEY: u8 = 2 << 3 | WireType::LengthDelimited as u8;

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

    /// Message field `tag` shaped `{1: name, 2: {field: bytes}}`, a name
    /// and its `oneof` value (OTLP's `KeyValue` and `AnyValue`): the value
    /// is written even when empty, the name only when set. Both lengths
    /// are nearly always known up front and a byte each: the keys and
    /// lengths around the name then take two writes, where lengths set
    /// aside and filled in, and a write per byte, cost a tenth of a span's
    /// encoding.
    #[inline]
    pub(super) fn named_bytes(&mut self, tag: u32, name: &[u8], field: u32, bytes: &[u8]) {
        let inner = 2 + bytes.len();
        match self.named(tag, name, field, WireType::LengthDelimited, inner) {
            Some(key) => {
                let header = [VALUE_KEY, inner as u8, key, bytes.len() as u8];
                self.buf.extend_from_slice(&header);
                self.buf.extend_from_slice(bytes);
            }
            None => self.named_nested(tag, name, |w| w.bytes(field, bytes)),
        }
    }

    /// [`Writer::named_bytes`] for a varint-typed value.
    #[inline]
    pub(super) fn named_varint(&mut self, tag: u32, name: &[u8], field: u32, value: u64) {
        let inner = 1 + varint_len(value);
        match self.named(tag, name, field, WireType::Varint, inner) {
            Some(key) => {
                self.buf.extend_from_slice(&[VALUE_KEY, inner as u8, key]);
                self.varint(value);
            }
            None => self.named_nested(tag, name, |w| w.varint_field(field, value)),
        }
    }

    /// Opens a named value whose value message takes `inner` bytes, and
    /// writes its name: the value field's key, to follow the value
    /// message's key and length. `None`, with nothing written, when a key
    /// or length would take more than a byte.
    #[inline]
    fn named(
        &mut self,
        tag: u32,
        name: &[u8],
        field: u32,
        wire_type: WireType,
        inner: usize,
    ) -> Option<u8> {
        let outer = 2 + name.len() + 2 + inner;
        if tag >= 16 || field >= 16 || name.is_empty() || outer >= 0x80 {
            return None;
        }
        let tag_key = (tag << 3) as u8 | WireType::LengthDelimited as u8;
        let header = [tag_key, outer as u8, NAME_KEY, name.len() as u8];
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(name);
        Some((field << 3 | wire_type as u32) as u8)
    }

    /// A named value field by field, for what does not fit the bytes of
    /// [`Writer::named`]; out of line, which keeps the usual case small
    /// enough to inline.
    #[inline(never)]
    fn named_nested(&mut self, tag: u32, name: &[u8], value: impl FnOnce(&mut Writer)) {
        self.message(tag, |w| {
            w.bytes_if_set(1, name);
            w.message(2, value);
        });
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

/// How many bytes [`varint`] writes for `value`.
fn varint_len(value: u64) -> usize {
    (70 - (value | 1).leading_zeros() as usize) / 7
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
    fn varint_lengths_are_what_varint_writes() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                assert_eq!(varint_len(v), varint(v).1, "{v}");
            }
        }
        assert_eq!(varint_len(0), 1);
    }

    /// The bytes written at once are the ones written field by field.
    #[test]
    fn a_named_value_reads_as_its_fields() {
        let long = [b'x'; 130];
        for tag in [1, 9, 15, 16] {
            for field in [1, 3, 16] {
                for name in [0, 1, 19, 60, 120, 127, 128].map(|n| &long[..n]) {
                    let nested = |value: &dyn Fn(&mut Writer)| {
                        let mut w = Writer::default();
                        w.named_nested(tag, name, value);
                        w.into_bytes()
                    };
                    for len in [0, 1, 57, 100, 121, 126, 129] {
                        let bytes = &long[..len];
                        let mut w = Writer::default();
                        w.named_bytes(tag, name, field, bytes);
                        assert_eq!(w.into_bytes(), nested(&|w| w.bytes(field, bytes)));
                    }
                    for value in [0, 1, 127, 128, 8080, u64::MAX] {
                        let mut w = Writer::default();
                        w.named_varint(tag, name, field, value);
                        assert_eq!(w.into_bytes(), nested(&|w| w.varint_field(field, value)));
                    }
                }
            }
        }
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
