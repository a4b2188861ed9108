//! Streaming HTTP/2 framer for one direction of a connection: turns
//! captured syscall chunks into header blocks (HEADERS or PUSH_PROMISE with
//! their CONTINUATIONs, padding and priority removed), DATA lengths, and
//! stream and connection ends. DATA is never buffered.

use super::resync::Resync;

/// Frame header length (RFC 9113 §4.1).
pub const HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const PRIORITY_FRAME: u8 = 0x2;
pub const PING: u8 = 0x6;
pub const WINDOW_UPDATE: u8 = 0x8;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

/// Largest frame a chunk met after lost bytes may start with: peers can
/// raise the 16 KiB default up to 16 MiB, but a frame header claiming more
/// than this is more likely bytes inside a payload.
pub const MAX_RESYNC_FRAME: u32 = 1 << 20;

/// Largest header block buffered (all its frames together); a longer one
/// breaks the direction, since HPACK cannot skip a block.
pub const MAX_BLOCK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Bytes of a DATA payload: captured, or moved by the syscall but not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    Captured(&'a [u8]),
    Lost(usize),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete header block. `ts`: the chunk holding its first frame's header.
    Headers {
        stream: u32,
        end_stream: bool,
        block: &'a [u8],
        ts: u64,
    },
    /// A pushed request's header block: decoded only to keep HPACK in step.
    Promise {
        block: &'a [u8],
    },
    /// Part of a DATA frame's payload, padding removed.
    Data {
        stream: u32,
        bytes: Payload<'a>,
    },
    /// A DATA frame ended.
    DataEnd {
        stream: u32,
        end_stream: bool,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the connection preface is missing")]
    NoPreface,
    #[error("bytes not captured inside a frame header or a header block")]
    Gap,
    #[error("header block longer than {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error("invalid frame sequence: {0}")]
    Protocol(&'static str),
    /// Not an error of the stream: a chunk after lost bytes that does not
    /// start at a frame boundary is skipped, and the next one tried.
    #[error("bytes after a loss that do not start at a frame boundary")]
    Unsynced,
}

/// A header block whose frames are still arriving.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    promise: bool,
    ts: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// The client preface (on the requests' side), `have` bytes of it seen.
    Preface {
        have: usize,
    },
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    /// Appending `left` more payload bytes of the frame `h` to the block;
    /// `from` is where this frame's payload starts in it.
    Block {
        h: FrameHeader,
        left: usize,
        from: usize,
    },
    /// A PADDED DATA frame before its pad-length byte.
    DataPad {
        h: FrameHeader,
        left: usize,
    },
    Data {
        h: FrameHeader,
        data: usize,
        pad: usize,
    },
    /// RST_STREAM or GOAWAY: their first 8 bytes matter, the rest is skipped.
    Fixed {
        h: FrameHeader,
        buf: [u8; 8],
        have: usize,
        left: usize,
    },
    Skip {
        left: usize,
    },
    /// Bytes were lost: the next chunk that starts with frame headers
    /// chaining to its end starts framing again (see [`frame_boundary`]).
    Resync,
    Broken,
}

/// Frames one direction of one HTTP/2 connection.
#[derive(Debug)]
pub struct Frames {
    state: State,
    block: Vec<u8>,
    open: Option<OpenBlock>,
    /// Whether the first frame (which must be SETTINGS) was seen.
    synced: bool,
    /// Chunks held while resyncing (boxed: most connections never lose
    /// records).
    resync: Option<Box<Resync>>,
}

impl Frames {
    /// `preface`: the direction opens with the client connection preface.
    pub fn new(preface: bool) -> Self {
        let state = if preface {
            State::Preface { have: 0 }
        } else {
            State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            }
        };
        Frames {
            state,
            block: Vec::new(),
            open: None,
            synced: false,
            resync: None,
        }
    }

    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken)
    }

    /// Stops decoding for good (the caller lost HPACK state).
    pub fn stop(&mut self) {
        self.state = State::Broken;
        self.block = Vec::new();
    }

    /// Records of the connection were lost: this direction's position in
    /// its frames is unknown until a chunk starts at a frame boundary.
    /// Header blocks lost meanwhile are the caller's to account for.
    pub fn resync(&mut self) {
        if !self.is_broken() {
            // Chunks held from before this loss do not run on into the next.
            self.resync = None;
            self.state = State::Resync;
            self.block.clear();
            self.open = None;
        }
    }

    pub fn is_resyncing(&self) -> bool {
        matches!(self.state, State::Resync)
    }

    /// Whether the direction ever framed a good first frame: errors before
    /// that mean it is not HTTP/2 at all.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Feeds one syscall's bytes: `data` is the captured prefix of the
    /// `total` bytes moved. The first error breaks the direction for good:
    /// later calls do nothing.
    pub fn feed(
        &mut self,
        data: &[u8],
        total: usize,
        ts: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        if self.is_broken() {
            return Ok(());
        }
        if self.is_resyncing() {
            let held = self.resync.get_or_insert_default();
            let Some(chunks) = held.push(data, total, ts) else {
                return Err(FrameError::Unsynced);
            };
            self.resync = None;
            // Bytes were lost after the direction was known to be HTTP/2.
            self.synced = true;
            self.next_frame();
            for c in chunks {
                self.feed(&c.bytes, c.total, c.ts, emit)?;
            }
            return Ok(());
        }
        let mut input = data;
        let mut missing = total.saturating_sub(data.len());
        let result = loop {
            if !input.is_empty() {
                match self.step(input, ts, emit) {
                    Ok(rest) => input = rest,
                    Err(e) => break Err(e),
                }
            } else if missing > 0 {
                match self.skip(missing, emit) {
                    Ok(rest) => missing = rest,
                    Err(e) => break Err(e),
                }
            } else {
                break Ok(());
            }
        };
        if result.is_err() {
            self.stop();
        }
        result
    }

    /// Consumes bytes from the front of `input` and returns the rest.
    fn step<'a>(
        &mut self,
        input: &'a [u8],
        ts: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<&'a [u8], FrameError> {
        match &mut self.state {
            State::Preface { have } => {
                let preface = super::detect::PREFACE;
                let n = input.len().min(preface.len() - *have);
                if input[..n] != preface[*have..*have + n] {
                    return Err(FrameError::NoPreface);
                }
                *have += n;
                if *have == preface.len() {
                    self.state = State::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    };
                }
                Ok(&input[n..])
            }
            State::Header { buf, have } => {
                let n = input.len().min(HEADER_LEN - *have);
                buf[*have..*have + n].copy_from_slice(&input[..n]);
                *have += n;
                if *have == HEADER_LEN {
                    let h = FrameHeader::parse(buf);
                    self.start_frame(h, ts, emit)?;
                }
                Ok(&input[n..])
            }
            State::Block { h, left, from } => {
                let (h, from) = (*h, *from);
                let n = input.len().min(*left);
                *left -= n;
                let done = *left == 0;
                self.block.extend_from_slice(&input[..n]);
                if done {
                    self.end_block_frame(h, from, emit)?;
                }
                Ok(&input[n..])
            }
            State::DataPad { h, left } => {
                let pad = usize::from(input[0]);
                if pad >= *left {
                    return Err(FrameError::Protocol("DATA padding exceeds its frame"));
                }
                let h = *h;
                self.state = State::Data {
                    h,
                    data: *left - 1 - pad,
                    pad,
                };
                self.maybe_end_data(emit);
                Ok(&input[1..])
            }
            State::Data { h, data, pad } => {
                let (stream, n) = (h.stream, input.len().min(*data));
                *data -= n;
                let skipped = (input.len() - n).min(*pad);
                *pad -= skipped;
                if n > 0 {
                    emit(Event::Data {
                        stream,
                        bytes: Payload::Captured(&input[..n]),
                    });
                }
                self.maybe_end_data(emit);
                Ok(&input[n + skipped..])
            }
            State::Fixed { h, buf, have, left } => {
                let n = input.len().min(*left);
                let keep = n.min(buf.len() - *have);
                buf[*have..*have + keep].copy_from_slice(&input[..keep]);
                *have += keep;
                *left -= n;
                if *left == 0 {
                    let (h, buf) = (*h, *buf);
                    fixed_frame(h, &buf, emit);
                    self.next_frame();
                }
                Ok(&input[n..])
            }
            State::Skip { left } => {
                let n = input.len().min(*left);
                *left -= n;
                if *left == 0 {
                    self.next_frame();
                }
                Ok(&input[n..])
            }
            State::Resync | State::Broken => Ok(&[]),
        }
    }

    /// Accounts `missing` bytes the syscall moved but capture cut off;
    /// returns how many are still to account for.
    fn skip(
        &mut self,
        missing: usize,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<usize, FrameError> {
        match &mut self.state {
            State::Data { h, data, pad } => {
                let n = missing.min(*data);
                *data -= n;
                let skipped = (missing - n).min(*pad);
                *pad -= skipped;
                if n > 0 {
                    emit(Event::Data {
                        stream: h.stream,
                        bytes: Payload::Lost(n),
                    });
                }
                self.maybe_end_data(emit);
                Ok(missing - n - skipped)
            }
            // Padding and data cannot be told apart: all of it counts as data.
            State::DataPad { h, left } => {
                let h = *h;
                self.state = State::Data {
                    h,
                    data: *left,
                    pad: 0,
                };
                self.skip(missing, emit)
            }
            // The frame's content is lost, but it is skipped in step.
            State::Fixed { left, .. } | State::Skip { left } => {
                let n = missing.min(*left);
                *left -= n;
                if *left == 0 {
                    self.next_frame();
                }
                Ok(missing - n)
            }
            State::Preface { .. } | State::Header { .. } | State::Block { .. } => {
                Err(FrameError::Gap)
            }
            State::Resync | State::Broken => Ok(0),
        }
    }

    fn start_frame(
        &mut self,
        h: FrameHeader,
        ts: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        let len = h.len as usize;
        if !self.synced && (h.kind != SETTINGS || h.has(0x1)) {
            return Err(FrameError::Protocol("the first frame is not SETTINGS"));
        }
        self.synced = true;
        if self.open.is_some() != (h.kind == CONTINUATION) {
            return Err(FrameError::Protocol("CONTINUATION out of place"));
        }
        let on_stream = h.stream != 0;
        match h.kind {
            HEADERS | PUSH_PROMISE | CONTINUATION if on_stream => {
                if self.open.is_none() {
                    self.open = Some(OpenBlock {
                        stream: h.stream,
                        end_stream: h.kind == HEADERS && h.has(END_STREAM),
                        promise: h.kind == PUSH_PROMISE,
                        ts,
                    });
                } else if self.open.is_some_and(|o| o.stream != h.stream) {
                    return Err(FrameError::Protocol("CONTINUATION on another stream"));
                }
                if self.block.len() + len > MAX_BLOCK {
                    return Err(FrameError::BlockTooLarge);
                }
                let from = self.block.len();
                self.state = State::Block { h, left: len, from };
                if len == 0 {
                    self.end_block_frame(h, from, emit)?;
                }
            }
            DATA if on_stream => {
                self.state = if h.has(PADDED) {
                    if len == 0 {
                        return Err(FrameError::Protocol("PADDED DATA without pad length"));
                    }
                    State::DataPad { h, left: len }
                } else {
                    State::Data {
                        h,
                        data: len,
                        pad: 0,
                    }
                };
                self.maybe_end_data(emit);
            }
            RST_STREAM if on_stream && len == 4 => self.fixed(h),
            GOAWAY if !on_stream && len >= 8 => self.fixed(h),
            SETTINGS if !on_stream && len.is_multiple_of(6) => self.skip_payload(len),
            HEADERS | PUSH_PROMISE | CONTINUATION | DATA | RST_STREAM | GOAWAY | SETTINGS => {
                return Err(FrameError::Protocol("malformed frame"));
            }
            // PRIORITY, PING, WINDOW_UPDATE and extensions change nothing we report.
            _ => self.skip_payload(len),
        }
        Ok(())
    }

    fn fixed(&mut self, h: FrameHeader) {
        self.state = State::Fixed {
            h,
            buf: [0; 8],
            have: 0,
            left: h.len as usize,
        };
    }

    fn skip_payload(&mut self, len: usize) {
        if len == 0 {
            self.next_frame();
        } else {
            self.state = State::Skip { left: len };
        }
    }

    fn next_frame(&mut self) {
        self.state = State::Header {
            buf: [0; HEADER_LEN],
            have: 0,
        };
    }

    fn maybe_end_data(&mut self, emit: &mut impl FnMut(Event<'_>)) {
        if let State::Data { h, data: 0, pad: 0 } = self.state {
            emit(Event::DataEnd {
                stream: h.stream,
                end_stream: h.has(END_STREAM),
            });
            self.next_frame();
        }
    }

    /// A frame of a header block is all here: strips the first frame's
    /// padding and priority (or promised stream id), and emits the block
    /// once END_HEADERS says it is whole.
    fn end_block_frame(
        &mut self,
        h: FrameHeader,
        from: usize,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        if h.kind != CONTINUATION {
            let padded = h.has(PADDED);
            let pad = if padded {
                usize::from(
                    *self
                        .block
                        .get(from)
                        .ok_or(FrameError::Protocol("no pad length"))?,
                )
            } else {
                0
            };
            let prefix = usize::from(padded)
                + match h.kind {
                    PUSH_PROMISE => 4,
                    _ if h.has(PRIORITY) => 5,
                    _ => 0,
                };
            if from + prefix + pad > self.block.len() {
                return Err(FrameError::Protocol("padding exceeds its frame"));
            }
            self.block.truncate(self.block.len() - pad);
            self.block.drain(from..from + prefix);
        }
        self.next_frame();
        if h.has(END_HEADERS) {
            let open = self.open.take().expect("a block frame opens a block");
            if open.promise {
                emit(Event::Promise { block: &self.block });
            } else {
                emit(Event::Headers {
                    stream: open.stream,
                    end_stream: open.end_stream,
                    block: &self.block,
                    ts: open.ts,
                });
            }
            self.block.clear();
        }
        Ok(())
    }
}

/// The default largest frame (SETTINGS_MAX_FRAME_SIZE, RFC 9113 §6.5.2).
const DEFAULT_MAX_FRAME: u32 = 16384;

/// Where frames start in a chunk met after lost bytes, if they can be
/// told: at its start (the usual case, a call that began with a frame),
/// or, with stricter checks since every offset is tried, inside it (a
/// read that began in the middle of a frame). See [`frames_at`].
pub fn frame_boundary(data: &[u8], total: usize) -> Option<usize> {
    if chains_from_start(data, total) {
        return Some(0);
    }
    (1..data.len()).find(|&at| chain_inside(&data[at..], total.saturating_sub(at)) == Chain::Frames)
}

/// Whether frames chain from the start of a chunk, where a syscall's
/// bytes begin: two headers, frames up to the largest a peer may set.
pub fn chains_from_start(data: &[u8], total: usize) -> bool {
    frames_at(data, total, MAX_RESYNC_FRAME, 2)
}

/// The stricter rule at an offset inside a chunk, where every offset is
/// tried: three headers, frames of at most the default largest size.
pub fn chain_inside(data: &[u8], total: usize) -> Chain {
    chain_at(data, total, DEFAULT_MAX_FRAME, 3)
}

/// Whether `data` starts with a frame header a peer may send: the first
/// bytes of a connection met mid-stream that may be HTTP/2.
pub fn may_start_frames(data: &[u8]) -> bool {
    frames_at(data, usize::MAX, MAX_RESYNC_FRAME, 1)
}

/// Whether `data` (the captured start of `total` bytes) starts at a frame
/// boundary: every frame header in it, reached by skipping each frame's
/// payload from its start, is one a peer may send (no longer than
/// `max_len`), CONTINUATIONs come only where a block is open, and there
/// are `frames` of them, or one fewer ending where the chunk does. Bytes
/// inside a payload rarely pass: a header's length, type, flags for that
/// type, stream (zero or not, as the type says) and reserved bit must all
/// fit, and then those of the next.
pub fn frames_at(data: &[u8], total: usize, max_len: u32, frames: usize) -> bool {
    chain_at(data, total, max_len, frames) == Chain::Frames
}

/// What the bytes from an offset say about a frame boundary there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Frames chain from there as [`frames_at`] requires.
    Frames,
    /// A header that no peer may send: never a boundary, whatever follows.
    Broken,
    /// The headers fit as far as the bytes go: more bytes may tell.
    TooShort,
}

