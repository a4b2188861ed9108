//! Kafka's framing: every request and response is a 4-byte big-endian size
//! followed by that many bytes. Messages are reassembled across reads;
//! bytes the kernel did not capture are skipped by length, so a lost body
//! costs that message's details, not the connection's sync.

use bytes::{Bytes, BytesMut};

/// Largest message kept whole for decoding. A bigger one (a large fetch)
/// keeps only its head: enough for the header that pairs it.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Bytes kept of a message that cannot be decoded whole.
const HEAD: usize = 256;
/// Largest size believed: Kafka's own request limit
/// (`socket.request.max.bytes`) defaults to 100 MiB.
pub(super) const MAX_SIZE: u32 = 256 << 20;
/// Smallest message: a response header is a 4-byte correlation id.
pub(super) const MIN_SIZE: u32 = 4;

/// One message, without its size prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub bytes: Bytes,
    /// `bytes` is the whole message; else only its head was kept.
    pub whole: bool,
    /// When its first byte moved.
    pub ts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("impossible message size {0}")]
    Size(u32),
    #[error("bytes lost where a message size was to be read")]
    Gap,
}

#[derive(Default)]
pub struct Frames {
    size: [u8; 4],
    have_size: usize,
    size_ts: u64,
    body: Option<Body>,
    broken: bool,
    /// A message boundary was seen: the stream is known to be Kafka.
    synced: bool,
    /// Bytes were lost: the caller finds the next message start.
    resyncing: bool,
}

struct Body {
    len: usize,
    got: usize,
    buf: BytesMut,
    whole: bool,
    ts: u64,
}

impl Body {
    fn keep(&mut self, bytes: &[u8]) {
        let room = if self.whole { self.len } else { HEAD };
        let n = bytes.len().min(room.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(&bytes[..n]);
        self.got += bytes.len();
    }

    fn finish(self) -> Message {
        Message {
            bytes: self.buf.freeze(),
            whole: self.whole,
            ts: self.ts,
        }
    }
}

impl Frames {
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Records of the connection were lost: the message being read is
    /// gone, and the direction waits for the caller to find a chunk that
    /// starts a message (see [`Self::resume`]).
    pub fn resync(&mut self) {
        if !self.broken {
            self.have_size = 0;
            self.body = None;
            self.resyncing = true;
        }
    }

    pub fn is_resyncing(&self) -> bool {
        self.resyncing
    }

    /// The next chunk starts a message.
    pub fn resume(&mut self) {
        self.resyncing = false;
    }

    /// Feeds one call's bytes: `captured` is the prefix of the `total` it
    /// moved. Complete messages go to `out` in order. After an error the
    /// direction is broken and ignores everything.
    pub fn feed(
        &mut self,
        captured: &[u8],
        total: usize,
        ts: u64,
        out: &mut impl FnMut(Message),
    ) -> Result<(), FrameError> {
        if self.broken || self.resyncing {
            return Ok(());
        }
        let result = self.framed(captured, total, ts, out);
        self.broken = result.is_err();
        result
    }

