//! End-to-end tests of what Clew exports beyond the span tree: secrets
//! redacted, W3C Trace Context conformance (`tracestate` carried on too),
//! failed requests as spans.
//!
//! Run as root, one test at a time (`cargo xtask test`, or `cargo test -p
//! clew-e2e -- --test-threads=1` with CLEW_BIN set or `target/release/clew` built).

mod failures;
mod redaction;
mod sdk;
mod tracestate;
mod w3c;
