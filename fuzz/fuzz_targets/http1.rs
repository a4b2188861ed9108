//! Fuzzes the HTTP/1 framer: arbitrary bytes cut into arbitrary syscall chunks, fed to both sides.
#![no_main]

use clew::protocol::http1::{Decoder, Frame, Side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    for side in [Side::Requests, Side::Responses] {
        for mid_stream in [false, true] {
            run(side, mid_stream, input);
        }
    }
});

/// The input interleaves control bytes and data: each control byte says how many data bytes
/// follow as one chunk, how many more the syscall "moved" uncaptured, or announces a request.
fn run(side: Side, mid_stream: bool, mut input: &[u8]) {
    let mut decoder = if mid_stream {
        Decoder::mid_stream(side)
    } else {
        Decoder::new(side)
    };
    let mut out = Vec::new();
    let mut open = false;
    let mut ts = 0;
    while let Some((&control, rest)) = input.split_first() {
        let len = usize::from(control & 0x3f).min(rest.len());
        let (data, rest) = rest.split_at(len);
        input = rest;
        let missing = match control >> 6 {
            0 | 1 => 0,
            2 => len * 7 + 1,
            _ => {
                decoder.expect_response_to(["GET", "HEAD", "CONNECT"][len % 3]);
                1 << (len % 40)
            }
        };
        decoder.feed(data, len + missing, ts, &mut out);
        ts += 1;
        check(&mut out, &mut open);
    }
    decoder.finish(ts, &mut out);
    check(&mut out, &mut open);
}

/// Frames must nest: a head opens a message, End or Error closes it, nothing opens twice.
fn check(out: &mut Vec<Frame>, open: &mut bool) {
    for frame in out.drain(..) {
        match frame {
            Frame::Request { .. } | Frame::Response { .. } => {
                assert!(!*open, "a message started inside another");
                *open = true;
            }
            Frame::Interim { .. } => assert!(!*open, "an interim response inside a message"),
            Frame::End { .. } => {
                assert!(*open, "End without a message");
                *open = false;
            }
            Frame::Error(_) => *open = false,
        }
    }
}
