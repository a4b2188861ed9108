//! Protocol parsers: pure functions over captured bytes, one folder per protocol.

pub mod common;
pub mod http1;
pub mod http2;
pub mod http_common;

pub use common::{ConnFacts, Role, SpanOptions};
