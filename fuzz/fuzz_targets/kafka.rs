//! Fuzzes the Kafka session (framing, every API's decoder, record batches
//! with their codecs, correlation pairing): arbitrary bytes cut into
//! arbitrary reads in both directions of client and broker sessions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| clew::protocol::kafka::fuzzing::session(input));
