//! Clew: an eBPF-based, zero-code distributed tracing agent.
//!
//! The pipeline, in the order data flows: [`capture`] (kernel programs and
//! ring buffer) → [`conn`] (connection table) → [`protocol`] (detection,
//! framing and transactions, one folder per protocol) → [`span`] with
//! [`nesting`], [`metrics`] (from every transaction) and [`sampling`] →
//! [`processor`] → [`export`]. [`pipeline`] drives one record through all of it;
//! [`agent`] wires the stages to the runtime. With log capture on, [`logs`]
//! turns what traced threads write while serving into log records.

pub mod agent;
pub mod capture;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod container;
pub mod export;
pub mod health;
pub mod jvm;
pub mod k8s;
pub mod logs;
pub mod matcher;
pub mod mega_traces;
pub mod memory;
pub mod metrics;
pub mod nesting;
pub mod pipeline;
pub mod probe;
pub mod process;
pub mod processor;
pub mod protocol;
pub mod redact;
pub mod runtime;
pub mod sampling;
pub mod sdk;
pub mod select;
pub mod span;
pub mod stats;
pub mod synthetic;
pub mod tenant;
pub mod tls;
pub mod trace_context;
