//! Streaming HTTP/1.x framer: turns one direction's captured syscall chunks into message frames.

use std::collections::VecDeque;
use std::mem;

use super::chunked::Chunked;
use super::head::{Known, RequestHead, ResponseHead};
use super::parse::{self, Body, Framing, ParseError, Sniff};

/// Largest message head buffered; a longer one is given up on.
pub const MAX_HEAD: usize = 64 * 1024;
/// Errors in a row, with no good head between them, after which the stream is written off.
const MAX_ERROR_STREAK: u32 = 8;
/// Chunks a decoder skips before its first good head, looking for a start line, before giving up.
const MAX_UNSYNCED_CHUNKS: u32 = 16;
/// Request methods remembered for responses not seen yet; the oldest go first.
const MAX_PENDING_METHODS: usize = 128;
/// How a chunked body that was fully captured typically ends: last chunk, no trailers.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Which kind of messages a direction of a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Requests,
    Responses,
}

/// What the decoder found in the stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Headers of a request are complete. `ts` = timestamp of the chunk holding its first byte.
    Request { head: RequestHead, ts: u64 },
    /// Headers of a final (status >= 200, or 101) response are complete.
    Response { head: ResponseHead, ts: u64 },
    /// An interim 1xx response (100 Continue, 103 ...): does not complete a request.
    Interim { status: u16, ts: u64 },
    /// The body of the last Request/Response is complete. `ts` = timestamp of the chunk holding
    /// its last byte (for a body delimited by close: of the close).
    End { ts: u64 },
    /// Bytes that are not HTTP/1 where a message should start, or a message that cannot be
    /// framed; after a Request/Response it means that message's body was lost. The decoder then
    /// discards input until a later chunk begins with something that looks like a start line.
    Error(ParseError),
}

/// Framing-relevant kind of the request a response answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Head,
    Connect,
    Other,
}

impl Method {
    fn of(method: &str) -> Self {
        match method {
            "HEAD" => Method::Head,
            "CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
}

/// Where the stream goes once the current message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    NextMessage,
    /// After a CONNECT or Upgrade request: tunnel bytes follow if the server agreed, so skip
    /// quietly until a chunk starts with a request line.
    MaybeTunnel,
    /// The connection switched protocols: nothing after this is HTTP/1.
    Tunnel,
}

/// A message head being buffered.
#[derive(Debug)]
struct PartialHead {
    buf: Vec<u8>,
    /// Timestamp of the chunk holding the head's first byte.
    ts: u64,
    /// How far `buf` was searched for the head's end.
    scanned: usize,
}

#[derive(Debug)]
enum State {
    /// Between messages; CR/LF here are skipped.
    Idle,
    Head(PartialHead),
    /// This many body bytes still to come, never zero.
    Sized(u64),
    Chunked(Chunked),
    UntilClose,
    /// Chunk framing fell into a gap; the body is assumed to go on until a chunk starts with a
    /// start line. Holds the timestamp of the last chunk taken as part of it.
    Lost(u64),
    /// Skipping until a chunk starts with a whole start line.
    Resync,
    Tunnel,
}

/// Frames one direction of one HTTP/1 connection from captured syscall chunks.
#[derive(Debug)]
pub struct Decoder {
    side: Side,
    state: State,
    then: Then,
    methods: VecDeque<Method>,
    /// Whether a head ever parsed: until then errors mean the stream is not HTTP at all.
    synced: bool,
    error_streak: u32,
    unsynced_chunks: u32,
    hopeless: bool,
}

impl Decoder {
    /// A decoder for a stream seen from its first byte.
    pub fn new(side: Side) -> Self {
        Self::starting_in(side, State::Idle)
    }

    /// A decoder for a connection that was already open when capture began: its first bytes may
    /// be the middle of a message, so they are skipped quietly until a chunk starts with a start
    /// line. Gives up if none of the first chunks does.
    pub fn mid_stream(side: Side) -> Self {
        Self::starting_in(side, State::Resync)
    }

    fn starting_in(side: Side, state: State) -> Self {
        Decoder {
            side,
            state,
            then: Then::NextMessage,
            methods: VecDeque::new(),
            synced: false,
            error_streak: 0,
            unsynced_chunks: 0,
            hopeless: false,
        }
    }

    /// Feeds one syscall's worth of bytes: `data` is the captured prefix of the `total` bytes moved.
    pub fn feed(&mut self, data: &[u8], total: usize, ts: u64, out: &mut Vec<Frame>) {
        if self.hopeless {
            return;
        }
        self.chunk_starts(data, ts, out);
        let mut input = data;
        while !input.is_empty() {
            input = self.step(input, ts, out);
        }
        let missing = total.saturating_sub(data.len()) as u64;
        if missing > 0 {
            self.skip_missing(missing, ts, out);
        } else if let State::Lost(_) = self.state {
            self.maybe_last_chunk(data, ts, out);
        }
    }

