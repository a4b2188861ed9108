//! End-to-end tests of the agent itself: its configuration file, what
//! `clew probe` says about the kernel, the synthetic probe, starting on a
//! node without tracefs mounted.
//!
//! Run as root, one test at a time (`cargo xtask test`, or `cargo test -p
//! clew-e2e -- --test-threads=1` with CLEW_BIN set or `target/release/clew` built).

mod config_file;
mod probe;
mod programs;
mod records;
mod start;
mod synthetic;
