//! Types shared by the kernel programs (`clew-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps
//! and the ring buffer, userspace reads the same bytes back.
#![no_std]

pub mod h2;
pub mod kafka;
pub mod logs;
pub mod probe;
pub mod tracestate;

/// Largest payload prefix one data event carries. Bodies beyond the
/// configured capture limit are accounted for by length only.
pub const MAX_CAPTURE: usize = 16384;
/// Power-of-two mask used to prove capture bounds to the verifier.
pub const CAPTURE_MASK: usize = MAX_CAPTURE - 1;
/// Ring buffer size (bytes) unless the agent overrides it.
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 * 1024 * 1024;
/// Entries in the (tgid, fd) → connection table. LRU: a connection that
/// never closes cleanly is evicted by newer ones instead of filling the map.
pub const MAX_CONNS: u32 = 65536;
/// Entries for syscalls in flight (keyed by thread id), LRU for the same reason.
pub const MAX_INFLIGHT: u32 = 16384;
/// Explicitly selected processes (`--pid`, `--exe`, `--port` and their children).
pub const MAX_PIDS: u32 = 16384;
/// Processes per page of the tgid → "has tracked connections" table, one
/// byte each.
pub const TGID_PAGE: usize = 4096;
/// Pages for every tgid the kernel can hand out (`PID_MAX_LIMIT` on 64-bit
/// targets); the agent sizes the table to the host's `pid_max`.
pub const MAX_TGID_PAGES: u32 = (4 * 1024 * 1024 / TGID_PAGE) as u32;
/// Selected cgroup subtrees (`--cgroup`).
pub const MAX_CGROUPS: u32 = 16;
/// `--exe` selectors the kernel matches at exec time, per kind (names,
/// paths). More are matched by userspace only, after the exec event.
pub const MAX_EXES: u32 = 64;

/// Keys of the kernel's `--exe` maps: the exec tracepoint matches a new
/// program before it runs, so a child it forks at once inherits selection.
pub mod exe {
    /// `TASK_COMM_LEN`: a task's comm is at most 15 bytes and a NUL.
    pub const COMM_LEN: usize = 16;
    /// Longest `--exe` path the kernel compares, NUL included.
    pub const PATH_LEN: usize = 256;

    /// Key of `--exe NAME` (no slash): what the comm holds after exec'ing a
    /// file of that name, i.e. its first 15 bytes, zero-padded. `None` for
    /// a name no comm can hold.
    pub fn name_key(name: &str) -> Option<[u8; COMM_LEN]> {
        let b = name.as_bytes();
        if b.is_empty() || b.contains(&0) || b.contains(&b'/') {
            return None;
        }
        let mut key = [0; COMM_LEN];
        let n = b.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&b[..n]);
        Some(key)
    }

    /// Key of `--exe /abs/path`: the path exactly as exec'd, zero-padded.
    /// `None` when it is not absolute or too long to compare in the kernel.
    pub fn path_key(path: &str) -> Option<[u8; PATH_LEN]> {
        let b = path.as_bytes();
        if !b.starts_with(b"/") || b.len() >= PATH_LEN || b.contains(&0) {
            return None;
        }
        let mut key = [0; PATH_LEN];
        key[..b.len()].copy_from_slice(b);
        Some(key)
    }
}

/// Which processes the kernel programs look at.
pub mod select {
    /// Every process but the agent itself.
    pub const ALL: u32 = 0;
    /// Only tgids in `PIDS` and tasks under a cgroup in `CGROUPS`.
    pub const LISTED: u32 = 1;
}

/// Kinds of ring-buffer records; every record starts with `kind: u32`.
pub mod kind {
    pub const DATA: u32 = 1;
    pub const CONN_OPEN: u32 = 2;
    pub const CONN_CLOSE: u32 = 3;
    pub const PROC_EXEC: u32 = 4;
    pub const PROC_EXIT: u32 = 5;
    /// Trace context the kernel decided for a request (see [`CtxEvent`]).
    pub const TRACE_CTX: u32 = 6;
    /// A write to a log file by a thread serving a request
    /// (see [`logs::LogHeader`]).
    pub const LOG: u32 = 7;
}

/// Bytes of a request head the kernel scans for `traceparent` and framing
/// headers (power of two).
pub const SCAN_BYTES: usize = 1024;
/// Length of the header line the kernel inserts:
/// `traceparent: 00-{32 hex}-{16 hex}-{2 hex}\r\n`.
pub const TRACEPARENT_LINE: usize = 70;
/// Sockets of traced clients that sk_msg may inject into.
pub const MAX_INJECT_SOCKS: u32 = 65536;