    /// The peer closed the connection: ends a body delimited by close, drops partial messages.
    pub fn finish(&mut self, ts: u64, out: &mut Vec<Frame>) {
        match mem::replace(&mut self.state, State::Idle) {
            State::UntilClose => self.end(ts, out),
            State::Lost(last) => self.end(last, out),
            State::Tunnel => self.state = State::Tunnel,
            // Truncated by the close: nothing trustworthy is left to report.
            State::Idle | State::Head(_) | State::Sized(_) | State::Chunked(_) | State::Resync => {}
        }
    }

    /// Tells a [`Side::Responses`] decoder, in order, the method of each request sent on the
    /// connection: HEAD responses have no body, a 2xx to CONNECT starts a tunnel.
    pub fn expect_response_to(&mut self, method: &str) {
        if self.methods.len() == MAX_PENDING_METHODS {
            self.methods.pop_front();
        }
        self.methods.push_back(Method::of(method));
    }

    /// True once the stream turned out not to be HTTP/1: an error before any good head,
    /// [`MAX_ERROR_STREAK`] errors in a row, or no start line in a mid-stream decoder's first
    /// chunks. Gaps do not count. A hopeless decoder ignores all further input.
    pub fn is_hopeless(&self) -> bool {
        self.hopeless
    }

    /// True once the connection switched protocols (101, or 2xx to CONNECT): the decoder ignores
    /// all further input.
    pub fn is_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    /// Decisions that only a chunk boundary allows: resynchronising, ending a lost body.
    fn chunk_starts(&mut self, data: &[u8], ts: u64, out: &mut Vec<Frame>) {
        if !matches!(self.state, State::Resync | State::Lost(_)) {
            return;
        }
        if self.starts_with_start_line(data) {
            if let State::Lost(last) = self.state {
                self.end(last, out);
            }
            self.state = State::Idle;
        } else if let State::Lost(_) = self.state {
            self.state = State::Lost(ts);
        } else if !self.synced {
            self.unsynced_chunks += 1;
            self.hopeless = self.unsynced_chunks > MAX_UNSYNCED_CHUNKS;
        }
    }

