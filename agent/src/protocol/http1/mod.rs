//! HTTP/1.x: frames captured syscall bytes into request and response messages.

mod chunked;
mod decoder;
mod parse;
pub mod spans;

pub use decoder::{Decoder, Frame, Side, MAX_HEAD};
pub use parse::{ParseError, RequestHead, ResponseHead, MAX_HEADERS, MAX_HEADER_VALUE};