/// Flags of a [`TraceCtx`].
pub mod ctxflag {
    pub const SAMPLED: u8 = 1;
    /// `parent_id` is set.
    pub const HAS_PARENT: u8 = 2;
    /// The parent came from an incoming `traceparent` (another process).
    pub const REMOTE_PARENT: u8 = 4;
    /// A `traceparent` with this span id was written into the request
    /// (Kafka: into at least one of its records).
    pub const INJECTED: u8 = 8;
    /// A CLIENT span sent while its executor had several requests open:
    /// it starts a new trace, and `parent_id` names the candidate (the
    /// request read last; zero if that one was answered).
    pub const AMBIGUOUS: u8 = 16;
    /// A Kafka CONSUMER span: the reading thread processes records whose
    /// `traceparent` names `parent_id` (`CtxEvent::stream_id`: the Fetch's
    /// correlation id).
    pub const CONSUMER: u8 = 32;
    /// A SERVER span whose request carried a valid `tracestate` the
    /// kernel holds for its executor; on a CLIENT span, that the request
    /// was injected with it (its parent's).
    pub const TRACESTATE: u8 = 64;
    /// The span's trace was started under the `probability` sampler, which
    /// kept it: its `tracestate` is the sampler's `ot=th:…` member; on a
    /// CLIENT span, that the request was injected with it.
    pub const SAMPLER_TH: u8 = 128;
}

/// Ids the kernel chose for a span, so that what it injects and what
/// userspace exports agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// Lowercase hex digits, by value.
pub const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

impl TraceCtx {
    /// Writes the 55-byte `traceparent` value `00-{trace}-{span}-{flags}`
    /// naming this span at `at` of `out`.
    #[inline(always)]
    pub fn write_traceparent<const L: usize>(&self, out: &mut [u8; L], at: usize) {
        out[at] = b'0';
        out[at + 1] = b'0';
        out[at + 2] = b'-';
        put_hex(out, at + 3, &self.trace_id);
        out[at + 35] = b'-';
        put_hex(out, at + 36, &self.span_id);
        out[at + 52] = b'-';
        out[at + 53] = b'0';
        out[at + 54] = if self.flags & ctxflag::SAMPLED != 0 {
            b'1'
        } else {
            b'0'
        };
    }
}

#[inline(always)]
fn put_hex<const L: usize, const N: usize>(out: &mut [u8; L], at: usize, bytes: &[u8; N]) {
    let mut j = 0;
    while j < N {
        out[at + 2 * j] = HEX_DIGITS[(bytes[j] >> 4) as usize];
        out[at + 2 * j + 1] = HEX_DIGITS[(bytes[j] & 15) as usize];
        j += 1;
    }
}

/// `kind::TRACE_CTX`: sent with the data records of the request it belongs
/// to, with their timestamp (server side, `conn_id` set; an HTTP/1 request
/// read from a socket carries it inside its record instead, see
/// `dataflag::SERVER_SPAN`), or from inside the `sendmsg` that carried the
/// injected request (client side, `conn_id` 0: userspace pairs it by
/// thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CtxEvent {
    pub kind: u32,
    /// `role::ACCEPTED` (server span) or `role::CONNECTED` (client span).
    pub role: u8,
    pub _pad: [u8; 3],
    pub conn_id: u64,
    pub pid_tgid: u64,
    pub ts_ns: u64,
    pub ctx: TraceCtx,
    /// Client side: the HTTP/2 stream whose HEADERS carried the context
    /// (several requests can leave in one send); 0 for HTTP/1; Kafka: the
    /// correlation id of the Produce request (PRODUCER span) or of the
    /// Fetch whose response started a CONSUMER span ([`ctxflag::CONSUMER`]).
    pub stream_id: u32,
    pub _pad2: u32,
}

/// Direction of a data record as seen by the traced process.
pub mod dir {
    /// The process received these bytes (read/recv).
    pub const INGRESS: u8 = 0;
    /// The process sent these bytes (write/send).
    pub const EGRESS: u8 = 1;
}

/// How a connection came to be known.
pub mod role {
    /// Seeded from /proc for a socket that existed before the agent started.
    pub const UNKNOWN: u8 = 0;
    /// Returned by accept()/accept4(): the process is the server.
    pub const ACCEPTED: u8 = 1;
    /// Opened by connect(): the process is the client.
    pub const CONNECTED: u8 = 2;
}

/// Key of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// Unique for the agent's lifetime; userspace keys its state by it so a
    /// reused fd never mixes two connections.
    pub id: u64,
    pub role: u8,
    /// `connstate` bits.
    pub state: u8,
    pub _pad: [u8; 6],
}

