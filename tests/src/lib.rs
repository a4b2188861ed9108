//! Harness for Clew's end-to-end tests: cgroups, a real OTLP receiver, the agent process and peers.

pub mod agent;
pub mod bench;
pub mod bpf;
pub mod cgroup;
pub mod check;
pub mod check_h2;
pub mod container;
pub mod env;
pub mod fixture;
pub mod frontends;
pub mod go_peer;
pub mod go_tls;
pub mod grpc;
pub mod h2;
pub mod kafka;
pub mod kube;
pub mod line_session;
pub mod load;
pub mod log_service;
pub mod metrics;
pub mod nesting;
pub mod net;
pub mod netns;
pub mod nginx;
pub mod node_pair;
pub mod peers;
pub mod process;
pub mod receiver;
pub mod recording;
#[cfg(test)]
mod selftest;
pub mod tls;
pub mod wire;

/// How long tests wait for spans: export takes ~1-2 s, this leaves room for a loaded CI machine.
pub const SPAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub use agent::{Access, Agent, Export, Select, AGENT_CAPABILITIES};
pub use cgroup::Cgroup;
pub use check::Expect;
pub use fixture::Traced;
pub use receiver::{Protocol, Receiver, RecvLog, RecvSpan, Value};
