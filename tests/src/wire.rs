//! Byte-exact checks of `traceparent` injection: the rules the kernel side
//! follows, as a model that says where a line must appear in what a traced
//! client sent, and the comparison of that with what a server received.
//!
//! The rules, per socket and per send (one sendmsg call):
//! 1. A socket starts at a request boundary.
//! 2. A send at a boundary that starts with one of [`METHODS`], holds the
//!    complete head within its first [`SCAN_BYTES`] bytes, has no header
//!    whose name starts with `transfer` and a parseable Content-Length (or
//!    none) gets the line after its request line, unless the head already
//!    has `traceparent`. If the send is longer than head + Content-Length
//!    the socket becomes hands-off forever; otherwise the rest of the body
//!    passes untouched in later sends, and the send after it must start a
//!    new request.
//! 3. Anything else at a boundary makes the socket hands-off forever.
//! 4. A later send carrying the end of a body and more bytes: hands-off forever.

use std::fmt::Write as _;

/// Methods the kernel injects into (with their trailing space).
pub const METHODS: &[&[u8]] = &[
    b"GET ",
    b"PUT ",
    b"POST ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
];
/// The head must be complete within this many bytes of the send.
pub const SCAN_BYTES: usize = 1024;
/// `traceparent: 00-{32 hex}-{16 hex}-{2 hex}\r\n`
pub const LINE_LEN: usize = 70;

/// What the model finds in a send at a request boundary.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadInfo {
    /// Just past the request line's CRLF: where the line goes.
    pub line_end: usize,
    /// Just past the blank line.
    pub head_len: usize,
    pub content_length: u64,
    pub has_traceparent: bool,
}

/// A send at a boundary the kernel may inject into, or None (hands-off).
pub fn head_info(send: &[u8]) -> Option<HeadInfo> {
    if !METHODS.iter().any(|m| send.starts_with(m)) {
        return None;
    }
    let window = &send[..send.len().min(SCAN_BYTES)];
    let head_len = find(window, b"\r\n\r\n")? + 4;
    let head = &window[..head_len];
    let line_end = find(head, b"\r\n")? + 2;
    let mut info = HeadInfo {
        line_end,
        head_len,
        content_length: 0,
        has_traceparent: false,
    };
    // Header lines, each with its CRLF; the blank line's CRLF is left out.
    for line in head[line_end..head_len - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let lower = line.to_ascii_lowercase();
        if lower.starts_with(b"transfer") {
            return None;
        }
        if lower.starts_with(b"traceparent:") {
            info.has_traceparent = true;
        }
        if let Some(v) = lower.strip_prefix(b"content-length:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            let digits: Vec<u8> = v.iter().copied().take_while(u8::is_ascii_digit).collect();
            if digits.is_empty() || digits.len() > 15 {
                return None;
            }
            info.content_length = std::str::from_utf8(&digits).ok()?.parse().ok()?;
        }
    }
    Some(info)
}

/// The bytes a connection's sends must arrive as.
#[derive(Debug, Default)]
pub struct Expected {
    /// Everything sent, concatenated.
    pub sent: Vec<u8>,
    /// Offsets into `sent` where a traceparent line must be inserted, ascending.
    pub inject_at: Vec<usize>,
    /// Whether the socket ended hands-off.
    pub hands_off: bool,
}

/// Applies the rules to one connection's sends.
pub fn expected<'a>(sends: impl IntoIterator<Item = &'a [u8]>) -> Expected {
    enum St {
        Boundary,
        Skip(u64),
        HandsOff,
    }
    let mut st = St::Boundary;
    let mut out = Expected::default();
    for send in sends {
        let len = send.len() as u64;
        st = match st {
            St::HandsOff => St::HandsOff,
            St::Skip(n) if len < n => St::Skip(n - len),
            St::Skip(n) if len == n => St::Boundary,
            St::Skip(_) => St::HandsOff,
            St::Boundary => match head_info(send) {
                None => St::HandsOff,
                Some(h) => {
                    if !h.has_traceparent {
                        out.inject_at.push(out.sent.len() + h.line_end);
                    }
                    let total = h.head_len as u64 + h.content_length;
                    if len > total {
                        St::HandsOff
                    } else if len == total {
                        St::Boundary
                    } else {
                        St::Skip(total - len)
                    }
                }
            },
        };
        out.sent.extend_from_slice(send);
    }
    out.hands_off = matches!(st, St::HandsOff);
    out
}