    fn framed(
        &mut self,
        mut bytes: &[u8],
        total: usize,
        ts: u64,
        out: &mut impl FnMut(Message),
    ) -> Result<(), FrameError> {
        let mut lost = total.saturating_sub(bytes.len());
        while !bytes.is_empty() {
            match self.body.as_mut() {
                None => {
                    if self.have_size == 0 {
                        self.size_ts = ts;
                    }
                    let n = bytes.len().min(4 - self.have_size);
                    self.size[self.have_size..self.have_size + n].copy_from_slice(&bytes[..n]);
                    self.have_size += n;
                    bytes = &bytes[n..];
                    if self.have_size == 4 {
                        self.start_body()?;
                    }
                }
                Some(body) => {
                    let n = bytes.len().min(body.len - body.got);
                    body.keep(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.end_body(out);
                }
            }
        }
        while lost > 0 {
            let Some(body) = self.body.as_mut() else {
                return Err(FrameError::Gap);
            };
            let n = lost.min(body.len - body.got);
            body.got += n;
            body.whole = false;
            body.buf.truncate(HEAD);
            lost -= n;
            self.end_body(out);
        }
        Ok(())
    }

    fn start_body(&mut self) -> Result<(), FrameError> {
        self.have_size = 0;
        let len = u32::from_be_bytes(self.size);
        if !(MIN_SIZE..=MAX_SIZE).contains(&len) {
            return Err(FrameError::Size(len));
        }
        let len = len as usize;
        let whole = len <= MAX_MESSAGE;
        self.body = Some(Body {
            len,
            got: 0,
            buf: BytesMut::with_capacity(if whole { len } else { HEAD }),
            whole,
            ts: self.size_ts,
        });
        Ok(())
    }

    fn end_body(&mut self, out: &mut impl FnMut(Message)) {
        if self.body.as_ref().is_some_and(|b| b.got == b.len) {
            if let Some(body) = self.body.take() {
                self.synced = true;
                out(body.finish());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(m: &[u8]) -> Vec<u8> {
        let mut v = (m.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(m);
        v
    }

    fn feed_all(
        f: &mut Frames,
        calls: &[(&[u8], usize)],
    ) -> (Vec<Message>, Result<(), FrameError>) {
        let mut out = Vec::new();
        let mut result = Ok(());
        for (i, (captured, total)) in calls.iter().enumerate() {
            result = f.feed(captured, *total, i as u64, &mut |m| out.push(m));
        }
        (out, result)
    }

    #[test]
    fn messages_split_and_packed_across_reads() {
        let mut stream = framed(b"first message");
        stream.extend(framed(b"second"));
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut f = Frames::default();
            let (out, r) = feed_all(&mut f, &[(a, a.len()), (b, b.len())]);
            assert_eq!(r, Ok(()));
            let bodies: Vec<&[u8]> = out.iter().map(|m| &m.bytes[..]).collect();
            assert_eq!(bodies, [&b"first message"[..], b"second"], "cut at {cut}");
            assert!(out.iter().all(|m| m.whole));
            // The first message starts in the first call that has bytes.
            assert_eq!(out[0].ts, u64::from(cut == 0));
        }
    }

    #[test]
    fn an_uncaptured_body_tail_keeps_the_stream_in_sync() {
        let big = vec![7u8; 1000];
        let mut stream = framed(&big);
        stream.extend(framed(b"next"));
        let mut f = Frames::default();
        // The first call captured 300 of its 1004 bytes.
        let (out, r) = feed_all(&mut f, &[(&stream[..300], 1004), (&stream[1004..], 8)]);
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 2);
        assert!(!out[0].whole);
        assert_eq!(out[0].bytes.len(), HEAD);
        assert_eq!((&out[1].bytes[..], out[1].whole), (&b"next"[..], true));
    }

    #[test]
    fn a_lost_size_prefix_or_impossible_size_breaks_the_direction() {
        let mut f = Frames::default();
        let (_, r) = feed_all(&mut f, &[(&[0, 0], 6)]);
        assert_eq!(r, Err(FrameError::Gap));
        assert!(f.is_broken());
        let mut f = Frames::default();
        let (_, r) = feed_all(&mut f, &[(b"GET / HTTP/1.1\r\n", 16)]);
        assert!(matches!(r, Err(FrameError::Size(_))));
    }

    #[test]
    fn oversized_messages_keep_their_head_only() {
        let len = MAX_MESSAGE + 10;
        let mut stream = (len as u32).to_be_bytes().to_vec();
        stream.extend(vec![1u8; 4096]);
        let mut f = Frames::default();
        let (out, r) = feed_all(&mut f, &[(&stream, len + 4)]);
        assert_eq!(r, Ok(()));
        assert_eq!(out.len(), 1);
        assert!(!out[0].whole);
        assert_eq!(out[0].bytes.len(), HEAD);
    }
}
