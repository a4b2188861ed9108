//! Fuzzes HPACK decoding: arbitrary header blocks, in order, against one
//! dynamic table, as a connection's direction would send them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| clew::protocol::http2::fuzzing::hpack_input(input));