    /// Consumes a prefix of `input` (all of it, or up to where the state changes).
    fn step<'a>(&mut self, input: &'a [u8], ts: u64, out: &mut Vec<Frame>) -> &'a [u8] {
        match mem::replace(&mut self.state, State::Idle) {
            State::Idle => self.begin(input, ts),
            State::Head(head) => self.grow_head(head, input, ts, out),
            State::Sized(left) => self.skip_sized(left, input, ts, out),
            State::Chunked(chunked) => self.skip_chunked(chunked, input, ts, out),
            skipping @ (State::UntilClose | State::Lost(_) | State::Resync | State::Tunnel) => {
                self.state = skipping;
                &[]
            }
        }
    }

    fn begin<'a>(&mut self, input: &'a [u8], ts: u64) -> &'a [u8] {
        let input = skip_blank_lines(input);
        if !input.is_empty() {
            self.state = State::Head(PartialHead {
                buf: Vec::new(),
                ts,
                scanned: 0,
            });
        }
        input
    }

    fn grow_head<'a>(
        &mut self,
        mut head: PartialHead,
        input: &'a [u8],
        ts: u64,
        out: &mut Vec<Frame>,
    ) -> &'a [u8] {
        if head.buf.is_empty() && self.sniff(input) != Sniff::No {
            // The usual case, a whole head in one syscall: parsed in place,
            // httparse finding where it ends (looking for the empty line
            // first cost a memchr per line). A head cut short, too large
            // or malformed takes the buffered path, which reports it.
            if let Ok(Some(len)) = self.emit_head(input, head.ts, ts, out) {
                return &input[len..];
            }
        }
        let old = head.buf.len();
        let taken = input.len().min(MAX_HEAD - old);
        head.buf.extend_from_slice(&input[..taken]);
        if self.sniff(&head.buf) == Sniff::No {
            self.fail_head(ParseError::NotHttp, out);
            return &[];
        }
        match find_head_end(&head.buf, head.scanned) {
            Some(end) => {
                // The buffer ends with an empty line, so wanting more means
                // line endings are broken.
                let incomplete = ParseError::BadHead(httparse::Error::NewLine);
                let emitted = self.emit_head(&head.buf[..end], head.ts, ts, out);
                if let Err(e) = emitted.and_then(|len| len.ok_or(incomplete)) {
                    self.fail_head(e, out);
                }
                &input[end - old..]
            }
            None if head.buf.len() == MAX_HEAD => {
                self.fail_head(ParseError::HeadersTooLarge, out);
                &[]
            }
            None => {
                head.scanned = head.buf.len();
                self.state = State::Head(head);
                &[]
            }
        }
    }

    /// Parses the head `buf` starts with and emits it; its length, or
    /// `None` when `buf` ends first or the head is longer than
    /// [`MAX_HEAD`]. Nothing is emitted unless it returns a length.
    /// `head_ts` stamps the head, `ts` (the chunk holding its last byte)
    /// an empty body's End.
    fn emit_head(
        &mut self,
        buf: &[u8],
        head_ts: u64,
        ts: u64,
        out: &mut Vec<Frame>,
    ) -> Result<Option<usize>, ParseError> {
        let (body, len) = match self.side {
            Side::Requests => match parse::parse_request(buf)? {
                Some(p) if p.len <= MAX_HEAD => {
                    (self.request(p.head, p.framing, head_ts, out), p.len)
                }
                _ => return Ok(None),
            },
            Side::Responses => match parse::parse_response(buf)? {
                Some(p) if p.len <= MAX_HEAD => {
                    (self.response(p.head, p.framing, head_ts, out), p.len)
                }
                _ => return Ok(None),
            },
        };
        // None: an interim response, the final one still to come.
        if let Some(body) = body {
            self.begin_body(body, ts, out);
        }
        Ok(Some(len))
    }

    fn request(
        &mut self,
        head: RequestHead,
        framing: Framing,
        ts: u64,
        out: &mut Vec<Frame>,
    ) -> Option<Result<Body, ParseError>> {
        self.synced();
        if head.method() == "CONNECT" || head.known(Known::Upgrade).is_some() {
            self.then = Then::MaybeTunnel;
        }
        out.push(Frame::Request { head, ts });
        Some(framing.request_body())
    }

    /// The body to expect, `None` after an interim response.
    fn response(
        &mut self,
        head: ResponseHead,
        framing: Framing,
        ts: u64,
        out: &mut Vec<Frame>,
    ) -> Option<Result<Body, ParseError>> {
        self.synced();
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            out.push(Frame::Interim { status, ts });
            return None;
        }
        out.push(Frame::Response { head, ts });
        let method = self.methods.pop_front().unwrap_or(Method::Other);
        if status == 101 || (method == Method::Connect && (200..300).contains(&status)) {
            self.then = Then::Tunnel;
            return Some(Ok(Body::Empty));
        }
        let bodiless = method == Method::Head || status == 204 || status == 304;
        Some(if bodiless {
            Ok(Body::Empty)
        } else {
            framing.response_body()
        })
    }

    fn synced(&mut self) {
        self.synced = true;
        self.error_streak = 0;
    }

    fn begin_body(&mut self, body: Result<Body, ParseError>, ts: u64, out: &mut Vec<Frame>) {
        match body {
            Ok(Body::Empty) => self.end(ts, out),
            Ok(Body::Sized(len)) => self.state = State::Sized(len),
            Ok(Body::Chunked) => self.state = State::Chunked(Chunked::new()),
            Ok(Body::UntilClose) => self.state = State::UntilClose,
            Err(e) => self.fail(e, out),
        }
    }

    fn skip_sized<'a>(
        &mut self,
        left: u64,
        input: &'a [u8],
        ts: u64,
        out: &mut Vec<Frame>,
    ) -> &'a [u8] {
        let n = left.min(input.len() as u64);
        if n == left {
            self.end(ts, out);
        } else {
            self.state = State::Sized(left - n);
        }
        &input[n as usize..]
    }

    fn skip_chunked<'a>(
        &mut self,
        mut chunked: Chunked,
        input: &'a [u8],
        ts: u64,
        out: &mut Vec<Frame>,
    ) -> &'a [u8] {
        match chunked.advance(input) {
            Ok(Some(n)) => {
                self.end(ts, out);
                &input[n..]
            }
            Ok(None) => {
                self.state = State::Chunked(chunked);
                &[]
            }
            Err(e) => {
                self.fail(e, out);
                &[]
            }
        }
    }

    /// Accounts for the uncaptured tail of a chunk.
    fn skip_missing(&mut self, missing: u64, ts: u64, out: &mut Vec<Frame>) {
        match mem::replace(&mut self.state, State::Idle) {
            // A message starts among the missing bytes: its head is lost.
            State::Idle | State::Head(_) => self.fail_head(ParseError::Gap, out),
            State::Sized(left) if missing < left => self.state = State::Sized(left - missing),
            State::Sized(left) => {
                self.end(ts, out);
                if missing > left {
                    self.skip_missing(missing - left, ts, out);
                }
            }
            State::Chunked(chunked) => {
                self.state = chunked
                    .skip_gap(missing)
                    .map_or(State::Lost(ts), State::Chunked);
            }
            State::Lost(_) => self.state = State::Lost(ts),
            other @ (State::UntilClose | State::Resync | State::Tunnel) => self.state = other,
        }
    }

    /// A fully captured chunk ending like a chunked body's end most likely ends the lost body.
    fn maybe_last_chunk(&mut self, data: &[u8], ts: u64, out: &mut Vec<Frame>) {
        let ends_body = data == LAST_CHUNK
            || (data.ends_with(LAST_CHUNK)
                && data[..data.len() - LAST_CHUNK.len()].ends_with(b"\n"));
        if ends_body {
            self.end(ts, out);
        }
    }

    fn end(&mut self, ts: u64, out: &mut Vec<Frame>) {
        out.push(Frame::End { ts });
        self.state = match mem::replace(&mut self.then, Then::NextMessage) {
            Then::NextMessage => State::Idle,
            Then::MaybeTunnel => State::Resync,
            Then::Tunnel => State::Tunnel,
        };
    }

    /// A message that was to start here is lost: so is the response's claim on its request.
    fn fail_head(&mut self, error: ParseError, out: &mut Vec<Frame>) {
        if self.side == Side::Responses {
            self.methods.pop_front();
        }
        self.fail(error, out);
    }

    fn fail(&mut self, error: ParseError, out: &mut Vec<Frame>) {
        if error != ParseError::Gap {
            self.error_streak += 1;
            self.hopeless |= !self.synced || self.error_streak >= MAX_ERROR_STREAK;
        }
        out.push(Frame::Error(error));
        self.then = Then::NextMessage;
        self.state = State::Resync;
    }

    /// Whether a chunk begins with a whole start line of this side's messages.
    fn starts_with_start_line(&self, data: &[u8]) -> bool {
        let data = skip_blank_lines(data);
        let Some(newline) = data.iter().position(|&b| b == b'\n') else {
            return false;
        };
        let line = &data[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.side {
            Side::Requests => parse::is_request_line(line),
            Side::Responses => parse::is_status_line(line),
        }
    }

    fn sniff(&self, buf: &[u8]) -> Sniff {
        match self.side {
            Side::Requests => parse::sniff_request(buf),
            Side::Responses => parse::sniff_response(buf),
        }
    }
}

