//! The minimal programs `clew probe` loads (kernel object `clew-probe`,
//! ebpf/src/probe/main.rs) to find out what this kernel allows: their
//! names, and what they write into their ring buffer when they fire.

/// Programs, one per mechanism.
pub mod program {
    pub const KPROBE: &str = "probe_kprobe";
    pub const FENTRY: &str = "probe_fentry";
    pub const FEXIT: &str = "probe_fexit";
    pub const UPROBE: &str = "probe_uprobe";
    pub const WRITE_USER: &str = "probe_write_user";
    pub const SOCKOPS: &str = "probe_sockops";
    pub const TCP_OPTION: &str = "probe_tcp_option";
    pub const SK_MSG: &str = "probe_sk_msg";
    pub const RINGBUF: &str = "probe_ringbuf";
    /// Reaches the calling task's saved user registers from an sk_msg
    /// program (`bpf_get_current_task_btf`, `bpf_task_pt_regs`).
    pub const TASK_REGS: &str = "probe_task_regs";
}

pub mod map {
    pub const EVENTS: &str = "PROBE_EVENTS";
    pub const SOCKS: &str = "PROBE_SOCKS";
}

pub mod global {
    /// The probing process: only its own calls are reported.
    pub const TGID: &str = "PROBE_TGID";
}

/// The kernel function the kprobe and fentry/fexit programs attach to
/// (present since Linux 5.6 on every architecture); attached only for the
/// moment it takes to see that attaching works.
pub const KERNEL_FUNCTION: &str = "do_sys_openat2";

/// What the ring-buffer tracepoint writes when the probing process calls
/// getpid.
pub const FIRED_TRACEPOINT: u32 = 1;
/// What the uprobe on libc's getpid writes.
pub const FIRED_UPROBE: u32 = 2;
