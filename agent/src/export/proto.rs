//! Protobuf wire encoding straight from the agent's own types: each message
//! is described once, as an [`Encode`] impl, and the same description both
//! measures a message (length prefixes come first on the wire) and writes it.
//! Building the prost structs first would copy every string and key of every
//! span into fresh allocations only to serialise and free them.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

/// A protobuf message written field by field.
pub(super) trait Encode {
    fn encode<O: Out>(&self, out: &mut O);
}

/// Where fields go: a byte buffer, or a counter of the bytes they would take.
pub(super) trait Out: Sized {
    fn key(&mut self, tag: u32, wire_type: WireType);
    fn varint(&mut self, value: u64);
    fn raw(&mut self, bytes: &[u8]);

    /// A nested message field, length-prefixed.
    fn message<M: Encode>(&mut self, tag: u32, m: &M) {
        let len = encoded_len(m);
        self.key(tag, WireType::LengthDelimited);
        self.varint(len as u64);
        m.encode(self);
    }

    /// A `bytes` or `string` field, written even when empty (`oneof` members).
    fn bytes(&mut self, tag: u32, bytes: &[u8]) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(bytes.len() as u64);
        self.raw(bytes);
    }

    /// A proto3 `string`/`bytes` field: empty is the default and is left out.
    fn bytes_if_set(&mut self, tag: u32, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.bytes(tag, bytes);
        }
    }

    /// A varint-typed field (`int64`, `bool`, enums), written even when zero.
    fn varint_field(&mut self, tag: u32, value: u64) {
        self.key(tag, WireType::Varint);
        self.varint(value);
    }

    fn fixed32_if_set(&mut self, tag: u32, value: u32) {
        if value != 0 {
            self.key(tag, WireType::ThirtyTwoBit);
            self.raw(&value.to_le_bytes());
        }
    }

    fn fixed64_if_set(&mut self, tag: u32, value: u64) {
        if value != 0 {
            self.key(tag, WireType::SixtyFourBit);
            self.raw(&value.to_le_bytes());
        }
    }
}

/// Bytes `m` takes on the wire, without its own key and length.
pub(super) fn encoded_len<M: Encode>(m: &M) -> usize {
    let mut len = Len(0);
    m.encode(&mut len);
    len.0
}

struct Len(usize);

impl Out for Len {
    fn key(&mut self, tag: u32, _: WireType) {
        self.0 += key_len(tag);
    }
    fn varint(&mut self, value: u64) {
        self.0 += encoded_len_varint(value);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    // Counted once here rather than once per enclosing message.
    fn message<M: Encode>(&mut self, tag: u32, m: &M) {
        let len = encoded_len(m);
        self.0 += key_len(tag) + encoded_len_varint(len as u64) + len;
    }
}

impl Out for Vec<u8> {
    fn key(&mut self, tag: u32, wire_type: WireType) {
        encode_key(tag, wire_type, self);
    }
    fn varint(&mut self, value: u64) {
        encode_varint(value, self);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes `m` as a top-level message.
pub(super) fn to_vec<M: Encode>(m: &M) -> Vec<u8> {
    let mut buf = Vec::with_capacity(encoded_len(m));
    m.encode(&mut buf);
    buf
}
