//! gRPC's length-prefixed message: a compressed flag, the length as four
//! big-endian bytes, then the message. A request's message is a body frame
//! of its own, the very bytes it was encoded into; a response's one message
//! is gathered from however many frames it came in, up to a bound.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tonic::Status;

const PREFIX_LEN: usize = 5;

/// A request body of one message: the prefix, then the message.
pub(super) struct RequestBody {
    /// Frames not yet polled, in order.
    frames: [Option<Bytes>; 2],
}

impl RequestBody {
    /// `compressed`: the message is compressed with the call's `grpc-encoding`.
    pub(super) fn new(message: Bytes, compressed: bool) -> Result<Self, Status> {
        // tonic's answer to a message over the prefix's range.
        let len = u32::try_from(message.len()).map_err(|_| {
            Status::resource_exhausted(format!(
                "export request of {} bytes does not fit a gRPC message",
                message.len()
            ))
        })?;
        let mut prefix = [u8::from(compressed), 0, 0, 0, 0];
        prefix[1..].copy_from_slice(&len.to_be_bytes());
        Ok(RequestBody {
            frames: [Some(Bytes::copy_from_slice(&prefix)), Some(message)],
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.frames.iter_mut().find_map(Option::take);
        Poll::Ready(next.map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.iter().all(Option::is_none)
    }

    // No exact `size_hint`: hyper would turn it into a `content-length`
    // header, which tonic never sent.
}

/// A response's message, gathered from its DATA frames. Bytes after it are
/// not kept: a unary call has one message, and memory stays bounded.
pub(super) struct ResponseMessage {
    buf: Vec<u8>,
    /// Bound on the message's length, as tonic's `max_decoding_message_size`.
    limit: usize,
    /// A message over `limit`: its bytes are counted, not kept.
    over: Option<usize>,
    skipped: usize,
}

impl ResponseMessage {
    pub(super) fn new(limit: usize) -> Self {
        ResponseMessage {
            buf: Vec::new(),
            limit,
            over: None,
            skipped: 0,
        }
    }

    /// Takes a DATA frame's bytes. Fails as tonic's decoder does on a
    /// compressed message (none was accepted). A message over the bound is
    /// skipped, not refused as tonic does: the call's status still says
    /// whether the export was accepted, and a refusal would be retried,
    /// sending the collector a batch it took already.
    pub(super) fn push(&mut self, mut data: &[u8]) -> Result<(), Status> {
        if self.buf.len() < PREFIX_LEN {
            let (prefix, rest) = data.split_at(data.len().min(PREFIX_LEN - self.buf.len()));
            self.buf.extend_from_slice(prefix);
            data = rest;
            if self.buf.len() < PREFIX_LEN {
                return Ok(());
            }
            self.check_prefix()?;
        }
        if let Some(len) = self.over {
            self.skipped = (self.skipped + data.len()).min(len);
            return Ok(());
        }
        let room = PREFIX_LEN + self.declared_len() - self.buf.len();
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(())
    }

    /// The length of a message that was over the bound, and skipped.
    pub(super) fn skipped(&self) -> Option<usize> {
        self.over
    }

    fn check_prefix(&mut self) -> Result<(), Status> {
        match self.buf[0] {
            0 => {}
            1 => return Err(Status::internal(
                "protocol error: received a compressed message, but no compression was accepted",
            )),
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {flag}"
                )))
            }
        }
        let len = self.declared_len();
        if len > self.limit {
            self.over = Some(len);
        } else {
            self.buf.reserve_exact(len);
        }
        Ok(())
    }

    fn declared_len(&self) -> usize {
        let len: [u8; 4] = self.buf[1..PREFIX_LEN].try_into().expect("four bytes");
        u32::from_be_bytes(len) as usize
    }

    /// The message, once all of it has arrived.
    /// (A skipped message, once all of it has arrived, is empty: what it
    /// said is not known.)
    pub(super) fn complete(&self) -> Option<&[u8]> {
        if let Some(len) = self.over {
            return (self.skipped == len).then_some(&[]);
        }
        let whole =
            self.buf.len() >= PREFIX_LEN && self.buf.len() == PREFIX_LEN + self.declared_len();
        whole.then(|| &self.buf[PREFIX_LEN..])
    }

    /// Some of a message arrived, not all of it.
    pub(super) fn is_partial(&self) -> bool {
        !self.buf.is_empty() && self.complete().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let len = u32::try_from(message.len()).unwrap().to_be_bytes();
        [&[flag][..], &len, message].concat()
    }

    #[test]
    fn a_message_is_gathered_from_frames_split_anywhere() {
        let wire = framed(0, b"partial success");
        for split in 0..=wire.len() {
            let mut message = ResponseMessage::new(64);
            message.push(&wire[..split]).unwrap();
            assert_eq!(message.is_partial(), split > 0 && split < wire.len());
            message.push(&wire[split..]).unwrap();
            assert_eq!(message.complete(), Some(&b"partial success"[..]), "{split}");
        }
        let mut bytewise = ResponseMessage::new(64);
        for byte in &wire {
            assert_eq!(bytewise.complete(), None);
            bytewise.push(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(bytewise.complete(), Some(&b"partial success"[..]));
    }

    #[test]
    fn an_empty_message_is_complete_and_no_message_is_not() {
        let mut message = ResponseMessage::new(64);
        assert_eq!(message.complete(), None);
        assert!(!message.is_partial());
        message.push(&framed(0, b"")).unwrap();
        assert_eq!(message.complete(), Some(&[][..]));
    }

    #[test]
    fn bytes_after_the_message_are_not_kept() {
        let mut wire = framed(0, b"first");
        wire.extend(framed(0, &[9; 1000]));
        let mut message = ResponseMessage::new(64);
        message.push(&wire).unwrap();
        message.push(&[9; 1000]).unwrap();
        assert_eq!(message.complete(), Some(&b"first"[..]));
        assert_eq!(message.buf.len(), PREFIX_LEN + 5);
    }

    #[test]
    fn a_message_over_the_bound_is_counted_not_kept() {
        let mut at_bound = ResponseMessage::new(64);
        at_bound.push(&framed(0, &[0; 64])).unwrap();
        assert!(at_bound.complete().is_some());
        assert_eq!(at_bound.skipped(), None);

        let mut over = ResponseMessage::new(64);
        let wire = framed(0, &[7; 65]);
        over.push(&wire[..PREFIX_LEN + 30]).unwrap();
        assert!(over.is_partial());
        over.push(&wire[PREFIX_LEN + 30..]).unwrap();
        assert_eq!(over.complete(), Some(&[][..]));
        assert_eq!(over.skipped(), Some(65));
        assert!(over.buf.capacity() < 64, "{}", over.buf.capacity());
    }

    #[test]
    fn a_compressed_or_misflagged_message_is_refused() {
        for flag in [1, 2, 0x3c] {
            let err = ResponseMessage::new(64)
                .push(&framed(flag, b"x"))
                .unwrap_err();
            assert_eq!(err.code(), Code::Internal, "{flag}");
        }
    }
}
