//! End-to-end tests of log capture (`--logs`): what traced threads write
//! while serving requests becomes OTLP log records tied to their spans.
//!
//! Run as root, one test at a time (`cargo xtask test`, or `cargo test -p
//! clew-e2e -- --test-threads=1` with CLEW_BIN set or `target/release/clew` built).

mod capture;
