//! Protocol parsers: pure functions over captured bytes, one folder per protocol.

pub mod http1;
