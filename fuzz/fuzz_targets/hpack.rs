//! Fuzzes HPACK decoding: arbitrary header blocks, in order, against one
//! dynamic table, as a connection's direction would send them.
#![no_main]

use clew::protocol::http2::HeaderDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut d = HeaderDecoder::default();
    // The first byte of each block says how long it is.
    let mut rest = input;
    while let Some((&len, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        if d.decode(block).is_err() {
            // A session stops decoding here: the table is unknown.
            break;
        }
    }
});