/// One injected line as received.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Injected {
    pub trace_id: String,
    pub span_id: String,
    pub flags: String,
    /// The request line it follows (without CRLF).
    pub request_line: String,
}

impl Injected {
    /// The request target's path (without the query).
    pub fn path(&self) -> &str {
        let target = self.request_line.split(' ').nth(1).unwrap_or("");
        target.split('?').next().unwrap_or(target)
    }
}

/// Checks `line` against `^traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\r\n$`
/// with non-zero ids.
pub fn parse_line(line: &[u8]) -> Result<Injected, String> {
    let bad = || format!("not a traceparent line: {}", escape(line));
    let s = std::str::from_utf8(line).map_err(|_| bad())?;
    let value = s.strip_prefix("traceparent: ").ok_or_else(bad)?;
    let value = value.strip_suffix("\r\n").ok_or_else(bad)?;
    parse_value(value).map_err(|e| format!("{e} in {}", escape(line)))
}

/// Checks a `traceparent` value against `^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$`
/// with non-zero ids.
pub fn parse_value(value: &str) -> Result<Injected, String> {
    let bad = || format!("not a version-00 traceparent: {value:?}");
    let rest = value.strip_prefix("00-").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n && p.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let [trace, span, flags] = parts[..] else {
        return Err(bad());
    };
    if !hex(trace, 32) || !hex(span, 16) || !(flags == "00" || flags == "01") {
        return Err(bad());
    }
    if trace.bytes().all(|c| c == b'0') || span.bytes().all(|c| c == b'0') {
        return Err(format!("all-zero id in {value:?}"));
    }
    Ok(Injected {
        trace_id: trace.into(),
        span_id: span.into(),
        flags: flags.into(),
        request_line: String::new(),
    })
}

/// `got` is `exp.sent` with exactly one valid traceparent line at each of
/// `exp.inject_at` and nothing else changed; returns the lines in order.
pub fn check_received(exp: &Expected, got: &[u8]) -> Result<Vec<Injected>, String> {
    let mut lines = Vec::new();
    let (mut s, mut g) = (0usize, 0usize);
    let cuts = exp.inject_at.iter().copied().chain([exp.sent.len()]);
    for (k, cut) in cuts.enumerate() {
        let want = &exp.sent[s..cut];
        let have = &got[g.min(got.len())..(g + want.len()).min(got.len())];
        if want != have {
            let d = want.iter().zip(have).take_while(|(a, b)| a == b).count();
            return Err(describe_diff(exp, got, s + d, g + d));
        }
        s = cut;
        g += want.len();
        if k < exp.inject_at.len() {
            let Some(line) = got.get(g..g + LINE_LEN) else {
                return Err(describe_diff(exp, got, s, g));
            };
            match parse_line(line) {
                Ok(mut l) => {
                    // The line goes right after the request line's CRLF.
                    let head = &exp.sent[..s.saturating_sub(2)];
                    let start = head.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                    l.request_line = String::from_utf8_lossy(&head[start..]).into_owned();
                    lines.push(l)
                }
                Err(e) => {
                    return Err(format!(
                        "expected an injected line at sent offset {s}: {e}\n{}",
                        describe_diff(exp, got, s, g)
                    ))
                }
            }
            g += LINE_LEN;
        }
    }
    if g != got.len() {
        return Err(describe_diff(exp, got, s, g));
    }
    Ok(lines)
}

