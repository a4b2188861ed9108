//! HTTP/1.x message heads: httparse-backed parsing and the body framing they imply.

use std::mem::MaybeUninit;

#[cfg(test)]
use super::head::{Known, MAX_HEADERS, MAX_HEADER_VALUE};
use super::head::{RequestHead, ResponseHead};

/// Longest method a request line may start with; real ones are far shorter.
const MAX_METHOD: usize = 24;
/// What an HTTP/2 connection opens with: a valid-looking request line we must not take.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Every response head starts with this.
const RESPONSE_PREFIX: &[u8] = b"HTTP/1.";

/// Why bytes could not be framed as HTTP/1 messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not HTTP/1: no start line where a message should begin")]
    NotHttp,
    #[error("malformed message head: {0}")]
    BadHead(httparse::Error),
    #[error("message head larger than the buffer limit")]
    HeadersTooLarge,
    #[error("cannot delimit the message body: {0}")]
    BadFraming(&'static str),
    #[error("bytes of a message head were not captured")]
    Gap,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    Empty,
    /// Exactly this many bytes, never zero.
    Sized(u64),
    Chunked,
    UntilClose,
}

impl Body {
    fn sized(len: u64) -> Self {
        if len == 0 {
            Body::Empty
        } else {
            Body::Sized(len)
        }
    }
}

/// The framing headers of a message, read from all its headers, not just the kept ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Framing {
    /// Whether the final transfer-coding is chunked; `None` without Transfer-Encoding.
    chunked: Option<bool>,
    content_length: Result<Option<u64>, ParseError>,
}

impl Framing {
    /// One pass, by the name's length first: most names are neither.
    fn of(headers: &[httparse::Header<'_>]) -> Self {
        let mut transfer_encoding = None;
        let mut length = Ok(None);
        for h in headers {
            match h.name.len() {
                17 if is_named(h.name, "transfer-encoding") => transfer_encoding = Some(h.value),
                14 if is_named(h.name, "content-length") => {
                    length = length.and_then(|found| content_length(found, h.value))
                }
                _ => {}
            }
        }
        Framing {
            chunked: transfer_encoding.map(ends_chunked),
            content_length: length,
        }
    }

    /// Request body framing (RFC 9112 §6.3): Transfer-Encoding wins over Content-Length.
    pub(super) fn request_body(self) -> Result<Body, ParseError> {
        match self.chunked {
            Some(true) => Ok(Body::Chunked),
            Some(false) => Err(ParseError::BadFraming(
                "request transfer-coding is not chunked",
            )),
            None => Ok(self.content_length?.map_or(Body::Empty, Body::sized)),
        }
    }

    /// Response body framing for a status and request method that allow a body.
    pub(super) fn response_body(self) -> Result<Body, ParseError> {
        match self.chunked {
            Some(true) => Ok(Body::Chunked),
            Some(false) => Ok(Body::UntilClose),
            None => Ok(self.content_length?.map_or(Body::UntilClose, Body::sized)),
        }
    }
}

/// Whether bytes at a message boundary can begin a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniff {
    Yes,
    No,
    /// A prefix of a start line; more bytes decide.
    NeedMore,
}

/// Sniffs `METHOD SP` (a token method) at the start of `buf`.
pub(super) fn sniff_request(buf: &[u8]) -> Sniff {
    if buf.starts_with(H2_PREFACE) {
        return Sniff::No;
    }
    if H2_PREFACE.starts_with(buf) {
        return Sniff::NeedMore;
    }
    match buf.iter().position(|&b| !is_token(b)) {
        Some(0) => Sniff::No,
        Some(n) if n <= MAX_METHOD && buf[n] == b' ' => Sniff::Yes,
        Some(_) => Sniff::No,
        None if buf.len() <= MAX_METHOD => Sniff::NeedMore,
        None => Sniff::No,
    }
}

/// Sniffs `HTTP/1.` at the start of `buf`.
pub(super) fn sniff_response(buf: &[u8]) -> Sniff {
    if buf.starts_with(RESPONSE_PREFIX) {
        Sniff::Yes
    } else if RESPONSE_PREFIX.starts_with(buf) {
        Sniff::NeedMore
    } else {
        Sniff::No
    }
}

/// Whether `line` (without its line ending) is a whole request line: stricter than sniffing, as
/// it decides where to pick a stream up again, where any word and a space would look like a method.
pub(super) fn is_request_line(line: &[u8]) -> bool {
    let words = line.split(|&b| b == b' ').filter(|w| !w.is_empty()).count();
    sniff_request(line) == Sniff::Yes
        && words == 3
        && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
}