/// What the kernel has learnt about a connection's bytes (`ConnInfo::state`).
pub mod connstate {
    /// Some payload has been seen (the TLS record check is done).
    pub const STARTED: u8 = 1;
    /// The socket carries TLS: its ciphertext is never captured; plaintext
    /// comes from the TLS library probes instead.
    pub const TLS: u8 = 2;
    /// An `SSL` object is bound to this socket (see ebpf/src/tls.rs).
    pub const SSL_BOUND: u8 = 4;
    /// A record of this connection did not fit in the ring buffer: the
    /// next one that does is flagged [`super::dataflag::AFTER_LOSS`].
    pub const LOST: u8 = 8;
    /// Bits holding the connection's [`proto`](super::proto) (of the
    /// plaintext, for TLS): kept in `state` so that every copy of it (in
    /// `Inflight` too) carries the protocol at no extra size.
    pub const PROTO_SHIFT: u8 = 4;
    pub const PROTO_MASK: u8 = 0xf0;

    pub const fn proto(state: u8) -> u8 {
        (state & PROTO_MASK) >> PROTO_SHIFT
    }

    pub const fn with_proto(state: u8, proto: u8) -> u8 {
        (state & !PROTO_MASK) | (proto << PROTO_SHIFT)
    }
}

/// Application protocols the kernel tells apart from a connection's first
/// bytes. Each protocol with per-request work in the kernel (deciding a
/// SERVER span as a request is read, a CLIENT span as one is written over
/// TLS) has an observer program in the tail-call slot of its number; the
/// I/O programs never look at protocol bytes themselves.
pub mod proto {
    /// Not recognised yet: the first bytes are looked at again on the next
    /// call (a connection met mid-stream may start inside a body).
    pub const UNKNOWN: u8 = 0;
    pub const HTTP1: u8 = 1;
    pub const HTTP2: u8 = 2;
    /// Kafka, recognised by a client's first request (see
    /// [`kafka::is_request_start`](super::kafka::is_request_start)).
    pub const KAFKA: u8 = 3;
    /// Tail-call slots in the observer program arrays.
    pub const SLOTS: u32 = 4;

    /// The protocol whose message can start with the first `len` bytes of
    /// a stream, of which `b` holds up to 9. `server_egress`: written by the
    /// accepting side, which may send its HTTP/2 SETTINGS frame before it
    /// reads the client's preface. Word compares only: the kernel side has
    /// no `memcmp`.
    #[inline(always)]
    pub fn classify(b: &[u8; 9], len: usize, server_egress: bool) -> u8 {
        if len < 8 {
            return UNKNOWN;
        }
        let w = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        if w == u64::from_le_bytes(*b"PRI * HT") {
            return HTTP2;
        }
        if super::http1::is_method_word(w) || w & 0xff_ffff_ffff == 0x2f_5054_5448 {
            return HTTP1;
        }
        // A SETTINGS frame (type 4, no flags) on stream 0 whose length is a
        // multiple of 6: the server preface.
        let length = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let stream = (w >> 40) as u32 | (b[8] as u32) << 24;
        if server_egress
            && len >= 9
            && b[3] == 4
            && b[4] == 0
            && stream == 0
            && length.is_multiple_of(6)
        {
            return HTTP2;
        }
        if super::kafka::is_request_start(b, len) {
            return KAFKA;
        }
        UNKNOWN
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn first(bytes: &[u8]) -> ([u8; 9], usize) {
            let mut b = [0u8; 9];
            let n = bytes.len().min(9);
            b[..n].copy_from_slice(&bytes[..n]);
            (b, bytes.len())
        }

        #[test]
        fn first_bytes_name_the_protocol() {
            let cases: [(&[u8], bool, u8); 10] = [
                (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false, HTTP2),
                (b"GET / HTTP/1.1\r\n", false, HTTP1),
                (b"HTTP/1.1 200 OK\r\n", true, HTTP1),
                (b"OPTIONS * HTTP/1.1\r\n", false, HTTP1),
                // A server's SETTINGS with two settings, before any read.
                (&[0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3], true, HTTP2),
                (&[0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3], false, UNKNOWN),
                (&[0, 0, 7, 4, 0, 0, 0, 0, 0], true, UNKNOWN),
                (b"GET", false, UNKNOWN),
                // ApiVersions v3, correlation id 1.
                (&[0, 0, 0, 20, 0, 18, 0, 3, 0, 0, 0, 1], false, KAFKA),
                // A client reading a server's SETTINGS first is not Kafka.
                (&[0, 0, 18, 4, 0, 0, 0, 0, 0], false, UNKNOWN),
            ];
            for (bytes, server_egress, want) in cases {
                let (b, len) = first(bytes);
                assert_eq!(classify(&b, len, server_egress), want, "{bytes:?}");
            }
        }
    }
}

