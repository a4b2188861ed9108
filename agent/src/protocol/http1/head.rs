//! Parsed HTTP/1 message heads, kept compactly: every string of a head lives
//! back to back in one buffer after their offsets, so a head costs one
//! allocation however many headers it has (the agent keeps one per request
//! in flight).

use std::borrow::Cow;

use super::parse::is_named;
use crate::protocol::http_common::bounded_text;

/// Headers of a request looked at for the ones the agent reads; the ones past
/// this still count for framing.
pub const MAX_HEADERS: usize = 64;
/// Bytes kept of each header value.
pub const MAX_HEADER_VALUE: usize = 1024;

/// A fixed number of strings in one buffer: first where each ends (`u32`,
/// relative to the first string), then the strings back to back. Item `i`
/// starts where item `i - 1` ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Strings {
    buf: Vec<u8>,
    /// Items the buffer has offsets for.
    items: u32,
    /// Items pushed so far.
    len: u32,
}

impl Strings {
    /// Room for `items` strings of `bytes` in all (more is allowed).
    fn with_capacity(bytes: usize, items: usize) -> Self {
        let mut buf = Vec::with_capacity(4 * items + bytes);
        buf.resize(4 * items, 0);
        Strings {
            buf,
            items: items as u32,
            len: 0,
        }
    }

    fn push(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
        self.close();
    }

    /// Lossy UTF-8 of at most [`MAX_HEADER_VALUE`] bytes, cut on a character boundary.
    fn push_value(&mut self, value: &[u8]) {
        self.buf
            .extend_from_slice(bounded_text(value, MAX_HEADER_VALUE).as_bytes());
        self.close();
    }

    fn close(&mut self) {
        let i = self.len as usize;
        assert!(i < self.items as usize, "more strings than offsets");
        // Heads are at most MAX_HEAD (64 KiB) long, values cut: u32 is plenty.
        let end = (self.buf.len() - self.text_start()) as u32;
        self.buf[4 * i..4 * i + 4].copy_from_slice(&end.to_ne_bytes());
        self.len += 1;
    }

    fn text_start(&self) -> usize {
        4 * self.items as usize
    }

    fn end(&self, i: usize) -> usize {
        let at = &self.buf[4 * i..4 * i + 4];
        u32::from_ne_bytes([at[0], at[1], at[2], at[3]]) as usize
    }

    fn get(&self, i: usize) -> &str {
        self.joined(i, i)
    }

    /// Items `first` to `last` as one string (they are stored back to back).
    fn joined(&self, first: usize, last: usize) -> &str {
        assert!(last < self.len as usize, "no string {last}");
        let end = self.end(last);
        let start = if first == 0 { 0 } else { self.end(first - 1) };
        let text = self.text_start();
        // Looked up a few dozen times per request (every header search
        // slices names), where str's boundary checks showed in profiles.
        // SAFETY: offsets of pushed items are ascending (first <= last),
        // within the buffer, and each was recorded after appending a whole
        // `str`, so both ends are char boundaries of UTF-8 text.
        unsafe { std::str::from_utf8_unchecked(self.buf.get_unchecked(text + start..text + end)) }
    }

    fn len(&self) -> usize {
        self.len as usize
    }
}

/// Request headers the agent itself reads (nesting, span, metrics, framing
/// of upgrades). A request head keeps these and no other: copying every
/// header of every request only to drop it showed in profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Host,
    UserAgent,
    Baggage,
    Upgrade,
    Traceparent,
    Tracestate,
}

impl Known {
    const ALL: [Known; 6] = [
        Known::Host,
        Known::UserAgent,
        Known::Baggage,
        Known::Upgrade,
        Known::Traceparent,
        Known::Tracestate,
    ];

    fn name(self) -> &'static str {
        match self {
            Known::Host => "host",
            Known::UserAgent => "user-agent",
            Known::Baggage => "baggage",
            Known::Upgrade => "upgrade",
            Known::Traceparent => "traceparent",
            Known::Tracestate => "tracestate",
        }
    }

    /// By the name's length first: most headers of a request are none of
    /// these, and a length mismatch rules them out without a comparison.
    fn of(name: &str) -> Option<Known> {
        let candidates: &[Known] = match name.len() {
            4 => &[Known::Host],
            7 => &[Known::Baggage, Known::Upgrade],
            10 => &[Known::UserAgent, Known::Tracestate],
            11 => &[Known::Traceparent],
            _ => return None,
        };
        candidates
            .iter()
            .copied()
            .find(|k| is_named(name, k.name()))
    }
}

