//! Rewrites an HPACK header block with its Huffman-coded strings decoded.
//!
//! Why: `loona-hpack` builds its Huffman decoding tables anew (hash maps of
//! all 257 codes) for every Huffman-coded string, about 19 µs a string on
//! the benchmark machine, which made gRPC cost tens of µs of agent CPU per
//! call. `httlib-huffman` decodes with static tables; the rewritten block
//! carries the same fields in the same representations, so the decoder's
//! dynamic table ends up exactly as with the original block.

use httlib_huffman::{decode, DecoderSpeed};

/// Continuation bytes an HPACK integer may take before it is rejected.
const MAX_INT_BYTES: usize = 5;

/// `block` with every Huffman-coded string literal replaced by its plain
/// form, written to `out`. `None` when the block does not walk as HPACK
/// (the caller then hands the original to the decoder, which reports it).
pub fn rewrite(block: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        // Indexed field (1xxxxxxx), literal with incremental indexing
        // (01xxxxxx), table size update (001xxxxx), literal without or
        // never indexed (000xxxxx): the prefix size of the first integer.
        let (prefix, literal) = match b {
            _ if b & 0x80 != 0 => (7, false),
            _ if b & 0x40 != 0 => (6, true),
            _ if b & 0x20 != 0 => (5, false),
            _ => (4, true),
        };
        let (index, n) = integer(&block[i..], prefix)?;
        out.extend_from_slice(&block[i..i + n]);
        i += n;
        if !literal {
            continue;
        }
        if index == 0 {
            i = string(block, i, out)?;
        }
        i = string(block, i, out)?;
    }
    Some(())
}

/// Copies the string literal at `block[at..]` to `out`, plain; returns
/// where the next representation starts.
fn string(block: &[u8], at: usize, out: &mut Vec<u8>) -> Option<usize> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, n) = integer(block.get(at..)?, 7)?;
    let start = at + n;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let data = block.get(start..end)?;
    if !huffman {
        out.extend_from_slice(&block[at..end]);
        return Some(end);
    }
    let mut plain = Vec::with_capacity(data.len() * 8 / 5 + 1);
    decode(data, &mut plain, DecoderSpeed::FourBits).ok()?;
    put_integer(out, plain.len() as u64, 7, 0);
    out.extend_from_slice(&plain);
    Some(end)
}

/// An HPACK integer with an `prefix`-bit prefix at the start of `buf`:
/// its value and how many bytes it took.
fn integer(buf: &[u8], prefix: u32) -> Option<(u64, usize)> {
    let max = (1u64 << prefix) - 1;
    let first = u64::from(*buf.first()?) & max;
    if first < max {
        return Some((first, 1));
    }
    let mut value = max;
    for (k, &b) in buf.iter().skip(1).take(MAX_INT_BYTES).enumerate() {
        value += u64::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            return Some((value, k + 2));
        }
    }
    None
}

/// Appends `value` as an HPACK integer with a `prefix`-bit prefix; `flags`
/// are the bits above the prefix in the first byte.
fn put_integer(out: &mut Vec<u8>, value: u64, prefix: u32, flags: u8) {
    let max = (1u64 << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(hex_block: &str) -> Option<String> {
        let mut out = Vec::new();
        rewrite(&hex::decode(hex_block).unwrap(), &mut out)?;
        Some(hex::encode(out))
    }

    /// RFC 7541 C.4 (Huffman) decodes to the bytes of C.3 (the same
    /// requests without Huffman coding).
    #[test]
    fn rfc_huffman_requests_become_the_plain_ones() {
        let cases = [
            (
                "828684418cf1e3c2e5f23a6ba0ab90f4ff",
                "828684410f7777772e6578616d706c652e636f6d",
            ),
            ("828684be5886a8eb10649cbf", "828684be58086e6f2d6361636865"),
            (
                "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
                "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            ),
        ];
        for (huffman, plain) in cases {
            assert_eq!(rewritten(huffman).as_deref(), Some(plain));
            assert_eq!(rewritten(plain).as_deref(), Some(plain));
        }
    }

    #[test]
    fn long_values_get_multi_byte_lengths() {
        let mut out = Vec::new();
        put_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        assert_eq!(integer(&out, 5), Some((1337, 3)));
    }

    #[test]
    fn malformed_blocks_are_left_to_the_decoder() {
        // A literal whose string runs past the block, an endless integer,
        // and a Huffman string that ends in the wrong padding.
        for bad in ["4005abcd", "7fffffffffffff", "0082ff00"] {
            assert_eq!(rewritten(bad), None, "{bad}");
        }
    }
}