/// Whether `line` (without its line ending) is a whole status line, like `HTTP/1.1 200 OK`.
pub(super) fn is_status_line(line: &[u8]) -> bool {
    match line.strip_prefix(RESPONSE_PREFIX) {
        Some([b'0' | b'1', b' ', code @ ..]) => {
            code.len() >= 3
                && code[..3].iter().all(u8::is_ascii_digit)
                && matches!(code.get(3), None | Some(b' '))
        }
        _ => false,
    }
}

/// A message head, and where it ends.
#[derive(Debug)]
pub(super) struct Parsed<H> {
    pub head: H,
    pub framing: Framing,
    /// Its length, the empty line ending it included.
    pub len: usize,
}

/// Parses the request head `buf` starts with; `None` when `buf` ends first.
pub(super) fn parse_request(buf: &[u8]) -> Result<Option<Parsed<RequestHead>>, ParseError> {
    with_header_slots(buf, |slots| {
        let mut req = httparse::Request::new(&mut []);
        let status = config().parse_request_with_uninit_headers(&mut req, buf, slots);
        let Some(len) = complete(status)? else {
            return Ok(None);
        };
        let head = RequestHead::new(
            req.method.unwrap_or_default(),
            req.path.unwrap_or_default(),
            req.version.unwrap_or_default(),
            req.headers,
        );
        let framing = Framing::of(req.headers);
        Ok(Some(Parsed { head, framing, len }))
    })
}

/// Parses the response head `buf` starts with; `None` when `buf` ends first.
pub(super) fn parse_response(buf: &[u8]) -> Result<Option<Parsed<ResponseHead>>, ParseError> {
    with_header_slots(buf, |slots| {
        let mut res = httparse::Response::new(&mut []);
        let status = config().parse_response_with_uninit_headers(&mut res, buf, slots);
        let Some(len) = complete(status)? else {
            return Ok(None);
        };
        let head = ResponseHead::new(
            res.code.unwrap_or_default(),
            res.version.unwrap_or_default(),
            res.headers,
        );
        let framing = Framing::of(res.headers);
        Ok(Some(Parsed { head, framing, len }))
    })
}

/// An observer must accept whatever real peers accept, so parse leniently.
fn config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    config
}

/// Header slots on the stack, for heads of up to this many headers (most heads).
const STACK_SLOTS: usize = 32;

/// A header slot httparse fills.
type Slot<'b> = MaybeUninit<httparse::Header<'b>>;

/// Runs `parse` with header slots on the stack, and when they are too few,
/// with one per line of `buf`, which is always enough. Lines are counted
/// only then: counting them cost more than parsing most heads' headers.
/// The slots are left uninitialised, httparse writing those it fills:
/// setting all of them first cost as much as a short head's headers.
fn with_header_slots<'b, T>(
    buf: &'b [u8],
    parse: impl Fn(&mut [Slot<'b>]) -> Result<T, ParseError>,
) -> Result<T, ParseError> {
    match parse(&mut [const { MaybeUninit::uninit() }; STACK_SLOTS]) {
        Err(ParseError::BadHead(httparse::Error::TooManyHeaders)) => {
            let lines = memchr::memchr_iter(b'\n', buf).count();
            let mut slots = Vec::with_capacity(lines);
            parse(slots.spare_capacity_mut())
        }
        parsed => parsed,
    }
}

/// The head's length; `None` when the buffer ends first.
fn complete(status: httparse::Result<usize>) -> Result<Option<usize>, ParseError> {
    match status {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ParseError::BadHead(e)),
    }
}

/// Whether header name `name` (a token) is `lower`, a lowercase name of
/// letters and dashes. Setting bit 5 lowercases a letter and leaves a dash,
/// and no other token character becomes one of those, so one OR per byte
/// does what `eq_ignore_ascii_case`'s per-byte case mapping does, for a
/// look at each header of each message. The OR is done eight bytes at a
/// time (the last word overlapping the one before it), or four: a byte at
/// a time cost a loop turn per byte of the names compared.
pub(super) fn is_named(name: &str, lower: &str) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let (name, lower) = (name.as_bytes(), lower.as_bytes());
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n >= 8 {
        let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
        let same = |at: usize| word(name, at) | FOLD == word(lower, at);
        let mut at = 0;
        while at + 8 < n {
            if !same(at) {
                return false;
            }
            at += 8;
        }
        same(n - 8)
    } else if n >= 4 {
        let word = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
        let same = |at: usize| word(name, at) | FOLD as u32 == word(lower, at);
        same(0) && same(n - 4)
    } else {
        name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b)
    }
}

