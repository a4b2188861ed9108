//! Chunked transfer-coding skipper: follows chunk framing in O(1) memory, keeping no data.

use super::parse::ParseError;

/// Longest chunk extension accepted; keeps a runaway line from hiding the next message.
const MAX_EXTENSION: usize = 4096;
/// Longest trailer section accepted, the same budget as a message head.
const MAX_TRAILERS: usize = 64 * 1024;

/// Position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Reading a chunk-size line's hex digits; `None` before the first one.
    Size(Option<u64>),
    /// Past the size, up to the end of the line: extensions, which are ignored.
    Extension { size: u64, len: usize },
    /// Chunk data still to come, never zero.
    Data(u64),
    /// The CRLF after chunk data; `cr` once its CR was seen.
    DataEnd { cr: bool },
    /// After the last chunk: `line` bytes into the current trailer line, `total` into the section.
    Trailers { line: usize, total: usize },
}

impl Chunked {
    pub(super) fn new() -> Self {
        Chunked::Size(None)
    }

    /// Consumes `input`; `Some(n)` once the body ended after its first `n` bytes.
    pub(super) fn advance(&mut self, input: &[u8]) -> Result<Option<usize>, ParseError> {
        let mut pos = 0;
        while pos < input.len() {
            if let Chunked::Data(left) = *self {
                // Skip data in bulk: the byte-wise path would do the same, slowly.
                let n = left.min((input.len() - pos) as u64);
                pos += n as usize;
                *self = data(left - n);
                continue;
            }
            pos += 1;
            if self.byte(input[pos - 1])? {
                return Ok(Some(pos));
            }
        }
        Ok(None)
    }

    /// Accounts for `missing` uncaptured bytes; `None` if framing bytes fell among them.
    pub(super) fn skip_gap(self, missing: u64) -> Option<Self> {
        match self {
            Chunked::Data(left) if missing <= left => Some(data(left - missing)),
            _ => None,
        }
    }

    /// Steps over one byte; true once it ended the body.
    fn byte(&mut self, b: u8) -> Result<bool, ParseError> {
        *self = match *self {
            Chunked::Size(size) => size_byte(size, b)?,
            Chunked::Extension { size, .. } if b == b'\n' => after_size_line(size),
            Chunked::Extension { len, .. } if len >= MAX_EXTENSION => {
                return Err(ParseError::BadFraming("chunk extension too long"));
            }
            Chunked::Extension { size, len } => Chunked::Extension { size, len: len + 1 },
            Chunked::Data(left) => data(left - 1),
            Chunked::DataEnd { cr: false } if b == b'\r' => Chunked::DataEnd { cr: true },
            Chunked::DataEnd { .. } if b == b'\n' => Chunked::Size(None),
            Chunked::DataEnd { .. } => {
                return Err(ParseError::BadFraming("chunk data not followed by CRLF"));
            }
            Chunked::Trailers { line: 0, .. } if b == b'\n' => return Ok(true),
            Chunked::Trailers { total, .. } if total >= MAX_TRAILERS => {
                return Err(ParseError::HeadersTooLarge);
            }
            Chunked::Trailers { total, .. } if b == b'\n' => Chunked::Trailers {
                line: 0,
                total: total + 1,
            },
            // A CR alone does not make a line non-empty: "\r\n" is the empty line.
            Chunked::Trailers { line, total } if b == b'\r' => Chunked::Trailers {
                line,
                total: total + 1,
            },
            Chunked::Trailers { line, total } => Chunked::Trailers {
                line: line + 1,
                total: total + 1,
            },
        };
        Ok(false)
    }
}

fn size_byte(size: Option<u64>, b: u8) -> Result<Chunked, ParseError> {
    match (char::from(b).to_digit(16), size) {
        (Some(digit), _) => size
            .unwrap_or(0)
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(digit)))
            .map(|s| Chunked::Size(Some(s)))
            .ok_or(ParseError::BadFraming("chunk size overflows")),
        (None, Some(size)) if b == b'\n' => Ok(after_size_line(size)),
        (None, Some(size)) if matches!(b, b';' | b' ' | b'\t' | b'\r') => {
            Ok(Chunked::Extension { size, len: 0 })
        }
        _ => Err(ParseError::BadFraming("invalid chunk size")),
    }
}

/// A zero size is the last chunk, which trailers follow.
fn after_size_line(size: u64) -> Chunked {
    if size == 0 {
        Chunked::Trailers { line: 0, total: 0 }
    } else {
        Chunked::Data(size)
    }
}

fn data(left: u64) -> Chunked {
    if left == 0 {
        Chunked::DataEnd { cr: false }
    } else {
        Chunked::Data(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; the offset just past the body, if it ended.
    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, ParseError> {
        let mut chunked = Chunked::new();
        let mut offset = 0;
        for piece in body.chunks(step) {
            if let Some(n) = chunked.advance(piece)? {
                return Ok(Some(offset + n));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    const BODY: &[u8] = b"5;name=\"v\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";

    #[test]
    fn ends_after_trailers_whatever_the_split() {
        for step in 1..=BODY.len() {
            assert_eq!(end_of(BODY, step), Ok(Some(BODY.len() - 4)), "step {step}");
        }
    }

    #[test]
    fn accepts_bare_lf() {
        let body = b"3\nabc\n0\n\n";
        assert_eq!(end_of(body, 64), Ok(Some(body.len())));
    }

    #[test]
    fn incomplete_body_wants_more() {
        assert_eq!(end_of(b"5\r\nhel", 64), Ok(None));
        assert_eq!(end_of(b"0\r\nTrailer: x\r\n", 64), Ok(None));
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"11111111111111111\r\n",
        ] {
            assert!(
                matches!(end_of(bad, 64), Err(ParseError::BadFraming(_))),
                "{bad:?}"
            );
        }
        let long_extension = [&b"5;"[..], &[b'a'; MAX_EXTENSION + 1]].concat();
        assert!(end_of(&long_extension, 64).is_err());
        let long_trailer = [&b"0\r\n"[..], &[b'a'; MAX_TRAILERS + 1]].concat();
        assert_eq!(
            end_of(&long_trailer, 4096),
            Err(ParseError::HeadersTooLarge)
        );
    }

    #[test]
    fn extensions_are_skipped_not_judged() {
        let body = b"1 ; x=\"\x00\"\r\na\r\n0\r\n\r\n";
        assert_eq!(end_of(body, 64), Ok(Some(body.len())));
    }

    #[test]
    fn huge_chunk_costs_nothing() {
        let mut chunked = Chunked::new();
        assert_eq!(chunked.advance(b"FFFFFFFFFF\r\n"), Ok(None));
        assert_eq!(chunked, Chunked::Data(0xFF_FFFF_FFFF));
        let chunked = chunked.skip_gap(0xFF_FFFF_FFFF).unwrap();
        assert_eq!(chunked, Chunked::DataEnd { cr: false });
    }

    #[test]
    fn gap_over_framing_loses_it() {
        assert_eq!(Chunked::Data(10).skip_gap(4), Some(Chunked::Data(6)));
        assert_eq!(Chunked::Data(10).skip_gap(11), None);
        assert_eq!(Chunked::new().skip_gap(1), None);
        assert_eq!(Chunked::DataEnd { cr: true }.skip_gap(1), None);
    }
}
