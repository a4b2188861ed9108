//! Finding frame boundaries again in one direction of a connection whose
//! bytes were lost (or that was met mid-stream). A chunk that starts a
//! syscall's bytes usually starts a frame, but one alone may be too little
//! to tell: gRPC's core writes a frame header and its payload as separate
//! segments, each its own chunk. So whole chunks are held, and a chunk's
//! start is taken once the frame headers from it on, across the chunks
//! held after it, chain as `frames_at` requires.
//!
//! A read may also begin inside a frame: a server reading many requests at
//! once gets them in chunks of at most 16 KiB, and after a lost one the
//! next starts wherever the read was cut. Every offset of the held bytes
//! is then tried with stricter checks (three headers, frames of at most
//! 16 KiB), across chunks: one chunk alone may hold fewer than three
//! headers of large frames (5 KiB header blocks, say).

use super::frame::{chain_inside, chains_from_start, frame_boundary, Chain};

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
    /// Offsets in `held` below this were tried inside chunks; of those,
    /// only `open` ones may still start frames, once more bytes come.
    searched: usize,
    open: Vec<usize>,
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
        self.starts.push((self.held.len(), ts));
        self.held.extend_from_slice(data);
        let end = self.held.len();
        let from = match self
            .starts
            .iter()
            .position(|&(at, _)| chains_from_start(&self.held[at..], end - at))
        {
            Some(i) => (i, self.starts[i].0),
            None => {
                let at = self.inside()?;
                let i = self.starts.iter().rposition(|&(start, _)| start <= at)?;
                (i, at)
            }
        };
        Some(self.take_from(from))
    }

    /// The first offset inside the held bytes where frames chain: those
    /// the bytes ran out on before, then the new ones.
    fn inside(&mut self) -> Option<usize> {
        let held = &self.held;
        let chain = |at: usize| chain_inside(&held[at..], held.len() - at);
        let mut found = None;
        self.open.retain(|&at| {
            if found.is_some() {
                return true;
            }
            match chain(at) {
                Chain::Frames => {
                    found = Some(at);
                    true
                }
                Chain::Broken => false,
                Chain::TooShort => true,
            }
        });
        if found.is_some() {
            return found;
        }
        for at in self.searched..held.len() {
            match chain(at) {
                Chain::Frames => {
                    self.searched = at + 1;
                    return Some(at);
                }
                Chain::TooShort => self.open.push(at),
                Chain::Broken => {}
            }
        }
        self.searched = held.len();
        None
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
        self.searched = self.searched.saturating_sub(next);
        self.open.retain(|&at| at >= next);
        for at in &mut self.open {
            *at -= next;
        }
    }

    fn clear(&mut self) {
        self.held.clear();
        self.starts.clear();
        self.searched = 0;
        self.open.clear();
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

    /// A download of full-size DATA frames read 16 KiB at a time, met in
    /// the middle of a frame: no chunk holds more than one frame header, so
    /// the chain is found across chunks, from the first header on.
    #[test]
    fn large_frames_read_apart_chain_across_chunks() {
        let stream: Vec<u8> = (0..8).flat_map(|_| frame(DATA, 0, 1, 16384)).collect();
        let start = 1000;
        let chunks: Vec<&[u8]> = stream[start..].chunks(16384).collect();
        let mut r = Resync::default();
        assert_eq!(push(&mut r, chunks[0]), None);
        assert_eq!(push(&mut r, chunks[1]), None);
        let got = push(&mut r, chunks[2]).expect("three headers in three chunks");
        // From the first header (inside the first chunk), then the rest.
        let first = 16384 + HEADER_LEN - start;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].bytes, chunks[0][first..]);
        assert_eq!(
            (got[1].bytes.as_slice(), got[2].bytes.as_slice()),
            (chunks[1], chunks[2])
        );
        assert!(got.iter().all(|c| c.total == c.bytes.len()));
        assert!(r.held.is_empty() && r.open.is_empty() && r.searched == 0);
    }

    /// Offsets that may still start frames move with the held bytes when
    /// the oldest chunk goes.
    #[test]
    fn offsets_still_open_follow_the_oldest_chunk_out() {
        // Besides those, the last few offsets, too near the end to hold a
        // header yet.
        let others_near_end = |r: &Resync, skip: usize| {
            r.open[skip..]
                .iter()
                .all(|&at| at + HEADER_LEN > r.held.len())
        };
        let mut r = Resync::default();
        let mut tail = vec![0x61; 100];
        // A header of a frame longer than what follows: open.
        tail.extend_from_slice(&header(DATA, 0, 1, 16384));
        assert_eq!(push(&mut r, &tail), None);
        assert_eq!(r.open[0], 100);
        assert!(others_near_end(&r, 1));
        for _ in 0..MAX_HELD_CHUNKS {
            assert_eq!(push(&mut r, &[0x61; 64]), None);
            assert!(r.open.first() == Some(&100) || r.starts.len() == MAX_HELD_CHUNKS);
        }
        // The first chunk, and its open offset, went.
        assert!(others_near_end(&r, 0));
        assert_eq!(r.searched, r.held.len());
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