/// [`frames_at`], telling a chain that breaks from one the bytes end in.
fn chain_at(data: &[u8], total: usize, max_len: u32, frames: usize) -> Chain {
    let (mut at, mut seen) = (0, 0);
    let mut continues: Option<u32> = None;
    while let Some(b) = data.get(at..at + HEADER_LEN) {
        let raw: &[u8; HEADER_LEN] = b.try_into().expect("a frame header's bytes");
        let h = FrameHeader::parse(raw);
        let flags_in = |allowed: u8| h.flags & !allowed == 0;
        let (on_stream, len) = (h.stream != 0, h.len as usize);
        let fits = match h.kind {
            DATA => on_stream && flags_in(END_STREAM | PADDED),
            HEADERS => on_stream && flags_in(END_STREAM | END_HEADERS | PADDED | PRIORITY),
            PRIORITY_FRAME => on_stream && len == 5 && h.flags == 0,
            RST_STREAM => on_stream && len == 4 && h.flags == 0,
            SETTINGS => !on_stream && flags_in(ACK) && len.is_multiple_of(6),
            PUSH_PROMISE => on_stream && flags_in(END_HEADERS | PADDED),
            PING => !on_stream && len == 8 && flags_in(ACK),
            GOAWAY => !on_stream && len >= 8 && h.flags == 0,
            WINDOW_UPDATE => len == 4 && h.flags == 0,
            CONTINUATION => continues == Some(h.stream) && flags_in(END_HEADERS),
            _ => false,
        };
        // A CONTINUATION exactly where a block is open.
        if !fits || continues.is_some() != (h.kind == CONTINUATION) {
            return Chain::Broken;
        }
        if raw[5] & 0x80 != 0 || h.len > max_len {
            return Chain::Broken;
        }
        let block_open = matches!(h.kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        continues = (block_open && h.flags & END_HEADERS == 0).then_some(h.stream);
        at += HEADER_LEN + len;
        seen += 1;
    }
    if seen >= frames || (seen + 1 == frames && at == total) {
        Chain::Frames
    } else {
        Chain::TooShort
    }
}

/// Emits what a whole RST_STREAM or GOAWAY frame says.
fn fixed_frame(h: FrameHeader, buf: &[u8; 8], emit: &mut impl FnMut(Event<'_>)) {
    let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    if h.kind == RST_STREAM {
        emit(Event::Reset {
            stream: h.stream,
            code: word(0),
        });
    } else {
        emit(Event::GoAway {
            last_stream: word(0) & 0x7fff_ffff,
            code: word(4),
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A frame of `len` payload bytes (all `a`).
    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(HEADER_LEN + len, 0x61);
        f
    }

    fn starts_frames(data: &[u8], total: usize) -> bool {
        frame_boundary(data, total) == Some(0)
    }

    #[test]
    fn chunks_that_start_at_a_frame_boundary() {
        let headers = frame(HEADERS, END_HEADERS, 1, 20);
        let data = frame(DATA, END_STREAM, 1, 100);
        let both = [headers.clone(), data.clone()].concat();
        // Frames that end with the chunk, or two of them.
        assert!(starts_frames(&headers, headers.len()));
        assert!(starts_frames(&both, both.len()));
        assert!(starts_frames(&both[..40], both.len()));
        // One frame going on past the chunk: too little to go on.
        assert!(!starts_frames(&data[..50], 50));
        // A block's first frame, then its CONTINUATION.
        let open = frame(HEADERS, 0, 3, 4);
        let cont = frame(CONTINUATION, END_HEADERS, 3, 4);
        let block = [open.clone(), cont.clone()].concat();
        assert!(starts_frames(&block, block.len()));
        assert!(!starts_frames(&cont, cont.len()));
        let broken = [open, frame(DATA, 0, 3, 4)].concat();
        assert!(!starts_frames(&broken, broken.len()));
        let on_other_stream = [
            frame(HEADERS, 0, 3, 4),
            frame(CONTINUATION, END_HEADERS, 5, 4),
        ];
        assert!(!starts_frames(&on_other_stream.concat(), 26));
    }

    #[test]
    fn bytes_inside_a_payload_do_not_start_frames() {
        let both = [frame(HEADERS, END_HEADERS, 1, 20), frame(DATA, 0, 1, 100)].concat();
        // Every offset but the DATA frame's start (after 9 + 20 bytes).
        for at in (1..both.len()).filter(|at| *at != 29) {
            assert_eq!(frame_boundary(&both[at..], both.len() - at), None, "{at}");
        }
        assert!(starts_frames(&both[29..], both.len() - 29));
        assert!(!starts_frames(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 26));
        assert!(!starts_frames(b"", 0));
        // Flags a type does not have, the wrong stream for a type, a
        // length a type cannot have, the reserved bit.
        for bad in [
            frame(DATA, END_HEADERS, 1, 0),
            frame(SETTINGS, 0, 1, 0),
            frame(PING, 0, 0, 4),
            frame(WINDOW_UPDATE, 0, 0x8000_0001, 4),
            frame(0x20, 0, 1, 0),
        ] {
            assert!(!starts_frames(&bad, bad.len()), "{bad:02x?}");
        }
    }

    /// A chunk that starts inside a frame: frames are found in it when
    /// three follow, or two that end with the chunk.
    #[test]
    fn frames_are_found_inside_a_chunk() {
        let tail = frame(DATA, 0, 1, 40)[25..].to_vec();
        let two = [
            frame(HEADERS, END_HEADERS, 3, 20),
            frame(DATA, END_STREAM, 3, 10),
        ]
        .concat();
        let chunk = [tail.clone(), two.clone()].concat();
        assert_eq!(frame_boundary(&chunk, chunk.len()), Some(tail.len()));
        // Two frames, the last going on past the chunk: not enough.
        assert_eq!(frame_boundary(&chunk, chunk.len() + 5), None);
        let three = [chunk.clone(), frame(WINDOW_UPDATE, 0, 0, 4)].concat();
        assert_eq!(
            frame_boundary(&three[..three.len() - 2], three.len()),
            Some(tail.len())
        );
    }

    /// After a loss the framer skips chunks until one starts at a frame
    /// boundary, then frames on.
    #[test]
    fn a_resyncing_framer_waits_for_a_frame_boundary() {
        let mut f = Frames::new(false);
        let mut events = 0;
        f.feed(&frame(SETTINGS, 0, 0, 0), HEADER_LEN, 0, &mut |_| {
            events += 1
        })
        .unwrap();
        f.resync();
        let data = frame(DATA, END_STREAM, 1, 30);
        assert_eq!(
            f.feed(&data[5..], data.len() - 5, 1, &mut |_| events += 1),
            Err(FrameError::Unsynced)
        );
        assert!(f.is_resyncing() && !f.is_broken());
        f.feed(&data, data.len(), 2, &mut |_| events += 1).unwrap();
        assert!(!f.is_resyncing());
        // The DATA bytes and the frame's end.
        assert_eq!(events, 2);
    }
}
