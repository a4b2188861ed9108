//! HTTP/1.x: frames captured syscall bytes into request and response messages.

mod chunked;
mod decoder;
mod head;
mod parse;
pub mod spans;

pub use decoder::{Decoder, Frame, Side, MAX_HEAD};
pub use head::{Headers, RequestHead, ResponseHead, MAX_HEADERS, MAX_HEADER_VALUE};
pub use parse::ParseError;
