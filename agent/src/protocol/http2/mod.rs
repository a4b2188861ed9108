//! HTTP/2 and gRPC: frames captured syscall bytes, decodes header blocks,
//! and pairs requests and responses by stream.

pub mod detect;
mod frame;
pub mod fuzzing;
mod hpack;
mod resync;
mod session;
mod spans;

pub use frame::{may_start_frames, Event, FrameError, Frames, Payload};
pub use hpack::{Fields, HeaderDecoder, HpackError};
pub use session::{Exchange, Losses, Session};
pub use spans::{measure, to_span};

#[cfg(test)]
mod tests;