/// HTTP/1 facts both sides use.
pub mod http1 {
    /// Up to 8 bytes as a little-endian word, for comparing words at once.
    pub const fn le(s: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        let mut k = 0;
        while k < 8 && k < s.len() {
            w[k] = s[k];
            k += 1;
        }
        u64::from_le_bytes(w)
    }

    /// True if the first 8 bytes of a message, read as a little-endian word,
    /// start with a method token used by real clients and a space.
    #[inline(always)]
    pub fn is_method_word(w: u64) -> bool {
        let m4 = w & 0xffff_ffff;
        let m5 = w & 0xff_ffff_ffff;
        m4 == le(b"GET ")
            || m4 == le(b"PUT ")
            || m5 == le(b"POST ")
            || m5 == le(b"HEAD ")
            || (w & 0xff_ffff_ffff_ffff) == le(b"DELETE ")
            || (w & 0xffff_ffff_ffff) == le(b"PATCH ")
            || w == le(b"OPTIONS ")
    }
}

/// Names of the maps, programs and load-time globals the agent finds in
/// the kernel object: the eBPF statics and functions carry exactly these
/// names (checked against the built object by the agent's tests).
pub mod names {
    pub mod map {
        pub const EVENTS: &str = "EVENTS";
        pub const CONNS: &str = "CONNS";
        pub const PIDS: &str = "PIDS";
        /// `--exe` selectors the kernel matches at exec.
        pub const EXE_NAMES: &str = "EXE_NAMES";
        pub const EXE_PATHS: &str = "EXE_PATHS";
        pub const CGROUPS: &str = "CGROUPS";
        pub const STATS: &str = "STATS";
        pub const INFLIGHT: &str = "INFLIGHT";
        /// A byte per tgid: the process has (or had) a tracked connection.
        pub const CONN_TGIDS: &str = "CONN_TGIDS";
        pub const PEERS: &str = "PEERS";
        pub const INJECT_SOCKS: &str = "INJECT_SOCKS";
        /// Observers tail-called from `exit_io`, by [`proto`](crate::proto).
        pub const OBSERVERS: &str = "OBSERVERS";
        /// Observers tail-called from the TLS return probes, by protocol.
        pub const TLS_OBSERVERS: &str = "TLS_OBSERVERS";
        /// Processes whose requests are counted per process, not per thread.
        pub const NEST_BY_PROCESS: &str = "NEST_BY_PROCESS";
        /// JVMs' [`JavaThreadLayout`](crate::JavaThreadLayout), by tgid.
        pub const JAVA_THREADS: &str = "JAVA_THREADS";
        /// Kafka walk buffers, two per CPU (the agent sizes it).
        pub const KAFKA_BUFS: &str = "KAFKA_BUFS";
        /// sk_msg programs `inject_traceparent` tail-calls: slot 0,
        /// [`program::INJECT_KAFKA`](super::program::INJECT_KAFKA).
        pub const INJECTORS: &str = "INJECTORS";
        /// Userspace's verdicts on the files of fds written to while serving.
        pub const LOG_FDS: &str = "LOG_FDS";
    }

    pub mod global {
        pub const AGENT_TGID: &str = "AGENT_TGID";
        pub const SELECT_MODE: &str = "SELECT_MODE";
        pub const CAPTURE_LIMIT: &str = "CAPTURE_LIMIT";
        /// log2 of the unread ring-buffer bytes at which a record wakes the agent.
        pub const RING_WAKE_SHIFT: &str = "RING_WAKE_SHIFT";
        pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
        pub const EXEC_FILENAME_OFFSET: &str = "EXEC_FILENAME_OFFSET";
        pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
        pub const SAMPLE_ALWAYS: &str = "SAMPLE_ALWAYS";
        pub const SAMPLE_THRESHOLD: &str = "SAMPLE_THRESHOLD";
        pub const SAMPLE_PARENT_BASED: &str = "SAMPLE_PARENT_BASED";
        pub const SAMPLE_CONSISTENT: &str = "SAMPLE_CONSISTENT";
        /// `ot=th:…`, the `tracestate` of traces the `probability` sampler keeps.
        pub const SAMPLE_TH_STATE: &str = "SAMPLE_TH_STATE";
        pub const SAMPLE_TH_LEN: &str = "SAMPLE_TH_LEN";
        pub const INJECT: &str = "INJECT";
        pub const TCP_OPTION: &str = "TCP_OPTION";
        pub const TASK_FSBASE_OFFSET: &str = "TASK_FSBASE_OFFSET";
        /// 1 where every program may read the task's saved user registers
        /// (the JVM nesting's R15); 0 leaves the helpers out of the check.
        pub const JAVA_REGS: &str = "JAVA_REGS";
        /// [`logs::source`](crate::logs::source) bits; 0 leaves logs off.
        pub const LOGS: &str = "LOGS";
        pub const FILE_OFFSETS: &str = "FILE_OFFSETS";
        pub const LOG_WRITE_COST_NS: &str = "LOG_WRITE_COST_NS";
    }