/// RFC 9110 token characters, which methods and header names are made of.
/// A `match`, which compiles to a bit test: a search of the list of
/// punctuation was compiled to a loop over it in some builds.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The value's last transfer-coding is `chunked`.
fn ends_chunked(value: &[u8]) -> bool {
    let coding = value
        .rsplit(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .find(|c| !c.is_empty());
    coding.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

/// The length `found` so far, with one more `Content-Length` value: repeated
/// or comma-listed values are fine as long as they agree (RFC 9110 §8.6).
fn content_length(found: Option<u64>, value: &[u8]) -> Result<Option<u64>, ParseError> {
    let mut found = found;
    for part in value.split(|&b| b == b',') {
        let len =
            decimal(part.trim_ascii()).ok_or(ParseError::BadFraming("invalid Content-Length"))?;
        if found.is_some_and(|f| f != len) {
            return Err(ParseError::BadFraming("conflicting Content-Length values"));
        }
        found = Some(len);
    }
    Ok(found)
}

/// Plain digits only: `u64::from_str` would also take a sign.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let digit = char::from(d).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> (RequestHead, Framing) {
        let parsed = parse_request(head.as_bytes()).expect("valid request head");
        let parsed = parsed.expect("whole head");
        (parsed.head, parsed.framing)
    }

    fn response(head: &str) -> (ResponseHead, Framing) {
        let parsed = parse_response(head.as_bytes()).expect("valid response head");
        let parsed = parsed.expect("whole head");
        (parsed.head, parsed.framing)
    }

    fn target(t: &str) -> RequestHead {
        request(&format!("GET {t} HTTP/1.1\r\n\r\n")).0
    }

    #[test]
    fn request_head_fields() {
        let (head, _) = request("POST /a/b?x=1&y HTTP/1.0\r\nHost: h\r\nX-Id: 7\r\n\r\n");
        assert_eq!(head.method(), "POST");
        assert_eq!(head.target(), "/a/b?x=1&y");
        assert_eq!(head.minor_version, 0);
        assert_eq!(head.path(), "/a/b");
        assert_eq!(head.query(), Some("x=1&y"));
        assert_eq!(head.known(Known::Host), Some("h"));
        assert_eq!(head.known(Known::UserAgent), None);
    }

    #[test]
    fn path_of_other_target_forms() {
        assert_eq!(target("/plain").query(), None);
        assert_eq!(target("http://h:80/p?q").path(), "/p");
        assert_eq!(target("https://h").path(), "/");
        assert_eq!(target("/r?to=http://x/y").path(), "/r");
        assert_eq!(target("/a://b").path(), "/a://b");
        assert_eq!(target("*").path(), "*");
    }

    #[test]
    fn response_head_fields() {
        let (head, _) = response("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n");
        assert_eq!(head.status, 404);
        assert_eq!(head.minor_version, 1);
    }

    /// Word by word, names compare as they do a byte at a time.
    #[test]
    fn names_compare_as_their_bytes_do() {
        let bytewise =
            |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a | 0x20 == *b);
        let lower = b"transfer-encoding-and-more";
        for len in 0..lower.len() {
            let lower = &lower[..len];
            for at in 0..len {
                for byte in [b'A', b'a', b'R', b'-', b'\r', b'0', b'~', 0x80] {
                    let mut name = lower.to_vec();
                    name.make_ascii_uppercase();
                    name[at] = byte;
                    let name = String::from_utf8_lossy(&name);
                    let lower = std::str::from_utf8(lower).unwrap();
                    assert_eq!(
                        is_named(&name, lower),
                        bytewise(name.as_bytes(), lower.as_bytes()),
                        "{name} {lower}"
                    );
                }
            }
            let upper = std::str::from_utf8(lower).unwrap().to_ascii_uppercase();
            assert!(is_named(&upper, std::str::from_utf8(lower).unwrap()));
        }
    }

    #[test]
    fn bare_lf_line_endings() {
        let (head, _) = request("GET / HTTP/1.1\nHost: h\n\n");
        assert_eq!(head.known(Known::Host), Some("h"));
    }

    #[test]
    fn headers_are_bounded_but_framing_sees_all() {
        let mut head = String::from("POST / HTTP/1.1\r\n");
        head.push_str(&format!("User-Agent: {}\r\n", "v".repeat(2000)));
        for i in 0..MAX_HEADERS {
            head.push_str(&format!("X-{i}: {}\r\n", "v".repeat(2000)));
        }
        head.push_str("Host: late\r\nContent-Length: 5\r\n\r\n");
        let (head, framing) = request(&head);
        assert_eq!(
            head.known(Known::UserAgent).map(str::len),
            Some(MAX_HEADER_VALUE)
        );
        assert_eq!(head.known(Known::Host), None);
        assert_eq!(framing.request_body(), Ok(Body::Sized(5)));
    }

    #[test]
    fn malformed_heads() {
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            ParseError::BadHead(httparse::Error::Version)
        );
        assert!(parse_request(b"GET /\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    fn request_body(head: &str) -> Result<Body, ParseError> {
        request(&format!("POST / HTTP/1.1\r\n{head}\r\n"))
            .1
            .request_body()
    }

    fn response_body(head: &str) -> Result<Body, ParseError> {
        response(&format!("HTTP/1.1 200 OK\r\n{head}\r\n"))
            .1
            .response_body()
    }

    #[test]
    fn request_framing() {
        assert_eq!(request_body(""), Ok(Body::Empty));
        assert_eq!(request_body("Content-Length: 0\r\n"), Ok(Body::Empty));
        assert_eq!(request_body("content-length: 12\r\n"), Ok(Body::Sized(12)));
        assert_eq!(
            request_body("Content-Length: 5, 5\r\nContent-Length: 5\r\n"),
            Ok(Body::Sized(5))
        );
        assert_eq!(
            request_body("Transfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n"),
            Ok(Body::Chunked)
        );
        for bad in ["+5", "-1", "", "0x10", "99999999999999999999", "5, 6"] {
            assert!(
                matches!(
                    request_body(&format!("Content-Length: {bad}\r\n")),
                    Err(ParseError::BadFraming(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            request_body("Transfer-Encoding: chunked, gzip\r\n"),
            Err(ParseError::BadFraming(_))
        ));
    }

    #[test]
    fn response_framing() {
        assert_eq!(response_body(""), Ok(Body::UntilClose));
        assert_eq!(response_body("Content-Length: 0\r\n"), Ok(Body::Empty));
        assert_eq!(response_body("Content-Length: 7\r\n"), Ok(Body::Sized(7)));
        assert_eq!(
            response_body("Transfer-Encoding: Chunked\r\n"),
            Ok(Body::Chunked)
        );
        assert_eq!(
            response_body("Transfer-Encoding: gzip\r\n"),
            Ok(Body::UntilClose)
        );
        assert_eq!(
            response_body("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
            Ok(Body::UntilClose)
        );
        assert!(response_body("Content-Length: x\r\n").is_err());
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff_request(b"GET / HTTP/1.1"), Sniff::Yes);
        assert_eq!(sniff_request(b"M-SEARCH * HTTP/1.1"), Sniff::Yes);
        assert_eq!(sniff_request(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff_request(b""), Sniff::NeedMore);
        assert_eq!(sniff_request(b" GET"), Sniff::No);
        assert_eq!(sniff_request(b"HTTP/1.1 200 OK"), Sniff::No);
        assert_eq!(sniff_request(b"\x16\x03\x01\x02\x00"), Sniff::No);
        assert_eq!(
            sniff_request("A".repeat(MAX_METHOD + 1).as_bytes()),
            Sniff::No
        );
        assert_eq!(sniff_request(b"PRI * HT"), Sniff::NeedMore);
        assert_eq!(
            sniff_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Sniff::No
        );
        assert_eq!(sniff_response(b"HTTP/1.1 200"), Sniff::Yes);
        assert_eq!(sniff_response(b"HTT"), Sniff::NeedMore);
        assert_eq!(sniff_response(b"HTTP/2 200"), Sniff::No);
        assert_eq!(sniff_response(b"GET / HTTP/1.1"), Sniff::No);
    }

    #[test]
    fn whole_start_lines() {
        assert!(is_request_line(b"GET /a?b HTTP/1.1"));
        assert!(is_request_line(b"OPTIONS * HTTP/1.0"));
        assert!(!is_request_line(b"rest of the cookie"));
        assert!(!is_request_line(b"GET /a"));
        assert!(!is_request_line(b"junk GET /a HTTP/1.1"));
        assert!(!is_request_line(b"PRI * HTTP/2.0"));
        assert!(is_status_line(b"HTTP/1.1 200 OK"));
        assert!(is_status_line(b"HTTP/1.0 404"));
        assert!(!is_status_line(b"HTTP/1.1 20"));
        assert!(!is_status_line(b"HTTP/1.1 2000"));
        assert!(!is_status_line(b"HTTP/1.2 200 OK"));
        assert!(!is_status_line(b"HTTP/1.1"));
    }
}
