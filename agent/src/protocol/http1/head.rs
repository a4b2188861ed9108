//! Parsed HTTP/1 message heads, kept compactly: every string of a head lives
//! back to back in one buffer after their offsets, so a head costs one
//! allocation however many headers it has (the agent keeps one per request
//! in flight).

use crate::protocol::http_common::bounded_text;

/// Headers kept per message; the ones past this still count for framing.
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

/// The header fields of a head: name and value pairs after `first` start-line items.
fn pairs(strings: &Strings, first: usize) -> Headers<'_> {
    Headers {
        strings,
        next: first,
    }
}

/// Names as sent, in order; at most [`MAX_HEADERS`], values cut to [`MAX_HEADER_VALUE`] bytes.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    strings: &'a Strings,
    next: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next + 1 >= self.strings.len() {
            return None;
        }
        let pair = (self.strings.get(self.next), self.strings.get(self.next + 1));
        self.next += 2;
        Some(pair)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.strings.len() - self.next) / 2;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Headers<'_> {}

impl<'a> Headers<'a> {
    /// The first value of header `name`, matched case-insensitively; only
    /// names are sliced out until one matches.
    fn value_of(self, name: &str) -> Option<&'a str> {
        self.values_of(name).next()
    }

    /// Every value of header `name`, in order, matched case-insensitively.
    fn values_of<'n>(self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        (self.next..self.strings.len().saturating_sub(1))
            .step_by(2)
            .filter(move |&i| self.strings.get(i).eq_ignore_ascii_case(name))
            .map(move |i| self.strings.get(i + 1))
    }
}

/// Builds the kept strings of a head: start-line items first, then headers.
fn keep(start_line: &[&str], headers: &[httparse::Header<'_>]) -> Strings {
    let kept = &headers[..headers.len().min(MAX_HEADERS)];
    let bytes = start_line.iter().map(|s| s.len()).sum::<usize>()
        + kept
            .iter()
            .map(|h| h.name.len() + h.value.len().min(MAX_HEADER_VALUE))
            .sum::<usize>();
    let mut strings = Strings::with_capacity(bytes, start_line.len() + 2 * kept.len());
    for s in start_line {
        strings.push(s);
    }
    for h in kept {
        strings.push(h.name);
        strings.push_value(h.value);
    }
    strings
}

/// Request headers the agent itself reads. Each is looked up several
/// times per request (nesting, span, metrics), so they are located once,
/// as the head is kept: scanning every name for each showed in profiles.
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

    fn of(name: &str) -> Option<Known> {
        Known::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

/// Where the [`Known`] headers' first values are among a head's strings
/// (0: absent), and which of them repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Located {
    first: [u8; Known::ALL.len()],
    repeated: u8,
}

impl Located {
    /// `first_header`: the index of the first header name among the strings.
    fn find(headers: &[httparse::Header<'_>], first_header: usize) -> Self {
        let mut l = Located::default();
        for (i, h) in headers.iter().take(MAX_HEADERS).enumerate() {
            let Some(k) = Known::of(h.name) else { continue };
            let slot = &mut l.first[k as usize];
            if *slot == 0 {
                // At most 3 + 2 * MAX_HEADERS strings: u8 is plenty.
                *slot = (first_header + 2 * i + 1) as u8;
            } else {
                l.repeated |= 1 << k as u8;
            }
        }
        l
    }
}

/// A request's start line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, the target's path and its query (from its `?`, if any),
    /// then header names and values. Path and query are read a few times
    /// per request, so the target is split once.
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
        let query_at = target.bytes().position(|b| b == b'?');
        let (path, query) = target.split_at(query_at.unwrap_or(target.len()));
        RequestHead {
            strings: keep(&[method, path, query], headers),
            located: Located::find(headers, 3),
            minor_version,
        }
    }

    pub fn method(&self) -> &str {
        self.strings.get(0)
    }

    /// The request-target as sent, e.g. `/a/b?x=1`.
    pub fn target(&self) -> &str {
        self.strings.joined(1, 2)
    }

    pub fn headers(&self) -> Headers<'_> {
        pairs(&self.strings, 3)
    }

    /// The first value of header `name`, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().value_of(name)
    }

    /// The first value of header `k`, as [`RequestHead::header`] finds it.
    pub fn known(&self, k: Known) -> Option<&str> {
        match self.located.first[k as usize] {
            0 => None,
            i => Some(self.strings.get(usize::from(i))),
        }
    }

    /// Every value of header `k`, in order.
    pub fn known_values(&self, k: Known) -> impl Iterator<Item = &str> {
        let repeated = self.located.repeated & 1 << k as u8 != 0;
        let (one, all) = if repeated {
            (None, Some(self.headers().values_of(k.name())))
        } else {
            (self.known(k), None)
        };
        one.into_iter().chain(all.into_iter().flatten())
    }

    /// The target's path, without query, and without scheme and authority for absolute-form targets.
    pub fn path(&self) -> &str {
        strip_origin(self.strings.get(1))
    }

    /// The target's query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.strings.get(2).strip_prefix('?')
    }
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    /// Reason, then header names and values.
    strings: Strings,
}

impl ResponseHead {
    pub(super) fn new(
        status: u16,
        reason: &str,
        minor_version: u8,
        headers: &[httparse::Header<'_>],
    ) -> Self {
        ResponseHead {
            status,
            minor_version,
            strings: keep(&[reason], headers),
        }
    }

    pub fn reason(&self) -> &str {
        self.strings.get(0)
    }

    /// Same bounds as [`RequestHead::headers`].
    pub fn headers(&self) -> Headers<'_> {
        pairs(&self.strings, 1)
    }

    /// The first value of header `name`, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().value_of(name)
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
    fn known_headers_are_found_as_any_other() {
        let header = |name, value| httparse::Header { name, value };
        let raw = [
            header("X-A", b"1"),
            header("User-Agent", b"curl"),
            header("TraceState", b"a=1"),
            header("tracestate", b"b=2"),
            header("Upgrade", b""),
        ];
        let head = RequestHead::new("GET", "/", 1, &raw);
        for k in Known::ALL {
            assert_eq!(head.known(k), head.header(k.name()), "{k:?}");
            assert!(
                head.known_values(k).eq(head.headers().values_of(k.name())),
                "{k:?}"
            );
        }
        assert_eq!(head.known(Known::Upgrade), Some(""));
        let many: Vec<_> = (0..MAX_HEADERS + 1)
            .map(|_| header("Baggage", b"k=v"))
            .collect();
        let head = RequestHead::new("GET", "/", 1, &many);
        assert_eq!(head.known_values(Known::Baggage).count(), MAX_HEADERS);
    }

    #[test]
    fn headers_iterate_in_order() {
        let raw = [
            httparse::Header {
                name: "Host",
                value: b"h",
            },
            httparse::Header {
                name: "X-Empty",
                value: b"",
            },
        ];
        let head = RequestHead::new("GET", "/", 1, &raw);
        assert_eq!(head.headers().len(), 2);
        assert_eq!(
            head.headers().collect::<Vec<_>>(),
            [("Host", "h"), ("X-Empty", "")]
        );
        assert_eq!(head.header("x-empty"), Some(""));
        assert_eq!(head.known(Known::Host), Some("h"));
        assert_eq!(head.known(Known::Traceparent), None);
        let head = ResponseHead::new(200, "", 1, &[]);
        assert_eq!((head.reason(), head.headers().len()), ("", 0));
    }
}