/// Where expected and received bytes part, with context from both.
fn describe_diff(exp: &Expected, got: &[u8], s: usize, g: usize) -> String {
    let mut out = format!(
        "received bytes differ at sent offset {s} / received offset {g} (sent {} bytes, {} injections expected at {:?}; received {} bytes, {:+} vs sent)",
        exp.sent.len(),
        exp.inject_at.len(),
        exp.inject_at,
        got.len(),
        got.len() as i64 - exp.sent.len() as i64
    );
    let here = &got[g.min(got.len())..];
    if here.starts_with(b"traceparent: ") {
        out.push_str("\n  an UNEXPECTED traceparent line was inserted here");
    } else if exp.inject_at.contains(&s) {
        out.push_str("\n  the traceparent line expected here is MISSING");
    }
    let ctx = |b: &[u8], at: usize| {
        let lo = at.saturating_sub(120).min(b.len());
        let hi = (at + 200).min(b.len());
        format!(
            "{}<<HERE>>{}",
            escape(&b[lo..at.min(b.len())]),
            escape(&b[at.min(b.len())..hi])
        )
    };
    let _ = write!(
        out,
        "\n  expected: {}\n  received: {}",
        ctx(&exp.sent, s),
        ctx(got, g)
    );
    out
}

/// Bytes as a Rust-like escaped string.
pub fn escape(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A small deterministic PRNG (SplitMix64), so a failing case can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() - 1)]
    }

    /// `n` printable bytes (letters and digits).
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..n).map(|_| *self.pick(ALPHA)).collect()
    }

    /// `n` arbitrary bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n";

    fn insert(sent: &[u8], at: usize) -> Vec<u8> {
        [&sent[..at], LINE, &sent[at..]].concat()
    }

    #[test]
    fn get_is_injected_after_the_request_line() {
        let r = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let e = expected([&r[..]]);
        assert_eq!(e.inject_at, vec![16]);
        assert!(!e.hands_off);
        let got = insert(r, 16);
        let lines = check_received(&e, &got).unwrap();
        assert_eq!(lines[0].span_id, "b7ad6b7169203331");
        assert_eq!(lines[0].request_line, "GET / HTTP/1.1");
        assert_eq!(lines[0].path(), "/");
        assert!(check_received(&e, r).unwrap_err().contains("MISSING"));
        let mut wrong = insert(r, 16);
        wrong[30] = b'X';
        assert!(check_received(&e, &wrong).is_err());
    }

    #[test]
    fn bodies_in_later_sends_then_a_new_request() {
        let head = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234";
        let e = expected([&head[..], b"567", b"89", b"GET / HTTP/1.0\r\n\r\n"]);
        assert_eq!(e.inject_at, vec![18, head.len() + 5 + 16]);
        let e = expected([
            &head[..],
            b"56789GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ]);
        assert_eq!(e.inject_at, vec![18]);
        assert!(e.hands_off);
    }

    #[test]
    fn stand_down_cases() {
        let tp = b"GET / HTTP/1.1\r\nTraceParent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
        let e = expected([&tp[..], b"GET / HTTP/1.1\r\n\r\n"]);
        assert_eq!(e.inject_at, vec![tp.len() + 16]);
        let piped = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let e = expected([&piped[..], b"GET / HTTP/1.1\r\n\r\n"]);
        assert_eq!((e.inject_at, e.hands_off), (vec![17], true));
        for first in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"\x16\x03\x01junk",
            b"TRACE / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x1\r\n\r\n",
        ] {
            let e = expected([first, b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]);
            assert!(e.inject_at.is_empty() && e.hands_off, "{}", escape(first));
        }
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(vec![b'a'; SCAN_BYTES]);
        big.extend(b"\r\n\r\n");
        assert!(expected([&big[..]]).inject_at.is_empty());
    }

    #[test]
    fn head_size_limit_is_inclusive() {
        for len in [SCAN_BYTES - 1, SCAN_BYTES, SCAN_BYTES + 1] {
            let pad = len - b"GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            let r = [&b"GET / HTTP/1.1\r\nX: "[..], &vec![b'a'; pad], b"\r\n\r\n"].concat();
            assert_eq!(r.len(), len);
            assert_eq!(
                expected([&r[..]]).inject_at.len(),
                usize::from(len <= SCAN_BYTES)
            );
        }
    }
}
