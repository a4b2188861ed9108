//! End-to-end tests of plaintext HTTP/1.x tracing: real agent, real peers, real OTLP receiver.
//!
//! Run as root, one test at a time (`cargo xtask test`, or `cargo test -p
//! clew-e2e -- --test-threads=1` with CLEW_BIN set or `target/release/clew` built).

mod chain;
mod connections;
mod console;
mod export;
mod lifecycle;
mod nesting;
mod nesting_runtimes;
mod nginx_static;
mod preexisting;
mod secure_export;
mod selection;