    pub mod program {
        pub const ENTER_IO: &str = "enter_io";
        pub const EXIT_IO: &str = "exit_io";
        pub const EXIT_IO_REGS: &str = "exit_io_regs";
        pub const ENTER_ACCEPT: &str = "enter_accept";
        pub const EXIT_ACCEPT: &str = "exit_accept";
        pub const ENTER_CONNECT: &str = "enter_connect";
        pub const EXIT_CONNECT: &str = "exit_connect";
        pub const ENTER_CLOSE: &str = "enter_close";
        pub const PROC_FORK: &str = "proc_fork";
        pub const PROC_EXEC: &str = "proc_exec";
        pub const PROC_EXIT: &str = "proc_exit";
        pub const TRACK_SOCKETS: &str = "track_sockets";
        pub const INJECT_TRACEPARENT: &str = "inject_traceparent";
        pub const INJECT_KAFKA: &str = "inject_kafka";
        pub const SSL_READ_ENTER: &str = "ssl_read_enter";
        pub const SSL_READ_EX_ENTER: &str = "ssl_read_ex_enter";
        pub const SSL_WRITE_ENTER: &str = "ssl_write_enter";
        pub const SSL_WRITE_EX_ENTER: &str = "ssl_write_ex_enter";
        pub const SSL_FREE_ENTER: &str = "ssl_free_enter";
        pub const SSL_EXIT: &str = "ssl_exit";
        pub const GO_TLS_READ_ENTER: &str = "go_tls_read_enter";
        pub const GO_TLS_WRITE_ENTER: &str = "go_tls_write_enter";
        pub const GO_TLS_EXIT: &str = "go_tls_exit";
        pub const GO_HTTP_ROUND_TRIP: &str = "go_http_round_trip";
        pub const GO_HTTP_REQUEST_WRITE: &str = "go_http_request_write";
        pub const GO_SPAWN_PARENT: &str = "go_spawn_parent";
        pub const GO_SPAWN_CHILD: &str = "go_spawn_child";
        pub const GO_G_FREE: &str = "go_g_free";
    }

    /// Observer programs: (protocol, the one `exit_io` tail-calls, the
    /// one the TLS return probes tail-call). A tail call stays within one
    /// program type, hence two per protocol.
    pub const OBSERVERS: [(u8, &str, &str); 3] = [
        (super::proto::HTTP1, "observe_http1", "observe_http1_tls"),
        (super::proto::HTTP2, "observe_http2", "observe_http2_tls"),
        (super::proto::KAFKA, "observe_kafka", "observe_kafka_tls"),
    ];
}

/// What a syscall's enter program saw, for its exit program (map
/// `INFLIGHT`, keyed by pid_tgid). Userspace writes one for a thread that
/// was already blocked in a read when the agent started.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Inflight {
    pub nr: i64,
    pub conn_id: u64,
    pub fd: u32,
    /// `IO_MARK` for reads/writes, else the `role` of an accept/connect.
    pub role: u8,
    /// Role of the connection (io records only).
    pub conn_role: u8,
    /// `connstate` of the connection when the call began (io records only).
    pub conn_state: u8,
    /// `dataflag` bits for the records this call produces.
    pub data_flags: u8,
    pub a1: u64,
    pub a2: u64,
    pub peer: SockAddr,
}

/// Marks an `Inflight` entry as a read or write (not accept/connect).
pub const IO_MARK: u8 = 0xff;

/// A socket address as the syscall saw it (IPv4 addresses are stored
/// IPv4-mapped in `addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    /// AF_INET, AF_INET6, or 0 when unknown.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

impl SockAddr {
    /// An IPv4 endpoint (`ip` as on the wire, `port` in host order).
    pub fn ipv4(ip: [u8; 4], port: u16) -> SockAddr {
        let mut addr = [0; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..16].copy_from_slice(&ip);
        SockAddr {
            family: 2,
            port,
            _pad: 0,
            addr,
        }
    }
}

