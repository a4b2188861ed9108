//! Names the agent looks up in the kernel object: maps, load-time globals,
//! programs, and tail-call slots. The kernel side declares these as Rust
//! identifiers (`#[map] static EVENTS`, `#[unsafe(no_mangle)] static
//! INJECT`, `fn inject_traceparent`), which a constant cannot name, so the
//! agent's unit test `kernel_object_has_every_shared_name` checks that the
//! built object defines every name listed here. Kernel-private maps (per-CPU
//! scratch, internal state) are not listed.

/// Maps the agent opens, sizes or fills.
pub mod map {
    pub const EVENTS: &str = "EVENTS";
    pub const CONNS: &str = "CONNS";
    pub const PIDS: &str = "PIDS";
    pub const CGROUPS: &str = "CGROUPS";
    pub const STATS: &str = "STATS";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const PEERS: &str = "PEERS";
    pub const TAIL: &str = "TAIL";
    pub const TLS_TAIL: &str = "TLS_TAIL";
    pub const INJECT_SOCKS: &str = "INJECT_SOCKS";
    pub const ALL: &[&str] = &[
        EVENTS,
        CONNS,
        PIDS,
        CGROUPS,
        STATS,
        INFLIGHT,
        PEERS,
        TAIL,
        TLS_TAIL,
        INJECT_SOCKS,
    ];
}

/// Globals the agent sets at load time.
pub mod global {
    pub const AGENT_TGID: &str = "AGENT_TGID";
    pub const SELECT_MODE: &str = "SELECT_MODE";
    pub const CAPTURE_LIMIT: &str = "CAPTURE_LIMIT";
    pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    pub const SAMPLE_ALWAYS: &str = "SAMPLE_ALWAYS";
    pub const SAMPLE_THRESHOLD: &str = "SAMPLE_THRESHOLD";
    pub const SAMPLE_PARENT_BASED: &str = "SAMPLE_PARENT_BASED";
    pub const INJECT: &str = "INJECT";
    pub const TCP_OPTION: &str = "TCP_OPTION";
    pub const ALL: &[&str] = &[
        AGENT_TGID,
        SELECT_MODE,
        CAPTURE_LIMIT,
        FORK_CHILD_PID_OFFSET,
        SOCK_OFFSETS,
        SAMPLE_ALWAYS,
        SAMPLE_THRESHOLD,
        SAMPLE_PARENT_BASED,
        INJECT,
        TCP_OPTION,
    ];
}

/// Programs the agent loads and attaches.
pub mod program {
    pub const ENTER_IO: &str = "enter_io";
    pub const EXIT_IO: &str = "exit_io";
    pub const ENTER_ACCEPT: &str = "enter_accept";
    pub const EXIT_ACCEPT: &str = "exit_accept";
    pub const ENTER_CONNECT: &str = "enter_connect";
    pub const EXIT_CONNECT: &str = "exit_connect";
    pub const ENTER_CLOSE: &str = "enter_close";
    pub const PROC_FORK: &str = "proc_fork";
    pub const PROC_EXEC: &str = "proc_exec";
    pub const PROC_EXIT: &str = "proc_exit";
    /// Tail-called from `exit_io` (slot [`super::tail::OBSERVE_REQUEST`] of `TAIL`).
    pub const OBSERVE_REQUEST: &str = "observe_request";
    pub const TRACK_SOCKETS: &str = "track_sockets";
    pub const INJECT_TRACEPARENT: &str = "inject_traceparent";
    pub const SSL_READ_ENTER: &str = "ssl_read_enter";
    pub const SSL_READ_EX_ENTER: &str = "ssl_read_ex_enter";
    pub const SSL_WRITE_ENTER: &str = "ssl_write_enter";
    pub const SSL_WRITE_EX_ENTER: &str = "ssl_write_ex_enter";
    pub const SSL_FREE_ENTER: &str = "ssl_free_enter";
    pub const SSL_EXIT: &str = "ssl_exit";
    pub const GO_TLS_READ_ENTER: &str = "go_tls_read_enter";
    pub const GO_TLS_WRITE_ENTER: &str = "go_tls_write_enter";
    pub const GO_TLS_EXIT: &str = "go_tls_exit";
    /// Tail-called from the TLS probes (slot [`super::tail::OBSERVE_TLS`] of `TLS_TAIL`).
    pub const OBSERVE_TLS: &str = "observe_tls";
    pub const ALL: &[&str] = &[
        ENTER_IO,
        EXIT_IO,
        ENTER_ACCEPT,
        EXIT_ACCEPT,
        ENTER_CONNECT,
        EXIT_CONNECT,
        ENTER_CLOSE,
        PROC_FORK,
        PROC_EXEC,
        PROC_EXIT,
        OBSERVE_REQUEST,
        TRACK_SOCKETS,
        INJECT_TRACEPARENT,
        SSL_READ_ENTER,
        SSL_READ_EX_ENTER,
        SSL_WRITE_ENTER,
        SSL_WRITE_EX_ENTER,
        SSL_FREE_ENTER,
        SSL_EXIT,
        GO_TLS_READ_ENTER,
        GO_TLS_WRITE_ENTER,
        GO_TLS_EXIT,
        OBSERVE_TLS,
    ];
}

/// Tail-call slots, used by both sides as numbers.
pub mod tail {
    /// `TAIL[OBSERVE_REQUEST]` = `observe_request`.
    pub const OBSERVE_REQUEST: u32 = 0;
    /// `TLS_TAIL[OBSERVE_TLS]` = `observe_tls`.
    pub const OBSERVE_TLS: u32 = 0;
}
