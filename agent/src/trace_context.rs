//! W3C Trace Context: parsing and formatting `traceparent`, checking
//! `tracestate`.

use crate::span::{SpanId, TraceId};

/// The fields of a `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-{32 hex}-{16 hex}-{2 hex}`; future versions are accepted
    /// by their first four fields as the spec asks. All-zero ids are invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.trim().as_bytes();
        // Every request that carries one pays for this. Version 00's
        // layout is cut by position; anything else is split bytewise
        // (str's char searcher sets up a memchr per part). A '-' inside a
        // field makes it invalid hex either way.
        let (version, trace, parent, flags, more) =
            if b.len() == 55 && b[2] == b'-' && b[35] == b'-' && b[52] == b'-' {
                (&b[..2], &b[3..35], &b[36..52], &b[53..], false)
            } else {
                let mut parts = b.split(|&c| c == b'-');
                let (version, trace, parent, flags) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                (version, trace, parent, flags, parts.next().is_some())
            };
        let [version] = lower_hex(version)?;
        if version == 0xff || (version == 0 && more) {
            return None;
        }
        let trace_id: [u8; 16] = lower_hex(trace)?;
        let parent_id: [u8; 8] = lower_hex(parent)?;
        let [flags] = lower_hex(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    pub fn format(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.sampled as u8
        )
    }
}

/// A `tracestate` (repeated headers joined by `,`) as it is recorded:
/// empty members and the optional whitespace around members dropped, and
/// None when it breaks the specification's rules (more than 32 members or
/// 512 bytes, a malformed member, a key twice), since a vendor cannot
/// tell which of its members to trust. Validity is the kernel's own check
/// (`clew_common::tracestate`), so what is recorded and what the kernel
/// carries on agree.
pub fn tracestate(value: &str) -> Option<String> {
    if !clew_common::tracestate::valid(value.as_bytes()) {
        return None;
    }
    let members: Vec<&str> = value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    Some(members.join(","))
}

/// W3C baggage (`k1=v1;prop,k2=v2`, percent-encoded values), the format
/// of `OTEL_RESOURCE_ATTRIBUTES` too. Properties are dropped.
pub fn parse_baggage(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|member| {
            let kv = member.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Exactly `N` bytes as lowercase hex, the only case `traceparent` allows;
/// decoded in one pass, as every request that carries one pays for it.
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    // The ids' digits eight at a time, in one word each; the version's and
    // flags' two through the table.
    let done = N / 4 * 4;
    for i in (0..done).step_by(4) {
        out[i..i + 4].copy_from_slice(&hex_word(&digits[2 * i..2 * i + 8])?);
    }
    let rest = &digits[2 * done..];
    // A table and one check at the end, where a branch per digit showed.
    let mut invalid = 0;
    for (byte, pair) in out[done..].iter_mut().zip(rest.chunks_exact(2)) {
        let (high, low) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid & INVALID == 0).then_some(out)
}

/// Eight lowercase hex digits as four bytes, all checked and decoded at
/// once in a word (bytes below 0x80 never carry into the next one when
/// the offsets here are added): a table lookup per digit was most of
/// reading a `traceparent`.
fn hex_word(digits: &[u8]) -> Option<[u8; 4]> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_le_bytes(digits.try_into().ok()?);
    if x & HIGH != 0 {
        return None;
    }
    // The high bit of each byte: set where the byte is `lo` or more...
    let at_least = |lo: u8| x + ONES * u64::from(0x80 - lo);
    // ...and where it is more than `hi`.
    let above = |hi: u8| x + ONES * u64::from(0x7f - hi);
    let digit = at_least(b'0') & !above(b'9') & HIGH;
    let letter = at_least(b'a') & !above(b'f') & HIGH;
    if digit | letter != HIGH {
        return None;
    }
    // '0'..'9' and 'a'..'f' end in their value, and in their value less 9.
    let nibbles = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    const EVEN: u64 = 0x00ff_00ff_00ff_00ff;
    let pairs = (nibbles & EVEN) << 4 | (nibbles >> 8) & EVEN;
    let packed = (pairs | pairs >> 8) & 0x0000_ffff_0000_ffff;
    Some(((packed | packed >> 16) as u32).to_le_bytes())
}

/// Set in [`NIBBLE`] for anything but a lowercase hex digit.
const INVALID: u8 = 0x80;

/// Each byte's value as a lowercase hex digit, or [`INVALID`].
const NIBBLE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Any byte at any place of a word decodes as the table decodes it.
    #[test]
    fn words_decode_as_the_table_does() {
        let by_table = |digits: &[u8]| {
            let mut out = [0; 4];
            for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
                let (high, low) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
                if (high | low) & INVALID != 0 {
                    return None;
                }
                *byte = high << 4 | low;
            }
            Some(out)
        };
        for base in [*b"0123abcd", *b"fedc9876", *b"00000000", *b"ffffffff"] {
            assert_eq!(hex_word(&base), by_table(&base));
            for at in 0..8 {
                for b in 0..=255 {
                    let mut word = base;
                    word[at] = b;
                    assert_eq!(hex_word(&word), by_table(&word), "{word:?}");
                }
            }
        }
    }

    #[test]
    fn parses_and_formats_the_spec_example() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert!(tp.sampled);
        assert_eq!(hex::encode(tp.parent_id), "00f067aa0ba902b7");
        assert_eq!(tp.format(), VALID);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7+-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn baggage_members_properties_and_escapes() {
        assert_eq!(
            parse_baggage("tenant=a%20b;ttl=3, plan = gold,=x,bad,esc=a%2Cb%zz%4"),
            [
                ("tenant".into(), "a b".into()),
                ("plan".into(), "gold".into()),
                ("esc".into(), "a,b%zz%4".into())
            ]
        );
    }

    #[test]
    fn tracestate_rules() {
        assert_eq!(
            tracestate(" congo=t61rcWkgMzE,, rojo=00f067aa0ba902b7 ,t@sys=1").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,t@sys=1")
        );
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(tracestate(&members(32)).is_some());
        assert_eq!(tracestate(&members(33)), None);
        assert_eq!(tracestate(&format!("k={}", "v".repeat(257))), None);
        assert_eq!(
            tracestate(&format!("a={0},b={0},c={0}", "v".repeat(200))),
            None
        );
        for bad in [
            "",
            "Congo=1",
            "1a=1",
            "a=",
            "a=b=c",
            "a=1,a=2",
            "a",
            "a=x\u{7f}",
        ] {
            assert_eq!(tracestate(bad), None, "{bad}");
        }
    }

    #[test]
    fn accepts_future_versions_with_extra_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever";
        assert!(!TraceParent::parse(v).unwrap().sampled);
    }
}