/// A client endpoint as a server sees it, keying the kernel's TCP-option
/// maps: IPv4 addresses IPv4-mapped (as in [`SockAddr`]), port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub port: u32,
}

/// Where the fields `exit_accept` follows from the current task to an
/// accepted socket's endpoints sit in this kernel's structs (byte offsets),
/// computed by the agent from the kernel's BTF: Rust eBPF has no CO-RE.
/// `valid == 0`: unknown, the kernel does not look and the agent asks /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub valid: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.private_data` (the `struct socket` of a socket's file)
    pub file_private_data: u32,
    /// `socket.type`
    pub socket_type: u32,
    /// `socket.file` (points back at the file)
    pub socket_file: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.sk_socket` (points back at the socket)
    pub sk_socket: u32,
    /// `sock.sk_protocol`
    pub sk_protocol: u32,
    /// `sock.__sk_common.*`
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
}

/// `NEST_BY_PROCESS` value of a JVM whose requests are counted per Java
/// thread (see [`JavaThreadLayout`]); Go processes' values, where `g` sits
/// relative to the fs base, are never positive.
pub const NEST_JAVA: i64 = 1;

/// Where a JVM (x86-64 HotSpot) keeps what tells which Java thread runs on
/// an OS thread, found from the `JavaThread*` that its compiled and JNI
/// code hold in R15: byte offsets from the JVM's own `gHotSpotVMStructs`
/// and libjvm's symbols, per process (`JAVA_THREADS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JavaThreadLayout {
    /// `Thread::_osthread` (an `OSThread*`).
    pub osthread: u32,
    /// `OSThread::_thread_id`: the OS thread's id, which proves R15 holds
    /// that thread's `JavaThread*`.
    pub os_tid: u32,
    /// `JavaThread::_vthread`: an `OopHandle`, the address of a slot
    /// holding the mounted thread's object (a virtual thread's, else the
    /// thread's own).
    pub vthread: u32,
    /// `java_lang_Thread::_tid_offset`: where that object keeps its
    /// `Thread.threadId()`.
    pub java_tid: u32,
}

/// Fixed head of a `kind::DATA` record; `captured` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataHeader {
    pub kind: u32,
    pub direction: u8,
    /// `dataflag` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
    pub conn_id: u64,
    pub pid_tgid: u64,
    /// CLOCK_MONOTONIC nanoseconds at syscall exit.
    pub ts_ns: u64,
    /// Bytes this call (or iovec segment) moved.
    pub total: u32,
    /// Bytes of payload that follow the header (≤ total, ≤ capture limit).
    pub captured: u32,
    pub fd: u32,
    /// Syscall number that produced the record, for diagnostics.
    pub syscall: u32,
}

/// Bits of `DataHeader::flags`.
/// Where the socket's fd sits below a Go `*tls.Conn`, read by the Go
/// crypto/tls probes. Unchanged from Go 1.12 to 1.22; the agent's tests
/// check them against the DWARF of a real binary.
pub mod gotls {
    /// `tls.Conn.conn` is a `net.Conn` interface at offset 0: its itab,
    /// then its data pointer (a `*net.TCPConn`).
    pub const CONN_IFACE_DATA: u64 = 8;
    /// `net.TCPConn` embeds `conn{fd *netFD}` at offset 0.
    pub const TCPCONN_FD: u64 = 0;
    /// `netFD.pfd poll.FD` is at 0, and `Sysfd int` follows
    /// `fdMutex{state uint64; rsema, wsema uint32}`.
    pub const NETFD_SYSFD: u64 = 16;
}

pub mod dataflag {
    /// Plaintext read from or written to a TLS library (SSL_read/SSL_write),
    /// not bytes seen at the socket.
    pub const TLS: u8 = 1;
    /// Records of this connection were lost just before this one: its
    /// stream is not contiguous here.
    pub const AFTER_LOSS: u8 = 2;
    /// A [`TraceCtx`](crate::TraceCtx) follows the payload: the SERVER span
    /// the kernel decided for the request these bytes start (what a
    /// `kind::TRACE_CTX` record with this record's connection and timestamp
    /// would say).
    pub const SERVER_SPAN: u8 = 4;
}

/// `kind::CONN_OPEN` / `kind::CONN_CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u32,
    pub role: u8,
    /// `dataflag::AFTER_LOSS` on a close: records of the connection were
    /// lost since its last record.
    pub flags: u8,
    pub _pad: [u8; 2],
    pub conn_id: u64,
    pub pid_tgid: u64,
    pub ts_ns: u64,
    pub fd: u32,
    pub _pad2: u32,
    /// The remote end when the syscall exposed it (connect's argument,
    /// accept's out-parameter); family 0 otherwise.
    pub peer: SockAddr,
    /// Our own end of a connect(), as sockops saw it (IPv4 only; family 0
    /// otherwise).
    pub local: SockAddr,
}

