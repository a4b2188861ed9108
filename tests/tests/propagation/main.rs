//! End-to-end tests of `traceparent` propagation: what the kernel writes
//! into outgoing HTTP/1 requests, byte for byte, and into HTTP/2 requests,
//! field for field, and the traces it joins
//! across services, proxies, network namespaces and agents (and the same
//! through a TCP header option).
//!
//! Run as root, one test at a time (`cargo xtask test`, or `cargo test -p
//! clew-e2e -- --test-threads=1` with CLEW_BIN set or `target/release/clew` built).

mod byte_exact;
mod h2;
mod load;
mod nginx_chain;
mod plan;
mod sigkill;
mod tcp_option;
mod two_nodes;
mod untraced;