/// Where the first value of each [`Known`] header is among a head's
/// strings (0: absent), and which are repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Located {
    first: [u8; Known::ALL.len()],
    repeated: u8,
}

/// The strings of a request head: its start-line items, then the name and
/// value of each [`Known`] header among its first [`MAX_HEADERS`].
fn keep(start_line: &[&str], headers: &[httparse::Header<'_>]) -> (Strings, Located) {
    let mut kept = [(0u8, Known::Host); MAX_HEADERS];
    let mut n = 0;
    let mut bytes = start_line.iter().map(|s| s.len()).sum::<usize>();
    for (i, h) in headers.iter().take(MAX_HEADERS).enumerate() {
        if let Some(k) = Known::of(h.name) {
            kept[n] = (i as u8, k);
            n += 1;
            bytes += h.name.len() + h.value.len().min(MAX_HEADER_VALUE);
        }
    }
    let mut strings = Strings::with_capacity(bytes, start_line.len() + 2 * n);
    let mut located = Located::default();
    for s in start_line {
        strings.push(s);
    }
    for &(i, k) in &kept[..n] {
        let h = &headers[usize::from(i)];
        let slot = &mut located.first[k as usize];
        if *slot == 0 {
            // At most 3 + 2 * MAX_HEADERS strings: u8 is plenty.
            *slot = (strings.len() + 1) as u8;
        } else {
            located.repeated |= 1 << k as u8;
        }
        strings.push(h.name);
        strings.push_value(h.value);
    }
    (strings, located)
}

/// A request's start line and the headers the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, the target's path and its query (from its `?`, if any),
    /// then the [`Known`] headers' names and values. Path and query are
    /// read a few times per request, so the target is split once.
    strings: Strings,
    located: Located,
    pub minor_version: u8,
}

impl RequestHead {
    pub(super) fn new(
        method: &str,
        target: &str,
        minor_version: u8,
        headers: &[httparse::Header<'_>],
    ) -> Self {
        // memchr: a byte-by-byte search took a loop turn per byte of the path.
        let query_at = memchr::memchr(b'?', target.as_bytes());
        let (path, query) = target.split_at(query_at.unwrap_or(target.len()));
        let (strings, located) = keep(&[method, path, query], headers);
        RequestHead {
            strings,
            located,
            minor_version,
        }
    }

    pub fn method(&self) -> &str {
        self.strings.get(0)
    }

    /// The request target as sent: path and query.
    pub fn target(&self) -> &str {
        self.strings.joined(1, 2)
    }

    /// Every kept value of header `name`, in order, matched case-insensitively.
    fn values_of<'n>(&self, name: &'n str) -> impl Iterator<Item = &str> + use<'_, 'n> {
        (3..self.strings.len().saturating_sub(1))
            .step_by(2)
            .filter(move |&i| is_named(self.strings.get(i), name))
            .map(move |i| self.strings.get(i + 1))
    }

    /// The first value of a header the agent reads.
    pub fn known(&self, k: Known) -> Option<&str> {
        match self.located.first[k as usize] {
            0 => None,
            i => Some(self.strings.get(usize::from(i))),
        }
    }

    /// The value of a header that must appear once: none if it is
    /// repeated. A repeated `traceparent` makes the request's context
    /// invalid (the W3C test suite expects a new trace), and the kernel,
    /// which cannot compare the values, agrees.
    pub fn known_once(&self, k: Known) -> Option<&str> {
        self.known(k).filter(|_| !self.is_repeated(k))
    }

    /// The values of a header that is a list, joined by `,` as one
    /// (RFC 9110 §5.3); borrowed unless the header is repeated, as it
    /// nearly never is.
    pub fn known_list(&self, k: Known) -> Cow<'_, str> {
        if self.is_repeated(k) {
            Cow::Owned(self.values_of(k.name()).collect::<Vec<_>>().join(","))
        } else {
            Cow::Borrowed(self.known(k).unwrap_or_default())
        }
    }

    fn is_repeated(&self, k: Known) -> bool {
        self.located.repeated & 1 << k as u8 != 0
    }

    /// The path: the target up to its query, without the scheme and
    /// authority of an absolute-form target.
    pub fn path(&self) -> &str {
        strip_origin(self.strings.get(1))
    }

    /// The query, without its `?`.
    pub fn query(&self) -> Option<&str> {
        self.strings.get(2).strip_prefix('?')
    }
}

