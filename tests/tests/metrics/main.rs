//! End-to-end tests of the RED metrics: real agent, real services in their
//! own cgroups, metrics read the way a user reads them (OTLP at the
//! receiver, and /metrics scraped as Prometheus scrapes it).
//!
//! Run as root, one test at a time (`cargo xtask test`).

mod exact;
mod routes;
mod rpc;
mod sampling;