/// `kind::PROC_EXEC` / `kind::PROC_EXIT`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    /// `procflag` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Bits of `ProcEvent::flags`.
pub mod procflag {
    /// The exec matched an `--exe` selector in the kernel, which selected
    /// the process (it was not selected before): userspace confirms it.
    pub const EXE_SELECTED: u32 = 1;
}

/// One selected cgroup subtree: a task is inside it when its ancestor at
/// `level` has id `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupSel {
    pub id: u64,
    pub level: u32,
    pub used: u32,
}

/// Counters kept per CPU in the `STATS` array, by index.
pub mod stat {
    /// A record did not fit in the ring buffer (userspace is behind).
    pub const RINGBUF_DROPS: u32 = 0;
    /// A user-memory read failed (page not resident, bad pointer).
    pub const READ_ERRORS: u32 = 1;
    /// Data records emitted.
    pub const DATA_EVENTS: u32 = 2;
    /// Trace-context TCP options written into outgoing segments.
    pub const TCP_OPT_WRITTEN: u32 = 3;
    /// A context was due but the segment had no option space left.
    pub const TCP_OPT_NO_ROOM: u32 = 4;
    /// Trace-context TCP options read from incoming segments.
    pub const TCP_OPT_READ: u32 = 5;
    /// TLS plaintext dropped because the library call's socket was unknown
    /// (a connection opened before the agent, or not a selected one).
    pub const TLS_UNBOUND: u32 = 6;
    /// `traceparent` fields inserted into HTTP/2 HEADERS frames.
    pub const H2_INJECTED: u32 = 7;
    /// HTTP/2 requests left alone: they carry their own `traceparent`.
    pub const H2_OWN_TRACEPARENT: u32 = 8;
    /// HTTP/2 requests not injected: the HEADERS frame does not lie whole
    /// in one send, or CONTINUATION frames follow it. The connection is
    /// left alone from then on (the block went unscanned).
    pub const H2_SPLIT: u32 = 9;
    /// HTTP/2 requests not injected: the header block is beyond the walk's
    /// bounds or malformed. The connection is left alone from then on.
    pub const H2_UNSCANNED: u32 = 10;
    /// HTTP/2 requests not injected: the frame would outgrow the default
    /// maximum frame size.
    pub const H2_TOO_LONG: u32 = 11;
    /// HTTP/2 connections given up: a frame header split across sends, or
    /// more frames in one send than the kernel walks.
    pub const H2_LOST_FRAMING: u32 = 12;
    /// HTTP/2 injections undone (a helper failed after the push; the bytes
    /// were popped back out).
    pub const H2_FAILED: u32 = 13;
    /// HTTP/2 connections given up: the application put `traceparent`
    /// into the HPACK dynamic table, where later requests reference it by
    /// an index the kernel cannot read.
    pub const H2_APP_INDEXED: u32 = 14;
    /// Kafka records given a `traceparent` header.
    pub const KAFKA_INJECTED: u32 = 15;
    /// Kafka records left alone: they carry their own `traceparent`.
    pub const KAFKA_OWN_TRACEPARENT: u32 = 16;
    /// Kafka record batches left alone: compressed.
    pub const KAFKA_COMPRESSED: u32 = 17;
    /// Produce requests not injected: not whole in one send.
    pub const KAFKA_SPLIT: u32 = 18;
    /// Produce requests not injected: a batch's CRC did not verify.
    pub const KAFKA_CRC: u32 = 19;
    /// Produce requests not injected: beyond the kernel's bounds (size,
    /// records, batches, partitions, headers per record).
    pub const KAFKA_BOUNDS: u32 = 20;
    /// Produce requests not injected: a version the kernel does not
    /// rewrite, or a batch that is not magic 2.
    pub const KAFKA_UNSUPPORTED: u32 = 21;
    /// Produce requests not injected: lengths that do not add up.
    pub const KAFKA_MALFORMED: u32 = 22;
    /// Produce requests not injected: a kernel helper failed (bytes
    /// restored).
    pub const KAFKA_FAILED: u32 = 23;
    /// Kafka connections given up: request boundaries lost (a header
    /// split across sends, more requests in one send than are walked).
    pub const KAFKA_LOST_FRAMING: u32 = 24;
    /// CONSUMER spans started from a Fetch response's records.
    pub const KAFKA_CONSUMER_SPANS: u32 = 25;
    /// Fetch responses whose trace context was not taken: not whole in
    /// one read, several distinct contexts, compressed records, beyond
    /// bounds, or the thread was serving a request.
    pub const KAFKA_CONSUMER_STOOD_DOWN: u32 = 26;
    /// Incoming `tracestate` values the kernel holds for the request's
    /// executor, to write into the requests it sends.
    pub const TRACESTATE_CARRIED: u32 = 27;
    /// Incoming `tracestate` values next to a valid `traceparent` not
    /// carried: invalid, longer than the kernel holds, repeated, not
    /// ending inside the scanned head, or evicted before a request used it.
    pub const TRACESTATE_DROPPED: u32 = 28;
    /// `tracestate` lines and fields written into outgoing requests.
    pub const TRACESTATE_INJECTED: u32 = 29;
    /// Outgoing requests given a `traceparent` but not a `tracestate`:
    /// they carry their own (HTTP/2: or the application indexed its own
    /// on the connection).
    pub const TRACESTATE_OWN: u32 = 30;
    /// `tracestate` fields left out: the HTTP/2 frame would outgrow the
    /// default maximum frame size.
    pub const TRACESTATE_NO_ROOM: u32 = 31;
    /// Writes to log files (standard output and error included) captured
    /// while their thread served a request.
    pub const LOG_WRITES: u32 = 32;
    /// Writes not captured: their thread had several requests open, so
    /// which one a line belongs to is unknown.
    pub const LOG_WRITES_AMBIGUOUS: u32 = 33;
    /// Writes not captured: their process went over `--log-rate`.
    pub const LOG_WRITES_OVER_RATE: u32 = 34;
    pub const COUNT: u32 = 48;
}

