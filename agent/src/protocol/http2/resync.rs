//! Finding frame boundaries again in one direction of a connection whose
//! bytes were lost (or that was met mid-stream). A chunk that starts a
//! syscall's bytes usually starts a frame, but one alone may be too little
//! to tell: gRPC's core writes a frame header and its payload as separate
//! segments, each its own chunk. So whole chunks are held, and a chunk's
//! start is taken once the frame headers from it on, across the chunks
//! held after it, chain as `frames_at` requires.

use super::frame::{frame_boundary, frames_at, MAX_RESYNC_FRAME};

/// Bytes and chunks held while no frame boundary is found; past these the
/// oldest chunks go.
const MAX_HELD_BYTES: usize = 64 * 1024;
const MAX_HELD_CHUNKS: usize = 64;

/// A chunk to frame once frames are found: its bytes from where they
/// start, the bytes the syscall moved from there, and when.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub total: usize,
    pub ts: u64,
}

#[derive(Debug, Default)]
pub struct Resync {
    held: Vec<u8>,
    /// Where each held chunk starts in `held`, and its timestamp.
    starts: Vec<(usize, u64)>,
}

impl Resync {
    /// Adds the chunk `data` (the captured start of `total` bytes); once
    /// frames can be told, the chunks to frame from there, in order.
    pub fn push(&mut self, data: &[u8], total: usize, ts: u64) -> Option<Vec<Chunk>> {
        if data.len() < total || data.len() > MAX_HELD_BYTES {
            // Nothing after uncaptured bytes chains to what is held.
            self.clear();
            let at = frame_boundary(data, total)?;
            let bytes = data[at..].to_vec();
            return Some(vec![Chunk {
                bytes,
                total: total - at,
                ts,
            }]);
        }
        while self.starts.len() >= MAX_HELD_CHUNKS || self.held.len() + data.len() > MAX_HELD_BYTES
        {
            self.drop_oldest();
        }
        let newest = self.held.len();
        self.starts.push((newest, ts));
        self.held.extend_from_slice(data);
        let end = self.held.len();
        let from = self
            .starts
            .iter()
            .position(|&(at, _)| frames_at(&self.held[at..], end - at, MAX_RESYNC_FRAME, 2))
            .map(|i| (i, self.starts[i].0))
            // Inside the newest chunk: a read that began mid-frame.
            .or_else(|| {
                let inside = frame_boundary(data, total)?;
                Some((self.starts.len() - 1, newest + inside))
            })?;
        Some(self.take_from(from))
    }

    /// The held chunks from the `i`th on, the first from byte `at`.
    fn take_from(&mut self, (i, at): (usize, usize)) -> Vec<Chunk> {
        let ends = self.starts[i + 1..]
            .iter()
            .map(|&(start, _)| start)
            .chain([self.held.len()]);
        let chunks = (self.starts[i..].iter())
            .zip(ends)
            .map(|(&(start, ts), end)| {
                let bytes = self.held[start.max(at)..end].to_vec();
                Chunk {
                    total: bytes.len(),
                    bytes,
                    ts,
                }
            })
            .collect();
        self.clear();
        chunks
    }

    fn drop_oldest(&mut self) {
        let next = self.starts.get(1).map_or(self.held.len(), |&(at, _)| at);
        self.held.drain(..next);
        self.starts.remove(0);
        for (at, _) in &mut self.starts {
            *at -= next;
        }
    }

    fn clear(&mut self) {
        self.held.clear();
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http2::frame::{
        tests::frame, DATA, END_HEADERS, END_STREAM, HEADERS, HEADER_LEN,
    };

    /// A frame header alone, its payload to come in other chunks.
    fn header(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        frame(kind, flags, stream, len)[..HEADER_LEN].to_vec()
    }

    fn push(r: &mut Resync, data: &[u8]) -> Option<Vec<Chunk>> {
        r.push(data, data.len(), data.len() as u64)
    }

    /// Frame headers and payloads each their own chunk, as gRPC's core
    /// writes them: a header is taken once the chunks after it show the
    /// chain (its payload ending where the chunks do, or the next header).
    #[test]
    fn headers_written_apart_from_their_payloads() {
        let mut r = Resync::default();
        let tail = vec![0x61; 30];
        assert_eq!(push(&mut r, &tail), None);
        let first = header(HEADERS, END_HEADERS, 5, 4);
        assert_eq!(push(&mut r, &first), None);
        let chunks = push(&mut r, &[0x82, 0x86, 0x84, 0x41]).unwrap();
        let got: Vec<_> = chunks
            .iter()
            .map(|c| (c.bytes.len(), c.total, c.ts))
            .collect();
        assert_eq!(got, [(9, 9, 9), (4, 4, 4)]);
        assert_eq!(chunks[0].bytes, first);
        // Cleared: the next chunk starts over. A DATA header whose payload
        // is longer than what follows needs the header after it.
        assert_eq!(push(&mut r, &header(DATA, 0, 5, 10)), None);
        assert_eq!(push(&mut r, &[0x61; 6]), None);
        let chunks = push(
            &mut r,
            &[&[0x61; 4][..], &header(DATA, END_STREAM, 5, 0)].concat(),
        );
        assert_eq!(chunks.map(|c| c.len()), Some(3));
    }

    #[test]
    fn holding_is_bounded() {
        let mut r = Resync::default();
        for _ in 0..1000 {
            assert_eq!(push(&mut r, &[0x61; 200]), None);
            assert!(r.starts.len() <= MAX_HELD_CHUNKS && r.held.len() <= MAX_HELD_BYTES);
        }
        // A partly captured chunk is judged alone.
        let whole = [header(HEADERS, END_HEADERS, 1, 0), header(DATA, 0, 1, 100)].concat();
        let chunks = r.push(&whole, whole.len() + 100, 7).unwrap();
        assert_eq!((chunks.len(), chunks[0].total), (1, whole.len() + 100));
        assert!(r.held.is_empty());
    }
}
