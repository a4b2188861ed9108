//! Fuzzes the HTTP/2 session (framer, HPACK, stream pairing): arbitrary
//! bytes cut into arbitrary syscall chunks, some partly uncaptured, fed to
//! both directions of server and client sessions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| clew::protocol::http2::fuzzing::session_input(input));