/// Syscall numbers the programs dispatch on, per architecture.
pub mod nr {
    #[cfg(any(target_arch = "x86_64", bpf_target_arch = "x86_64"))]
    mod arch {
        pub const READ: i64 = 0;
        pub const WRITE: i64 = 1;
        pub const READV: i64 = 19;
        pub const WRITEV: i64 = 20;
        pub const SENDFILE: i64 = 40;
        pub const SENDTO: i64 = 44;
        pub const RECVFROM: i64 = 45;
        pub const SENDMSG: i64 = 46;
        pub const RECVMSG: i64 = 47;
        pub const PWRITE64: i64 = 18;
        pub const PWRITEV: i64 = 296;
        pub const PWRITEV2: i64 = 328;
    }
    #[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
    mod arch {
        pub const READ: i64 = 63;
        pub const WRITE: i64 = 64;
        pub const READV: i64 = 65;
        pub const WRITEV: i64 = 66;
        pub const SENDFILE: i64 = 71;
        pub const SENDTO: i64 = 206;
        pub const RECVFROM: i64 = 207;
        pub const SENDMSG: i64 = 211;
        pub const RECVMSG: i64 = 212;
        pub const PWRITE64: i64 = 68;
        pub const PWRITEV: i64 = 70;
        pub const PWRITEV2: i64 = 287;
    }
    pub use arch::*;
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::exe::{name_key, path_key, COMM_LEN, PATH_LEN};
    use std::format;

    #[test]
    fn exe_names_are_keyed_like_the_comm() {
        let k = name_key("nginx").unwrap();
        assert_eq!(&k[..6], b"nginx\0");
        assert_eq!(k[5..], [0; COMM_LEN - 5]);
        // The kernel truncates a comm to 15 bytes: so does the key.
        let k = name_key("a-very-long-program-name").unwrap();
        assert_eq!(&k[..15], b"a-very-long-pro");
        assert_eq!(k[15], 0);
        assert_eq!(name_key(""), None);
        assert_eq!(name_key("bin/nginx"), None);
    }

    #[test]
    fn exe_paths_are_keyed_whole_or_not_at_all() {
        let k = path_key("/usr/sbin/nginx").unwrap();
        assert_eq!(&k[..16], b"/usr/sbin/nginx\0");
        assert!(k[15..].iter().all(|&b| b == 0));
        assert_eq!(path_key("sbin/nginx"), None);
        let longest = format!("/{}", "a".repeat(PATH_LEN - 2));
        assert!(path_key(&longest).is_some());
        assert_eq!(path_key(&format!("{longest}a")), None);
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnInfo {}
    unsafe impl aya::Pod for CgroupSel {}
    unsafe impl aya::Pod for TraceCtx {}
    unsafe impl aya::Pod for Inflight {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for SockOffsets {}
    unsafe impl aya::Pod for JavaThreadLayout {}
    unsafe impl aya::Pod for logs::LogFd {}
    unsafe impl aya::Pod for logs::FileOffsets {}
}
