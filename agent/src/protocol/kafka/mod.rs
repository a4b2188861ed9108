//! Kafka: requests and responses framed by size and paired by correlation
//! id; produced batches, fetched records and the trace context record
//! headers carry become messaging spans. The broker's side is traced too
//! when the broker process is.

pub mod detect;
mod directory;
mod fetch;
mod framing;
pub mod fuzzing;
mod session;
mod spans;
mod wire;

#[cfg(test)]
mod tests;

pub use directory::Directory;
pub use session::{Op, Session};
pub use spans::{measure, to_span};