/// What the agent reads of a response head. Its headers matter only for
/// framing, and for a `101` whether it switches to HTTP/2, so none is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    /// A `101 Switching Protocols` to `h2c`.
    pub to_h2c: bool,
}

impl ResponseHead {
    pub(super) fn new(status: u16, minor_version: u8, headers: &[httparse::Header<'_>]) -> Self {
        let to_h2c = status == 101
            && headers
                .iter()
                .find(|h| is_named(h.name, "upgrade"))
                .is_some_and(|h| h.value.trim_ascii().eq_ignore_ascii_case(b"h2c"));
        ResponseHead {
            status,
            minor_version,
            to_h2c,
        }
    }
}

/// Absolute-form targets (sent to proxies) put scheme and authority before the path.
fn strip_origin(path: &str) -> &str {
    // Origin-form, nearly every request: no scheme can start with '/'.
    if path.starts_with('/') {
        return path;
    }
    let Some((scheme, rest)) = path.split_once("://") else {
        return path;
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    match rest.find('/') {
        _ if !is_scheme => path,
        Some(slash) => &rest[slash..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_cut_on_char_boundary() {
        let value = "é".repeat(MAX_HEADER_VALUE);
        let mut strings = Strings::with_capacity(0, 3);
        strings.push_value(value.as_bytes());
        strings.push_value(b"a\xffb");
        strings.push("");
        assert_eq!(strings.get(0).len(), MAX_HEADER_VALUE);
        assert_eq!(strings.get(1), "a\u{fffd}b");
        assert_eq!(strings.get(2), "");
    }

    #[test]
    fn known_headers_are_kept_in_order_and_others_dropped() {
        let header = |name, value| httparse::Header { name, value };
        let raw = [
            header("X-A", b"1"),
            header("User-Agent", b"curl"),
            header("TraceState", b"a=1"),
            header("Accept", b"*/*"),
            header("tracestate", b"b=2"),
            header("Upgrade", b""),
            header("HOST", b"h"),
        ];
        let head = RequestHead::new("GET", "/p?q", 1, &raw);
        assert_eq!((head.method(), head.target()), ("GET", "/p?q"));
        assert_eq!(head.known(Known::UserAgent), Some("curl"));
        assert_eq!(head.known(Known::Host), Some("h"));
        assert_eq!(head.known(Known::Upgrade), Some(""));
        assert_eq!(head.known(Known::Traceparent), None);
        assert_eq!(head.known_list(Known::Tracestate), "a=1,b=2");
        assert_eq!(head.known_once(Known::Tracestate), None);
        assert_eq!(head.known_list(Known::UserAgent), "curl");
        assert_eq!(head.known_once(Known::UserAgent), Some("curl"));
        assert_eq!(head.known_list(Known::Baggage), "");
        assert_eq!(head.known_once(Known::Baggage), None);
        // Start line, then names and values of the five known headers only.
        assert_eq!(head.strings.len(), 3 + 2 * 5);
        for k in Known::ALL {
            assert_eq!(Known::of(&k.name().to_ascii_uppercase()), Some(k));
        }
        assert_eq!(Known::of("hosts"), None);
        assert_eq!(Known::of("x-trace"), None);
    }

    #[test]
    fn only_the_first_headers_are_looked_at() {
        let header = |name, value| httparse::Header { name, value };
        let mut many: Vec<_> = (0..MAX_HEADERS)
            .map(|_| header("Baggage", b"k=v"))
            .collect();
        many.push(header("Host", b"late"));
        let head = RequestHead::new("GET", "/", 1, &many);
        assert_eq!(
            head.known_list(Known::Baggage),
            vec!["k=v"; MAX_HEADERS].join(",")
        );
        assert_eq!(head.known(Known::Host), None);
    }

    #[test]
    fn a_response_keeps_its_status_and_whether_it_switches_to_h2c() {
        let header = |name, value| httparse::Header { name, value };
        let h2c = [
            header("Connection", b"Upgrade"),
            header("UPGRADE", b" h2c "),
        ];
        assert!(ResponseHead::new(101, 1, &h2c).to_h2c);
        assert!(!ResponseHead::new(200, 1, &h2c).to_h2c);
        assert!(!ResponseHead::new(101, 1, &[header("Upgrade", b"websocket")]).to_h2c);
        assert_eq!(ResponseHead::new(204, 0, &[]).minor_version, 0);
    }
}
