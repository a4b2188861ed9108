//! HTTP/1.x: detection of a connection met mid-stream, a streaming framer
//! per direction, the session pairing responses with requests, and spans.

mod chunked;
mod decoder;
pub mod detect;
mod head;
mod parse;
mod session;
mod spans;

pub use decoder::{Decoder, Frame, Side, MAX_HEAD};
pub use head::{Known, RequestHead, ResponseHead, MAX_HEADERS, MAX_HEADER_VALUE};
pub use parse::ParseError;
pub use session::{Exchange, Session};
pub use spans::{measure, to_span};

#[cfg(test)]
mod tests;