/// Peers may send stray empty lines between messages (RFC 9112 §2.2).
fn skip_blank_lines(input: &[u8]) -> &[u8] {
    let blank = input
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    &input[blank..]
}

/// The offset just past the empty line ending the head, searching from about `from` on.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // The end may straddle the previous search's boundary.
    let start = from.saturating_sub(2);
    memchr::memchr_iter(b'\n', &buf[start..]).find_map(|i| {
        let after = start + i + 1;
        match buf.get(after..) {
            Some([b'\n', ..]) => Some(after + 1),
            Some([b'\r', b'\n', ..]) => Some(after + 2),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder plus what it emitted, shown compactly for assertions.
    struct Run {
        decoder: Decoder,
        out: Vec<Frame>,
    }

    impl Run {
        fn new(side: Side) -> Self {
            Run {
                decoder: Decoder::new(side),
                out: Vec::new(),
            }
        }

        fn feed(&mut self, data: impl AsRef<[u8]>, ts: u64) -> &mut Self {
            let data = data.as_ref();
            self.feed_cut(data, data.len(), ts)
        }

        fn feed_cut(&mut self, data: impl AsRef<[u8]>, total: usize, ts: u64) -> &mut Self {
            self.decoder.feed(data.as_ref(), total, ts, &mut self.out);
            self
        }

        fn finish(&mut self, ts: u64) -> &mut Self {
            self.decoder.finish(ts, &mut self.out);
            self
        }

        fn expect(&mut self, method: &str) -> &mut Self {
            self.decoder.expect_response_to(method);
            self
        }

        /// Frames emitted since the last call.
        fn shown(&mut self) -> Vec<String> {
            self.out.drain(..).map(|f| show(&f)).collect()
        }
    }

    fn show(frame: &Frame) -> String {
        match frame {
            Frame::Request { head, ts } => format!("{} {} @{ts}", head.method(), head.target()),
            Frame::Response { head, ts } => format!("{} @{ts}", head.status),
            Frame::Interim { status, ts } => format!("interim {status} @{ts}"),
            Frame::End { ts } => format!("end @{ts}"),
            Frame::Error(e) => format!("{e:?}"),
        }
    }

    fn requests() -> Run {
        Run::new(Side::Requests)
    }

    fn responses() -> Run {
        Run::new(Side::Responses)
    }

    const GET: &str = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    const OK_EMPTY: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    const CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    /// A whole head in one chunk ends where httparse says, a buffered one
    /// at its first empty line: both must agree, or a head would be cut
    /// differently depending on how it was read.
    #[test]
    fn httparse_ends_a_head_at_its_first_empty_line() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 12] = [
            b"X-A",
            b": ",
            b"v",
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b":",
            b"\xc3\xa9",
            b"\0",
            b"Host: h\r\n",
        ];
        let mut agreed = 0;
        for i in 0..20_000 {
            let mut head = if i % 2 == 0 {
                b"GET / HTTP/1.1\r\n".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\n".to_vec()
            };
            for _ in 0..next() % 12 {
                head.extend_from_slice(pieces[(next() % 12) as usize]);
            }
            head.extend_from_slice(b"\r\n\r\nbody\r\n\r\n");
            let len = if i % 2 == 0 {
                parse::parse_request(&head).map(|p| p.map(|p| p.len))
            } else {
                parse::parse_response(&head).map(|p| p.map(|p| p.len))
            };
            if let Ok(Some(len)) = len {
                assert_eq!(
                    Some(len),
                    find_head_end(&head, 0),
                    "{:?}",
                    head.escape_ascii()
                );
                agreed += 1;
            }
        }
        assert!(agreed > 1_000, "{agreed} heads parsed");
    }

    #[test]
    fn request_without_body_ends_with_its_head() {
        let mut run = requests();
        run.feed(
            "GET /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-Id: 7\r\n\r\n",
            1,
        );
        let Frame::Request { head, .. } = &run.out[0] else {
            panic!("{:?}", run.out);
        };
        assert_eq!((head.path(), head.query()), ("/a/b", Some("x=1")));
        assert_eq!(
            (head.known(Known::Host), head.minor_version),
            (Some("example"), 1)
        );
        assert_eq!(run.shown(), ["GET /a/b?x=1 @1", "end @1"]);
    }

    #[test]
    fn keep_alive_requests_in_sequence() {
        let mut run = requests();
        run.feed(GET, 1)
            .feed("POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 2)
            .feed("DELETE /d HTTP/1.1\r\n\r\n", 3);
        let expected = [
            "GET /a @1",
            "end @1",
            "POST /p @2",
            "end @2",
            "DELETE /d @3",
            "end @3",
        ];
        assert_eq!(run.shown(), expected);
        assert!(!run.decoder.is_hopeless());
    }

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let chunk = format!("{GET}PUT /p HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi{GET}");
        let expected = [
            "GET /a @1",
            "end @1",
            "PUT /p @1",
            "end @1",
            "GET /a @1",
            "end @1",
        ];
        assert_eq!(requests().feed(chunk, 1).shown(), expected);
    }

    #[test]
    fn pipelined_responses_in_one_chunk() {
        let chunk = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
             HTTP/1.1 204 No Content\r\n\r\n\
             {CHUNKED_HEAD}2\r\nhi\r\n0\r\n\r\n"
        );
        let expected = ["200 @1", "end @1", "204 @1", "end @1", "200 @1", "end @1"];
        assert_eq!(responses().feed(chunk, 1).shown(), expected);
    }

    #[test]
    fn content_length_body_across_chunks() {
        let mut run = responses();
        run.feed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 1)
            .feed("ab", 2);
        assert_eq!(run.shown(), ["200 @1"]);
        assert_eq!(
            run.feed("cde", 3).feed(OK_EMPTY, 4).shown(),
            ["end @3", "200 @4", "end @4"]
        );
    }

    #[test]
    fn uncaptured_bytes_inside_a_body_are_counted() {
        let head = "POST /up HTTP/1.1\r\nContent-Length: 10000\r\n\r\n";
        let captured = format!("{head}{}", "x".repeat(100));
        let mut run = requests();
        run.feed_cut(&captured, head.len() + 6000, 1);
        run.feed_cut("y".repeat(100), 4000, 2).feed(GET, 3);
        assert_eq!(
            run.shown(),
            ["POST /up @1", "end @2", "GET /a @3", "end @3"]
        );
    }

    #[test]
    fn gigabyte_body_costs_nothing() {
        let mut run = responses();
        run.feed("HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n", 1);
        // sendfile: no bytes captured at all.
        run.feed_cut([], 1 << 30, 2).feed(OK_EMPTY, 3);
        assert_eq!(run.shown(), ["200 @1", "end @2", "200 @3", "end @3"]);
        assert!(matches!(run.decoder.state, State::Idle));
    }

    #[test]
    fn gap_past_a_body_loses_the_next_head() {
        let captured = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc";
        let mut run = responses();
        run.feed_cut(captured, captured.len() + 2 + 30, 1);
        run.feed("rest of the lost head\r\n\r\n", 2)
            .feed(OK_EMPTY, 3);
        assert_eq!(run.shown(), ["200 @1", "end @1", "Gap", "200 @3", "end @3"]);
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_byte_by_byte() {
        let message = format!("{CHUNKED_HEAD}4;ext=1\r\nwiki\r\n0\r\nExpires: never\r\n\r\n");
        let mut run = responses();
        for (ts, byte) in message.bytes().enumerate() {
            run.feed([byte], ts as u64);
        }
        let last = message.len() - 1;
        assert_eq!(run.shown(), ["200 @0".to_owned(), format!("end @{last}")]);
    }

    #[test]
    fn chunked_gap_inside_chunk_data_is_fine() {
        let captured = format!("{CHUNKED_HEAD}1000\r\n{}", "d".repeat(100));
        let mut run = responses();
        run.feed_cut(&captured, captured.len() + 4096 - 100, 1)
            .feed("\r\n0\r\n\r\n", 2);
        assert_eq!(run.shown(), ["200 @1", "end @2"]);
    }

    /// A chunked body whose framing fell into the uncaptured tail of chunk 1.
    fn lost_chunked_body() -> Run {
        let captured = format!("{CHUNKED_HEAD}5\r\nabc");
        let mut run = responses();
        run.feed_cut(&captured, captured.len() + 1000, 1);
        assert_eq!(run.shown(), ["200 @1"]);
        run
    }

    #[test]
    fn lost_chunk_framing_ends_at_the_next_response() {
        let mut run = lost_chunked_body();
        run.feed("more body", 2);
        assert_eq!(run.shown(), Vec::<String>::new());
        assert_eq!(
            run.feed(OK_EMPTY, 3).shown(),
            ["end @2", "200 @3", "end @3"]
        );
    }

    #[test]
    fn lost_chunk_framing_ends_at_a_captured_last_chunk() {
        let mut run = lost_chunked_body();
        run.feed("tail\r\n0\r\n\r\n", 2).feed(OK_EMPTY, 3);
        assert_eq!(run.shown(), ["end @2", "200 @3", "end @3"]);
    }

    #[test]
    fn lost_chunk_framing_ends_at_close() {
        let mut run = lost_chunked_body();
        assert_eq!(run.feed("more", 2).finish(9).shown(), ["end @2"]);
    }

    #[test]
    fn http10_body_delimited_by_close() {
        let mut run = responses();
        run.feed("HTTP/1.0 200 OK\r\nServer: old\r\n\r\nsome", 1)
            .feed(" body", 2);
        let Frame::Response { head, .. } = &run.out[0] else {
            panic!("{:?}", run.out);
        };
        assert_eq!((head.minor_version, head.status), (0, 200));
        assert_eq!(run.shown(), ["200 @1"]);
        assert_eq!(run.finish(7).shown(), ["end @7"]);
    }

    #[test]
    fn http10_request() {
        let mut run = requests();
        run.feed("GET / HTTP/1.0\r\n\r\n", 1);
        assert!(matches!(&run.out[0], Frame::Request { head, .. } if head.minor_version == 0));
        assert_eq!(run.shown(), ["GET / @1", "end @1"]);
    }

    #[test]
    fn headers_one_byte_per_write() {
        let message = "POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nok";
        let mut run = requests();
        for (ts, byte) in message.bytes().enumerate() {
            run.feed([byte], ts as u64);
        }
        let last = message.len() - 1;
        assert_eq!(
            run.shown(),
            ["POST /x @0".to_owned(), format!("end @{last}")]
        );
    }

    #[test]
    fn head_end_split_across_writes() {
        for split in [
            "GET /a HTTP/1.1\r\nHost: h\r\n",
            "GET /a HTTP/1.1\r\nHost: h\r\n\r",
            "GET /a HTTP/1.1\r\nHost: h\r",
        ] {
            let mut run = requests();
            run.feed(split, 1).feed(&GET[split.len()..], 2);
            assert_eq!(run.shown(), ["GET /a @1", "end @2"], "{split:?}");
        }
    }

    #[test]
    fn request_line_at_a_write_boundary() {
        let mut run = requests();
        run.feed("GET /a HTTP/1.1\r\n", 1)
            .feed("Host: h\r\n\r\n", 2);
        assert_eq!(run.shown(), ["GET /a @1", "end @2"]);
    }

    #[test]
    fn too_large_head_is_given_up_on() {
        let mut run = requests();
        run.feed(GET, 1).feed("GET /big HTTP/1.1\r\nX: ", 2);
        for _ in 0..=MAX_HEAD / 4096 {
            run.feed("a".repeat(4096), 3);
        }
        run.feed("a\r\n\r\n", 4).feed(GET, 5);
        let expected = [
            "GET /a @1",
            "end @1",
            "HeadersTooLarge",
            "GET /a @5",
            "end @5",
        ];
        assert_eq!(run.shown(), expected);
        assert!(!run.decoder.is_hopeless());
    }

    #[test]
    fn gap_inside_a_head_resyncs() {
        let captured = "GET /big HTTP/1.1\r\nCookie: aaaa";
        let mut run = requests();
        run.feed_cut(captured, captured.len() + 5000, 1);
        run.feed("rest of cookie\r\n\r\n", 2).feed(GET, 3);
        assert_eq!(run.shown(), ["Gap", "GET /a @3", "end @3"]);
        assert!(!run.decoder.is_hopeless(), "gaps are not garbage");
    }

    #[test]
    fn expect_100_continue_requests() {
        let mut run = requests();
        run.feed(
            "PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            1,
        );
        assert_eq!(run.shown(), ["PUT /f @1"]);
        assert_eq!(run.feed("data", 3).shown(), ["end @3"]);
    }

    #[test]
    fn expect_100_continue_responses() {
        let mut run = responses();
        run.expect("HEAD").feed("HTTP/1.1 100 Continue\r\n\r\n", 2);
        assert_eq!(run.shown(), ["interim 100 @2"]);
        // The interim response left the HEAD for the final one: no body despite the length.
        run.feed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 4)
            .feed(OK_EMPTY, 5);
        assert_eq!(run.shown(), ["200 @4", "end @4", "200 @5", "end @5"]);
    }

    #[test]
    fn head_responses_have_no_body() {
        let chunk = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut run = responses();
        run.expect("HEAD").expect("GET").feed(chunk, 1);
        assert_eq!(run.shown(), ["200 @1", "end @1", "200 @1", "end @1"]);
    }

    #[test]
    fn statuses_without_body() {
        let chunk = "HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </s.css>\r\n\r\n\
                     HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n\
                     HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n";
        let mut run = responses();
        run.feed(chunk, 1).feed(OK_EMPTY, 2);
        let expected = [
            "interim 103 @1",
            "204 @1",
            "end @1",
            "304 @1",
            "end @1",
            "200 @2",
            "end @2",
        ];
        assert_eq!(run.shown(), expected);
    }

    #[test]
    fn switching_protocols_ends_http() {
        let mut run = responses();
        run.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
            1,
        );
        run.feed(OK_EMPTY, 2).finish(3);
        assert_eq!(run.shown(), ["101 @1", "end @1"]);
        assert!(run.decoder.is_tunnel());
        assert!(!run.decoder.is_hopeless());
    }

    #[test]
    fn connect_tunnel() {
        let mut run = responses();
        run.expect("CONNECT")
            .feed("HTTP/1.1 200 Connection Established\r\n\r\n", 1);
        run.feed(b"\x16\x03\x03\x00\x7a\x02", 2);
        assert_eq!(run.shown(), ["200 @1", "end @1"]);
        assert!(run.decoder.is_tunnel());
    }

    #[test]
    fn refused_connect_stays_http() {
        let mut run = responses();
        run.expect("CONNECT")
            .feed(
                "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\nno",
                1,
            )
            .feed(OK_EMPTY, 2);
        assert_eq!(run.shown(), ["407 @1", "end @1", "200 @2", "end @2"]);
        assert!(!run.decoder.is_tunnel());
    }

    #[test]
    fn tunnel_bytes_after_upgrade_requests_are_skipped_quietly() {
        let mut run = requests();
        run.feed(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            1,
        )
        .feed(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 2)
        .feed("CONNECT h:443 HTTP/1.1\r\n\r\n", 3)
        .feed(b"\x16\x03\x01\x02\x00\x01", 4)
        .feed(GET, 5);
        let expected = [
            "GET /ws @1",
            "end @1",
            "CONNECT h:443 @3",
            "end @3",
            "GET /a @5",
            "end @5",
        ];
        assert_eq!(run.shown(), expected);
        assert!(!run.decoder.is_hopeless());
    }

    #[test]
    fn h2c_upgrade_preface_is_not_a_request() {
        let mut run = requests();
        run.feed(
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            1,
        )
        .feed("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 2);
        assert_eq!(run.shown(), ["GET / @1", "end @1"]);
    }

    /// Deterministic xorshift bytes, so failures reproduce.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn garbage_is_hopeless() {
        let garbage: [&[u8]; 5] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            &noise(7, 4096),
        ];
        for side in [Side::Requests, Side::Responses] {
            for bytes in garbage {
                let mut run = Run::new(side);
                run.feed(bytes, 1);
                assert_eq!(run.shown(), ["NotHttp"], "{side:?} {bytes:?}");
                assert!(run.decoder.is_hopeless());
                assert_eq!(
                    run.feed(GET, 2).feed(OK_EMPTY, 3).shown(),
                    Vec::<String>::new()
                );
            }
        }
    }

    #[test]
    fn resync_waits_for_a_start_line_at_a_chunk_start() {
        let mut run = requests();
        run.feed(GET, 1)
            .feed("\x00garbage", 2)
            .feed(format!("junk {GET}"), 3)
            .feed(format!("\r\n{GET}"), 4);
        let expected = ["GET /a @1", "end @1", "NotHttp", "GET /a @4", "end @4"];
        assert_eq!(run.shown(), expected);
    }

    /// A start line fit to resync on, but a head httparse rejects.
    const BAD_HEAD: &[u8] = b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n";

    #[test]
    fn errors_in_a_row_make_hopeless() {
        let mut run = requests();
        run.feed(GET, 0);
        for ts in 1..MAX_ERROR_STREAK {
            run.feed(BAD_HEAD, ts.into());
        }
        assert!(!run.decoder.is_hopeless());
        run.feed(BAD_HEAD, 9);
        assert!(run.decoder.is_hopeless());
        let bad = Frame::Error(ParseError::BadHead(httparse::Error::HeaderValue));
        assert_eq!(run.out.last(), Some(&bad));
    }

    #[test]
    fn gaps_never_make_hopeless() {
        let mut run = requests();
        for ts in 0..100 {
            run.feed_cut("GET / HTTP/1.1\r\nHo", 1000, ts);
        }
        assert!(!run.decoder.is_hopeless());
        assert_eq!(run.feed(GET, 100).shown().len(), 102);
    }

    #[test]
    fn bad_framing_keeps_the_head_and_resyncs() {
        let mut run = requests();
        run.feed("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n1x", 1)
            .feed(GET, 2);
        let expected = [
            "POST / @1",
            "BadFraming(\"invalid Content-Length\")",
            "GET /a @2",
            "end @2",
        ];
        assert_eq!(run.shown(), expected);
        let mut run = responses();
        run.feed(format!("{CHUNKED_HEAD}zz\r\n"), 1)
            .feed(OK_EMPTY, 2);
        assert_eq!(
            run.shown(),
            [
                "200 @1",
                "BadFraming(\"invalid chunk size\")",
                "200 @2",
                "end @2"
            ]
        );
    }

    #[test]
    fn blank_lines_between_messages_are_skipped() {
        let mut run = requests();
        run.feed(format!("{GET}\r\n"), 1)
            .feed(format!("\r\n{GET}"), 2);
        assert_eq!(run.shown(), ["GET /a @1", "end @1", "GET /a @2", "end @2"]);
    }

    #[test]
    fn mid_stream_skips_to_the_first_start_line() {
        let mut run = Run {
            decoder: Decoder::mid_stream(Side::Responses),
            out: Vec::new(),
        };
        run.feed("tail of a body", 1).feed(OK_EMPTY, 2);
        assert_eq!(run.shown(), ["200 @2", "end @2"]);
        assert!(!run.decoder.is_hopeless());
    }

    #[test]
    fn mid_stream_gives_up_without_start_lines() {
        let mut decoder = Decoder::mid_stream(Side::Requests);
        let mut out = Vec::new();
        for ts in 0..=u64::from(MAX_UNSYNCED_CHUNKS) {
            assert!(!decoder.is_hopeless());
            decoder.feed(&noise(ts, 100), 100, ts, &mut out);
        }
        assert!(decoder.is_hopeless());
        assert!(out.is_empty());
    }

    #[test]
    fn finish_drops_partial_messages() {
        for partial in [
            "GET /a HTTP/1.1\r\nHo",
            "POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc",
        ] {
            assert_eq!(
                requests().feed(partial, 1).finish(2).shown().len(),
                partial.matches("POST").count()
            );
        }
    }

    #[test]
    fn pending_methods_are_bounded() {
        let mut run = responses();
        for _ in 0..1000 {
            run.expect("HEAD");
        }
        assert_eq!(run.decoder.methods.len(), MAX_PENDING_METHODS);
    }

    /// Frames must nest: every End and Error closes at most the one open message.
    fn assert_well_formed(side: Side, frames: &[Frame]) {
        let mut open = false;
        for frame in frames {
            match (frame, side) {
                (Frame::Request { .. }, Side::Requests)
                | (Frame::Response { .. }, Side::Responses) => {
                    assert!(!open, "{frames:?}");
                    open = true;
                }
                (Frame::Interim { .. }, Side::Responses) => assert!(!open, "{frames:?}"),
                (Frame::End { .. }, _) => {
                    assert!(open, "{frames:?}");
                    open = false;
                }
                (Frame::Error(_), _) => open = false,
                _ => panic!("{side:?} decoder emitted {frame:?}"),
            }
        }
    }

    #[test]
    fn random_cuts_of_random_and_mutated_input_never_panic() {
        let valid = format!(
            "{GET}POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc{CHUNKED_HEAD}\
             1\r\nz\r\n0\r\n\r\nHTTP/1.1 101 Switching\r\n\r\n"
        );
        for seed in 1..2000u64 {
            let mut input = valid.clone().into_bytes();
            let dice = noise(seed, 64);
            for flip in dice.chunks(2).take(usize::from(dice[0] % 8)) {
                let at = usize::from(flip[0]) * input.len() / 256;
                input[at] = flip[1];
            }
            if seed % 5 == 0 {
                input = noise(seed, 600);
            }
            for side in [Side::Requests, Side::Responses] {
                let mut decoder = if seed % 3 == 0 {
                    Decoder::mid_stream(side)
                } else {
                    Decoder::new(side)
                };
                let mut out = Vec::new();
                let mut rest = &input[..];
                for (ts, cut) in dice.iter().cycle().enumerate() {
                    if rest.is_empty() {
                        break;
                    }
                    let len = usize::from(cut % 40).min(rest.len());
                    let missing = if cut % 7 == 0 { usize::from(*cut) } else { 0 };
                    if cut % 11 == 0 {
                        decoder.expect_response_to(["GET", "HEAD", "CONNECT"][ts % 3]);
                    }
                    decoder.feed(&rest[..len], len + missing, ts as u64, &mut out);
                    rest = &rest[len..];
                    if let State::Head(head) = &decoder.state {
                        assert!(head.buf.len() <= MAX_HEAD);
                    }
                }
                decoder.finish(u64::MAX, &mut out);
                assert_well_formed(side, &out);
            }
        }
    }
}
